"""On a phone the flow keeps its place (issue 17, items 6 and 7): what a person sees in Debian's Chromium at
390×844, against a real server process; the share metadata and its picture; links in mail that follow a
campaign's own base URL; saved mail that a person can read.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from PIL import Image

from app import campaigns, outbox, share_image
from app import smtp as sending  # `smtp` is the SMTP sink fixture
from app.db import Database
from app.security import CODE_ALPHABET
from app.settings import ROOT
from app.state import Services
from tests import browser
from tests.servers import ARTIFACTS, AppProcess, server_env
from tests.support import answer_notices, body, deliver, make_settings, migrate, sign_form
from tests.test_letters import add_signer

PHONE = {"width": 390, "height": 844}
MAMAY = ROOT / "templates" / "letters" / "mamay"


def four_letter_campaign(tmp_path: Path) -> Path:
    """The shipped campaign where the two pack-only authorities have an address: a signer in the UK writes four
    letters (president, prosecutor general, commissioner, embassy), the page of issue 17."""
    folder = tmp_path / "letters" / "mamay"
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    text = toml.read_text(encoding="utf-8")
    for i in range(2):
        text = text.replace('channels = ["pack"]\n', f'email = "office{i}@gov.kz"\n', 1)
    toml.write_text(text, encoding="utf-8")
    return folder.parent


def own_domain_campaign(tmp_path: Path, base_url: str) -> Path:
    folder = tmp_path / "own" / "mamay"
    shutil.copytree(MAMAY, folder)
    toml = folder / "campaign.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'slug = "mamay"\n', f'slug = "mamay"\nbase_url = "{base_url}"\n', 1), encoding="utf-8")
    return folder.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[AppProcess, str, Services]]:
    """The service in its own process, with a confirmed signer in the UK who has four letters."""
    tmp = tmp_path_factory.mktemp("phone")
    url = f"sqlite:///{tmp / 'campaign.db'}"
    migrate(url)
    letters_dir = four_letter_campaign(tmp)
    svc = Services.build(make_settings(tmp, url, letters_dir=letters_dir))
    _, token = add_signer(svc, country="GB", city="Leeds")
    env = server_env(var_dir=tmp / "var", database_url=url, letters_dir=letters_dir)
    with AppProcess(env) as server:
        yield server, token, svc
    svc.db.dispose()


def in_view(page, selector: str) -> bool:
    """Whether the element is wholly inside the viewport as the page stands (no scrolling by the test)."""
    return page.evaluate("""(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0; }""", selector)


def height(page) -> int:
    return page.evaluate("document.documentElement.scrollHeight")


def shoot(page, name: str) -> None:
    (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshots" / f"{name}-390.png"))


# --- 6a: a refused signature opens at the form ------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize("lang", ["en", "kk"])
def test_a_refused_signature_opens_at_its_errors_and_form_on_a_phone(site, lang):
    server, _, _ = site
    with browser.chromium() as context:
        page = context.new_page()
        page.set_viewport_size(PHONE)
        page.goto(f"{server.url}/c/mamay?lang={lang}")
        form_at = page.evaluate("document.querySelector('#sign').getBoundingClientRect().top")
        assert form_at > 2 * PHONE["height"]  # on the page everyone gets, the form is far below the case
        page.fill("#f-name", "Dana")
        page.fill("#f-email", "not an address")  # no country, no consent either
        with page.expect_navigation() as answer:
            page.click("form[action$='/sign'] button[type=submit]")
        assert answer.value.status == 422
        shoot(page, f"refused-{lang}")
        # Where the page lands: the summary of the errors, its first link, and the form begin in view.
        assert page.evaluate("window.scrollY") == 0
        assert in_view(page, "#errors") and in_view(page, "#errors li:first-child a")
        assert page.evaluate("document.activeElement.id") == "errors"  # autofocus: read out, no script needed
        assert page.locator("#errors").get_attribute("role") == "alert"
        assert page.title().startswith({"en": "Error: ", "kk": "Қате: "}[lang])
        links = page.locator("#errors a")
        assert links.count() == 3  # email, country, consent
        for i in range(links.count()):
            target = links.nth(i).get_attribute("href")
            field = page.locator(target)
            assert field.get_attribute("aria-invalid") == "true"
            described = field.get_attribute("aria-describedby").split()[0]
            assert page.locator(f"#{described}").inner_text() == links.nth(i).inner_text()
        assert page.locator("#f-name").get_attribute("aria-invalid") is None  # a good field is not marked
        assert page.locator("#f-name").input_value() == "Dana"  # kept as typed
        links.nth(1).click()  # an error leads to its field, with its label and message still in view
        page.wait_for_function("location.hash === '#f-country' && window.scrollY > 0")
        assert in_view(page, "#f-country") and in_view(page, "#f-country-err") and in_view(page, "label[for=f-country]")


@pytest.mark.browser
def test_the_petition_has_a_sign_link_in_the_first_screen_of_a_phone(site):
    server, _, _ = site
    with browser.chromium() as context:
        page = context.new_page()
        page.set_viewport_size(PHONE)
        page.goto(f"{server.url}/c/mamay?lang=ru")
        link = page.locator("p.to-sign a[href='#sign']")
        assert link.inner_text() == "Подписать" and in_view(page, "p.to-sign a")
        assert not in_view(page, "#sign")
        link.click()
        page.wait_for_function("window.scrollY > 0")
        assert in_view(page, "#sign h2") and page.locator("#f-name").is_visible()


# --- 6b, 6c: the signer's page ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_the_signers_page_is_short_with_a_table_of_contents_and_notices_where_the_person_is(site, capsys):
    server, token, _ = site
    with browser.chromium() as context:
        page = context.new_page()
        page.set_viewport_size(PHONE)
        page.goto(f"{server.url}/s/{token}?lang=en")
        toc = page.locator("nav.letters-toc li")
        assert toc.count() == 4
        keys = ["president", "prosecutor-general", "human-rights-commissioner", "embassy-gb"]
        assert [toc.nth(i).locator("a").get_attribute("href") for i in range(4)] == [f"#t-{k}" for k in keys]
        assert all(toc.nth(i).locator(".state").inner_text() == "not sent yet" for i in range(4))
        assert in_view(page, "nav.letters-toc")
        # Each letter is folded; the ways to deliver it stay in view.
        for key in keys:
            card = page.locator(f"#t-{key}")
            assert not card.locator("pre.letter").is_visible()
            assert card.locator("form.send button").is_visible()
            assert card.locator("form[action*='letter.pdf'] button").is_visible()
        short = height(page)
        page.evaluate("document.querySelectorAll('details.letter-text').forEach(d => d.open = true)")
        unfolded = height(page)  # every letter's full text shown, as the whole page was before
        with capsys.disabled():
            print(f"\nsigner's page, four letters, 390x844: {short} px folded, {unfolded} px with every letter open")
        assert short < 0.65 * unfolded
        page.reload()
        page.locator("#t-embassy-gb details.letter-text summary").click()
        assert page.locator("#t-embassy-gb pre.letter").is_visible()

        # "Send it for me" for the third letter: the page comes back at that card, which says it is queued.
        page.locator("#t-human-rights-commissioner form.send button").click()
        page.wait_for_url(re.compile(r".*done=sent.*#t-human-rights-commissioner$"))
        shoot(page, "signer-sent")
        notice = page.locator("#t-human-rights-commissioner .notice.done")
        assert notice.count() == 1 and "queued" in notice.inner_text()
        assert in_view(page, "#t-human-rights-commissioner .notice.done")
        assert page.locator("main > .notice.done").count() == 0  # not at the top
        assert page.locator(".notice.done").count() == 1
        state = page.locator("nav.letters-toc li").nth(2).locator(".state")
        assert state.inner_text().startswith("sent on ")

        # Saving a choice to be named: said in that card, in view.
        page.locator("#t-embassy-gb form.optin input[name=named]").check()
        page.locator("#t-embassy-gb form.optin button").click()
        page.wait_for_url(re.compile(r".*done=named.*#t-embassy-gb$"))
        assert "Saved" in page.locator("#t-embassy-gb .notice.done").inner_text()
        assert in_view(page, "#t-embassy-gb .notice.done")


def test_a_notice_for_an_unknown_target_stays_at_the_top(client, svc):
    _, token = add_signer(svc, country="DE")
    page = client.get(f"/s/{token}?lang=en&done=unnamed&target=nobody").text
    before_letters = page.split('<h2 id="letters">', 1)[0]
    assert "Saved: you are not named to this recipient." in before_letters
    assert page.count('class="notice done"') == 1


def test_naming_in_a_pack_comes_back_to_the_pack_card(client, svc):
    _, token = add_signer(svc, country="DE")
    page = client.get(f"/s/{token}?lang=en")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = client.post(f"/s/{token}/named", data={"csrf_token": csrf, "lang": "en", "target": "prosecutor-general",
                                                   "named": "on"}, follow_redirects=False)
    assert answer.headers["location"].endswith("&done=named&target=prosecutor-general#pack-prosecutor-general")
    shown = client.get(answer.headers["location"].split("#")[0]).text
    card = shown.split('id="pack-prosecutor-general"', 1)[1].split("</section>", 1)[0]
    assert 'class="notice done"' in card


# --- 7b: share metadata and its picture -------------------------------------------------------------------------


def meta(page: str, prop: str) -> str:
    found = re.search(rf'<meta property="{prop}" content="([^"]*)">', page)
    assert found, prop
    return found.group(1)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_the_petition_has_share_metadata_and_a_picture_drawn_here(client, svc, lang):
    campaign = svc.campaigns["mamay"]
    page = client.get(f"/c/mamay?lang={lang}").text
    assert meta(page, "og:type") == "website"
    assert meta(page, "og:title") == campaign.title[lang].replace("'", "&#39;")
    assert meta(page, "og:description").startswith(campaign.summary[lang][:40])
    assert meta(page, "og:url") == f"http://testserver/c/mamay?lang={lang}"
    image = meta(page, "og:image")
    assert image == f"http://testserver/c/mamay/share.png?lang={lang}"  # our own origin
    answer = client.get(image.removeprefix("http://testserver"))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(answer.content))
    assert picture.size == (1200, 630) and picture.format == "PNG"
    darkest, lightest = picture.convert("L").getextrema()
    assert darkest < 60 and lightest > 240  # dark text drawn on the light page, not a blank
    age = int(answer.headers["cache-control"].removeprefix("public, max-age="))
    assert 0 <= age <= 600  # until the figures' next boundary
    again = client.get(image.removeprefix("http://testserver"), headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304
    other = client.get(f"/c/mamay/share.png?lang={'kk' if lang == 'en' else 'en'}")
    assert other.content != answer.content  # drawn in the page's language


def test_the_share_picture_changes_with_the_count_and_is_drawn_once_per_count(svc):
    title = svc.campaigns["mamay"].title["kk"]
    first = share_image.draw(title, "расталған қолтаңба, мақсат — 5 000", "35", 0.007, "Хаттар")
    assert share_image.draw(title, "расталған қолтаңба, мақсат — 5 000", "35", 0.007, "Хаттар") is first
    assert share_image.draw(title, "расталған қолтаңба, мақсат — 5 000", "40", 0.008, "Хаттар") != first
    very_long = share_image.draw("Ж" * 400 + " " + "word " * 200, "of 5", "1", 2.0, "x")
    assert Image.open(io.BytesIO(very_long)).size == (1200, 630)


# --- 1c: a campaign's own base URL ------------------------------------------------------------------------------


def test_a_campaign_with_its_own_domain_mails_links_to_it(tmp_path, sqlite_url, smtp):
    own = "https://free-mamay.example"
    settings = make_settings(tmp_path, sqlite_url, letters_dir=own_domain_campaign(tmp_path, own))
    db = Database(settings.sqlalchemy_url)
    try:
        svc = Services.build(settings, db=db)
        from fastapi.testclient import TestClient

        from app.main import create_app

        with TestClient(create_app(services=svc), base_url="http://testserver") as client:
            page = client.get("/c/mamay?lang=en").text
            assert meta(page, "og:url") == f"{own}/c/mamay?lang=en"
            assert meta(page, "og:image") == f"{own}/c/mamay/share.png?lang=en"
            assert sign_form(client, email="own@example.org").status_code == 303
            assert sign_form(client, email="quiet@example.org", discreet="on").status_code == 303
            deliver(svc, smtp.url)
            [mail] = smtp.sink.to("own@example.org")
            assert f"{own}/confirm/" in body(mail) and "http://testserver" not in body(mail)
            # A discreet mail names no campaign, so not its domain either.
            [quiet] = smtp.sink.to("quiet@example.org")
            assert "http://testserver/confirm/" in body(quiet) and own not in body(quiet)
            link = re.search(rf"{re.escape(own)}(/confirm/\S+)", body(mail)).group(1)
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get(link).text).group(1)
            assert client.post(link.split("?")[0], data={"csrf_token": csrf, "lang": "en"},
                               follow_redirects=False).status_code == 303
            deliver(svc, smtp.url)
            thanks = body(smtp.sink.to("own@example.org")[-1])
            assert f"{own}/s/" in thanks and f"{own}/erase?lang=en" in thanks
    finally:
        db.dispose()


def test_a_wrong_base_url_names_its_field(tmp_path):
    letters = own_domain_campaign(tmp_path, "javascript:alert(1)")
    with pytest.raises(campaigns.CampaignError, match="base_url"):
        campaigns.load_campaigns(letters)


# --- 7a: saved mail is readable ---------------------------------------------------------------------------------


def test_saved_mail_is_readable_and_sorts_while_smtp_gets_the_stored_bytes(client, svc, smtp, tmp_path):
    for i in range(11):
        sign_form(client, email=f"reader{i}@example.org", lang="ru", name="Дана Ким")
    answer_notices(svc)
    folder = tmp_path / "mail"
    saved_mail = sending.FileTransport(folder)
    assert outbox.deliver_due(svc.db, keyring=svc.keyring, transport=saved_mail, domain="test").sent == 11
    names = sorted(p.name for p in folder.glob("*.eml"))
    assert names == [f"outbox-{n:09d}.eml" for n in range(1, 12)]  # outbox-…10 sorts after outbox-…2
    raw = (folder / names[0]).read_bytes()
    head, _, text = raw.partition(b"\r\n\r\n")
    assert b"base64" not in head and b"Content-Transfer-Encoding: 8bit" in head
    assert "Спасибо".encode() in text or "подпис".encode() in text  # Russian, as written
    saved = message_from_bytes(raw, policy=policy.default)
    assert "/confirm/" in saved.get_body(("plain",)).get_content()
    # The same kind of mail over SMTP: the stored bytes, unchanged (base64 as before).
    sign_form(client, email="wire@example.org", lang="ru", name="Дана Ким")
    deliver(svc, smtp.url)
    [wire] = smtp.sink.to("wire@example.org")
    assert wire["Content-Transfer-Encoding"] == "base64"
    assert same_words(body(wire)) == same_words(saved.get_body(("plain",)).get_content())


def same_words(text: str) -> str:
    """A signer's mail without what differs per mail (its code and link)."""
    return re.sub(rf"\b[{CODE_ALPHABET}]{{8}}\b|/confirm/\S+", "…", text.replace("\r\n", "\n")).rstrip("\n")


def test_a_long_line_is_saved_flowed_and_reads_back_whole(svc):
    paragraph = "Мамай " * 400 + "соңы"
    prepared = svc.composer.prepare(to="long@example.org", subject="Ұзын хат", body=f"Сәлем\n{paragraph}\n", lang="kk")
    env = sending.envelope(prepared.raw, recipients=["long@example.org"], row_id=1, stamp=sending.Stamp(b"k" * 32))
    raw = sending.readable(env.raw)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    part = message_from_bytes(raw, policy=policy.default)
    assert part["Content-Type"].params.get("format") == "flowed" and part["Content-Transfer-Encoding"] == "8bit"
    lines = part.get_content().replace("\r\n", "\n").split("\n")
    joined, current = [], ""
    for line in lines:  # RFC 3676: a line ending in a space goes on in the next
        current += line
        if not line.endswith(" "):
            joined.append(current)
            current = ""
    assert joined[:2] == ["Сәлем", paragraph.rstrip()]

