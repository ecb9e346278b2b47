"""The embeddable widget: framed only by the origins CAMPAIGN_FRAME_ANCESTORS lists (refused by default), shows
the public counter, and its compact form signs without relying on cookies a third-party frame cannot keep."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import Database
from app.main import create_app
from app.models import OutboxMessage, Signature
from tests import browser
from tests.servers import ARTIFACTS, AppProcess, server_env, upgrade
from tests.support import PARTNER, SIGNER, answer_notices, free_port, make_settings

# What a browser sends with the embed's post: the origin of the frame's document, this site (see embed.html).
FROM_EMBED = {"Origin": "http://testserver"}


def frame_ancestors(answer) -> str:
    return re.search(r"frame-ancestors ([^;]+)", answer.headers["content-security-policy"]).group(1).strip()


def test_embed_is_not_frameable_by_default(client):
    answer = client.get("/c/mamay/embed")
    assert answer.status_code == 200
    assert frame_ancestors(answer) == "'none'"
    assert "x-frame-options" not in answer.headers


def test_listed_origins_may_frame_the_embed_and_nothing_else(partner_client):
    answer = partner_client.get("/c/mamay/embed?lang=ru")
    assert frame_ancestors(answer) == f"{PARTNER} https://*.allies.example:8443"
    assert "https://evil.example" not in answer.headers["content-security-policy"]
    assert "x-frame-options" not in answer.headers
    # The rest of the CSP is the site's own: nothing from another origin, no inline code.
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    # Every other page stays unframeable.
    petition = partner_client.get("/c/mamay")
    assert frame_ancestors(petition) == "'none'" and petition.headers["x-frame-options"] == "DENY"


def test_malformed_frame_ancestors_entries_are_ignored(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url,
                             frame_ancestors=["https://ok.example", "https://x.example; script-src *", "*", "data:"])
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db)) as client:
            assert frame_ancestors(client.get("/c/mamay/embed")) == "https://ok.example"
    finally:
        db.dispose()


def test_embed_shows_the_public_counter_and_a_compact_form_posting_to_the_top(client):
    answer = client.get("/c/mamay/embed?lang=kk")
    html = answer.text
    assert '<strong class="num">0</strong>' in html
    assert re.search(r'<form method="post" action="/c/mamay/embed/sign" target="_top">', html)
    assert 'name="form_token"' in html and 'name="consent"' in html
    assert "<script" not in html and " style=" not in html and not re.search(r"(src|href)=\"https?://", html)
    assert "set-cookie" not in answer.headers  # a third-party frame could not keep one anyway
    assert answer.headers["cache-control"] == "no-store"
    assert client.get("/c/nope/embed").status_code == 404


def embed_form(client: TestClient) -> dict[str, str]:
    html = client.get("/c/mamay/embed").text
    token = re.search(r'name="form_token" value="([^"]+)"', html).group(1)
    return {**SIGNER, "form_token": token}


def test_embed_form_signs_without_any_cookie(client, svc):
    data = embed_form(client)
    client.cookies.clear()  # what the partner page's visitor has: no cookie of ours
    answer = client.post("/c/mamay/embed/sign", data=data, headers=FROM_EMBED, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/c/mamay/thanks?lang=en"
    answer_notices(svc)
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Signature)) == 1
        assert s.scalar(select(OutboxMessage.kind)) == "confirm"


def test_embed_form_with_a_forged_or_missing_token_stores_nothing(client, svc):
    data = embed_form(client)
    for token in ("forged", "", data["form_token"][:-3] + "xyz"):
        answer = client.post("/c/mamay/embed/sign", data={**data, "form_token": token}, headers=FROM_EMBED,
                             follow_redirects=False)
        assert answer.status_code == 403
        assert "This form has expired" in answer.text and 'value="Aigerim Test"' in answer.text  # kept, to resend
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Signature)) == 0


def test_embed_form_errors_open_the_full_petition_filled_in(client, svc):
    data = embed_form(client)
    answer = client.post("/c/mamay/embed/sign", data={**data, "consent": "", "name": "Kept Name"}, headers=FROM_EMBED)
    assert answer.status_code == 422
    assert "Please tick the box" in answer.text and 'value="Kept Name"' in answer.text
    assert 'action="/c/mamay/sign"' in answer.text  # the site's own form, guarded by its origin
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Signature)) == 0


# --- a real browser -----------------------------------------------------------------------------------------


class _Partner(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve_partner(page: str) -> tuple[_Partner, str]:
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's hook name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = _Partner(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def partner_with_embed(tmp_path: Path, *, also_refused: bool = False):
    """The app on its own port, a partner page on another origin that frames its embed and is listed in
    CAMPAIGN_FRAME_ANCESTORS, and with `also_refused` the same page on an origin that is not listed.
    Yields (app, partner URL, refused URL or None)."""
    app_port = free_port()
    iframe = (f'<!doctype html><h1>Partner</h1><iframe src="http://127.0.0.1:{app_port}/c/mamay/embed" '
              'width="360" height="700"></iframe>')
    partners = [serve_partner(iframe) for _ in range(2 if also_refused else 1)]
    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'campaign.db'}",
                     frame_ancestors=f'["{partners[0][1]}"]')
    upgrade(env)
    refused_url = f"http://localhost:{partners[1][0].server_address[1]}" if also_refused else None  # not listed
    try:
        with AppProcess(env, port=app_port) as app:
            yield app, partners[0][1], refused_url
    finally:
        for server, _ in partners:
            server.shutdown()


@pytest.mark.browser
def test_chromium_shows_the_embed_to_an_allowed_partner_only(tmp_path):
    with partner_with_embed(tmp_path, also_refused=True) as (_, allowed_url, refused_url), \
            browser.chromium() as context:
        page = context.new_page()
        page.set_viewport_size({"width": 420, "height": 700})
        page.goto(allowed_url)
        frame = page.frame_locator("iframe")
        frame.locator("form button[type=submit]").wait_for(timeout=10_000)
        assert frame.locator(".count .num").inner_text() == "0"
        shots = Path(ARTIFACTS)
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "embed-allowed-partner.png"))

        page.goto(refused_url)
        page.wait_for_timeout(1000)
        child = page.frames[1]
        assert child.url.startswith("chrome-error://")  # Chromium refused to render it
