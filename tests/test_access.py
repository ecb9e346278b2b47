"""Who may do what: CSRF on every form, organiser routes closed to everyone without a live token, tokens that
expire, serve one purpose each and cannot be guessed, and public answers that never name a signer.

The routes are read from the app itself, so a route added later is covered without editing this file.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import select, update

from app import organisers, replies, security, signing
from app.db import Base, utcnow
from app.main import create_app
from app.models import AuditLog, Signature
from tests.seed import bearer, organiser
from tests.support import BROWSER_POST, SIGNER, body, csrf_token, deliver, link_in, make_settings


def api_routes(routes) -> list[APIRoute]:
    """Every route of the app, also inside included routers (FastAPI keeps those as one entry each)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


_routes_dir = Path(tempfile.mkdtemp(prefix="access-routes-"))
APP_ROUTES = api_routes(create_app(make_settings(_routes_dir, f"sqlite:///{_routes_dir / 'unused.db'}")).routes)


def needs_organiser(route: APIRoute) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is organisers.current_organiser:
            return True
        stack.extend(dep.dependencies)
    return False


ORGANISER_ROUTES = [(m, r.path) for r in APP_ROUTES if needs_organiser(r) for m in sorted(r.methods)]
ORGANISER_FORMS = {path for method, path in ORGANISER_ROUTES if method == "POST"}
FORM_POSTS = [r.path for r in APP_ROUTES if "POST" in r.methods and not r.path.startswith("/api/")]
PUBLIC_GETS = [r.path for r in APP_ROUTES if "GET" in r.methods and not needs_organiser(r)]


def snapshot(svc) -> dict[str, list]:
    """Every row of every table: "changes nothing" is checked against all of it."""
    with svc.db.read() as s:
        return {t.name: sorted((tuple(row) for row in s.execute(select(t))), key=repr)
                for t in Base.metadata.sorted_tables}


@dataclass
class Tokens:
    """What one signer holds: from their mails and their browser."""

    email: str
    confirm: str = ""  # /confirm/{token}
    code: str = ""
    manage: str = ""  # /s/{token}
    erase: str = ""  # /erase/{token}
    ticket: str = ""  # the cookie that lets the thank-you page take a code


