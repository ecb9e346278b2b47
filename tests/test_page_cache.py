"""Public pages are rendered once per (page, language, figures period) and may be kept by any proxy until the
next boundary; nothing private (a token, a cookie, a form answer) is ever cacheable; static files have
content-hashed names. The clock is the app's own (create_app(clock=...)), moved by the tests."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import page_cache, security, static_files
from app.settings import ROOT
from tests.servers import AppProcess, server_env, upgrade
from tests.support import BROWSER_POST, SIGNER, START, count, csrf_token, free_port, sign_form
from tests.test_public_figures import confirm

PUBLIC = ["/", "/c/mamay?lang=en", "/c/mamay?lang=ru", "/c/mamay?lang=kk", "/privacy?lang=en",
          "/c/mamay/letter?lang=en", "/c/mamay/letter?lang=ru&target=embassy-de", "/c/mamay", "/privacy"]


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


def test_a_public_answer_is_given_again_without_routing_until_its_max_age_or_a_reload(app, clock, monkeypatch):
    """The in-process micro-cache (page_cache.Answered) answers again what the app marked public, by path, query
    and Accept-Language, with the max-age left; a reloaded campaign or the end of its max-age sends the next
    request to the route again."""
    from app import web

    first = app.get("/c/mamay?lang=ru")
    negotiated = visitor(app, **{"Accept-Language": "kk"}).get("/c/mamay")
    routed = []

    async def counted(*args, **kwargs):
        routed.append(args[1])
        return await public_page(*args, **kwargs)

    public_page = web.public_page
    monkeypatch.setattr(web, "public_page", counted)
    clock.advance(minutes=2)
    again = visitor(app).get("/c/mamay?lang=ru")
    assert routed == [] and again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert max_age(again) == max_age(first) - 120 and "set-cookie" not in again.headers
    assert again.headers["content-security-policy"] == first.headers["content-security-policy"]
    assert visitor(app, **{"Accept-Language": "kk"}).get("/c/mamay").content == negotiated.content
    russian = visitor(app, **{"Accept-Language": "ru"}).get("/c/mamay")  # another language: its own answer
    assert '<html lang="ru">' in russian.text and routed == ["petition.html"]
    app.app.state.services.campaigns.version += 1  # a campaign folder reloaded
    assert visitor(app).get("/c/mamay?lang=ru").status_code == 200 and len(routed) == 2
    clock.advance(minutes=10)  # the next period: the kept answer has run out
    assert visitor(app).get("/c/mamay?lang=ru").status_code == 200 and len(routed) == 3


@pytest.mark.parametrize(("headers", "kept"), [
    ([(b"cache-control", b"public, max-age=60")], (60, False)),
    ([(b"cache-control", b"public, max-age=60"), (b"vary", b"Accept-Language")], (60, True)),
    ([(b"cache-control", b"public, max-age=0")], None),  # past a boundary, while the next period renders
    ([(b"cache-control", b"no-store")], None),
    ([(b"cache-control", b"private, max-age=60")], None),
    ([(b"cache-control", b"public, max-age=60"), (b"set-cookie", b"csrf=x")], None),
    ([(b"cache-control", b"public, max-age=60"), (b"vary", b"Cookie")], None),
    ([], None),
])
def test_only_an_answer_marked_public_without_a_cookie_is_kept(headers, kept):
    assert page_cache._keepable(headers) == kept


def test_a_prober_inventing_query_strings_keeps_the_micro_cache_bounded(app):
    answered = next(m for m in iter_middleware(app.app) if isinstance(m, page_cache.Answered))
    size = len(app.get("/privacy?x=first").content)
    for n in range(page_cache.Answered.MAX_BYTES // size + 50):
        assert app.get(f"/privacy?x={n}", headers={"Accept-Language": f"x-{n}"}).status_code == 200
    held = sum(page_cache._size(key, kept) for key, kept in answered._kept.items())  # keys and bodies
    assert held == answered._bytes <= answered.MAX_BYTES
    assert len(answered._kept) >= answered.MAX_BYTES // (size + 1000)  # and as many as fit are kept


def iter_middleware(app) -> Iterator[object]:
    layer = app.middleware_stack
    while layer is not None:
        yield layer
        layer = getattr(layer, "app", None)


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


# --- the shipped nginx micro-cache in front of a real server -------------------------------------------------


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextmanager
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[str, AppProcess]]:
    """deploy/nginx.conf as shipped (only its upstream, port and cache folder changed) on a loopback port in front
    of a real server process; yields the proxy's URL and the server."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'campaign.db'}",
                     base_url=f"http://127.0.0.1:{port}")  # the public URL is the proxy's
    upgrade(env)
    with AppProcess(env) as app:
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        for shipped, here in [("server web:8000;", f"server 127.0.0.1:{app.port};"),
                              ("listen 80;", f"listen 127.0.0.1:{port};"),
                              ("/var/cache/nginx/campaign", str(tmp_path / "cache"))]:
            assert shipped in site, shipped
            site = site.replace(shipped, here)
        temp = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
        conf = tmp_path / "nginx.conf"
        # As root, nginx's workers would switch to another user, who may not open this test's folders.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        conf.write_text(f"daemon off; worker_processes 1; pid {tmp_path / 'nginx.pid'}; {user}\n"
                        f"error_log {tmp_path / 'error.log'};\nevents {{ worker_connections 128; }}\n"
                        f"http {{ {temp}\n{site}\n}}\n")
        proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 10
            while True:
                assert proc.poll() is None, f"nginx exited: {proc.stderr.read().decode()}"
                try:
                    httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "nginx did not answer"
                    time.sleep(0.1)
            yield url, app
        finally:
            proc.terminate()
            proc.wait(10)


