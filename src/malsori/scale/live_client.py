"""The gateway's side of live decoding on workers: a :class:`~malsori.engine.decoder.WindowDecoder`
whose futures complete when a worker answers.

``submit`` pushes one request (the windows of one batch, see :mod:`.live_wire`) on the Redis list
``malsori:live:windows``; any worker running :func:`~malsori.scale.live_worker.serve_live_windows`
pops it, decodes it and pushes the results on this gateway's reply list, which one thread here reads
with BLPOP and turns into finished futures. Redis lists were chosen by measurement over a Celery task
per batch and over Redis streams (docs/scaling.md, bench/live_hop.py).

A worker that dies with a window (SIGKILL, lost machine) never answers: after ``timeout_s`` the
window's future fails with :class:`OverloadedError`, which the live loop treats as "try again" (the
audio is kept and the window asked for anew), so the stream goes on through another worker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, cast

import redis

from ..engine.options import TranscribeOptions
from ..engine.windows import Window, WindowResult
from ..errors import MalsoriError, OverloadedError
from .live_wire import WindowRequest, decode_reply, encode_request

__all__ = ["RemoteWindowDecoder", "WINDOW_QUEUE", "reply_queue", "urgent_queue", "window_queue"]

log = logging.getLogger(__name__)

WINDOW_QUEUE = "malsori:live:windows"
"""The Redis list every gateway pushes live windows on and every worker pops them from. Finals go
on ``<WINDOW_QUEUE>:urgent``, which a worker empties first, so a final never waits behind other
gateways' partials. Scaled out with CPU and GPU queues, each worker queue has its pair of lists
(:func:`window_queue`)."""


def urgent_queue(queue: str) -> str:
    return f"{queue}:urgent"


def window_queue(prefix: str, worker_queue: str) -> str:
    """The list of live windows for the workers of ``worker_queue`` (``stt.cpu``, ``stt.gpu``)."""
    return f"{prefix}:live:windows:{worker_queue}"


def reply_queue(gateway_id: str) -> str:
    return f"malsori:live:replies:{gateway_id}"


class RemoteWindowDecoder:
    """Thread-safe. ``close()`` fails what is still waiting and stops the reply thread."""

    def __init__(
        self, redis_url: str, *, gateway_id: str, timeout_s: float = 15.0, queue: str = WINDOW_QUEUE,
        route: Callable[[], str] | None = None,
    ) -> None:  # fmt: skip
        """``route()``, when given, names the list each request goes to (the routing mode's choice
        of CPU or GPU workers; it raises :class:`OverloadedError` when no worker can take it);
        without it every request goes to ``queue``."""
        self.gateway_id = gateway_id
        self.timeout_s = timeout_s
        self.queue = queue
        self.route = route
        self.reply_to = reply_queue(gateway_id)
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0, health_check_interval=10)
        self._pending: dict[str, tuple[list[Future[WindowResult]], float]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.last_worker: str | None = None
        """The worker that answered last (for /stt/status and tests)."""
        self.answered = 0
        self.timed_out = 0
        self._thread = threading.Thread(target=self._listen, name=f"malsori-live-replies-{gateway_id}", daemon=True)
        self._thread.start()

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]:
        if self._closed.is_set():
            raise OverloadedError("the gateway is shutting down", retry_after=5.0)
        futures: list[Future[WindowResult]] = [Future() for _ in windows]
        if not windows:
            return futures
        now = time.time()
        request = WindowRequest(uuid.uuid4().hex, self.reply_to, now + self.timeout_s, options, tuple(windows), now)
        queue = self.route() if self.route is not None else self.queue
        with self._lock:
            self._pending[request.id] = (futures, request.deadline)
        try:
            # Partials are the only windows decoded without temperature fallback (a live preview).
            urgent = any(w.fallback for w in windows)
            self._redis.rpush(urgent_queue(queue) if urgent else queue, encode_request(request))
        except redis.RedisError as exc:
            with self._lock:
                self._pending.pop(request.id, None)
            raise OverloadedError(f"the worker queue (Redis) cannot be reached: {exc}", retry_after=1.0) from None
        return futures

    def waiting(self) -> int:
        """Requests sent and not answered yet."""
        with self._lock:
            return len(self._pending)

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                item = cast("Any", self._redis.blpop([self.reply_to], timeout=1))
            except redis.RedisError as exc:
                log.warning("live replies: Redis unreachable (%s); retrying", exc)
                self._expire()
                self._closed.wait(0.5)
                continue
            if item is not None:
                self._answer(item[1])
            self._expire()

    def _answer(self, data: bytes) -> None:
        try:
            request_id, results, error, reply = decode_reply(data)
        except (ValueError, KeyError, TypeError):
            log.exception("live replies: an unreadable reply")
            return
        with self._lock:
            entry = self._pending.pop(request_id, None)
        if entry is None:  # answered after its deadline: the window was asked for again meanwhile
            return
        futures = entry[0]
        self.last_worker = reply.get("worker")
        self.answered += 1
        if error is not None or results is None or len(results) != len(futures):
            err = error or {"code": "internal_error", "message": "the worker's reply does not match the request"}
            exc: MalsoriError = (
                OverloadedError(err["message"], retry_after=1.0)
                if err["code"] in ("overloaded", "not_ready")
                else MalsoriError(err["message"])
            )
            exc.code = err["code"]
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if future.set_running_or_notify_cancel():
                future.set_result(result)

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            overdue = [(rid, entry[0]) for rid, entry in self._pending.items() if entry[1] <= now]
            for rid, _ in overdue:
                del self._pending[rid]
        for _, futures in overdue:
            self.timed_out += 1
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(
                        OverloadedError(f"no worker answered within {self.timeout_s:g} s; asking again", retry_after=0.2)
                    )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(3.0)
        with self._lock:
            leftovers, self._pending = list(self._pending.values()), {}
        for futures, _ in leftovers:
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(OverloadedError("the gateway is shutting down", retry_after=5.0))
        self._redis.close()
