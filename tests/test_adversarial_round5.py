"""Adversarial review, round 5: the in-process micro-cache (page_cache.Answered), sealed embed tokens and organiser
cookies, and the countries the signer's page and letters may name, attacked from outside with the real app. The
tests marked "failed on" failed on the code they were written against; the others are attacks that failed, kept
so that they stay tried (docs/security.md §13)."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from app import letters, organisers, page_cache, security, signing, static_files, web_embed
from app.db import Database
from app.main import create_app
from tests.seed import organiser
from tests.support import SIGNER, START, count, make_settings
from tests.test_page_cache import iter_middleware, visitor
from tests.test_public_figures import confirm

FROM_GERMANY = "A supporter of the campaign from Germany"


def answered(app: TestClient) -> page_cache.Answered:
    return next(m for m in iter_middleware(app.app) if isinstance(m, page_cache.Answered))


# --- 1. the signer's own letter is no live oracle on a country's count ------------------------------------------


def test_a_prober_holding_a_country_one_below_k_cannot_read_a_new_signer_off_their_own_letter(app, clock):
    """Failed on a86e383. Countries are published once a day (as of 00:00 UTC) so that a prober holding a cell
    one below its next step cannot see one confirmation from that country within ten minutes. But a letter names
    the signer's country from the exact counts of the moment the period's figures were read: the prober's own
    letter turned from "a supporter" to "a supporter from Germany" in the first period after one more German
    confirmed, while every public figure still showed no Germany. (Two processes reading the period at different
    moments also gave a signer's page and the letter sent for them different countries.)"""
    svc = app.app.state.services
    campaign = svc.campaigns["mamay"]
    yesterday = START - timedelta(days=1)
    prober = [confirm(svc, "DE", now=yesterday) for _ in range(svc.settings.min_cell - 1)]  # cheap: own addresses
    own_page = f"/s/{prober[0]}?lang=en"
    assert app.get(own_page).status_code == 200 and FROM_GERMANY not in app.get(own_page).text

    confirm(svc, "DE", now=clock.now)  # the one the prober waits for
    clock.advance(minutes=10)  # the next period, the same day
    assert "DE" not in app.get("/api/v1/campaigns/mamay/stats").json()["by_country"]
    assert FROM_GERMANY not in app.get(own_page).text, "one German's confirmation read off the prober's letter"
    with svc.db.read() as session:
        row = signing.signer_by_manage_token(session, prober[0])
        sent = letters.signer_letter(session, campaign=campaign, row=row, target_key="president", lang="en",
                                     keyring=svc.keyring, secret=letters.variation_secret(svc.settings.secret_key),
                                     public=svc.stats_cache.letter_countries(campaign))
    assert FROM_GERMANY not in sent.text  # the letter sent for them says what their page said

    clock.now = datetime(2026, 12, 6, 0, 0, 30, tzinfo=UTC)  # the next day: Germany is public, and so named
    assert app.get("/api/v1/campaigns/mamay/stats").json()["by_country"].get("DE") == svc.settings.min_cell
    assert FROM_GERMANY in app.get(own_page).text



def test_two_processes_name_the_same_countries_in_a_signers_letter_all_period(tmp_path, sqlite_url, clock):
    """Failed on a86e383. Two server processes read the period's countries at different moments: the signer's page
    from one said "a supporter", the letter sent for them by the other "a supporter from Germany"."""
    settings = make_settings(tmp_path, sqlite_url)
    first_db, second_db = Database(sqlite_url), Database(sqlite_url)
    try:
        with TestClient(create_app(settings, db=first_db, clock=clock)) as first, \
                TestClient(create_app(settings, db=second_db, clock=clock)) as second:
            svc = first.app.state.services
            yesterday = START - timedelta(days=1)
            token = [confirm(svc, "DE", now=yesterday) for _ in range(settings.min_cell - 1)][0]
            page = first.get(f"/s/{token}?lang=en").text
            clock.advance(minutes=3)
            confirm(svc, "DE", now=clock.now)
            later = second.get(f"/s/{token}?lang=en").text
            assert re.findall(r"<pre[^>]*>(.*?)</pre>", later, re.S) == re.findall(r"<pre[^>]*>(.*?)</pre>", page, re.S)
            assert FROM_GERMANY not in page and "<pre" in page  # the same period: the same letters
    finally:
        first_db.dispose()
        second_db.dispose()

# --- 2. the micro-cache never outlives a reload, however the requests interleave ---------------------------------


def test_a_page_rendered_before_a_reload_is_not_kept_after_it(app, monkeypatch):
    """Failed on a86e383. An organiser takes a campaign down (draft = true: 404 for everyone) while one visitor's
    petition is still rendering, and another visitor's request comes in between: the micro-cache, emptied for
    the new campaigns by that request, then kept the old page that finished after it, and served it to everyone
    for the rest of its max-age (up to ten minutes)."""
    svc = app.app.state.services
    registry = svc.campaigns
    entered, release = threading.Event(), threading.Event()
    stats = svc.stats_cache.stats

    def slow_stats(campaign):  # the first rendering waits, as one under load does
        if not release.is_set():
            entered.set()
            assert release.wait(10)
        return stats(campaign)

    monkeypatch.setattr(svc.stats_cache, "stats", slow_stats)
    answers = {}
    before = threading.Thread(target=lambda: answers.setdefault("before", visitor(app).get("/c/mamay?lang=en")))
    before.start()
    assert entered.wait(10)
    taken_down = registry["mamay"].model_copy(update={"draft": True})
    registry._current = {**registry._current, "mamay": taken_down}  # what Registry.reload swaps in
    registry.version += 1
    assert visitor(app).get("/privacy?lang=en").status_code == 200  # anyone else, meanwhile
    release.set()
    before.join(10)
    assert answers["before"].status_code == 200  # that visitor got the page as it was when they asked
    after = visitor(app).get("/c/mamay?lang=en")
    assert after.status_code == 404, "a page of a campaign taken down was served after the reload"


# --- 3. the micro-cache's bound holds for what it keeps, keys included -------------------------------------------


def held(cache: page_cache.Answered) -> int:
    """Bytes the micro-cache holds for its answers: keys (path, query, language), headers and bodies."""
    return sum(len(path) + len(query) + len(language or b"") + len(kept.body)
               + sum(len(k) + len(v) for k, v in kept.headers)
               for (path, query, language), kept in cache._kept.items())


def test_long_query_strings_on_a_small_immutable_file_do_not_grow_the_cache_past_its_bound(app, monkeypatch):
    """Failed on a86e383. Only bodies were counted: a 3 kB static file (kept a year, immutable) asked for with 60 kB
    query strings (what the server takes) held twenty times the bound; on a real server 3,000 such requests in
    20 s grew it by 158 MB and it stayed so."""
    monkeypatch.setattr(page_cache.Answered, "MAX_BYTES", 512 << 10)  # the same arithmetic, a smaller bound
    cache = answered(app)
    url = static_files.url("fonts/LICENSE")
    first = app.get(url)
    size = len(first.content)
    assert size < 4000 and first.headers["cache-control"] == static_files.IMMUTABLE
    for n in range(cache.MAX_BYTES // size + 20):
        assert app.get(f"{url}?{n}={'a' * 60_000}").status_code == 200
    assert held(cache) <= cache.MAX_BYTES, f"{held(cache)} bytes held for a bound of {cache.MAX_BYTES}"
    assert app.get(f"{url}?again").status_code == 200  # and it still keeps what it may


# --- attacks on the micro-cache that failed (kept, so that they stay tried) ---------------------------------------

PUBLIC_PATHS = {"/", "/c/mamay", "/privacy", "/c/mamay/letter", "/c/mamay/share.png"}
ODD = [{}, {"If-None-Match": "*"}, {"If-None-Match": '"x"'}, {"Accept-Language": "kk"}]


def test_no_private_answer_is_kept_or_handed_to_another_visitor_however_it_is_asked_for(app, clock):
    """A signer (with their ticket and CSRF cookies) and an organiser ask for every private page, each in odd
    ways (If-None-Match: *, another language, a percent-encoded query, HEAD first): the micro-cache keeps none of
    them, and a stranger asking the same URLs afterwards gets nothing of theirs."""
    svc = app.app.state.services
    signer = confirm(svc, "DE", now=clock.now)
    assert app.post("/c/mamay/sign", data={**SIGNER, "email": "one@example.org"}, follow_redirects=False,
                    headers={"Origin": "http://testserver"}).status_code == 303  # a ticket cookie, as after signing
    login = re.search(r'name="csrf_token" value="([^"]+)"', app.get("/organiser/login").text).group(1)
    assert app.post("/organiser/login", data={"csrf_token": login, "token": organiser(svc, "olga")},
                    follow_redirects=False).status_code == 303
    private = [f"/s/{signer}?lang=en", f"/s/{signer}?lang=%72u", f"/s/{signer}/letter.pdf?target=president",
               f"/s/{signer[:-3]}abc", "/s/not-a-token", "/c/mamay/thanks?lang=en", "/c/mamay/embed?lang=en",
               "/erase?lang=en", "/confirm/not-a-token", "/organiser", "/organiser/login", "/organiser?lang=ru",
               "/organiser/preview/mamay?lang=en"]
    seen: dict[str, bytes] = {}
    for url in private:
        app.head(url)
        for headers in ODD:
            seen[url] = app.get(url, headers=headers).content
    kept_paths = {path.decode() if isinstance(path, bytes) else path for path, _, _ in answered(app)._kept}
    assert kept_paths <= PUBLIC_PATHS, kept_paths

    stranger = visitor(app)
    # (A signer's link is its own key: whoever holds it sees that page; the stranger's must still be their own.)
    mine = {"csrf cookie": app.cookies["csrf"], "organiser": "Signed in as olga", "ticket": app.cookies["ticket"],
            "csrf token": security.csrf_form_token(svc.settings.secret_key, app.cookies["csrf"])}
    for url in private:
        for headers in ODD:
            answer = stranger.get(url, headers=headers, follow_redirects=False)
            assert answer.status_code in (200, 303, 304, 404), (url, answer.status_code)
            assert "/s/" in url or answer.status_code == 404 or answer.content != seen[url], url
            for what, value in mine.items():
                assert value not in answer.text, (url, headers, what)
    assert 'name="code"' not in stranger.get("/c/mamay/thanks?lang=en").text


def test_odd_requests_do_not_poison_what_others_get(app):
    """Duplicate Accept-Language headers, percent-encoded and repeated `lang`, a percent-encoded path, HEAD and
    If-None-Match first: every later visitor still gets the page their own request asks for."""
    def lang_of(answer) -> str:
        return re.search(r'<html lang="([a-z]+)"', answer.text).group(1)

    cache = answered(app)
    assert lang_of(visitor(app).get("/c/mamay", headers=[("Accept-Language", "kk"),
                                                         ("Accept-Language", "ru")])) == "kk"  # the first wins
    for asked, got in [("ru", "ru"), ("kk", "kk"), ("de, ru;q=0.5", "ru"), ("", "en")]:
        assert lang_of(visitor(app, **{"Accept-Language": asked}).get("/c/mamay")) == got, asked
    assert lang_of(visitor(app).get("/c/mamay?lang=%72u")) == "ru"
    assert lang_of(visitor(app).get("/c/mamay?lang=ru&lang=kk")) == "kk"  # the last, as the route reads it
    assert lang_of(visitor(app).get("/c/mamay?lang=ru")) == "ru"
    assert lang_of(visitor(app).get("/c/%6Damay?lang=kk")) == "kk"
    assert lang_of(visitor(app).get("/c/mamay?lang=kk")) == "kk"

    assert visitor(app).head("/privacy?lang=ru").status_code == 405  # GET routes only
    assert visitor(app).get("/privacy?lang=ru", headers={"If-None-Match": "*"}).status_code == 304
    assert not any(path == "/privacy" and query == b"lang=ru" for path, query, _ in cache._kept)  # neither kept
    full = visitor(app).get("/privacy?lang=ru")
    assert full.status_code == 200 and lang_of(full) == "ru" and int(full.headers["content-length"]) > 1000
    assert visitor(app).get("/privacy?lang=ru").content == full.content  # now from the micro-cache


def test_a_kept_page_moves_at_the_boundary_and_only_by_k(app, clock):
    """A page kept just before a boundary answers the old figures until the boundary and the new ones from it;
    four confirmations show nowhere, the fifth only at the next boundary."""
    svc = app.app.state.services
    from tests.test_public_figures import shown_counts

    before = shown_counts(app, "/c/mamay?lang=en")
    for _ in range(4):
        confirm(svc, "KZ", now=clock.now)
    clock.now = START.replace(minute=9, second=59)
    assert shown_counts(app, "/c/mamay?lang=en") == before
    clock.now = START.replace(minute=10, second=0)
    assert shown_counts(app, "/c/mamay?lang=en") == before  # four: under k, nothing moves
    confirm(svc, "KZ", now=clock.now)
    clock.now = START.replace(minute=19, second=59, microsecond=999_999)
    assert shown_counts(app, "/c/mamay?lang=en") == before
    clock.now = START.replace(minute=20, second=0)
    after = shown_counts(app, "/c/mamay?lang=en")
    assert after != before and ">5<" in after[0].replace(" ", "")


# --- sealed embed tokens and organiser cookies: forgeries and replays that failed ---------------------------------


def embed_token(client: TestClient) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', client.get("/c/mamay/embed").text).group(1)


def embed_sign(client: TestClient, token: str, email: str):
    return client.post("/c/mamay/embed/sign", data={**SIGNER, "email": email, "form_token": token},
                       headers={"Origin": "http://testserver"}, follow_redirects=False)


def test_no_embed_token_but_a_fresh_one_of_this_campaign_signs(app):
    """Old itsdangerous values (validly signed under the old salts), another campaign's, expired and future
    tokens, other sealed values of ours (the ticket cookie, an organiser cookie), a flipped bit, a truncated one:
    all refused, and none spends anything."""
    svc = app.app.state.services
    secret = svc.settings.secret_key
    now = datetime.now(UTC).timestamp()
    nonce = bytes(range(16))
    good = embed_token(app)
    raw = bytearray(security.open_handle(secret, web_embed.FORM_PURPOSE, good, max_age=60) or b"")
    assert raw[16:] == b"mamay"
    assert app.post("/c/mamay/sign", data={**SIGNER, "email": "t@example.org"}, follow_redirects=False,
                    headers={"Origin": "http://testserver"}).status_code == 303
    flipped = good[:30] + ("A" if good[30] != "A" else "B") + good[31:]
    forged = {
        **old_format_tokens(secret),
        "another campaign": security.seal_handle(secret, web_embed.FORM_PURPOSE, nonce + b"second"),
        "a longer slug": security.seal_handle(secret, web_embed.FORM_PURPOSE, nonce + b"mamay-2"),
        "no nonce": security.seal_handle(secret, web_embed.FORM_PURPOSE, b"mamay"),
        "expired": security.seal_handle(secret, web_embed.FORM_PURPOSE, nonce + b"mamay",
                                        now=now - web_embed.FORM_SECONDS - 5),
        "from the future": security.seal_handle(secret, web_embed.FORM_PURPOSE, nonce + b"mamay", now=now + 3600),
        "the ticket cookie": app.cookies["ticket"],
        "an organiser cookie": security.seal_handle(secret, organisers.SESSION_PURPOSE, nonce + b"mamay"),
        "another key": security.seal_handle("not-our-secret" * 3, web_embed.FORM_PURPOSE, nonce + b"mamay"),
        "a flipped character": flipped, "truncated": good[:-4], "a character more": good + "A",
    }
    for what, token in forged.items():
        answer = embed_sign(app, token, f"{what.replace(' ', '-')}@example.org")
        assert answer.status_code == 403, what
    assert count(svc) == 1  # the petition's own signature only
    assert embed_sign(app, good, "real@example.org").status_code == 303  # nothing above spent it
    assert embed_sign(app, good, "again@example.org").status_code == 403
    for spelling in (good + "==", good[:10] + "." + good[10:], good[:10] + "\n" + good[10:]):  # the same bytes
        assert embed_sign(app, spelling, "respelt@example.org").status_code == 403, spelling
    assert count(svc) == 2
    ahead = security.seal_handle(secret, web_embed.FORM_PURPOSE, bytes(16) + b"mamay", now=now + 10)
    assert embed_sign(app, ahead, "skewed@example.org").status_code == 303  # a host whose clock runs 10 s ahead


def old_format_tokens(secret: str) -> dict[str, str]:
    """Embed tokens as the itsdangerous versions made them, validly signed when the library is installed (it is no
    longer a dependency), else of the same shape."""
    try:
        from itsdangerous import URLSafeTimedSerializer
    except ImportError:
        return {"itsdangerous-shaped": "WyJtYW1heSIsIm4iXQ.Z1Hc8A.kI0c9hFq3p2m1bJd7kq0v4dO5wI"}
    return {"itsdangerous v2": URLSafeTimedSerializer(secret, salt="embed-form v2").dumps(["mamay", "n"]),
            "itsdangerous v1": URLSafeTimedSerializer(secret, salt="embed-form").dumps("mamay")}


def old_format_cookies(secret: str, data: dict) -> dict[str, str]:
    """An organiser cookie as the itsdangerous version made it, with the same contents (or of its shape)."""
    try:
        from itsdangerous import URLSafeTimedSerializer
    except ImportError:
        return {"itsdangerous-shaped": "eyJpZCI6MSwiZnAiOiJ4IiwicyI6InkifQ.Z1Hc8A.kI0c9hFq3p2m1bJd7kq0v4dO5wI"}
    return {"itsdangerous, same payload": URLSafeTimedSerializer(secret, salt="organiser-session").dumps(data)}


def test_an_organiser_cookie_opens_nothing_once_forged_expired_replayed_or_of_another_kind(app):
    svc = app.app.state.services
    secret = svc.settings.secret_key
    login = re.search(r'name="csrf_token" value="([^"]+)"', app.get("/organiser/login").text).group(1)
    assert app.post("/organiser/login", data={"csrf_token": login, "token": organiser(svc, "olga")},
                    follow_redirects=False).status_code == 303
    cookie = app.cookies[organisers.SESSION_COOKIE]
    payload = security.open_handle(secret, organisers.SESSION_PURPOSE, cookie, max_age=60)
    assert payload is not None and set(json.loads(payload)) == {"id", "fp", "s"}

    def opens(value: str) -> bool:
        stranger = visitor(app)
        stranger.cookies.set(organisers.SESSION_COOKIE, value)
        return stranger.get("/organiser", follow_redirects=False).status_code == 200

    assert opens(cookie)  # a copy works while the session lives: it is the session
    now = datetime.now(UTC).timestamp()
    refused = {
        **old_format_cookies(secret, json.loads(payload)),
        "expired": security.seal_handle(secret, organisers.SESSION_PURPOSE, payload,
                                        now=now - organisers.SESSION_SECONDS - 5),
        "another id": security.seal_handle(secret, organisers.SESSION_PURPOSE,
                                           json.dumps({**json.loads(payload), "id": None}).encode()),
        "an embed token": embed_token(app),
        "the same payload as an embed token": security.seal_handle(secret, web_embed.FORM_PURPOSE, payload),
        "the plain payload": payload.decode(),
    }
    for what, value in refused.items():
        assert not opens(value), what
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', app.get("/organiser").text).group(1)
    assert app.post("/organiser/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert not opens(cookie)  # signed out: the copy is refused too


def test_an_immutable_file_answered_again_is_still_immutable(app):
    """Failed on a86e383 (not a leak: a cost). The micro-cache wrote every answer again as `public, max-age=N`,
    so a hashed file lost `immutable` from its second request on, and browsers asked for it again on reload."""
    url = static_files.url("style.css")
    first, again = app.get(url), visitor(app).get(url)
    assert first.headers["cache-control"] == static_files.IMMUTABLE
    assert again.content == first.content and "immutable" in again.headers["cache-control"]
