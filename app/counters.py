"""Counts: the confirmed counter per campaign, country and day, and what of it may be shown.

The counter moves only in the transaction that confirms a row (`add`), so a recount from the rows always agrees.
Public figures are published once per period (a stored snapshot every process reads), their countries, days and
letters per target once per UTC day, and every cell of them is a multiple of the minimum cell size k: so no
total, and no change between two publications, is a group under k.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.campaigns import Campaign
from app.models import CONFIRMED, LetterRecord, PublicFigures, Signature, SignatureCount


def add(session: Session, *, campaign: str, country: str, day: date, delta: int = 1) -> None:
    """Move the counter, in the caller's transaction (the one that confirms the row)."""
    add_many(session, [{"campaign": campaign, "country": country, "day": day, "confirmed": delta}])


def add_many(session: Session, cells: list[dict[str, object]]) -> None:
    """Advance many cells ({campaign, country, day, confirmed}) in one statement (demo data loads this way)."""
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SignatureCount)
    stmt = stmt.on_conflict_do_update(
        index_elements=["campaign", "country", "day"],
        set_={"confirmed": SignatureCount.confirmed + stmt.excluded.confirmed},
    )
    session.execute(stmt, cells)


@dataclass(frozen=True)
class Stats:
    confirmed: int
    goal: int
    by_country: dict[str, int]  # ISO code -> count; "other" holds every folded cell
    by_day: dict[str, int]  # ISO date -> count
    by_target: dict[str, int] = field(default_factory=dict)  # target key -> letters; 0: fewer than k
    replies: tuple = ()  # the public replies from officials (replies.Listed), read by stats_cache.py


