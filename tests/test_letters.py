"""Letters: every template renders for every target and language, user text stays data, each signer's letter is
their own and stable, what a target learns follows its disclosure level, and `campaign check` names file and line.
"""

from __future__ import annotations

import html
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import i18n, letter_check, letters
from app.campaigns import CampaignError, load_campaign, load_campaigns
from app.cli import app as cli_app
from app.models import CONFIRMED, PENDING, Signature, SignatureCount
from app.security import new_token, token_hash
from app.settings import ROOT, Settings

SECRET = letters.variation_secret("test")
MAMAY = ROOT / "templates" / "letters" / "mamay"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# --- shared by the letter tests (test_delivery.py and test_pdf.py import these) ----------------------------


def letters_dir_with_named_targets(tmp_path: Path) -> Path:
    """The shipped campaign, with two embassies that accept names: GB at `name`, CA at `name_city`."""
    folder = tmp_path / "letters" / "mamay"
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8")
    for key, level in (("embassy-gb", "name"), ("embassy-ca", "name_city")):
        text = re.sub(rf'(key = "{key}"\n(?:[^\[]*?))disclosure = "\w+"\n', r"\1", text)  # drop the shipped level
        text = text.replace(f'key = "{key}"\n', f'key = "{key}"\ndisclosure = "{level}"\n')
    toml.write_text(text, encoding="utf-8")
    return folder.parent


def cli_env(settings: Settings) -> dict[str, str]:
    """The CAMPAIGN_* environment that makes the CLI build exactly these test settings."""
    return {
        "CAMPAIGN_ENV": settings.env,
        "CAMPAIGN_DATABASE_URL": settings.database_url,
        "CAMPAIGN_VAR_DIR": str(settings.var_dir),
        "CAMPAIGN_DATA_KEY": settings.data_key,
        "CAMPAIGN_SECRET_KEY": settings.secret_key,
        "CAMPAIGN_LETTERS_DIR": str(settings.letters_dir),
        "CAMPAIGN_MIN_CELL": str(settings.min_cell),
        "CAMPAIGN_BASE_URL": settings.base_url,
        "CAMPAIGN_OUTBOX_IN_PROCESS": "0",
    }


def add_signer(
    svc, *, name: str = "Aigerim Test", email: str | None = None, country: str = "DE", city: str = "",
    message: str = "", lang: str = "en", status: str = CONFIRMED, now: datetime = NOW,
) -> tuple[int, str]:
    """A signature written straight into the database, sealed like the sign flow does (so it may hold text the
    form would refuse, such as CR/LF), counted when confirmed. Returns (id, manage token)."""
    token = new_token()
    email = email or f"{new_token()[:12].lower()}@example.org"
    keyring = svc.keyring
    with svc.db.write.begin() as session:
        row = Signature(
            campaign="mamay", email_key=keyring.email_key(email), key_id=keyring.primary,
            name_enc=keyring.seal(name, "name"), email_enc=keyring.seal(email, "email"),
            city_enc=keyring.seal(city, "city") if city else None,
            message_enc=keyring.seal(message, "message") if message else None,
            country=country, language=lang, status=status, discreet=False, created_at=now,
            confirmed_at=now if status == CONFIRMED else None,
            manage_token_hash=token_hash(token) if status == CONFIRMED else None,
        )
        session.add(row)
        if status == CONFIRMED:
            counter = session.get(SignatureCount, ("mamay", country, now.date()))
            if counter is None:
                session.add(SignatureCount(campaign="mamay", country=country, day=now.date(), confirmed=1))
            else:
                counter.confirmed += 1
        session.flush()
        return row.id, token


# --- rendering ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def campaign():
    return load_campaigns(ROOT / "templates" / "letters")["mamay"]


