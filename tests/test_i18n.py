"""Russian and Kazakh: every string we mark is translated, and a supporter sees pages and mails in their language.

The catalog check extracts the marked strings from the current sources (the same mapping `make messages` uses),
so a new `_()` in a template fails here until ru and kk translate it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from app import i18n
from tests.support import body, deliver, sign_form

ROOT = Path(__file__).resolve().parent.parent
MAPPING = ROOT / "app" / "locale" / "babel.cfg"
TRANSLATED = ("ru", "kk")
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def _in_app(path: str) -> bool:
    rel = Path(path).relative_to(ROOT)
    return rel.parts[0] == "app" and not rel.name.startswith((".", "_"))


def source_messages() -> dict[str, list[str]]:
    """msgid -> where it is used, extracted from app/ now (not from a possibly stale messages.pot)."""
    with MAPPING.open() as fh:
        method_map, options_map = parse_mapping_cfg(fh, filename=str(MAPPING))
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    found: dict[str, list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        ROOT, method_map, options_map, keywords=keywords, directory_filter=_in_app
    ):
        for msgid in message if isinstance(message, tuple) else (message,):
            if msgid:
                found.setdefault(msgid, []).append(f"{filename}:{lineno}")
    return found


def catalog(lang: str):
    with (ROOT / "app" / "locale" / lang / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return read_po(fh, locale=lang)


def formats(text: str, names: set[str]) -> bool:
    """Whether newstyle gettext (which always applies `%`) can fill this text."""
    try:
        text % {name: "1" for name in names}
    except (ValueError, TypeError, KeyError):
        return False
    return True


def test_extraction_finds_strings_from_python_pages_and_mails():
    found = source_messages()
    places = {place.split(":")[0] for places in found.values() for place in places}
    assert "app/signing.py" in places  # N_() validation messages
    assert "app/mail.py" in places  # subjects
    assert "app/templates/petition.html" in places and "app/templates/mail/confirm.txt" in places
    assert "Enter a valid email address." in found and "Sign" in found


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_marked_string_is_translated_with_the_same_placeholders(lang):
    found = source_messages()
    cat = catalog(lang)
    problems = []
    for msgid, places in sorted(found.items()):
        entry = cat.get(msgid)
        where = ", ".join(places[:2])
        if entry is None or not entry.string:
            problems.append(f"untranslated ({where}): {msgid!r}")
        elif entry.fuzzy:
            problems.append(f"fuzzy ({where}): {msgid!r}")
        elif set(PLACEHOLDER.findall(entry.string)) != set(PLACEHOLDER.findall(msgid)):
            problems.append(f"placeholders differ ({where}): {msgid!r} -> {entry.string!r}")
        elif formats(msgid, set(PLACEHOLDER.findall(msgid))) and not formats(
            entry.string, set(PLACEHOLDER.findall(msgid))
        ):
            problems.append(f"stray % (write %% for a percent sign) ({where}): {entry.string!r}")
    assert not problems, f"{lang}: run `make messages` and translate:\n" + "\n".join(problems)


def test_kazakh_entries_are_kazakh_not_english_or_russian_copies():
    kk, ru = catalog("kk"), catalog("ru")
    entries = [m for m in kk if m.id and m.string]
    english = [
        m.id for m in entries
        if re.search(r"[a-z]{2,}", PLACEHOLDER.sub("", m.string), re.IGNORECASE)
        and not re.search(r"[а-яёәғқңөұүһі]", m.string, re.IGNORECASE)
    ]
    assert not english, f"still in English: {english}"
    copies = [m.id for m in entries if len(m.id) > 20 and ru.get(m.id) and ru.get(m.id).string == m.string]
    assert not copies, f"Kazakh entries copied from Russian: {copies}"
    used = set("".join(m.string for m in entries).lower())
    assert set("әғқңөұүі") <= used  # Kazakh Cyrillic letters, not Russian or Latin look-alikes


def page_text(response) -> str:
    return html.unescape(response.text)


@pytest.mark.parametrize(
    ("lang", "button", "name_error", "consent_error"),
    [
        ("ru", "Подписать", "Введите имя: от 1 до 100 символов", "дать согласие на хранение вашей подписи"),
        ("kk", "Қол қою", "Атыңызды енгізіңіз", "Қолтаңбаңызды сақтауымызға келісетініңізді белгілеңіз"),
    ],
)
def test_petition_page_and_its_errors_are_in_the_chosen_language(client, lang, button, name_error, consent_error):
    page = client.get(f"/c/mamay?lang={lang}")
    text = page_text(page)
    assert page.status_code == 200 and f'<html lang="{lang}">' in text
    assert f'<button type="submit">{button}</button>' in text
    assert '<button type="submit">Sign</button>' not in text and "Your name" not in text

    bad = sign_form(client, lang=lang, name="", email="not-an-address", consent="")
    text = page_text(bad)
    assert bad.status_code == 422 and f'<html lang="{lang}">' in text
    assert name_error in text and consent_error in text
    assert i18n.gettext(lang, "Enter a valid email address.") in text
    assert "Enter your name" not in text and "Please tick the box" not in text


@pytest.mark.parametrize(
    ("header", "lang", "heading"),
    [
        ("kk-KZ,kk;q=0.9,ru;q=0.8,en;q=0.5", "kk", "Біз не сұраймыз"),
        ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "ru", "О чём мы просим"),
        ("de-DE,de;q=0.9,ru;q=0.6,en;q=0.4", "ru", "О чём мы просим"),  # the best language we have
        ("en-GB,en;q=0.9,kk;q=0.8", "en", "What we ask"),
    ],
)
def test_accept_language_picks_the_page_language(client, header, lang, heading):
    text = page_text(client.get("/c/mamay", headers={"Accept-Language": header}))
    assert f'<html lang="{lang}">' in text and f"<h2>{heading}</h2>" in text


def test_lang_in_the_address_wins_over_accept_language(client):
    text = page_text(client.get("/?lang=kk", headers={"Accept-Language": "ru"}))
    assert '<html lang="kk">' in text and "<h1>Науқандар</h1>" in text


@pytest.mark.parametrize(
    ("lang", "names", "absent"),
    [
        ("ru", {"DE": "Германия", "KZ": "Казахстан", "RU": "Россия"}, "Қазақстан"),
        ("kk", {"DE": "Германия", "KZ": "Қазақстан", "RU": "Ресей"}, "Россия"),
        ("en", {"DE": "Germany", "KZ": "Kazakhstan", "RU": "Russia"}, "Германия"),
    ],
)
def test_country_names_in_the_select_are_in_the_page_language(client, lang, names, absent):
    text = page_text(client.get(f"/c/mamay?lang={lang}"))
    for code, name in names.items():
        assert f'<option value="{code}">{name}</option>' in text
    assert absent not in text
    # Sorted for a reader of that language: in Russian "Австрия" comes before "Германия".
    if lang == "ru":
        assert text.index(">Австрия<") < text.index(">Германия<") < text.index(">Казахстан<")


@pytest.mark.parametrize(
    ("lang", "subject", "lines"),
    [
        ("ru", "Пожалуйста, подтвердите подпись: ",
         ["Спасибо за подпись: ", "Ваш код:", "Код и ссылка действительны 7 дн."]),
        ("kk", "Қолтаңбаңызды растаңыз: ",
         ["Қол қойғаныңызға рахмет: ", "Кодыңыз:", "Код пен сілтеме 7 күн жарамды."]),
    ],
)
def test_confirmation_mail_is_in_the_signers_language(client, svc, smtp, lang, subject, lines):
    address = f"{lang}@example.org"
    assert sign_form(client, lang=lang, email=address).status_code == 303
    deliver(svc, smtp.url)
    [mail] = smtp.sink.to(address)
    title = svc.campaigns["mamay"].title[lang]
    assert mail["Subject"] == subject + title
    text = body(mail)
    for line in lines:
        assert line in text
    assert "Your code" not in text and "valid for" not in text


def test_discreet_mail_uses_a_translated_neutral_subject_and_sender(client, svc, smtp):
    sign_form(client, lang="kk", email="quiet@example.org", discreet="on")
    deliver(svc, smtp.url)
    [mail] = smtp.sink.to("quiet@example.org")
    assert mail["Subject"] == "Растау кодыңыз"
    assert "Хабарламалар" in str(mail["From"])
    assert svc.campaigns["mamay"].title["kk"] not in body(mail) and "Кодыңыз:" in body(mail)


def test_thanks_page_after_signing_is_translated(client):
    answer = sign_form(client, lang="ru", email="thanks@example.org")
    text = page_text(client.get(answer.headers["location"]))
    assert "<h1>Спасибо! Остался ещё один шаг</h1>" in text and "Код подтверждения" in text


@pytest.mark.parametrize(
    ("lang", "heading", "filled"),
    [
        ("ru", "Конфиденциальность: что мы храним и кто это видит", ["меньше 5 подписей", "через 180 дн."]),
        ("kk", "Құпиялылық: не сақтаймыз және оны кім көреді", ["Кемінде 5 қолтаңба", "180 күн өткенде"]),
    ],
)
def test_privacy_notice_is_translated_with_the_configured_figures(client, lang, heading, filled):
    text = page_text(client.get(f"/privacy?lang={lang}"))
    assert f"<h1>{heading}</h1>" in text
    for part in filled:
        assert part in text
    assert "What we store" not in text


def test_api_validation_messages_follow_the_requested_language(client):
    answer = client.post(
        "/api/v1/campaigns/mamay/signatures",
        json={"name": "", "email": "x@example.org", "country": "KZ", "city": "", "message": "", "consent": True,
              "lang": "kk"},
    )
    assert answer.status_code == 422
    messages = {e["field"]: e["message"] for e in answer.json()["detail"]}
    assert messages["name"] == i18n.gettext("kk", "Enter your name: 1 to 100 characters, no control characters.")
    assert messages["name"].startswith("Атыңызды енгізіңіз")


@pytest.mark.parametrize(
    ("lang", "expired_form", "bad_link"),
    [
        ("ru", "Срок действия формы истёк.", "Эта ссылка недействительна"),
        ("kk", "Бұл пішіннің мерзімі өтіп кетті.", "Бұл сілтеме жарамсыз"),
    ],
)
def test_error_pages_explain_the_problem_in_the_visitors_language(client, lang, expired_form, bad_link):
    forged = client.post(f"/c/mamay/sign?lang={lang}", data={"name": "x"},
                         headers={"Accept-Language": lang, "Origin": "https://evil.example"})
    assert forged.status_code == 403 and expired_form in page_text(forged)
    unknown = client.get(f"/s/not-a-real-token?lang={lang}")
    text = page_text(unknown)
    assert unknown.status_code == 404 and bad_link in text and "not valid" not in text


def test_numbers_and_progress_are_written_as_each_language_writes_them():
    from app.i18n import page_env, progress

    assert [page_env(lang).filters["num"](5000) for lang in ("en", "ru", "kk")] == ["5,000", "5\xa0000", "5\xa0000"]
    assert progress(38, 5000, "en") == "<1%" and progress(0, 5000, "en") == "0%"  # 38 signers are not 0 %
    assert progress(2499, 5000, "en") == "49%" and progress(9000, 5000, "en") == "100%"
    assert progress(38, 5000, "ru") == "<1\xa0%"
