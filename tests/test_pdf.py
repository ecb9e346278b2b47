"""PDFs and batches: a signer's letter prints with Cyrillic and Kazakh intact and fonts embedded; the batch CLI
writes one letter per confirmed signer (none for pending ones), the same bytes every time and with any number of
processes; the delivery pack names only the supporters who agreed, counts the rest and folds small countries.
"""

from __future__ import annotations

import io
import mailbox
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from app import erasure, letter_batch, letters
from app.cli import app as cli_app
from app.models import PENDING
from tests.support import csrf_token, make_settings
from tests.test_letters import NOW, add_signer, cli_env, letters_dir_with_named_targets
from tests.test_mail_lands import display_name


@pytest.fixture
def settings(tmp_path, sqlite_url):
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def opt_in(client, token: str, target: str) -> None:
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": "en", "target": target, "named": "on"}
    assert client.post(f"/s/{token}/named", data=data, follow_redirects=False).status_code == 303


def run_cli(settings, *args: str):
    result = CliRunner().invoke(cli_app, ["letters", "mamay", *args], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("name", "lang"), [("Жанболат Қәғңөұүһі Әлиұлы", "kk"), ("Ольга Щукина-Ёлкина", "ru")])
def test_letter_pdf_prints_the_signers_name_in_cyrillic_and_kazakh(client, svc, name, lang):
    _, token = add_signer(svc, name=name, country="GB", city="Лондон", lang=lang)
    opt_in(client, token, "embassy-gb")
    answer = client.get(f"/s/{token}/letter.pdf?target=embassy-gb")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/pdf"
    assert "attachment" in answer.headers["content-disposition"]
    text = pdf_text(answer.content)
    assert name in text
    assert svc.campaigns["mamay"].target("embassy-gb").addressee[lang] in text  # the address block, their language
    assert "125 Pall Mall" in text
    reader = PdfReader(io.BytesIO(answer.content))
    fonts = reader.pages[0]["/Resources"]["/Font"]
    for ref in fonts.values():
        descendant = ref.get_object()["/DescendantFonts"][0].get_object()
        assert "/FontFile2" in descendant["/FontDescriptor"].get_object()  # embedded: nothing to fetch
    assert client.get(f"/s/{token}/letter.pdf?target=embassy-gb").content == answer.content  # same bytes
    assert client.get(f"/s/{token}/letter.pdf?target=embassy-de").status_code == 404  # not their embassy


def test_batch_cli_writes_n_letters_for_n_confirmed_signers_and_none_for_pending(settings, svc, tmp_path):
    for i in range(6):
        add_signer(svc, name=f"Confirmed Signer {i}", country=("DE", "KZ", "GB")[i % 3], lang=("en", "ru", "kk")[i % 3],
                   message=f"My own words {i}.")
    for i in range(2):
        add_signer(svc, name=f"Pending Signer {i}", status=PENDING, message=f"Pending words {i}.")
    out = tmp_path / "out"
    run_cli(settings, "--format", "mbox", "-o", str(out / "p.mbox"), "--target", "president")
    box = mailbox.mbox(out / "p.mbox")
    mails = [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.iterkeys()]
    assert len(mails) == 6
    # Names decoded as RFC 2047 says (Python's address parser keeps the space between two encoded words).
    assert {f'{display_name(m, "To")} <{m["To"].addresses[0].addr_spec}>' for m in mails} == {
        "Kassym-Jomart Tokayev <udp@udp-rk.kz>", "Тоқаев Қасым-Жомарт Кемелұлы <udp@udp-rk.kz>",
        "Токаев Касым-Жомарт Кемелевич <udp@udp-rk.kz>"}
    assert {m["From"].addresses[0].addr_spec for m in mails} == {settings.mail_from}
    assert len({m["Message-ID"] for m in mails}) == 6 and len({m["Date"] for m in mails}) == 1
    texts = [m.get_content() for m in mails]
    assert sorted(t for text in texts for t in [f"My own words {i}." for i in range(6)] if t in text) == sorted(
        f"My own words {i}." for i in range(6))
    assert not any("Pending" in text or "Confirmed Signer" in text for text in texts)  # count target: no names
    assert (out / "p.mbox").stat().st_mode & 0o077 == 0  # readable by its owner only

    result = run_cli(settings, "--format", "txt", "-o", str(out / "all.txt"))
    letters_txt = (out / "all.txt").read_text().split("\f\n")[:-1]
    # Each signer writes to the three authorities; the two in Germany and the two in Britain also to their embassy.
    # The letters to the President went in the mbox: delivered, so left out here.
    assert len(letters_txt) == 6 * 2 + 2 + 2 and "6 letters left out" in result.output
    assert not any("Pending" in text for text in letters_txt)

    run_cli(settings, "--format", "eml", "-o", str(out / "eml"), "--target", "president", "--lang", "kk",
            "--include-delivered")
    emls = sorted((out / "eml").iterdir())
    assert len(emls) == 6
    assert all(message_from_bytes(p.read_bytes(), policy=policy.default)["Subject"] == svc.campaigns["mamay"]
               .subject["kk"] for p in emls)

    run_cli(settings, "--format", "pdf", "-o", str(out / "pdf"), "--target", "president", "--lang", "ru",
            "--include-delivered")
    [pdf_file] = (out / "pdf").iterdir()
    text = pdf_text(pdf_file.read_bytes())
    salutation = svc.campaigns["mamay"].target("president").salutation["ru"]
    assert text.count(salutation) == 6 and "Pending" not in text


