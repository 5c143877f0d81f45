"""Live WebSocket endpoints (docs/protocol.md): thin adapters over one ``StreamingSession`` each.

- ``/v1/stream``: ours. JSON ``start``, binary audio, ``stop``; typed events with ``seq``; resume.
- ``/stt/realtime``: the original design's JSON protocol (base64 ``audio_chunk`` messages).
- ``/v1/stream/raw``: binary PCM in (format in the query string), ``{"text", "final"}`` out.

Each adapter only parses its messages into a :class:`StartSpec` and audio bytes and renders events;
admission, resume and the decode loop are shared (``malsori.streaming.manager``, ``server.live``).
Errors become a fatal ``error`` event and a close code from ``server.errors.ws_close_code``; they end
only the offending connection's session.

Routes-module contract: ``router``, ``async startup(services)`` (sets ``services.sessions``),
``async shutdown(services)``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..engine.audio import PCM_ENCODINGS, pcm_to_float32
from ..errors import AudioTooLargeError, InvalidOptionsError, MalsoriError, ProtocolError
from ..streaming.config import StreamConfig
from ..streaming.events import End, Error, Event, Final, Language, Partial
from ..streaming.manager import LiveSession, SessionManager
from ..streaming.resample import StreamResampler
from .errors import ws_close_code
from .live import LiveRunner, Outbox

__all__ = ["router", "startup", "shutdown", "StartSpec"]

log = logging.getLogger(__name__)

router = APIRouter()


@dataclass(frozen=True)
class StartSpec:
    """What a client asked for when it started (or resumed) a session."""

    config: StreamConfig
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    session_id: str | None = None
    resume_token: str | None = None
    last_seq: int = 0
    labels: dict = field(default_factory=dict)


def _check_format(sample_rate, encoding) -> tuple[int, str]:
    if encoding not in PCM_ENCODINGS:
        raise InvalidOptionsError(f"encoding must be one of {', '.join(PCM_ENCODINGS)}, not {encoding!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise InvalidOptionsError(f"sample_rate must be an integer, not {sample_rate!r}")
    StreamResampler(sample_rate)  # validates the range
    return sample_rate, encoding


def _stream_config(data: dict, default_preset: str) -> StreamConfig:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidOptionsError("options must be an object of preset values to override")
    if not isinstance(data.get("word_timestamps", False), bool):
        raise InvalidOptionsError("word_timestamps must be true or false")
    return StreamConfig.from_preset(
        data.get("preset") or default_preset,
        language=data.get("language"),
        task=data.get("task") or "transcribe",
        word_timestamps=bool(data.get("word_timestamps", False)),
        **options,
    )


_V1_START_FIELDS = {
    "type", "sample_rate", "encoding", "language", "task", "preset", "word_timestamps", "options",
    "session_id", "resume_token", "last_seq",
}


def parse_v1_start(data: dict, default_preset: str) -> StartSpec:
    unknown = sorted(set(data) - _V1_START_FIELDS)
    if unknown:
        raise ProtocolError(f"unknown field(s) in start: {', '.join(unknown)}")
    rate, encoding = _check_format(data.get("sample_rate", 16000), data.get("encoding", "pcm_s16le"))
    last_seq = data.get("last_seq", 0) or 0
    if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
        raise InvalidOptionsError("last_seq must be a non-negative integer")
    for key in ("session_id", "resume_token"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidOptionsError(f"{key} must be a string")
    return StartSpec(
        _stream_config(data, default_preset), rate, encoding, data.get("session_id"), data.get("resume_token"), last_seq
    )


_STT_START_FIELDS = {
    "type", "session_id", "tenant_id", "meeting_id", "user_id", "language", "sample_rate", "encoding", "task", "preset",
}


def parse_stt_start(data: dict, default_preset: str) -> StartSpec:
    unknown = sorted(set(data) - _STT_START_FIELDS)
    if unknown:
        raise ProtocolError(f"unknown field(s) in start_session: {', '.join(unknown)}")
    rate, encoding = _check_format(data.get("sample_rate", 16000), data.get("encoding", "pcm_s16le"))
    labels = {k: data.get(k) for k in ("session_id", "tenant_id", "meeting_id", "user_id")}
    for key, value in labels.items():
        if value is not None and not isinstance(value, str):
            raise InvalidOptionsError(f"{key} must be a string")
    return StartSpec(_stream_config(data, default_preset), rate, encoding, labels=labels)


def parse_raw_query(params, default_preset: str) -> StartSpec:
    known = {"sample_rate", "encoding", "language", "task", "preset", "word_timestamps"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ProtocolError(f"unknown query parameter(s): {', '.join(unknown)}")
    try:
        rate = int(params.get("sample_rate", "16000"))
    except ValueError:
        raise InvalidOptionsError("sample_rate must be an integer") from None
    rate, encoding = _check_format(rate, params.get("encoding", "pcm_f32le"))
    words = params.get("word_timestamps", "false").lower() in ("1", "true", "yes")
    data = {k: params.get(k) for k in ("language", "task", "preset")}
    return StartSpec(_stream_config({**data, "word_timestamps": words}, default_preset), rate, encoding)


# -- rendering: one function per protocol --------------------------------------------------------
def render_v1(event: Event) -> dict:
    return event.to_dict()


def _render_stt(labels: dict) -> Callable[[Event], dict | None]:
    ids = {k: labels.get(k) for k in ("session_id", "tenant_id", "meeting_id")}

    def render(event: Event) -> dict | None:
        if isinstance(event, (Partial, Final)):
            return {
                "type": "transcript", **ids, "text": event.text, "is_final": isinstance(event, Final),
                "start": event.start, "end": event.end,
                "language": event.language if isinstance(event, Final) else None, "seq": event.seq,
            }
        if isinstance(event, Language):
            return {"type": "language", **ids, "language": event.language, "probability": event.probability, "seq": event.seq}
        if isinstance(event, Error):
            return {"type": "error", **ids, "code": event.code, "message": event.message, "fatal": event.fatal, "seq": event.seq}
        if isinstance(event, End):
            return {"type": "session_ended", **ids, "reason": event.reason, "audio_seconds": event.audio_seconds, "seq": event.seq}
        return None

    return render


def render_raw(event: Event) -> dict | None:
    if isinstance(event, (Partial, Final)):
        data = {"text": event.text, "final": isinstance(event, Final), "start": event.start, "end": event.end, "seq": event.seq}
        if isinstance(event, Final):
            data["language"] = event.language
            if event.words is not None:
                data["words"] = event.to_dict()["words"]
        return data
    if isinstance(event, Error):
        return {"error": event.code, "message": event.message, "final": True, "seq": event.seq}
    return None


# -- the shared connection loop -----------------------------------------------------------------
class _Stop(Exception):
    """The client said its audio is over."""


def _json(text: str) -> dict:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        raise ProtocolError("text frames must be JSON objects; this one is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("text frames must be JSON objects")
    return data


class _Connection:
    """One socket attached to one session; protocol differences come in as callables."""

    def __init__(self, ws: WebSocket, services, render: Callable[[Event], dict | None]) -> None:
        self.ws = ws
        self.services = services
        self.manager: SessionManager = services.sessions
        self.runner: LiveRunner = services.live_runner
        self.outbox = Outbox(ws, render)
        self.live: LiveSession | None = None
        self.resampler: StreamResampler | None = None

    def open(self, spec: StartSpec, protocol: str) -> LiveSession:
        self.services.require_ready()
        if spec.session_id is not None and protocol == "v1":
            live = self.manager.resume(spec.session_id, spec.resume_token)
            if (live.sample_rate, live.encoding) != (spec.sample_rate, spec.encoding):
                raise InvalidOptionsError("sample_rate and encoding must match the session being resumed")
            previous = self.manager.attach(live, self.outbox.deliver, self)
            if isinstance(previous, _Connection):
                previous.outbox.deliver(Error(0, "taken_over", "another connection resumed this session", True))
                previous.outbox.close(1008, "taken over by another connection")
            self._ready(live, resumed=True, last_seq=spec.last_seq)
        else:
            live = self.manager.create(
                spec.config, sample_rate=spec.sample_rate, encoding=spec.encoding, load=self.runner.load(),
                labels=spec.labels, protocol=protocol,
                session_id=spec.labels.get("session_id") if protocol == "stt" else None,
            )
            self.manager.attach(live, self.outbox.deliver, self)
            self._ready(live, resumed=False, last_seq=0)
            self.runner.start(live)
        self.live = live
        self.resampler = StreamResampler(live.sample_rate)
        return live

    def _ready(self, live: LiveSession, *, resumed: bool, last_seq: int) -> None:
        s = live.session
        ready = {
            "type": "ready", "seq": 0, "session_id": live.id, "resume_token": live.token, "resumed": resumed,
            "received_samples": live.received_samples, "last_seq": s.seq, "sample_rate": live.sample_rate,
            "encoding": live.encoding, "language": s.config.language, "task": s.config.task,
            "preset": s.config.preset, "config": s.config.to_dict(),
        }
        if live.protocol == "v1":
            self.outbox.send_raw(ready)
        elif live.protocol == "stt":
            ids = {k: live.labels.get(k) for k in ("tenant_id", "meeting_id")}
            self.outbox.send_raw({"type": "session_started", "session_id": live.id, **ids, "seq": 0})
        for event in live.events_after(last_seq):  # replay, in order, before anything new
            self.outbox.deliver(event)
        if live.ended and resumed:
            self.outbox.close(1000)

    def audio(self, data: bytes) -> None:
        live = self.live
        if live is None:
            raise ProtocolError("audio before start: send the start message first")
        if live.ended or live.session.state == "finishing":
            raise ProtocolError("audio after stop")
        limit = self.services.settings.streaming.max_frame_bytes
        if len(data) > limit:
            raise AudioTooLargeError(f"audio frame of {len(data)} bytes is over the limit of {limit} bytes")
        samples = pcm_to_float32(data, live.encoding)
        live.received_samples += len(samples)
        self.runner.feed(live, self.resampler(samples))  # type: ignore[misc]

    def stop(self) -> None:
        if self.live is None:
            raise ProtocolError("stop before start")
        self.runner.finish(self.live)

    def fail(self, exc: BaseException) -> None:
        code = ws_close_code(exc)
        err_code = exc.code if isinstance(exc, MalsoriError) else "internal_error"
        message = exc.message if isinstance(exc, MalsoriError) else "the server failed to handle this connection"
        if not isinstance(exc, MalsoriError):
            log.exception("live connection failed", exc_info=exc)
        error: Event | None = None
        if self.live is not None and not self.live.ended and self.live.connection is self:
            # Detach first: the session's own ``end`` would close this socket with 1000.
            self.manager.detach(self.live, self)
            error = self.runner.kill(self.live, err_code, message)
        self.outbox.deliver(error or Error(0, err_code, message, True))
        self.outbox.close(code, message)

    def dropped(self) -> None:
        if self.live is not None and not self.live.ended:
            self.manager.detach(self.live, self)
        # The peer is gone: end the outbox too, or the handler (which awaits it) would never return,
        # leaking a task per dropped connection and holding uvicorn's shutdown open forever.
        self.outbox.close(1000)


async def _serve(
    ws: WebSocket,
    render: Callable[[Event], dict | None],
    protocol: str,
    on_text: Callable[["_Connection", dict], Awaitable[None] | None],
    first: Callable[[dict], StartSpec] | None = None,
) -> None:
    """Accept, open the session (from the first message or ``first``), then pump frames until the end."""
    services = ws.app.state.services
    await ws.accept()
    conn = _Connection(ws, services, render)
    try:
        if first is not None:
            conn.open(first({}), protocol)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                conn.dropped()
                break
            if conn.outbox.closed.is_set():
                break
            data = message.get("bytes")
            if data is not None:
                if len(data) == 0 and protocol == "raw":
                    conn.stop()
                    continue
                conn.audio(data)
                continue
            text = message.get("text") or ""
            await _maybe_await(on_text(conn, text))
    except WebSocketDisconnect:
        conn.dropped()
    except Exception as exc:  # protocol errors end this connection only
        conn.fail(exc)
    await conn.outbox.task


async def _maybe_await(value) -> None:
    if value is not None:
        await value


# -- /v1/stream -----------------------------------------------------------------------------------
def _v1_text(conn: _Connection, text: str) -> None:
    data = _json(text)
    kind = data.get("type")
    if kind == "start":
        if conn.live is not None:
            raise ProtocolError("a second start on one connection")
        conn.open(parse_v1_start(data, conn.services.settings.streaming.default_preset), "v1")
    elif kind == "stop":
        conn.stop()
    elif kind == "ping":
        conn.outbox.send_raw({"type": "pong", "seq": 0})
    else:
        raise ProtocolError(f"unknown message type {kind!r}; expected start, stop or ping")


@router.websocket("/v1/stream")
async def v1_stream(ws: WebSocket) -> None:
    await _serve(ws, render_v1, "v1", _v1_text)


# -- /stt/realtime --------------------------------------------------------------------------------
def _stt_text(conn: _Connection, text: str) -> None:
    data = _json(text)
    kind = data.get("type")
    if kind == "start_session":
        if conn.live is not None:
            raise ProtocolError("a second start_session on one connection")
        spec = parse_stt_start(data, conn.services.settings.streaming.default_preset)
        conn.outbox.render = _render_stt({**spec.labels})
        live = conn.open(spec, "stt")
        conn.outbox.render = _render_stt({**spec.labels, "session_id": live.id})
    elif kind == "audio_chunk":
        unknown = sorted(set(data) - {"type", "audio", "session_id"})
        if unknown:
            raise ProtocolError(f"unknown field(s) in audio_chunk: {', '.join(unknown)}")
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("audio_chunk needs 'audio': base64 of raw PCM")
        limit = conn.services.settings.streaming.max_frame_bytes
        if len(audio) > limit * 4 // 3 + 4:
            raise AudioTooLargeError(f"audio chunk over the limit of {limit} bytes")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("audio_chunk 'audio' is not valid base64") from None
        conn.audio(pcm)
    elif kind == "end_session":
        conn.stop()
    else:
        raise ProtocolError(f"unknown message type {kind!r}; expected start_session, audio_chunk or end_session")


@router.websocket("/stt/realtime")
async def stt_realtime(ws: WebSocket) -> None:
    await _serve(ws, _render_stt({}), "stt", _stt_text)


# -- /v1/stream/raw ------------------------------------------------------------------------------
def _raw_text(conn: _Connection, text: str) -> None:
    if text.strip() in ("stop", "END_OF_AUDIO") or (text.lstrip().startswith("{") and _json(text).get("type") == "stop"):
        conn.stop()
        return
    raise ProtocolError("this endpoint takes binary PCM frames; the only text frame is 'stop'")


@router.websocket("/v1/stream/raw")
async def raw_stream(ws: WebSocket) -> None:
    preset = ws.app.state.services.settings.streaming.default_preset
    params = dict(ws.query_params)
    await _serve(ws, render_raw, "raw", _raw_text, first=lambda _: parse_raw_query(params, preset))


# -- lifecycle ------------------------------------------------------------------------------------
async def startup(services) -> None:
    s = services.settings.streaming
    services.sessions = SessionManager(
        max_sessions=s.max_sessions, resume_grace_s=s.resume_grace_s, default_preset=s.default_preset
    )
    services.live_runner = LiveRunner(services, services.sessions)


async def shutdown(services) -> None:
    runner = getattr(services, "live_runner", None)
    if runner is not None:
        await runner.close()
