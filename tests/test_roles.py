"""Organisers per campaign: each campaign's dashboard, exports and organiser routes are its organisers' alone, by
role (viewer: counts; editor: + exports, deliveries, replies; owner: + organisers), read off the app's own routes so
a new route without a declared role fails here; and an audit log of sign-ins, exports and organiser changes that
owners read."""

from __future__ import annotations

import re
import shutil

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import organisers, replies
from app.db import utcnow
from app.main import create_app
from app.models import AuditLog
from app.settings import ROOT
from tests.support import csrf_token, make_settings
from tests.test_access import ORGANISER_ROUTES

MAMAY = ROOT / "templates" / "letters" / "mamay"
# The least role each organiser route of a campaign needs. A route missing here fails the first test.
NEEDS = {
    ("GET", "/api/v1/campaigns/{slug}/counts"): "viewer",
    ("GET", "/api/v1/campaigns/{slug}/signatures"): "editor",
    ("GET", "/organiser/preview/{slug}"): "viewer",
    ("POST", "/organiser/campaigns/{slug}/organisers"): "owner",
    ("POST", "/organiser/campaigns/{slug}/organisers/{organiser_id}/role"): "owner",
    ("GET", "/api/v1/campaigns/{slug}/ledger"): "viewer",
    ("POST", "/organiser/c/{slug}/packs"): "editor",
    ("POST", "/organiser/c/{slug}/replies"): "editor",
    # A reply is its campaign's: {reply_id} is one of mamay's.
    ("POST", "/organiser/replies/{reply_id}/public"): "editor",
    ("GET", "/organiser/replies/{reply_id}/scan"): "editor",
}
BELOW = {"editor": "viewer", "owner": "editor"}


@pytest.fixture
def app(tmp_path, sqlite_url):
    letters = tmp_path / "letters"
    shutil.copytree(MAMAY, letters / "mamay")
    shutil.copytree(MAMAY, letters / "second")
    toml = letters / "second" / "campaign.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('slug = "mamay"', 'slug = "second"'), encoding="utf-8")
    # Many sign-ins from one test client: the sign-in limit is tested elsewhere (test_organisers.py).
    with TestClient(create_app(make_settings(tmp_path, sqlite_url, letters_dir=letters, login_rate_limit="off")),
                    base_url="http://testserver") as client:
        yield client


def member(client, name: str, roles: dict[str, str]) -> tuple[TestClient, int]:
    """A signed-in browser of a new organiser with these roles."""
    svc = client.app.state.services
    with svc.db.write.begin() as session:
        row, token = organisers.add(session, name=name, now=utcnow(), roles=roles)
    browser = TestClient(client.app, base_url="http://testserver")
    login = csrf_token(browser, "/organiser/login")
    assert browser.post("/organiser/login", data={"token": token, "csrf_token": login},
                        follow_redirects=False).status_code == 303
    return browser, row.id


def act(browser: TestClient, method: str, path: str, slug: str, target_id: int, reply_id: int = 0):
    url = path.replace("{slug}", slug).replace("{organiser_id}", str(target_id)).replace("{reply_id}", str(reply_id))
    if method == "GET":
        return browser.get(url, follow_redirects=False)
    token = csrf_token(browser, "/organiser")
    return browser.post(url, data={"csrf_token": token, "name": "someone new", "role": "viewer", "lang": "en"},
                        follow_redirects=False)