def test_batch_since_keeps_only_later_confirmations(settings, svc, tmp_path):
    add_signer(svc, name="Early", message="early one", now=NOW - timedelta(days=10))
    add_signer(svc, name="Late", message="late one", now=NOW)
    run_cli(settings, "--format", "txt", "-o", str(tmp_path / "s.txt"), "--target", "president",
            "--since", (NOW - timedelta(days=1)).date().isoformat())
    text = (tmp_path / "s.txt").read_text()
    assert "late one" in text and "early one" not in text


def test_batch_output_is_the_same_bytes_every_run_and_with_any_number_of_processes(settings, svc, tmp_path):
    for i in range(9):
        add_signer(svc, name=f"S{i}", country=("GB", "DE", "CA")[i % 3], message=f"words {i}",
                   now=NOW + timedelta(minutes=i))
    renderer = letter_batch.Renderer(settings, db=svc.db, keyring=svc.keyring, campaign=svc.campaigns["mamay"])
    batch = letter_batch.Batch(slug="mamay", fmt="mbox", include_delivered=True)  # each run: the same letters
    one = tmp_path / "one.mbox"
    # Mail only to targets with an address: the President, and the GB and CA embassies for their own signers.
    assert letter_batch.run(renderer, batch, one, workers=1) == 9 + 3 + 3
    again = tmp_path / "again.mbox"
    letter_batch.run(renderer, batch, again, workers=1, chunk=4)
    parallel = tmp_path / "parallel.mbox"
    letter_batch.run(renderer, batch, parallel, workers=2, chunk=2)
    assert one.read_bytes() == again.read_bytes() == parallel.read_bytes()
    assert b"Date: " + datetime.strftime(NOW + timedelta(minutes=8), "%a, %d %b %Y %H:%M:%S").encode() \
        in one.read_bytes()


def test_pack_names_only_opted_in_supporters_counts_the_rest_and_folds_small_countries(client, settings, svc,
                                                                                       tmp_path):
    named = []
    for i in range(6):
        _, token = add_signer(svc, name=f"Briton {i}", email=f"briton{i}@example.org", country="GB",
                              city=f"Town {i}")
        if i < 4:
            opt_in(client, token, "embassy-gb")
            named.append(f"Briton {i}")
    with svc.db.write.begin() as session:  # one who agreed, then erased their data: counted, never named
        erasure.erase(session, keys=erasure.email_keys(svc.keyring, "briton3@example.org"), now=NOW)
    named.remove("Briton 3")
    for i in range(4):
        add_signer(svc, name=f"German {i}", country="DE")
    _, lone = add_signer(svc, name="Lone Kazakh", country="KZ")
    out = tmp_path / "pack.pdf"
    result = run_cli(settings, "--format", "pack", "-o", str(out), "--target", "embassy-gb")
    assert "3 supporters named" in result.output
    text = pdf_text(out.read_bytes())
    for name in named:
        assert name in text
    assert "Briton 3" not in text and "Briton 4" not in text and "Briton 5" not in text
    assert "German" not in text and "Lone" not in text
    assert "@" not in text.replace("London@mfa.kz", "") and "Town" not in text  # never emails; `name`: no city
    assert "Confirmed signatures: 11" in text
    assert "Other supporters, who did not ask to be named: 8" in text
    assert "United Kingdom 6" in text and "Other countries 5" in text  # DE 4 + KZ 1 folded together
    assert "Kazakhstan" not in text.split("Signatures by country")[1] and "Germany" not in text
    assert "Page 1 of" in text

    count_pack = tmp_path / "president.pdf"
    run_cli(settings, "--format", "pack", "-o", str(count_pack), "--target", "president", "--lang", "kk")
    text = pdf_text(count_pack.read_bytes())
    # The President may be told the names of those who agree to be named to him (none here): the count only.
    assert "Расталған қолдар саны: 11" in text and "Есімін атауды сұрамаған басқа қолдаушылар саны: 11" in text
    assert "Briton" not in text


def test_pack_needs_a_target_and_a_bad_format_is_refused(settings, svc, tmp_path):
    for args in (["--format", "pack", "-o", str(tmp_path / "p.pdf")],
                 ["--format", "docx", "-o", str(tmp_path / "x")],
                 ["--format", "mbox", "-o", str(tmp_path / "x"), "--target", "prosecutor-general"],
                 ["--format", "txt", "-o", str(tmp_path / "x"), "--target", "nobody"]):
        result = CliRunner().invoke(cli_app, ["letters", "mamay", *args], env=cli_env(settings))
        assert result.exit_code == 2, (args, result.output)


def test_letter_pdf_is_deterministic_for_the_same_letter(svc):
    campaign = svc.campaigns["mamay"]
    view = letters.SignerView("s1", name="Әлия", country="KZ")
    letter = letters.render_letter(campaign, campaign.target("president"), "kk", view, secret=b"k")
    from app import pdf

    first = pdf.letters_pdf([letter], lang="kk", title="x")
    assert first == pdf.letters_pdf([letter], lang="kk", title="x")
    assert b"/CreationDate (D:20000101" in first
    assert datetime(2000, 1, 1, tzinfo=UTC) == pdf.FIXED_DATE


def test_pack_for_a_name_city_target_lists_the_city_too(client, settings, svc, tmp_path):
    for i in range(5):
        _, token = add_signer(svc, name=f"Canadian {i}", country="CA", city=f"Ville {i}")
        if i == 0:
            opt_in(client, token, "embassy-ca")
    out = tmp_path / "ca.pdf"
    run_cli(settings, "--format", "pack", "-o", str(out), "--target", "embassy-ca", "--lang", "ru")
    text = pdf_text(out.read_bytes())
    assert "Canadian 0 Ville 0 Канада" in text and "Canadian 1" not in text and "Ville 1" not in text
    assert "Других сторонников, не пожелавших назвать своё имя: 4" in text
    assert "Страница 1 из" in text