def test_every_template_renders_for_every_target_and_language(campaign):
    assert letter_check.check_campaign(campaign) == []
    for target in campaign.targets:
        for lang in campaign.languages:
            for view in (letters.preview_view(target),
                         letters.SignerView("s1", name="Имя", city="Алматы", country="KZ", message="Своё слово"),
                         letters.SignerView("s2", country=None)):
                letter = letters.render_letter(campaign, target, lang, view, secret=SECRET)
                assert letter.text.startswith(target.salutation[lang])
                assert all(ask in letter.text for ask in campaign.asks_for(target, lang))
                if target.kind == "embassy":  # an embassy can convey and raise, not quash
                    assert not any(ask in letter.text for ask in campaign.asks[lang])
                assert html.escape(target.salutation[lang], quote=False) in letter.html
                assert letter.subject == campaign.subject[lang]
                head = (tuple(target.addressee[lang].splitlines()) if target.addressee.get(lang)
                        else (target.name[lang], target.title[lang]))
                assert letter.recipient[:len(head)] == head
                if lang == "en":  # the English block is the name, then the title
                    assert letter.recipient[:2] == (target.name[lang], target.title[lang])


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_hostile_signer_text_is_literal_in_text_and_escaped_in_html(campaign, lang):
    name = "{{ config }}<script>alert(1)</script>\r\nBcc: victim@example.org"
    message = "{% raw %}{{ 7*7 }}{% endraw %} & <b>mine</b>"
    view = letters.SignerView("s9", name=name, city="{{ self }}", country="KZ", message=message)
    letter = letters.render_letter(campaign, campaign.target("president"), lang, view, secret=SECRET)
    assert name in letter.text and message in letter.text and "{{ self }}" in letter.text
    assert "{{ 7*7 }}" in letter.text  # raw text, never evaluated
    assert "<script>" not in letter.html and "<b>mine</b>" not in letter.html
    assert html.escape(name, quote=False).split("\r\n")[0] in letter.html
    assert "&lt;b&gt;mine&lt;/b&gt;" in letter.html


def test_same_signer_same_letter_and_a_batch_is_varied(campaign):
    target = campaign.target("president")
    batch = [
        letters.render_letter(campaign, target, "en", letters.SignerView(letters.signer_key(i), country=None,
                              message=f"I write from my own experience, number {i}."), secret=SECRET)
        for i in range(1, 51)
    ]
    distinct = len({letter.text for letter in batch}) / len(batch)
    combos = {letters.variant(campaign, target, "en", letters.signer_key(i), secret=SECRET) for i in range(1, 51)}
    bodies_without_message = {
        letters.render_letter(campaign, target, "en", letters.SignerView(letters.signer_key(i)), secret=SECRET).text
        for i in range(1, 51)
    }
    print(f"distinct letters: {distinct:.2f}; opening x closing combinations used: {len(combos)} of "
          f"{len(campaign.openings['en']) * len(campaign.closings['en'])}")
    assert distinct >= 0.9
    assert len(combos) >= 12  # of 16: 50 signers spread over (nearly) every combination
    assert len(bodies_without_message) == len(combos)  # without a message, the opening and closing make the variety
    again = letters.render_letter(campaign, target, "en", letters.SignerView(letters.signer_key(7),
                                  message="I write from my own experience, number 7."), secret=SECRET)
    assert again.text == batch[6].text
    # The same signer's letter to another target may open differently; in another language it is the same pick.
    assert letters.variant(campaign, target, "ru", "s7", secret=SECRET) == letters.variant(
        campaign, target, "en", "s7", secret=SECRET)


def test_anonymous_signature_names_the_country_only_when_its_cell_is_large(campaign):
    president = campaign.target("president")
    signer = {"variant_key": "s1", "name": "Aigerim", "city": "Taraz", "country": "KZ", "message": ""}
    small = letters.view_for(president, **signer, opted_in=False, public_countries=frozenset({"DE"}))
    large = letters.view_for(president, **signer, opted_in=False, public_countries=frozenset({"KZ", "DE"}))
    assert letters.signature_lines(small, "en") == ["A supporter of the campaign"]
    assert letters.signature_lines(large, "en") == ["A supporter of the campaign from Kazakhstan"]
    assert letters.signature_lines(large, "ru") == ["Сторонник кампании (Казахстан)"]
    assert letters.signature_lines(large, "kk") == ["Науқанды қолдаушы (Қазақстан)"]
    assert letters.signature_lines(small, "kk") == ["Науқанды қолдаушы"]
    # Not opted in: anonymous, even to a target that may see names.
    unnamed = letters.view_for(president, **signer, opted_in=False, public_countries=frozenset({"KZ"}))
    text = letters.render_letter(campaign, president, "en", unnamed, secret=SECRET).text
    assert "Aigerim" not in text and "Taraz" not in text
    # A count target never gets the name, opt-in or not.
    count = president.model_copy(update={"disclosure": "count"})
    counted = letters.view_for(count, **signer, opted_in=True, public_countries=frozenset({"KZ"}))
    assert letters.signature_lines(counted, "en") == ["A supporter of the campaign from Kazakhstan"]


