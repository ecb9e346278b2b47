"""Counts: the confirmed counter per campaign, country and day, and what of it may be shown.

The counter moves only in the transaction that confirms a row (`add`), so a recount from the rows always agrees.
Public figures fold every cell under the minimum cell size into "other", so no small group can be picked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.campaigns import Campaign
from app.models import CONFIRMED, Signature, SignatureCount


def add(session: Session, *, campaign: str, country: str, day: date, delta: int = 1) -> None:
    """Move the counter, in the caller's transaction (the one that confirms the row)."""
    values = {"campaign": campaign, "country": country, "day": day, "confirmed": delta}
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SignatureCount).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["campaign", "country", "day"],
        set_={"confirmed": SignatureCount.confirmed + stmt.excluded.confirmed},
    )
    session.execute(stmt)


@dataclass(frozen=True)
class Stats:
    confirmed: int
    goal: int
    by_country: dict[str, int]  # ISO code -> count; "other" holds every folded cell
    by_day: dict[str, int]  # ISO date -> count


def exact_counts(session: Session, campaign: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per-country and per-day confirmed counts, unfolded: for organisers only."""
    rows = session.execute(
        select(SignatureCount.country, SignatureCount.day, SignatureCount.confirmed).where(
            SignatureCount.campaign == campaign
        )
    ).all()
    by_country: dict[str, int] = {}
    by_day: dict[str, int] = {}
    for country, day, n in rows:
        by_country[country] = by_country.get(country, 0) + n
        by_day[day.isoformat()] = by_day.get(day.isoformat(), 0) + n
    return dict(sorted(by_country.items(), key=lambda kv: (-kv[1], kv[0]))), dict(sorted(by_day.items()))


def fold_countries(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """Countries under k go to "other"; if "other" itself is then under k (but not empty), the smallest shown
    countries join it too, so that total minus the shown countries never reveals a cell under k."""
    shown = sorted(((c, n) for c, n in counts.items() if n >= k), key=lambda cn: (cn[1], cn[0]))
    other = sum(n for n in counts.values() if n < k)
    while 0 < other < k and shown:
        other += shown.pop(0)[1]
    folded = dict(sorted(shown, key=lambda cn: (-cn[1], cn[0])))
    if other:
        folded["other"] = other
    return folded


def fold_days(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """A day under k is carried into the next day; a tail still under k is reported as "other"."""
    folded: dict[str, int] = {}
    carry = 0
    for day, n in sorted(counts.items()):
        carry += n
        if carry >= k:
            folded[day] = carry
            carry = 0
    if carry:
        folded["other"] = carry
    return folded


def public_stats(session: Session, campaign: Campaign, *, k: int) -> Stats:
    by_country, by_day = exact_counts(session, campaign.slug)
    return Stats(
        confirmed=sum(by_country.values()),
        goal=campaign.goal,
        by_country=fold_countries(by_country, k),
        by_day=fold_days(by_day, k),
    )


def recount(session: Session, campaign: str) -> int:
    """The confirmed count from the rows themselves: it must always equal the stored counter."""
    return session.scalar(
        select(func.count()).where(Signature.campaign == campaign, Signature.status == CONFIRMED)
    ) or 0


def country_is_public(session: Session, campaign: str, country: str, *, k: int) -> bool:
    """Whether naming this country beside an anonymous supporter keeps them among at least k others."""
    by_country, _ = exact_counts(session, campaign)
    return country in fold_countries(by_country, k)
