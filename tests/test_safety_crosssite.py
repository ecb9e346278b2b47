"""Signer safety, round 2: another site cannot make its visitors sign. The JSON API takes only JSON bodies (which
a browser sends cross-site only after a CORS preflight we never grant), the embed's form is single-use and
accepted only from this site or a listed partner, and the petition's form only from this site."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import security, web_embed
from app.db import Database
from app.main import create_app
from app.models import Signature
from tests import browser
from tests.seed import bearer, organiser
from tests.support import PARTNER, SIGNER, count, local_redis, make_settings

SIGN = "/api/v1/campaigns/mamay/signatures"
JSON_BODY = '{"name": "Cross Site", "email": "cross@example.org", "country": "DE", "consent": true}'


def stored(svc) -> int:
    return count(svc)


# --- 3a: JSON only --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          None, "application/jsonx", "text/json"])
def test_sign_api_refuses_bodies_a_page_may_send_cross_site(client, svc, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.post(SIGN, content=JSON_BODY.encode(), headers=headers)
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert "application/json" in answer.json()["detail"]
    assert stored(svc) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_sign_api_takes_json_with_or_without_a_charset(client, svc, content_type):
    answer = client.post(SIGN, content=JSON_BODY.encode(), headers={"Content-Type": content_type})
    assert answer.status_code == 202, answer.text
    assert stored(svc) == 1


def test_every_api_route_that_changes_something_refuses_non_json(client, svc):
    token = organiser(svc)
    paths = client.get("/openapi.json").json()["paths"]  # every API route, the organiser ones included
    changing = [(method.upper(), path) for path, operations in paths.items() for method in operations
                if method in ("post", "put", "patch", "delete")]
    assert ("POST", "/api/v1/campaigns/{slug}/signatures") in changing
    for method, path in changing:
        answer = client.request(method, path.replace("{slug}", "mamay"), content=JSON_BODY.encode(),
                                headers={**bearer(token), "Content-Type": "text/plain"})
        assert answer.status_code == 415, (method, path, answer.status_code)
    assert stored(svc) == 0


def test_the_schema_declares_the_415(client):
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/campaigns/{slug}/signatures"]["post"]
    assert "415" in operation["responses"]
    assert list(operation["requestBody"]["content"]) == ["application/json"]


# --- 3b: the embed's form ----------------------------------------------------------------------------------


def embed_token(client: TestClient) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', client.get("/c/mamay/embed").text).group(1)


def embed_post(client: TestClient, token: str, email: str, **headers: str):
    client.cookies.clear()
    return client.post("/c/mamay/embed/sign", data={**SIGNER, "email": email, "form_token": token},
                       headers=headers, follow_redirects=False)


def refused(answer) -> bool:
    """As the expired-form path answers: the full petition page, 403, the form kept to send again."""
    return (answer.status_code == 403 and "This form has expired" in answer.text
            and 'action="/c/mamay/sign"' in answer.text)


def test_an_embed_token_signs_once_and_its_replay_is_refused(client, svc):
    token = embed_token(client)
    first = embed_post(client, token, "first@example.org", Origin="http://testserver")
    assert first.status_code == 303
    again = embed_post(client, token, "second@example.org", Origin="http://testserver")
    assert refused(again)
    assert stored(svc) == 1


def test_a_post_from_another_origin_is_refused_and_stores_nothing(partner_client):
    svc = partner_client.app.state.services
    token = embed_token(partner_client)
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {},
                    {"Origin": "null", "Referer": "https://evil.example/page"},
                    {"Referer": "https://partner.example.evil.example/"},
                    {"Origin": "http://partner.example"},  # another scheme is another origin
                    {"Origin": "https://allies.example:8443"},  # *. covers subdomains only, as in CSP
                    {"Origin": "https://x.allies.example"}):  # another port
        assert refused(embed_post(partner_client, token, "victim@example.org", **headers)), headers
    assert stored(svc) == 0
    # A refused post did not spend the token: the visitor's own embed still signs.
    assert embed_post(partner_client, token, "victim@example.org", Origin="http://testserver").status_code == 303
    assert stored(svc) == 1


@pytest.mark.parametrize("headers", [{"Origin": "http://testserver"}, {"Origin": PARTNER},
                                     {"Origin": "https://www.allies.example:8443"},
                                     {"Origin": "null", "Referer": "http://testserver/c/mamay/embed?lang=en"},
                                     {"Referer": "https://partner.example/petition"}])
def test_a_post_from_this_site_or_a_listed_partner_signs(partner_client, headers):
    answer = embed_post(partner_client, embed_token(partner_client), "ok@example.org", **headers)
    assert answer.status_code == 303 and answer.headers["location"] == "/c/mamay/thanks?lang=en"
    assert stored(partner_client.app.state.services) == 1


def test_with_redis_a_token_used_on_one_worker_is_refused_on_another(tmp_path, sqlite_url):
    url, r = local_redis(14)
    settings = make_settings(tmp_path, sqlite_url, redis_url=url)
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db), base_url="http://testserver") as one, \
                TestClient(create_app(settings, db=db), base_url="http://testserver") as two:
            token = embed_token(one)
            assert embed_post(two, token, "a@example.org", Origin="http://testserver").status_code == 303
            assert refused(embed_post(one, token, "b@example.org", Origin="http://testserver"))
            assert refused(embed_post(two, token, "c@example.org", Origin="http://testserver"))
            assert stored(one.app.state.services) == 1
            # Redis holds the spent nonce only: nothing of the signer, the form or the address it came from.
            nonce = security.open_handle(settings.secret_key, web_embed.FORM_PURPOSE, token, max_age=60)[:16].hex()
            assert [k.decode() for k in r.keys("*")] == [f"campaign:embed-form-used:{nonce}"]
    finally:
        db.dispose()
        r.flushdb()


@pytest.mark.browser
def test_chromium_signs_through_the_embed_on_a_partner_page(tmp_path):
    """The embed as a browser really posts it (its Origin, under the page's referrer policy) is accepted."""
    from tests.test_embed import partner_with_embed

    with partner_with_embed(tmp_path) as (_, partner_url, _), browser.chromium() as context:
        page = context.new_page()
        page.set_viewport_size({"width": 420, "height": 800})
        page.goto(partner_url)
        frame = page.frame_locator("iframe")
        frame.locator("#e-name").fill("Browser Signer")
        frame.locator("#e-email").fill("browser@example.org")
        frame.locator("#e-country").select_option("DE")
        frame.locator("input[name=consent]").check()
        with page.expect_navigation(timeout=15_000):
            frame.locator("form button[type=submit]").click()
        assert "/c/mamay/thanks" in page.url, (page.url, page.content()[:500])


# --- 3c: the petition's own form, on a page cached for everyone --------------------------------------------
# The petition carries no per-visitor token (so that it can be cached); its form is taken only from our own
# origin, as browsers say in Sec-Fetch-Site (or, older ones, in Origin).


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-Site
                                     {"Origin": "https://testserver.evil.example", "Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "http://sub.testserver", "Sec-Fetch-Site": "same-site"}])
def test_a_cross_site_post_of_the_petition_form_is_refused_and_changes_nothing(client, svc, headers):
    from tests.test_access import snapshot

    client.get("/c/mamay?lang=en")
    before = snapshot(svc)
    answer = client.post("/c/mamay/sign", data={**SIGNER, "email": "victim@example.org"}, headers=headers,
                         follow_redirects=False)
    assert answer.status_code == 403 and "This form has expired" in answer.text  # the 403 page as before
    assert answer.headers["cache-control"] == "no-store" and "set-cookie" not in answer.headers
    assert snapshot(svc) == before


@pytest.mark.browser
def test_chromium_signs_the_petition_from_the_page_itself(tmp_path):
    """A real browser's same-origin post (its own Sec-Fetch-Site and Origin) is accepted, with no cookie before."""
    from tests.servers import AppProcess, server_env, upgrade

    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'campaign.db'}")
    upgrade(env)
    with AppProcess(env) as app, browser.chromium() as context:
        page = context.new_page()
        page.goto(f"{app.url}/c/mamay?lang=en")
        assert context.cookies() == []
        page.fill("#f-name", "Same Origin")
        page.fill("#f-email", "same-origin@example.org")
        page.select_option("#f-country", "DE")
        page.check("#f-consent")
        with page.expect_navigation(timeout=15_000):
            page.click("form[action$='/sign'] button[type=submit]")
        assert "/c/mamay/thanks" in page.url, (page.url, page.content()[:500])
        db = Database(env["CAMPAIGN_DATABASE_URL"])
        try:
            with db.read() as session:
                assert session.scalar(select(func.count()).select_from(Signature)) == 1
        finally:
            db.dispose()
