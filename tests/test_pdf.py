"""Print-ready letters and batches, read back with pdftotext: the address sits in a DL envelope's window, the sender
block and the date beside it, room to sign above the signature, and the sign-off never apart from the signature;
every page says which letter and which of its pages it is; a batch writes one file per target and language, the
same bytes every time and with any number of processes, and no letter for a pending signer.
"""

from __future__ import annotations

import io
import mailbox
import re
import shutil
import subprocess
import tempfile
from datetime import date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from app import letter_batch, letters, pdf
from app.cli import app as cli_app
from app.models import PENDING
from tests.support import csrf_token, make_settings
from tests.test_letters import NOW, add_signer, cli_env, letters_dir_with_named_targets
from tests.test_mail_lands import display_name

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler's pdftotext")

MM = 72 / 25.4  # PDF points per millimetre
DAY = date(2026, 12, 5)


@pytest.fixture
def settings(tmp_path, sqlite_url):
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def pdftotext(data: bytes, *args: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as fh:
        fh.write(data)
        fh.flush()
        return subprocess.run(["pdftotext", *args, fh.name, "-"], capture_output=True, text=True, check=True).stdout


def pages(data: bytes) -> list[str]:
    """Each page's text as pdftotext -layout sets it (pages end with a form feed)."""
    return pdftotext(data, "-layout").split("\f")[:-1]


def flat(text: str) -> str:
    return " ".join(text.split())


def words_in_boxes(data: bytes) -> list[tuple[str, float, float, float, float]]:
    """(word, x0, y0, x1, y1) in mm on the first page, from pdftotext -bbox."""
    html = pdftotext(data, "-bbox", "-f", "1", "-l", "1")
    found = re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', html)
    return [(w, float(a) / MM, float(b) / MM, float(c) / MM, float(d) / MM) for a, b, c, d, w in found]


def opt_in(client, token: str, target: str) -> None:
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": "en", "target": target, "named": "on"}
    assert client.post(f"/s/{token}/named", data=data, follow_redirects=False).status_code == 303


def run_cli(settings, *args: str):
    result = CliRunner().invoke(cli_app, ["letters", "mamay", *args], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("name", "lang"), [("Жанболат Қәғңөұүһі Әлиұлы", "kk"), ("Ольга Щукина-Ёлкина", "ru")])
def test_signers_own_pdf_prints_their_name_in_cyrillic_and_kazakh_with_fonts_embedded(client, svc, name, lang):
    _, token = add_signer(svc, name=name, country="GB", city="Лондон", lang=lang)
    opt_in(client, token, "embassy-gb")
    answer = client.get(f"/s/{token}/letter.pdf?target=embassy-gb")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/pdf"
    assert "attachment" in answer.headers["content-disposition"]
    text = flat(pdftotext(answer.content))
    assert text.count(name) == 2  # the sender block and the signature
    assert " ".join(svc.campaigns["mamay"].target("embassy-gb").addressee[lang].split()) in text  # their language
    assert "125 Pall Mall" in text
    assert pdf.day_text(pdf.today(), lang) in text  # dated the day it is made
    assert pdf.i18n.gettext(lang, pdf.PAGE) % {"n": 1, "nb": len(pages(answer.content))} in text
    assert "· mamay-" not in text  # the signer's own letter has no batch number
    reader = PdfReader(io.BytesIO(answer.content))
    fonts = reader.pages[0]["/Resources"]["/Font"]
    for ref in fonts.values():
        descendant = ref.get_object()["/DescendantFonts"][0].get_object()
        assert "/FontFile2" in descendant["/FontDescriptor"].get_object()  # embedded: nothing to fetch
    assert client.get(f"/s/{token}/letter.pdf?target=embassy-gb").content == answer.content  # same bytes
    assert client.get(f"/s/{token}/letter.pdf?target=embassy-de").status_code == 404  # not their embassy


def test_letter_is_a4_with_the_address_in_the_dl_window_and_the_sender_and_date_beside_it(svc):
    campaign = svc.campaigns["mamay"]
    target = campaign.target("embassy-de")  # the longest title: it wraps inside the window
    view = letters.SignerView("s1", name="Ada Lovelace", city="Berlin", country="DE")
    letter = letters.render_letter(campaign, target, "en", view, secret=b"k", html=False)
    data = pdf.letters_pdf([letter], lang="en", title="x", day=DAY)
    box = PdfReader(io.BytesIO(data)).pages[0].mediabox
    assert (round(float(box.width) / MM), round(float(box.height) / MM)) == (210, 297)

    words = words_in_boxes(data)
    address = {w for line in letter.recipient for w in line.split()}
    placed = [b for b in words if b[0] in address and b[1] < 110 and b[2] < 95]
    assert {b[0] for b in placed} == address
    for word, x0, y0, x1, y1 in placed:  # DIN 5008 B: window 20 mm from the left, 45 mm from the top, 85 x 45 mm
        assert x0 >= 20 and x1 <= 105 and y0 >= 45 and y1 <= 90, (word, x0, y0, x1, y1)
    beside = [b for b in words if b[1] >= 120 and b[2] < 95]
    assert flat(" ".join(b[0] for b in beside)) == "Ada Lovelace Berlin, Germany 5 December 2026"
    subject = next(b for b in words if b[0] == letter.subject.split()[0])
    assert subject[2] > 95  # the text starts below the window

    text = pages(data)
    assert len(text) >= 1 and all(f"Page {i} of {len(text)}" in page for i, page in enumerate(text, 1))
    last = text[-1]
    signoff, signature = last.index("Yours respectfully,"), last.index("Ada Lovelace")
    gap = last[signoff:signature].count("\n")
    assert gap >= 4  # pdftotext leaves the ~20 mm room to sign as blank lines


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
            "--date", "2026-12-05", "--include-delivered")
    [pdf_file] = (out / "pdf").iterdir()
    assert pdf_file.name == "mamay-president-ru.pdf" and pdf_file.stat().st_mode & 0o077 == 0
    text = flat(pdftotext(pdf_file.read_bytes()))
    salutation = svc.campaigns["mamay"].target("president").salutation["ru"]
    assert text.count(salutation) == 6 and "Pending" not in text
    assert text.count("5 декабря 2026 г.") == 6
    assert [int(n) for n in re.findall(r"Письмо № (\d+) · mamay-president-ru", text)][::2] == [1, 2, 3, 4, 5, 6]


