"""Exports for organisers: counts and signatures as CSV or JSON, streamed in constant memory, each one logged.

Signatures are read and rendered by export_rows.py (keyset pages, opened a page at a time; big exports in id ranges
by forked workers, written in id order). Every cell a spreadsheet could run as a formula is made inert, in CSV and
in JSON alike, and erased signatures are never exported.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from datetime import date, datetime
from typing import BinaryIO, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import audit, counters
from app.db import Database, utcnow
from app.encryption import Keyring
from app.export_rows import (  # the names callers use, from their one home
    BATCH,
    SIGNATURE_COLUMNS,
    SPAN,
    Format,
    Reader,
    SignatureQuery,
    Status,  # noqa: F401 - callers name it exports.Status
    inert,
    inert_csv,
    rendered,
)
from app.models import AuditLog

log = logging.getLogger(__name__)

CountsBy = Literal["country", "day"]
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


# --- what is exported -------------------------------------------------------------------------------------


# (head, before the first rows, between two pieces of rows, tail) of each format; in CSV a UTF-8 byte-order mark
# comes first, so spreadsheets read Cyrillic right.
FRAMES: dict[str, tuple[str, str, str, str]] = {
    "csv": ("\ufeff" + ",".join(SIGNATURE_COLUMNS) + "\r\n", "", "", ""),
    "json": ("[", "\n", ",\n", "\n]\n"),
}


def count_records(session: Session, *, campaign: str, by: CountsBy, lang: str = "en") -> list[dict]:
    """Exact confirmed counts per country (with its name) or per day. Organisers only: nothing is folded."""
    # Imported here: it pulls in the template stack, which a signature export (and its workers) need not load.
    from app import i18n

    by_country, by_day = counters.exact_counts(session, campaign)
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


def count_text(fmt: Format, columns: tuple[str, ...], records: list[dict]) -> str:
    """Counts as CSV (with the byte-order mark) or as a JSON array; every text cell made inert."""
    if fmt == "json":
        objects = [json.dumps({k: inert(v) for k, v in record.items()}, ensure_ascii=False) for record in records]
        return "[" + "".join(("\n" if i == 0 else ",\n") + o for i, o in enumerate(objects)) + "\n]\n"
    buf = io.StringIO()
    buf.write("\ufeff")
    writer = csv.writer(buf)
    writer.writerow(columns)
    for record in records:
        writer.writerow([inert_csv("" if record[c] is None else str(record[c])) for c in columns])
    return buf.getvalue()


# --- the log ----------------------------------------------------------------------------------------------


def start_log(db: Database, *, organiser: str, campaign: str, what: str, now: datetime | None = None) -> int:
    """Record an export before any row leaves (its own transaction): an interrupted export is logged too."""
    with db.write.begin() as session:
        return audit.record(session, organiser=organiser, action="export", campaign=campaign, what=what, now=now).id


def finish_log(db: Database, log_id: int, *, rows: int, complete: bool) -> None:
    with db.write.begin() as session:
        values: dict[str, object] = {"rows": rows}
        if not complete:
            what = session.scalar(select(AuditLog.what).where(AuditLog.id == log_id)) or ""
            values["what"] = (what + " (interrupted)")[:200]
        session.execute(update(AuditLog).where(AuditLog.id == log_id).values(**values))


def _finish(db: Database, log_id: int, *, rows: int, complete: bool) -> None:
    try:
        finish_log(db, log_id, rows=rows, complete=complete)
    except Exception:  # the export itself must not fail on its bookkeeping
        log.exception("could not record the end of export %s", log_id)


def signatures(db: Database, keyring: Keyring, query: SignatureQuery, *, organiser: str, fmt: Format) -> Iterator[str]:
    """The export as text, one chunk per BATCH rows, read in this process as the consumer asks (the web route).
    Logged now; the row count is recorded when the stream ends, or is abandoned."""
    log_id = start_log(db, organiser=organiser, campaign=query.campaign, what=query.describe(fmt))

    def stream() -> Iterator[str]:
        count, complete = 0, False
        head, first, between, tail = FRAMES[fmt]
        prefix = head + first
        try:
            reader = Reader(db, keyring, query)
            with reader.cursor() as cursor:
                _, last = reader.bounds(cursor)
                for rows, opt_ins in reader.pages(cursor, 0, last, BATCH):
                    count += len(rows)
                    yield prefix + reader.text(fmt, rows, opt_ins)
                    prefix = between
            yield (head if count == 0 else "") + tail
            complete = True
        finally:
            _finish(db, log_id, rows=count, complete=complete)

    return stream()


def write_signatures(
    db: Database, keyring: Keyring, query: SignatureQuery, out: BinaryIO, *, organiser: str, fmt: Format,
    workers: int = 0, span: int = SPAN,
) -> int:
    """Write the export to `out` (binary, UTF-8) and return how many signatures it holds. Id ranges of `span` are
    rendered by `workers` forked processes (0: one per CPU; 1: this process alone) and written in id order, so the
    bytes are those of `signatures` whatever the number of processes. Logged like every export.

    Each range is read in a short transaction of its own: a row changed while the export runs is written as it
    was when its range was read. Rows added after the export started are left out."""
    log_id = start_log(db, organiser=organiser, campaign=query.campaign, what=query.describe(fmt))
    count, complete = 0, False
    try:
        reader = Reader(db, keyring, query)
        with reader.cursor() as cursor:
            low, high = reader.bounds(cursor)
        ranges = [(start, min(start + span - 1, high)) for start in range(low, high + 1, span)]
        head, first, between, tail = (part.encode() for part in FRAMES[fmt])
        out.write(head)
        out.flush()  # nothing buffered may be copied into the forked workers
        before = first
        for data, n in rendered(reader, fmt, ranges, workers=workers):
            if n:
                out.write(before)
                out.write(data)
                before, count = between, count + n
        out.write(tail)
        out.flush()
        complete = True
    finally:
        _finish(db, log_id, rows=count, complete=complete)
    return count


def counts(db: Database, *, campaign: str, by: CountsBy, fmt: Format, organiser: str, lang: str = "en"
           ) -> Iterator[str]:
    with db.read() as session:
        records = count_records(session, campaign=campaign, by=by, lang=lang)
    log_id = start_log(db, organiser=organiser, campaign=campaign, what=f"counts by {by} {fmt}")

    def stream() -> Iterator[str]:
        complete = False
        try:
            yield count_text(fmt, COUNT_COLUMNS[by], records)
            complete = True
        finally:
            _finish(db, log_id, rows=len(records), complete=complete)

    return stream()


def filename(campaign: str, what: str, fmt: Format, *, today: date | None = None) -> str:
    return f"{campaign}-{what}-{(today or utcnow().date()).isoformat()}.{fmt}"