def test_every_organiser_route_of_a_campaign_declares_its_role_and_enforces_it(app):
    campaign_routes = {(m, p) for m, p in ORGANISER_ROUTES if "{slug}" in p or "{reply_id}" in p}
    assert campaign_routes == set(NEEDS), "a campaign's organiser route without a declared role"
    _, target = member(app, "target", {"mamay": "viewer"})
    svc = app.app.state.services
    with svc.db.write.begin() as session:
        reply = replies.record(session, campaign=svc.campaigns["mamay"], target="president",
                               received_on=utcnow().date(), summary="A reply.", scan=b"%PDF-1.4 a scan",
                               public=False, recorded_by="test", now=utcnow()).id
    for (method, path), need in NEEDS.items():
        stranger, _ = member(app, f"stranger {path} {method}", {"second": "owner"})
        answer = act(stranger, method, path, "mamay", target, reply)
        assert answer.status_code == 404, f"{method} {path}: an organiser of another campaign got {answer.status_code}"
        if need in BELOW:
            weaker, _ = member(app, f"weaker {path} {method}", {"mamay": BELOW[need]})
            answer = act(weaker, method, path, "mamay", target, reply)
            assert answer.status_code == 403, f"{method} {path}: a {BELOW[need]} got {answer.status_code}"
        enough, _ = member(app, f"enough {path} {method}", {"mamay": need})
        answer = act(enough, method, path, "mamay", target, reply)
        # Through: the act's own answer (its result, the next page, or its form's errors), never 403 or 404.
        assert answer.status_code in (200, 303, 400, 422), f"{method} {path}: a {need} got {answer.status_code}"


def test_the_dashboard_shows_an_organiser_their_campaigns_and_what_their_role_allows(app):
    viewer, _ = member(app, "vera", {"second": "viewer"})
    page = viewer.get("/organiser?lang=en").text
    assert 'id="c-second"' in page and 'id="c-mamay"' not in page
    assert "/counts?" in page and "/signatures?" not in page  # counts, not personal data
    assert "Organisers of this campaign" not in page and 'id="audit"' not in page and 'id="outbox"' not in page
    editor, _ = member(app, "ed", {"second": "editor"})
    assert "/api/v1/campaigns/second/signatures?" in editor.get("/organiser?lang=en").text


def test_an_owner_adds_and_changes_organisers_and_reads_the_audit_log(app):
    owner, _ = member(app, "olga", {"mamay": "owner"})
    page = owner.get("/organiser?lang=en").text
    assert "Organisers of this campaign" in page and 'id="c-second"' not in page
    added = owner.post("/organiser/campaigns/mamay/organisers",
                       data={"csrf_token": csrf_token(owner, "/organiser"), "name": "nina", "role": "editor"})
    assert added.status_code == 200 and "shown only this once" in added.text
    token = re.search(r"<code>([A-Za-z0-9_-]{20,})</code>", added.text).group(1)
    svc = app.app.state.services
    with svc.db.read() as session:
        who = organisers.authenticate(session, token, settings=svc.settings)
    assert who is not None and who.roles == {"mamay": "editor"}
    # Bad input: a clear error, and nothing changes.
    bad = owner.post("/organiser/campaigns/mamay/organisers",
                     data={"csrf_token": csrf_token(owner, "/organiser"), "name": "x", "role": "admin"})
    assert bad.status_code == 400
    with svc.db.read() as session:
        assert session.scalar(select(AuditLog).where(AuditLog.what.like("x:%"))) is None
    changed = owner.post(f"/organiser/campaigns/mamay/organisers/{who.id}/role",
                         data={"csrf_token": csrf_token(owner, "/organiser"), "role": "none"}, follow_redirects=False)
    assert changed.status_code == 303
    with svc.db.read() as session:
        assert organisers.authenticate(session, token, settings=svc.settings).roles == {}
    owner.get("/api/v1/campaigns/mamay/counts?format=csv")
    audit_page = owner.get("/organiser?lang=en").text.split('id="audit"', 1)[1]
    for entry in ("sign_in", "organiser_added: nina: editor", "role_changed: nina: none", "export: counts"):
        assert entry in audit_page, entry
    # An owner of one campaign does not read another's: an export of "second" by its own owner is not shown.
    other, _ = member(app, "sam", {"second": "owner"})
    other.get("/api/v1/campaigns/second/counts?format=csv")
    assert "second" not in owner.get("/organiser?lang=en").text.split('id="audit"', 1)[1].split("</table>")[0]
