"""The migrations are the schema: run on an empty database they produce exactly what the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app import models  # noqa: F401 - registers the tables
from app.db import Base
from tests.support import migrate


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


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_migration_steps_down_and_up_again_keeping_the_rows(backend, tmp_path, request):
    """Each revision's downgrade undoes it (a bad release can be rolled back) and stored signatures survive."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from tests.support import alembic_config

    url = f"sqlite:///{tmp_path / 'steps.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    config = alembic_config(url)
    migrate(url)
    engine = create_engine(url)
    insert = text("INSERT INTO signatures (campaign, email_key, key_id, country, language, status, discreet, "
                  "code_attempts, created_at) VALUES ('mamay', :k, 'k1', 'KZ', 'en', 'pending', false, 0, "
                  "CURRENT_TIMESTAMP)")
    with engine.begin() as conn:
        conn.execute(insert, {"k": b"\x01" * 32})
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]  # newest first
    for revision in revisions[1:]:
        command.downgrade(config, revision)
    command.upgrade(config, "head")
    with engine.begin() as conn:
        assert conn.scalar(text("SELECT count(*) FROM signatures")) == 1
        with pytest.raises(Exception, match="(?i)unique"):  # the repeat-signer guard is back
            conn.execute(insert, {"k": b"\x01" * 32})
    with engine.begin() as conn:  # private-link hashes: unique where set, any number of rows without one
        conn.execute(insert, {"k": b"\x02" * 32})
        conn.execute(text("UPDATE signatures SET manage_token_hash = :h WHERE email_key = :k"),
                     {"h": b"\x09" * 32, "k": b"\x01" * 32})
    with engine.begin() as conn, pytest.raises(Exception, match="(?i)unique|duplicate"):
        conn.execute(text("UPDATE signatures SET manage_token_hash = :h WHERE email_key = :k"),
                     {"h": b"\x09" * 32, "k": b"\x02" * 32})
    engine.dispose()
    assert differences(url) == []
