"""Public pages are rendered once per (page, language, figures period) and may be kept by any proxy until the
next boundary; nothing private (a token, a cookie, a form answer) is ever cacheable; static files have
content-hashed names. The clock is the app's own (create_app(clock=...)), moved by the tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app import page_cache, security, static_files
from app.db import Database
from app.main import create_app
from app.settings import Settings
from tests.support import BROWSER_POST, SIGNER, count, csrf_token, sign_form
from tests.test_public_figures import Clock, confirm

START = datetime(2026, 12, 5, 10, 0, 30, tzinfo=UTC)  # 30 s into a period (boundaries every 10 minutes)
PUBLIC = ["/", "/c/mamay?lang=en", "/c/mamay?lang=ru", "/c/mamay?lang=kk", "/privacy?lang=en",
          "/c/mamay/letter?lang=en", "/c/mamay/letter?lang=ru&target=embassy-de", "/c/mamay", "/privacy"]


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def app(settings: Settings, db: Database, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db=db, clock=clock), base_url="http://testserver") as c:
        yield c


def visitor(app: TestClient, **headers: str) -> TestClient:
    """Another browser on the same app, for GETs: its own cookies and headers (a POST that signs goes through
    `app`, whose event loop runs the sign intake)."""
    return TestClient(app.app, base_url="http://testserver", headers=headers)


def max_age(answer) -> int:
    found = re.fullmatch(r"public, max-age=(\d+)", answer.headers["cache-control"])
    assert found, answer.headers["cache-control"]
    return int(found.group(1))


@pytest.mark.parametrize("url", PUBLIC)
def test_two_visitors_get_the_same_bytes_and_no_cookie(app, url):
    one = visitor(app, **{"User-Agent": "one", "Accept-Language": "en"})
    one.cookies.set(security.CSRF_COOKIE, security.new_token())
    two = visitor(app, **{"User-Agent": "two", "Accept-Language": "en;q=0.5, de"})
    two.cookies.set("ticket", "something-of-their-own")
    a, b = one.get(url), two.get(url)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content
    assert "set-cookie" not in a.headers and "set-cookie" not in b.headers
    assert a.headers["etag"] == b.headers["etag"]
    assert 0 < max_age(a) <= 570  # to the next boundary, 10:10:00
    assert 'name="csrf_token"' not in a.text


def test_a_known_etag_gets_a_304_without_a_body(app):
    first = app.get("/c/mamay?lang=ru")
    again = app.get("/c/mamay?lang=ru", headers={"If-None-Match": f'W/"x", {first.headers["etag"]}'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"] and max_age(again) == max_age(first)
    assert app.get("/c/mamay?lang=ru", headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_page_for_one_language_is_never_served_for_another(app):
    pages = {lang: app.get(f"/c/mamay?lang={lang}") for lang in ("en", "ru", "kk")}
    assert len({p.headers["etag"] for p in pages.values()}) == 3
    for lang, answer in pages.items():
        assert f'<html lang="{lang}">' in answer.text
        assert "vary" not in answer.headers  # the language is in the URL
    for lang in ("kk", "ru", "en"):  # negotiated: the same URL, so caches must key on Accept-Language
        answer = app.get("/c/mamay", headers={"Accept-Language": lang})
        assert f'<html lang="{lang}">' in answer.text and answer.content == pages[lang].content
        assert answer.headers["vary"] == "Accept-Language"


def test_the_cached_page_shows_the_figures_of_its_period_and_changes_only_at_the_boundary(app, svc, clock):
    svc.clock = clock  # the confirmations below are stamped with the test's clock
    for _ in range(5):
        confirm(svc, "DE", now=clock.now)
    before = app.get("/c/mamay?lang=en")
    assert '<strong class="num">5</strong>' in before.text
    assert max_age(before) == 570
    for _ in range(5):
        confirm(svc, "DE", now=clock.now)
    for minutes in (1, 4, 4):  # 10:01:30 .. 10:09:30: the same period, the same bytes, a shorter max-age
        clock.advance(minutes=minutes)
        same = app.get("/c/mamay?lang=en")
        assert same.content == before.content
        assert max_age(same) == int((datetime(2026, 12, 5, 10, 10, tzinfo=UTC) - clock.now).total_seconds())
    clock.advance(minutes=1)  # 10:10:30: the next period
    after = app.get("/c/mamay?lang=en")
    assert '<strong class="num">10</strong>' in after.text and after.headers["etag"] != before.headers["etag"]
    assert max_age(after) == 570
    assert '<strong class="num">10</strong>' in app.get("/").text


def test_max_age_never_runs_past_midnight_when_a_campaign_may_open_or_close():
    cache = page_cache.PageCache(every=timedelta(hours=7), clock=lambda: START)
    late = datetime(2026, 12, 5, 23, 59, 0, tzinfo=UTC)
    entry = page_cache._entry("x", late - timedelta(hours=1), late + timedelta(hours=6))
    assert cache.max_age(entry, late) == 60


def test_private_pages_and_answers_are_never_cacheable(app, svc):
    signer = confirm(svc, "DE", now=START)
    answers = {
        "sign answer": sign_form(app, email="priv@example.org"),
        "refused form, as typed": sign_form(app, email="not-an-address"),
        "thanks with ticket": app.get("/c/mamay/thanks?lang=en"),
        "thanks without": visitor(app).get("/c/mamay/thanks?lang=en"),
        "code form answer": app.post("/c/mamay/code", data={"code": "AAAAAAAA", "lang": "en", "csrf_token":
                                                            csrf_token(app, "/c/mamay/thanks?lang=en")}),
        "erase form": app.get("/erase?lang=en"),
        "confirm link": app.get("/confirm/not-a-token"),
        "signer page": app.get(f"/s/{signer}"),
        "unknown private link": app.get("/s/not-a-token"),
        "cross-site post": app.post("/c/mamay/sign", data=SIGNER, headers={"Origin": "https://evil.example"}),
        "embed": app.get("/c/mamay/embed"),
        "organiser login": app.get("/organiser/login"),
    }
    assert answers["sign answer"].status_code == 303 and answers["refused form, as typed"].status_code == 422
    assert "ticket=" in answers["sign answer"].headers["set-cookie"]
    assert "csrf=" in answers["thanks without"].headers["set-cookie"]
    assert answers["signer page"].status_code == 200
    for what, answer in answers.items():
        assert answer.headers["cache-control"] == "no-store", what


def test_the_thank_you_page_fills_in_each_visitors_own_token(app):
    seen = []
    for email in ("one@example.org", "two@example.org"):  # two browsers, one after the other
        app.cookies.clear()
        assert sign_form(app, email=email).status_code == 303
        answer = app.get("/c/mamay/thanks?lang=en")
        assert answer.headers["cache-control"] == "no-store" and "csrf=" in answer.headers["set-cookie"]
        token = re.search(r'name="csrf_token" value="([^"]+)"', answer.text).group(1)
        assert token == security.csrf_form_token(app.app.state.services.settings.secret_key,
                                                 app.cookies[security.CSRF_COOKIE])  # bound to its cookie
        seen.append((token, answer.text))
    (token_a, a), (token_b, b) = seen
    assert token_a != token_b and page_cache.MARKER not in a
    assert a.replace(token_a, "") == b.replace(token_b, "")


def test_each_embed_gets_its_own_single_use_token_and_is_never_stored(app, svc):
    tokens = []
    for _ in range(2):
        answer = visitor(app).get("/c/mamay/embed?lang=kk")
        assert answer.headers["cache-control"] == "no-store" and "set-cookie" not in answer.headers
        assert "frame-ancestors" in answer.headers["content-security-policy"]
        tokens.append(re.search(r'name="form_token" value="([^"]+)"', answer.text).group(1))
    assert tokens[0] != tokens[1]
    signed = app.post("/c/mamay/embed/sign", data={**SIGNER, "form_token": tokens[1]},
                      headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert signed.status_code == 303 and count(svc) == 1


def test_the_sign_form_signs_from_our_own_pages_and_from_no_browser_at_all(app, svc):
    for n, headers in enumerate([BROWSER_POST, {"Origin": "http://testserver"}, {"Sec-Fetch-Site": "none"}, {}]):
        answer = app.post("/c/mamay/sign", data={**SIGNER, "email": f"s{n}@example.org"}, headers=headers,
                          follow_redirects=False)
        assert answer.status_code == 303, headers
    assert count(svc) == 4


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"sec-fetch-site": "same-origin", "origin": "https://evil.example"}, True),  # the browser's own word wins
    ({"sec-fetch-site": "none"}, True),
    ({"sec-fetch-site": "cross-site", "origin": "https://site.example"}, False),
    ({"sec-fetch-site": "same-site", "origin": "https://sub.site.example"}, False),
    ({"origin": "https://site.example", "host": "site.example"}, True),
    ({"origin": "https://site.example"}, True),  # base_url, behind a proxy that rewrote Host
    ({"origin": "http://site.example"}, False),  # another scheme is another origin
    ({"origin": "https://evil.example", "host": "site.example"}, False),
    ({"origin": "null", "host": "site.example"}, False),
    ({"origin": "https://site.example.evil.example", "host": "site.example"}, False),
    ({"host": "site.example"}, True),  # neither header: not a browser, so no other site made it
])
def test_same_origin_follows_gos_cross_origin_protection(headers, allowed):
    assert security.same_origin(headers, base_url="https://site.example") is allowed


def test_static_files_have_content_hashed_immutable_names(app):
    page = app.get("/c/mamay?lang=en").text
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
    assert href == static_files.url("style.css") and re.fullmatch(r"/static/style\.[0-9a-f]{12}\.css", href)
    hashed = app.get(href)
    assert hashed.status_code == 200 and hashed.headers["cache-control"] == static_files.IMMUTABLE
    assert hashed.headers["content-type"] == "text/css; charset=utf-8"
    plain = app.get("/static/style.css")
    assert plain.content == hashed.content == (static_files.STATIC_DIR / "style.css").read_bytes()
    assert "immutable" not in plain.headers["cache-control"]
    assert app.get(href, headers={"If-None-Match": hashed.headers["etag"]}).status_code == 304
    assert app.get("/static/style.0000.css").status_code == 404
    assert app.get("/static/../settings.py").status_code == 404