def exact_counts(session: Session, campaign: str, *, before: date | None = None
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """Per-country and per-day confirmed counts, unfolded: for organisers only (or of the days `before` a date)."""
    query = select(SignatureCount.country, SignatureCount.day, SignatureCount.confirmed).where(
        SignatureCount.campaign == campaign
    )
    if before is not None:
        query = query.where(SignatureCount.day < before)
    rows = session.execute(query).all()
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


def letter_countries(by_country: Mapping[str, int], k: int) -> frozenset[str]:
    """Countries whose folded public cell holds at least k supporters: only these may sign a letter. The pages
    and the letters sent from them pass the published cells (stats_cache), batches and packs the exact counts."""
    return frozenset(fold_countries(by_country, k)) - {"other"}


def _down(n: int, k: int) -> int:
    return n // k * k


def publish_countries(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """Public per-country cells: a country of k or more, rounded down to a multiple of k; "other" is the rounded
    total less those. Every cell is a multiple of k, so a change between two publications is 0 or at least k."""
    shown = {c: _down(n, k) for c, n in counts.items() if n >= k}
    published = dict(sorted(shown.items(), key=lambda cn: (-cn[1], cn[0])))
    other = _down(sum(counts.values()), k) - sum(shown.values())  # >= 0: a sum of floors is at most the floor
    if other:
        published["other"] = other
    return published


def publish_days(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """Public per-day cells: days are carried forward until they hold k, and a day shows its carry rounded down to
    a multiple of k (the rest carries on). The cells sum to the rounded total; the tail under k is not shown."""
    published: dict[str, int] = {}
    carry = 0
    for day, n in sorted(counts.items()):
        carry += n
        if carry >= k:
            published[day] = _down(carry, k)
            carry -= published[day]
    return published


def letters_by_target(session: Session, campaign: Campaign, *, before: datetime | None = None) -> dict[str, int]:
    """Letters to each target a signer can write to (bounced ones left out); with `before`, those recorded before
    that moment. A signer's letter to a target counts once however many ways they delivered it: counted per
    channel, two signers (sent for them, mail program, PDF) made a public cell of five, a group under k shown as
    k. An erased signer's rows no longer name their signature, so those count as their most used channel's rows:
    never more than the people who wrote."""
    where = [LetterRecord.campaign == campaign.slug]
    if before is not None:
        where += [LetterRecord.created_at < before,
                  LetterRecord.bounced_at.is_(None) | (LetterRecord.bounced_at >= before)]
    else:
        where.append(LetterRecord.bounced_at.is_(None))
    people = dict(session.execute(
        select(LetterRecord.target, func.count(func.distinct(LetterRecord.signature_id)))
        .where(*where, LetterRecord.signature_id.is_not(None)).group_by(LetterRecord.target)).all())
    erased: dict[str, int] = {}
    for target, n in session.execute(
        select(LetterRecord.target, func.count()).where(*where, LetterRecord.signature_id.is_(None))
        .group_by(LetterRecord.target, LetterRecord.channel)
    ):
        erased[target] = max(erased.get(target, 0), n)
    return {t.key: people.get(t.key, 0) + erased.get(t.key, 0) for t in campaign.targets if t.offered_to_signers}


def publish_targets(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """Public letters per target: rounded down to a multiple of k, so 0 means "fewer than k"."""
    return {target: _down(n, k) for target, n in counts.items()}


def publishable(session: Session, campaign: Campaign, *, k: int, today: date | None = None) -> Stats:
    """What would be published from the counters as they stand; with `today`, countries, days and letters per
    target as they stood when that day began (only ever shown through a period's snapshot).

    Letters per target wait for the day like countries: an embassy's letters come from its own country only, so a
    step in one period would place one signer of that country in a ten-minute window."""
    by_country, by_day = exact_counts(session, campaign.slug)
    total = sum(by_country.values())
    midnight = None
    if today is not None:
        by_country, by_day = exact_counts(session, campaign.slug, before=today)
        midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    return Stats(confirmed=_down(total, k), goal=campaign.goal, by_country=publish_countries(by_country, k),
                 by_day=publish_days(by_day, k),
                 by_target=publish_targets(letters_by_target(session, campaign, before=midnight), k))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period(now: datetime, every: timedelta) -> tuple[datetime, datetime]:
    """The publication period holding `now`: [start, end), boundaries counted from the epoch in whole
    microseconds, so every process finds the same ones."""
    step = every // timedelta(microseconds=1)
    since = (now - EPOCH) // timedelta(microseconds=1)
    start = EPOCH + timedelta(microseconds=since // step * step)
    return start, start + every


def published(session: Session, campaign: Campaign, *, starts_at: datetime) -> Stats | None:
    """The snapshot published for the period starting at `starts_at`, if one was written."""
    row = session.get(PublicFigures, (campaign.slug, starts_at))
    if row is None:
        return None
    return Stats(confirmed=row.confirmed, goal=campaign.goal, by_country=json.loads(row.by_country),
                 by_day=json.loads(row.by_day), by_target=json.loads(row.by_target or "{}"))


def public_stats(session: Session, campaign: Campaign, *, k: int, now: datetime, every: timedelta) -> Stats:
    """The public figures for the period holding `now`. The first caller in a period writes them from the
    counters (in a write transaction); everyone else, in any process, reads that same row, so no two answers for
    one period differ by the confirmations made in between."""
    starts_at, _ = period(now, every)
    found = published(session, campaign, starts_at=starts_at)
    if found is not None:
        return found
    # Countries and days as they stood at 00:00 UTC, the total as it stands: a prober who confirms signatures of
    # their own can learn a cell's exact count and hold it one below its next step, so that a step shows one
    # more confirmation; per period that would place one person's country in a ten-minute window.
    stats = publishable(session, campaign, k=k, today=starts_at.date())
    values = {"campaign": campaign.slug, "starts_at": starts_at, "confirmed": stats.confirmed,
              "by_country": json.dumps(stats.by_country), "by_day": json.dumps(stats.by_day),
              "by_target": json.dumps(stats.by_target)}
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(PublicFigures).values(**values)
    session.execute(insert.on_conflict_do_nothing(index_elements=["campaign", "starts_at"]))
    # A concurrent first writer may have won (our insert waited for it): answer what is stored, not what we built.
    found = published(session, campaign, starts_at=starts_at)
    assert found is not None  # written above, or by the writer our insert waited for
    return found


def recount(session: Session, campaign: str) -> int:
    """The confirmed count from the rows themselves: it must always equal the stored counter."""
    return session.scalar(
        select(func.count()).where(Signature.campaign == campaign, Signature.status == CONFIRMED)
    ) or 0
