"""``create_app(settings)``: the FastAPI app of ``malsori serve``.

Settings are built here (or passed in), never at import. The model loads in a worker thread once the
app is up, so ``/health`` answers at once and ``/is_ready`` says false until the model can take work.
The routes modules of jobs, meetings, streaming and the web page each expose ``router`` plus
``startup(services)`` / ``shutdown(services)``; they start in that order and stop in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__, memory
from ..config import Settings
from ..errors import AudioError, AudioTooLargeError, RequestTimeoutError
from ..streaming.manager import VadFactory
from . import http_routes, jobs_routes, meetings_routes, streaming_routes, tenants_routes, web_routes
from .auth import AuthMiddleware
from .errors import error_response, install_error_handlers
from .metrics import Metrics, MetricsMiddleware
from .metrics import router as metrics_router
from .services import Services

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# meetings before streaming: live sessions end (and write their meetings) before the writer stops.
_ROUTE_MODULES = (jobs_routes, meetings_routes, streaming_routes, web_routes)
# Room for multipart framing and form fields on top of the largest accepted file.
_BODY_OVERHEAD = 1 << 20


def _build_detectors(services: Services, closers: list):
    """Silero now; the Whisper tiny.en detector on first use, with its own small scheduler."""
    from ..detection import Detectors, WhisperDetector
    from ..engine import Transcriber
    from ..engine.scheduler import DecodeScheduler, Priority

    settings = services.settings

    def whisper_factory() -> WhisperDetector:
        model = Transcriber(settings.engine_config(settings.engine.detector_model))
        scheduler = DecodeScheduler(
            model,
            max_batch=settings.engine.batch_size(model),
            max_pending={Priority.REQUEST: settings.limits.max_pending_requests},
            workers=model.workers,
        )
        closers.append(scheduler.close)
        return WhisperDetector(lambda: scheduler.lane(f"detect-{uuid.uuid4().hex[:12]}", Priority.REQUEST))

    return Detectors(whisper_factory)


def _build_sentiment(services: Services, closers: list) -> None:
    """The sentiment service: the configured analyzer, loaded on first use (scaled out: routed to the
    ``analyze`` queue while a worker serves it)."""
    from ..analysis import shared_sentiment_analyzer
    from ..analysis.service import SentimentService

    a = services.settings.analysis

    def local():
        return shared_sentiment_analyzer(a.sentiment_model, threads=a.threads)

    factory = local
    if services.scale is not None:
        from ..scale.analyze import RoutedSentimentAnalyzer

        def factory():
            routed = RoutedSentimentAnalyzer(services.settings, local)
            closers.append(routed.close)
            return routed

    services.sentiment = SentimentService(factory, max_texts=a.max_texts, max_chars=a.max_text_chars)
    closers.append(services.sentiment.close)


def _install_model(services: Services, transcriber, closers: list) -> None:
    from ..engine.scheduler import DecodeScheduler, Priority

    limits = services.settings.limits
    device = str(getattr(transcriber, "device", "cpu"))
    services.metrics.watch_device(device)
    scheduler = DecodeScheduler(
        transcriber,
        max_batch=services.settings.engine.batch_size(transcriber),
        max_pending={Priority.REQUEST: limits.max_pending_requests, Priority.JOB: limits.max_pending_jobs},
        workers=getattr(transcriber, "workers", 1),
        urgent_batch=services.settings.engine.final_batch(device),
        on_batch=lambda report: services.metrics.observe_batch(report, device),
    )
    closers.append(scheduler.close)
    services.detectors = _build_detectors(services, closers)
    services.scheduler = scheduler
    services.transcriber = transcriber
    services.mark_ready()


async def _load_model(services: Services, closers: list) -> None:
    from ..engine import Transcriber

    config = services.settings.engine_config()
    log.info("loading model %s (device %s, compute type %s)", config.model, config.device, config.compute_type)
    try:
        transcriber = await anyio.to_thread.run_sync(Transcriber, config)
    except Exception as exc:  # surfaced by /is_ready and /stt/status; the process stays up to say why
        services.load_error = f"{exc.__class__.__name__}: {exc}"
        log.error("the model could not be loaded: %s", services.load_error)
        return
    _install_model(services, transcriber, closers)
    log.info(
        "model %s ready on %s/%s (%.2f s)", config.model, transcriber.device, transcriber.compute_type, transcriber.load_seconds
    )


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413 before reading them (Content-Length), or as
    soon as a chunked body passes it; and with 408 a body whose next piece does not come within
    ``timeout_s`` (a slow-loris upload), while the body is still arriving only."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 0.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = AudioTooLargeError(f"the request body is over the limit of {self.max_bytes / 1e6:.1f} MB")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.max_bytes:
                    await error_response(too_large)(scope, receive, send)
                    return
        seen = 0
        exceeded = False
        complete = False
        failure: AudioError | RequestTimeoutError = too_large

        async def limited_receive():
            nonlocal seen, exceeded, complete, failure
            if complete or self.timeout_s <= 0:
                message = await receive()  # the body is in: waiting for a disconnect is not slow
            else:
                try:
                    with anyio.fail_after(self.timeout_s):
                        message = await receive()
                except TimeoutError:
                    exceeded, failure = True, RequestTimeoutError(f"the request body stalled for {self.timeout_s:g} s")
                    raise failure from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise too_large
            return message

        async def guarded_send(message) -> None:
            # Body parsers (FastAPI's form parsing) turn any error while reading into a 400; once
            # the limit was crossed, the answer is our 413 instead of whatever the app made of it.
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                await error_response(failure)(scope, receive, send)

        await self.app(scope, limited_receive, guarded_send)


def _start_trimmer(interval_s: float) -> asyncio.Task | None:
    """Hand free heap memory back to the system every ``interval_s`` (malsori.memory)."""
    if interval_s <= 0:
        return None

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            await anyio.to_thread.run_sync(memory.trim)

    return asyncio.create_task(loop(), name="malsori-memory-trim")


def create_app(settings: Settings | None = None, *, transcriber=None, live_vad: VadFactory | None = None) -> FastAPI:
    """The service. ``transcriber`` injects a ready model (tests: ``engine.fake.FakeDecoder``);
    otherwise the configured one loads in the background after startup. ``live_vad`` makes each live
    session's voice activity detector instead of Silero (tests: ``streaming.vad.EnergyVad``, which
    hears the fake decoder's tone bursts)."""
    settings = settings or Settings()
    metrics = Metrics()
    services = Services(settings=settings, metrics=metrics)
    metrics.bind(services)
    closers: list = []
    # What a routes module's startup takes beyond ``services``, only where something was injected.
    startup_options = {streaming_routes: {"vad_factory": live_vad}} if live_vad is not None else {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Keys and limits before any routes module serves (a server exposed with no key stops here),
        # closed after them all (sessions ending at shutdown are metered).
        await tenants_routes.startup(services)
        if settings.queue.broker_url:  # scaled out: jobs and requests go to workers (docs/scaling.md)
            from ..scale import require_queue_extra

            require_queue_extra()
            from ..scale.gateway import ScaleGateway

            services.scale = ScaleGateway(settings)
            closers.insert(0, services.scale.close)  # closed last, after the routes modules stopped
        _build_sentiment(services, closers)
        load_task = None
        if transcriber is not None:
            _install_model(services, transcriber, closers)
        else:
            load_task = asyncio.create_task(_load_model(services, closers))
        started = []
        trimmer = _start_trimmer(settings.server.memory_trim_interval_s)
        try:
            for module in _ROUTE_MODULES:
                await module.startup(services, **startup_options.get(module, {}))
                started.append(module)
            yield
        finally:
            if trimmer is not None:
                trimmer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trimmer
            for module in reversed(started):
                try:
                    await module.shutdown(services)
                except Exception:
                    log.exception("shutdown of %s failed", module.__name__)
            await tenants_routes.shutdown(services)
            if load_task is not None and not load_task.done():
                # A load cannot be interrupted mid-way; let it finish in its thread, then close.
                with contextlib.suppress(Exception):
                    await load_task
            for close in reversed(closers):
                await anyio.to_thread.run_sync(close)

    app = FastAPI(
        title="malsori",
        version=__version__,
        description="Self-hosted speech-to-text on Whisper: OpenAI-compatible, seed-compatible and live endpoints.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(http_routes.router)
    app.include_router(metrics_router)
    app.include_router(tenants_routes.router)
    for module in _ROUTE_MODULES:
        app.include_router(module.router)

    # Outermost last: metrics see every response, including 413s from the body limit and CORS.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.limits.max_upload_bytes + _BODY_OVERHEAD,
        timeout_s=settings.limits.body_timeout_s,
    )
    # Outside the body limit (an unauthenticated upload is refused before its body is read), inside
    # CORS (preflights need no key; a 401 still carries the CORS headers a browser needs to read it).
    app.add_middleware(AuthMiddleware)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