def test_a_name_goes_only_where_the_level_allows_it_and_the_signer_said_yes(tmp_path):
    campaign = load_campaigns(letters_dir_with_named_targets(tmp_path))["mamay"]
    gb, ca = campaign.target("embassy-gb"), campaign.target("embassy-ca")
    signer = {"variant_key": "s1", "name": "Ann Smith", "city": "Leeds", "country": "GB", "message": ""}
    public = frozenset({"GB"})
    assert letters.view_for(gb, **signer, opted_in=False, public_countries=public).name is None
    named = letters.view_for(gb, **signer, opted_in=True, public_countries=public)
    assert letters.signature_lines(named, "en") == ["Ann Smith", "United Kingdom"]  # `name`: no city
    with_city = letters.view_for(ca, **signer, opted_in=True, public_countries=public)
    assert letters.signature_lines(with_city, "ru") == ["Ann Smith", "Leeds, Великобритания"]


def test_loader_rejects_a_target_without_a_salutation_in_an_offered_language(tmp_path):
    folder = tmp_path / "mamay"
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace(', kk = "Құрметті Бас прокурор мырза!" }', " }")
    toml.write_text(text, encoding="utf-8")
    with pytest.raises(CampaignError) as err:
        load_campaign(toml)
    assert str(toml) in str(err.value)
    assert "targets[1] (prosecutor-general).salutation.kk is missing" in str(err.value)


# --- campaign check ---------------------------------------------------------------------------------------


def test_campaign_check_passes_on_the_shipped_campaign(settings):
    result = CliRunner().invoke(cli_app, ["check"], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    assert "letters OK" in result.output


@pytest.mark.parametrize(
    ("broken", "line", "error"),
    [
        ("{{ salutation }\n", 1, "TemplateSyntaxError"),
        ("{{ salutation }}\n\n{{ no_such_thing }}\n", 3, "UndefinedError"),
        ("{{ salutation }}\n{{ ''.__class__.__mro__ }}\n", 2, "SecurityError"),
    ],
)
def test_campaign_check_names_file_and_line_and_fails(tmp_path, settings, broken, line, error):
    letters_dir = tmp_path / "letters"
    shutil.copytree(MAMAY, letters_dir / "mamay")
    bad = letters_dir / "mamay" / "letter.ru.txt.j2"
    bad.write_text(broken + bad.read_text(encoding="utf-8"), encoding="utf-8")
    env = {**cli_env(settings), "CAMPAIGN_LETTERS_DIR": str(letters_dir)}
    result = CliRunner().invoke(cli_app, ["check"], env=env)
    assert result.exit_code == 1, result.output
    assert f"{bad}:{line}" in result.output and error in result.output


def test_campaign_check_refuses_a_letter_that_does_not_escape_the_signer(tmp_path):
    """A campaign that writes its own HTML letter (optional: made from the text otherwise) must escape the signer."""
    letters_dir = tmp_path / "letters"
    shutil.copytree(MAMAY, letters_dir / "mamay")
    bad = letters_dir / "mamay" / "letter.kk.html.j2"
    bad.write_text("<p>{{ salutation }}</p>\n{% for line in signature_lines %}<p>{{ line | safe }}</p>{% endfor %}\n"
                   "<p>{{ signer_message }}</p>\n", encoding="utf-8")
    problems = letter_check.check_campaign(load_campaigns(letters_dir)["mamay"])
    assert any(p.startswith(f"{bad}:") and "not escaped" in p for p in problems), problems


# --- the public preview -----------------------------------------------------------------------------------


def test_preview_shows_what_each_target_sees_with_a_placeholder_signer(client, campaign, svc):
    for lang in ("en", "ru", "kk"):
        for target in campaign.targets:
            page = client.get(f"/c/mamay/letter?lang={lang}&target={target.key}")
            if not target.offered_to_signers:  # the organisation's appeal reaches it, not a signer's letter
                assert page.status_code == 404
                continue
            assert page.status_code == 200
            expected = letters.render_letter(campaign, target, lang, letters.preview_view(target),
                                             secret=letters.variation_secret(svc.settings.secret_key))
            assert html.escape(expected.text, quote=False) in page.text.replace("&#39;", "'").replace("&#34;", '"')
            assert i18n.gettext(lang, letters.PLACEHOLDER["country"]) in page.text
    # The President may see the name, city and country of a signer who agrees: the preview shows the most.
    page = client.get("/c/mamay/letter?lang=en&target=president")
    assert "[Your name]\n[your city], [your country]" in page.text
    assert "names, cities and countries of the supporters who agree to be named to it" in page.text
    assert client.get("/c/mamay/letter?target=nobody").status_code == 404
    assert re.search(r'href="/c/mamay/letter\?lang=en&amp;target=embassy-de"', page.text)


def test_preview_of_a_named_target_shows_the_name_placeholder(tmp_path, sqlite_url):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.support import make_settings

    settings = make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))
    with TestClient(create_app(settings)) as c:
        page = c.get("/c/mamay/letter?lang=kk&target=embassy-ca")
    assert page.status_code == 200
    assert "[Сіздің атыңыз]" in page.text and "[қалаңыз], [еліңіз]" in page.text


