"""Alembic environment: the URL comes from Settings (or the caller's config), the schema from app.models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from app import models  # noqa: F401 - registers every table on Base.metadata
from app.db import Base, make_engine
from app.settings import load_settings

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or load_settings().sqlalchemy_url
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
