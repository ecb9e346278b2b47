"""Retention: personal data is kept no longer than the campaign needs it.

- a closed campaign's signatures are anonymised (as by erasure) `retention_days` after it closes;
- sent and failed mails lose their body, recipient and error after 28 days (the row stays, for the figures);
- unconfirmed signatures whose confirmation expired more than 7 days ago are deleted.
Each step commits in small batches, so a large first run never holds the write lock for long. Run hourly by the
outbox worker loop and by `campaign retention`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import erasure, outbox
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.models import PENDING, Signature
from app.settings import UNCONFIRMED_GRACE_DAYS, Settings

log = logging.getLogger(__name__)
SENT_BODY_DAYS = 28
EXPIRED_GRACE = timedelta(days=UNCONFIRMED_GRACE_DAYS)  # Settings.unconfirmed_days, which mails state, counts it
BATCH = 500


@dataclass
class Report:
    anonymised: int = 0  # signatures of closed campaigns (confirmed kept as anonymous units, pending deleted)
    bodies_dropped: int = 0
    expired_deleted: int = 0

    def __str__(self) -> str:
        return (f"anonymised {self.anonymised} signatures of closed campaigns, dropped {self.bodies_dropped} "
                f"sent or failed mail bodies, deleted {self.expired_deleted} expired unconfirmed signatures")


def closed_long_ago(campaigns: Mapping[str, Campaign], *, retention_days: int, now: datetime) -> list[str]:
    """Slugs of campaigns that closed more than `retention_days` ago."""
    return [
        slug for slug, c in campaigns.items()
        if c.closes_on is not None and c.closes_on + timedelta(days=retention_days) < now.date()
    ]


def anonymise_closed(session: Session, *, slugs: list[str], now: datetime, limit: int = BATCH) -> int:
    """One batch of personal data of these campaigns forgotten; returns how many signatures (0: all done)."""
    if not slugs:
        return 0
    ids = list(session.scalars(
        select(Signature.id).where(Signature.campaign.in_(slugs), Signature.erased_at.is_(None)).limit(limit)
    ))
    return erasure.forget(session, ids, now=now).rows


def delete_expired(session: Session, *, now: datetime, limit: int = BATCH) -> int:
    """One batch of unconfirmed signatures whose link and code expired over a week ago; returns how many."""
    ids = list(session.scalars(
        select(Signature.id)
        .where(Signature.status == PENDING, Signature.confirm_expires_at < now - EXPIRED_GRACE)
        .limit(limit)
    ))
    return erasure.forget(session, ids, now=now).deleted


def run(db: Database, *, campaigns: Mapping[str, Campaign], settings: Settings, now: datetime | None = None
        ) -> Report:
    """Every retention step, each batch in its own transaction."""
    now = now or utcnow()
    report = Report()
    slugs = closed_long_ago(campaigns, retention_days=settings.retention_days, now=now)
    while True:
        with db.write.begin() as session:
            n = anonymise_closed(session, slugs=slugs, now=now)
        report.anonymised += n
        if n < BATCH:
            break
    with db.write.begin() as session:
        report.bodies_dropped = outbox.drop_old_bodies(session, now=now, days=SENT_BODY_DAYS)
    while True:
        with db.write.begin() as session:
            n = delete_expired(session, now=now)
        report.expired_deleted += n
        if n < BATCH:
            break
    return report


class Periodic:
    """A callable for the outbox worker's idle hook: runs `job` at most once per `every` (the first call runs it).

    Never raises: a failing run is logged and tried again next period, and the worker loop carries on."""

    def __init__(self, job: Callable[[], object], *, every: timedelta = timedelta(hours=1),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.every, self.clock = job, every.total_seconds(), clock
        self.last: float | None = None
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            now = self.clock()
            if self.last is not None and now - self.last < self.every:
                return
            self.last = now
        try:
            result = self.job()
            if result:
                log.info("retention: %s", result)
        except Exception:
            log.exception("retention run failed")


def hourly(db: Database, *, campaigns: Mapping[str, Campaign], settings: Settings) -> Periodic:
    return Periodic(lambda: run(db, campaigns=campaigns, settings=settings))
