"""Engine, sessions and the declarative Base shared by every table.

SQLite gets WAL and a busy timeout so concurrent writers wait instead of failing; every datetime is stored and
returned as timezone-aware UTC.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, DateTime, Engine, MetaData, Row, Table, create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def driver_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, object]], *,
                suffix: str = "") -> list[Row]:
    """INSERT `rows` (all with the same keys) with one multi-row statement per few thousand values, straight to
    the driver: SQLAlchemy's per-value bind processing costs more than the insert itself on the sign path. Values
    are put in the driver's form here (datetimes as UTCDateTime stores them); `suffix` is SQL after VALUES, e.g.
    an ON CONFLICT or RETURNING clause, and the rows it returns are returned."""
    if not rows:
        return []
    sqlite = connection.dialect.name == "sqlite"
    columns = list(rows[0])
    # A KeyError here names a column the table does not have.
    moments = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, UTCDateTime)]
    one = "(" + ", ".join(["?" if sqlite else "%s"] * len(columns)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
    per_statement = max(1, 30_000 // len(columns))  # under SQLite's and PostgreSQL's bound-parameter limits
    stored: dict[datetime, object] = {}  # a batch shares a few moments: each is converted once
    found: list[Row] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        params: list[object] = []
        for row in chunk:
            values = list(map(row.__getitem__, columns))
            for i in moments:
                moment = values[i]
                if moment is not None:
                    values[i] = stored.get(moment) or stored.setdefault(moment, _driver_moment(moment, sqlite))
            params += values
        result = connection.exec_driver_sql(head + ", ".join([one] * len(chunk)) + suffix, tuple(params))
        if result.returns_rows:
            found.extend(result.all())
    return found


def _driver_moment(value: datetime, sqlite: bool) -> object:
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use timezone-aware UTC")
    # On SQLite, what UTCDateTime and SQLAlchemy's DateTime store: naive UTC, microseconds always written.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else value


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode keeps every commit across a process crash (kill -9); only power loss may lose
            # the last transactions.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of one failing mid-way
        # on a lock upgrade ("database is locked").
        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            readonly = conn.get_execution_options().get("readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


class Database:
    """One engine and two session factories: `write` for changes, `read` for queries that change nothing
    (on SQLite those do not take the write lock, so readers never wait for writers)."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.engine = make_engine(url, **engine_kwargs)
        self.write = sessionmaker(self.engine, expire_on_commit=False)
        self.read = sessionmaker(self.engine.execution_options(readonly=True), expire_on_commit=False)
        self._checkpointer: _Checkpointer | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine, "checkout", self._checkpoint_mode)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # SQLite fsyncs a WAL database only when it copies the log back into the file (a checkpoint), and by default
    # the commit that crosses 1,000 logged pages does that itself: the sign intake's writer then stalls for the
    # fsyncs while every request waits for it. A served app checkpoints from a thread of its own instead; the
    # commits only append to the log (durable across a crash of the process, as before).
    def start_checkpoints(self, every: float = 0.25) -> None:
        path = self.engine.url.database
        if self.dialect == "sqlite" and self._checkpointer is None and path not in (None, "", ":memory:"):
            self._checkpointer = _Checkpointer(path, every)
            self._checkpointer.start()

    def stop_checkpoints(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()

    def _checkpoint_mode(self, dbapi_conn, record, _proxy) -> None:
        pages = 0 if self._checkpointer is not None else 1000  # 1000: SQLite's default
        if record.info.get("wal_autocheckpoint") != pages:
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            record.info["wal_autocheckpoint"] = pages

    def dispose(self) -> None:
        self.stop_checkpoints()
        self.engine.dispose()


class _Checkpointer(threading.Thread):
    def __init__(self, path: str, every: float) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.path, self.every = path, every
        self._stopping = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(self.every):
                self._checkpoint(conn)
            self._checkpoint(conn)
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        try:
            # PASSIVE: copies what no reader still needs, never waits for or blocks a writer.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            log.exception("WAL checkpoint failed; retrying")

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)
