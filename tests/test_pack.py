"""The appeal pack, read back with pdftotext: a formal collective appeal from the organisation as its named applicant
(APC Art. 63: name, postal address, the addressee, the date, the substance, a signature), in the target's appeal
language; the supporters' own paragraphs attributed only as far as each chose and the small-cell rule allows; an
annex of those who chose to be named; never a signer's e-mail, never the texts written for supporters.
"""

from __future__ import annotations

import re
import shutil

import pytest
from typer.testing import CliRunner

from app import erasure, letters
from app.cli import app as cli_app
from app.models import Signature
from tests.support import make_settings
from tests.test_letters import NOW, add_signer, cli_env, letters_dir_with_named_targets
from tests.test_pdf import flat, opt_in, pages, pdftotext, run_cli

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler's pdftotext")


@pytest.fixture
def settings(tmp_path, sqlite_url):
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def keep_paragraph_from_the_state(svc, signature_id: int) -> None:
    with svc.db.write.begin() as session:
        session.get(Signature, signature_id).paragraph_to_authorities = False


def make_pack(settings, tmp_path, target: str, *args: str) -> tuple[bytes, str]:
    out = tmp_path / f"{target}.pdf"
    result = run_cli(settings, "--format", "pack", "-o", str(out), "--target", target, "--date", "2026-12-05", *args)
    assert out.stat().st_mode & 0o077 == 0
    return out.read_bytes(), result.output


def supporters(client, svc) -> None:
    """Six in Britain (four agree to be named to the British embassy, one of them then erases their data), seven in
    Germany, four in France and one in Kazakhstan (those five are "other countries" together); paragraphs of every
    kind."""
    for i in range(6):
        _, token = add_signer(svc, name=f"Briton {i}", email=f"briton{i}@example.org", country="GB",
                              city=f"Town {i}", message=f"British words {i}." if i < 3 else "")
        if i < 4:
            opt_in(client, token, "embassy-gb")
    for i in range(3):
        add_signer(svc, name=f"German {i}", country="DE")
    add_signer(svc, name="Asel Namesake", country="DE", message="Asel asks you to free him.")  # names its writer
    for i in range(4):
        add_signer(svc, name=f"French {i}", country="FR")
    add_signer(svc, name="Dana Seitova", country="KZ", message="Lone words from Almaty.")
    add_signer(svc, name="Mailer", country="DE", message="Write to me at mailer@example.net please.")
    kept, _ = add_signer(svc, name="Kept", country="DE", message="Words kept from the state.")
    keep_paragraph_from_the_state(svc, kept)
    add_signer(svc, name="Erased", email="erased@example.org", country="DE", message="Erased words.")
    with svc.db.write.begin() as session:  # counted as anonymous units, never named, their words gone
        for email in ("briton3@example.org", "erased@example.org"):
            erasure.erase(session, keys=erasure.email_keys(svc.keyring, email), now=NOW)


