"""Scaled-out live sessions on a gateway: what ``streaming_routes.startup`` builds when a broker is
configured. Live windows go to workers (:class:`~.live_client.RemoteWindowDecoder` behind a
:class:`~malsori.engine.scheduler.DecodeScheduler`, so live windows keep their priority, batching
and admission rules) and sessions are kept in Redis (:class:`~.live_state.LiveStore`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..engine.scheduler import DecodeScheduler, Priority
from .live_client import RemoteWindowDecoder, window_queue
from .live_state import LiveStore, gateway_id

if TYPE_CHECKING:
    from ..server.services import Services

__all__ = ["start_live", "stop_live", "IN_FLIGHT"]

IN_FLIGHT = 2
"""Batches of live windows one gateway has on workers at once (threads of its live scheduler). Two,
as one process has one batch decoding and the next ready: a window stays in the gateway's queue
(where a superseded partial is dropped and a final goes first) until a batch slot frees; more in
flight would send stale partials ahead of finals to a busy worker."""


def start_live(services: Services, redis_url: str) -> None:
    """Route live windows to workers and keep sessions in Redis (needs ``services.live_runner``)."""
    runner = services.live_runner
    assert runner is not None
    settings = services.settings
    prefix = settings.queue.key_prefix
    name = gateway_id()
    q = settings.queue
    queue = window_queue(prefix, q.cpu_queue)
    remote = RemoteWindowDecoder(redis_url, gateway_id=name, timeout_s=q.live_timeout_s, queue=queue, route=_router(services))
    services.live_scheduler = DecodeScheduler(
        remote,
        max_batch=settings.engine.batch_size(remote),
        max_pending={Priority.LIVE: 256},
        workers=IN_FLIGHT,
        urgent_batch=settings.engine.final_batch(None),  # the workers' devices are not known here
    )
    services.live_store = LiveStore(
        redis_url, gateway_id=name, resume_grace_s=settings.streaming.resume_grace_s, prefix=prefix, on_fenced=runner.release
    )
    services.live_store.start()


def _router(services: Services, cache_s: float = 1.0) -> Callable[[], str] | None:
    """The list live windows go to now: the routing mode's choice of CPU or GPU workers (shared by
    every gateway, ``scale.gateway.ScaleGateway.route``), looked up at most once per ``cache_s``.
    Raises ``NoWorkerError`` (an ``OverloadedError``: the live loop retries) when no worker can take it."""
    scale = services.scale
    if scale is None:
        return None
    prefix = services.settings.queue.key_prefix
    last: list[float | str] = [0.0, ""]

    def route() -> str:
        now = time.monotonic()
        if now - float(last[0]) >= cache_s or not last[1]:
            last[1] = window_queue(prefix, scale.route())
            last[0] = now
        return str(last[1])

    return route


async def stop_live(services: Services) -> None:
    scheduler, store = services.live_scheduler, services.live_store
    if scheduler is not None:
        scheduler.close()
        decoder = scheduler.decoder
        if isinstance(decoder, RemoteWindowDecoder):
            decoder.close()
    if store is not None:
        await store.close()
    services.live_scheduler = services.live_store = None
