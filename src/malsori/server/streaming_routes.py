"""Live WebSocket endpoints (docs/protocol.md): one connection loop, four protocol objects.

``/v1/stream``, ``/stt/realtime``, ``/v1/stream/raw`` and ``/v1/realtime`` (OpenAI Realtime
transcription) differ only in their
:class:`~malsori.server.live_protocols.LiveProtocol`: how frames parse and events render, and
whether a session survives a dropped connection. Admission, resume, takeover and the decode loop are
shared (``malsori.streaming.manager``, ``server.live``). An error becomes a fatal ``error`` event and
the close code of :func:`server.errors.ws_close_code`; it ends only the offending connection's session.

Every socket authenticates first (``server.auth.authenticate_socket``: a token or key in the query or
headers, or an ``auth`` first message) when API keys exist; a refusal is an ``error`` event and close
code 4401 (no valid credentials) or 4403 (no ``transcribe`` scope). A session belongs to its key's
tenant: only that tenant can resume it, and its audio is metered to it when it ends.

Routes-module contract: ``router``, ``async startup(services)`` (sets ``services.sessions`` and
``services.live_runner``), ``async shutdown(services)``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Annotated

import anyio
import numpy as np
from fastapi import APIRouter, Depends, WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from ..engine.audio import SAMPLE_RATE, pcm_to_float32
from ..errors import AudioTooLargeError, InvalidOptionsError, MalsoriError, ProtocolError, RateLimitedError
from ..protocol import CloseCode
from ..streaming.events import Error, Event
from ..streaming.manager import LiveSession, SessionManager, VadFactory
from ..streaming.resample import StreamResampler
from ..streaming.vad import VAD_CHUNK
from ..tenants import OPEN, Principal
from .auth import USAGE_OPEN_TENANT, authenticate_socket
from .deps import ServicesDep
from .errors import ws_close_code
from .live import LiveRunner, Outbox
from .live_protocols import (
    Audio,
    Commands,
    LiveProtocol,
    RawProtocol,
    Reply,
    Resume,
    Silence,
    Start,
    StartSpec,
    Stop,
    SttProtocol,
    V1Protocol,
)
from .realtime_protocol import RealtimeProtocol
from .services import NotReadyError, Services

__all__ = ["router", "startup", "shutdown", "LiveConnection"]

log = logging.getLogger(__name__)

router = APIRouter()


class LiveConnection:
    """One socket attached to (at most) one session, speaking one protocol."""

    def __init__(
        self, ws: WebSocket, protocol: LiveProtocol, services: Services, runner: LiveRunner, principal: Principal = OPEN
    ) -> None:
        self.protocol = protocol
        self.principal = principal
        self._slot: tuple[str, str] | None = None
        """The tenant's live-session slot this connection holds for the session it opens (tenant, session id)."""
        self.services = services
        self.runner = runner
        self.manager: SessionManager = runner.manager
        self.outbox = Outbox(ws, protocol.render)
        self.live: LiveSession | None = None
        self.resampler: StreamResampler | None = None
        self._published: list[Event] = []
        """Events the session published since the protocol last observed it (``follows_turns``)."""

    def handle(self, commands: Commands) -> None:
        for command in commands if isinstance(commands, list) else [commands]:
            if isinstance(command, Start):
                self.open(command.spec)
            elif isinstance(command, Audio):
                self.audio(command.pcm)
            elif isinstance(command, Stop):
                self.stop()
            elif isinstance(command, Reply):
                self.outbox.send_raw(command.data)
            elif isinstance(command, Silence):
                self.silence(command.samples)

    async def prepare(self, commands: Commands) -> None:
        """Before a start: take the tenant's live-session slot for a new session; scaled out, bring a
        session another gateway ran here when a resume names it."""
        store = self.services.live_store
        for command in commands if isinstance(commands, list) else [commands]:
            if not isinstance(command, Start):
                continue
            resume = command.spec.resume
            if resume is None:
                await self.reserve(command.spec)
            elif store is not None:
                await store.adopt(resume.session_id, resume.token, self.manager, self.runner, tenant_id=self.principal.tenant_id)

    async def reserve(self, spec: StartSpec) -> None:
        """RateLimitedError (close 1013) when the tenant has its ``live_sessions`` open already
        (across gateways when scaled out: malsori.tenants.limits.SessionSlots)."""
        tenants, tenant = self.services.tenants, self.principal.tenant_id
        if tenants is None or tenant is None or self._slot is not None:
            return
        limit = tenants.live_session_limit(tenant)
        if limit <= 0:
            return
        session_id = self._chosen_id(spec) or f"s-{uuid.uuid4().hex[:16]}"
        if not await tenants.slots.acquire(tenant, session_id, limit):
            raise RateLimitedError(
                f"tenant {tenant!r} has its limit of {limit} live sessions open; end one or try again later",
                limit="live_sessions",
                retry_after=5.0,
            )
        self._slot = (tenant, session_id)

    def open(self, spec: StartSpec) -> None:
        if self.services.live_scheduler is None:  # scaled out, workers decode: no model needed here
            self.services.require_ready()
        if spec.resume is not None:
            live = self._resume(spec, spec.resume)
        else:
            labels, tenant = spec.labels, self.principal.tenant_id
            if not self.principal.is_open:  # the key decides the tenant; a different label is refused
                labels = {**labels, "tenant_id": self.principal.acting_tenant(labels.get("tenant_id"))}
            try:
                live = self.manager.create(
                    spec.config, sample_rate=spec.sample_rate, encoding=spec.encoding, load=self.runner.load(),
                    labels=labels, protocol=self.protocol.name, tenant_id=tenant,
                    session_id=self._chosen_id(spec) or (self._slot[1] if self._slot else None),
                )  # fmt: skip
            except Exception:
                self._give_back_slot()
                raise
            self._slot = None  # the session holds it now: released when it ends
            if self.services.live_store is not None and self.protocol.resumable:
                self.services.live_store.track(live)
            self.protocol.opened(live)
            self.manager.attach(live, self._deliver if self.protocol.follows_turns else self.outbox.deliver, self)
            self.outbox.deliver(live.ready(resumed=False))
            if self.protocol.follows_turns:
                self.runner.watch(live, lambda: self._observe(live))
            self.runner.start(live, stats=spec.stats, meeting_id=live.labels.get("meeting_id"))
        self.live = live
        self.resampler = StreamResampler(live.sample_rate)

    def _chosen_id(self, spec: StartSpec) -> str | None:
        """The id the client chose for its session (``/stt/realtime``), as this server keeps it: with
        keys, in its tenant's own namespace (``acme/call-1``), so two tenants may both name a session
        ``call-1`` and neither is refused, or learns that the other's is live. The protocol echoes
        the id as the client sent it."""
        chosen = spec.session_id
        if chosen is not None and not 1 <= len(chosen) <= 128:  # checked here: the manager sees it scoped
            raise InvalidOptionsError("session_id must be 1 to 128 characters")
        if chosen is None or self.principal.is_open or self.principal.tenant_id is None:
            return chosen
        return f"{self.principal.tenant_id}/{chosen}"

    def _give_back_slot(self) -> None:
        if self._slot is not None and self.services.tenants is not None:
            tenant, session_id = self._slot
            _spawn(self.services.tenants.slots.release(tenant, session_id))
        self._slot = None

    def _resume(self, spec: StartSpec, resume: Resume) -> LiveSession:
        live = self.manager.resume(resume.session_id, resume.token, tenant_id=self.principal.tenant_id)
        if (live.sample_rate, live.encoding) != (spec.sample_rate, spec.encoding):
            raise InvalidOptionsError("sample_rate and encoding must match the session being resumed")
        self.protocol.opened(live)
        if not live.ended:
            previous = self.manager.attach(live, self.outbox.deliver, self)
            if isinstance(previous, LiveConnection):
                previous.taken_over()
        # Ready, then the events the client lacks, in order, before anything new (all on this tick).
        self.outbox.deliver(live.ready(resumed=True))
        for event in live.events_after(resume.last_seq):
            self.outbox.deliver(event)
        if live.ended:  # it ended while the client was away: the replay was all there was to send
            self.outbox.close(CloseCode.NORMAL)
        return live

    def taken_over(self) -> None:
        """Another connection resumed this one's session (with its token)."""
        self.outbox.deliver(Error(0, "taken_over", "another connection resumed this session", True))
        self.outbox.close(CloseCode.POLICY_VIOLATION, "taken over by another connection")

    def audio(self, data: bytes) -> None:
        live = self.live
        if live is None or self.resampler is None:
            raise ProtocolError("audio before start: send the start message first")
        if self.runner.draining:
            return  # the server is stopping and finished the session itself (server/drain.py): not the client's fault
        if live.ended or live.session.state == "finishing":
            raise ProtocolError("audio after stop")
        limit = self.services.settings.streaming.max_frame_bytes
        if len(data) > limit:
            raise AudioTooLargeError(f"audio frame of {len(data)} bytes is over the limit of {limit} bytes")
        samples = pcm_to_float32(data, live.encoding)
        live.received_samples += len(samples)
        self._feed(live, self.resampler(samples))

    def silence(self, samples: int) -> None:
        if self.live is None:
            raise ProtocolError("silence before start")
        self._feed(self.live, np.zeros(samples, dtype=np.float32))

    def _feed(self, live: LiveSession, pcm: np.ndarray) -> None:
        if not self.protocol.follows_turns:
            self.runner.feed(live, pcm)
            return
        # One VAD chunk per feed, cut at the session's chunk boundaries: the protocol observes the
        # session after each, so it sees every pause end a turn and every onset start one.
        position = round(live.session.audio_seconds * SAMPLE_RATE)
        cuts = range(VAD_CHUNK - position % VAD_CHUNK, len(pcm), VAD_CHUNK)
        for piece in np.split(pcm, list(cuts)):
            if len(piece):
                self.runner.feed(live, piece)

    def _deliver(self, event: Event) -> None:
        self.outbox.deliver(event)
        self._published.append(event)

    def _observe(self, live: LiveSession) -> None:
        events, self._published = self._published, []
        for data in self.protocol.observe(live.session, events):
            self.outbox.send_raw(data)

    def stop(self) -> None:
        if self.live is None:
            raise ProtocolError("stop before start")
        self.runner.finish(self.live)

    def _owns_session(self) -> bool:
        return self.live is not None and not self.live.ended and self.live.connection is self

    def fail(self, exc: BaseException) -> None:
        """End this connection after ``exc``: a fatal error event, then its close code."""
        if isinstance(exc, MalsoriError):
            err_code, message = exc.code, exc.message
        else:
            err_code, message = "internal_error", "the server failed to handle this connection"
            log.error("live connection failed", exc_info=exc)
        error: Error | None = None
        if self.live is not None and self._owns_session():
            # Detach first: the session's ``end`` event would close this socket with 1000, and the
            # error's close code must be the last word.
            self.manager.detach(self.live, self, grace=False)
            error = self.runner.kill(self.live, err_code, message)
        self.outbox.deliver(error or Error(0, err_code, message, True))
        self.outbox.close(ws_close_code(exc), message)

    def dropped(self) -> None:
        """The peer went away without ending the session."""
        if self.live is not None and self._owns_session():
            # Kept for resume_grace_s, still decoding, where the protocol can resume; else it ends now.
            self.manager.detach(self.live, self, grace=self.protocol.resumable)
            if not self.protocol.resumable:
                self.runner.end(self.live, "disconnected")
        # The peer is gone: end the outbox too, or the handler (which awaits it) would never return,
        # leaking a task per dropped connection and holding uvicorn's shutdown open forever.
        self.outbox.close(CloseCode.NORMAL)


