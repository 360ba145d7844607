"""Alembic environment for the quality record (run through zerodefect.quality.db.migrate)."""

from __future__ import annotations

from alembic import context

from zerodefect.quality.db import make_engine
from zerodefect.quality.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A batch migration on SQLite copies a table and drops the old one; with foreign keys
            # on, that DROP deletes the rows of every ON DELETE CASCADE child (a part's defects and
            # reviews). SQLite ignores this pragma inside a transaction: it runs before any, and
            # the engine is disposed after the migrations, so no connection keeps it off.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
