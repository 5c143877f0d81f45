"""Graceful stop: on SIGTERM (or Ctrl+C), live sessions end with their finals before the server goes.

uvicorn's own shutdown closes every WebSocket at once with 1012, so speech a client had sent whose
final was not out yet would be lost. :class:`DrainingServer` runs first: it stops taking
connections (a load balancer's health check fails, new clients go elsewhere), then finishes every
live session like a client's stop (the open phrase is decoded, its finals and ``end`` with reason
``shutdown`` are sent, the socket closes with 1000), for at most ``server.drain_timeout_s``; then
uvicorn's shutdown closes what is left and the app's lifespan stops the job runner (a running job goes
back to the queue and runs again at the next start, or on another worker).

Scaled out (a Redis live store), sessions are not finished: they stay resumable, and a client that
reconnects resumes on another gateway with nothing lost (docs/scaling.md), which beats ending them.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from .services import Services

__all__ = ["DrainingServer"]

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains the app's live sessions before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self.services = services

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections from here on (uvicorn closes them again: harmless)
            server.close()
        runner = self.services.live_runner
        if runner is not None and self.services.live_store is None and not self.force_exit:
            started = time.monotonic()
            count = await runner.drain(self.services.settings.server.drain_timeout_s)
            if count:
                log.info("drained %d live session(s) in %.2f s", count, time.monotonic() - started)
        await super().shutdown(sockets)
