"""Erasure: a signer asks by email, gets a single-purpose link, presses the button, and nothing in any table
names them any more, in any campaign; the count stays right; asking never reveals whether an address signed."""

from __future__ import annotations

import re
import shutil
import time
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi.testclient import TestClient
from sqlalchemy import LargeBinary, MetaData, String, func, select
from typer.testing import CliRunner

from app import addresses, cli, counters, erasure, outbox, security
from app.db import Database, utcnow
from app.encryption import NONCE_BYTES
from app.main import create_app
from app.models import LetterRecord, OutboxMessage, Signature, SignatureCount, TargetOptIn
from app.settings import ROOT
from tests.seed import add_signatures, signature_values
from tests.support import TEST_SECRET, body, csrf_token, deliver, link_in, make_settings, settings_env, sign_form

EMAIL = "Aigerim.Test+petition@Example.ORG"
NAME = "Aigerim Zhanbolatova"
CITY = "Shymkent"
MESSAGE = "A paragraph only she writes"  # without her name: a paragraph naming its writer is refused
FIELDS = ("name", "email", "city", "message", "recipient")


@pytest.fixture
def two_campaigns(tmp_path):
    """The shipped campaign and a copy under another slug: erasure must reach every campaign."""
    letters = tmp_path / "letters"
    shutil.copytree(ROOT / "templates" / "letters" / "mamay", letters / "mamay")
    shutil.copytree(ROOT / "templates" / "letters" / "mamay", letters / "second")
    toml = letters / "second" / "campaign.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('slug = "mamay"', 'slug = "second"'), encoding="utf-8")
    return letters


@pytest.fixture
def app_client(tmp_path, sqlite_url, two_campaigns):
    settings = make_settings(tmp_path, sqlite_url, letters_dir=two_campaigns)
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings, db=db), base_url="http://testserver") as client:
        yield client
    db.dispose()


def services_of(client: TestClient):
    return client.app.state.services


def confirm_from_mail(client, mail) -> None:
    link = link_in(body(mail), "/confirm/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(link).text).group(1)
    assert client.post(link, data={"csrf_token": token, "lang": "en"}, follow_redirects=False).status_code == 303


def ask_for_link(client, email: str):
    token = csrf_token(client, "/erase?lang=en")
    return client.post("/erase", data={"csrf_token": token, "email": email, "lang": "en"})


def stored_count(svc, campaign: str) -> int:
    with svc.db.read() as s:
        return s.scalar(select(func.coalesce(func.sum(SignatureCount.confirmed), 0))
                        .where(SignatureCount.campaign == campaign))


def openings(svc, blob: bytes) -> list[str]:
    """Every way a sealed value could be read with our keys: what an attacker holding the keys would get."""
    texts = []
    for aead in svc.keyring.keys.values():
        for field in (*FIELDS, "message"):
            try:
                texts.append(AESGCM.decrypt(aead, blob[:NONCE_BYTES], blob[NONCE_BYTES:], field.encode())
                             .decode("utf-8", "replace"))
            except (InvalidTag, ValueError):
                continue
    return texts


def traces(svc, needles: list[str], keys: list[bytes]) -> list[str]:
    """Every text or binary cell of every table that holds a needle (plain, or once opened) or the email index."""
    found = []
    meta = MetaData()
    meta.reflect(svc.db.engine)
    with svc.db.engine.connect() as conn:
        for table in meta.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, (String, LargeBinary))]
            for row in conn.execute(select(*columns)) if columns else []:
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        texts = [value.decode("latin-1"), *openings(svc, value)]
                        if any(k in value for k in keys):
                            found.append(f"{table.name}.{column.name}: email index")
                    else:
                        texts = [value]
                    for text in texts:
                        for needle in needles:
                            if needle.casefold() in text.casefold():
                                found.append(f"{table.name}.{column.name}: {needle!r}")
    return found


