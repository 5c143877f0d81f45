"""What every route of one app shares: settings, the one model, its scheduler, metrics, services.

``create_app`` builds one :class:`Services` per app and stores it on ``app.state.services``; routes
reach it as ``request.app.state.services`` (HTTP) or ``websocket.app.state.services`` (WebSocket).
Nothing here is global, so tests can build several apps in one process.

The model loads in a worker thread after the app starts (so ``/health`` answers while it loads):
until then ``transcriber``, ``scheduler`` and ``detectors`` are ``None``. Routes call
:meth:`Services.require_ready` (raises :class:`NotReadyError`, mapped to 503 with Retry-After or close
code 1013); background workers ``await services.wait_ready()``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import OverloadedError

if TYPE_CHECKING:
    from ..detection import Detectors
    from ..engine.scheduler import DecodeScheduler
    from ..engine.transcriber import Transcriber
    from .metrics import Metrics

__all__ = ["Services", "NotReadyError", "ROUTING_MODES", "active_count"]

ROUTING_MODES = ("auto", "cpu", "gpu")


class NotReadyError(OverloadedError):
    """The model is still loading (or failed to load): try again later (HTTP 503, close code 1013)."""

    code = "not_ready"


@dataclass
class Services:
    """The shared state of one app. Fields other modules read or set:

    - ``settings``: the one :class:`~malsori.config.Settings` the app was built with.
    - ``metrics``: the app's :class:`~malsori.server.metrics.Metrics` (its own Prometheus registry).
    - ``started_at``: ``time.time()`` when the app object was built (uptime in /stt/status).
    - ``transcriber``: the one shared :class:`~malsori.engine.Transcriber`; ``None`` until loaded.
    - ``scheduler``: the :class:`~malsori.engine.scheduler.DecodeScheduler` over ``transcriber``
      (every decode goes through it: LIVE for streams, REQUEST for HTTP, JOB for jobs); its queue
      bounds come from ``settings.limits`` (``max_pending_requests``, ``max_pending_jobs``).
      ``None`` until the model is loaded.
    - ``detectors``: :class:`~malsori.detection.Detectors` (Silero VAD and the Whisper tiny.en
      no-speech detector) for ``POST /detect``; ``None`` until the model is loaded.
    - ``jobs``: the job service, set by ``jobs_routes.startup``; ``None`` before. /stt/status and
      /metrics show ``jobs.active_count()`` when it has that method.
    - ``sessions``: the live-session registry, set by ``streaming_routes.startup``; ``None`` before.
      /stt/status and /metrics show ``sessions.active_count()`` (or ``len(sessions)``).
    - ``live_runner``: the streaming decode loops (``malsori.server.live.LiveRunner``), set by
      ``streaming_routes.startup``; ``None`` before.
    - ``tasks``: background asyncio tasks a routes module started and must stop in its ``shutdown``,
      by name (e.g. ``jobs.start``), so no module keeps state of its own across apps.
    - ``routing_mode``: ``auto``, ``cpu`` or ``gpu``: where new work should go, toggled by the
      control panel (see ``set_routing_mode``).
    - ``load_error``: why the model failed to load, if it did (shown by /is_ready and /stt/status).
    """

    settings: Settings
    metrics: "Metrics"
    started_at: float = field(default_factory=time.time)
    transcriber: "Transcriber | None" = None
    scheduler: "DecodeScheduler | None" = None
    detectors: "Detectors | None" = None
    jobs: Any = None
    sessions: Any = None
    live_runner: Any = None
    tasks: dict[str, asyncio.Task] = field(default_factory=dict, repr=False)
    routing_mode: str = "auto"
    load_error: str | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    # -- readiness ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.transcriber is not None and self.scheduler is not None

    def mark_ready(self) -> None:
        self._ready.set()

    async def wait_ready(self) -> None:
        """Return once the model is loaded (for background workers started before that)."""
        await self._ready.wait()

    def require_ready(self) -> tuple["Transcriber", "DecodeScheduler"]:
        """The loaded transcriber and scheduler, or :class:`NotReadyError`."""
        if self.transcriber is None or self.scheduler is None:
            if self.load_error:
                raise NotReadyError(f"the model failed to load: {self.load_error}", retry_after=30.0)
            raise NotReadyError("the model is still loading; try again shortly", retry_after=2.0)
        return self.transcriber, self.scheduler

    # -- facts -------------------------------------------------------------------------------------
    @property
    def uptime_s(self) -> float:
        return time.time() - self.started_at

    def active_jobs(self) -> int:
        return active_count(self.jobs)

    def active_sessions(self) -> int:
        return active_count(self.sessions)

    def set_routing_mode(self, mode: str, *, gpu_available: bool) -> None:
        """Change where new work goes; ``gpu`` is refused (InvalidOptionsError) when there is no GPU."""
        from ..errors import InvalidOptionsError

        if mode not in ROUTING_MODES:
            raise InvalidOptionsError(f"routing mode must be one of {', '.join(ROUTING_MODES)}, not {mode!r}")
        if mode == "gpu" and not gpu_available:
            raise InvalidOptionsError("no GPU is available on this server, so work cannot be routed to one")
        self.routing_mode = mode


def active_count(service: Any) -> int:
    """``service.active_count()``, else ``len(service)``, else 0 (services are optional)."""
    if service is None:
        return 0
    counter = getattr(service, "active_count", None)
    if callable(counter):
        return int(counter())
    try:
        return len(service)
    except TypeError:
        return 0