def get_live_runner(services: ServicesDep) -> LiveRunner:
    if services.live_runner is None:  # only between app construction and startup
        raise NotReadyError("live streaming is starting; try again shortly", retry_after=2.0)
    return services.live_runner


LiveRunnerDep = Annotated[LiveRunner, Depends(get_live_runner)]


async def _serve(ws: WebSocket, protocol: LiveProtocol, services: Services, runner: LiveRunner) -> None:
    """Accept, open the session if the protocol opens with the socket, then pump frames to the end."""
    await ws.accept()
    conn = LiveConnection(ws, protocol, services, runner)
    try:
        conn.principal = await authenticate_socket(ws)
        protocol.check_query(ws.query_params)
        for greeting in protocol.greeting():
            conn.outbox.send_raw(greeting)
        spec = protocol.opening()
        if spec is not None:
            await conn.reserve(spec)
            conn.open(spec)
        while True:
            message = await _receive(ws, conn)
            if message["type"] == "websocket.disconnect":
                conn.dropped()
                break
            if conn.outbox.closed.is_set():
                break
            data = message.get("bytes")
            commands = protocol.binary(data) if data is not None else protocol.text(message.get("text") or "")
            await conn.prepare(commands)
            conn.handle(commands)
    except WebSocketDisconnect:
        conn.dropped()
    except Exception as exc:  # protocol errors end this connection only
        conn.fail(exc)
    await conn.outbox.task