def test_through_the_shipped_nginx_two_visitors_never_get_each_others_tokens_or_cookies(tmp_path):
    with nginx_in_front(tmp_path) as (url, _), httpx.Client(base_url=url) as one, httpx.Client(base_url=url) as two:
        # The petition: stored once, then the same bytes for everyone, with no cookie.
        first = one.get("/c/mamay?lang=en")
        assert first.headers["x-cache-status"] == "MISS" and "set-cookie" not in first.headers, first.headers
        for who in (one, two):
            again = who.get("/c/mamay?lang=en")
            assert again.headers["x-cache-status"] == "HIT" and again.content == first.content, again.headers
            assert "set-cookie" not in again.headers
        # Languages negotiated through one URL are stored apart.
        for lang in ("ru", "kk", "ru", "kk"):
            answer = two.get("/c/mamay", headers={"Accept-Language": lang})
            assert f'<html lang="{lang}">' in answer.text, (lang, answer.headers.get("x-cache-status"))
        # Each signs as a browser does from that page; a cross-site post is refused.
        for n, who in enumerate((one, two)):
            signed = who.post("/c/mamay/sign", data={**SIGNER, "email": f"proxy{n}@example.org"},
                              headers={"Origin": url, "Sec-Fetch-Site": "same-origin"})
            assert signed.status_code == 303 and "ticket" in who.cookies
            assert signed.headers.get("x-cache-status", "") != "HIT"
        refused = two.post("/c/mamay/sign", data={**SIGNER, "email": "victim@example.org"},
                           headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403
        # Private pages: each visitor's own token and cookie, every time from the app, never from the cache.
        private = {"/c/mamay/thanks?lang=en": "csrf_token", "/erase?lang=en": "csrf_token",
                   "/c/mamay/embed?lang=en": "form_token", "/organiser/login": "csrf_token"}
        for path, field in private.items():
            seen = {}
            for name, who in (("one", one), ("two", two), ("one again", one), ("two again", two)):
                answer = who.get(path)
                assert answer.status_code == 200, (path, answer.status_code)
                assert answer.headers["x-cache-status"] in ("MISS", "BYPASS", "EXPIRED"), (path, name)
                assert answer.headers["cache-control"] == "no-store", path
                found = re.search(rf'name="{field}" value="([^"]+)"', answer.text)
                assert found, (path, name, answer.text[:300])
                seen[name] = found.group(1)
            assert seen["one"] != seen["two"], path
            if field == "form_token":  # single-use: a new one each time
                assert len(set(seen.values())) == 4, path
            else:  # bound to each visitor's own cookie
                assert seen["one"] == seen["one again"] and seen["two"] == seen["two again"], path
        assert one.cookies["csrf"] != two.cookies["csrf"] and one.cookies["ticket"] != two.cookies["ticket"]
        stranger = httpx.get(f"{url}/c/mamay/thanks?lang=en")  # no ticket: no code form, whoever asked before
        assert 'name="code"' not in stranger.text and stranger.headers["x-cache-status"] != "HIT"
