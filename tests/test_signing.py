"""The sign flow end to end with real parts: form -> SQLite -> outbox -> aiosmtpd -> link -> confirm -> count."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from app import counters, signing
from app.db import utcnow
from app.models import OutboxMessage
from tests.support import SIGNER, body, count, csrf_token, deliver, link_in, sign_form


def confirmed_count(client) -> int:
    """The exact count (the public figure only moves on its schedule)."""
    with client.app.state.services.db.read() as s:
        return counters.recount(s, "mamay")


def test_sign_mail_get_post_and_count_moves(client, svc, smtp):
    answer = sign_form(client)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/c/mamay/thanks")
    assert count(svc) == 1 and confirmed_count(client) == 0

    assert deliver(svc, smtp.url).sent == 1
    [mail] = smtp.sink.to("aigerim@example.org")
    assert re.fullmatch(r"<[0-9a-f]{32}@[\w.]+>", mail["Message-ID"])  # keyed: no row number in it
    link = link_in(body(mail), "/confirm/")

    # A mail scanner's GET shows a button and changes nothing.
    page = client.get(link)
    assert page.status_code == 200 and 'action="/confirm/' in page.text
    assert confirmed_count(client) == 0

    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(link, data={"csrf_token": token, "lang": "en"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/s/")
    assert confirmed_count(client) == 1

    # The signer's own page opens from the redirect.
    assert client.get(done.headers["location"]).status_code == 200

    # A second POST is harmless: same count, no error; it opens the page again under a new private link.
    again = client.post(link, data={"csrf_token": token, "lang": "en"}, follow_redirects=False)
    assert again.status_code == 303 and confirmed_count(client) == 1
    assert client.get(again.headers["location"]).status_code == 200
    with svc.db.read() as s:
        assert counters.recount(s, "mamay") == 1

    # A thank-you mail carries the private link.
    deliver(svc, smtp.url)
    assert any("/s/" in body(m) for m in smtp.sink.to("aigerim@example.org"))


def test_code_typed_on_thank_you_page_confirms(client, svc, smtp):
    sign_form(client, email="code@example.org")
    deliver(svc, smtp.url)
    code = re.search(r"\b([A-Z0-9]{8})\b", body(smtp.sink.to("code@example.org")[0])).group(1)
    token = csrf_token(client, "/c/mamay/thanks?lang=en")
    wrong = client.post("/c/mamay/code", data={"csrf_token": token, "code": "AAAAAAAA", "lang": "en"})
    assert wrong.status_code == 422 and "does not open a signature" in wrong.text
    ok = client.post("/c/mamay/code", data={"csrf_token": token, "code": code.lower(), "lang": "en"},
                     follow_redirects=False)
    assert ok.status_code == 303 and confirmed_count(client) == 1


def test_wrong_codes_mail_nothing_and_after_the_cap_only_the_link_works(client, svc, smtp):
    sign_form(client, email="wrong@example.org")
    deliver(svc, smtp.url)
    [first] = smtp.sink.to("wrong@example.org")
    code = re.search(r"\b([A-Z0-9]{8})\b", body(first)).group(1)
    token = csrf_token(client, "/c/mamay/thanks")
    for _ in range(signing.MAX_CODE_ATTEMPTS):
        last = client.post("/c/mamay/code", data={"csrf_token": token, "code": "XXXXXXXX", "lang": "en"})
        assert last.status_code == 422
    deliver(svc, smtp.url)
    assert len(smtp.sink.to("wrong@example.org")) == 1  # wrong guesses never mail the signer
    # Used up: even the right code is refused now, with the same answer; the link still confirms.
    late = client.post("/c/mamay/code", data={"csrf_token": token, "code": code, "lang": "en"})
    assert late.status_code == 422 and late.text == last.text and confirmed_count(client) == 0
    link = link_in(body(first), "/confirm/")
    page = client.get(link)
    form = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post(link, data={"csrf_token": form}, follow_redirects=False).status_code == 303
    assert confirmed_count(client) == 1


def test_repeat_signer_gets_same_answer_no_row_and_an_already_signed_mail(client, svc, smtp):
    first = sign_form(client, email="Repeat+news@Example.ORG")
    second = sign_form(client, email="repeat@example.org")
    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    assert count(svc) == 1
    # The reminder waits while the first mail's code is under an hour old (a double click must not replace it).
    deliver(svc, smtp.url)
    assert [m["Subject"] for m in smtp.sink.to("Repeat+news@example.org")] == [
        "Please confirm your signature: Kazakhstan: quash journalist Zhanbolat Mamay's conviction and lift his bans"]
    sign_form(client, email="repeat@example.org")
    deliver(svc, smtp.url, now=utcnow() + timedelta(hours=2))
    # Every mail goes to the address stored first, never to the one typed later.
    assert {to for r in smtp.sink.messages for to in r.envelope_to} == {"Repeat+news@example.org"}
    assert "already signed" in smtp.sink.messages[-1].message["Subject"]

    api = client.post("/api/v1/campaigns/mamay/signatures",
                      json={**SIGNER, "email": "REPEAT@example.org", "consent": True})
    assert api.status_code == 202 and api.json() == {"status": "pending"}
    assert count(svc) == 1


BAD_INPUTS = [
    ({"name": ""}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "Evil\u202eName"}, "name"),
    ({"name": "Line\nBreak"}, "name"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "a@b@c.org"}, "email"),
    ({"email": "x@example.org\r\nBcc: all@example.org"}, "email"),
    ({"country": "XX"}, "country"),
    ({"country": ""}, "country"),
    ({"city": "c" * 101}, "city"),
    ({"message": "m" * 2001}, "message"),
    ({"message": "null\x00byte"}, "message"),
    ({"consent": ""}, "consent"),
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS)
def test_bad_form_input_is_422_naming_the_field_and_stores_nothing(client, svc, change, field):
    answer = sign_form(client, **change)
    assert answer.status_code == 422
    assert f'href="#f-{field}"' in answer.text
    # The typed values are kept in the form.
    if field != "name" and "name" not in change:
        assert 'value="Aigerim Test"' in answer.text
    assert count(svc) == 0 and count(svc, OutboxMessage) == 0


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS)
def test_bad_api_input_is_422_naming_the_field_and_stores_nothing(client, svc, change, field):
    payload = {**SIGNER, "consent": True, **change}
    if field == "consent":
        payload["consent"] = False
    answer = client.post("/api/v1/campaigns/mamay/signatures", json=payload)
    assert answer.status_code == 422
    assert field in [e["field"] for e in answer.json()["detail"]]
    assert count(svc) == 0 and count(svc, OutboxMessage) == 0


def test_errors_come_back_in_the_signers_language(client):
    answer = sign_form(client, lang="ru", name="")
    assert answer.status_code == 422
    assert '<html lang="ru">' in answer.text


def test_form_posted_from_another_site_is_refused_and_stores_nothing(client, svc):
    client.get("/c/mamay")
    answer = client.post("/c/mamay/sign", data=SIGNER, headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and count(svc) == 0


def test_honeypot_gets_the_normal_answer_and_stores_nothing(client, svc):
    answer = sign_form(client, website="http://spam.example")
    assert answer.status_code == 303 and count(svc) == 0


def test_rate_limit_answers_429_with_retry_after(tmp_path, sqlite_url):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.support import make_settings

    settings = make_settings(tmp_path, sqlite_url, sign_rate_limit="2/minute")
    with TestClient(create_app(settings)) as c:
        codes = [
            c.post("/api/v1/campaigns/mamay/signatures",
                   json={**SIGNER, "email": f"r{i}@example.org", "consent": True}).status_code
            for i in range(3)
        ]
        assert codes == [202, 202, 429]
        limited = c.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, "consent": True})
        assert int(limited.headers["Retry-After"]) > 0


def test_security_headers_on_every_page(client):
    page = client.get("/c/mamay")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"


def test_page_loads_nothing_from_another_origin(client):
    for url in ("/", "/c/mamay", "/c/mamay?lang=ru", "/c/mamay?lang=kk", "/privacy"):
        html = client.get(url).text
        for ref in re.findall(r'(?:src|href|action)="([^"]+)"', html):
            assert ref.startswith(("/", "#")), f"{url} refers to {ref}"


def test_petition_page_in_three_languages_by_query_and_accept_language(client):
    assert '<html lang="ru">' in client.get("/c/mamay?lang=ru").text
    assert '<html lang="kk">' in client.get("/c/mamay", headers={"Accept-Language": "kk-KZ,ru;q=0.5"}).text
    assert '<html lang="en">' in client.get("/c/mamay", headers={"Accept-Language": "fr"}).text
