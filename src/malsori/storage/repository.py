"""Reading and changing jobs. Every state change is one conditional UPDATE (``WHERE state = ...``),
so a runner finishing a job and a client cancelling it at the same moment cannot both win, whichever
process or thread they run in."""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast, overload

from sqlalchemy import ColumnElement, CursorResult, Engine, case, delete, func, select, update

from .database import session_factory
from .models import JobRow

__all__ = ["JobState", "JobRecord", "JobRepository", "TERMINAL_STATES", "utcnow"]


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    # SQLite keeps no time zone: every time we write is UTC, so read it back as UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class JobRecord:
    """One job as stored."""

    id: str
    state: JobState
    created_at: datetime
    progress: float = 0.0
    tenant_id: str | None = None
    meeting_id: str | None = None
    user_id: str | None = None
    filename: str | None = None
    options: dict = field(default_factory=dict)
    upload_path: str | None = None
    audio_seconds: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    result: dict | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    worker: str | None = None
    """The queue worker running or that ran the job (None: the server's own runner)."""

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_row(cls, row: JobRow) -> JobRecord:
        return cls(
            id=row.id,
            state=JobState(row.state),
            created_at=_utc(row.created_at),
            progress=row.progress or 0.0,
            tenant_id=row.tenant_id,
            meeting_id=row.meeting_id,
            user_id=row.user_id,
            filename=row.filename,
            options=dict(row.options or {}),
            upload_path=row.upload_path,
            audio_seconds=row.audio_seconds,
            error_code=row.error_code,
            error_message=row.error_message,
            result=row.result,
            started_at=_utc(row.started_at),
            finished_at=_utc(row.finished_at),
            attempts=row.attempts or 0,
            cancel_requested=bool(row.cancel_requested),
            worker=row.worker,
        )