def test_erasure_leaves_no_trace_in_any_table_and_keeps_the_count(app_client, smtp):
    client, svc = app_client, services_of(app_client)
    # A bystander, who must be untouched.
    sign_form(client, name="Bystander Person", email="bystander@example.org", city="Almaty")
    deliver(svc, smtp.url)
    confirm_from_mail(client, smtp.sink.to("bystander@example.org")[0])

    # Our signer: confirmed on one campaign, pending on the other, with choices, letters and a failed mail.
    sign_form(client, name=NAME, email=EMAIL, city=CITY, message=MESSAGE)
    deliver(svc, smtp.url)
    stored_address = "Aigerim.Test+petition@example.org"
    confirm_from_mail(client, smtp.sink.to(stored_address)[0])
    sign_form(client, slug="second", name=NAME, email=EMAIL, city=CITY, message=MESSAGE)
    deliver(svc, smtp.url)
    smtp.sink.fail_with = f"550 5.1.1 <{stored_address}>: mailbox {NAME} unavailable"
    sign_form(client, name=NAME, email=EMAIL, city=CITY)  # a repeat: an "already signed" mail, which fails
    assert deliver(svc, smtp.url, now=utcnow() + timedelta(hours=2)).failed == 1
    smtp.sink.fail_with = None
    now = utcnow()
    with svc.db.write.begin() as s:
        mine = s.scalar(select(Signature).where(Signature.campaign == "mamay", Signature.status == "confirmed")
                        .order_by(Signature.id.desc()))
        s.add(TargetOptIn(signature_id=mine.id, target="president", created_at=now))
        s.add(LetterRecord(signature_id=mine.id, campaign="mamay", target="president", channel="sent", created_at=now))
        letter = svc.composer.build(to="office@example.kz", subject="Letter",
                                    body=f"Dear President,\n...\n{NAME}, {CITY}\nReply to {stored_address}")
        outbox.enqueue(s, letter, kind="letter", keyring=svc.keyring, signature_id=mine.id, target="president",
                       now=now)
    keys = erasure.email_keys(svc.keyring, EMAIL)
    needles = [stored_address, EMAIL, addresses.normalise_email(stored_address), NAME, CITY, MESSAGE]
    assert traces(svc, needles, keys)  # the scan does find what is there
    assert stored_count(svc, "mamay") == 2  # the exact count (the public one moves only on its schedule)

    # The request, the mail, the link (GET changes nothing), the button.
    assert ask_for_link(client, EMAIL.lower()).status_code == 200
    deliver(svc, smtp.url)
    [mail] = [m for m in smtp.sink.to(stored_address) if "/erase/" in body(m)]
    assert "mamay" not in body(mail).lower() and "Mamay" not in mail["From"]
    link = link_in(body(mail), "/erase/")
    page = client.get(link)
    assert page.status_code == 200 and "anonymous number" in page.text and 'action="/erase/' in page.text
    assert traces(svc, needles, keys)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = client.post(link, data={"csrf_token": token, "lang": "en"})
    assert done.status_code == 200
    assert "Your confirmed signatures (1) stay in the totals as anonymous numbers" in done.text
    assert "Unconfirmed signatures (1) were deleted" in done.text

    # No trace, in any table, in any form we could open.
    assert traces(svc, needles, keys) == []
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(TargetOptIn)) == 0
        # The ledger keeps the letter (the counts), no longer whose it was.
        assert s.execute(select(LetterRecord.signature_id, LetterRecord.target)).all() == [(None, "president")]
        assert s.scalar(select(func.count()).where(OutboxMessage.state == "queued")) == 0
        erased = s.scalars(select(Signature).where(Signature.erased_at.is_not(None))).all()
        assert len(erased) == 1 and erased[0].status == "confirmed"
        assert (erased[0].name_enc, erased[0].email_enc, erased[0].city_enc, erased[0].message_enc,
                erased[0].email_key, erased[0].manage_token_hash) == (None,) * 6
        assert s.scalar(select(func.count()).where(Signature.campaign == "second")) == 0
        # The count stays right: the stored counter and the rows agree.
        assert counters.recount(s, "mamay") == stored_count(svc, "mamay") == 2
    # The bystander is untouched and still readable.
    assert traces(svc, ["Bystander Person", "bystander@example.org"], [])

    # The link is single-purpose: pressing again finds nothing more.
    again = client.post(link, data={"csrf_token": token, "lang": "en"})
    assert again.status_code == 200 and "Nothing left to remove" in again.text


def test_the_answer_is_identical_for_a_signer_and_a_non_signer(client, svc, smtp):
    sign_form(client, email="signed@example.org")
    deliver(svc, smtp.url)
    csrf_token(client, "/erase")
    signer = ask_for_link(client, "signed@example.org")
    stranger = ask_for_link(client, "never-signed@example.org")
    assert signer.status_code == stranger.status_code == 200
    assert signer.text == stranger.text
    assert dict(signer.headers) == dict(stranger.headers)
    deliver(svc, smtp.url)
    assert len([m for m in smtp.sink.to("signed@example.org") if "/erase/" in body(m)]) == 1
    assert smtp.sink.to("never-signed@example.org") == []


