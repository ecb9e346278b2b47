"""The migrations are the schema: run on an empty database they produce exactly what the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app import models  # noqa: F401 - registers the tables
from app.db import Base
from tests.conftest import migrate


def differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_on_an_empty_sqlite_file_match_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate(url)
    engine = create_engine(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert differences(url) == []


@pytest.mark.postgres
def test_migrations_on_postgresql_match_the_models(pg_url):
    assert differences(pg_url) == []


def test_no_column_can_hold_an_ip_address_or_plaintext_personal_data():
    """Personal fields exist only in sealed form; nothing is named like an address of a client."""
    for table in Base.metadata.tables.values():
        for column in table.columns:
            assert "ip" not in column.name.split("_"), f"{table.name}.{column.name}"
            if table.name in {"signatures", "outbox"} and column.name.startswith(
                ("name", "email", "city", "message", "recipient")
            ):
                assert column.name.endswith(("_enc", "_key")), f"{table.name}.{column.name} is not sealed"
