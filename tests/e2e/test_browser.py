"""Headless Chromium (Debian's package, driven by Playwright) against a real server process and a real SMTP sink:
sign and confirm in English, Russian and Kazakh, with JavaScript on and off, the way a supporter does it.

Every request of every page is recorded; any that is not for the service itself is aborted and fails the test.
Before the form is sent, the only cookie is the CSRF one. Screenshots at 375 px and 1280 px go to
tests/artifacts/screenshots/ for review.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app import counters, organisers
from app.db import Database, utcnow
from app.security import CODE_ALPHABET
from app.state import Services
from tests import browser as browser_support
from tests.servers import ARTIFACTS, AppProcess, server_env
from tests.support import SMTPServer, make_settings, migrate
from tests.test_letters import letters_dir_with_named_targets

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ARTIFACTS / "screenshots"
WIDTHS = (375, 1280)
CODE = re.compile(rf"\b([{CODE_ALPHABET}]{{8}})\b")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium); "
                                                      "`make system-deps` installs it"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (test extra) is missing")


@pytest.fixture(scope="module")
def mail_sink() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory, mail_sink) -> Iterator[tuple[AppProcess, str]]:
    """The service in its own process (outbox sender inside, polling fast) and an organiser's token."""
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'campaign.db'}"
    migrate(url)
    letters_dir = letters_dir_with_named_targets(tmp)  # the shipped campaign; the GB embassy may see names
    svc = Services.build(make_settings(tmp, url, letters_dir=letters_dir))
    with svc.db.write.begin() as session:
        _, token = organisers.add(session, name="reviewer", now=utcnow())
    svc.db.dispose()
    env = server_env(var_dir=tmp / "var", database_url=url, smtp_url=mail_sink.url, outbox_in_process=1,
                     outbox_poll_seconds=0.2, letters_dir=letters_dir)
    with AppProcess(env) as server:
        yield server, token


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=browser_support.ARGS,
        )
        yield browser
        browser.close()


