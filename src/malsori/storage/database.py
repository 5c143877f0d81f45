"""Opening the database: one SQLAlchemy engine per process, tables created on start.

SQLite (the default, a file under the data directory) runs in WAL mode so readers (GET /v1/jobs)
never wait for the job runner's writes, with ``synchronous=FULL`` so a job the API accepted is on
disk before the 202 goes out, and a busy timeout so two processes on one file (a server being
restarted over a dying one) wait for each other instead of failing. It is not pooled (see
:func:`open_engine`): an idle server holds no database file open. PostgreSQL works with a
``postgresql+psycopg://`` URL (``pip install 'malsori[postgres]'``).

Tables are created with ``metadata.create_all`` at start: the schema is one table, so there are no
migrations yet; a schema change will need Alembic. The one column added since (``jobs.worker``,
nullable) is added to an older database at start (:data:`_ADDED_COLUMNS`).
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from ..errors import InvalidOptionsError
from .models import Base

__all__ = ["open_engine", "create_tables", "session_factory"]


def open_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``), tables created."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends: a URL a person typed
        raise InvalidOptionsError(f"the database URL {url!r} is not a valid SQLAlchemy URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # A file database gets no pool: each request opens its connection (about 1 ms more per query
        # or write, measured) and closes it. A pooled connection would hold a lock on the file, and
        # while one does SQLite keeps the descriptor of every other connection closed meanwhile (its
        # locks are per process), so an idle server held as many open files as its busiest moment
        # had connections. With none held, an idle server has the database closed and its WAL
        # checkpointed into it. An in-memory database keeps SQLAlchemy's default (one connection).
        pool = {"poolclass": NullPool} if parsed.database and parsed.database != ":memory:" else {}
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg"):
            _require_psycopg()
        engine = create_engine(parsed, pool_pre_ping=True)
    create_tables(engine)
    return engine


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise InvalidOptionsError("a PostgreSQL database needs the psycopg driver: pip install 'malsori[postgres]'") from None


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_ADDED_COLUMNS = {"jobs": {"worker": "VARCHAR(200)"}, "meetings": {"meeting_id": "VARCHAR(128)"}}
"""Nullable columns added after the first release: ``create_all`` does not add columns to a table that exists."""


def create_tables(engine: Engine) -> None:
    # Processes that start together on a fresh database (scaled out: gateways and workers) race to
    # create the table; the loser's CREATE fails (PostgreSQL: duplicate pg_type), and its retry finds
    # the table there (create_all checks first).
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            break
        except DatabaseError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    for table, columns in _ADDED_COLUMNS.items():
        present = {c["name"] for c in inspect(engine).get_columns(table)}
        for name, sql_type in columns.items():
            if name not in present:
                with engine.begin() as conn:
                    # Two processes may start at once on one database: the loser's ALTER fails harmlessly.
                    try:
                        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))
                    except Exception:
                        if name not in {c["name"] for c in inspect(engine).get_columns(table)}:
                            raise


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
