"""The job service and its storage: lifecycle, progress, cancel, listing, admission, restart recovery.

Most tests plan 1 s windows and decode them one at a time through the real :class:`DecodeScheduler`
(batches of one) over a fake decoder that can be held at any window, so each step of a running job
can be observed without sleeping. One test runs the real model on jfk.flac.
``test_jobs_postgres.py`` runs the same service tests against PostgreSQL by overriding ``db_url``.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import threading
from pathlib import Path

import pytest

from malsori.engine.audio import SAMPLE_RATE
from malsori.engine.decoder import DirectDecoder
from malsori.engine.scheduler import DecodeScheduler
from malsori.engine.types import Segment, Transcript, Word
from malsori.engine.windows import WindowResult
from malsori.errors import (
    ConflictError,
    EmptyAudioError,
    InvalidOptionsError,
    NotFoundError,
    OverloadedError,
    UnsupportedAudioError,
)
from malsori.formats import FORMATS, render
from malsori.jobs import JobIds, JobOptions, JobService, UploadStore, transcript_from_dict
from malsori.storage import JobRecord, JobRepository, JobState, open_engine, utcnow

JFK_SECONDS = 11  # en/jfk.flac is 11.0 s: the fake cuts it into 11 one-second windows


# -- fakes ---------------------------------------------------------------------------------------------
class GatedDecoder(DirectDecoder):
    """A WindowDecoder whose windows can be held: each decode reports the window it entered on
    ``entered`` and, when gated, waits for a ``release``. Each second of a window reads "second N"."""

    def __init__(self, gated: bool = False) -> None:
        self.gated = gated
        self.entered: queue.Queue[float] = queue.Queue()
        self._permits = threading.Semaphore(0)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._permits.release()

    def open(self) -> None:
        self.gated = False
        self.release(1000)

    def decode_windows(self, windows, options):
        out = []
        for w in windows:
            self.entered.put(w.offset)
            if self.gated:
                assert self._permits.acquire(timeout=30), "test never released the window"
            end = w.offset + len(w.audio) / SAMPLE_RATE
            seconds = range(int(w.offset), max(int(w.offset) + 1, math.ceil(end - 1e-6)))
            segs = tuple(Segment(0, float(n), min(n + 1.0, end), f" second {n}", -0.1, 0.0) for n in seconds)
            out.append(WindowResult(segs, "en", 1.0, 0.0, -0.1, 1.0, 0.0))
        return out

    def check_options(self, options) -> None:
        pass


def one_second_windows(audio, options) -> list[tuple[int, int]]:
    """A planner for the pipeline: 1 s windows, so a job of jfk.flac has 11 steps."""
    return [(i, min(i + SAMPLE_RATE, len(audio))) for i in range(0, len(audio), SAMPLE_RATE)]


def start_fake(service: JobService, decoder: GatedDecoder) -> DecodeScheduler:
    """Run ``service``'s jobs on ``decoder`` a window at a time (batches of one: progress after each)."""
    scheduler = DecodeScheduler(decoder, max_batch=1)
    service.start(scheduler, plan=one_second_windows)
    return scheduler


def fake_text(seconds: int = JFK_SECONDS) -> str:
    return " ".join(f"second {n}" for n in range(seconds))


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def jfk(testdata) -> Path:
    return testdata / "en" / "jfk.flac"


@pytest.fixture
def decoder() -> GatedDecoder:
    return GatedDecoder()


@pytest.fixture
def make_service(db_url, tmp_path, decoder):
    """Build services over one database and one uploads folder (a second call is a restart)."""
    built: list[JobService] = []
    schedulers: list[DecodeScheduler] = []

    def make(*, start: bool = True, recover: bool = True, **kwargs) -> JobService:
        kwargs.setdefault("progress_interval_s", 0.0)
        service = JobService(JobRepository(open_engine(db_url)), UploadStore(tmp_path / "uploads"), **kwargs)
        built.append(service)
        if recover:
            service.recover()
        if start:
            schedulers.append(start_fake(service, decoder))
        return service

    yield make
    decoder.open()
    for service in built:
        service.stop(timeout=10)
        service.close()
    for scheduler in schedulers:
        scheduler.close()