def test_batch_pdf_is_one_file_per_target_and_language_split_into_parts_only_when_large(settings, svc, tmp_path):
    for i in range(5):
        add_signer(svc, name=f"S{i}", country="DE", lang=("en", "ru")[i % 2], message=f"words {i}")
    renderer = letter_batch.Renderer(settings, db=svc.db, keyring=svc.keyring, campaign=svc.campaigns["mamay"])
    # Again and again: each run includes the letters the one before recorded as delivered.
    batch = letter_batch.Batch(slug="mamay", fmt="pdf", target="president", day=DAY, include_delivered=True)
    whole = tmp_path / "whole"
    assert letter_batch.run(renderer, batch, whole, workers=1) == 5
    assert sorted(p.name for p in whole.iterdir()) == ["mamay-president-en.pdf", "mamay-president-ru.pdf"]
    english = pages((whole / "mamay-president-en.pdf").read_bytes())
    assert [re.search(r"Letter (\d+) · mamay-president-en", page).group(1) for page in english][::2] == ["1", "2", "3"]

    parts = tmp_path / "parts"
    assert letter_batch.run(renderer, batch, parts, workers=2, chunk=2) == 5
    assert sorted(p.name for p in parts.iterdir()) == [
        "mamay-president-en-part001.pdf", "mamay-president-en-part002.pdf", "mamay-president-en-part003.pdf",
        "mamay-president-ru-part001.pdf", "mamay-president-ru-part002.pdf"]
    assert "Letter 1 · mamay-president-en-part003" in pdftotext((parts / "mamay-president-en-part003.pdf").read_bytes())

    again = tmp_path / "again"
    letter_batch.run(renderer, batch, again, workers=1)
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in whole.iterdir())  # the same bytes


def test_a_batch_of_long_letters_never_leaves_a_sign_off_or_a_few_lines_alone_on_a_page(settings, svc, tmp_path):
    sentence = "I have followed this case since 2022 and I ask you to act on it without delay. "
    for i in range(190):  # paragraphs of every length, so letters end at every height of a page
        add_signer(svc, name=f"S{i}", country=("DE", "GB", "KZ", "FR", "US")[i % 5], lang="en",
                   message=sentence * (i % 47) + "Antidisestablishmentarianism" * (i % 3))
    run_cli(settings, "--format", "pdf", "-o", str(tmp_path / "pdf"), "--target", "president", "--lang", "en",
            "--date", "2026-12-05")
    data = (tmp_path / "pdf" / "mamay-president-en.pdf").read_bytes()
    footer = re.compile(r"Letter (\d+) · mamay-president-en\s+Page (\d+) of (\d+)")
    seen: dict[int, list[tuple[int, int]]] = {}
    short = []
    for page in pages(data):
        lines = [line for line in page.splitlines() if line.strip()]
        letter, n, of = map(int, footer.search(lines[-1]).groups())
        seen.setdefault(letter, []).append((n, of))
        body = lines[:-1]
        if len(body) <= 4:
            short.append((letter, n, body))
        if "Yours respectfully," in page:
            after = page.split("Yours respectfully,", 1)[1]
            assert re.search(r"A supporter of the campaign( from \w+)?", after), (letter, page)  # signature here
            assert n == of  # the closing is on the letter's last page
    assert not short, short[:3]
    assert sorted(seen) == list(range(1, 191))
    assert all(numbers == [(n, len(numbers)) for n in range(1, len(numbers) + 1)] for numbers in seen.values())
    assert sum(len(v) > 1 for v in seen.values()) > 100  # most of these letters run over a page
    assert pdftotext(data).count("Yours respectfully,") == 190


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


def test_letter_pdf_is_deterministic_for_the_same_letter_and_day(svc):
    campaign = svc.campaigns["mamay"]
    view = letters.SignerView("s1", name="Әлия", country="KZ")
    letter = letters.render_letter(campaign, campaign.target("president"), "kk", view, secret=b"k")
    first = pdf.letters_pdf([letter], lang="kk", title="x", day=DAY)
    assert first == pdf.letters_pdf([letter], lang="kk", title="x", day=DAY)
    assert first != pdf.letters_pdf([letter], lang="kk", title="x", day=DAY + timedelta(days=1))
    assert b"/CreationDate (D:20000101" in first
    assert "2026 жылғы 5 желтоқсан" in pdftotext(first)


def test_a_bad_date_is_refused(settings, svc, tmp_path):
    result = CliRunner().invoke(cli_app, ["letters", "mamay", "--format", "pdf", "-o", str(tmp_path / "x"),
                                          "--date", "5 Dec"], env=cli_env(settings))
    assert result.exit_code == 2 and "--date must be a date" in result.output
    assert not Path(tmp_path / "x").exists()
