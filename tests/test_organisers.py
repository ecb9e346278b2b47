"""Organiser access: tokens (none, wrong, revoked, right, the environment's) on every organiser route, the
browser sign-in cookie, sign-out, the sign-in rate limit, the CLI, the development token, and the dashboard."""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import cli, organisers, security
from app.db import Database, utcnow
from app.main import create_app
from app.models import AuditLog, Organiser
from tests.seed import add_signatures, bearer, organiser, signature_values
from tests.support import csrf_token, make_settings, settings_env

API_ROUTES = [
    "/api/v1/campaigns/mamay/signatures?format=csv",
    "/api/v1/campaigns/mamay/signatures?format=json&status=all",
    "/api/v1/campaigns/mamay/counts?by=country&format=csv",
    "/api/v1/campaigns/mamay/counts?by=day&format=json",
]
ROUTES = ["/organiser", *API_ROUTES]


def export_log_rows(svc) -> int:
    with svc.db.read() as s:
        return s.scalar(select(func.count()).where(AuditLog.action == "export"))


def assert_refused(answer, route: str) -> None:
    if route.startswith("/api/"):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json() == {"detail": "An organiser token is required."}
    else:
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/organiser/login?next=")


@pytest.mark.parametrize("route", ROUTES)
def test_no_token_is_refused_on_every_organiser_route(client, svc, route):
    assert_refused(client.get(route, follow_redirects=False), route)
    assert export_log_rows(svc) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_token_is_refused(client, svc, route):
    organiser(svc)
    for token in ("wrong", security.new_token(), "", "x" * 500):
        assert_refused(client.get(route, headers=bearer(token), follow_redirects=False), route)
    client.cookies.set(organisers.SESSION_COOKIE, "forged.cookie.value")
    assert_refused(client.get(route, follow_redirects=False), route)
    assert export_log_rows(svc) == 0


@pytest.mark.parametrize("route", ROUTES)
def test_revoked_token_is_refused(client, svc, route):
    token = organiser(svc, "bob")
    assert client.get(route, headers=bearer(token)).status_code == 200
    with svc.db.write.begin() as s:
        organisers.revoke(s, name_or_id="bob", now=utcnow())
    assert_refused(client.get(route, headers=bearer(token), follow_redirects=False), route)


@pytest.mark.parametrize("route", ROUTES)
def test_right_token_opens_every_organiser_route(client, svc, route):
    token = organiser(svc)
    answer = client.get(route, headers=bearer(token))
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"


def test_token_is_stored_only_as_its_hash(svc):
    token = organiser(svc, "carol")
    with svc.db.read() as s:
        row = s.scalar(select(Organiser).where(Organiser.name == "carol"))
    assert row.token_hash == security.token_hash(token)
    assert token.encode() not in row.token_hash and token not in row.name


def test_names_are_unique_among_active_organisers_and_env_is_reserved(svc):
    organiser(svc, "dana")
    with svc.db.write.begin() as s, pytest.raises(organisers.OrganiserError, match="already exists"):
        organisers.add(s, name="dana", now=utcnow())
    with svc.db.write.begin() as s, pytest.raises(organisers.OrganiserError, match="CAMPAIGN_ORGANISER_TOKEN"):
        organisers.add(s, name="env", now=utcnow())
    with svc.db.write.begin() as s:
        organisers.revoke(s, name_or_id="dana", now=utcnow())
    organiser(svc, "dana")  # the name is free again once revoked


def test_environment_token_works_and_is_logged_as_env(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, organiser_token="env-token-for-tests-0123456789")
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db)) as client:
            answer = client.get("/api/v1/campaigns/mamay/counts?format=json", headers=bearer(settings.organiser_token))
            assert answer.status_code == 200
            assert client.get("/organiser", headers=bearer(settings.organiser_token)).status_code == 200
            assert client.get("/organiser", headers=bearer("env-token-for-tests-012345678"),
                              follow_redirects=False).status_code == 303
        with db.read() as s:
            assert s.scalars(select(AuditLog.organiser).where(AuditLog.action == "export")).all() == ["env"]
    finally:
        db.dispose()


def login(client: TestClient, token: str, *, next_: str = "/organiser"):
    form = csrf_token(client, "/organiser/login")
    return client.post("/organiser/login", data={"csrf_token": form, "token": token, "next": next_},
                       follow_redirects=False)


