"""The outbox against a misbehaving mail server: down, 4xx, 5xx, and a server that hangs up in the middle of a
message. Temporary failures are retried with a growing backoff until delivered; permanent ones are marked failed
with the server's reason; after recovery every mail arrives, and none twice (counted by Message-ID).

The clock is moved by passing `now=` to the sender, never by sleeping.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from app import mail, outbox, signing
from app.db import utcnow
from app.models import OutboxMessage
from tests.seed import bearer, organiser
from tests.servers import record_figures
from tests.support import SIGNER, SMTPServer, SMTPSink, answer_notices, deliver, free_port


def sign_many(svc, n: int, prefix: str, *, now: datetime) -> list[str]:
    """n new signers in one transaction: n confirmation mails queued."""
    emails = [f"{prefix}{i}@example.org" for i in range(n)]
    with svc.db.write.begin() as session:
        for email in emails:
            signing.sign(session, campaign=svc.campaigns["mamay"], data=signing.validate({**SIGNER, "email": email}),
                         keyring=svc.keyring, settings=svc.settings, now=now)
    answer_notices(svc, now=now)
    return emails


def mails(svc) -> list[OutboxMessage]:
    with svc.db.read() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def assert_each_delivered_once(smtp: SMTPServer, emails: list[str]) -> None:
    ids = Counter(r.message["Message-ID"] for r in smtp.sink.messages)
    assert all(n == 1 for n in ids.values()), f"a mail arrived twice: {ids.most_common(3)}"
    for email in emails:
        assert len(smtp.sink.to(email)) == 1, email


def start_on(port: int, sink: SMTPSink | None = None) -> SMTPServer:
    server = SMTPServer()
    server.port = port
    if sink is not None:
        server.sink = sink
    server.start()
    return server


def test_server_down_mails_wait_with_growing_backoff_then_all_arrive_once(svc):
    t0 = utcnow()
    emails = sign_many(svc, 5, "down", now=t0)
    port = free_port()  # nobody listens here yet
    url = f"smtp://127.0.0.1:{port}"

    first = deliver(svc, url, now=t0)
    assert (first.sent, first.retried, first.failed) == (0, 5, 0)
    assert all("cannot connect" in e for e in first.errors)
    rows = mails(svc)
    assert all(r.state == "queued" and r.attempts == 1 and r.last_error for r in rows)
    gaps = [r.next_attempt_at - t0 for r in rows]
    assert all(timedelta(seconds=24) <= g <= timedelta(seconds=36) for g in gaps), gaps

    # Not due yet: a pass before the backoff ends touches nothing.
    assert not deliver(svc, url, now=t0 + timedelta(seconds=20))

    # Each further failure waits about twice as long as the one before.
    now, previous = t0, timedelta(seconds=30)
    for attempt in (2, 3, 4):
        now = max(r.next_attempt_at for r in mails(svc))
        report = deliver(svc, url, now=now)
        assert report.retried == 5 and not report.sent
        rows = mails(svc)
        assert all(r.attempts == attempt for r in rows)
        expected = previous * 2
        for r in rows:
            assert expected * 0.8 <= r.next_attempt_at - now <= expected * 1.2
        previous = expected

    server = start_on(port)  # the mail server comes back
    try:
        later = max(r.next_attempt_at for r in mails(svc))
        report = deliver(svc, url, now=later)
        assert report.sent == 5 and not report.retried and not report.failed
        assert all(r.state == "sent" and r.last_error is None and r.attempts == 5 for r in mails(svc))
        assert not deliver(svc, url, now=later + timedelta(days=1))  # nothing left, nothing resent
        assert_each_delivered_once(server, emails)
    finally:
        server.stop()
    record_figures("smtp-down", mails_queued=5, attempts_each=5, mails_delivered=len(server.sink.messages))


def test_4xx_answers_are_retried_until_the_server_accepts(svc, smtp):
    t0 = utcnow()
    emails = sign_many(svc, 4, "busy", now=t0)
    smtp.sink.fail_with = "451 4.3.0 Mailbox busy, try later"
    first = deliver(svc, smtp.url, now=t0)
    assert (first.sent, first.retried) == (0, 4)
    assert all(r.state == "queued" and "451" in r.last_error for r in mails(svc))
    second = deliver(svc, smtp.url, now=t0 + timedelta(minutes=1))
    assert second.retried == 4 and all(r.attempts == 2 for r in mails(svc))

    smtp.sink.fail_with = None
    done = deliver(svc, smtp.url, now=t0 + timedelta(minutes=10))
    assert done.sent == 4
    assert all(r.state == "sent" for r in mails(svc))
    assert_each_delivered_once(smtp, emails)
    record_figures("smtp-4xx", mails_queued=4, mails_delivered=len(smtp.sink.messages))


def test_5xx_answer_marks_the_mail_failed_with_the_reason_and_never_retries(svc, smtp):
    t0 = utcnow()
    sign_many(svc, 2, "bounce", now=t0)
    smtp.sink.fail_with = "550 5.1.1 No such user here"
    report = deliver(svc, smtp.url, now=t0)
    assert (report.sent, report.retried, report.failed) == (0, 0, 2)
    rows = mails(svc)
    assert all(r.state == "failed" and r.last_error == "550 5.1.1 No such user here" for r in rows)
    smtp.sink.fail_with = None  # even once the server would accept, a permanent failure is not resent
    assert not deliver(svc, smtp.url, now=t0 + timedelta(days=2))
    assert smtp.sink.messages == []


def test_organisers_see_failed_and_waiting_mails_with_the_reason_on_their_dashboard(client, svc, smtp):
    t0 = utcnow()
    sign_many(svc, 2, "bounced", now=t0)
    smtp.sink.fail_with = "550 5.1.1 No such user here"
    deliver(svc, smtp.url, now=t0)
    token = organiser(svc)
    page = client.get("/organiser?lang=en", headers=bearer(token))
    assert page.status_code == 200
    failed = re.search(r"<dt>Failed</dt><dd class=\"num\">(\d+)</dd>", page.text)
    assert failed and failed.group(1) == "2"
    assert "550 5.1.1 No such user here" in page.text

    # A server answering 4xx: the mail waits (queued) and the dashboard says why.
    sign_many(svc, 1, "waiting", now=t0)
    smtp.sink.fail_with = "451 4.3.0 Mailbox busy, try later"
    deliver(svc, smtp.url, now=t0 + timedelta(minutes=1))
    page = client.get("/organiser?lang=en", headers=bearer(token))
    queued = re.search(r"<dt>Queued</dt><dd class=\"num\">(\d+)</dd>", page.text)
    assert queued and queued.group(1) == "1"
    assert "451 4.3.0 Mailbox busy, try later" in page.text


class RejectsOneRecipient(SMTPSink):
    """A real server that knows every mailbox but one."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd hook
        if address.startswith("nobody"):
            return "550 5.1.1 <nobody@example.org>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_one_refused_recipient_fails_alone_and_the_others_are_delivered(svc):
    t0 = utcnow()
    good = sign_many(svc, 3, "fine", now=t0)
    sign_many(svc, 1, "nobody", now=t0)
    server = start_on(free_port(), RejectsOneRecipient())
    try:
        report = deliver(svc, server.url, now=t0)
        assert (report.sent, report.failed, report.retried) == (3, 1, 0)
        [failed] = [r for r in mails(svc) if r.state == "failed"]
        assert "550" in failed.last_error and "Recipient address rejected" in failed.last_error
        assert_each_delivered_once(server, good)
    finally:
        server.stop()


