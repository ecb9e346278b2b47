"""Exports for organisers: counts and signatures as CSV or JSON, streamed in constant memory, each one logged.

Signatures are read in keyset-paginated batches through a read session of the export's own and opened one row at a
time, so a million rows cost what one batch costs. Every cell a spreadsheet could run as a formula is made inert,
in CSV and in JSON alike, and erased signatures are never exported.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import i18n, signing
from app.db import Database, utcnow
from app.encryption import Keyring
from app.models import CONFIRMED, PENDING, ExportLog, Signature, TargetOptIn

log = logging.getLogger(__name__)

Format = Literal["csv", "json"]
Status = Literal["confirmed", "pending", "all"]
CountsBy = Literal["country", "day"]
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
SIGNATURE_COLUMNS = (
    "id", "name", "email", "city", "country", "language", "status", "created_at", "confirmed_at", "message",
    "opt_in_targets",
)
BATCH = 500
# A spreadsheet runs a cell that starts with one of these (the full-width forms too, in some locales).
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


LEAD_SET = frozenset(FORMULA_LEADS)


def inert(value: Any) -> Any:
    """A text cell that a spreadsheet would evaluate gets a leading apostrophe; other values pass unchanged."""
    if isinstance(value, str) and value[:1] in LEAD_SET:
        return "'" + value
    if isinstance(value, list):
        return [inert(v) for v in value]
    return value


# --- what is exported -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureQuery:
    campaign: str
    status: Status = "confirmed"
    since: date | None = None

    def describe(self, fmt: Format) -> str:
        return f"signatures {self.status} {fmt}" + (f" since {self.since.isoformat()}" if self.since else "")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def signature_records(db: Database, keyring: Keyring, query: SignatureQuery, *, batch: int = BATCH) -> Iterator[dict]:
    """One dict per signature, opened on the fly. Opens (and closes) its own read session."""
    columns = (
        Signature.id, Signature.key_id, Signature.name_enc, Signature.email_enc, Signature.city_enc,
        Signature.message_enc, Signature.country, Signature.language, Signature.status, Signature.created_at,
        Signature.confirmed_at,
    )
    # `|| ''` keeps these filters off the (campaign, status) index: paging must walk the primary key, or SQLite
    # without planner statistics re-reads the whole campaign for every page (quadratic on a big export).
    campaign, status = Signature.campaign.concat(""), Signature.status.concat("")
    where = [campaign == query.campaign, Signature.erased_at.is_(None)]
    if query.status == "confirmed":
        where.append(status == CONFIRMED)
    elif query.status == "pending":
        where.append(status == PENDING)
    if query.since:
        where.append(Signature.created_at >= datetime.combine(query.since, time(), tzinfo=UTC))
    last_id = 0
    with db.read() as session:
        while True:
            rows = session.execute(
                select(*columns).where(*where, Signature.id > last_id).order_by(Signature.id).limit(batch)
            ).all()
            if not rows:
                return
            opt_ins: dict[int, list[str]] = {}
            for signature_id, target in session.execute(
                select(TargetOptIn.signature_id, TargetOptIn.target)
                .where(TargetOptIn.signature_id.in_([r.id for r in rows]))
                .order_by(TargetOptIn.signature_id, TargetOptIn.target)
            ):
                opt_ins.setdefault(signature_id, []).append(target)
            for r in rows:
                yield {
                    "id": r.id,
                    "name": keyring.open(r.name_enc, "name", r.key_id),
                    "email": keyring.open(r.email_enc, "email", r.key_id),
                    "city": keyring.open(r.city_enc, "city", r.key_id) or "",
                    "country": r.country,
                    "language": r.language,
                    "status": r.status,
                    "created_at": _iso(r.created_at),
                    "confirmed_at": _iso(r.confirmed_at),
                    "message": keyring.open(r.message_enc, "message", r.key_id) or "",
                    "opt_in_targets": opt_ins.get(r.id, []),
                }
            last_id = rows[-1].id
            if len(rows) < batch:
                return


def count_records(session: Session, *, campaign: str, by: CountsBy, lang: str = "en") -> list[dict]:
    """Exact confirmed counts per country (with its name) or per day. Organisers only: nothing is folded."""
    by_country, by_day = signing.exact_counts(session, campaign)
    if by == "country":
        return [
            {"country": code, "country_name": i18n.country_name(code, lang), "confirmed": n}
            for code, n in by_country.items()
        ]
    return [{"day": day, "confirmed": n} for day, n in by_day.items()]


COUNT_COLUMNS: dict[str, tuple[str, ...]] = {
    "country": ("country", "country_name", "confirmed"),
    "day": ("day", "confirmed"),
}


# --- how it is written ------------------------------------------------------------------------------------


def csv_chunks(columns: Iterable[str], records: Iterable[dict], *, rows_per_chunk: int = BATCH) -> Iterator[str]:
    """CSV text with a UTF-8 byte-order mark (so spreadsheets read Cyrillic right), a few hundred rows a chunk."""
    columns = tuple(columns)
    buf = io.StringIO()
    writer = csv.writer(buf)
    buf.write("\ufeff")
    writer.writerow(columns)
    pending = 0
    leads = LEAD_SET
    for record in records:
        cells = []
        for value in map(record.__getitem__, columns):
            if value is None:
                value = ""
            elif isinstance(value, list):
                value = ";".join(value)
            elif not isinstance(value, str):
                value = str(value)
            cells.append("'" + value if value[:1] in leads else value)  # a formula a spreadsheet would run
        writer.writerow(cells)
        pending += 1
        if pending >= rows_per_chunk:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            pending = 0
    yield buf.getvalue()


def json_chunks(records: Iterable[dict], *, rows_per_chunk: int = BATCH) -> Iterator[str]:
    """A JSON array of objects, written as it is read."""
    parts = ["["]
    first = True
    for record in records:
        parts.append(("\n" if first else ",\n") + json.dumps({k: inert(v) for k, v in record.items()},
                                                              ensure_ascii=False))
        first = False
        if len(parts) >= rows_per_chunk:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n")
    yield "".join(parts)


def render(fmt: Format, columns: Iterable[str], records: Iterable[dict]) -> Iterator[str]:
    return csv_chunks(columns, records) if fmt == "csv" else json_chunks(records)


# --- the log ----------------------------------------------------------------------------------------------


def start_log(db: Database, *, organiser: str, campaign: str, what: str, now: datetime | None = None) -> int:
    """Record an export before any row leaves (its own transaction): an interrupted export is logged too."""
    with db.write.begin() as session:
        row = ExportLog(organiser=organiser[:100], campaign=campaign, what=what[:200], rows=None,
                        created_at=now or utcnow())
        session.add(row)
        session.flush()
        return row.id


def finish_log(db: Database, log_id: int, *, rows: int, complete: bool) -> None:
    with db.write.begin() as session:
        values: dict[str, object] = {"rows": rows}
        if not complete:
            what = session.scalar(select(ExportLog.what).where(ExportLog.id == log_id)) or ""
            values["what"] = (what + " (interrupted)")[:200]
        session.execute(update(ExportLog).where(ExportLog.id == log_id).values(**values))


class _Counted:
    def __init__(self, records: Iterable[dict]) -> None:
        self.records = records
        self.n = 0

    def __iter__(self) -> Iterator[dict]:
        for record in self.records:
            self.n += 1
            yield record


def logged(
    db: Database, *, organiser: str, campaign: str, what: str, fmt: Format, columns: Iterable[str],
    records: Iterable[dict] | Callable[[], Iterable[dict]],
) -> Iterator[str]:
    """Write the log row now, then return the text stream; the row count is recorded when the stream ends."""
    log_id = start_log(db, organiser=organiser, campaign=campaign, what=what)

    def stream() -> Iterator[str]:
        counted = _Counted(records() if callable(records) else records)
        complete = False
        try:
            yield from render(fmt, columns, counted)
            complete = True
        finally:
            try:
                finish_log(db, log_id, rows=counted.n, complete=complete)
            except Exception:  # the export itself must not fail on its bookkeeping
                log.exception("could not record the end of export %s", log_id)

    return stream()


def signatures(db: Database, keyring: Keyring, query: SignatureQuery, *, organiser: str, fmt: Format) -> Iterator[str]:
    return logged(
        db, organiser=organiser, campaign=query.campaign, what=query.describe(fmt), fmt=fmt,
        columns=SIGNATURE_COLUMNS, records=lambda: signature_records(db, keyring, query),
    )


def counts(db: Database, *, campaign: str, by: CountsBy, fmt: Format, organiser: str, lang: str = "en"
           ) -> Iterator[str]:
    with db.read() as session:
        records = count_records(session, campaign=campaign, by=by, lang=lang)
    return logged(
        db, organiser=organiser, campaign=campaign, what=f"counts by {by} {fmt}", fmt=fmt,
        columns=COUNT_COLUMNS[by], records=records,
    )


def filename(campaign: str, what: str, fmt: Format, *, today: date | None = None) -> str:
    return f"{campaign}-{what}-{(today or utcnow().date()).isoformat()}.{fmt}"


def recent(session: Session, *, limit: int = 20, campaign: str | None = None) -> list[ExportLog]:
    """The export log, newest first, for the dashboard."""
    query = select(ExportLog).order_by(ExportLog.id.desc()).limit(limit)
    if campaign:
        query = query.where(ExportLog.campaign == campaign)
    return list(session.scalars(query))
