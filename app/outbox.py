"""The outbox: mails are rows, written with the change that causes them, sent later by a worker.

A row is claimed (a lease, taken with FOR UPDATE SKIP LOCKED on PostgreSQL), sent, then marked sent; a
temporary failure retries with exponential backoff, a permanent one is marked failed with the reason. A worker
that dies mid-send leaves a lease that expires, so the mail is sent again under the same Message-ID.
Letters to one target are spread out by a per-target hourly cap. Knows nothing about petitions.
"""

from __future__ import annotations

import hmac
import logging
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from app import mail, mail_auth, smtp
from app.db import Database, driver_rows, utcnow
from app.encryption import Keyring
from app.models import OutboxMessage
from app.settings import Settings

log = logging.getLogger(__name__)
QUEUED, SENDING, SENT, FAILED = "queued", "sending", "sent", "failed"
BOUNCED = "bounced"  # sent, then reported undeliverable (bounces.py)
LEASE = timedelta(minutes=5)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=2)


def recipients_of(msg: EmailMessage) -> list[str]:
    return [addr for _, addr in getaddresses(msg.get_all("To", []) + msg.get_all("Cc", [])) if addr]


def row_values(
    msg: EmailMessage | mail.Prepared,
    *,
    kind: str,
    keyring: Keyring,
    now: datetime,
    signature_id: int | None = None,
    target: str | None = None,
    not_before: datetime | None = None,
) -> dict[str, object]:
    """A mail as an outbox row's columns. Recipients and body are sealed like any personal data."""
    if isinstance(msg, mail.Prepared):
        recipients, raw = msg.recipients, msg.raw
    else:
        recipients, raw = recipients_of(msg), msg.as_bytes(policy=mail.STORED)
    return {
        "kind": kind,
        "key_id": keyring.primary,
        "recipient_enc": keyring.seal(",".join(recipients), "recipient"),
        "message_enc": keyring.seal_bytes(raw, "message"),
        "signature_id": signature_id,
        "target": target,
        "state": QUEUED,
        "attempts": 0,
        "next_attempt_at": not_before or now,
        "created_at": now,
    }


def jittered(now: datetime, seconds: float) -> datetime:
    """`now` plus a random 0..`seconds` (from the system's CSPRNG: a prober must not predict it)."""
    return now + timedelta(seconds=_random.uniform(0, seconds)) if seconds else now


_random = random.SystemRandom()


def enqueue(session: Session, msg: EmailMessage | mail.Prepared, **how) -> OutboxMessage:
    """Add a mail to the caller's transaction (`how`: the keywords of `row_values`)."""
    row = OutboxMessage(**row_values(msg, **how))
    session.add(row)
    return row