def sign_up(client: TestClient, svc, smtp, email: str, **fields: str) -> Tokens:
    assert client.get("/c/mamay?lang=en").status_code == 200
    answer = client.post("/c/mamay/sign", data={**SIGNER, "email": email, **fields}, headers=BROWSER_POST,
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text[:500]
    deliver(svc, smtp.url)
    text = body(mails_to(smtp, email)[-1])
    return Tokens(email=email, confirm=link_in(text, "/confirm/").removeprefix("/confirm/"),
                  code=re.search(rf"\b([{security.CODE_ALPHABET}]{{8}})\b", text).group(1),
                  ticket=client.cookies.get("ticket", ""))


def mails_to(smtp, email: str) -> list:
    """Mails to this address as the signer typed it (the domain may arrive in lower case)."""
    return [r.message for r in smtp.sink.messages if email.casefold() in (a.casefold() for a in r.envelope_to)]


def confirm(client: TestClient, svc, smtp, who: Tokens) -> Tokens:
    token = csrf_token(client, f"/confirm/{who.confirm}?lang=en")
    done = client.post(f"/confirm/{who.confirm}", data={"csrf_token": token, "lang": "en"}, follow_redirects=False)
    assert done.status_code == 303
    who.manage = done.headers["location"].split("?")[0].removeprefix("/s/")
    return who


def ask_erase_link(client: TestClient, svc, smtp, who: Tokens) -> Tokens:
    token = csrf_token(client, "/erase?lang=en")
    assert client.post("/erase", data={"email": who.email, "csrf_token": token, "lang": "en"}).status_code == 200
    deliver(svc, smtp.url)
    who.erase = link_in(body(mails_to(smtp, who.email)[-1]), "/erase/").removeprefix("/erase/")
    return who


def fill(path: str, *, slug: str = "mamay", tokens: Tokens) -> str:
    """A route's path with real values: the slug, and the token that kind of route takes."""
    kind = {"/confirm/": tokens.confirm, "/s/": tokens.manage, "/erase/": tokens.erase}
    token = next((t for prefix, t in kind.items() if path.startswith(prefix)), "x")
    return path.replace("{slug}", slug).replace("{token}", token)


# --- CSRF ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FORM_POSTS)
def test_every_form_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(client, svc, smtp, path):
    victim = confirm(client, svc, smtp, sign_up(client, svc, smtp, "victim@example.org"))
    pending = sign_up(client, svc, smtp, "pending@example.org")
    victim.confirm, victim.code = pending.confirm, pending.code  # a pending signature: confirming would change it
    ask_erase_link(client, svc, smtp, victim)
    token = organiser(svc)
    url = fill(path, tokens=victim).replace("{reply_id}", str(a_reply(svc))).replace("{organiser_id}", "1")
    # Everything a real form of any of our pages would carry, so only the CSRF token is missing or wrong.
    data = {**SIGNER, "email": "new@example.org", "code": pending.code, "token": token, "target": "president",
            "named": "on", "lang": "en"}
    own_cookie = client.cookies.get(security.CSRF_COOKIE)
    other_cookie = security.new_token()
    attempts = {
        "no cookie, no field": ({}, {}),
        "cookie, no field": ({security.CSRF_COOKIE: own_cookie}, {}),
        "field, no cookie (SameSite kept it back)": ({}, {"csrf_token": security.csrf_form_token(
            svc.settings.secret_key, own_cookie)}),
        "attacker's own valid pair field, victim's cookie": ({security.CSRF_COOKIE: own_cookie}, {
            "csrf_token": security.csrf_form_token(svc.settings.secret_key, other_cookie)}),
        "garbage": ({security.CSRF_COOKIE: own_cookie}, {"csrf_token": "x" * 64, "form_token": "x" * 64}),
    }
    # As a browser sends a form another site's page posts here: a new browser says so in Sec-Fetch-Site, an older
    # one only in Origin (the public sign form, which has no token, is refused on these alone).
    cross_site = [{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
                  {"Origin": "null"}, {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.testserver"}]
    # An organiser's form: the forged request comes from a signed-in organiser's browser, with its session cookie.
    signed_in = {organisers.SESSION_COOKIE: organiser_session(client, token)} if path in ORGANISER_FORMS else {}
    before = snapshot(svc)
    for what, (cookies, extra) in attempts.items():
        for headers in cross_site:
            attacker = TestClient(client.app, base_url="http://testserver",
                                  cookies={**cookies, **signed_in, "ticket": victim.ticket})
            answer = attacker.post(url, data={**data, **extra}, headers=headers, follow_redirects=False)
            assert answer.status_code == 403, f"{path}: {what}, {headers} -> {answer.status_code}"
            assert snapshot(svc) == before, f"{path}: {what}, {headers} changed the database"


def test_the_same_posts_with_a_valid_token_do_work(client, svc, smtp):
    """The control for the test above: the data it sent is accepted once the CSRF token is right."""
    who = sign_up(client, svc, smtp, "control@example.org")
    before = snapshot(svc)
    token = csrf_token(client, "/c/mamay/thanks")
    answer = client.post("/c/mamay/code", data={"code": who.code, "lang": "en", "csrf_token": token},
                         follow_redirects=False)
    assert answer.status_code == 303 and snapshot(svc) != before


# --- organiser routes ---------------------------------------------------------------------------------------


def export_log_rows(svc) -> int:
    with svc.db.read() as s:
        return len(s.scalars(select(AuditLog.id).where(AuditLog.action == "export")).all())


def a_reply(svc) -> int:
    """A reply from an official with a scan, for the routes that take one (its id)."""
    with svc.db.write.begin() as s:
        return replies.record(s, campaign=svc.campaigns["mamay"], target="president", received_on=utcnow().date(),
                              summary="A reply.", scan=b"%PDF-1.4 a scan", public=False, recorded_by="test",
                              now=utcnow()).id


def organiser_session(client: TestClient, token: str) -> str:
    login = csrf_token(client, "/organiser/login")
    assert client.post("/organiser/login", data={"token": token, "csrf_token": login, "next": "/organiser"},
                       follow_redirects=False).status_code == 303
    cookie = client.cookies.get(organisers.SESSION_COOKIE)
    client.cookies.delete(organisers.SESSION_COOKIE)
    return cookie


@pytest.mark.parametrize(("method", "path"), ORGANISER_ROUTES)
def test_every_organiser_route_refuses_no_token_a_wrong_one_and_a_revoked_one(client, svc, method, path):
    url = path.replace("{slug}", "mamay").replace("{reply_id}", str(a_reply(svc))).replace("{organiser_id}", "1")
    live = organiser(svc, "live")
    gone = organiser(svc, "gone")
    # A form is sent with its right CSRF pair, so that only the organiser is in question; it then answers with
    # the next page (303), its result (200) or the form's own errors (400, 422), never 401 or 403.
    form = {"data": {"csrf_token": csrf_token(client, "/organiser/login")}} if method == "POST" else {}
    works = (200,) if method == "GET" else (200, 303, 400, 422)
    assert client.request(method, url, headers=bearer(gone), **form).status_code in works  # it did work before
    # A browser session of the organiser about to be revoked.
    login = csrf_token(client, "/organiser/login")
    assert client.post("/organiser/login", data={"token": gone, "csrf_token": login, "next": "/organiser"},
                       follow_redirects=False).status_code == 303
    session_cookie = client.cookies.get(organisers.SESSION_COOKIE)
    client.cookies.delete(organisers.SESSION_COOKIE)
    with svc.db.write.begin() as s:
        organisers.revoke(s, name_or_id="gone", now=utcnow())
    logged = export_log_rows(svc)
    attempts = {
        "no token": {},
        "wrong token": bearer(security.new_token()),
        "a token with one character changed": bearer(live[:-1] + ("A" if live[-1] != "A" else "B")),
        "revoked token": bearer(gone),
        "not a bearer": {"Authorization": f"Basic {base64.b64encode(live.encode()).decode()}"},
    }
    for what, headers in attempts.items():
        answer = client.request(method, url, headers=headers, follow_redirects=False, **form)
        assert answer.status_code in (401, 303), f"{method} {path}: {what} -> {answer.status_code}"
        if answer.status_code == 303:
            assert answer.headers["location"].startswith("/organiser/login")
    for cookie in (session_cookie, "forged", session_cookie[:-2] + "xx"):
        stranger = TestClient(client.app, base_url="http://testserver", cookies={organisers.SESSION_COOKIE: cookie})
        answer = stranger.request(method, url, follow_redirects=False)
        assert answer.status_code in (401, 303), f"{method} {path}: session cookie {cookie[:10]}…"
    assert export_log_rows(svc) == logged, "a refused export was logged as done"
    assert client.request(method, url, headers=bearer(live), **form).status_code in works


# --- confirmation, manage and erase tokens -----------------------------------------------------------------


def test_a_confirmation_link_and_code_expire(client, svc, smtp):
    who = sign_up(client, svc, smtp, "late@example.org")
    days = svc.settings.confirm_token_days
    with svc.db.read() as s:
        row = s.scalar(select(Signature))
    # By the clock: valid on the last day, refused a second after.
    secret = svc.settings.secret_key
    with svc.db.read() as s:
        last_day = row.created_at + timedelta(days=days)
        assert signing.find_by_token(s, who.confirm, secret=secret, now=last_day - timedelta(seconds=1))
        with pytest.raises(signing.ConfirmProblem, match="expired"):
            signing.find_by_token(s, who.confirm, secret=secret, now=last_day + timedelta(seconds=1))
    # Through the pages, after the expiry time has passed in the database.
    with svc.db.write.begin() as s:
        s.execute(update(Signature).values(confirm_expires_at=utcnow() - timedelta(seconds=1)))
    before = snapshot(svc)
    page = client.get(f"/confirm/{who.confirm}?lang=en")
    assert page.status_code == 404 and "expired" in page.text
    token = csrf_token(client, "/c/mamay/thanks")
    assert client.post(f"/confirm/{who.confirm}", data={"csrf_token": token}).status_code == 404
    assert snapshot(svc) == before
    # A typed code that has expired is a wrong code (counted as one, like any other).
    typed = client.post("/c/mamay/code", data={"code": who.code, "csrf_token": token, "lang": "en"})
    assert typed.status_code == 422 and "does not open a signature" in typed.text
    assert client.get("/api/v1/campaigns/mamay/stats").json()["confirmed"] == 0


def test_each_token_opens_only_its_own_door(client, svc, smtp):
    who = ask_erase_link(client, svc, smtp, confirm(client, svc, smtp, sign_up(client, svc, smtp, "one@example.org")))
    fresh = sign_up(client, svc, smtp, "two@example.org")  # a confirm token that is still live
    org = organiser(svc)
    login = csrf_token(client, "/organiser/login")
    client.post("/organiser/login", data={"token": org, "csrf_token": login}, follow_redirects=False)
    session_cookie = client.cookies.get(organisers.SESSION_COOKIE)
    client.cookies.delete(organisers.SESSION_COOKIE)
    embed_token = re.search(r'name="form_token" value="([^"]+)"', client.get("/c/mamay/embed").text)
    held = {"confirm": fresh.confirm, "manage": who.manage, "erase": who.erase, "ticket": who.ticket,
            "organiser": org, "organiser session": session_cookie, "csrf cookie": client.cookies.get("csrf"),
            "embed form": embed_token.group(1) if embed_token else security.new_token()}
    doors = {"confirm": "/confirm/{}", "manage": "/s/{}", "erase": "/erase/{}"}
    before = snapshot(svc)
    form = {"csrf_token": csrf_token(client, "/erase"), "lang": "en"}
    for door, pattern in doors.items():
        for kind, value in held.items():
            if kind == door:
                continue
            url = pattern.format(quote(value, safe=""))
            assert client.get(url).status_code == 404, f"{kind} token opened GET {door}"
            if door != "manage":
                assert client.post(url, data=form).status_code == 404, f"{kind} token opened POST {door}"
    for kind, value in held.items():
        if kind != "organiser":
            assert client.get("/api/v1/campaigns/mamay/counts", headers=bearer(value)).status_code == 401, kind
    assert snapshot(svc) == before
    # And each does open its own door.
    assert client.get(f"/confirm/{fresh.confirm}").status_code == 200
    assert client.get(f"/s/{who.manage}").status_code == 200
    assert client.get(f"/erase/{who.erase}").status_code == 200


def test_tokens_are_long_random_and_stored_only_as_hashes(client, svc, smtp, settings):
    who = confirm(client, svc, smtp, sign_up(client, svc, smtp, "entropy@example.org"))
    for token in (who.confirm.partition(".")[2], who.manage, organiser(svc)):  # a link: <encrypted row>.<secret>
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 32, "a token must carry at least 256 random bits"
    many = {security.new_token() for _ in range(2000)}
    assert len(many) == 2000
    # Every bit position is set in roughly half of the tokens: no fixed or biased part.
    bits = [0] * 256
    for token in many:
        value = int.from_bytes(base64.urlsafe_b64decode(token + "="), "big")
        for i in range(256):
            bits[i] += value >> i & 1
    assert all(850 < b < 1150 for b in bits)
    codes = {security.new_code() for _ in range(2000)}
    assert len(codes) > 1990 and len(security.CODE_ALPHABET) ** security.CODE_LENGTH > 2**37
    # The database file holds none of them in clear, only hashes.
    raw_db = Path(settings.sqlalchemy_url.removeprefix("sqlite:///")).read_bytes()
    for wal in Path(settings.sqlalchemy_url.removeprefix("sqlite:///")).parent.glob("*.db-wal"):
        raw_db += wal.read_bytes()
    for token in (who.confirm, who.manage, who.code):
        assert token.encode() not in raw_db
    # A forged or altered erase link does nothing.
    ask_erase_link(client, svc, smtp, who)
    altered = who.erase[:-3] + ("aaa" if not who.erase.endswith("aaa") else "bbb")
    assert client.get(f"/erase/{altered}").status_code == 404
    # Sealed: neither the address nor its index hashes (which would find its rows in a copied database) in clear.
    raw = base64.urlsafe_b64decode(who.erase + "=" * (-len(who.erase) % 4))
    with svc.db.read() as s:
        for key in s.scalars(select(Signature.email_key)):
            assert key not in raw and key.hex().encode() not in raw
    assert who.email.split("@")[0].encode() not in raw


def test_wrong_codes_up_to_the_cap_end_every_code(client, svc, smtp):
    who = sign_up(client, svc, smtp, "guess@example.org")
    token = csrf_token(client, "/c/mamay/thanks")
    for _ in range(signing.MAX_CODE_ATTEMPTS):
        client.post("/c/mamay/code", data={"code": "AAAAAAAA", "csrf_token": token, "lang": "en"})
    late = client.post("/c/mamay/code", data={"code": who.code, "csrf_token": token, "lang": "en"})
    assert late.status_code == 422
    assert client.get("/api/v1/campaigns/mamay/stats").json()["confirmed"] == 0


# --- nothing public names a signer -------------------------------------------------------------------------

MARKER = {"name": "Qwertzuiop Markerova", "email": "Marker.Secret+tag@Example.org", "city": "Markergrad",
          "message": "Markermessage paragraph", "country": "KZ"}


def leaks(answer, marker: dict[str, str]) -> list[str]:
    """Every place a marker value appears: body, headers, in any case or URL-encoding."""
    content = answer.content.decode("utf-8", "replace")
    if answer.headers.get("content-type", "").startswith("application/pdf"):
        content = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(answer.content)).pages)
    text = (content + "\n"
            + "\n".join(f"{k}: {v}" for k, v in answer.headers.items())).casefold()
    found = []
    for field, value in marker.items():
        if field == "country":
            continue
        forms = {value, value.split("+")[0] if field == "email" else value, quote(value), quote(value, safe="")}
        if field == "email":
            forms |= {"marker.secret@example.org", "marker.secret"}
        found += [f"{field}={form!r}" for form in forms if form.casefold() in text]
    return found


def crawl(client: TestClient, tokens: Tokens) -> dict[str, object]:
    answers = {}
    for path in PUBLIC_GETS:
        url = fill(path, tokens=tokens)
        if path == "/s/{token}/letter.pdf":
            url += "?target=embassy-de"
        for lang in ("en", "ru", "kk"):
            sep = "&" if "?" in url else "?"
            answers[f"{url}{sep}lang={lang}"] = client.get(f"{url}{sep}lang={lang}")
    for extra in ("/static/style.css", "/openapi.json", "/c/mamay?lang=xx", "/c/nope", "/confirm/unknown"):
        answers[extra] = client.get(extra)
    return answers


def test_no_public_page_or_api_answer_names_a_signer_who_did_not_opt_in(client, svc, smtp):
    marked = confirm(client, svc, smtp, sign_up(client, svc, smtp, MARKER["email"], **{
        k: v for k, v in MARKER.items() if k != "email"}))
    for i in range(6):  # enough others that every small cell is folded as in real life
        confirm(client, svc, smtp, sign_up(client, svc, smtp, f"other{i}@example.org", country="KZ"))
    ask_erase_link(client, svc, smtp, marked)
    visitor = confirm(client, svc, smtp, sign_up(client, svc, smtp, "visitor@example.org"))
    ask_erase_link(client, svc, smtp, visitor)

    # A stranger (no cookies) and another signer (with their own links) see nothing of the marked signer.
    stranger = TestClient(client.app, base_url="http://testserver")
    for who, browser in (("stranger", stranger), ("another signer", client)):
        answers = crawl(browser, visitor)
        assert answers, "no public route was crawled"
        assert all(a.status_code < 500 for a in answers.values()), {u: a.status_code for u, a in answers.items()}
        found = {url: leaks(a, MARKER) for url, a in answers.items() if leaks(a, MARKER)}
        assert not found, f"{who} sees the marked signer: {found}"

    # Even on the marked signer's own private pages, their email address is never written out.
    own = crawl(stranger, marked)
    found = {url: [x for x in leaks(a, MARKER) if x.startswith("email")] for url, a in own.items()}
    assert not any(found.values()), found

    # The detector works: an organiser's export, which must name them, is caught by it.
    export = client.get("/api/v1/campaigns/mamay/signatures?format=csv", headers=bearer(organiser(svc)))
    assert {f.split("=")[0] for f in leaks(export, MARKER)} >= {"name", "email", "city", "message"}
