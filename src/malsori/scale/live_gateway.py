"""Scaled-out live sessions on a gateway: what ``streaming_routes.startup`` builds when a broker is
configured. Live windows go to workers (:class:`~.live_client.RemoteWindowDecoder` behind a
:class:`~malsori.engine.scheduler.DecodeScheduler`, so live windows keep their priority, batching
and admission rules) and sessions are kept in Redis (:class:`~.live_state.LiveStore`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine.scheduler import DecodeScheduler, Priority
from .live_client import RemoteWindowDecoder
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
    remote = RemoteWindowDecoder(redis_url, gateway_id=name, queue=f"{prefix}:live:windows")
    services.live_scheduler = DecodeScheduler(
        remote,
        max_batch=settings.engine.max_batch_size,
        max_pending={Priority.LIVE: 256},
        workers=IN_FLIGHT,
    )
    services.live_store = LiveStore(
        redis_url, gateway_id=name, resume_grace_s=settings.streaming.resume_grace_s, prefix=prefix, on_fenced=runner.release
    )
    services.live_store.start()


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
