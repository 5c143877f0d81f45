"""The tables. One row per job; its transcript lives in the row as JSON (``Transcript.to_dict()``).
One row per meeting; its record (transcript, speakers, statistics) lives in the row as JSON too.
API keys (hashed), audio usage per tenant and day, and the server's own secrets (malsori.tenants)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "JobRow", "MeetingRow", "ApiKeyRow", "UsageRow", "SecretRow"]


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
    """The meeting id for a meeting without a tenant; else a digest of tenant and meeting id
    (``storage.meetings.row_id``): ids belong to tenants, and both ids together may be too long."""
    meeting_id: Mapped[str | None] = mapped_column(String(128), index=True)
    """The meeting id as sessions name it (None in rows written before it was added: ``id`` then)."""
    state: Mapped[str] = mapped_column(String(16), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(256), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    record: Mapped[dict] = mapped_column(JSON)
    """``malsori.analysis.meetings.Meeting.record()``: sessions, transcript, speakers, statistics."""


class ApiKeyRow(Base):
    """An API key: only its SHA-256 is kept (keys are 256-bit random, so a fast hash is enough)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The public part of the key (``msk_<id>_<secret>``), used to find the row."""
    tenant_id: Mapped[str] = mapped_column(String(256), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))
    """Space-separated: transcribe, read, admin."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    """This key's own request limit (None: the configured default)."""


class UsageRow(Base):
    """Audio seconds a tenant had transcribed, by UTC day and endpoint."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("tenant_id", "day", "endpoint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(256), index=True)
    day: Mapped[str] = mapped_column(String(10), index=True)
    """YYYY-MM-DD (UTC)."""
    endpoint: Mapped[str] = mapped_column(String(64))
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    requests: Mapped[int] = mapped_column(Integer, default=0)


class SecretRow(Base):
    """Secrets the server makes once and every gateway on the database shares (the token signing key)."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
