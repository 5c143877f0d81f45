"""The job service tests of ``test_jobs.py`` against PostgreSQL instead of SQLite.

Uses the PostgreSQL server on this machine (``MALSORI_TEST_PG``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``): a fresh database with a random name is
created for this module and dropped after it. Skipped only when no PostgreSQL server answers there.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url

# The same tests, collected again here with the PostgreSQL ``db_url`` below.
from test_jobs import (  # noqa: F401
    decoder,
    jfk,
    make_service,
    test_admission_refuses_jobs_past_the_pending_limit,
    test_bad_audio_is_refused_at_submission,
    test_cancel_a_queued_job_at_once,
    test_cancel_a_running_job_at_its_next_progress_report,
    test_clean_shutdown_puts_the_running_job_back_and_a_restart_finishes_it,
    test_job_runs_to_success_and_keeps_its_result,
    test_list_filters_by_tenant_meeting_and_state,
    test_progress_goes_from_zero_to_one,
    test_restart_recovery_requeues_or_fails_every_unfinished_job,
    test_unknown_job_is_not_found,
)

from malsori.storage import JobRow, open_engine

SERVER_URL = os.environ.get("MALSORI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _server_answers(url) -> str | None:
    """None when a PostgreSQL server accepts connections at ``url``, else why not."""
    import psycopg

    try:
        with psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database, connect_timeout=3
        ):
            return None
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__


@pytest.fixture(scope="module")
def pg_database() -> str:
    server = make_url(SERVER_URL)
    why_not = _server_answers(server)
    if why_not is not None:
        pytest.skip(f"no PostgreSQL server answers at {server.render_as_string(hide_password=True)}: {why_not}")
    name = f"malsori_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(pg_database) -> str:
    """The module's database, emptied before each test (the tests count every job in it)."""
    engine = open_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(delete(JobRow))
    engine.dispose()
    return pg_database


def test_the_database_really_is_postgresql(db_url):
    engine = open_engine(db_url)
    try:
        assert engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            assert conn.execute(text("select current_database()")).scalar() == make_url(db_url).database
            assert "jobs" in conn.execute(text("select tablename from pg_tables where schemaname = 'public'")).scalars().all()
    finally:
        engine.dispose()
