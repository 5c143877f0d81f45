"""The job service: accept long files, run them in the background, keep every state in the database.

Transport-free: the HTTP routes (``malsori.server.jobs_routes``) parse and serialize around it.

- **Accepting** (:meth:`JobService.submit`): the upload is written under ``data_dir/uploads/<id>``
  (atomically) and checked to be audio before the job row is committed as ``queued``, so an accepted
  job always has its audio. More than ``max_pending`` queued jobs: OverloadedError (429).
- **Running**: ``workers`` threads (default 1) take jobs in order. Each decodes its audio, then runs
  the engine's pipeline over a JOB lane of the shared scheduler (when the JOB queue is full, it waits
  for room), so file work waits behind live streams and short requests instead of racing them for the
  CPU. Progress (each decoded window) is written at most every ``progress_interval_s``. The upload
  is deleted once the job is finished (succeeded, failed or cancelled): the transcript is in the
  database, and disk use stays bounded.
- **Cancelling**: a queued job is cancelled at once; a running one at its next progress report (its
  windows already queued are decoded and dropped).
- **Restarting** (:meth:`JobService.recover`, before :meth:`start`): every job left queued or running
  is queued again if its upload exists, unless it has already been started ``max_attempts`` times
  (a job that keeps killing the server must not do so forever: it fails with the reason); a job
  whose upload is missing fails with "upload lost". Nothing accepted is silently dropped.
- **Scaled out** (docs/scaling.md): with ``dispatch`` set, an accepted job is handed to it (a Celery
  task) instead of this process's runner threads, and a queue worker runs it with :meth:`execute`
  over its own scheduler; recovery is then the scale package's sweep, not :meth:`recover`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.audio import SAMPLE_RATE, AudioLimits, decode_audio
from ..engine.pipeline import Pipeline, Planner
from ..engine.scheduler import DecodeScheduler, Priority
from ..errors import ConflictError, MalsoriError, NotFoundError, OverloadedError
from ..storage import JobRecord, JobRepository, JobState, open_engine, utcnow
from .options import JobIds, JobOptions
from .probe import probe_audio
from .uploads import UploadSource, UploadStore

if TYPE_CHECKING:
    from ..analysis.sentiment import SentimentAnalyzer
    from ..config import Settings
    from ..engine.options import TranscribeOptions
    from ..engine.types import Transcript
    from ..engine.windows import Window, WindowResult

__all__ = ["JobService", "RecoveryReport", "MAX_ATTEMPTS"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Starts a job gets before a restart gives up on it."""


@dataclass(frozen=True)
class RecoveryReport:
    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()


class _Stop(Exception):
    """Raised inside a running job's progress callback to stop it (cancel or shutdown)."""


