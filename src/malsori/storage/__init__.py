"""Persistent storage of jobs and their results (SQLAlchemy 2.0: SQLite by default, PostgreSQL too)."""

from .database import create_tables, open_engine, session_factory
from .models import ApiKeyRow, Base, JobRow, SecretRow, UsageRow
from .repository import TERMINAL_STATES, JobRecord, JobRepository, JobState, utcnow

__all__ = [
    "open_engine",
    "create_tables",
    "session_factory",
    "Base",
    "JobRow",
    "ApiKeyRow",
    "UsageRow",
    "SecretRow",
    "JobState",
    "JobRecord",
    "JobRepository",
    "TERMINAL_STATES",
    "utcnow",
]
