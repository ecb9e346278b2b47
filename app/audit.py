"""The audit log: who did what, when (sign-ins, exports, organiser and role changes, recorded deliveries and
replies), one row per act, written in the act's own transaction. Owners read it on the dashboard."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import AuditLog

EVERY = "*"  # an act that is no one campaign's (a sign-in)


def record(session: Session, *, organiser: str, action: str, campaign: str = EVERY, what: str = "",
           rows: int | None = None, now: datetime | None = None) -> AuditLog:
    row = AuditLog(organiser=organiser[:100], campaign=campaign, action=action, what=what[:200], rows=rows,
                   created_at=now or utcnow())
    session.add(row)
    session.flush()
    return row


def recent(session: Session, *, campaigns: Collection[str] | None = None, team: Collection[str] = (),
           limit: int = 30) -> list[AuditLog]:
    """Newest first; `campaigns` None: everything (an owner of every campaign), else those campaigns' acts and the
    sign-ins and sign-outs of `team` (the names of those campaigns' organisers): another campaign's organisers,
    and when they work, are not theirs to learn."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if campaigns is not None:
        query = query.where(AuditLog.campaign.in_(campaigns)
                            | ((AuditLog.campaign == EVERY) & AuditLog.organiser.in_(team)))
    return list(session.scalars(query))