def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(client, svc):
    token = organiser(svc, "erin")
    assert client.get("/organiser", follow_redirects=False).status_code == 303
    wrong = login(client, "not-a-token")
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert organisers.SESSION_COOKIE not in client.cookies

    answer = login(client, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/organiser"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{organisers.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and f"Max-Age={organisers.SESSION_SECONDS}" in cookie
    assert token not in cookie  # the cookie names the organiser; it does not carry the token

    page = client.get("/organiser")
    assert page.status_code == 200 and "Signed in as erin" in page.text
    # The browser session opens the exports too (the dashboard links to them).
    assert client.get("/api/v1/campaigns/mamay/counts?format=csv").status_code == 200

    bye = client.post("/organiser/logout", data={"csrf_token": csrf_token(client, "/organiser")},
                      follow_redirects=False)
    assert bye.status_code == 303 and bye.headers["location"] == "/organiser/login"
    assert organisers.SESSION_COOKIE not in client.cookies
    assert client.get("/organiser", follow_redirects=False).status_code == 303


def test_login_form_needs_its_csrf_token(client, svc):
    token = organiser(svc)
    client.get("/organiser/login")
    answer = client.post("/organiser/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 403 and organisers.SESSION_COOKIE not in client.cookies


def test_revoking_ends_the_browser_session_at_once(client, svc):
    token = organiser(svc, "frank")
    login(client, token)
    assert client.get("/organiser").status_code == 200
    with svc.db.write.begin() as s:
        organisers.revoke(s, name_or_id="frank", now=utcnow())
    assert client.get("/organiser", follow_redirects=False).status_code == 303
    assert client.get("/api/v1/campaigns/mamay/counts").status_code == 401


def test_login_returns_only_to_our_own_pages(client, svc):
    token = organiser(svc)
    assert login(client, token, next_="https://evil.example/").headers["location"] == "/organiser"
    client.cookies.clear()
    assert login(client, token, next_="//evil.example/organiser").headers["location"] == "/organiser"
    client.cookies.clear()
    target = "/api/v1/campaigns/mamay/counts?by=day&format=csv"
    assert login(client, token, next_=target).headers["location"] == target


def test_login_is_rate_limited(client, svc):
    token = organiser(svc)
    for _ in range(5):  # the default CAMPAIGN_LOGIN_RATE_LIMIT is 5/minute
        assert login(client, "guess").status_code == 401
    blocked = login(client, token)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert organisers.SESSION_COOKIE not in client.cookies


def test_cli_adds_lists_and_revokes_organisers(settings, client):
    runner = CliRunner()
    env = settings_env(settings)
    added = runner.invoke(cli.app, ["organiser", "add", "Gulnar"], env=env)
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert client.get("/api/v1/campaigns/mamay/counts", headers=bearer(token)).status_code == 200

    listed = runner.invoke(cli.app, ["organiser", "list"], env=env)
    assert re.search(r"^\d+\tGulnar\tcreated .*\tactive\towner of \*$", listed.stdout, re.M)
    assert token not in listed.stdout

    assert runner.invoke(cli.app, ["organiser", "add", "Gulnar"], env=env).exit_code == 1
    revoked = runner.invoke(cli.app, ["organiser", "revoke", "Gulnar"], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/api/v1/campaigns/mamay/counts", headers=bearer(token)).status_code == 401
    assert "\trevoked " in runner.invoke(cli.app, ["organiser", "list"], env=env).stdout
    assert runner.invoke(cli.app, ["organiser", "revoke", "Gulnar"], env=env).exit_code == 1


def test_development_start_writes_an_owner_only_token_file_once(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, env="development")
    db = Database(settings.sqlalchemy_url)
    try:
        path = organisers.ensure_dev_token(db, settings=settings, now=utcnow())
        assert path == settings.var_dir / "organiser.token"
        assert os.stat(path).st_mode & 0o777 == 0o600
        token = path.read_text().strip()
        with db.read() as s:
            assert organisers.authenticate(s, token, settings=settings) == organisers.Who(1, "local")
        # A second start keeps the same organiser and file.
        assert organisers.ensure_dev_token(db, settings=settings, now=utcnow()) == path
        assert path.read_text().strip() == token
        with db.read() as s:
            assert len(organisers.list_all(s)) == 1
        # Nothing is written outside development, or when CAMPAIGN_ORGANISER_TOKEN is set.
        for other in (settings.model_copy(update={"env": "test"}),
                      settings.model_copy(update={"organiser_token": "set-by-operator"})):
            assert organisers.ensure_dev_token(db, settings=other, now=utcnow()) is None
    finally:
        db.dispose()


def test_dashboard_shows_counts_chart_countries_outbox_exports_and_snippet(client, svc):
    token = organiser(svc, "hana")
    now = utcnow()
    rows = [
        signature_values(svc.keyring, name=f"N{i}", email=f"d{i}@example.org", country=c,
                         created_at=now - timedelta(days=d))
        for i, (c, d) in enumerate([("DE", 0), ("DE", 1), ("KZ", 1), ("FR", 3), ("KZ", 5)])
    ]
    rows.append(signature_values(svc.keyring, name="P", email="p@example.org", status="pending", created_at=now))
    with svc.db.write.begin() as s:
        add_signatures(s, rows)
    client.get("/api/v1/campaigns/mamay/counts?by=day&format=csv", headers=bearer(token))

    page = client.get("/organiser", headers=bearer(token))
    assert page.status_code == 200
    text = page.text
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd class=\"num\">([^<]+)</dd>", text))
    assert figures["Confirmed"] == "5" and figures["Pending confirmation"] == "1" and figures["Goal"] == "5,000"
    assert figures["Progress"] == "&lt;1%" and figures["Queued"] == "0"
    assert figures["Letters sent in the last hour"] == "0"
    # Exact counts by country with names, small cells included (this page is behind sign-in).
    assert re.search(r"Germany <span class=\"muted\">DE</span></td><td class=\"n\">2<", text)
    assert re.search(r"Kazakhstan <span class=\"muted\">KZ</span></td><td class=\"n\">2<", text)
    assert re.search(r"France <span class=\"muted\">FR</span></td><td class=\"n\">1<", text)
    # The per-day chart is inline SVG drawn on the server: one bar per day, each titled with its count.
    svg = re.search(r"<svg class=\"chart\".*?</svg>", text, re.S).group(0)
    assert f"<title>{now.date().isoformat()}: 1</title>" in svg
    assert f"<title>{(now - timedelta(days=1)).date().isoformat()}: 2</title>" in svg
    assert svg.count("<rect ") == 14  # two weeks at least
    # The export log and the embed snippet.
    assert "hana" in text and "counts by day csv" in text
    assert "&lt;iframe src=&#34;http://testserver/c/mamay/embed?lang=en&#34;" in text
    # Nothing that CSP would block or that loads from elsewhere.
    assert "<script" not in text and " style=" not in text
    assert not re.search(r"(src|href)=\"https?://", text)