class HangsUpDuringData(socketserver.ThreadingTCPServer):
    """Speaks just enough SMTP to reach DATA, then drops the connection after the first line of the message."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.data_started = 0
        super().__init__(("127.0.0.1", port), self.Handler)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 flaky.test ESMTP\r\n")
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.wfile.write(b"250 flaky.test\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    self.wfile.write(b"250 OK\r\n")
                elif verb == b"DATA":
                    self.wfile.write(b"354 go ahead\r\n")
                    self.rfile.readline()
                    self.server.data_started += 1  # type: ignore[attr-defined]
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"502 not here\r\n")


def test_connection_dropped_mid_message_is_retried_and_delivered_once(svc):
    t0 = utcnow()
    emails = sign_many(svc, 3, "dropped", now=t0)
    port = free_port()
    flaky = HangsUpDuringData(port)
    thread = threading.Thread(target=flaky.serve_forever, daemon=True)
    thread.start()
    try:
        report = deliver(svc, f"smtp://127.0.0.1:{port}", now=t0)
    finally:
        flaky.shutdown()
        flaky.server_close()
    assert flaky.data_started >= 1
    assert report.retried == 3 and not report.sent and not report.failed
    assert all(r.state == "queued" and r.attempts == 1 for r in mails(svc))

    server = start_on(port)
    try:
        done = deliver(svc, server.url, now=t0 + timedelta(minutes=5))
        assert done.sent == 3
        assert_each_delivered_once(server, emails)
    finally:
        server.stop()
    record_figures("smtp-dropped", data_started=flaky.data_started, mails_queued=3,
                   mails_delivered=len(server.sink.messages))


def test_a_sender_that_dies_mid_send_leaves_a_lease_that_expires_and_the_resend_keeps_its_message_id(svc, smtp):
    t0 = utcnow()
    [email] = sign_many(svc, 1, "lease", now=t0)
    with svc.db.write.begin() as session:  # a worker claims the row, then the process dies before recording
        [claimed] = outbox.claim(session, now=t0, limit=10)
    assert not deliver(svc, smtp.url, now=t0 + timedelta(minutes=1))  # the lease still holds
    report = deliver(svc, smtp.url, now=t0 + outbox.LEASE + timedelta(seconds=1))
    assert report.sent == 1
    [received] = smtp.sink.to(email)
    # The same Message-ID as the first try: a receiver can drop the duplicate, if any.
    assert received["Message-ID"] == outbox.message_id(svc.keyring, claimed.id, mail.mail_domain(svc.settings))


@pytest.mark.parametrize("max_attempts", [3])
def test_a_server_that_never_recovers_ends_in_failed_after_max_attempts(svc, max_attempts):
    t0 = utcnow()
    sign_many(svc, 1, "never", now=t0)
    url = f"smtp://127.0.0.1:{free_port()}"
    now = t0
    for _ in range(max_attempts):
        deliver(svc, url, now=now, max_attempts=max_attempts)
        now += timedelta(hours=3)
    [row] = mails(svc)
    assert row.state == "failed" and row.attempts == max_attempts
    assert row.last_error.startswith(f"gave up after {max_attempts} attempts: cannot connect")
    assert not deliver(svc, url, now=now + timedelta(days=1), max_attempts=max_attempts)
