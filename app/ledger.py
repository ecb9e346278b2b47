"""The delivery ledger: which signer's letter reached which target by which channel, which appeal packs the
organisation delivered, and the counts of both for organisers (dashboard, export).

A letter is recorded once per signer, target and channel, the first time (every recording is an INSERT … ON
CONFLICT DO NOTHING), in the transaction that hands it over. Erasure keeps the row, for the counts, without the
signature it came from. Public letter counts are counters.py's: published on its schedule, folded below k.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Select, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import counters, exports
from app.campaigns import Campaign, Target
from app.db import Database, UTCDateTime
from app.i18n import N_
from app.models import BATCH, CHANNELS, CONFIRMED, LetterRecord, PackDelivery, Signature, TargetOptIn

# How an appeal pack reached its target (PackDelivery.channel).
PACK_CHANNELS = ("registered-post", "post", "courier", "hand", "email", "online")
REFERENCE_MAX = 200
# The latest time zone is UTC+14: a date later than today there is in the future everywhere.
LATEST_ZONE = timedelta(hours=14)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class LedgerError(ValueError):
    """A recording refused (nothing was written): `message` is an English msgid, `params` fill it in."""

    def __init__(self, field_name: str, message: str, **params: object) -> None:
        super().__init__(message % params if params else message)
        self.field, self.message, self.params = field_name, message, params


def _insert(session: Session, model: type):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


# --- letters ---------------------------------------------------------------------------------------------------


def record(session: Session, *, signature_id: int, campaign: str, target: str, channel: str, now: datetime) -> bool:
    """Record one letter; False when it was recorded already (the first recording is kept)."""
    assert channel in CHANNELS
    stmt = _insert(session, LetterRecord).values(
        signature_id=signature_id, campaign=campaign, target=target, channel=channel, created_at=now,
    ).on_conflict_do_nothing(index_elements=["signature_id", "target", "channel"]).returning(LetterRecord.id)
    return session.execute(stmt).scalar() is not None


def record_selected(session: Session, ids: Select, *, campaign: str, target: str, now: datetime,
                    channel: str = BATCH) -> int:
    """Record a letter to `target` for every signature id `ids` selects, in one INSERT … SELECT (a batch of a
    million letters is one statement per target, not a million). Returns how many rows are new."""
    chosen = ids.subquery()
    rows = select(chosen.c.id, literal(campaign), literal(target), literal(channel),
                  literal(now, type_=UTCDateTime())).where(chosen.c.id.is_not(None))
    stmt = _insert(session, LetterRecord).from_select(
        ["signature_id", "campaign", "target", "channel", "created_at"], rows,
    ).on_conflict_do_nothing(index_elements=["signature_id", "target", "channel"])
    return session.execute(stmt).rowcount


def high_water(session: Session) -> int:
    """The newest ledger row's id: a batch excludes the letters recorded up to here, and records the same set."""
    return session.scalar(select(func.max(LetterRecord.id))) or 0


def delivered(target: str, *, upto: int):
    """A signature's letter to `target` is in the ledger (rows up to `upto`), by any channel: for a WHERE."""
    return exists().where(LetterRecord.signature_id == Signature.id, LetterRecord.target == target,
                          LetterRecord.id <= upto)


def delivered_count(session: Session, *, campaign: str, target: str, upto: int, where: list) -> int:
    """How many of the signatures `where` selects have a letter to `target` in the ledger (rows up to `upto`);
    counted from the ledger's side, whose rows are the fewer."""
    return session.scalar(
        select(func.count(func.distinct(LetterRecord.signature_id)))
        .join(Signature, Signature.id == LetterRecord.signature_id)
        .where(LetterRecord.campaign == campaign, LetterRecord.target == target, LetterRecord.id <= upto, *where)
    ) or 0


def delivered_pairs(session: Session, lo: int, hi: int, *, targets: list[str], upto: int) -> set[tuple[int, str]]:
    """(signature id, target) of every letter in the ledger (rows up to `upto`) for signatures lo..hi."""
    return {(sig, target) for sig, target in session.execute(
        select(LetterRecord.signature_id, LetterRecord.target).where(
            LetterRecord.signature_id.between(lo, hi), LetterRecord.target.in_(targets), LetterRecord.id <= upto)
    )}


@dataclass
class TargetRow:
    """One target's line on the dashboard and in the export: letters per channel, bounces, packs, replies."""

    key: str
    name: str
    letters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))
    bounced: int = 0
    packs: list[PackDelivery] = field(default_factory=list)
    replies: int = 0

    @property
    def total(self) -> int:
        return sum(self.letters.values())


def table(session: Session, campaign: Campaign, *, lang: str) -> list[TargetRow]:
    """Every target of the campaign × every channel, exact (organisers only), in the campaign's target order."""
    from app.models import Reply  # the replies' own module (replies.py) imports this one

    rows = {t.key: TargetRow(t.key, t.title[campaign.lang(lang)]) for t in campaign.targets}
    for target, channel, n, bounced in session.execute(
        select(LetterRecord.target, LetterRecord.channel, func.count(), func.count(LetterRecord.bounced_at))
        .where(LetterRecord.campaign == campaign.slug).group_by(LetterRecord.target, LetterRecord.channel)
    ):
        row = rows.setdefault(target, TargetRow(target, target))  # a target since removed from campaign.toml
        row.letters[channel] = row.letters.get(channel, 0) + n
        row.bounced += bounced
    for pack in session.scalars(select(PackDelivery).where(PackDelivery.campaign == campaign.slug)
                                .order_by(PackDelivery.delivered_on, PackDelivery.id)):
        rows.setdefault(pack.target, TargetRow(pack.target, pack.target)).packs.append(pack)
    for target, n in session.execute(select(Reply.target, func.count()).where(Reply.campaign == campaign.slug)
                                     .group_by(Reply.target)):
        rows.setdefault(target, TargetRow(target, target)).replies = n
    return list(rows.values())


