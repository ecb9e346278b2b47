"""Retention with a moved clock: a closed campaign's personal data goes `retention_days` after it closes, sent
mails lose their bodies after 28 days, expired unconfirmed signatures go a week after expiry; the outbox worker
runs it by itself, and so does `campaign retention`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import cli, counters, outbox, retention, signing
from app.db import Database, utcnow
from app.main import create_app
from app.models import OutboxMessage, Signature, SignatureCount
from tests.seed import add_signatures, signature_values
from tests.support import SIGNER, answer_notices, deliver, make_settings, settings_env

CLOSES = datetime(2027, 12, 31, 12, tzinfo=UTC)  # templates/letters/mamay/campaign.toml closes_on


def sign(svc, email: str, *, now: datetime) -> int:
    data = signing.validate({**SIGNER, "email": email, "message": "my words"})
    with svc.db.write.begin() as s:
        signed = signing.sign(s, campaign=svc.campaigns["mamay"], data=data, keyring=svc.keyring,
                              settings=svc.settings, now=now)
    answer_notices(svc, now=now)  # its confirmation mail
    return signed.signature_id


def personal(svc) -> list[tuple[str, bool]]:
    """(status, still holds personal data) of every signature row."""
    with svc.db.read() as s:
        return sorted((r.status, r.name_enc is not None and r.email_key is not None)
                      for r in s.scalars(select(Signature)))


def stored(svc) -> int:
    with svc.db.read() as s:
        return s.scalar(select(func.coalesce(func.sum(SignatureCount.confirmed), 0)))


def test_closed_campaign_is_anonymised_once_retention_has_passed(svc):
    now = utcnow()
    with svc.db.write.begin() as s:
        add_signatures(s, [
            signature_values(svc.keyring, name="A", email="a@example.org", created_at=now),
            signature_values(svc.keyring, name="B", email="b@example.org", created_at=now, country="KZ"),
            signature_values(svc.keyring, name="C", email="c@example.org", created_at=now, status="pending"),
        ])
    last_day = CLOSES + timedelta(days=svc.settings.retention_days)
    assert svc.settings.retention_days == 180

    for moment in (now, CLOSES, last_day):
        report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=moment)
        assert report.anonymised == 0
        assert personal(svc) == [("confirmed", True), ("confirmed", True), ("pending", True)]

    report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=last_day + timedelta(days=1))
    assert report.anonymised == 3
    assert personal(svc) == [("confirmed", False), ("confirmed", False)]  # the pending one is gone
    with svc.db.read() as s:
        assert all(r.erased_at is not None and r.city_enc is None and r.email_enc is None
                   for r in s.scalars(select(Signature)))
        assert counters.recount(s, "mamay") == stored(svc) == 2
    # A second run has nothing left to do.
    assert retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings,
                         now=last_day + timedelta(days=2)).anonymised == 0


def test_retention_days_come_from_settings(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, retention_days=30)
    from app.state import Services

    db = Database(settings.sqlalchemy_url)
    try:
        svc = Services.build(settings, db=db)
        with db.write.begin() as s:
            add_signatures(s, [signature_values(svc.keyring, name="A", email="a@example.org", created_at=utcnow())])
        day_31 = CLOSES + timedelta(days=31)
        assert retention.run(db, campaigns=svc.campaigns, settings=settings, now=day_31).anonymised == 1
    finally:
        db.dispose()


def test_sent_mail_bodies_are_dropped_after_28_days(svc, smtp):
    now = utcnow()

    def enqueue(to: str) -> None:
        with svc.db.write.begin() as s:
            outbox.enqueue(s, svc.composer.build(to=to, subject="s", body="b"), kind="x", keyring=svc.keyring,
                           now=now)

    enqueue("mail@example.org")
    deliver(svc, smtp.url, now=now)
    enqueue("later@example.org")  # queued, never sent: keeps its body

    def bodies() -> dict[str, bool]:
        with svc.db.read() as s:
            return {r.state: r.message_enc is not None and r.recipient_enc is not None
                    for r in s.scalars(select(OutboxMessage))}

    assert bodies() == {"sent": True, "queued": True}
    report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=now + timedelta(days=27))
    assert report.bodies_dropped == 0 and bodies() == {"sent": True, "queued": True}
    report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=now + timedelta(days=29))
    assert report.bodies_dropped == 1 and bodies() == {"sent": False, "queued": True}
    with svc.db.read() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 2  # the rows stay, for the figures


def test_unconfirmed_signatures_go_a_week_after_their_link_expires(svc, smtp):
    now = utcnow()
    sign(svc, "pending@example.org", now=now)
    deliver(svc, smtp.url, now=now)
    with svc.db.write.begin() as s:
        add_signatures(s, [signature_values(svc.keyring, name="Kept", email="kept@example.org", created_at=now)])
    expiry = now + timedelta(days=svc.settings.confirm_token_days)

    report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=expiry + timedelta(days=6))
    assert report.expired_deleted == 0 and personal(svc) == [("confirmed", True), ("pending", True)]

    report = retention.run(svc.db, campaigns=svc.campaigns, settings=svc.settings, now=expiry + timedelta(days=8))
    assert report.expired_deleted == 1 and personal(svc) == [("confirmed", True)]
    with svc.db.read() as s:
        mail = s.scalar(select(OutboxMessage))
        assert mail.signature_id is None and mail.message_enc is None and mail.recipient_enc is None
        assert counters.recount(s, "mamay") == stored(svc) == 1


def test_periodic_job_runs_at_most_once_per_period_and_never_raises():
    ticks = [0.0]
    calls = []

    def job():
        calls.append(ticks[0])
        if len(calls) == 2:
            raise RuntimeError("database hiccup")

    periodic = retention.Periodic(job, every=timedelta(hours=1), clock=lambda: ticks[0])
    for t in (0, 10, 3599, 3600, 3700, 7200, 7201):
        ticks[0] = float(t)
        periodic()  # the failing second run is logged, not raised
    assert calls == [0.0, 3600.0, 7200.0]


def test_the_outbox_worker_runs_retention_when_idle(tmp_path, sqlite_url, smtp):
    settings = make_settings(tmp_path, sqlite_url, outbox_in_process=True, smtp_url=smtp.url,
                             outbox_poll_seconds=0.05)
    db = Database(settings.sqlalchemy_url)
    try:
        from app.state import Services

        svc = Services.build(settings, db=db)
        old = utcnow() - timedelta(days=40)
        with db.write.begin() as s:
            row = outbox.enqueue(s, svc.composer.build(to="x@example.org", subject="s", body="b"), kind="x",
                                 keyring=svc.keyring, now=old)
            row.state, row.sent_at = "sent", old
        with TestClient(create_app(settings, db=db)):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with db.read() as s:
                    if s.scalar(select(OutboxMessage.message_enc)) is None:
                        break
                time.sleep(0.05)
        with db.read() as s:
            assert s.scalar(select(OutboxMessage.message_enc)) is None
    finally:
        db.dispose()


def test_cli_retention_reports_what_it_did(settings, svc, smtp):
    old = utcnow() - timedelta(days=30)
    sign(svc, "old@example.org", now=utcnow())
    with svc.db.write.begin() as s:
        s.execute(OutboxMessage.__table__.update().values(state="sent", sent_at=old))
    result = CliRunner().invoke(cli.app, ["retention"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert "dropped 1 sent or failed mail bodies" in " ".join(result.output.split())  # (the CLI wraps lines)