def enqueue_many(session: Session, rows: list[dict[str, object]]) -> None:
    """Add many mails (made by `row_values`) to the caller's transaction in one statement."""
    driver_rows(session.connection(), OutboxMessage.__table__, rows)


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... capped at 2 h, with jitter so a recovered server is not hit all at once."""
    delay = min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_MAX)
    return delay * random.uniform(0.8, 1.2)


def claim(session: Session, *, now: datetime, limit: int) -> list[OutboxMessage]:
    """Take a lease on up to `limit` due rows. Several workers never hold the same row."""
    due = (
        select(OutboxMessage.id)
        .where(
            or_(
                (OutboxMessage.state == QUEUED) & (OutboxMessage.next_attempt_at <= now),
                (OutboxMessage.state == SENDING) & (OutboxMessage.lease_until < now),
            )
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(due))
    if not ids:
        return []
    # The state check repeats the WHERE: on SQLite (no row locks) it is what makes a claim exclusive.
    claimed = session.scalars(
        update(OutboxMessage)
        .where(
            OutboxMessage.id.in_(ids),
            or_(OutboxMessage.state == QUEUED, OutboxMessage.lease_until < now),
        )
        .values(state=SENDING, lease_until=now + LEASE)
        .returning(OutboxMessage.id)
    ).all()
    return list(
        session.scalars(
            select(OutboxMessage).where(OutboxMessage.id.in_(claimed)).order_by(OutboxMessage.id)
        )
    )


def sent_last_hour(session: Session, target: str, now: datetime) -> int:
    return session.scalar(
        select(func.count()).where(
            OutboxMessage.target == target, OutboxMessage.sent_at >= now - timedelta(hours=1)
        )
    ) or 0


def hold_target(session: Session, target: str, *, now: datetime) -> datetime:
    """A target over its hourly cap: move all its queued letters to when a slot frees, so a long queue for one
    official does not fill every claim and hold back the confirmation mails queued behind it."""
    oldest = session.scalar(
        select(func.min(OutboxMessage.sent_at)).where(
            OutboxMessage.target == target, OutboxMessage.sent_at >= now - timedelta(hours=1)
        )
    )
    free_at = max((oldest or now) + timedelta(hours=1), now + timedelta(minutes=5))
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.target == target, OutboxMessage.state == QUEUED, OutboxMessage.next_attempt_at < free_at)
        .values(next_attempt_at=free_at)
        .execution_options(synchronize_session=False)
    )
    return free_at


@dataclass
class Report:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    deferred: int = 0
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sent or self.retried or self.failed or self.deferred)


RECORD_EVERY = 50  # outcomes are committed in groups: a crash resends at most this many (same Message-IDs)


def deliver_due(
    db: Database,
    *,
    keyring: Keyring,
    transport: smtp.SMTPTransport | smtp.FileTransport,
    domain: str = "localhost",
    stamp: smtp.Stamp | None = None,
    now: datetime | None = None,
    batch: int = 100,
    target_hourly_cap: int = 30,
    max_attempts: int = 12,
) -> Report:
    """Claim one batch, send it over one connection, record the outcomes. Returns what happened.

    `stamp`: what each mail gets as it leaves (see `make_stamp`); by default keyed Message-IDs and bounce addresses,
    no DKIM. `domain`: the Message-ID's domain for a mail whose From has none."""
    stamp = stamp or make_stamp(keyring, fallback_domain=domain)
    clock_given = now is not None  # a caller's clock (tests, replays) also times outcomes and the next attempt
    now = now or utcnow()
    report = Report()
    with db.write.begin() as session:
        rows = claim(session, now=now, limit=batch)
        sent_per_target: dict[str, int] = {}
        held: dict[str, datetime] = {}
        plans: list[tuple[int, smtp.Envelope | str]] = []  # an envelope to send, or why the row cannot be sent
        for row in rows:
            if row.target:
                used = sent_per_target.setdefault(row.target, sent_last_hour(session, row.target, now))
                if used >= target_hourly_cap:
                    # Over the cap: put it back for later, costs no attempt.
                    row.state, row.lease_until = QUEUED, None
                    row.next_attempt_at = now + timedelta(minutes=5)
                    if row.target not in held:
                        held[row.target] = hold_target(session, row.target, now=now)
                    row.next_attempt_at = max(row.next_attempt_at, held[row.target])
                    report.deferred += 1
                    continue
                sent_per_target[row.target] = used + 1
            plans.append((row.id, _plan(row, keyring=keyring, stamp=stamp)))

    # Sending happens outside any transaction: a slow SMTP server never holds a database lock.
    outcomes: list[tuple[int, str, str | None]] = []
    for row_id, env in plans:
        if isinstance(env, str):
            outcomes.append((row_id, FAILED, env))
        else:
            try:
                transport.send(env)
                outcomes.append((row_id, SENT, None))
            except smtp.PermanentFailure as exc:
                outcomes.append((row_id, FAILED, str(exc)))
            except smtp.TemporaryFailure as exc:
                outcomes.append((row_id, QUEUED, str(exc)))
            except Exception as exc:  # one bad message fails alone: the batch goes on, and no lease stays behind
                log.exception("outbox: unexpected error sending message %s", row_id)
                outcomes.append((row_id, FAILED, f"cannot be sent: {type(exc).__name__}: {exc}"))
        if len(outcomes) >= RECORD_EVERY:
            _record(db, outcomes, now=now if clock_given else utcnow(), max_attempts=max_attempts, report=report)
            outcomes = []
    if outcomes:
        _record(db, outcomes, now=now if clock_given else utcnow(), max_attempts=max_attempts, report=report)
    return report


def _message_key(keyring: Keyring) -> bytes:
    return hmac.digest(keyring.index_keys[0], b"message-id v1", "sha256")


def message_id(keyring: Keyring, row_id: int, domain: str) -> str:
    """The Message-ID of an outbox row's every try (keyed: see smtp.message_id), `domain` that of its From."""
    return smtp.message_id(_message_key(keyring), row_id, domain)


def bounce_keys(keyring: Keyring) -> list[bytes]:
    """The keys of bounce addresses: the first seals, every one opens (data keys rotate; bounces come late)."""
    return [hmac.digest(key, b"bounce v1", "sha256") for key in keyring.index_keys]


def make_stamp(keyring: Keyring, settings: Settings | None = None, *, fallback_domain: str = "localhost"
               ) -> smtp.Stamp:
    """What the sender adds to each mail, from the data keys and the settings (bounce mailbox, DKIM key)."""
    local = settings.bounce_local if settings else "bounces"
    return smtp.Stamp(
        message_key=_message_key(keyring), bounce_key=bounce_keys(keyring)[0] if local else None,
        bounce_local=local, dkim=mail_auth.load(settings) if settings else None,
        fallback_domain=mail.mail_domain(settings) if settings else fallback_domain,
    )