def test_a_malformed_address_is_named_and_nothing_is_sent(client, svc, smtp):
    answer = ask_for_link(client, "not an address")
    assert answer.status_code == 422 and "Enter a valid email address." in answer.text
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_expired_or_forged_links_erase_nothing(client, svc):
    with svc.db.write.begin() as s:
        add_signatures(s, [signature_values(svc.keyring, name="Keep Me", email="keep@example.org",
                                            created_at=utcnow())])
    keys = erasure.email_keys(svc.keyring, "keep@example.org")

    # Made as the app makes one, a minute past its lifetime; and one sealed for another purpose.
    expired = security.seal_handle(TEST_SECRET, erasure.LINK_PURPOSE, b"".join(keys),
                                   now=time.time() - erasure.LINK_HOURS * 3600 - 60)
    fresh = erasure.link_token(svc.settings, keys)
    other_salt = security.seal_handle(TEST_SECRET, "ticket", b"".join(keys))
    for token in (expired, fresh[:-2] + ("AA" if not fresh.endswith("AA") else "BB"), other_salt, "nonsense"):
        page = client.get(f"/erase/{token}")
        assert page.status_code == 404 and "This link does not work" in page.text
        form = csrf_token(client, "/erase")
        assert client.post(f"/erase/{token}", data={"csrf_token": form}).status_code == 404
    # The fresh link shows the button, and the POST without its CSRF token is refused.
    assert 'action="/erase/' in client.get(f"/erase/{fresh}").text
    assert client.post(f"/erase/{fresh}", data={}).status_code == 403
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).where(Signature.erased_at.is_(None))) == 1
    assert "@" not in fresh and "keep" not in fresh  # the link holds keyed hashes, never the address


def test_cli_erase_does_the_same(settings, svc):
    now = utcnow()
    with svc.db.write.begin() as s:
        add_signatures(s, [
            signature_values(svc.keyring, name="Cli Person", email="cli@example.org", created_at=now),
            signature_values(svc.keyring, name="Cli Person", email="CLI@example.org", status="pending",
                             created_at=now, campaign="mamay-old", confirm_expires_at=now + timedelta(days=7)),
        ])
    runner = CliRunner()
    result = runner.invoke(cli.app, ["erase", "Cli+x@Example.org"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert "1 confirmed signatures kept as anonymous units, 1 unconfirmed deleted" in result.output
    assert traces(svc, ["Cli Person", "cli@example.org"], erasure.email_keys(svc.keyring, "cli@example.org")) == []
    with svc.db.read() as s:
        assert counters.recount(s, "mamay") == stored_count(svc, "mamay") == 1
    again = runner.invoke(cli.app, ["erase", "cli@example.org"], env=settings_env(settings))
    assert "no personal data held" in again.output


def test_the_erase_request_form_is_rate_limited(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, sign_rate_limit="2/minute")
    db = Database(settings.sqlalchemy_url)
    try:
        with TestClient(create_app(settings, db=db)) as client:
            assert ask_for_link(client, "a@example.org").status_code == 200
            assert ask_for_link(client, "b@example.org").status_code == 200
            blocked = ask_for_link(client, "c@example.org")
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    finally:
        db.dispose()


@pytest.mark.postgres
def test_erasure_on_postgresql(pg_svc):
    svc, db = pg_svc, pg_svc.db
    now = utcnow()
    with db.write.begin() as s:
        ids = add_signatures(s, [
            signature_values(svc.keyring, name="Pg Person", email="pg@example.org", city="Aktau", created_at=now),
            signature_values(svc.keyring, name="Pg Person", email="pg@example.org", status="pending",
                             created_at=now, campaign="other"),
            signature_values(svc.keyring, name="Pg Other", email="other@example.org", created_at=now),
        ], opt_ins={0: ["president"]})
        outbox.enqueue(s, svc.composer.build(to="pg@example.org", subject="x", body="Pg Person"), kind="x",
                       keyring=svc.keyring, signature_id=ids[1], now=now)
    with db.write.begin() as s:
        done = erasure.erase(s, keys=erasure.email_keys(svc.keyring, "PG@example.org"), now=now)
    assert (done.kept_anonymous, done.deleted, done.mails_dropped) == (1, 1, 1)
    keys = erasure.email_keys(svc.keyring, "pg@example.org")
    assert traces(svc, ["Pg Person", "pg@example.org", "Aktau"], keys) == []
    with db.read() as s:
        assert counters.recount(s, "mamay") == stored_count(svc, "mamay") == 2