def test_pack_is_a_formal_appeal_from_the_organisation_in_the_targets_language(client, settings, svc, tmp_path):
    supporters(client, svc)
    campaign = svc.campaigns["mamay"]
    target = campaign.target("prosecutor-general")
    org, appeal = campaign.organisation, campaign.appeal
    data, _ = make_pack(settings, tmp_path, "prosecutor-general")  # its appeal language: Russian
    text = pages(data)
    cover = flat(pdftotext(data, "-f", "1", "-l", "2"))  # the cover letter; each column read whole
    for part in (org.name["ru"], *org.address.splitlines(), "Электронная почта: appeals@example.org",
                 "Сайт: https://example.org", "Заявитель", *letters.recipient_block(target, "ru"),
                 "5 декабря 2026 г.", appeal.subject["ru"], target.salutation["ru"],
                 *[flat(p) for p in appeal.body["ru"].split("\n\n")], "Просим:",
                 *[f"{i}. {ask}" for i, ask in enumerate(campaign.asks_for(target, "ru"), 1)],
                 "подтвердивших свою подпись по электронной почте, на 5 декабря 2026 г.: 18.",
                 "Приложения: 1. сторонники по странам 2. собственные слова сторонников (абзацев: 4)",
                 appeal.closing["ru"], "(подпись)", org.representative.name["ru"], org.representative.title["ru"],
                 "от имени и по поручению организации"):
        assert flat(part) in cover, part
    assert cover.index(appeal.closing["ru"]) < cover.index("(подпись)")  # the signature block ends the letter
    # Authorities may now be named to (by choice), so the pack gives per-country totals too, small ones folded.
    assert "Сторонники по странам" in flat(" ".join(text[1:3]))
    for i, page in enumerate(text, 1):  # every page numbered, and marked while the organisation is the sample
        assert f"Страница {i} из {len(text)}" in page
        assert "ОБРАЗЕЦ, не для отправки: замените данные организации в campaign.toml." in page
        assert "SAMPLE, not for delivery: replace the organisation in campaign.toml." in page

    words = flat(" ".join(text[1:]))
    assert "Собственные слова сторонников" in words
    for said, by in (("British words 0.", "Сторонник обращения (Великобритания)"),
                     ("Lone words from Almaty.", "Сторонник обращения")):  # Kazakhstan: fewer than k
        assert f"{said} — {by}" in words
    assert words.count(" — Сторонник обращения") == 4
    whole = flat(pdftotext(data))
    assert "Kept" not in whole and "kept from the state" not in whole  # the signer kept it from the state
    assert "Erased" not in whole and "mailer" not in whole  # erased; an address in it fails the check
    assert "Asel" not in whole  # the check finds its writer's name in it
    assert "@" not in whole.replace("appeals@example.org", "")  # never a signer's e-mail
    assert "Briton" not in whole and "Town" not in whole  # nobody named to a `count` target
    for supporters_text in (campaign.summary["ru"], *campaign.case["ru"].split("\n\n")):
        assert flat(supporters_text)[:80] not in whole  # what supporters read is not what the official reads


def test_pack_to_an_embassy_asks_what_an_embassy_can_do_and_names_only_those_who_chose(client, settings, svc,
                                                                                       tmp_path):
    supporters(client, svc)
    campaign = svc.campaigns["mamay"]
    target = campaign.target("embassy-gb")
    data, output = make_pack(settings, tmp_path, "embassy-gb")  # no appeal_lang: the campaign's first, English
    assert "3 supporters named" in output
    cover = flat(pdftotext(data, "-f", "1", "-l", "1"))
    for i, ask in enumerate(campaign.asks_for(target, "en"), 1):
        assert f"{i}. {flat(ask)}" in cover
    assert "Quash the conviction handed down" not in cover  # the authorities' asks are not the embassy's
    assert "as of 5 December 2026: 18." in cover
    assert len(pages(data)[0].strip()) and "for and on behalf of" in pages(data)[0]  # the cover is one page
    countries = flat(pdftotext(data, "-f", "2", "-l", "2"))  # enclosure 1: the countries, small ones folded
    assert "Enclosure 1 Supporters by country Germany 7 United Kingdom 6 Other countries 5" in countries
    assert "France" not in countries and "Kazakhstan" not in countries  # FR 4 and KZ 1: under k
    assert "Enclosures: 1. the supporters by country 2. the supporters' own words (paragraphs: 4) 3. the supporters " \
           "who asked to be named to you (names: 3)" in cover
    assert "for and on behalf of Sample Human Rights Organisation" in cover

    whole = flat(pdftotext(data))
    assert "British words 0. — Briton 0, United Kingdom" in whole  # named: they chose it for this embassy
    assert "British words 1. — Briton 1, United Kingdom" in whole
    annex = flat(whole.split("Supporters who asked to be named to you")[1])
    assert [n for n in ("Briton 0", "Briton 1", "Briton 2", "Briton 3", "Briton 4") if n in annex] == [
        "Briton 0", "Briton 1", "Briton 2"]  # Briton 3 erased their data; Briton 4 never agreed
    assert "Other supporters, who did not ask to be named: 15" in annex
    assert "Lone words from Almaty. — A supporter" in whole  # Kazakhstan: fewer than k
    assert "Town" not in whole and "German 0" not in whole and "Seitova" not in whole  # `name`: no city
    assert "@" not in whole.replace("appeals@example.org", "").replace("London@mfa.kz", "")


def test_pack_for_a_name_city_target_lists_the_city_too(client, settings, svc, tmp_path):
    for i in range(5):
        _, token = add_signer(svc, name=f"Canadian {i}", country="CA", city=f"Ville {i}")
        if i == 0:
            opt_in(client, token, "embassy-ca")
    data, _ = make_pack(settings, tmp_path, "embassy-ca", "--lang", "ru")
    whole = flat(pdftotext(data, "-layout"))
    assert "Canadian 0 Ville 0 Канада" in whole and "Canadian 1" not in whole and "Ville 1" not in whole
    assert "Других сторонников, не пожелавших назвать своё имя: 4" in whole
    assert "Приложение 2 Сторонники, пожелавшие сообщить Вам своё имя" in whole  # after the countries (CA: 5)
    assert "Страница 1 из" in whole


