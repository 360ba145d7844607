"""The record's Alembic migrations, on SQLite and on PostgreSQL: a record made at any revision
(an empty one, or one at each earlier revision holding a row in every table) upgrades to head,
keeps its rows, and ends with exactly the schema the models declare.

The revisions come from the migrations' script directory, so a new migration is covered here
the day it lands, from the record before it and from every older one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from zerodefect.quality.db import MIGRATIONS, make_engine, migrate
from zerodefect.quality.models import Base

SCRIPTS = ScriptDirectory(str(MIGRATIONS))
HEAD = SCRIPTS.get_current_head()
# Oldest first; "base" is the empty database.
EARLIER = ["base", *[s.revision for s in reversed(list(SCRIPTS.walk_revisions())) if s.revision != HEAD]]
WHEN = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def sample_value(column: sa.Column) -> Any:
    """A value of the column's type that every constraint of a one-row table accepts. A foreign
    key gets 1: every table's seeded row has id 1."""
    if column.foreign_keys or column.primary_key:
        return 1
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return False
    if isinstance(kind, sa.Integer):
        return 3
    if isinstance(kind, sa.Float | sa.Numeric):
        return 0.5
    if isinstance(kind, sa.DateTime):
        return WHEN
    if isinstance(kind, sa.Date):
        return WHEN.date()
    if isinstance(kind, sa.String):  # Text and the dialects' VARCHARs are Strings too
        return column.name[: kind.length or None]
    raise AssertionError(f"no sample value for {column.table.name}.{column.name} ({kind!r}): add one here")


def seed_every_table(url: str) -> dict[str, dict[str, Any]]:
    """Insert one row into every table of the record at `url` as it stands; return the rows."""
    engine = make_engine(url)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    rows = {}
    with engine.begin() as db:
        for table in metadata.sorted_tables:  # referenced tables first
            if table.name == "alembic_version":
                continue
            rows[table.name] = {c.name: sample_value(c) for c in table.columns}
            db.execute(table.insert().values(rows[table.name]))
    engine.dispose()
    return rows


def same(stored: Any, seeded: Any) -> bool:
    """SQLite gives back naive datetimes for timezone-aware columns (stored as UTC)."""
    if isinstance(stored, datetime) and stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    if isinstance(seeded, date) and not isinstance(seeded, datetime) and isinstance(stored, datetime):
        stored = stored.date()
    return stored == seeded


@pytest.mark.parametrize("start", EARLIER)
def test_a_record_at_any_revision_upgrades_to_head_with_its_rows(empty_db: str, start: str) -> None:
    seeded = {}
    if start != "base":
        migrate(empty_db, start)
        seeded = seed_every_table(empty_db)
        assert seeded, f"revision {start} made no tables"
    migrate(empty_db)
    engine = make_engine(empty_db)
    with engine.connect() as db:
        context = MigrationContext.configure(db)
        assert context.get_current_revision() == HEAD
        # The migrations give the models' schema: tables, columns, types, nullability, indexes,
        # unique constraints and foreign keys.
        assert compare_metadata(context, Base.metadata) == []
        tables = sa.MetaData()
        tables.reflect(db)  # typed reads: SQLite keeps datetimes as text
        for name, row in seeded.items():
            stored = db.execute(sa.select(tables.tables[name])).mappings().all()
            assert len(stored) == 1, f"{name} has {len(stored)} rows after the upgrade from {start}"
            changed = {
                k: (stored[0][k], v) for k, v in row.items() if k in stored[0] and not same(stored[0][k], v)
            }
            assert changed == {}, f"{name}: upgrade from {start} changed (stored, seeded) {changed}"
    engine.dispose()