def test_pending_signers_are_not_letters_yet(svc, campaign):
    pending_id, _ = add_signer(svc, status=PENDING)
    with svc.db.read() as session:
        row = session.get(Signature, pending_id)
        with pytest.raises(letters.LetterRefused):
            letters.signer_letters(session, campaign=campaign, row=row, lang="en", keyring=svc.keyring,
                                   secret=SECRET, public=frozenset(), named=())


def test_a_letter_written_once_as_text_is_also_its_html_escaped_and_whole(tmp_path):
    """One template per language: without a .html.j2 the HTML form is made from the text, and keeps every line."""
    folder = tmp_path / "letters"
    shutil.copytree(MAMAY, folder / "mamay")
    assert not list((folder / "mamay").glob("*.html.j2"))  # the shipped campaign writes each letter once
    campaign = load_campaigns(folder)["mamay"]
    assert letter_check.check_campaign(campaign) == []
    message = "First <b>line</b>\n- a dash line\nafter it & more\n\n{{ config }}"
    view = letters.SignerView("s1", name="Ada <i>", city="Almaty", country="KZ", message=message)
    letter = letters.render_letter(campaign, campaign.targets[0], "en", view, secret=SECRET)
    assert "<b>" not in letter.html and "&lt;b&gt;line&lt;/b&gt;" in letter.html and "&lt;i&gt;" in letter.html
    assert "<li>a dash line</li>" in letter.html and "after it &amp; more" in letter.html
    assert "{{ config }}" in letter.html
    for ask in campaign.asks["en"]:
        assert f"<li>{html.escape(ask, quote=True)}</li>" in letter.html

# --- the texts an official reads (docs/campaign-sources.md maps each to its source) -----------------------------

WGAD_KK = "Озбырлықпен ұстау жөніндегі жұмыс тобы"


def kazakh_texts(campaign) -> dict[str, str]:
    """Every Kazakh text of the campaign an official or a supporter reads, by where it is."""
    found = {"case": campaign.case["kk"], "summary": campaign.summary["kk"], "appeal": campaign.appeal.body["kk"]}
    for field in ("asks", "embassy_asks", "openings", "closings"):
        for i, text in enumerate(getattr(campaign, field)["kk"]):
            found[f"{field}[{i}]"] = text
    found["txt"] = (MAMAY / letters.template_name("kk", "txt")).read_text(encoding="utf-8")
    return found


def test_the_working_group_has_one_kazakh_name_and_never_groundless(campaign):
    texts = kazakh_texts(campaign)
    for where, text in texts.items():
        low = text.lower()
        assert "негізсіз ұстау" not in low and "ұсталуын негізсіз" not in low, where
        if "жұмыс тобы" in low:  # the Working Group (its name, or "the Working Group's")
            assert WGAD_KK in text or "Жұмыс тобының" in text, where
    # "негізсіз" stays where it means groundless: Human Rights Watch called the case "totally unfounded".
    assert "«мүлдем негізсіз»" in campaign.case["kk"]
    for where in ("case", "appeal", "asks[2]", "embassy_asks[2]", "openings[2]", "txt"):
        assert WGAD_KK in texts[where], where


