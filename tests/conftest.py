"""Real parts for the tests: a migrated SQLite file per test, PostgreSQL on 127.0.0.1:5432 (a fresh schema per
test, skipped with the reason where absent), an aiosmtpd server on loopback that keeps what it receives, and the
app built from its own Settings. Nothing here patches the code under test.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.db import Database
from app.main import create_app
from app.settings import Settings
from app.state import Services
from tests.support import (
    PARTNER,
    PG_ADMIN_URL,
    START,
    Clock,
    SMTPServer,
    make_settings,
    migrate,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run soak tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="soak test: run with `make soak`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test copies it (much faster than migrating again)."""
    path = tmp_path_factory.mktemp("template") / "campaign.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "campaign.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def _postgres_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means: no usable server here
        return f"PostgreSQL not reachable at 127.0.0.1:5432/test ({type(exc).__name__}: {str(exc)[:120]})"


@pytest.fixture(scope="session")
def postgres_reason() -> str | None:
    return _postgres_available()


@pytest.fixture
def pg_url(postgres_reason: str | None) -> Iterator[str]:
    """A migrated, empty schema of its own on the PostgreSQL server; dropped afterwards."""
    if postgres_reason:
        pytest.skip(postgres_reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(tmp_path, sqlite_url)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.sqlalchemy_url)
    yield database
    database.dispose()


@pytest.fixture
def svc(settings: Settings, db: Database) -> Services:
    return Services.build(settings, db=db)


@pytest.fixture
def pg_svc(tmp_path: Path, pg_url: str) -> Iterator[Services]:
    """The app's services on a fresh PostgreSQL schema (skipped where there is no server)."""
    database = Database(pg_url)
    yield Services.build(make_settings(tmp_path, pg_url), db=database)
    database.dispose()


@pytest.fixture
def client(svc: Services) -> Iterator[TestClient]:
    """The app around the test's own `svc`: one database, one intake, one stats cache for both."""
    with TestClient(create_app(services=svc), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def partner_client(tmp_path: Path, sqlite_url: str) -> Iterator[TestClient]:
    """The app with partner sites listed in CAMPAIGN_FRAME_ANCESTORS (the embed's tests)."""
    settings = make_settings(tmp_path, sqlite_url, frame_ancestors=[PARTNER, "https://*.allies.example:8443"])
    db = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings, db=db), base_url="http://testserver") as client:
        yield client
    db.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def app(settings: Settings, db: Database, clock: Clock) -> Iterator[TestClient]:
    """The app on its own services, reading `clock` (which the test moves) for the figures' periods."""
    with TestClient(create_app(settings, db=db, clock=clock), base_url="http://testserver") as c:
        yield c
