"""Reading and writing meetings (``malsori.analysis.meetings``): one row each, its record as JSON.

A meeting is known by its tenant and its id: the row's key is the id alone without a tenant, else a
digest of both (:func:`row_id`). Rows written before meeting ids were the tenant's own are keyed by
the id alone: they are still found by their tenant.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select

from .database import session_factory
from .models import MeetingRow

__all__ = ["MeetingRepository", "row_id"]


def row_id(meeting_id: str, tenant_id: str | None) -> str:
    """The key of the row of a tenant's meeting."""
    if tenant_id is None:
        return meeting_id
    return "t:" + hashlib.sha256(f"{tenant_id}\0{meeting_id}".encode()).hexdigest()


class MeetingRepository:
    """A :class:`~malsori.analysis.meetings.MeetingStore` over SQLAlchemy (SQLite, PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = session_factory(engine)

    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the meeting's row with ``record``."""
        ended = record.get("ended_at")
        meeting_id, tenant_id = record["meeting_id"], record.get("tenant_id")
        with self._session.begin() as db:
            row = self._row(db, meeting_id, tenant_id)
            if row is None:
                key = row_id(meeting_id, tenant_id)
                older = db.get(MeetingRow, key)
                if older is not None:  # a tenant's row keyed by the meeting id alone (older): moved to its own key
                    older.meeting_id = older.meeting_id or older.id
                    older.id = row_id(older.meeting_id, older.tenant_id)
                    db.flush()
                row = MeetingRow(id=key, started_at=datetime.fromisoformat(record["started_at"]))
                db.add(row)
            row.meeting_id = meeting_id
            row.state = record["state"]
            row.tenant_id = tenant_id
            row.ended_at = datetime.fromisoformat(ended) if ended else None
            row.record = record

    def delete_ended_before(self, cutoff: datetime) -> int:
        """Remove meetings (their transcripts with them) that ended before ``cutoff``; how many (retention)."""
        with self._session.begin() as db:
            rows = db.scalars(select(MeetingRow).where(MeetingRow.ended_at.is_not(None), MeetingRow.ended_at < cutoff)).all()
            for row in rows:
                db.delete(row)
            return len(rows)

    @staticmethod
    def _row(db: Any, meeting_id: str, tenant_id: str | None) -> MeetingRow | None:
        row = db.get(MeetingRow, row_id(meeting_id, tenant_id))
        if row is None and tenant_id is not None:  # written before ids were the tenant's own
            row = db.get(MeetingRow, meeting_id)
        return row if row is not None and row.tenant_id == tenant_id else None

    def get(self, meeting_id: str, tenant_id: str | None = None) -> dict[str, Any] | None:
        """The tenant's meeting (without a tenant: the meeting that has none)."""
        with self._session() as db:
            row = self._row(db, meeting_id, tenant_id)
            return None if row is None else dict(row.record)

    def find(self, meeting_id: str) -> dict[str, Any] | None:
        """The newest meeting of that id of any tenant (for a server without keys, where tenants are labels)."""
        query = (
            select(MeetingRow)
            .where(or_(MeetingRow.meeting_id == meeting_id, (MeetingRow.meeting_id.is_(None)) & (MeetingRow.id == meeting_id)))
            .order_by(MeetingRow.started_at.desc())
            .limit(1)
        )
        with self._session() as db:
            row = db.scalars(query).first()
            return None if row is None else dict(row.record)

    def list(
        self, *, tenant_id: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Newest first; each without its transcript (``transcript_finals`` says how long it is)."""
        query = select(MeetingRow).order_by(MeetingRow.started_at.desc(), MeetingRow.id)  # id: a stable order
        if tenant_id is not None:
            query = query.where(MeetingRow.tenant_id == tenant_id)
        if state is not None:
            query = query.where(MeetingRow.state == state)
        with self._session() as db:
            rows = db.scalars(query.limit(limit).offset(offset)).all()
            return [summary(row.record) for row in rows]

    def close(self) -> None:
        self.engine.dispose()


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A meeting's record less its transcript (for listings)."""
    out = {k: v for k, v in record.items() if k != "transcript"}
    out["transcript_finals"] = len(record.get("transcript", []))
    return out
