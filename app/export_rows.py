"""Reading and rendering signatures for an export: the cells no spreadsheet runs, the keyset-paged reader that
opens a page at a time, and forked workers that render id ranges while the parent writes them in id order (the
bytes never depend on how many processes made them). exports.py streams, logs and names what this renders.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from itertools import islice
from typing import Any, Literal

from app.db import Database
from app.encryption import Keyring
from app.models import CONFIRMED, PENDING, Signature

log = logging.getLogger(__name__)

Format = Literal["csv", "json"]
Status = Literal["confirmed", "pending", "all"]

SIGNATURE_COLUMNS = (
    "id", "name", "email", "city", "country", "language", "status", "created_at", "confirmed_at", "message",
    "opt_in_targets",
)

BATCH = 500  # rows per page read, and per chunk streamed, in one process (the web route)

SPAN = 20_000  # signature ids per range that a worker process reads and renders in one go

SPAN_PAGE = 5_000  # rows per page inside a range

# A spreadsheet runs a cell that starts with one of these (the full-width forms too, in some locales).
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

LEAD_SET = frozenset(FORMULA_LEADS)

# A spreadsheet may split a line on ";" (the Russian and Kazakh default list separator) or a tab rather than ",":
# then every separator inside a cell starts a field of its own. One that a lead would begin (after quotes or
# spaces, which the split can leave in front) gets an apostrophe right after the separator.
INNER_LEAD = re.compile("([,;\t])(?=[\" ]*[" + re.escape("".join(FORMULA_LEADS)) + "])")

def _inner_lead(line: str, *, commas: bool) -> bool:
    """Whether a separator in the line is followed (after quotes or spaces) by a lead; a split is cheaper than a
    regular expression here. Commas count only when a cell holds one (else they are the line's own)."""
    for sep in (";", "\t", ",") if commas else (";", "\t"):
        if sep in line:
            for part in line.split(sep)[1:]:
                if part.lstrip('" ')[:1] in LEAD_SET:
                    return True
    return False

def inert_csv(value: str) -> str:
    """A CSV cell that no spreadsheet runs, whichever of "," ";" or tab it splits the line on."""
    if value and value[0] in LEAD_SET:
        value = "'" + value
    return INNER_LEAD.sub("\\1'", value)

def inert(value: Any) -> Any:
    """A text cell that a spreadsheet would evaluate gets a leading apostrophe; other values pass unchanged."""
    if isinstance(value, str) and value[:1] in LEAD_SET:
        return "'" + value
    if isinstance(value, list):
        return [inert(v) for v in value]
    return value

@dataclass(frozen=True)
class SignatureQuery:
    campaign: str
    status: Status = "confirmed"
    since: date | None = None

    def describe(self, fmt: Format) -> str:
        return f"signatures {self.status} {fmt}" + (f" since {self.since.isoformat()}" if self.since else "")

def _stamper(parse: Callable[[Any], Any] | None) -> Callable[[Any], str | None]:
    """ISO 8601 text (seconds, UTC) of a timestamp as the driver hands it back. SQLite gives SQLAlchemy's own
    text form ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), which is cut instead of parsed; anything else goes through the
    column type, as an ORM read would."""
    parse = parse or (lambda value: value)

    def stamp(value: Any) -> str | None:
        if value is None:
            return None
        if value.__class__ is str and len(value) == 26 and value[10] == " " and value[19] == ".":
            return value[:10] + "T" + value[11:19] + "+00:00"
        return parse(value).isoformat(timespec="seconds")

    return stamp

class Reader:
    """Reads and opens the signatures of one query in one process: the driver's plain tuples (no ORM rows), one
    opt-in query per page, and each key's cipher called directly in the loop."""

    def __init__(self, db: Database, keyring: Keyring, query: SignatureQuery) -> None:
        self.db, self.keyring, self.query = db, keyring, query
        dialect = db.engine.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        # `|| ''` keeps these filters off the (campaign, status) index: paging must walk the primary key, or SQLite
        # without planner statistics re-reads the whole campaign for every page (quadratic on a big export).
        where = [f"campaign || '' = {mark}", "erased_at IS NULL"]
        params: list[Any] = [query.campaign]
        if query.status != "all":
            where.append(f"status || '' = {mark}")
            params.append(CONFIRMED if query.status == "confirmed" else PENDING)
        created = Signature.__table__.c.created_at.type
        if query.since:
            bind = created.bind_processor(dialect) or (lambda value: value)
            where.append(f"created_at >= {mark}")
            params.append(bind(datetime.combine(query.since, time(), tzinfo=UTC)))
        self.params = tuple(params)
        self.page_sql = (
            "SELECT id, key_id, name_enc, email_enc, city_enc, message_enc, country, language, status, created_at,"
            f" confirmed_at FROM signatures WHERE {' AND '.join(where)} AND id > {mark} AND id <= {mark}"
            f" ORDER BY id LIMIT {mark}"
        )
        self.opt_in_sql = (f"SELECT signature_id, target FROM target_opt_ins WHERE signature_id >= {mark}"
                           f" AND signature_id <= {mark} ORDER BY signature_id, target")
        self.stamp = _stamper(created.result_processor(dialect, None))

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A driver cursor inside one read transaction of its own."""
        with self.db.read() as session:
            cursor = session.connection().connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    @staticmethod
    def bounds(cursor) -> tuple[int, int]:
        """The lowest and highest signature id of any campaign (both cheap: the ends of the primary key)."""
        cursor.execute("SELECT min(id), max(id) FROM signatures")
        low, high = cursor.fetchone()
        return (low or 1), (high or 0)

    def pages(self, cursor, after: int, last: int, size: int) -> Iterator[tuple[list, dict[int, list[str]]]]:
        """(rows, opt-in targets by signature id) a page at a time, for the ids in (after, last]."""
        while after < last:
            cursor.execute(self.page_sql, (*self.params, after, last, size))
            rows = cursor.fetchall()
            if not rows:
                return
            opt_ins: dict[int, list[str]] = {}
            cursor.execute(self.opt_in_sql, (rows[0][0], rows[-1][0]))
            for signature_id, target in cursor.fetchall():
                opt_ins.setdefault(signature_id, []).append(target)
            yield rows, opt_ins
            if len(rows) < size:
                return
            after = rows[-1][0]

    def opened(self, rows: list, opt_ins: dict[int, list[str]]) -> Iterator[tuple]:
        """Each row opened, as a tuple in SIGNATURE_COLUMNS order (name and email None where absent)."""
        stamp, none = self.stamp, ()
        current, decrypt = None, None
        for sid, key_id, name, email, city, message, country, language, status, created, confirmed in rows:
            if key_id != current:
                current, decrypt = key_id, self.keyring.opener(key_id)
            yield (
                sid,
                None if name is None else decrypt(name, b"name").decode(),
                None if email is None else decrypt(email, b"email").decode(),
                "" if city is None else decrypt(city, b"city").decode(),
                country, language, status, stamp(created), stamp(confirmed),
                "" if message is None else decrypt(message, b"message").decode(),
                opt_ins.get(sid, none),
            )

    def csv_text(self, rows: list, opt_ins: dict[int, list[str]]) -> str:
        """CSV lines of one page, as csv.writer writes them; a cell a spreadsheet would run as a formula gets a
        leading apostrophe. The loop of opened() is repeated here, inline: this is the hot path of a big export,
        run once per exported row (bench/exports.py: 266 k rows/s against a 200 k goal), so its rules stay in one
        loop rather than a call per cell (radon rates it F on purpose)."""
        leads = LEAD_SET
        quoted = io.StringIO()
        writerow = csv.writer(quoted).writerow
        lines: list[str] = []
        append = lines.append
        current, decrypt = None, None
        for sid, key_id, name, email, city, message, country, language, status, created, confirmed in rows:
            if key_id != current:
                current, decrypt = key_id, self.keyring.opener(key_id)
            name = "" if name is None else decrypt(name, b"name").decode()
            email = "" if email is None else decrypt(email, b"email").decode()
            city = "" if city is None else decrypt(city, b"city").decode()
            message = "" if message is None else decrypt(message, b"message").decode()
            targets = opt_ins.get(sid)
            targets = ";".join(targets) if targets else ""
            # SQLite hands back SQLAlchemy's text form of UTC ("YYYY-MM-DD HH:MM:SS.ffffff"): cut, not parsed.
            if created.__class__ is str and len(created) == 26 and created[10] == " " and created[19] == ".":
                created = f"{created[:10]}T{created[11:19]}+00:00"
            else:
                created = self.stamp(created)
            if confirmed is None:
                confirmed = ""
            elif confirmed.__class__ is str and len(confirmed) == 26 and confirmed[10] == " " and confirmed[19] == ".":
                confirmed = f"{confirmed[:10]}T{confirmed[11:19]}+00:00"
            else:
                confirmed = self.stamp(confirmed)
            cells = (
                str(sid),
                "'" + name if name and name[0] in leads else name,
                "'" + email if email and email[0] in leads else email,
                "'" + city if city and city[0] in leads else city,
                "'" + country if country and country[0] in leads else country,
                "'" + language if language and language[0] in leads else language,
                "'" + status if status and status[0] in leads else status,
                created,  # ISO dates start with a digit
                confirmed,
                "'" + message if message and message[0] in leads else message,
                "'" + targets if targets and targets[0] in leads else targets,
            )
            line = ",".join(cells)
            # A separator inside a cell could start a formula where ";" or a tab splits the line: rare, so looked
            # for once in the whole line, and only then cell by cell.
            extra_commas = line.count(",") != 10
            if (extra_commas or ";" in line or "\t" in line) and _inner_lead(line, commas=extra_commas):
                cells = tuple(INNER_LEAD.sub("\\1'", cell) for cell in cells)
                line = ",".join(cells)
            # Where no cell holds a comma, a quote or a line break, csv.writer would write exactly this line; else
            # it writes it, quoted.
            if line.count(",") != 10 or '"' in line or "\n" in line or "\r" in line:
                quoted.seek(0)
                quoted.truncate()
                writerow(cells)
                line = quoted.getvalue()[:-2]  # without its "\r\n"
            append(line)
        return "\r\n".join(lines) + "\r\n" if lines else ""

    def json_text(self, rows: list, opt_ins: dict[int, list[str]]) -> str:
        """JSON objects of one page, joined by ",\\n"; every text value made inert."""
        objects = []
        for values in self.opened(rows, opt_ins):
            record = {key: inert(value) for key, value in zip(SIGNATURE_COLUMNS[:-1], values, strict=False)}
            record["opt_in_targets"] = [inert(target) for target in values[-1]]
            objects.append(json.dumps(record, ensure_ascii=False))
        return ",\n".join(objects)

    def text(self, fmt: Format, rows: list, opt_ins: dict[int, list[str]]) -> str:
        return self.csv_text(rows, opt_ins) if fmt == "csv" else self.json_text(rows, opt_ins)

    def render_range(self, fmt: Format, low: int, high: int) -> tuple[bytes, int]:
        """The selected signatures with ids in [low, high] as UTF-8 text (JSON objects joined by ",\\n"), and how
        many there are. One read transaction of its own."""
        parts: list[str] = []
        count = 0
        with self.cursor() as cursor:
            for rows, opt_ins in self.pages(cursor, low - 1, high, SPAN_PAGE):
                parts.append(self.text(fmt, rows, opt_ins))
                count += len(rows)
        return ("" if fmt == "csv" else ",\n").join(parts).encode(), count

_FORKED: Reader | None = None  # the reader a forked worker inherits (its keys never travel through a pipe)

def _render_forked(fmt: Format, low: int, high: int) -> tuple[bytes, int]:
    assert _FORKED is not None, "export workers must be forked"
    return _FORKED.render_range(fmt, low, high)

def rendered(reader: Reader, fmt: Format, ranges: list[tuple[int, int]], *, workers: int
              ) -> Iterator[tuple[bytes, int]]:
    """Each range rendered, in id order: here, or by forked workers with at most two ranges each in flight, so
    memory stays flat however slowly the output drains."""
    global _FORKED
    workers = min(workers or os.cpu_count() or 1, len(ranges))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for low, high in ranges:
            yield reader.render_range(fmt, low, high)
        return
    reader.db.engine.dispose()  # no connection may be shared across the fork
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _FORKED = reader
    # A pool of processes that tells a worker's death (ProcessPoolExecutor raises; a multiprocessing.Pool would wait
    # for the lost range forever). Forked: the workers share this process's loaded code and inherit the reader.
    # Each freezes what it inherited out of the garbage collector's reach: a full pass would otherwise walk the
    # whole inherited heap and copy it page by page (measured: two workers and the parent at 129 MB PSS, not 180).
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=gc.freeze)
    try:
        todo = iter(ranges)
        pending = deque(pool.submit(_render_forked, fmt, *bounds) for bounds in islice(todo, 2 * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(_render_forked, fmt, *bounds) for bounds in islice(todo, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED = None