def _plan(row: OutboxMessage, *, keyring: Keyring, stamp: smtp.Stamp) -> smtp.Envelope | str:
    """The row ready for the wire, or the reason it can never be sent (it then fails alone)."""
    try:
        recipients = [r for r in (keyring.open(row.recipient_enc, "recipient", row.key_id) or "").split(",") if r]
        if row.message_enc is None or not recipients:
            return "nothing to send (erased or empty)"
        raw = keyring.open_bytes(row.message_enc, "message", row.key_id)
        return smtp.envelope(raw, recipients=recipients, row_id=row.id, stamp=stamp)
    except Exception as exc:
        log.exception("outbox: message %s cannot be read", row.id)
        return f"cannot be read: {type(exc).__name__}: {exc}"


def _record(
    db: Database, outcomes: list[tuple[int, str, str | None]], *, now: datetime, max_attempts: int, report: Report,
) -> None:
    """One transaction for a group of outcomes; the sent ones (nearly all) in a single UPDATE."""
    sent = [row_id for row_id, state, _ in outcomes if state == SENT]
    # Stored in plain text and shown on the dashboard: no address may be in it.
    outcomes = [(row_id, state, error and smtp.redacted(error)[:1000]) for row_id, state, error in outcomes]
    with db.write.begin() as session:
        if sent:
            report.sent += session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(sent))  # a row erased meanwhile is simply gone
                .values(state=SENT, sent_at=now, last_error=None, lease_until=None,
                        attempts=OutboxMessage.attempts + 1)
                .execution_options(synchronize_session=False)
            ).rowcount
        for row_id, state, error in outcomes:
            if state == SENT:
                continue
            row = session.get(OutboxMessage, row_id)
            if row is None:
                continue
            row.attempts += 1
            row.lease_until = None
            if state == QUEUED and row.attempts < max_attempts:
                row.state, row.last_error = QUEUED, error
                row.next_attempt_at = now + backoff(row.attempts)
                report.retried += 1
            else:
                if state == QUEUED:
                    error = f"gave up after {row.attempts} attempts: {error}"
                row.state, row.last_error = FAILED, error
                report.failed += 1
            report.errors.append(error or "")


def drop_queued_for(session: Session, signature_ids: list[int]) -> int:
    """Erasure: queued mails of these signers are deleted, not sent."""
    if not signature_ids:
        return 0
    return session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.signature_id.in_(signature_ids), OutboxMessage.state.in_([QUEUED, SENDING])
        )
    ).rowcount


def drop_old_bodies(session: Session, *, now: datetime, days: int = 28) -> int:
    """Retention: a sent or failed mail keeps its row (for the outbox's figures) but not its body, recipient or
    error (a server's refusal may quote the address) once `days` have passed since it was sent or queued."""
    cutoff = now - timedelta(days=days)
    sent = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.state == SENT, OutboxMessage.sent_at < cutoff)
        .where(OutboxMessage.message_enc.is_not(None))
        .values(message_enc=None, recipient_enc=None)
    ).rowcount
    sent += session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.state == BOUNCED, OutboxMessage.sent_at < cutoff)
        .where(or_(OutboxMessage.message_enc.is_not(None), OutboxMessage.last_error.is_not(None)))
        .values(message_enc=None, recipient_enc=None, last_error=None)
    ).rowcount
    failed = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.state == FAILED, OutboxMessage.created_at < cutoff)
        .where(or_(OutboxMessage.message_enc.is_not(None), OutboxMessage.recipient_enc.is_not(None),
                   OutboxMessage.last_error.is_not(None)))
        .values(message_enc=None, recipient_enc=None, last_error=None)
    ).rowcount
    return sent + failed


class Worker(threading.Thread):
    """Runs deliver_due in a loop until stopped; used inside the server process and by `campaign outbox`."""

    def __init__(
        self, db: Database, *, keyring: Keyring, settings, poll_seconds: float = 1.0, on_idle=None, before=None
    ) -> None:
        super().__init__(name="outbox", daemon=True)
        self.db, self.keyring, self.settings = db, keyring, settings
        self.poll_seconds = poll_seconds
        self.on_idle = on_idle
        self.before = before  # a step run before each pass that may queue mail (notices.answerer)
        self.stopping = threading.Event()
        self.stamp = make_stamp(keyring, settings)  # here, not in the thread: a broken DKIM key fails the start

    def run(self) -> None:
        transport = smtp.transport(self.settings)
        try:
            while not self.stopping.is_set():
                if self.before:
                    self.before()
                try:
                    report = deliver_due(
                        self.db, keyring=self.keyring, transport=transport,
                        stamp=self.stamp,
                        target_hourly_cap=self.settings.target_hourly_cap,
                        max_attempts=self.settings.outbox_max_attempts,
                    )
                except Exception:  # the loop must survive a database hiccup
                    log.exception("outbox pass failed")
                    report = None
                if not report or not report.sent:
                    transport.close()  # idle: do not keep a connection open
                    if self.on_idle:
                        self.on_idle()
                    self.stopping.wait(self.poll_seconds)
        finally:
            transport.close()

    def stop(self, timeout: float = 10) -> None:
        self.stopping.set()
        self.join(timeout)