# -- lifecycle -----------------------------------------------------------------------------------------
def test_job_runs_to_success_and_keeps_its_result(make_service, jfk):
    service = make_service(start=False)
    job = service.submit(jfk.read_bytes(), filename="jfk.flac", ids=JobIds("t1", "m1", "u1"))
    assert job.state is JobState.QUEUED and len(job.id) == 32
    upload = Path(job.upload_path)
    assert upload.read_bytes() == jfk.read_bytes()  # saved before the job was accepted
    assert service.get(job.id).state is JobState.QUEUED

    start_fake(service, GatedDecoder())
    done = service.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED
    assert done.progress == 1.0
    assert done.result["text"] == fake_text()
    assert done.audio_seconds == pytest.approx(11.0, abs=0.05)
    assert (done.tenant_id, done.meeting_id, done.user_id, done.filename) == ("t1", "m1", "u1", "jfk.flac")
    assert done.attempts == 1
    assert done.created_at <= done.started_at <= done.finished_at
    assert not upload.exists()  # finished jobs keep their transcript, not their audio
    assert service.active_count() == 0


def test_progress_goes_from_zero_to_one(make_service, decoder, jfk):
    decoder.gated = True
    service = make_service()
    reports: queue.Queue[float] = queue.Queue()
    set_progress = service.repository.set_progress
    service.repository.set_progress = lambda job_id, value: [set_progress(job_id, value), reports.put(value)][0]
    job = service.submit(jfk.read_bytes())
    assert decoder.entered.get(timeout=10) == 0.0
    running = service.get(job.id)
    assert running.state is JobState.RUNNING and running.progress == 0.0
    seen = [running.progress]
    for _n in range(1, JFK_SECONDS + 1):
        decoder.release()
        seen.append(reports.get(timeout=10))  # window _n-1 decoded: reported
        assert service.get(job.id).progress == seen[-1]
    done = service.wait(job.id, timeout=10)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0 == done.progress
    assert seen[5] == pytest.approx(5 / 11, abs=0.01)
    assert done.state is JobState.SUCCEEDED


def test_cancel_a_queued_job_at_once(make_service, jfk):
    service = make_service(start=False)
    job = service.submit(jfk.read_bytes())
    cancelled = service.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert not Path(job.upload_path).exists()
    with pytest.raises(ConflictError):
        service.cancel(job.id)
    # The runner skips it: a job submitted after it is the one that runs.
    start_fake(service, GatedDecoder())
    second = service.submit(jfk.read_bytes())
    assert service.wait(second.id, timeout=30).state is JobState.SUCCEEDED
    assert service.get(job.id).state is JobState.CANCELLED


