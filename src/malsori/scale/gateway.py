"""What a gateway runs when scaled out: job dispatch, a remote decoder, the recovery sweep.

- **Jobs**: :meth:`ScaleGateway.dispatch_job` sends ``malsori.job(job_id)`` to the queue the routing
  mode chooses (the job row and its upload are already committed: the task is only a wake-up call). A
  send that fails (Redis down) is kept and sent again by the sweep.
- **Synchronous requests**: :meth:`ScaleGateway.decoder` is a
  :class:`~malsori.engine.decoder.WindowDecoder` whose windows are decoded by workers, one task per
  window so a long request spreads over every worker. Window audio goes to Redis by reference
  (``codec.AudioStore``); each task's answer comes back on its own Redis list, and one waiter thread
  blocks on every pending list at once (``BLPOP`` over many keys), instead of a thread per result.
- **The sweep** (every ``heartbeat_s``, one gateway at a time under a Redis lock): a running job whose
  worker's heartbeat has expired goes back to the queue and is sent again (or fails after
  ``max_attempts``); when Redis itself was restarted and lost its queues (its ``run_id`` changed),
  every queued job is sent again. Tasks are idempotent, so a job sent twice runs once. This is the
  scaled form of :meth:`JobService.recover`, run by one process at a time instead of every gateway.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionsError, MalsoriError, OverloadedError
from ..server.services import NotReadyError
from .celery_app import JOB_TASK, WINDOWS_TASK, make_celery
from .codec import AudioStore, options_to_dict, result_from_dict
from .registry import Registry, WorkerInfo
from .routing import NoWorkerError, Queues, choose_queue, cpu_workers, gpu_workers

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine.options import TranscribeOptions
    from ..engine.windows import Window, WindowResult
    from ..jobs import JobService

__all__ = ["ScaleGateway", "RemoteDecoder", "WorkerError"]

log = logging.getLogger(__name__)


class WorkerError(MalsoriError):
    """A worker could not decode a request's window (HTTP 500 with the worker's reason)."""

    code = "worker_error"


_ERRORS: dict[str, type[MalsoriError]] = {"overloaded": OverloadedError, "invalid_options": InvalidOptionsError}


@dataclass(frozen=True)
class _View:
    workers: tuple[WorkerInfo, ...]
    mode: str
    error: str | None


@dataclass
class _Pending:
    future: Future[WindowResult]
    refs: list[dict[str, Any]]
    deadline: float


class ScaleGateway:
    """One per gateway app (``services.scale``); thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.q = settings.queue
        self.queues = Queues(self.q.cpu_queue, self.q.gpu_queue)
        self.registry = Registry(self.q.redis(), prefix=self.q.key_prefix, ttl_s=self.q.worker_ttl_s)
        # The waiter blocks in BLPOP: its own connection, with a socket timeout above the BLPOP timeout.
        self._waiter_redis: Any = Registry(self.q.redis(), prefix=self.q.key_prefix).redis
        self.store = AudioStore(self.registry.redis, self.q.key_prefix, self.q.request_timeout_s)
        self.celery = make_celery(self.q, name="malsori-gateway")
        self.jobs: JobService | None = None
        self._pending: dict[str, _Pending] = {}
        self._undispatched: set[str] = set()
        self._redis_run_id: str | None = None  # the Redis this gateway's sweep saw last
        self._redis_restarted = False  # it saw another before: a resync is a restart's, even with no job queued
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._view = _View((), "auto", None)
        self._sender = ThreadPoolExecutor(max_workers=2, thread_name_prefix="malsori-send")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.refresh_view()
        for target, name in ((self._wait_loop, "malsori-replies"), (self._sweep_loop, "malsori-sweep")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(5.0)
        self._sender.shutdown(wait=False, cancel_futures=True)
        self._fail_pending(NotReadyError("the gateway is shutting down; try again", retry_after=2.0))
        self.registry.close()

    # -- routing -----------------------------------------------------------------------------------
    def route(self) -> str:
        """The queue new work goes to now (NoWorkerError when none can take it). Two Redis round trips:
        call it from a thread, not the event loop."""
        return choose_queue(self.registry.routing_mode(), self.registry.alive(), self.queues)

    def refresh_view(self) -> None:
        """Read the registry and the mode for what the panel and /stt/status show without waiting on
        Redis in the event loop (refreshed every ``heartbeat_s`` by the sweep thread)."""
        try:
            self._view = _View(tuple(self.registry.alive()), self.registry.routing_mode(), None)
        except Exception as exc:
            self._view = _View((), self._view.mode, f"Redis does not answer ({type(exc).__name__}: {exc})")

    def routing_mode(self) -> str:
        """The shared mode, as last read (at most ``heartbeat_s`` old; this gateway's own change at once)."""
        return self._view.mode

    def set_routing_mode(self, mode: str) -> None:
        """``gpu`` is refused by the caller with the reason from :meth:`gpu_refusal`."""
        self.registry.set_routing_mode(mode)
        self._view = _View(self._view.workers, mode, self._view.error)

    def gpu_refusal(self) -> str | None:
        """Why work cannot be routed to a GPU now, or None when a GPU worker is alive (reads Redis)."""
        if gpu_workers(self.registry.alive(), self.queues):
            return None
        return f"no GPU worker is alive (none announces a GPU on {self.queues.gpu}), so work cannot be routed to a GPU"

    def gpu_available(self) -> bool:
        """A GPU worker was alive at the last view."""
        return bool(gpu_workers(self._view.workers, self.queues))

    def not_ready_reason(self) -> str | None:
        """None when some worker can take work; else why not (for /is_ready; reads Redis)."""
        try:
            workers = self.registry.alive()
        except Exception as exc:
            return f"Redis does not answer ({type(exc).__name__}: {exc})"
        if cpu_workers(workers, self.queues) or gpu_workers(workers, self.queues):
            return None
        return f"no worker is alive on {self.queues.cpu} or {self.queues.gpu}"

    def describe(self) -> str:
        """What the routing mode does now, in words (the panel's ``routing``), from the last view."""
        view = self._view
        if view.error:
            return f"scaled out: {view.error}"
        try:
            queue = choose_queue(view.mode, view.workers, self.queues)
        except NoWorkerError as exc:
            return f"scaled out: {exc.message}"
        names = [w.name for w in view.workers if queue in w.queues]
        return f"scaled out, mode {view.mode}: new work goes to {queue} ({len(names)} worker(s): {', '.join(names)})"

    def workers(self) -> list[WorkerInfo]:
        """The live workers at the last view (at most ``heartbeat_s`` old)."""
        return list(self._view.workers)

    def status(self) -> dict[str, Any]:
        """Workers, mode and counters, read now (for /stt/status; call it from a thread)."""
        try:
            return {
                "workers": [w.public() for w in self.registry.alive()],
                "routing_mode": self.registry.routing_mode(),
                "counters": self.registry.counters(),
            }
        except Exception as exc:
            return {"workers": [], "error": f"Redis does not answer ({type(exc).__name__}: {exc})"}

    # -- jobs --------------------------------------------------------------------------------------
    def dispatch_job(self, job_id: str) -> None:
        """Send the job's task; without a live worker it waits in the queue of the mode."""
        try:
            try:
                queue = self.route()
            except NoWorkerError:
                queue = self.queues.gpu if self.registry.routing_mode() == "gpu" else self.queues.cpu
            self.celery.send_task(JOB_TASK, args=[job_id], queue=queue)
        except Exception as exc:  # Redis down: the job is committed; the sweep sends it later
            log.warning("job %s not sent to a worker yet (%s); the sweep retries", job_id, exc)
            with self._lock:
                self._undispatched.add(job_id)

    # -- synchronous requests ----------------------------------------------------------------------
    def decoder(self, queue: str) -> RemoteDecoder:
        """A decoder whose windows go to ``queue`` (from :meth:`route`, read off the event loop)."""
        return RemoteDecoder(self, queue)

    def submit_windows(self, windows: Sequence[Window], options: TranscribeOptions, queue: str) -> list[Future[WindowResult]]:
        """One task per window; returns at once (callers are on the event loop): the audio is written
        and the tasks sent by a sender thread, whose failures (Redis down) fail the futures with 503."""
        opts = options_to_dict(options)
        deadline = time.monotonic() + self.q.request_timeout_s
        items: list[tuple[str, Window, Future[WindowResult]]] = []
        with self._lock:
            for window in windows:
                reply = f"{self.q.key_prefix}:reply:{uuid.uuid4().hex}"
                future: Future[WindowResult] = Future()
                self._pending[reply] = _Pending(future, [], deadline)
                items.append((reply, window, future))
        self._sender.submit(self._send, items, opts, queue)
        return [future for _, _, future in items]

    def _send(self, items: list[tuple[str, Window, Future[WindowResult]]], opts: dict[str, Any], queue: str) -> None:
        for n, (reply, window, future) in enumerate(items):
            if future.cancelled():
                continue
            try:
                refs = self.store.put([window])
                with self._lock:
                    if reply in self._pending:
                        self._pending[reply].refs = refs
                self.celery.send_task(WINDOWS_TASK, args=[refs, opts, reply], queue=queue)
            except Exception as exc:  # Redis down mid-submission: this request cannot be decoded now
                error = NotReadyError(f"the task queue does not answer ({type(exc).__name__}); try again", retry_after=5.0)
                with self._lock:
                    for later_reply, _, _ in items[n:]:
                        self._pending.pop(later_reply, None)
                for _, _, later in items[n:]:
                    if not later.done():
                        later.set_exception(error)
                return
        self._wake.set()

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(error)

    def _wait_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                keys = list(self._pending)
            if not keys:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                popped = self._waiter_redis.blpop(keys, timeout=1)
            except Exception as exc:  # Redis restarted: the tasks and their audio may be gone
                log.warning("lost the reply connection (%s): pending requests fail with 503", exc)
                self._fail_pending(NotReadyError("the task queue restarted while decoding; try again", retry_after=2.0))
                self._stop.wait(1.0)
                continue
            if popped is not None:
                key, raw = popped[0].decode(), popped[1]
                with self._lock:
                    item = self._pending.pop(key, None)
                if item is not None:
                    self._resolve(item, json.loads(raw))
            self._expire()

    def _resolve(self, item: _Pending, payload: dict[str, Any]) -> None:
        try:
            self.store.delete(item.refs)
        except Exception:
            log.debug("window audio not deleted (it expires)", exc_info=True)
        if item.future.done():  # the caller went away
            return
        if "error" in payload:
            err = payload["error"]
            cls = _ERRORS.get(err.get("code", ""), WorkerError)
            message = f"worker {payload.get('worker')}: {err.get('message')}"
            item.future.set_exception(cls(message) if cls is not WorkerError else WorkerError(message, code=err.get("code")))
            return
        item.future.set_result(result_from_dict(payload["results"][0]))

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [k for k, item in self._pending.items() if item.deadline < now or item.future.cancelled()]
            items = [self._pending.pop(k) for k in late]
        for item in items:
            if not item.future.done():
                item.future.set_exception(
                    OverloadedError(f"no worker answered within {self.q.request_timeout_s:g} s; try again", retry_after=5.0)
                )

    # -- the sweep ---------------------------------------------------------------------------------
    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.q.heartbeat_s):
            self.refresh_view()
            try:
                self.sweep()
            except Exception as exc:
                log.warning("sweep failed (%s); retrying", exc)

    def sweep(self) -> None:
        """One pass of recovery (see the module docstring); returns at once when another gateway holds the lock."""
        assert self.jobs is not None
        redis = self.registry.redis
        self._retry_undispatched()  # this gateway's own: jobs it accepted while Redis was away
        run_id = str(redis.info("server")["run_id"])
        if self._redis_run_id not in (None, run_id):
            self._redis_restarted = True
        self._redis_run_id = run_id
        lock = redis.lock(self.registry.key("sweep"), timeout=60, blocking=False)
        if not lock.acquire(blocking=False):
            return
        try:
            known = redis.get(self.registry.key("redis_run_id"))
            now = time.time()
            if known is None or known.decode() != run_id:
                # A Redis we have not seen: a first start, or a restart that lost its queues. Re-send every
                # queued job (a job whose task survived runs once: tasks are idempotent).
                queued = [j.id for j in self.jobs.repository.unfinished() if j.state.value == "queued"]
                for job_id in queued:
                    self.dispatch_job(job_id)
                redis.set(self.registry.key("redis_run_id"), run_id)
                redis.set(self.registry.key("registry_since"), now)
                # A restarted Redis comes back empty (its run id key too): counted when this gateway saw
                # the one before, also when every job had left the queue (a worker had prefetched them).
                if known is not None or queued or self._redis_restarted:
                    self.registry.count("redis_resyncs")
                    log.info("Redis %s is new to this deployment: %d queued job(s) sent again", run_id[:8], len(queued))
                self._redis_restarted = False
            since = float(redis.get(self.registry.key("registry_since")) or now)
            if now - since < self.q.worker_ttl_s:
                return  # workers have not all announced themselves to this Redis yet
            self._recover_dead_workers_jobs()
        finally:
            try:
                lock.release()
            except Exception:
                log.debug("sweep lock already expired", exc_info=True)

    def _retry_undispatched(self) -> None:
        with self._lock:
            waiting, self._undispatched = self._undispatched, set()
        for job_id in waiting:
            self.dispatch_job(job_id)

    def _recover_dead_workers_jobs(self) -> None:
        assert self.jobs is not None
        jobs = self.jobs
        alive = {w.name: w for w in self.registry.alive()}
        now = time.time()
        for job in jobs.repository.unfinished():
            if job.state.value != "running":
                continue
            owner = alive.get(job.worker) if job.worker is not None else None
            if owner is not None:
                # Alive, and running it (or claimed it moments ago): leave it. Alive but not running it
                # (its task died with the database, say): the job would wait forever, so it goes back.
                started = job.started_at.timestamp() if job.started_at else now
                if job.id in owner.jobs or now - started < 2 * self.q.worker_ttl_s:
                    continue
            has_upload = job.upload_path is not None and Path(job.upload_path).is_file()
            who = f"worker {job.worker} (dead)" if job.worker else "a server that is gone"
            if owner is not None:
                who = f"worker {job.worker} (alive, but no longer running it)"
            if job.attempts >= jobs.max_attempts:
                jobs.repository.fail(
                    job.id,
                    "too_many_attempts",
                    f"{who} stopped during each of {job.attempts} attempts at this job, so it was given up",
                )
            elif not has_upload:
                jobs.repository.fail(job.id, "upload_lost", "upload lost: this job's audio file was not found; submit it again")
            elif jobs.repository.requeue(job.id, worker=job.worker):
                log.info("job %s: %s; sent to a worker again", job.id, who)
                self.registry.count("jobs_recovered")
                self.dispatch_job(job.id)


class RemoteDecoder:
    """A :class:`~malsori.engine.decoder.WindowDecoder` whose windows are decoded by the workers of one queue."""

    def __init__(self, gateway: ScaleGateway, queue: str) -> None:
        self.gateway = gateway
        self.queue = queue

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]:
        return self.gateway.submit_windows(windows, options, self.queue)
