"""The worker's side of live decoding: pop windows from Redis, decode them, push the results back.

``malsori worker`` runs :func:`serve_live_windows` in a thread beside its Celery consumer, with the
decoder it loaded (any :class:`~malsori.engine.decoder.WindowDecoder`). Requests from every gateway
wait on one list; a worker takes one (BLPOP), then whatever else is already waiting up to
``max_batch`` windows, and decodes the requests that share options in one batch, as the in-process
scheduler would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis

from ..engine.decoder import WindowDecoder, decode_composed
from ..engine.scheduler import DecodeScheduler, Priority
from ..errors import MalsoriError
from .live_client import WINDOW_QUEUE, urgent_queue, window_queue
from .live_wire import WindowRequest, decode_request, encode_reply, encode_request, options_key

if TYPE_CHECKING:
    from ..config import Settings


class _Worker(Protocol):
    name: str
    queues: tuple[str, ...]

    @property
    def is_gpu(self) -> bool: ...


__all__ = ["serve_live_windows", "start_live_server", "LiveServerHandle"]

log = logging.getLogger(__name__)

REPLY_TTL_S = 60
"""A reply list whose gateway is gone expires instead of growing."""


def serve_live_windows(
    decoder: WindowDecoder,
    redis_url: str,
    worker_id: str,
    stop_event: threading.Event,
    *,
    max_batch: int = 8,
    queue: str | Sequence[str] = WINDOW_QUEUE,
    on_batch: Callable[[int], None] | None = None,
    fallback_queue: str | None = None,
    on_fallback: Callable[[int], None] | None = None,
) -> None:
    """Serve live windows until ``stop_event`` is set (blocking; run it in a thread). ``queue``: the
    list (or lists, in order of preference) to take windows from; finals on each list's urgent twin
    go first. A lost Redis connection is retried every half second. A failing decode is answered
    with its error, except that with ``fallback_queue`` (a GPU worker: the CPU workers' list) a
    failure that is not a malsori error (out of memory, device lost) sends the windows there
    instead, and ``on_fallback`` counts them."""
    queues = [queue] if isinstance(queue, str) else list(queue)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0, health_check_interval=10)
    log.info("worker %s: serving live windows from %s", worker_id, queue)
    try:
        while not stop_event.is_set():
            try:
                requests = _take(client, queues, max_batch)
                now = time.time()
                groups: dict[str, list[WindowRequest]] = {}
                for request in requests:
                    if request.deadline > now:  # else its gateway gave up on it (and asked again)
                        groups.setdefault(options_key(request.options), []).append(request)
                for group in groups.values():
                    _decode(client, decoder, group, worker_id, fallback_queue, on_fallback)
                    if on_batch is not None:
                        on_batch(sum(len(r.windows) for r in group))
            except redis.RedisError as exc:
                log.warning("worker %s: Redis unreachable (%s); retrying", worker_id, exc)
                stop_event.wait(0.5)
    finally:
        client.close()


def _take(client: redis.Redis, queues: Sequence[str], max_batch: int) -> list[WindowRequest]:
    """Finals first (BLPOP serves its keys in order), then whatever else waits, up to ``max_batch``."""
    keys = [urgent_queue(q) for q in queues] + list(queues)
    item = cast("Any", client.blpop(keys, timeout=1))
    if item is None:
        return []
    requests = [decode_request(item[1])]
    windows = len(requests[0].windows)
    for key in keys:
        while windows < max_batch:  # one at a time: leave the rest to the other workers
            data = client.lpop(key)
            if data is None:
                break
            requests.append(decode_request(data))  # type: ignore[arg-type]
            windows += len(requests[-1].windows)
    return requests


def _decode(
    client: redis.Redis, decoder: WindowDecoder, group: list[WindowRequest], worker_id: str,
    fallback_queue: str | None = None, on_fallback: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    windows = [w for r in group for w in r.windows]
    started = time.perf_counter()
    try:
        results = decode_composed(decoder, windows, group[0].options)
    except Exception as exc:  # the error belongs to the gateways that asked, not to this worker
        if fallback_queue is not None and not isinstance(exc, MalsoriError):
            log.warning("worker %s: live decode failed on this device (%s); handing %d window(s) to %s",
                        worker_id, exc, len(windows), fallback_queue)  # fmt: skip
            pipe = client.pipeline(transaction=False)
            for r in group:
                urgent = any(w.fallback for w in r.windows)
                pipe.rpush(urgent_queue(fallback_queue) if urgent else fallback_queue, encode_request(r))
            pipe.execute()
            if on_fallback is not None:
                on_fallback(len(windows))
            return
        log.exception("worker %s: live decode failed", worker_id)
        code = exc.code if isinstance(exc, MalsoriError) else "internal_error"
        message = exc.message if isinstance(exc, MalsoriError) else f"the worker failed to decode: {type(exc).__name__}"
        replies = [(r, encode_reply(r.id, worker=worker_id, error=(code, message))) for r in group]
    else:
        ms = (time.perf_counter() - started) * 1000
        replies, position = [], 0
        for r in group:
            n = len(r.windows)
            replies.append((r, encode_reply(r.id, results[position : position + n], worker=worker_id, decode_ms=ms)))
            position += n
    pipe = client.pipeline(transaction=False)
    for request, reply in replies:
        pipe.rpush(request.reply_to, reply)
        pipe.expire(request.reply_to, REPLY_TTL_S)
    pipe.execute()


class LiveServerHandle:
    """What ``malsori worker`` keeps of its live-window server: ``address`` (announced in the worker
    registry as ``live_address``) and ``close()``."""

    def __init__(self, address: str, thread: threading.Thread, stop: threading.Event) -> None:
        self.address = address
        self._thread = thread
        self._stop = stop

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def start_live_server(*, scheduler: DecodeScheduler, settings: Settings, worker: _Worker) -> LiveServerHandle:
    """The hook ``malsori worker`` calls once its model is loaded (docs/scaling.md): serve live
    windows in a thread, through the worker's scheduler at LIVE priority (ahead of its jobs' windows),
    from the lists of the worker queues it consumes (``stt.gpu`` before ``stt.cpu``). A GPU worker
    that does not serve the CPU queue hands windows its device fails on to the CPU workers' list."""
    q = settings.queue
    prefix = q.key_prefix
    served = [name for name in (q.gpu_queue, q.cpu_queue) if name in worker.queues]
    lists = [window_queue(prefix, name) for name in served]
    fallback = window_queue(prefix, q.cpu_queue) if worker.is_gpu and q.cpu_queue not in worker.queues else None
    stop = threading.Event()
    decoder = scheduler.lane(f"live-{worker.name}", Priority.LIVE)

    def count_fallback(windows: int) -> None:
        from .registry import Registry

        registry = Registry(q.redis(), prefix=prefix)
        try:
            registry.count("gpu_fallbacks")
        finally:
            registry.close()

    thread = threading.Thread(
        target=serve_live_windows,
        args=(decoder, q.redis(), worker.name, stop),
        kwargs={"queue": lists, "max_batch": settings.engine.batch_size(decoder), "fallback_queue": fallback,
                "on_fallback": count_fallback},
        name="malsori-live-windows",
        daemon=True,
    )  # fmt: skip
    thread.start()
    return LiveServerHandle("redis-list:" + ",".join(lists), thread, stop)