class Visit:
    """One browser context (one visitor) whose every request is recorded, and kept on 127.0.0.1."""

    def __init__(self, browser, server: AppProcess, *, javascript: bool = True, locale: str = "en-GB") -> None:
        self.server = server
        self.requests: list[str] = []
        self.aborted: list[str] = []
        self.context = browser.new_context(java_script_enabled=javascript, locale=locale,
                                           viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._only_ours)
        self.page = self.context.new_page()

    def _only_ours(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if urlsplit(url).hostname != "127.0.0.1":
            self.aborted.append(url)
            route.abort()
        else:
            route.continue_()

    def goto(self, path: str):
        answer = self.page.goto(path if path.startswith("http") else self.server.url + path)
        assert answer is not None and answer.status == 200, (path, answer and answer.status)
        return answer

    def cookie_names(self) -> set[str]:
        return {c["name"] for c in self.context.cookies()}

    def lang(self) -> str:
        return self.page.locator("html").get_attribute("lang") or ""

    def shoot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def close(self) -> None:
        self.context.close()
        assert self.requests, "no request was recorded"
        assert not self.aborted, f"requests to other origins: {self.aborted}"
        port = urlsplit(self.server.url).port
        assert all(urlsplit(u).hostname == "127.0.0.1" and urlsplit(u).port == port for u in self.requests)


def wait_for_mail(sink: SMTPServer, address: str, n: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mails = sink.sink.to(address)
        if len(mails) >= n:
            return mails[n - 1].get_body(preferencelist=("plain",)).get_content()
        time.sleep(0.1)
    raise AssertionError(f"no mail #{n} to {address} within {timeout}s")


def wait_for_link(sink: SMTPServer, address: str, path: str, timeout: float = 20) -> str:
    """The first link to `path`<token> in any mail to the address (mails may arrive in any order)."""
    pattern = re.compile(rf"https?://\S+{re.escape(path)}[^\s?]+\S*")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mail in sink.sink.to(address):
            found = pattern.search(mail.get_body(preferencelist=("plain",)).get_content())
            if found:
                return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no {path} link in mail to {address} within {timeout}s")


def fill_and_sign(visit: Visit, *, name: str, email: str, country: str = "DE") -> None:
    page = visit.page
    # Before anything is sent, the visitor carries no cookie: the petition is the same page for everyone (its form
    # is checked by its origin); the thank-you page then hands out the CSRF cookie for the code form.
    assert visit.context.cookies() == []
    page.fill("#f-name", name)
    page.fill("#f-email", email)
    page.select_option("#f-country", country)
    page.fill("#f-city", "Город")
    page.check("#f-consent")
    with page.expect_navigation():
        page.click("form[action$='/sign'] button[type=submit]")
    assert "/thanks" in page.url


def confirmed_count(server: AppProcess) -> int:
    """The exact count, from the rows (the public one moves only at the schedule's boundaries)."""
    db = Database(server.env["CAMPAIGN_DATABASE_URL"])
    try:
        with db.read() as session:
            return counters.recount(session, "mamay")
    finally:
        db.dispose()


def test_english_with_javascript_sign_confirm_by_link_and_screenshots(chromium, site, mail_sink):
    server, _ = site
    visit = Visit(chromium, server)
    before = confirmed_count(server)
    visit.goto("/c/mamay?lang=en")
    assert visit.lang() == "en" and visit.cookie_names() == set()
    visit.shoot("petition-en")
    fill_and_sign(visit, name="Browser English", email="browser-en@example.org")
    visit.shoot("thanks-en")
    visit.goto(wait_for_link(mail_sink, "browser-en@example.org", "/confirm/"))
    visit.shoot("confirm-en")
    assert confirmed_count(server) == before  # opening the link changes nothing
    with visit.page.expect_navigation():
        visit.page.click("form[action^='/confirm/'] button")
    assert "/s/" in visit.page.url and visit.lang() == "en"
    visit.shoot("signer-en")
    assert confirmed_count(server) == before + 1
    visit.close()


def test_russian_through_the_pages_own_language_link_and_form(chromium, site, mail_sink):
    server, _ = site
    visit = Visit(chromium, server)
    visit.goto("/c/mamay")
    assert visit.lang() == "en"
    with visit.page.expect_navigation():
        visit.page.click("nav.langs a[hreflang=ru]")
    assert visit.lang() == "ru"
    visit.shoot("petition-ru")
    fill_and_sign(visit, name="Айгерим Браузерова", email="browser-ru@example.org", country="KZ")
    assert visit.lang() == "ru"
    mail = wait_for_mail(mail_sink, "browser-ru@example.org")
    assert re.search(r"[а-яА-Я]{4,}", mail), "the confirmation mail is not in Russian"
    visit.goto(re.search(r"https?://\S+/confirm/\S+", mail).group(0))
    assert visit.lang() == "ru"
    with visit.page.expect_navigation():
        visit.page.click("form[action^='/confirm/'] button")
    assert "/s/" in visit.page.url and visit.lang() == "ru"
    visit.close()


def test_kazakh_from_the_browser_language_confirmed_by_typing_the_code(chromium, site, mail_sink):
    server, _ = site
    visit = Visit(chromium, server, locale="kk-KZ")
    before = confirmed_count(server)
    visit.goto("/c/mamay")  # no ?lang=: the browser's Accept-Language chooses Kazakh
    assert visit.lang() == "kk"
    visit.shoot("petition-kk")
    fill_and_sign(visit, name="Браузер Қазақша", email="browser-kk@example.org", country="KZ")
    assert visit.lang() == "kk"
    code = CODE.search(wait_for_mail(mail_sink, "browser-kk@example.org")).group(1)
    visit.page.fill("#f-code", code.lower())  # typed as a person might: lower case
    with visit.page.expect_navigation():
        visit.page.click("form.code button")
    assert "/s/" in visit.page.url and visit.lang() == "kk"
    assert confirmed_count(server) == before + 1
    visit.close()


def test_without_javascript_sign_code_confirm_opt_in_choose_delivery_and_erase(chromium, site, mail_sink):
    server, _ = site
    visit = Visit(chromium, server, javascript=False)
    email = "nojs@example.org"
    visit.goto("/c/mamay?lang=ru")
    assert visit.lang() == "ru" and visit.cookie_names() == set()
    fill_and_sign(visit, name="Без Скриптов", email=email, country="GB")
    assert visit.cookie_names() == {"csrf", "ticket"}
    code = CODE.search(wait_for_mail(mail_sink, email)).group(1)
    visit.page.fill("#f-code", code)
    with visit.page.expect_navigation():
        visit.page.click("form.code button")
    assert "/s/" in visit.page.url and visit.lang() == "ru"
    visit.shoot("signer-nojs-ru")

    # Opt in to be named to the embassy in their country (off until ticked), and save.
    visit.page.check("#t-embassy-gb form.optin input[name=named]")
    with visit.page.expect_navigation():
        visit.page.click("#t-embassy-gb form.optin button")
    assert visit.page.locator("p.notice[role=status]").count() == 1
    assert visit.page.is_checked("#t-embassy-gb form.optin input[name=named]")

    # Choose deliveries: "send it for me" to the embassy (named) and to the President's office (count only).
    for target in ("embassy-gb", "president"):
        with visit.page.expect_navigation():
            visit.page.click(f"#t-{target} form.send button")
        assert visit.page.locator("p.notice[role=status]").count() == 1
    assert "Без Скриптов" in wait_for_mail(mail_sink, "London@mfa.kz")
    assert "Без Скриптов" not in wait_for_mail(mail_sink, "udp@udp-rk.kz")  # never a name to the authorities

    # And leave again: ask for the erase link, open it, press the button.
    visit.goto("/erase?lang=ru")
    visit.page.fill("input[name=email]", email)
    with visit.page.expect_navigation():
        visit.page.click("form[action='/erase'] button")
    visit.goto(wait_for_link(mail_sink, email, "/erase/"))
    with visit.page.expect_navigation():
        visit.page.click("form[action^='/erase/'] button")
    assert visit.lang() == "ru"
    assert visit.cookie_names() <= {"csrf", "ticket"}
    visit.close()


def test_organiser_signs_in_and_sees_the_dashboard(chromium, site):
    server, token = site
    visit = Visit(chromium, server)
    answer = visit.page.goto(f"{server.url}/organiser?lang=en")
    assert "/organiser/login" in visit.page.url and answer.status == 200
    visit.page.fill("#f-token", token)
    with visit.page.expect_navigation():
        visit.page.click("form.login button")
    assert urlsplit(visit.page.url).path == "/organiser"
    assert visit.page.locator("h1").count() >= 1
    visit.shoot("dashboard-en")
    visit.close()