# --- appeal packs ------------------------------------------------------------------------------------------------


def clean_text(value: str, limit: int) -> str:
    """One line of organiser text: control characters and line breaks removed, spaces collapsed."""
    return " ".join(CONTROL.sub(" ", value).split())[:limit]


def record_pack(
    session: Session, *, campaign: Campaign, target: str, delivered_on: date, channel: str, reference: str | None,
    recorded_by: str, now: datetime, supporters: int | None = None, named: int | None = None,
) -> PackDelivery:
    """Record the organisation's appeal pack delivered to one target. `supporters` defaults to the confirmed count
    now (erased signatures count, as in the pack), `named` to those who asked to be named to it. Raises
    LedgerError, with nothing written, on an unknown target, a date in the future or before the campaign, an
    unknown channel or a negative count."""
    found = check_dated(campaign, target, delivered_on, field="delivered_on", now=now,
                        future=N_("The delivery date %(date)s is in the future."),
                        before=N_("The delivery date %(date)s is before the campaign opened (%(opens)s)."))
    if channel not in PACK_CHANNELS:
        raise LedgerError("channel", N_("The channel must be one of: %(channels)s."), channels=", ".join(PACK_CHANNELS))
    reference = clean_text(reference or "", REFERENCE_MAX) or None
    if supporters is not None and supporters < 0 or named is not None and named < 0:
        raise LedgerError("supporters", N_("A number of supporters cannot be negative."))
    if supporters is None:
        by_country, _ = counters.exact_counts(session, campaign.slug)
        supporters = sum(by_country.values())
    if named is None:
        named = named_to(session, campaign.slug, found.key) if found.allows_names() else 0
    row = PackDelivery(campaign=campaign.slug, target=found.key, delivered_on=delivered_on, channel=channel,
                       reference=reference, supporters=supporters, named=named, recorded_by=recorded_by[:100],
                       created_at=now)
    session.add(row)
    session.flush()
    return row


def named_to(session: Session, campaign: str, target: str) -> int:
    """Confirmed supporters, not erased, who asked to be named to `target`: the pack's annex."""
    return session.scalar(
        select(func.count()).select_from(TargetOptIn).join(Signature, Signature.id == TargetOptIn.signature_id)
        .where(TargetOptIn.target == target, Signature.campaign == campaign, Signature.status == CONFIRMED,
               Signature.email_key.is_not(None))
    ) or 0


def check_dated(campaign: Campaign, target: str, day: date, *, field: str, now: datetime, future: str,
                before: str) -> Target:
    """The campaign's target `target`, for a record dated `day` (a pack delivered, a reply received); LedgerError
    on an unknown target, a day in the future anywhere on Earth, or one before the campaign opened."""
    found = campaign.target(target)
    if found is None:
        raise LedgerError("target", N_("No recipient %(target)s in this campaign; known: %(known)s."),
                          target=target, known=", ".join(t.key for t in campaign.targets))
    if day > (now + LATEST_ZONE).date():
        raise LedgerError(field, future, date=day.isoformat())
    if day < campaign.opens_on:
        raise LedgerError(field, before, date=day.isoformat(), opens=campaign.opens_on.isoformat())
    return found


def packs_delivered(session: Session, campaign: str, target: str) -> list[PackDelivery]:
    """The appeal packs delivered to one target, earliest first (empty: not delivered yet)."""
    return list(session.scalars(
        select(PackDelivery).where(PackDelivery.campaign == campaign, PackDelivery.target == target)
        .order_by(PackDelivery.delivered_on, PackDelivery.id)
    ))


# --- export ------------------------------------------------------------------------------------------------------

EXPORT_COLUMNS = ("target", "target_name", *CHANNELS, "letters", "bounced", "packs", "last_pack_on",
                  "last_pack_channel", "last_pack_reference", "replies")


def export_records(rows: list[TargetRow]) -> list[dict]:
    records = []
    for row in rows:
        last = row.packs[-1] if row.packs else None
        records.append({
            "target": row.key, "target_name": row.name, **row.letters, "letters": row.total, "bounced": row.bounced,
            "packs": len(row.packs), "last_pack_on": last.delivered_on.isoformat() if last else None,
            "last_pack_channel": last.channel if last else None,
            "last_pack_reference": last.reference if last else None,
            "replies": row.replies,
        })
    return records


def export(db: Database, *, campaign: Campaign, fmt: exports.Format, organiser: str, lang: str = "en"
           ) -> Iterator[str]:
    """The ledger's counts per target × channel as CSV or JSON (cells made inert), written to the export log."""
    with db.read() as session:
        records = export_records(table(session, campaign, lang=lang))
    log_id = exports.start_log(db, organiser=organiser, campaign=campaign.slug, what=f"ledger {fmt}")

    def stream() -> Iterator[str]:
        complete = False
        try:
            yield exports.count_text(fmt, EXPORT_COLUMNS, records)
            complete = True
        finally:
            exports.finish_log(db, log_id, rows=len(records), complete=complete)

    return stream()
