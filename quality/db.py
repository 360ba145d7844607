"""Database access for the quality record: SQLite (WAL) embedded, PostgreSQL by URL.

The schema is owned by Alembic migrations (quality/migrations), applied by `migrate`, so a
plant's PostgreSQL record and a station's SQLite file evolve through the same steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, foreign keys and a busy timeout so readers never block writers."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - driver callback
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # As many pooled connections as the record's request threads (anyio's default: 40). With
    # SQLAlchemy's default (5, and 10 more closed on return), 50 stations posting at once made
    # the record open and close a PostgreSQL connection per request. Opened only when needed.
    # No server-side prepared statements: psycopg prepares a query after its 5th run, and
    # PostgreSQL then may keep a generic plan for it; for the andon's "first parts of this
    # station's model version" that plan scans the primary key past millions of rows (measured:
    # 4 s for one evaluation on 200,000 parts, 0.9 s without; docs/query-plans.md).
    # No JIT either: compiling took 68 ms of the Pareto query's 195 ms on 10 million parts,
    # more than it saved; the record's queries are short.
    connect_args = (
        {"prepare_threshold": None, "options": "-c jit=off"} if url.startswith("postgresql+psycopg") else {}
    )
    return create_engine(url, pool_pre_ping=True, pool_size=40, max_overflow=10, connect_args=connect_args)


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to the newest schema (alembic upgrade head), or to an earlier
    `revision` (the migration tests start records at each one)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def record_session(url: str | None = None) -> Iterator[Session]:
    """A session on the record at `url` (default: ZD_RECORD_URL), migrated to head first.

    What every command line tool that writes the record needs (stations, users, reviews
    exports, the demo): one place, so none of them can forget to migrate a fresh database.
    """
    from zerodefect.settings import get_settings

    url = url or get_settings().record_database_url
    migrate(url)
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()