async def _receive(ws: WebSocket, conn: LiveConnection) -> Message:
    """The next message; ProtocolError ``idle_timeout`` after ``streaming.idle_timeout_s`` of silence,
    except while the session is stopping (the client is waiting for its last finals then)."""
    limit = conn.services.settings.streaming.idle_timeout_s
    live = conn.live
    stopping = live is not None and (live.ended or live.session.state == "finishing")
    if limit <= 0 or stopping:
        return await ws.receive()
    try:
        with anyio.fail_after(limit):
            return await ws.receive()
    except TimeoutError:
        raise ProtocolError(f"nothing received for {limit:g} s: closing the idle connection", code="idle_timeout") from None


@router.websocket("/v1/stream")
async def v1_stream(ws: WebSocket, services: ServicesDep, runner: LiveRunnerDep) -> None:
    await _serve(ws, V1Protocol(services.settings.streaming), services, runner)


@router.websocket("/stt/realtime")
async def stt_realtime(ws: WebSocket, services: ServicesDep, runner: LiveRunnerDep) -> None:
    await _serve(ws, SttProtocol(services.settings.streaming), services, runner)


@router.websocket("/v1/stream/raw")
async def raw_stream(ws: WebSocket, services: ServicesDep, runner: LiveRunnerDep) -> None:
    await _serve(ws, RawProtocol(services.settings.streaming, ws.query_params), services, runner)