class JobRepository:
    """Thread-safe: each call uses its own short session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)

    # -- reading -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._sessions() as session:
            row = session.get(JobRow, job_id)
            return JobRecord.from_row(row) if row is not None else None

    def list(
        self,
        *,
        tenant_id: str | None = None,
        meeting_id: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[builtins.list[JobRecord], int]:  # builtins: inside the class, `list` is this method
        """Newest first, and the total number of jobs matching the filters."""
        conditions = []
        if tenant_id is not None:
            conditions.append(JobRow.tenant_id == tenant_id)
        if meeting_id is not None:
            conditions.append(JobRow.meeting_id == meeting_id)
        if state is not None:
            conditions.append(JobRow.state == JobState(state).value)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(JobRow).where(*conditions)) or 0
            newest_first = select(JobRow).where(*conditions).order_by(JobRow.created_at.desc(), JobRow.id)
            rows = session.scalars(newest_first.limit(limit).offset(offset)).all()
            return [JobRecord.from_row(r) for r in rows], int(total)

    def count(self, *states: JobState) -> int:
        with self._sessions() as session:
            query = select(func.count()).select_from(JobRow)
            if states:
                query = query.where(JobRow.state.in_([JobState(s).value for s in states]))
            return int(session.scalar(query) or 0)

    def unfinished(self) -> builtins.list[JobRecord]:
        """Queued and running jobs, oldest first (what a restart has to deal with)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
                .order_by(JobRow.created_at, JobRow.id)
            ).all()
            return [JobRecord.from_row(r) for r in rows]

    # -- changing ----------------------------------------------------------------------------------
    def add(self, record: JobRecord) -> JobRecord:
        row = JobRow(
            id=record.id,
            state=record.state.value,
            progress=record.progress,
            tenant_id=record.tenant_id,
            meeting_id=record.meeting_id,
            user_id=record.user_id,
            filename=record.filename,
            options=dict(record.options),
            upload_path=record.upload_path,
            audio_seconds=record.audio_seconds,
            error_code=record.error_code,
            error_message=record.error_message,
            result=record.result,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            worker=record.worker,
        )
        with self._sessions.begin() as session:
            session.add(row)
        return record

    def _update(
        self, job_id: str, from_states: Iterable[JobState], extra_where: Sequence[ColumnElement[bool]] = (), **values: Any
    ) -> bool:
        states = [JobState(s).value for s in from_states]
        with self._sessions.begin() as session:
            # An UPDATE gives a CursorResult (it has rowcount); Session.execute is typed for any statement.
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state.in_(states), *extra_where)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                ),
            )
            return result.rowcount == 1

    def claim(self, job_id: str, *, worker: str | None = None) -> JobRecord | None:
        """queued -> running (attempts + 1), run by ``worker``; None when the job is no longer queued."""
        if not self._update(
            job_id,
            [JobState.QUEUED],
            state=JobState.RUNNING.value,
            started_at=utcnow(),
            progress=0.0,
            attempts=JobRow.attempts + 1,
            worker=worker,
        ):
            return None
        return self.get(job_id)

    def set_progress(self, job_id: str, progress: float) -> bool:
        """False when the job is no longer running or someone asked to cancel it."""
        return self._update(
            job_id,
            [JobState.RUNNING],
            extra_where=[JobRow.cancel_requested.is_(False)],
            progress=max(0.0, min(1.0, float(progress))),
        )

    def set_audio_seconds(self, job_id: str, seconds: float) -> bool:
        return self._update(job_id, [JobState.RUNNING], audio_seconds=float(seconds))

    def succeed(self, job_id: str, result: dict) -> bool:
        return self._update(
            job_id,
            [JobState.RUNNING],
            state=JobState.SUCCEEDED.value,
            progress=1.0,
            result=result,
            finished_at=utcnow(),
        )

    def fail(self, job_id: str, code: str, message: str, *, from_states: Iterable[JobState] = (JobState.RUNNING,)) -> bool:
        return self._update(
            job_id,
            from_states,
            state=JobState.FAILED.value,
            error_code=code,
            error_message=message,
            finished_at=utcnow(),
        )

    def cancel(self, job_id: str, *, from_states: Iterable[JobState] = (JobState.QUEUED,)) -> bool:
        return self._update(job_id, from_states, state=JobState.CANCELLED.value, finished_at=utcnow())

    def request_cancel(self, job_id: str) -> bool:
        """Mark a running job to stop at its next progress report."""
        return self._update(job_id, [JobState.RUNNING], cancel_requested=True)

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row (its transcript with it); False when it is not finished or gone."""
        with self._sessions.begin() as session:
            result = cast(
                CursorResult[Any],
                session.execute(
                    delete(JobRow)
                    .where(JobRow.id == job_id, JobRow.state.in_([s.value for s in TERMINAL_STATES]))
                    .execution_options(synchronize_session=False)
                ),
            )
            return result.rowcount == 1

    def finished_before(self, cutoff: datetime, limit: int = 1000) -> builtins.list[JobRecord]:
        """Finished jobs that finished (or, lacking that, were created) before ``cutoff``, oldest first."""
        when = func.coalesce(JobRow.finished_at, JobRow.created_at)
        with self._sessions() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.state.in_([s.value for s in TERMINAL_STATES]), when < cutoff)
                .order_by(when)
                .limit(limit)
            ).all()
            return [JobRecord.from_row(r) for r in rows]

    def requeue(
        self,
        job_id: str,
        *,
        from_states: Iterable[JobState] = (JobState.RUNNING,),
        uncount: bool = False,
        worker: str | None = None,
    ) -> bool:
        """running -> queued; ``uncount`` takes back the attempt (a clean shutdown is not a failure);
        ``worker`` only if that worker is the one running it (a dead worker's job, not its successor's)."""
        values: dict[str, Any] = {"state": JobState.QUEUED.value, "progress": 0.0, "started_at": None}
        if uncount:
            values["attempts"] = case((JobRow.attempts > 0, JobRow.attempts - 1), else_=0)
        where = [JobRow.worker == worker] if worker is not None else []
        return self._update(job_id, from_states, extra_where=where, **values)