def test_implement_the_recommendations_in_opinion_11_2023(campaign):
    said = {"en": "recommendations in Opinion No. 11/2023", "ru": "рекомендации, изложенные в мнении № 11/2023",
            "kk": "№ 11/2023 пікіріндегі ұсынымдарды"}
    for lang, words in said.items():
        assert words in campaign.asks[lang][2]
        assert words in campaign.embassy_asks[lang][2]
    assert campaign.case["en"].endswith("implement the recommendations in the Working Group's Opinion No. 11/2023.")
    assert campaign.case["ru"].endswith("выполнить рекомендации, изложенные в мнении Рабочей группы № 11/2023.")
    assert campaign.case["kk"].endswith("Жұмыс тобының № 11/2023 пікіріндегі ұсынымдарды орындауға шақырады.")
    for lang in ("en", "ru", "kk"):
        assert "act on the Working Group's opinion" not in campaign.case[lang]
        assert "выполнить мнение" not in campaign.case[lang] + campaign.asks[lang][2]
        assert "пікірін орындау" not in campaign.case[lang] + campaign.asks[lang][2]


def test_the_final_ask_is_grammatical_in_russian_and_kazakh(campaign):
    ru, kk = campaign.asks["ru"][3], campaign.asks["kk"][3]
    assert ru.startswith("Обеспечить, чтобы никто, включая Жанболата Мамая, не подвергался")
    assert "чтобы Демократическая партия Казахстана могла беспрепятственно" in ru
    # The subjects of the nominalised clauses take the genitive.
    assert kk.startswith("Ешкімнің, соның ішінде Жанболат Мамайдың да,")
    assert "ұшырамауын, ал Қазақстан демократиялық партиясының тіркеуге кедергісіз өтініш бере алуын" in kk


def test_closings_are_formal_and_never_casual(campaign):
    for lang in campaign.languages:
        for text in (*campaign.closings[lang], campaign.signoff[lang], campaign.appeal.closing[lang]):
            assert "рахмет" not in text.lower() and "спасибо" not in text.lower(), text
    assert all("алғыс" in text for text in campaign.closings["kk"])


def test_address_blocks_put_the_title_first_in_the_dative(campaign):
    president = campaign.target("president")
    assert letters.recipient_block(president, "ru")[:2] == ("Президенту Республики Казахстан", "Токаеву К.-Ж. К.")
    assert letters.recipient_block(president, "kk")[:2] == ("Қазақстан Республикасының Президенті",
                                                             "Қ.-Ж. К. Тоқаевқа")
    assert letters.recipient_block(president, "en")[:2] == ("Kassym-Jomart Tokayev",
                                                             "President of the Republic of Kazakhstan")
    dative_ru = ("Президенту ", "Генеральному прокурору ", "Уполномоченному ", "Руководителю ", "Послу ")
    for target in campaign.targets:
        ru, kk = letters.recipient_block(target, "ru"), letters.recipient_block(target, "kk")
        assert ru[0].startswith(dative_ru), ru
        addressee = target.addressee["kk"].splitlines()
        assert addressee[-1].endswith(("қа", "ке", "ға", "ге", "на", "не")), addressee  # the last line: dative
        assert kk[:len(addressee)] == tuple(addressee)
        assert target.address is None or kk[-1] == target.address.strip().splitlines()[-1].strip()
    # The letter a signer sends carries the same block.
    letter = letters.render_letter(campaign, president, "kk", letters.SignerView("s1"), secret=SECRET)
    assert letter.recipient[:2] == ("Қазақстан Республикасының Президенті", "Қ.-Ж. К. Тоқаевқа")


def test_the_bans_extension_is_told_with_its_qualifier(campaign):
    qualifier = {"en": "giving media interviews as a political scientist or human rights defender",
                 "ru": "интервью средствам массовой информации в качестве политолога или правозащитника",
                 "kk": "бұқаралық ақпарат құралдарына саясаттанушы немесе құқық қорғаушы ретінде сұхбат беруге"}
    books = {"en": "writing and publishing books", "ru": "написание и издание книг",
             "kk": "кітап жазып, басып шығаруға"}
    posts = {"en": "posting on social media", "ru": "публикации в социальных сетях",
             "kk": "әлеуметтік желілерде жазба жариялауға"}
    for lang in campaign.languages:
        case = campaign.case[lang]
        assert qualifier[lang] in case and books[lang] in case and posts[lang] in case, lang
    assert "giving interviews to the media" not in campaign.case["en"]  # never without the qualifier
