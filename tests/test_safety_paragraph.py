"""Signer safety, the own paragraph: it goes word for word into letters to the Kazakh state, so what could
identify its writer is refused unless the signer keeps it out of those letters; and every embassy of Kazakhstan is
treated, and named to the signer, as the Kazakh state."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import i18n, letter_batch, letters, paragraph
from app.campaigns import Target, load_campaigns
from app.main import create_app
from app.models import Signature
from app.settings import ROOT
from tests.support import SIGNER, counts, deliver, make_settings, sign_form
from tests.test_access import confirm, sign_up
from tests.test_letters import MAMAY, add_signer

NAME = SIGNER["name"]  # "Aigerim Test"

# (paragraph, kind found): real-looking details in English, Russian and Kazakh.
FOUND = [
    ("Call me on +7 701 123 45 67 if you need a witness.", "phone"),
    ("Мой номер 8 (701) 123-45-67, звоните.", "phone"),
    ("Менің телефоным: 8 777 555 44 33", "phone"),
    ("тел. 87011234567", "phone"),
    ("+7(727)2501234", "phone"),
    ("Наш городской: 250-12-34", "phone"),
    ("My sister in London: +44 20 7946 0958", "phone"),
    ("＋７ ７０１ １２３ ４５ ６７", "phone"),  # full-width digits
    ("Write to aigerim.t@mail.kz for details.", "email"),
    ("Пишите: ерлан@пример.қаз", "email"),
    ("Мой ИИН 900101300123, я не боюсь.", "iin"),
    ("ЖСН: 900101 300 123", "iin"),
    ("my IIN is 9001 0130 0123", "iin"),
    ("Я живу по адресу ул. Абая 150, кв. 12.", "address"),
    ("живу на улице Абая, д. 15", "address"),
    ("Мекенжайым: Абай даңғылы 150", "address"),
    ("Абай көшесі, 12-үй, 5-пәтер", "address"),
    ("мкр Самал-2, д. 5", "address"),
    ("пр-т Достык 85", "address"),
    ("ш/а Самал-2, 5 үй", "address"),
    ("I live at 12 Baker Street.", "address"),
    ("221B Baker St., London", "address"),
    ("Apt 5, Mangilik Yel St, 6", "address"),
    ("More at https://example.org/mamay", "link"),
    ("www.facebook.com/aigerim.t", "link"),
    ("see my blog: aigerim-t.kz", "link"),
    ("t.me/aigerim_t", "link"),
    ("Find me on Telegram, @aigerim_t", "link"),
    ("I, Aigerim, ask you to free him.", "name"),
    ("Best wishes, TEST", "name"),
    ("Мен, Айгерім, сізден сұраймын.", "name"),  # the name typed in Latin, a Kazakh letter in the text
]

# Nothing here identifies anyone: years, articles, opinions, counts, dates, amounts, a court's number.
CLEAR = [
    "I have followed this case since 2022.",
    "Article 63 of the Constitution protects him.",
    "Opinion No. 11/2023 of the UN Working Group found his detention arbitrary.",
    "238 people died in January 2022.",
    "On 10 April 2023 a court in Almaty convicted him; on 2 November 2022 he was moved to house arrest.",
    "Статья 274 УК РК; мнение № 11/2023; 238 человек погибли; 13.02.2022; 2022–2023; 1 000 000 тенге.",
    "2022 жылғы қаңтарда 238 адам қаза тапты. Районный суд № 2.",
    "The street protests of January 2022 were peaceful. I live 5 minutes from the street.",
    "e.g. the U.S., т.д., и т.п.",
    "Free Zhanbolat Mamay! Human Rights Watch agrees.",
    "",
]


def page_text(response) -> str:
    return html.unescape(response.text)


# --- the check itself --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), FOUND)
def test_each_identifying_detail_is_found_by_its_kind(text, kind):
    assert paragraph.findings(text, name=NAME) == (kind,)


@pytest.mark.parametrize("text", CLEAR)
def test_years_articles_counts_and_dates_are_not_flagged(text):
    assert paragraph.findings(text, name=NAME) == ()


def test_the_campaigns_own_texts_in_every_language_are_not_flagged():
    campaign = load_campaigns(ROOT / "templates" / "letters")["mamay"]
    for lang in campaign.languages:
        texts = [campaign.case[lang], campaign.summary[lang], *campaign.asks[lang], *campaign.openings[lang],
                 *campaign.closings[lang]]
        for text in texts:
            assert paragraph.findings(text, name=NAME) == (), (lang, text[:80])


@pytest.mark.parametrize(("name", "text", "found"), [
    ("Ann Li", "I announce my support.", False),  # a 3-letter word matches whole only
    ("Ann Li", "Li and I", False),  # under 3 letters: not looked for
    ("Jean-Pierre O'Neil", "Pierre writes", True),
    ("Ерлан Сұлтанбеков", "С уважением, Сұлтанбековтың отбасы", True),
    ("Ерлан Сұлтанбеков", "С уважением, ерлан", True),
    ("<script>alert(1)</script>", "<script>alert(2)</script>", False),  # markup is not a name
    ("Zarina Qasymqyzy", "Қасымқызы Зарина", True),  # typed in Latin, written in Cyrillic
    ("Yerlan Tokayev", "Ерлан", True),
    ("Ерлан Сұлтанбеков", "Sultanbekov family", True),
])
def test_the_signers_own_name(name, text, found):
    assert ("name" in paragraph.findings(text, name=name)) is found


def test_the_refusal_names_the_first_kind_and_says_when_there_is_more():
    found = paragraph.findings("Aigerim, +7 701 123 45 67, aigerim@mail.kz", name=NAME)
    assert found == ("name", "phone", "email")
    assert paragraph.refusal(found) == paragraph.REFUSAL_AND_MORE["name"]
    assert paragraph.refusal(("phone",)) == paragraph.REFUSAL["phone"]


# --- the form and the API ----------------------------------------------------------------------------------------

FORM_CASES = [
    ("phone", "Call me: +7 701 123 45 67", {"en": "a phone number", "ru": "номер телефона", "kk": "телефон нөмірі"}),
    ("iin", "ИИН 900101300123", {"en": "identification number (IIN)", "ru": "ИИН", "kk": "ЖСН"}),
    ("email", "aigerim.t@mail.kz", {"en": "an email address", "ru": "адрес электронной почты",
                                     "kk": "электрондық пошта мекенжайы"}),
    ("link", "https://example.org/me", {"en": "a link", "ru": "ссылка", "kk": "сілтеме"}),
    ("address", "ул. Абая 150, кв. 12", {"en": "a street address", "ru": "адрес (улица, дом)",
                                        "kk": "көше мекенжайы"}),
    ("name", "Aigerim asks you", {"en": "your name", "ru": "ваше имя", "kk": "атыңыз"}),
]


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
@pytest.mark.parametrize(("kind", "text", "said"), FORM_CASES)
def test_a_paragraph_that_identifies_its_writer_is_refused_and_nothing_is_stored(client, svc, lang, kind, text,
                                                                                  said):
    before = counts(svc)
    answer = sign_form(client, lang=lang, message=text)
    assert answer.status_code == 422
    assert counts(svc) == before == (0, 0)
    shown = page_text(answer)
    assert i18n.gettext(lang, paragraph.REFUSAL[kind]) in shown and said[lang] in shown
    assert f">{text}</textarea>" in shown  # the paragraph is kept to edit
    assert 'name="message_private"' in shown  # and the way out is offered
    assert i18n.gettext(lang, "Keep my paragraph out of letters to the authorities of Kazakhstan") in shown


@pytest.mark.parametrize("text", CLEAR)
def test_a_paragraph_that_identifies_nobody_is_accepted(client, svc, text):
    assert sign_form(client, message=text).status_code == 303
    assert counts(svc) == (1, 1)


def test_the_form_says_where_the_paragraph_goes(client, svc):
    campaign = svc.campaigns["mamay"]
    for lang in ("en", "ru", "kk"):
        shown = page_text(client.get(f"/c/mamay?lang={lang}"))
        where = re.search(r'id="f-message-where">([^<]+)<', shown).group(1)
        for target in campaign.targets:
            if target.kind == "authority":
                assert target.title[lang] in where
        assert i18n.country_name("GB", lang) in where and i18n.country_name("DE", lang) in where


@pytest.mark.parametrize("lang", ["en", "kk"])
def test_the_api_refuses_it_naming_the_field_message_in_the_signers_language(client, svc, lang):
    payload = {**SIGNER, "consent": True, "lang": lang, "message": "Звоните: 8 (701) 123-45-67"}
    answer = client.post("/api/v1/campaigns/mamay/signatures", json=payload)
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{"field": "message", "message": i18n.gettext(lang, paragraph.REFUSAL["phone"])}]
    assert counts(svc) == (0, 0)
    accepted = client.post("/api/v1/campaigns/mamay/signatures", json={**payload, "message_private": True})
    assert accepted.status_code == 202 and counts(svc) == (1, 1)


# --- kept out: stored, and honoured in every letter to the Kazakh state ------------------------------------------

PRIVATE = "Aigerim here: call +7 701 123 45 67, Abay St 150"


def test_kept_out_it_is_accepted_and_no_letter_to_the_kazakh_state_carries_it(client, svc, smtp):
    who = confirm(client, svc, smtp, sign_up(client, svc, smtp, "kept@example.org", message=PRIVATE,
                                             message_private="on"))
    told = confirm(client, svc, smtp, sign_up(client, svc, smtp, "told@example.org", name="Dana Other",
                                              message="I have followed this case since 2022."))
    campaign = svc.campaigns["mamay"]
    secret = letters.variation_secret(svc.settings.secret_key)
    with svc.db.read() as s:
        rows = {r.id: r for r in s.scalars(select(Signature))}
        kept = next(r for r in rows.values() if not r.paragraph_to_authorities)
        other = next(r for r in rows.values() if r.paragraph_to_authorities)
        assert svc.keyring.open(kept.message_enc, "message", kept.key_id) == PRIVATE  # stored as typed
        for row, present in ((kept, False), (other, True)):
            items = letters.signer_letters(s, campaign=campaign, row=row, lang="en", keyring=svc.keyring,
                                           secret=secret, public=frozenset(), named=())
            assert {i.target.kind for i in items} == {"authority", "embassy"}  # DE: three authorities, the embassy
            for item in items:
                assert ("call +7" in item.letter.text) is False
                assert ("I have followed this case" in item.letter.text) is present
                assert item.paragraph_kept_out is (row is kept)
            for target in letters.targets_for(campaign, row.country):
                pdf_letter = letters.signer_letter(s, campaign=campaign, row=row, target_key=target.key, lang="ru",
                                                   keyring=svc.keyring, secret=secret, public=frozenset())
                assert "call +7" not in pdf_letter.text

    # Their own page says so, and shows the paragraph nowhere in a letter.
    page = page_text(client.get(f"/s/{who.manage}?lang=kk"))
    assert i18n.gettext("kk", "You chose to keep your paragraph out of letters to the authorities of Kazakhstan, "
                              "its embassies included: it is not in this letter.") in page
    assert "+7 701" not in page
    assert "I have followed" in page_text(client.get(f"/s/{told.manage}?lang=en"))

    # "Send it for me" to the President: the mail has no paragraph.
    own = re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/s/{who.manage}").text).group(1)
    sent = client.post(f"/s/{who.manage}/send", data={"csrf_token": own, "target": "president", "lang": "en"},
                       follow_redirects=False)
    assert sent.status_code == 303
    deliver(svc, smtp.url)
    for received in smtp.sink.messages:
        assert "+7 701" not in received.message.as_string()

    # The organisers' batch of letters: the same.
    renderer = letter_batch.Renderer(svc.settings, db=svc.db, keyring=svc.keyring, campaign=campaign)
    batch = letter_batch.Batch(slug="mamay", fmt="txt", include_delivered=True)  # the one sent for them too
    with svc.db.read() as s:
        plan = renderer.plan(s, batch, size=100)
    texts = {sig: [] for sig in rows}
    for lo, hi in plan.ranges:
        for sig, letter in renderer.letters_in(batch, plan, lo, hi):
            texts[sig].append(letter.text)
    assert len(texts[kept.id]) == 4 and not any("+7 701" in t for t in texts[kept.id])
    assert all("I have followed this case" in t for t in texts[other.id])


def test_only_a_letter_to_the_kazakh_state_loses_the_kept_out_paragraph(svc):
    """Every kind of target a campaign can name today is the Kazakh state; one that is not would keep it."""
    campaign = svc.campaigns["mamay"]
    assert all(letters.reaches_the_state(t) for t in campaign.targets)
    other = Target.model_construct(**{**dict(campaign.targets[0]), "kind": "ngo", "key": "ngo"})
    common = {"variant_key": "s1", "name": None, "city": None, "country": "DE", "message": "Mine",
              "opted_in": False, "public_countries": frozenset(), "message_to_authorities": False}
    assert letters.view_for(campaign.targets[0], **common).message == ""
    assert letters.view_for(campaign.target("embassy-de"), **common).message == ""
    assert letters.view_for(other, **common).message == "Mine"
    assert letters.view_for(other, **{**common, "message_to_authorities": True}).message == "Mine"


# --- naming oneself to an embassy of Kazakhstan is naming oneself to the Kazakh state ---------------------------

STRONG = ("You told us you live in Kazakhstan. %(name)s is part of the Kazakh state, as every embassy of Kazakhstan "
          "is: being named to it tells the state that you signed this appeal, and where you live it can reach you. "
          "People in Kazakhstan have been prosecuted for peaceful criticism, as this very case shows. Agree only if "
          "you are sure it is safe for you: your letter counts just as much unnamed.")
PLAIN_EMBASSY = ("%(name)s is part of the Kazakh state, like every embassy of Kazakhstan: being named to it is like "
                 "being named to the authorities in Kazakhstan. If you are a citizen of Kazakhstan, travel there or "
                 "have family there, think of this before you agree.")
STRONG_AUTHORITY = (
    "You told us you live in Kazakhstan: we advise you not to agree. If you do, %(what)s will be in the appeal "
    "handed to %(name)s, and the authorities of Kazakhstan will know that you supported it, and can reach you. "
    "People in Kazakhstan have been prosecuted for peaceful criticism, as this very case shows. Your support counts "
    "just as much unnamed.")
PLAIN_AUTHORITY = (
    "If you agree, %(what)s will be in the appeal handed to %(name)s: the authorities of Kazakhstan will know that "
    "you supported it. If you are a citizen of Kazakhstan, travel there or have family there, think of this before "
    "you agree.")
EMBASSY_IS_STATE = (
    "This embassy is part of the Kazakh state: whatever it receives, the authorities of Kazakhstan can read.")


@pytest.fixture
def named_app(tmp_path, sqlite_url):
    """The shipped campaign, with an embassy of Kazakhstan in KZ, so that a signer who lives in Kazakhstan meets a
    yes/no to being named to an embassy as well as to the authorities."""
    folder = tmp_path / "letters" / "mamay"
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8")  # the President may be named (`name_city`) as shipped
    text += ('\n[[targets]]\nkey = "embassy-kz"\nkind = "embassy"\ndisclosure = "name"\ncountry = "KZ"\n'
             'name = { en = "Head of Mission", ru = "Глава миссии", kk = "Миссия басшысы" }\n'
             'title = { en = "Representation of Kazakhstan", ru = "Представительство Казахстана", '
             'kk = "Қазақстан өкілдігі" }\naddress = "Astana"\n'
             'salutation = { en = "Dear Sir or Madam,", ru = "Уважаемые господа!", kk = "Құрметті мырзалар!" }\n')
    toml.write_text(text, encoding="utf-8")
    settings = make_settings(tmp_path, sqlite_url, letters_dir=Path(folder.parent))
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        yield client, client.app.state.services


def opt_in_warnings(page: str, target_key: str) -> str:
    section = page.split(f'id="t-{target_key}"', 1)[1].split("</form>", 1)[0]
    return section


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_a_signer_in_kazakhstan_is_warned_hardest_before_being_named_to_an_embassy(named_app, lang):
    client, svc = named_app
    campaign = svc.campaigns["mamay"]
    _, token = add_signer(svc, country="KZ", lang=lang)
    page = page_text(client.get(f"/s/{token}?lang={lang}"))
    near = opt_in_warnings(page, "embassy-kz")
    assert 'name="named"' in near
    assert i18n.gettext(lang, STRONG) % {"name": campaign.target("embassy-kz").title[lang]} in near
    assert i18n.gettext(lang, EMBASSY_IS_STATE) in near
    # The authorities: plainly what they learn, and advice not to agree (the President here; the pack-only ones in
    # tests/test_naming.py).
    near = opt_in_warnings(page, "president")
    assert 'name="named"' in near
    told = {"what": i18n.gettext(lang, "your name, city and country"), "name": campaign.target("president").title[lang]}
    assert i18n.gettext(lang, STRONG_AUTHORITY) % told in near
    assert i18n.gettext(lang, PLAIN_AUTHORITY) % told not in page


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_a_signer_abroad_is_told_the_embassy_is_the_kazakh_state(client, svc, lang):
    campaign = svc.campaigns["mamay"]
    _, token = add_signer(svc, country="DE", lang=lang)
    page = page_text(client.get(f"/s/{token}?lang={lang}"))
    near = opt_in_warnings(page, "embassy-de")
    assert 'name="named"' in near
    assert i18n.gettext(lang, PLAIN_EMBASSY) % {"name": campaign.target("embassy-de").title[lang]} in near
    assert i18n.gettext(lang, EMBASSY_IS_STATE) in near
    assert i18n.gettext(lang, STRONG).split(".")[0] not in page


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_the_privacy_notice_treats_every_embassy_as_the_kazakh_state(client, lang):
    text = page_text(client.get(f"/privacy?lang={lang}"))
    assert i18n.gettext(lang, "Every embassy of Kazakhstan, wherever it is, is part of the Kazakh state. We treat "
                              "each one as the authorities of Kazakhstan: the same warnings, the same choices.") in text
