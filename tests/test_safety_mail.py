"""Signer safety in mail: signer text never builds a header (not even as an RFC 2047 encoded word), one bad
message never stalls the outbox, no address is left behind in plain text, the confirmation mail says truthfully
how long an unconfirmed signature is kept, and a signer's address never reaches an official.

Real parts only: the app's own form and API, a SQLite file, an aiosmtpd server on loopback, clocks as `now=`.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from datetime import timedelta
from email.headerregistry import Address
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app import addresses, mail, outbox, retention, signing, smtp
from app.db import utcnow
from app.models import OutboxMessage, Signature
from tests.seed import bearer, organiser
from tests.support import SIGNER, body, csrf_token, deliver, make_settings, sign_form
from tests.test_access import confirm, sign_up
from tests.test_letters import add_signer, letters_dir_with_named_targets

LONDON = "London@mfa.kz"  # embassy-gb, at the `name` level in these tests


def encoded_word(text: bytes, *, b: bool = True) -> str:
    if b:
        return "=?utf-8?b?" + base64.b64encode(text).decode() + "?="
    return "=?UTF-8?Q?" + "".join(f"={c:02X}" for c in text) + "?="


# Printable ASCII as typed, but CR/LF and header lines once a mail reader (or Python 3.11.7) decodes it.
SMUGGLED = encoded_word(b"x\r\nBcc: evil@example.org\r\nX-Injected: 1")
HIDDEN_HEADERS = [
    SMUGGLED,
    "Ann " + encoded_word(b"\nBcc: evil@example.org", b=False) + " Lee",
    "= ?utf-8?b?" + base64.b64encode(b"x\r\nBcc: evil@example.org").decode() + "? =",  # whitespace variant
    "＝？utf-8？b？eA0KQmNjOiBldmlsQGV4YW1wbGUub3Jn？＝",  # fullwidth: an encoded word after NFKC
]


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str):
    """The shipped campaign with two embassies (Kazakh state bodies) that accept names: GB `name`, CA `name_city`."""
    return make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))


def stored_nothing(svc) -> bool:
    with svc.db.read() as s:
        return s.scalar(select(Signature.id)) is None and s.scalar(select(OutboxMessage.id)) is None


def post_own(client, token: str, action: str, **fields: str):
    data = {"csrf_token": csrf_token(client, "/erase"), "lang": "en", **fields}
    return client.post(f"/s/{token}/{action}", data=data, follow_redirects=False)


def every_text(msg) -> str:
    """Headers as received and every text part decoded: where an address could hide from a byte search."""
    parts = [str(msg.as_bytes().split(b"\n\n", 1)[0], "utf-8", "replace")]
    parts += [p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"]
    return "\n".join(parts)


# --- 1. signer text reaches mail headers ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "city"])
@pytest.mark.parametrize("value", HIDDEN_HEADERS)
def test_an_encoded_word_hiding_line_breaks_is_refused_by_form_and_api_with_nothing_stored(client, svc, field,
                                                                                           value):
    answer = client.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, field: value, "consent": True})
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["detail"]] == [field]
    form = sign_form(client, **{field: value})
    assert form.status_code == 422
    assert stored_nothing(svc)


def test_an_encoded_word_name_already_stored_adds_no_header_and_no_recipient_to_the_letter(client, svc, smtp):
    _, token = add_signer(svc, name=SMUGGLED, email="stored@example.org", country="GB")
    assert post_own(client, token, "named", target="embassy-gb", named="on").status_code == 303
    assert post_own(client, token, "send", target="embassy-gb").status_code == 303
    deliver(svc, smtp.url)
    everyone = [to for r in smtp.sink.messages for to in r.envelope_to]
    assert "evil@example.org" not in everyone
    [received] = [r for r in smtp.sink.messages if LONDON in r.envelope_to]
    assert received.envelope_to == [LONDON]
    assert sorted(k.lower() for k in received.message) == sorted(
        ["from", "to", "subject", "date", "mime-version", "content-type", "content-language", "message-id"])
    assert received.message["Subject"] == svc.campaigns["mamay"].subject["en"]
    [copy] = [r for r in smtp.sink.messages if r.envelope_to == ["stored@example.org"]]
    assert sorted(k.lower() for k in copy.message) == sorted(
        ["from", "to", "subject", "date", "mime-version", "content-type", "content-transfer-encoding",
         "content-language", "auto-submitted", "message-id"])


@pytest.mark.parametrize("where", ["reply_to", "cc", "to", "from_name"])
def test_the_mail_builder_refuses_a_value_that_would_produce_an_extra_header(svc, where):
    values: dict[str, object] = {"to": "ok@example.org", "subject": "Hello", "body": "text"}
    hostile = Address(display_name=SMUGGLED, addr_spec="someone@example.org")
    values[where] = SMUGGLED if where == "from_name" else hostile
    with pytest.raises(ValueError):
        svc.composer.build(**values)


# --- 2. one address stalls the outbox ------------------------------------------------------------------------


@pytest.mark.parametrize(("lang", "message"), [
    ("en", "This address cannot receive our mail: use an address with only Latin letters before the @."),
    ("ru", "На этот адрес наши письма не дойдут: укажите адрес, в котором до @ только латинские буквы."),
    ("kk", "Бұл мекенжайға хаттарымыз жетпейді: @ белгісіне дейін тек латын әріптері бар мекенжайды көрсетіңіз."),
])
@pytest.mark.parametrize("email", ["дана@example.org", "josé@example.org"])
def test_an_address_with_a_non_ascii_local_part_is_refused_in_the_signers_language(client, svc, lang, message,
                                                                                  email):
    answer = client.post("/api/v1/campaigns/mamay/signatures",
                         json={**SIGNER, "email": email, "lang": lang, "consent": True})
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{"field": "email", "message": message}]
    assert stored_nothing(svc)


def test_an_internationalised_domain_is_stored_and_sent_in_its_ascii_form(client, svc, smtp):
    assert sign_form(client, email="dana@münchen.de").status_code == 303
    report = deliver(svc, smtp.url)
    assert (report.sent, report.failed) == (1, 0)
    [received] = smtp.sink.messages
    assert received.envelope_to == ["dana@xn--mnchen-3ya.de"]
    assert received.message["To"].addresses[0].addr_spec == "dana@xn--mnchen-3ya.de"
    with svc.db.read() as s:
        row = s.scalar(select(Signature))
        assert svc.keyring.open(row.email_enc, "email", row.key_id) == "dana@xn--mnchen-3ya.de"
    assert addresses.mailable_email("dana@xn--mnchen-3ya.de") == "dana@xn--mnchen-3ya.de"


def test_one_unsendable_message_fails_alone_and_the_rest_of_the_batch_is_sent_exactly_once(svc, smtp):
    t0 = utcnow()
    good = ["first@example.org", "second@example.org", "third@example.org"]

    def queued(to: str, *, recipients: tuple[str, ...] | None = None) -> dict[str, object]:
        prepared = svc.composer.prepare(to=to if to.isascii() else "x@example.org", subject="Hello", body="text")
        assert isinstance(prepared, mail.Prepared)
        if recipients is not None:
            prepared = mail.Prepared(prepared.raw, recipients)
        return outbox.row_values(prepared, kind="confirm", keyring=svc.keyring, now=t0)

    unreadable = queued("unreadable@example.org") | {"message_enc": b"not sealed by us"}
    rows = [queued(good[0]), queued("дана@example.org", recipients=("дана@example.org",)), queued(good[1]),
            queued("x@example.org", recipients=("crlf@example.org\r\nRCPT TO:<spy@example.org>",)), unreadable,
            queued(good[2])]
    with svc.db.write.begin() as s:
        outbox.enqueue_many(s, rows)  # written straight in: the form would refuse these addresses now

    report = deliver(svc, smtp.url, now=t0)
    assert (report.sent, report.failed, report.retried) == (3, 3, 0)
    ids = Counter(r.message["Message-ID"] for r in smtp.sink.messages)
    assert len(ids) == 3 and set(ids.values()) == {1}
    assert sorted(to for r in smtp.sink.messages for to in r.envelope_to) == sorted(good)
    with svc.db.read() as s:
        stored = list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    assert [r.state for r in stored] == ["sent", "failed", "sent", "failed", "failed", "sent"]
    assert all(r.lease_until is None for r in stored)
    for r in stored:
        if r.state == "failed":
            assert r.last_error and "дана" not in r.last_error and "crlf@" not in r.last_error

    # Later passes, after any lease would have run out: nothing is sent again.
    assert not deliver(svc, smtp.url, now=t0 + timedelta(hours=3))
    assert len(smtp.sink.messages) == 3


def test_an_unexpected_error_sending_one_message_fails_it_alone(svc, tmp_path):
    """Any exception, not only an SMTP answer: here the mail folder cannot take the second message's file."""
    t0 = utcnow()
    with svc.db.write.begin() as s:
        for to in ("one@example.org", "two@example.org", "three@example.org"):
            outbox.enqueue(s, svc.composer.prepare(to=to, subject="Hello", body="text"), kind="confirm",
                           keyring=svc.keyring, now=t0)
        ids = s.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)).all()
    folder = tmp_path / "mail"
    name = [smtp.FileTransport.name(i) for i in ids]
    (folder / name[1]).mkdir(parents=True)  # a folder where that file must go
    report = outbox.deliver_due(svc.db, keyring=svc.keyring, transport=smtp.FileTransport(folder), domain="test",
                                now=t0)
    assert (report.sent, report.failed) == (2, 1)
    assert sorted(p.name for p in folder.glob("*.eml") if p.is_file()) == sorted(
        [name[0], name[2]])
    with svc.db.read() as s:
        rows = list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    assert [r.state for r in rows] == ["sent", "failed", "sent"]
    assert all(r.lease_until is None for r in rows) and "IsADirectoryError" in rows[1].last_error
    assert not outbox.deliver_due(svc.db, keyring=svc.keyring, transport=smtp.FileTransport(folder), domain="test",
                                  now=t0 + timedelta(hours=3))