@pytest.mark.parametrize(("args", "subject_lang", "closing"), [((), "kk", "Құрметпен,"),
                                                                (("--lang", "en"), "en", "Yours faithfully,")])
def test_pack_is_in_the_targets_appeal_language_unless_asked_otherwise(settings, svc, tmp_path, args, subject_lang,
                                                                      closing):
    add_signer(svc, name="Someone", country="DE")
    campaign = svc.campaigns["mamay"]
    data, _ = make_pack(settings, tmp_path, "human-rights-commissioner", *args)  # appeal_lang = "kk"
    cover = flat(" ".join(pages(data)[:2]))  # the cover letter may run onto a second page
    assert campaign.appeal.subject[subject_lang] in cover and closing in cover


def test_pack_is_dated_and_counts_up_to_its_date_with_the_same_bytes_every_time(settings, svc, tmp_path):
    add_signer(svc, name="Early", country="DE", now=NOW)  # 1 December
    add_signer(svc, name="Late", country="DE", now=NOW.replace(day=4))
    first = tmp_path / "a.pdf"
    run_cli(settings, "--format", "pack", "-o", str(first), "--target", "president", "--date", "2026-12-02")
    assert "на 2 декабря 2026 г.: 1." in flat(pdftotext(first.read_bytes()))
    second = tmp_path / "b.pdf"
    run_cli(settings, "--format", "pack", "-o", str(second), "--target", "president", "--date", "2026-12-02")
    assert first.read_bytes() == second.read_bytes()
    later = tmp_path / "c.pdf"
    run_cli(settings, "--format", "pack", "-o", str(later), "--target", "president", "--date", "2026-12-04")
    assert "на 4 декабря 2026 г.: 2." in flat(pdftotext(later.read_bytes()))
    run_cli(settings, "--format", "pack", "-o", str(later), "--target", "president", "--date", "2026-12-04",
            "--since", "2026-12-02")
    cover = flat(pdftotext(later.read_bytes()))
    assert "на 4 декабря 2026 г.: 1." in cover and "Учтены только подписи, подтверждённые не ранее 2 декабря" in cover


def test_pack_of_a_real_organisation_carries_its_registration_and_no_sample_mark(tmp_path, sqlite_url):
    letters_dir = letters_dir_with_named_targets(tmp_path)
    toml = letters_dir / "mamay" / "campaign.toml"
    text = toml.read_text(encoding="utf-8").replace("example.org", "mamay-appeal.kz")
    text = text.replace('privacy_contact = "privacy@mamay-appeal.kz"',
                        'privacy_contact = "privacy@mamay-appeal.kz"\nregistration = "BIN 123456789012"')
    toml.write_text(text, encoding="utf-8")
    settings = make_settings(tmp_path, sqlite_url, letters_dir=letters_dir)
    out = tmp_path / "pack.pdf"
    result = CliRunner().invoke(cli_app, ["letters", "mamay", "--format", "pack", "-o", str(out), "--target",
                                          "president"], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    whole = pdftotext(out.read_bytes())
    assert "Регистрационный номер: BIN 123456789012" in whole
    assert "ОБРАЗЕЦ" not in whole and "SAMPLE" not in whole
    assert re.search(r"Страница 1 из \d", whole)


def test_pack_needs_a_target_and_a_bad_format_is_refused(settings, svc, tmp_path):
    for args in (["--format", "pack", "-o", str(tmp_path / "p.pdf")],
                 ["--format", "pack", "-o", str(tmp_path / "p.pdf"), "--target", "president", "--lang", "de"],
                 ["--format", "docx", "-o", str(tmp_path / "x")],
                 ["--format", "mbox", "-o", str(tmp_path / "x"), "--target", "prosecutor-general"],
                 ["--format", "txt", "-o", str(tmp_path / "x"), "--target", "nobody"]):
        result = CliRunner().invoke(cli_app, ["letters", "mamay", *args], env=cli_env(settings))
        assert result.exit_code == 2, (args, result.output)
        assert not (tmp_path / "p.pdf").exists()
