"""``malsori worker``: one model, one scheduler, Celery tasks over them, a heartbeat, metrics.

The model loads once per process; the Celery pool is threads (``queue.concurrency``), so every task
of this process decodes through lanes of one :class:`~malsori.engine.scheduler.DecodeScheduler` and
concurrent tasks' windows share batches, as in the gateway's own process. Two tasks:

- ``malsori.job`` (``job_id``): claims the job in the database (queued → running, ``worker`` = this
  worker's name) and runs it with :meth:`JobService.execute`; a job that is not queued (already
  running elsewhere, finished, cancelled) is left alone, so a task delivered twice runs once.
- ``malsori.windows`` (audio references, options, reply key): decodes the windows of a synchronous
  request and pushes the results (or the error) on the reply list the gateway waits on.
- ``malsori.analyze`` (texts, language): their sentiment, through the result backend; consumed by a
  worker started with the ``analyze`` queue (``-Q stt.cpu,analyze``), model loaded on the first task.

On a GPU worker, a task that fails with an unexpected error (out of memory, device lost) is handed
to the CPU queue and counted (``gpu_fallbacks``), as long as a CPU worker is alive.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.decoder import DirectDecoder, decode_now
from ..engine.scheduler import DecodeScheduler, Priority
from ..errors import MalsoriError
from .celery_app import ANALYZE_TASK, JOB_TASK, WINDOWS_TASK, make_celery
from .codec import AudioStore, options_from_dict, result_to_dict
from .registry import Registry, WorkerInfo, default_worker_name
from .routing import Queues, cpu_workers

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine.options import TranscribeOptions
    from ..engine.windows import Window, WindowResult
    from ..jobs import JobService
    from ..storage import JobRecord

__all__ = ["WorkerRuntime", "run_worker", "WorkerMetrics"]

log = logging.getLogger(__name__)


class WorkerMetrics:
    """The worker's Prometheus metrics (names documented in docs/scaling.md)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.tasks = Counter(
            "malsori_worker_tasks_total", "Tasks finished, by task and outcome", ["task", "outcome"], registry=self.registry
        )
        self.windows = Counter("malsori_worker_windows_total", "Windows decoded", registry=self.registry)
        self.audio = Counter("malsori_worker_audio_seconds_total", "Seconds of audio decoded", registry=self.registry)
        self.task_seconds = Histogram(
            "malsori_worker_task_seconds",
            "Time a task took on this worker",
            ["task"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
            registry=self.registry,
        )
        self.running = Gauge("malsori_worker_running_tasks", "Tasks running now", registry=self.registry)
        self.capacity = Gauge("malsori_worker_capacity", "Tasks this worker runs at once", registry=self.registry)
        self.fallbacks = Counter(
            "malsori_worker_gpu_fallbacks_total",
            "Tasks that failed on this GPU worker and went to the CPU queue",
            registry=self.registry,
        )
        self.info = Gauge(
            "malsori_worker_info", "This worker (value 1)", ["name", "device", "model", "queues"], registry=self.registry
        )


class _FailingFake(DirectDecoder):
    """A fake decoder whose every decode raises (``queue.fake_error``): a GPU that fails, for tests."""

    model_name, device, compute_type = "fake", "cpu", "int8"

    def __init__(self, message: str) -> None:
        self.message = message

    def decode_windows(self, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
        raise RuntimeError(self.message)


def _load_decoder(settings: Settings) -> Any:
    queue = settings.queue
    if queue.worker_decoder == "fake":
        if queue.fake_error:
            return _FailingFake(queue.fake_error)
        from ..engine.fake import FakeDecoder

        return FakeDecoder()
    if queue.worker_decoder != "model":
        raise ValueError(f"queue.worker_decoder must be model or fake, not {queue.worker_decoder!r}")
    from ..engine import Transcriber

    return Transcriber(settings.engine_config())


class WorkerRuntime:
    """Everything a worker process holds; the task bodies are its methods."""

    def __init__(self, settings: Settings, queues: Sequence[str], *, name: str | None = None) -> None:
        self.settings = settings
        self.q = settings.queue
        self.name = name or default_worker_name()
        self.queue_names = tuple(queues)
        self.queues = Queues(self.q.cpu_queue, self.q.gpu_queue)
        self.registry = Registry(self.q.redis(), prefix=self.q.key_prefix, ttl_s=self.q.worker_ttl_s)
        self.store = AudioStore(self.registry.redis, self.q.key_prefix, self.q.request_timeout_s)
        self.celery = make_celery(self.q)
        self.metrics = WorkerMetrics()
        self._running = 0
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.decoder: Any = None
        self.scheduler: DecodeScheduler | None = None
        self.jobs: JobService | None = None
        self.info: WorkerInfo | None = None
        self.live: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model (once), build the scheduler and the job service, announce this worker."""
        from ..jobs import JobService

        started = time.perf_counter()
        self.decoder = _load_decoder(self.settings)
        limits = self.settings.limits
        self.scheduler = DecodeScheduler(
            self.decoder,
            max_batch=self.settings.engine.batch_size(self.decoder),
            max_pending={Priority.REQUEST: limits.max_pending_requests, Priority.JOB: limits.max_pending_jobs},
            workers=getattr(self.decoder, "workers", 1),
        )
        self.jobs = JobService.from_settings(self.settings, on_finished=self._job_finished)
        device = self.q.worker_device or str(getattr(self.decoder, "device", "cpu"))
        self.info = WorkerInfo(
            name=self.name,
            queues=self.queue_names,
            device=device,
            model=str(getattr(self.decoder, "model_name", self.settings.engine.model)),
            compute_type=str(getattr(self.decoder, "compute_type", "")),
            capacity=self.q.concurrency,
            metrics_port=self.q.metrics_port,
        )
        self.metrics.capacity.set(self.q.concurrency)
        self.metrics.info.labels(self.name, device, self.info.model, ",".join(self.queue_names)).set(1)
        self._start_live_server()
        log.info("worker %s: %s on %s loaded in %.1f s", self.name, self.info.model, device, time.perf_counter() - started)

    def _start_live_server(self) -> None:
        """The live-window server of docs/scaling.md, when this install has one."""
        try:
            from . import live_worker
        except ImportError:
            return
        start = getattr(live_worker, "start_live_server", None)
        if start is None:
            return
        self.live = start(scheduler=self.scheduler, settings=self.settings, worker=self.info)
        address = getattr(self.live, "address", None)
        if self.info is not None and address:
            self.info.live_address = str(address)

    def start_background(self) -> None:
        threading.Thread(target=self._heartbeat, name="malsori-heartbeat", daemon=True).start()
        if self.q.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.q.metrics_port, registry=self.metrics.registry)

    def _heartbeat(self) -> None:
        failing = False
        while not self._stop.is_set():
            assert self.info is not None
            self.info.running = self._running
            with self._lock:
                self.info.jobs = tuple(sorted(self._jobs))
            try:
                self.registry.announce(self.info)
                if failing:
                    log.info("worker %s: Redis answers again", self.name)
                failing = False
            except Exception as exc:  # Redis restarting: keep trying, the worker keeps working
                if not failing:
                    log.warning("worker %s: heartbeat failed (%s); retrying", self.name, exc)
                failing = True
            self._stop.wait(self.q.heartbeat_s)

    def close(self) -> None:
        self._stop.set()
        try:
            self.registry.withdraw(self.name)
        except Exception:
            log.warning("worker %s could not withdraw from the registry", self.name)
        if self.live is not None:
            self.live.close()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.jobs is not None:
            self.jobs.close()

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def is_gpu(self) -> bool:
        return self.info is not None and self.info.is_gpu

    def _track(self, delta: int) -> None:
        with self._lock:
            self._running += delta
            self.metrics.running.set(self._running)

    def _cpu_worker_alive(self) -> bool:
        try:
            return bool(cpu_workers(self.registry.alive(), self.queues))
        except Exception:
            return False

    def _fallback(self, task: str, args: list[Any], exc: BaseException) -> bool:
        """On a GPU worker: hand a failed task to the CPU queue (True), when a CPU worker is alive."""
        if not self.is_gpu or not self._cpu_worker_alive():
            return False
        log.warning(
            "worker %s: %s failed on the GPU (%s: %s); sent to %s", self.name, task, type(exc).__name__, exc, self.q.cpu_queue
        )
        self.metrics.fallbacks.inc()
        self.registry.count("gpu_fallbacks")
        self.celery.send_task(task, args=args, queue=self.q.cpu_queue)
        return True

    def _job_finished(self, job: JobRecord) -> None:
        self.metrics.audio.inc(float(job.audio_seconds or 0.0))

    # -- tasks -------------------------------------------------------------------------------------
    def run_job(self, job_id: str) -> dict[str, Any]:
        assert self.jobs is not None and self.scheduler is not None
        repository = self.jobs.repository
        started = time.perf_counter()
        job = repository.claim(job_id, worker=self.name)
        if job is None:
            # Not queued: running elsewhere, finished, cancelled or unknown. A duplicate delivery.
            current = repository.get(job_id)
            self.metrics.tasks.labels("job", "skipped").inc()
            return {"job": job_id, "outcome": "skipped", "state": current.state.value if current else None}
        if job.attempts > self.jobs.max_attempts:
            repository.fail(
                job_id,
                "too_many_attempts",
                f"the job was started {job.attempts - 1} times and never finished, so it was given up",
            )
            self.metrics.tasks.labels("job", "failed").inc()
            return {"job": job_id, "outcome": "failed"}
        if job.upload_path is None or not Path(job.upload_path).is_file():
            repository.fail(
                job_id, "upload_lost", "upload lost: this job's audio file was not found in shared storage; submit it again"
            )
            self.metrics.tasks.labels("job", "failed").inc()
            return {"job": job_id, "outcome": "failed"}

        def on_error(record: JobRecord, exc: Exception) -> bool:
            if not self.is_gpu:
                return False
            # Back to queued (not counted: the GPU failed, not the job), then to the CPU queue.
            if not self._cpu_worker_alive() or not repository.requeue(record.id, uncount=True, worker=self.name):
                return False
            return self._fallback(JOB_TASK, [record.id], exc)

        self._track(+1)
        with self._lock:
            self._jobs.add(job_id)
        try:
            final = self.jobs.execute(job, self.scheduler, on_error=on_error)
        finally:
            self._track(-1)
            with self._lock:
                self._jobs.discard(job_id)
        outcome = final.state.value if final is not None else "vanished"
        self.metrics.tasks.labels("job", outcome).inc()
        self.metrics.task_seconds.labels("job").observe(time.perf_counter() - started)
        return {"job": job_id, "outcome": outcome, "worker": self.name}

    def run_windows(self, refs: list[dict[str, Any]], options: dict[str, Any], reply: str) -> None:
        assert self.scheduler is not None
        started = time.perf_counter()
        self._track(+1)
        try:
            windows = self.store.get(refs)
            lane = self.scheduler.lane(f"remote-{reply.rsplit(':', 1)[-1][:12]}", Priority.REQUEST)
            results = decode_now(lane, windows, options_from_dict(options))
            payload: dict[str, Any] = {"results": [result_to_dict(r) for r in results], "worker": self.name}
            self.metrics.windows.inc(len(windows))
            self.metrics.audio.inc(sum(len(w.audio) for w in windows) / 16000)
            outcome = "succeeded"
        except Exception as exc:
            if not isinstance(exc, (MalsoriError, LookupError)) and self._fallback(WINDOWS_TASK, [refs, options, reply], exc):
                self.metrics.tasks.labels("windows", "fallback").inc()
                return
            log.warning("worker %s: windows task failed: %s: %s", self.name, type(exc).__name__, exc)
            code = exc.code if isinstance(exc, MalsoriError) else "worker_error"
            payload = {"error": {"type": type(exc).__name__, "code": code, "message": str(exc)}, "worker": self.name}
            outcome = "failed"
        finally:
            self._track(-1)
        self._reply(reply, payload)
        self.metrics.tasks.labels("windows", outcome).inc()
        self.metrics.task_seconds.labels("windows").observe(time.perf_counter() - started)

    def run_analyze(self, texts: list[str], language: str | None) -> list[dict[str, Any]]:
        from ..analysis import shared_sentiment_analyzer
        from .analyze import analyze_task_body

        started = time.perf_counter()
        self._track(+1)
        try:
            a = self.settings.analysis
            result = analyze_task_body(shared_sentiment_analyzer(a.sentiment_model, threads=a.threads), texts, language)
        except Exception:
            self.metrics.tasks.labels("analyze", "failed").inc()
            raise
        finally:
            self._track(-1)
        self.metrics.tasks.labels("analyze", "succeeded").inc()
        self.metrics.task_seconds.labels("analyze").observe(time.perf_counter() - started)
        return result

    def _reply(self, key: str, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload)
        for attempt in range(5):  # Redis may be restarting; the gateway waits up to request_timeout_s
            try:
                pipe = self.registry.redis.pipeline()
                pipe.rpush(key, raw)
                pipe.expire(key, int(self.q.request_timeout_s))
                pipe.execute()
                return
            except Exception as exc:
                log.warning("worker %s: reply not sent (%s), attempt %d", self.name, exc, attempt + 1)
                time.sleep(1.0)

    # -- the Celery worker -------------------------------------------------------------------------
    def register_tasks(self) -> None:
        runtime = self

        from sqlalchemy.exc import OperationalError

        # The database away: the task is sent again later (with backoff) instead of being lost.
        retry = {"autoretry_for": (OperationalError,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": None}

        @self.celery.task(name=JOB_TASK, **retry)
        def job(job_id: str) -> dict[str, Any]:
            return runtime.run_job(job_id)

        @self.celery.task(name=WINDOWS_TASK, ignore_result=True)
        def windows(refs: list[dict[str, Any]], options: dict[str, Any], reply: str) -> None:
            runtime.run_windows(refs, options, reply)

        @self.celery.task(name=ANALYZE_TASK)
        def analyze(texts: list[str], language: str | None = None) -> list[dict[str, Any]]:
            return runtime.run_analyze(texts, language)

    def run(self, log_level: str = "info") -> None:
        """Load, announce, and consume the queues until the worker is stopped."""
        self.load()
        self.register_tasks()
        self.start_background()
        try:
            self.celery.worker_main(
                [
                    "worker",
                    "--queues",
                    ",".join(self.queue_names),
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(self.q.concurrency),
                    "--hostname",
                    f"malsori@{self.name}",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    log_level.upper(),
                ]
            )
        finally:
            self.close()


def run_worker(settings: Settings, queues: Sequence[str], *, name: str | None = None, log_level: str = "info") -> None:
    WorkerRuntime(settings, queues, name=name).run(log_level)