def test_cancel_a_running_job_at_its_next_progress_report(make_service, decoder, jfk):
    decoder.gated = True
    service = make_service()
    job = service.submit(jfk.read_bytes())
    decoder.release(2)
    assert [decoder.entered.get(timeout=10) for _ in range(3)] == [0.0, 1.0, 2.0]
    asked = service.cancel(job.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    decoder.release()  # window 2 finishes; its progress report stops the job
    done = service.wait(job.id, timeout=10)
    assert done.state is JobState.CANCELLED and done.result is None
    # The scheduler may have started window 3 before the report; no window after it was decoded.
    assert [decoder.entered.get_nowait() for _ in range(decoder.entered.qsize())] in ([], [3.0])
    assert not Path(job.upload_path).exists()
    with pytest.raises(ConflictError):
        service.cancel(job.id)


def test_unknown_job_is_not_found(make_service):
    service = make_service(start=False)
    with pytest.raises(NotFoundError):
        service.get("0" * 32)
    with pytest.raises(NotFoundError):
        service.cancel("../../etc/passwd")


def test_list_filters_by_tenant_meeting_and_state(make_service, jfk):
    service = make_service(start=False)
    data = jfk.read_bytes()
    a1 = service.submit(data, ids=JobIds("tenant-a", "meeting-1"))
    a2 = service.submit(data, ids=JobIds("tenant-a", "meeting-2"))
    b1 = service.submit(data, ids=JobIds("tenant-b", "meeting-1"))
    service.cancel(a2.id)

    jobs, total = service.list(tenant_id="tenant-a")
    assert total == 2 and [j.id for j in jobs] == [a2.id, a1.id]  # newest first
    jobs, total = service.list(meeting_id="meeting-1")
    assert total == 2 and {j.id for j in jobs} == {a1.id, b1.id}
    jobs, total = service.list(tenant_id="tenant-a", state="queued")
    assert total == 1 and [j.id for j in jobs] == [a1.id]
    jobs, total = service.list(state=JobState.CANCELLED)
    assert [j.id for j in jobs] == [a2.id]
    page, total = service.list(limit=2, offset=2)
    assert total == 3 and [j.id for j in page] == [a1.id]
    assert service.list(tenant_id="nobody") == ([], 0)


def test_admission_refuses_jobs_past_the_pending_limit(make_service, jfk, tmp_path):
    service = make_service(start=False, max_pending=2)
    data = jfk.read_bytes()
    service.submit(data)
    service.submit(data)
    with pytest.raises(OverloadedError) as refused:
        service.submit(data)
    assert refused.value.retry_after > 0
    assert service.list()[1] == 2
    assert len(list((tmp_path / "uploads").iterdir())) == 2  # the refused job left no file


@pytest.mark.parametrize(
    "payload, error",
    [(b"", EmptyAudioError), (b"this is not audio at all" * 100, UnsupportedAudioError)],
    ids=["empty", "not-audio"],
)
def test_bad_audio_is_refused_at_submission(make_service, tmp_path, payload, error):
    service = make_service(start=False)
    with pytest.raises(error):
        service.submit(payload)
    assert service.list() == ([], 0)
    assert list((tmp_path / "uploads").iterdir()) == []


def test_options_are_validated_at_submission():
    with pytest.raises(InvalidOptionsError):
        JobOptions(language="klingon")
    with pytest.raises(InvalidOptionsError):
        JobOptions(response_format="docx")
    with pytest.raises(InvalidOptionsError):
        JobOptions(task="summarize")
    with pytest.raises(InvalidOptionsError):
        JobIds(tenant_id="x" * 300)
    assert JobOptions(language="EN", response_format="text").to_dict()["response_format"] == "txt"
    assert JobOptions.from_dict(JobOptions(language="de").to_dict()) == JobOptions(language="de")


# -- restarts ------------------------------------------------------------------------------------------
def _seed(repository: JobRepository, uploads: UploadStore, jfk: Path, *, state, attempts=0, upload=True, cancel=False) -> str:
    import uuid

    job_id = uuid.uuid4().hex
    path = uploads.path(job_id)
    if upload:
        shutil.copyfile(jfk, path)
    repository.add(
        JobRecord(
            id=job_id,
            state=state,
            created_at=utcnow(),
            upload_path=str(path),
            attempts=attempts,
            started_at=utcnow() if state is JobState.RUNNING else None,
            cancel_requested=cancel,
        )
    )
    return job_id


def test_restart_recovery_requeues_or_fails_every_unfinished_job(db_url, tmp_path, jfk, make_service):
    # What a crashed server leaves behind, written straight into the database.
    repository, uploads = JobRepository(open_engine(db_url)), UploadStore(tmp_path / "uploads")
    queued = _seed(repository, uploads, jfk, state=JobState.QUEUED)
    interrupted = _seed(repository, uploads, jfk, state=JobState.RUNNING, attempts=1)
    poison = _seed(repository, uploads, jfk, state=JobState.RUNNING, attempts=3)
    lost = _seed(repository, uploads, jfk, state=JobState.QUEUED, upload=False)
    lost_running = _seed(repository, uploads, jfk, state=JobState.RUNNING, attempts=1, upload=False)
    cancelling = _seed(repository, uploads, jfk, state=JobState.RUNNING, attempts=1, cancel=True)
    (tmp_path / "uploads" / ".deadbeef.part").write_bytes(b"half a file")
    repository.engine.dispose()

    service = make_service(start=False, recover=False)
    report = service.recover()
    assert set(report.requeued) == {queued, interrupted}
    assert set(report.failed) == {poison, lost, lost_running}
    assert report.cancelled == (cancelling,)
    assert not (tmp_path / "uploads" / ".deadbeef.part").exists()

    for job_id in (lost, lost_running):
        job = service.get(job_id)
        assert job.state is JobState.FAILED and job.error_code == "upload_lost"
        assert "upload lost" in job.error_message
    job = service.get(poison)
    assert job.state is JobState.FAILED and job.error_code == "too_many_attempts" and "3 attempts" in job.error_message
    assert service.get(cancelling).state is JobState.CANCELLED

    start_fake(service, GatedDecoder())
    for job_id, attempts in ((queued, 1), (interrupted, 2)):
        done = service.wait(job_id, timeout=30)
        assert done.state is JobState.SUCCEEDED and done.result["text"] == fake_text()
        assert done.attempts == attempts


def test_clean_shutdown_puts_the_running_job_back_and_a_restart_finishes_it(make_service, decoder, jfk):
    decoder.gated = True
    first = make_service()
    job = first.submit(jfk.read_bytes())
    decoder.release(3)
    assert [decoder.entered.get(timeout=10) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    stopper = threading.Thread(target=first.stop, kwargs={"timeout": 10})
    stopper.start()
    while not first._stopping.is_set():  # stop() has begun: the next progress report stops the job
        threading.Event().wait(0.01)
    decoder.release()
    stopper.join(15)
    assert not stopper.is_alive()
    back = first.get(job.id)
    assert back.state is JobState.QUEUED and back.attempts == 0  # a shutdown is not a failed attempt
    assert Path(back.upload_path).exists()
    with pytest.raises(OverloadedError):
        first.submit(jfk.read_bytes())  # a stopping service takes no new work

    decoder.open()
    second = make_service()
    done = second.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.result["text"] == fake_text() and done.attempts == 1


# -- results -------------------------------------------------------------------------------------------
def test_stored_result_renders_like_the_original_transcript():
    words = (Word(0.0, 0.4, " And", 0.9), Word(0.4, 0.8, " so,", 0.8))
    original = Transcript(
        (
            Segment(0, 0.0, 2.5, " And so, my fellow Americans,", -0.2, 0.01, 1.1, 0.0, words, (50364, 400)),
            Segment(1, 2.5, 11.0, " ask not --> what", -0.3, 0.02, 1.2, 0.2, (), (1, 2)),
        ),
        "en",
        0.98,
        11.0,
        processing_time=1.5,
    )
    restored = transcript_from_dict(original.to_dict())
    for fmt in FORMATS:
        assert render(restored, fmt) == render(original, fmt), fmt
    assert restored.to_dict() == original.to_dict()


def test_an_idle_sqlite_store_holds_no_file_open_however_many_connections_a_burst_opened(tmp_path):
    """A burst of concurrent readers opens several SQLite connections; once they are given back no
    descriptor of the database is left open, so an idle server's open files do not grow with its
    past load (a pooled connection's lock would make SQLite keep every other closed one's fd)."""
    path = tmp_path / "malsori.db"
    engine = open_engine(f"sqlite:///{path}")
    repository = JobRepository(engine)
    repository.list(limit=1)

    def database_fds() -> int:
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the fd os.listdir itself had open
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return sum(1 for target in targets if target.startswith(str(path)))

    assert database_fds() == 0
    held = [engine.connect() for _ in range(4)]
    for conn in held:
        conn.exec_driver_sql("SELECT count(*) FROM jobs").fetchall()
    assert database_fds() >= 4  # the burst did open them
    for conn in held:
        conn.close()
    assert database_fds() == 0
    repository.add(JobRecord(id="a", state=JobState.QUEUED, created_at=utcnow()))
    assert repository.get("a") is not None and database_fds() == 0
    engine.dispose()


@pytest.mark.model
def test_a_real_job_transcribes_jfk(tmp_path, transcriber, jfk, manifest):
    from malsori.evaluation import wer

    scheduler = DecodeScheduler(transcriber)
    service = JobService(
        JobRepository(open_engine(f"sqlite:///{tmp_path / 'jobs.db'}")),
        UploadStore(tmp_path / "uploads"),
        progress_interval_s=0.0,
    )
    try:
        service.start(scheduler)
        job = service.submit(str(jfk), filename="jfk.flac", options=JobOptions(language="en", word_timestamps=True))
        done = service.wait(job.id, timeout=120)
    finally:
        service.stop()
        scheduler.close()
        service.close()
    assert done.state is JobState.SUCCEEDED, done.error_message
    reference = next(clip.reference for clip in manifest if clip.path.name == "jfk.flac")
    assert wer(reference, done.result["text"], "en") < 0.05
    assert done.result["segments"][0]["words"], "word timestamps were asked for"
    restored = transcript_from_dict(done.result)
    assert "ask not what your country can do for you" in render(restored, "txt").lower()
