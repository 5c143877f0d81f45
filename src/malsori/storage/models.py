"""The tables. One row per job; its transcript lives in the row as JSON (``Transcript.to_dict()``).
One row per meeting; its record (transcript, speakers, statistics) lives in the row as JSON too."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "JobRow", "MeetingRow"]


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    tenant_id: Mapped[str | None] = mapped_column(String(256), index=True)
    meeting_id: Mapped[str | None] = mapped_column(String(256), index=True)
    user_id: Mapped[str | None] = mapped_column(String(256))
    filename: Mapped[str | None] = mapped_column(String(1024))
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    upload_path: Mapped[str | None] = mapped_column(Text)
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """How many times a runner started this job (a crash mid-job leaves it counted)."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    """The queue worker running (or that ran) the job; None when this process's own runner did."""


class MeetingRow(Base):
    __tablename__ = "meetings"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(256), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    record: Mapped[dict] = mapped_column(JSON)
    """``malsori.analysis.meetings.Meeting.record()``: sessions, transcript, speakers, statistics."""
