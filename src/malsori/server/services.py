"""What every route of one app shares: settings, the one model, its scheduler, metrics, services.

``create_app`` builds one :class:`Services` per app and stores it on ``app.state.services``. HTTP
routes and WebSocket handlers take what they need from it as typed FastAPI dependencies
(:mod:`malsori.server.deps`). Nothing here is global, so tests can build several apps in one process.

The model loads in a worker thread after the app starts (so ``/health`` answers while it loads):
until then ``transcriber``, ``scheduler`` and ``detectors`` are ``None``. :meth:`Services.require_ready`
raises :class:`NotReadyError` (mapped to 503 with Retry-After or close code 1013) until it is loaded;
background workers ``await services.wait_ready()``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import InvalidOptionsError, OverloadedError

if TYPE_CHECKING:
    from ..analysis.meetings import MeetingBook
    from ..analysis.service import SentimentService
    from ..detection import Detectors
    from ..engine.scheduler import DecodeScheduler
    from ..engine.transcriber import Transcriber
    from ..jobs import JobService
    from ..scale.gateway import ScaleGateway
    from ..scale.live_state import LiveStore
    from ..streaming.manager import SessionManager
    from ..tenants import Tenants
    from .live import LiveRunner
    from .metrics import Metrics

__all__ = ["Services", "NotReadyError", "ROUTING_MODES", "MODEL_ALIASES"]

ROUTING_MODES = ("auto", "cpu", "gpu")

MODEL_ALIASES = ("whisper-1",)
"""Names a request may give as ``model`` besides the served model's own name (OpenAI's clients send
``whisper-1``). The service has one shared model, and that is what answers to all of them."""


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
    - ``jobs``: the :class:`~malsori.jobs.JobService`, set by ``jobs_routes.startup``; ``None`` before.
    - ``sessions``: the live :class:`~malsori.streaming.manager.SessionManager`, set by
      ``streaming_routes.startup``; ``None`` before.
    - ``live_runner``: the streaming decode loops (:class:`~malsori.server.live.LiveRunner`), set by
      ``streaming_routes.startup``; ``None`` before.
    - ``tasks``: background asyncio tasks a routes module started and must stop in its ``shutdown``,
      by name (e.g. ``jobs.start``), so no module keeps state of its own across apps.
    - ``live_scheduler``: scaled out (a broker configured), the scheduler whose decoder sends live
      windows to workers (:class:`~malsori.scale.live_client.RemoteWindowDecoder`); ``None``: live
      windows go to ``scheduler`` like everything else.
    - ``live_store``: scaled out, the Redis store of live sessions' state
      (:class:`~malsori.scale.live_state.LiveStore`) that lets another gateway resume them; ``None``
      in one process.
    - ``routing_mode``: ``auto``, ``cpu`` or ``gpu``, set from the control panel. Kept for when
      scale-out workers exist; with one engine nothing routes by it (see :meth:`routing`).
    - ``tenants``: API keys, tokens, rate limits and usage (:class:`~malsori.tenants.Tenants`), set
      when the app starts; ``None`` before.
    - ``load_error``: why the model failed to load, if it did (shown by /is_ready and /stt/status).
    - ``scale``: the :class:`~malsori.scale.gateway.ScaleGateway` when a broker is configured
      (``settings.queue.broker_url``): jobs and synchronous requests then run on workers, and the
      routing mode lives in Redis, shared by every gateway. ``None`` (the default): one process.
    - ``meetings``: the :class:`~malsori.analysis.meetings.MeetingBook` (live meetings, persisted),
      set by ``meetings_routes.startup``; ``None`` before.
    - ``sentiment``: the :class:`~malsori.analysis.service.SentimentService` (one analyzer, loaded on first
      use, in its own thread; scaled out, it sends texts to the ``analyze`` queue). Set by ``create_app``.
    """

    settings: Settings
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    transcriber: Transcriber | None = None
    scheduler: DecodeScheduler | None = None
    detectors: Detectors | None = None
    jobs: JobService | None = None
    sessions: SessionManager | None = None
    live_runner: LiveRunner | None = None
    live_scheduler: DecodeScheduler | None = None
    live_store: LiveStore | None = None
    tasks: dict[str, asyncio.Task] = field(default_factory=dict, repr=False)
    routing_mode: str = "auto"
    load_error: str | None = None
    scale: ScaleGateway | None = None
    meetings: MeetingBook | None = None
    sentiment: SentimentService | None = None
    tenants: Tenants | None = None
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

    def require_ready(self) -> tuple[Transcriber, DecodeScheduler]:
        """The loaded transcriber and scheduler, or :class:`NotReadyError`."""
        if self.transcriber is None or self.scheduler is None:
            if self.load_error:
                raise NotReadyError(f"the model failed to load: {self.load_error}", retry_after=30.0)
            raise NotReadyError("the model is still loading; try again shortly", retry_after=2.0)
        return self.transcriber, self.scheduler

    # -- the served model --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The loaded model's name; while it loads, the name the settings ask for."""
        return self.transcriber.model_name if self.transcriber is not None else self.settings.engine.model

    def served_model_names(self) -> list[str]:
        """Every name a request may give as ``model``: the served model's, then the aliases."""
        return [self.model_name, *MODEL_ALIASES]

    def check_model(self, model: str | None) -> None:
        """InvalidOptionsError (code ``model_not_found``) unless ``model`` is empty or served here."""
        if model and model not in self.served_model_names():
            raise InvalidOptionsError(
                f"model {model!r} is not served here; use one of {', '.join(self.served_model_names())}",
                code="model_not_found",
            )

    # -- facts -------------------------------------------------------------------------------------
    @property
    def uptime_s(self) -> float:
        return time.time() - self.started_at

    def active_jobs(self) -> int:
        return 0 if self.jobs is None else self.jobs.active_count()

    def active_sessions(self) -> int:
        return 0 if self.sessions is None else self.sessions.active_count()

    def engines(self) -> list[dict[str, Any]]:
        """The engines that can run work, this process's own model first (its facts once loaded, what
        the settings ask for while it loads), then each live scale-out worker's (with its ``name`` and ``queues``)."""
        engine = self.settings.engine
        if self.transcriber is None:
            own = {"model": engine.model, "device": engine.device, "compute_type": engine.compute_type, "ready": False}
        else:
            t = self.transcriber
            own = {"model": t.model_name, "device": t.device, "compute_type": t.compute_type, "ready": True}
        return [own, *(w.public() for w in (self.scale.workers() if self.scale is not None else []))]

    def routing(self) -> str:
        """What ``routing_mode`` does now, in words, so no control claims to move work it does not.
        With one engine nothing routes by the mode; scaled out, the mode picks the workers' queue."""
        if self.scale is not None:
            return self.scale.describe()
        device = self.engines()[0]["device"]
        return f"single engine: every request runs on this process's model ({device})"

    def current_routing_mode(self) -> str:
        """The mode in force: this process's, or scaled out, the one every gateway shares in Redis
        (as last read, at most ``queue.heartbeat_s`` ago)."""
        return self.scale.routing_mode() if self.scale is not None else self.routing_mode

    def set_routing_mode(self, mode: str, *, gpu_available: bool) -> None:
        """Record where new work should go; ``gpu`` is refused (InvalidOptionsError) when there is no GPU."""
        if mode not in ROUTING_MODES:
            raise InvalidOptionsError(f"routing mode must be one of {', '.join(ROUTING_MODES)}, not {mode!r}")
        if mode == "gpu" and not gpu_available:
            raise InvalidOptionsError("no GPU is available on this server, so work cannot be routed to one")
        self.routing_mode = mode
        if self.scale is not None:
            self.scale.set_routing_mode(mode)