# --- 3. plain text left behind -------------------------------------------------------------------------------

REFUSAL = "550 <dana@example.net>: no such user"


def database_bytes(svc) -> bytes:
    path = Path(svc.settings.sqlalchemy_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


def test_a_refusal_quoting_the_address_is_stored_and_shown_without_it(client, svc, smtp):
    assert sign_form(client, email="dana@example.net").status_code == 303
    smtp.sink.fail_with = REFUSAL
    report = deliver(svc, smtp.url)
    assert report.failed == 1 and all("dana@" not in e for e in report.errors)
    with svc.db.read() as s:
        [row] = s.scalars(select(OutboxMessage)).all()
    assert row.state == "failed" and row.last_error == "550 <…>: no such user"
    assert b"dana@example.net" not in database_bytes(svc)
    page = client.get("/organiser?lang=en", headers=bearer(organiser(svc)))
    assert page.status_code == 200 and "no such user" in page.text and "dana@example.net" not in page.text

    # A row stored before errors were redacted is redacted when shown.
    with svc.db.write.begin() as s:
        s.execute(update(OutboxMessage).values(last_error=REFUSAL))
    page = client.get("/organiser?lang=en", headers=bearer(organiser(svc, "bob")))
    assert "no such user" in page.text and "dana@example.net" not in page.text


def test_a_failed_mail_loses_its_recipient_body_and_error_after_the_retention_period(svc, smtp):
    t0 = utcnow()
    with svc.db.write.begin() as s:  # a mail of no signature (as erasure and retention of signers leave alone)
        outbox.enqueue(s, svc.composer.prepare(to="dana@example.net", subject="Hello", body="text"), kind="erase",
                       keyring=svc.keyring, now=t0)
    smtp.sink.fail_with = REFUSAL
    deliver(svc, smtp.url, now=t0)
    with svc.db.write.begin() as s:  # as an older version stored it
        s.execute(update(OutboxMessage).values(last_error=REFUSAL))

    def row() -> OutboxMessage:
        with svc.db.read() as s:
            return s.scalar(select(OutboxMessage))

    retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings,
                  now=t0 + timedelta(days=retention.SENT_BODY_DAYS - 1))
    kept = row()
    assert kept.state == "failed" and kept.recipient_enc and kept.message_enc and kept.last_error == REFUSAL
    retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings,
                  now=t0 + timedelta(days=retention.SENT_BODY_DAYS, hours=1))
    gone = row()
    assert gone.state == "failed" and gone.recipient_enc is None and gone.message_enc is None
    assert "dana@example.net" not in (gone.last_error or "")