@router.websocket("/v1/realtime")
async def openai_realtime(ws: WebSocket, services: ServicesDep, runner: LiveRunnerDep) -> None:
    """OpenAI Realtime transcription sessions (``?intent=transcription``; docs/protocol.md)."""
    protocol = RealtimeProtocol(
        services.settings.streaming, ws.query_params, ws.headers, model_names=services.served_model_names()
    )
    await _serve(ws, protocol, services, runner)


# -- lifecycle ------------------------------------------------------------------------------------
async def startup(services: Services, *, vad_factory: VadFactory | None = None) -> None:
    """Build the session registry and the decode loops; ``vad_factory`` replaces Silero (tests)."""
    s = services.settings.streaming
    services.sessions = SessionManager(
        max_sessions=s.max_sessions, resume_grace_s=s.resume_grace_s, vad_factory=vad_factory, on_end=_meter(services)
    )
    services.live_runner = LiveRunner(services, services.sessions)
    broker = services.settings.queue.broker_url
    if broker:  # scaled out: workers decode live windows, sessions are kept in Redis
        from ..scale.live_gateway import start_live

        start_live(services, services.settings.queue.redis())


_background: set[asyncio.Task] = set()


def _spawn(coro) -> None:
    """Run ``coro`` on the event loop without waiting for it (a slot's release), keeping a reference."""
    try:
        task = asyncio.get_running_loop().create_task(coro)
    except RuntimeError:  # no loop (a session ended while the server shut down): its lease runs out
        coro.close()
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


_LIVE_ROUTES = {"v1": "/v1/stream", "stt": "/stt/realtime", "raw": "/v1/stream/raw", "openai-realtime": "/v1/realtime"}


def _meter(services: Services) -> Callable[[LiveSession], None]:
    """A session's audio goes to its tenant's usage when it ends."""

    def on_end(live: LiveSession) -> None:
        if services.tenants is not None:
            route = _LIVE_ROUTES.get(live.protocol, f"live/{live.protocol}")
            services.tenants.usage.record(live.tenant_id or USAGE_OPEN_TENANT, route, live.session.audio_seconds)
            if live.tenant_id is not None:
                _spawn(services.tenants.slots.release(live.tenant_id, live.id))

    return on_end


async def shutdown(services: Services) -> None:
    if services.live_runner is not None:
        await services.live_runner.close()
    if services.live_scheduler is not None or services.live_store is not None:
        from ..scale.live_gateway import stop_live

        await stop_live(services)