class JobService:
    """Thread-safe. Blocking methods (database, disk): call them from a worker thread in async code."""

    def __init__(
        self,
        repository: JobRepository,
        uploads: UploadStore,
        *,
        limits: AudioLimits = AudioLimits(),
        max_pending: int = 1000,
        workers: int = 1,
        beam_size: int = 5,
        progress_interval_s: float = 1.0,
        max_attempts: int = MAX_ATTEMPTS,
        on_finished: Callable[[JobRecord], None] | None = None,
        dispatch: Callable[[str], None] | None = None,
        sentiment_model: str = "auto",
    ) -> None:
        self.repository = repository
        self.sentiment_model = sentiment_model
        """The analyzer of jobs with ``sentiment`` (``analysis.sentiment_model``), run in the job's thread."""
        self.sentiment_analyzer: Callable[[], SentimentAnalyzer] = self._shared_sentiment_analyzer
        """Where that analyzer comes from (the process's shared one; tests put a scripted one here)."""
        self.uploads = uploads
        self.limits = limits
        self.max_pending = max_pending
        self.workers = workers
        self.beam_size = beam_size
        self.progress_interval_s = progress_interval_s
        self.max_attempts = max_attempts
        self.on_finished = on_finished
        self.dispatch = dispatch
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._cancel: set[str] = set()
        self._running: set[str] = set()
        self._admit = threading.Lock()
        self._changed = threading.Condition()
        self._scheduler: DecodeScheduler | None = None
        self._plan: Planner | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> JobService:
        """Storage from ``settings.database_url()``, uploads under ``data_dir/uploads``."""
        limits = settings.limits
        kwargs: dict[str, Any] = {
            "limits": AudioLimits(
                max_bytes=limits.max_upload_bytes,
                max_seconds=limits.max_audio_seconds,
                max_channels=limits.max_channels,
                max_sample_rate=limits.max_input_sample_rate,
            ),
            "max_pending": limits.max_pending_jobs,
            "workers": limits.job_workers,
            "beam_size": settings.engine.beam_size,
            "sentiment_model": settings.analysis.sentiment_model,
            **overrides,
        }
        repository = JobRepository(open_engine(settings.database_url()))
        return cls(repository, UploadStore(Path(settings.server.data_dir) / "uploads"), **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Deal with what a previous process left queued or running. Call once, before :meth:`start`."""
        self.uploads.sweep_partials()
        requeued, failed, cancelled = [], [], []
        for job in self.repository.unfinished():
            unfinished = (JobState.QUEUED, JobState.RUNNING)
            has_upload = job.upload_path is not None and Path(job.upload_path).is_file()
            if job.cancel_requested:
                if self.repository.cancel(job.id, from_states=unfinished):
                    cancelled.append(job.id)
                    self.uploads.delete(job.upload_path)
            elif not has_upload:
                if self.repository.fail(
                    job.id,
                    "upload_lost",
                    "upload lost: the server restarted and this job's audio file was not found, so it cannot run; "
                    "submit it again",
                    from_states=unfinished,
                ):
                    failed.append(job.id)
            elif job.attempts >= self.max_attempts:
                if self.repository.fail(
                    job.id,
                    "too_many_attempts",
                    f"the server stopped during each of {job.attempts} attempts at this job, so it was given up",
                    from_states=unfinished,
                ):
                    failed.append(job.id)
                    self.uploads.delete(job.upload_path)
            else:
                if job.state is JobState.QUEUED or self.repository.requeue(job.id):
                    requeued.append(job.id)
                    self._queue.put(job.id)
        if requeued or failed or cancelled:
            log.info("job recovery: %d requeued, %d failed, %d cancelled", len(requeued), len(failed), len(cancelled))
        return RecoveryReport(tuple(requeued), tuple(failed), tuple(cancelled))

    def start(self, scheduler: DecodeScheduler, *, plan: Planner | None = None) -> None:
        """Start running queued jobs through ``scheduler`` (once the model is ready). ``plan`` replaces
        the pipeline's window planning (tests cut audio into small windows to watch a job step by step).
        With ``dispatch`` set, jobs run on queue workers and nothing starts here."""
        if self._threads or self.dispatch is not None:
            return
        self._scheduler, self._plan = scheduler, plan
        self._threads = [threading.Thread(target=self._work, name=f"malsori-job-{n}", daemon=True) for n in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the runner: a running job stops at its next progress report and goes back to queued
        (not counted as an attempt), so the next start runs it again."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("job runner threads still busy at shutdown: %s (their jobs resume at the next start)", alive)

    def close(self) -> None:
        self.repository.engine.dispose()

    # -- the API -----------------------------------------------------------------------------------
    def submit(
        self,
        source: UploadSource,
        *,
        filename: str | None = None,
        options: JobOptions = JobOptions(),
        ids: JobIds = JobIds(),
    ) -> JobRecord:
        """Persist a new queued job with its audio. Raises AudioError subclasses, OverloadedError."""
        if self._stopping.is_set():
            raise OverloadedError("the server is shutting down; submit the job again shortly", retry_after=5.0)
        self._admission()
        job_id = uuid.uuid4().hex
        path = self.uploads.save(job_id, source, max_bytes=self.limits.max_bytes)
        try:
            declared = probe_audio(path, self.limits.max_seconds, self.limits)
            record = JobRecord(
                id=job_id,
                state=JobState.QUEUED,
                created_at=utcnow(),
                tenant_id=ids.tenant_id,
                meeting_id=ids.meeting_id,
                user_id=ids.user_id,
                filename=(filename or None) and filename[:1024],
                options=options.to_dict(),
                upload_path=str(path),
                audio_seconds=declared,
            )
            with self._admit:
                self._admission()
                self.repository.add(record)
        except BaseException:
            self.uploads.delete(path)
            raise
        if self.dispatch is not None:
            self.dispatch(job_id)
        else:
            self._queue.put(job_id)
        return record

    def _admission(self) -> None:
        queued = self.repository.count(JobState.QUEUED)
        if queued >= self.max_pending:
            raise OverloadedError(
                f"too many jobs are waiting ({queued}, at most {self.max_pending}); try again later",
                retry_after=30.0,
            )

    def get(self, job_id: str) -> JobRecord:
        job = self.repository.get(job_id) if job_id.isalnum() else None
        if job is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        return job

    def list(
        self,
        *,
        tenant_id: str | None = None,
        meeting_id: str | None = None,
        state: JobState | str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        return self.repository.list(
            tenant_id=tenant_id,
            meeting_id=meeting_id,
            state=JobState(state) if state is not None else None,
            limit=limit,
            offset=offset,
        )

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: queued ones at once; running ones stop at their next progress report (the
        returned record is then still ``running`` with ``cancel_requested``). ConflictError when the
        job has already finished."""
        job = self.get(job_id)
        # Two tries: the job may move from queued to running between the two updates.
        for _ in range(2):
            if job.state is JobState.QUEUED and self.repository.cancel(job_id):
                self.uploads.delete(job.upload_path)
                self._notify()
                return self.get(job_id)
            if self.repository.request_cancel(job_id):
                self._cancel.add(job_id)
                return self.get(job_id)
            job = self.get(job_id)
            if job.finished:
                break
        raise ConflictError(f"job {job_id} has already {job.state.value}; there is nothing to cancel")

    def purge(self, job_id: str) -> None:
        """Delete a job with its audio and transcript. A queued job is cancelled first; a running one
        is ConflictError (cancel it, and purge once it stopped)."""
        job = self.get(job_id)
        if job.state is JobState.QUEUED and self.repository.cancel(job_id):
            self._notify()
            job = self.get(job_id)
        if not job.finished or job_id in self._running:
            raise ConflictError(f"job {job_id} is {job.state.value}; cancel it and delete it once it has stopped")
        self.uploads.delete(job.upload_path)
        if not self.repository.delete(job_id):
            raise NotFoundError(f"no job with id {job_id!r}")
        log.info("job %s deleted with its audio and transcript", job_id)

    def expire(self, older_than_days: float) -> int:
        """Delete finished jobs (audio and transcript) older than ``older_than_days``; how many."""
        from datetime import timedelta

        cutoff = utcnow() - timedelta(days=older_than_days)
        deleted = 0
        for job in self.repository.finished_before(cutoff):
            if job.id in self._running:
                continue
            self.uploads.delete(job.upload_path)
            deleted += int(self.repository.delete(job.id))
        if deleted:
            log.info("retention: %d jobs older than %g days deleted", deleted, older_than_days)
        return deleted

    def active_count(self) -> int:
        """Jobs queued or running (shown in /stt/status and /metrics)."""
        return self.repository.count(JobState.QUEUED, JobState.RUNNING)

    def wait(self, job_id: str, timeout: float = 60.0) -> JobRecord:
        """Block until the job has finished (for tests and in-process callers); its last record."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.get(job_id)
                left = deadline - time.monotonic()
                if (job.finished and job_id not in self._running) or left <= 0:
                    return job
                # Finishing in this process notifies; the timeout covers changes made elsewhere.
                self._changed.wait(min(left, 1.0))

    def execute(
        self, job: JobRecord, scheduler: DecodeScheduler, *, on_error: Callable[[JobRecord, Exception], bool] | None = None
    ) -> JobRecord | None:
        """Run a job already claimed elsewhere (by a queue worker) through ``scheduler``; its final
        record. ``on_error`` sees an unexpected error first and returns True when it dealt with the job
        (a GPU worker hands it to the CPU queue) instead of it failing."""
        self._running.add(job.id)
        try:
            self._finish(job.id, self._outcome(job, scheduler, on_error))
        finally:
            self._running.discard(job.id)
            self._cancel.discard(job.id)
        return self.repository.get(job.id)

    # -- the runner --------------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _work(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # the database went away mid-job: the row stays running, recovery handles it
                log.exception("job %s could not be run", job_id)
            finally:
                self._notify()

    def _run(self, job_id: str) -> None:
        job = self.repository.claim(job_id)
        if job is None:  # cancelled (or taken by another process) while it waited
            return
        # Running until its upload is gone and its hook has run: wait() returns only after that.
        self._running.add(job_id)
        try:
            assert self._scheduler is not None
            self._finish(job_id, self._outcome(job, self._scheduler))
        finally:
            self._running.discard(job_id)
            self._cancel.discard(job_id)

    def _outcome(
        self, job: JobRecord, scheduler: DecodeScheduler, on_error: Callable[[JobRecord, Exception], bool] | None = None
    ) -> float:
        """Run a claimed job and record how it ended; the seconds it took."""
        job_id = job.id
        started = time.perf_counter()
        try:
            transcript = self._transcribe(job, scheduler)
        except _Stop:
            if self._stopping.is_set() and job_id not in self._cancel:
                self.repository.requeue(job_id, uncount=True)
                log.info("job %s goes back to the queue (shutdown)", job_id)
            else:
                self.repository.cancel(job_id, from_states=(JobState.RUNNING,))
        except Exception as exc:
            if self._stopping.is_set():
                self.repository.requeue(job_id, uncount=True)
            elif on_error is not None and not isinstance(exc, MalsoriError) and on_error(job, exc):
                pass
            elif isinstance(exc, MalsoriError):
                self.repository.fail(job_id, exc.code, exc.message)
            else:
                log.exception("job %s failed", job_id)
                self.repository.fail(job_id, "internal_error", f"the job failed unexpectedly ({exc.__class__.__name__}: {exc})")
        else:
            if not self.repository.succeed(job_id, transcript.to_dict()):
                # A cancel request arrived after the last progress report: cancelling wins.
                self.repository.cancel(job_id, from_states=(JobState.RUNNING,))
        return time.perf_counter() - started

    def _finish(self, job_id: str, seconds: float) -> None:
        final = self.repository.get(job_id)
        if final is not None and final.finished:
            self.uploads.delete(final.upload_path)
            if self.on_finished is not None:
                try:
                    self.on_finished(final)
                except Exception:
                    log.exception("on_finished hook failed for job %s", job_id)
        log.info("job %s %s in %.1f s", job_id, final.state.value if final else "vanished", seconds)

    def _transcribe(self, job: JobRecord, scheduler: DecodeScheduler) -> Transcript:
        assert job.upload_path is not None
        audio = decode_audio(job.upload_path, self.limits)
        self.repository.set_audio_seconds(job.id, len(audio) / SAMPLE_RATE)
        job_options = JobOptions.from_dict(job.options)
        options = job_options.transcribe_options()
        speakers = job_options.diarize_options()
        if speakers is not None:
            options = options.with_(word_timestamps=True)  # each word is given its speaker
        last_write = time.monotonic()

        def progress(done_s: float, total_s: float) -> None:
            nonlocal last_write
            if job.id in self._cancel or self._stopping.is_set():
                raise _Stop()
            now = time.monotonic()
            if now - last_write >= self.progress_interval_s:
                last_write = now
                if not self.repository.set_progress(job.id, done_s / total_s if total_s else 1.0):
                    raise _Stop()  # cancel requested through the database (maybe by another process)

        lane = _JobLane(self, scheduler, f"job-{job.id}", job.id)
        pipeline = Pipeline(lane) if self._plan is None else Pipeline(lane, plan=self._plan)
        transcript = pipeline.transcribe(audio, options, progress)
        if speakers is not None:
            from ..speakers import attribute, shared_diarizer

            transcript = attribute(transcript, shared_diarizer().diarize(audio, speakers), keep_words=job_options.word_timestamps)
        if job_options.sentiment:
            from ..analysis.segments import label_segments

            transcript = label_segments(transcript, self.sentiment_analyzer().analyze)
        return transcript

    def _shared_sentiment_analyzer(self) -> SentimentAnalyzer:
        from ..analysis import shared_sentiment_analyzer

        return shared_sentiment_analyzer(self.sentiment_model)


class _JobLane:
    """A job's :class:`~malsori.engine.decoder.WindowDecoder`: JOB priority, and a full queue is waited
    out (one window at a time) rather than failing the job; a cancelled or stopping job stops here."""

    def __init__(self, service: JobService, scheduler: DecodeScheduler, owner: str, job_id: str) -> None:
        self.service, self.scheduler, self.owner, self.job_id = service, scheduler, owner, job_id

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]:
        futures: list[Future[WindowResult]] = []
        try:
            for window in windows:
                while True:
                    if self.job_id in self.service._cancel or self.service._stopping.is_set():
                        raise _Stop()
                    try:
                        futures.append(self.scheduler.submit(window, options, owner=self.owner, priority=Priority.JOB))
                        break
                    except OverloadedError as exc:
                        # The JOB queue is full of other jobs' windows: wait for room rather than fail.
                        if self.service._stopping.wait(exc.retry_after):
                            raise _Stop() from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return futures