# --- 4. the confirmation mail tells the truth about what is kept ---------------------------------------------

KEPT = {
    "en": r"a signature that is not confirmed is deleted, with the address, after (\d+) days",
    "ru": r"неподтверждённая подпись удаляется вместе с адресом через (\d+) дн",
    "kk": r"расталмаған қолтаңба мекенжайымен бірге (\d+) күннен кейін өшіріледі",
}


@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_the_confirmation_mail_states_how_long_retention_keeps_an_unconfirmed_signature(svc, smtp, lang):
    t0 = utcnow()
    data = signing.validate({**SIGNER, "email": "kept@example.org", "lang": lang})
    with svc.db.write.begin() as s:
        signing.sign(s, campaign=svc.campaigns["mamay"], data=data, keyring=svc.keyring,
                     settings=svc.settings, now=t0)
    deliver(svc, smtp.url, now=t0)
    text = " ".join(body(smtp.sink.to("kept@example.org")[0]).split())
    assert "nothing is kept unless it is confirmed" not in text
    found = re.search(KEPT[lang], text)
    assert found, text
    days = int(found.group(1))

    def pending() -> int:
        with svc.db.read() as s:
            return len(s.scalars(select(Signature.id)).all())

    retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=t0 + timedelta(days=days, hours=-1))
    assert pending() == 1
    retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=t0 + timedelta(days=days, hours=1))
    assert pending() == 0


# --- 5. what the form promises is what happens ---------------------------------------------------------------


def test_a_named_signers_letter_to_an_embassy_carries_no_signer_address(client, svc, smtp):
    assert "never sent to the authorities" in client.get("/c/mamay?lang=en").text
    who = confirm(client, svc, smtp, sign_up(client, svc, smtp, "named@example.org", name="Named Person",
                                              country="GB"))
    assert post_own(client, who.manage, "named", target="embassy-gb", named="on").status_code == 303
    assert post_own(client, who.manage, "send", target="embassy-gb").status_code == 303
    deliver(svc, smtp.url)
    [received] = [r for r in smtp.sink.messages if LONDON in r.envelope_to]
    assert received.envelope_to == [LONDON]
    letter = every_text(received.message)
    assert "named@example.org" not in letter and b"named@example.org" not in received.message.as_bytes()
    assert "Named Person" in letter  # named, as agreed: the name goes, the address does not
    copies = [r for r in smtp.sink.messages if r.envelope_to == ["named@example.org"]
              and "signed with your name" in body(r.message)]
    assert len(copies) == 1
    assert "your email address is not given to them" in " ".join(body(copies[0].message).split())
