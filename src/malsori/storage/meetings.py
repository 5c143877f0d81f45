"""Reading and writing meetings (``malsori.analysis.meetings``): one row each, its record as JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from .database import session_factory
from .models import MeetingRow

__all__ = ["MeetingRepository"]


class MeetingRepository:
    """A :class:`~malsori.analysis.meetings.MeetingStore` over SQLAlchemy (SQLite, PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = session_factory(engine)

    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the meeting's row with ``record``."""
        ended = record.get("ended_at")
        with self._session.begin() as db:
            row = db.get(MeetingRow, record["meeting_id"])
            if row is None:
                row = MeetingRow(id=record["meeting_id"], started_at=datetime.fromisoformat(record["started_at"]))
                db.add(row)
            row.state = record["state"]
            row.tenant_id = record.get("tenant_id")
            row.ended_at = datetime.fromisoformat(ended) if ended else None
            row.record = record

    def delete_ended_before(self, cutoff: datetime) -> int:
        """Remove meetings (their transcripts with them) that ended before ``cutoff``; how many (retention)."""
        with self._session.begin() as db:
            rows = db.scalars(select(MeetingRow).where(MeetingRow.ended_at.is_not(None), MeetingRow.ended_at < cutoff)).all()
            for row in rows:
                db.delete(row)
            return len(rows)

    def get(self, meeting_id: str) -> dict[str, Any] | None:
        with self._session() as db:
            row = db.get(MeetingRow, meeting_id)
            return None if row is None else dict(row.record)

    def list(
        self, *, tenant_id: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Newest first; each without its transcript (``transcript_finals`` says how long it is)."""
        query = select(MeetingRow).order_by(MeetingRow.started_at.desc(), MeetingRow.id)
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
