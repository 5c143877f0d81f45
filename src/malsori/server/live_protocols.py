"""The three live wire protocols (docs/protocol.md), one object each: parse what a client sends,
render what the session says, and say what the endpoint supports.

- :class:`V1Protocol`, ``/v1/stream``: JSON ``start``, binary audio, ``stop``; typed events with ``seq``;
  resumable.
- :class:`SttProtocol`, ``/stt/realtime``: the original design's JSON messages (base64 ``audio_data``
  in ``audio_chunk``).
- :class:`RawProtocol`, ``/v1/stream/raw``: binary PCM in (format in the query string), ``{"text",
  "final"}`` out.

A protocol object serves one connection (the seed protocol echoes the caller's labels back). It never
touches the socket or the session: frames become :data:`Command` values, events become JSON objects
(or nothing, for events a protocol does not carry). The connection loop in ``streaming_routes`` is the
same for all three. Broken input raises :class:`~malsori.errors.ProtocolError` or
:class:`~malsori.errors.InvalidOptionsError`, which end the connection with its close code.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..analysis.meetings import check_meeting_id
from ..config import StreamingSettings
from ..engine.audio import PCM_ENCODINGS
from ..errors import AudioTooLargeError, InvalidOptionsError, ProtocolError
from ..streaming.config import StreamConfig
from ..streaming.events import End, Error, Event, Final, Language, Partial, Ready, Stats
from ..streaming.manager import LiveSession
from ..streaming.resample import StreamResampler
from ..streaming.session import StreamingSession
from .auth import SOCKET_QUERY_CREDENTIALS

__all__ = [
    "LiveProtocol",
    "V1Protocol",
    "SttProtocol",
    "RawProtocol",
    "StartSpec",
    "Resume",
    "Command",
    "Start",
    "Audio",
    "Stop",
    "Reply",
    "Silence",
    "Commands",
]


@dataclass(frozen=True)
class Resume:
    """Take up an existing session: its id, its token and the last ``seq`` the client has."""

    session_id: str
    token: str | None
    last_seq: int = 0


@dataclass(frozen=True)
class StartSpec:
    """What a client asked for when it started (or resumed) a session."""

    config: StreamConfig
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    session_id: str | None = None
    """The id a new session should have (the seed protocol's label); None: one is generated."""
    labels: dict[str, str | None] = field(default_factory=dict)
    """The caller's ids; ``meeting_id`` among them makes the session join that meeting."""
    resume: Resume | None = None
    stats: bool = False
    """Send ``stats`` events (running statistics) while the session streams."""


# -- what a frame asks the connection to do ------------------------------------------------------
@dataclass(frozen=True)
class Start:
    spec: StartSpec


@dataclass(frozen=True)
class Audio:
    pcm: bytes


@dataclass(frozen=True)
class Stop:
    """The client's audio is over: finalize, send the last events, end."""


@dataclass(frozen=True)
class Reply:
    """Answer on this connection at once, outside the session's numbered events (``pong``)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Silence:
    """Feed ``samples`` of silence (16 kHz) into the session, not counted as received audio: how a
    protocol ends a turn without a pause. The session finalizes speech only at a pause or at the end
    of the stream; OpenAI's ``input_audio_buffer.commit`` needs the first without the second."""

    samples: int


Command = Start | Audio | Stop | Reply | Silence
Commands = Command | list[Command]
"""What one frame asks for: one command, or several in order (OpenAI's first append opens the
session, then feeds its audio)."""


# -- shared parsing --------------------------------------------------------------------------------
def parse_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        raise ProtocolError("text frames must be JSON objects; this one is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("text frames must be JSON objects")
    return data


def _check_format(sample_rate: Any, encoding: Any) -> tuple[int, str]:
    if encoding not in PCM_ENCODINGS:
        raise InvalidOptionsError(f"encoding must be one of {', '.join(PCM_ENCODINGS)}, not {encoding!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise InvalidOptionsError(f"sample_rate must be an integer, not {sample_rate!r}")
    StreamResampler(sample_rate)  # validates the range
    return sample_rate, encoding


def _unknown(data: Mapping[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProtocolError(f"unknown {what}: {', '.join(unknown)}")


def _stream_config(data: Mapping[str, Any], default_preset: str) -> StreamConfig:
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidOptionsError("options must be an object of preset values to override")
    if not isinstance(data.get("word_timestamps", False), bool):
        raise InvalidOptionsError("word_timestamps must be true or false")
    for key in ("diarize", "sentiment", "segmentation"):  # start fields, like word_timestamps (options.<key> works too)
        if key in data:
            options = {**options, key: data[key]}
    for name in ("preset", "task"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise InvalidOptionsError(f"{name} must be a string, not {data[name]!r}")
    return StreamConfig.from_preset(
        data.get("preset") or default_preset,
        language=data.get("language"),
        task=data.get("task") or "transcribe",
        word_timestamps=bool(data.get("word_timestamps", False)),
        **options,
    )


def _analysis_fields(data: Mapping[str, Any]) -> tuple[bool, str | None]:
    """``stats`` (bool) and ``meeting_id`` (a string, or absent) of a start message."""
    stats = data.get("stats", False)
    if not isinstance(stats, bool):
        raise InvalidOptionsError("stats must be true or false")
    meeting = data.get("meeting_id")
    return stats, None if meeting is None else check_meeting_id(meeting)


def _string_fields(data: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, str | None]:
    values = {k: data.get(k) for k in keys}
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise InvalidOptionsError(f"{key} must be a string")
    return values


class LiveProtocol:
    """One wire protocol, for one connection."""

    name: ClassVar[str]
    """Shown in the session list (``LiveSession.protocol``)."""
    query_names: ClassVar[frozenset[str] | None] = frozenset(SOCKET_QUERY_CREDENTIALS)
    """The query parameters it reads; any other is refused when the socket opens (a misspelt
    ``?langauge=`` must not be ignored). Credentials are read by the auth middleware. None: not checked
    (an OpenAI client sends what its SDK sends)."""
    resumable: ClassVar[bool] = False
    """Its sessions outlive a dropped connection (for ``resume_grace_s``) and can be taken up again.
    Without it there is nobody to resume, so a dropped connection ends its session at once."""

    def __init__(self, settings: StreamingSettings) -> None:
        self.settings = settings
        self.started = False
        """A start message was read: a second one is refused."""

    def _once(self, start_type: str) -> None:
        if self.started:
            raise ProtocolError(f"a second {start_type} on one connection")
        self.started = True

    follows_turns: ClassVar[bool] = False
    """Reads the session after every change (:meth:`observe`); its audio is fed one VAD chunk at a
    time, so a pause and new speech within one frame are still seen as two turns."""

    def check_query(self, query: Mapping[str, str]) -> None:
        """Refuse the query parameters this protocol does not read (:attr:`query_names`)."""
        if self.query_names is not None:
            _unknown(query, set(self.query_names), "query parameter(s)")

    def greeting(self) -> list[dict[str, Any]]:
        """Messages to send as soon as the socket is accepted, before any session exists."""
        return []

    def opening(self) -> StartSpec | None:
        """The session to open as soon as the socket is accepted; None: wait for a start message."""
        return None

    def text(self, text: str) -> Commands:
        raise NotImplementedError

    def binary(self, data: bytes) -> Commands:
        return Audio(data)

    def observe(self, session: StreamingSession, events: Sequence[Event]) -> list[dict[str, Any]]:
        """With :attr:`follows_turns`: called after every change of the session (audio fed, a decode
        applied, finish) with the events that change published; returns messages to send after them."""
        return []

    def opened(self, live: LiveSession) -> None:
        """The session this connection serves now exists (before any of its events is rendered)."""

    def render(self, event: Event) -> dict[str, Any] | None:
        """The JSON object for ``event``, or None when this protocol does not carry it."""
        raise NotImplementedError


class V1Protocol(LiveProtocol):
    """``/v1/stream``: ours."""

    name = "v1"
    resumable = True
    _START_FIELDS: ClassVar[set[str]] = {
        "type", "sample_rate", "encoding", "language", "task", "preset", "word_timestamps", "options", "diarize",
        "sentiment", "session_id", "resume_token", "last_seq", "stats", "meeting_id", "segmentation",
    }  # fmt: skip

    def text(self, text: str) -> Command:
        data = parse_json(text)
        kind = data.get("type")
        if kind == "start":
            self._once("start")
            return Start(self.parse_start(data))
        if kind == "stop":
            return Stop()
        if kind == "ping":
            return Reply({"type": "pong", "seq": 0})
        raise ProtocolError(f"unknown message type {kind!r}; expected start, stop or ping")

    def parse_start(self, data: Mapping[str, Any]) -> StartSpec:
        _unknown(data, self._START_FIELDS, "field(s) in start")
        rate, encoding = _check_format(data.get("sample_rate", 16000), data.get("encoding", "pcm_s16le"))
        last_seq = data.get("last_seq", 0) or 0
        if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
            raise InvalidOptionsError("last_seq must be a non-negative integer")
        ids = _string_fields(data, ("session_id", "resume_token"))
        session_id = ids["session_id"]
        resume = None if session_id is None else Resume(session_id, ids["resume_token"], last_seq)
        stats, meeting = _analysis_fields(data)
        labels: dict[str, str | None] = {} if meeting is None else {"meeting_id": meeting}
        config = _stream_config(data, self.settings.default_preset)
        return StartSpec(config, rate, encoding, labels=labels, resume=resume, stats=stats)

    def render(self, event: Event) -> dict[str, Any] | None:
        return event.to_dict()


class SttProtocol(LiveProtocol):
    """``/stt/realtime``: the original design's JSON protocol; the caller's labels are echoed back."""

    name = "stt"
    _START_FIELDS: ClassVar[set[str]] = {
        "type", "session_id", "tenant_id", "meeting_id", "user_id", "language", "sample_rate", "encoding", "task", "preset",
        "stats", "sentiment", "segmentation",
    }  # fmt: skip
    _LABELS = ("session_id", "tenant_id", "meeting_id", "user_id")

    def __init__(self, settings: StreamingSettings) -> None:
        super().__init__(settings)
        self._ids: dict[str, str | None] = {}
        self._echo({})

    def text(self, text: str) -> Command:
        data = parse_json(text)
        kind = data.get("type")
        if kind == "start_session":
            self._once("start_session")
            spec = self.parse_start(data)
            self._echo(spec.labels)  # an error opening the session still names the caller's ids
            return Start(spec)
        if kind == "audio_chunk":
            return Audio(self._audio(data))
        if kind == "end_session":
            return Stop()
        raise ProtocolError(f"unknown message type {kind!r}; expected start_session, audio_chunk or end_session")

    def parse_start(self, data: Mapping[str, Any]) -> StartSpec:
        _unknown(data, self._START_FIELDS, "field(s) in start_session")
        rate, encoding = _check_format(data.get("sample_rate", 16000), data.get("encoding", "pcm_s16le"))
        labels = _string_fields(data, self._LABELS)
        stats, _ = _analysis_fields(data)
        config = _stream_config(data, self.settings.default_preset)
        return StartSpec(config, rate, encoding, session_id=labels["session_id"], labels=labels, stats=stats)

    def _audio(self, data: Mapping[str, Any]) -> bytes:
        # The original design's example names the field audio_data; "audio" (ours before issue 16)
        # stays as an alias.
        _unknown(data, {"type", "audio_data", "audio", "session_id"}, "field(s) in audio_chunk")
        if "audio_data" in data and "audio" in data:
            raise ProtocolError("audio_chunk takes 'audio_data' (or its alias 'audio'), not both")
        name = "audio" if "audio" in data else "audio_data"
        audio = data.get(name)
        if not isinstance(audio, str):
            raise ProtocolError("audio_chunk needs 'audio_data': base64 of raw PCM")
        limit = self.settings.max_frame_bytes
        if len(audio) > limit * 4 // 3 + 4:  # refuse before decoding: base64 is 4 characters per 3 bytes
            raise AudioTooLargeError(f"audio chunk over the limit of {limit} bytes")
        try:
            return base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"audio_chunk '{name}' is not valid base64") from None

    def _echo(self, labels: Mapping[str, str | None]) -> None:
        self._ids = {k: labels.get(k) for k in ("session_id", "tenant_id", "meeting_id")}

    def opened(self, live: LiveSession) -> None:
        # The id as the caller chose it (kept in its tenant's namespace when keyed), else the one made.
        self._echo({**live.labels, "session_id": live.labels.get("session_id") or live.id})

    def render(self, event: Event) -> dict[str, Any] | None:
        ids = self._ids
        if isinstance(event, Ready):
            return {"type": "session_started", **ids, "seq": 0}
        if isinstance(event, (Partial, Final)):
            return {
                "type": "transcript", **ids, "text": event.text, "is_final": isinstance(event, Final),
                "start": event.start, "end": event.end,
                "language": event.language if isinstance(event, Final) else None, "seq": event.seq,
                **({"speaker": event.speaker} if isinstance(event, Final) and event.diarized else {}),
                **({"sentiment": event.to_dict()["sentiment"]} if isinstance(event, Final) and event.analyzed else {}),
            }  # fmt: skip
        if isinstance(event, Language):
            return {"type": "language", **ids, "language": event.language, "probability": event.probability, "seq": event.seq}
        if isinstance(event, Error):
            return {"type": "error", **ids, "code": event.code, "message": event.message, "fatal": event.fatal, "seq": event.seq}
        if isinstance(event, Stats):
            return {"type": "stats", **ids, "stats": event.stats, "meeting": event.meeting, "seq": 0}
        if isinstance(event, End):
            return {
                "type": "session_ended", **ids, "reason": event.reason, "audio_seconds": event.audio_seconds, "seq": event.seq,
            }  # fmt: skip
        return None


class RawProtocol(LiveProtocol):
    """``/v1/stream/raw``: the session opens with the socket, from the query string; text is only ``stop``."""

    name = "raw"
    # Its format, and the credentials any socket may carry in its query (read by the auth middleware).
    query_names = frozenset(
        {"sample_rate", "encoding", "language", "task", "preset", "word_timestamps", *SOCKET_QUERY_CREDENTIALS}
    )

    def __init__(self, settings: StreamingSettings, query: Mapping[str, str]) -> None:
        super().__init__(settings)
        self.query = dict(query)

    def opening(self) -> StartSpec:
        params = self.query
        try:
            rate = int(params.get("sample_rate", "16000"))
        except ValueError:
            raise InvalidOptionsError("sample_rate must be an integer") from None
        rate, encoding = _check_format(rate, params.get("encoding", "pcm_f32le"))
        words = params.get("word_timestamps", "false").lower() in ("1", "true", "yes")
        data = {k: params.get(k) for k in ("language", "task", "preset")}
        return StartSpec(_stream_config({**data, "word_timestamps": words}, self.settings.default_preset), rate, encoding)

    def text(self, text: str) -> Command:
        if text.strip() in ("stop", "END_OF_AUDIO") or (text.lstrip().startswith("{") and parse_json(text).get("type") == "stop"):
            return Stop()
        raise ProtocolError("this endpoint takes binary PCM frames; the only text frame is 'stop'")

    def binary(self, data: bytes) -> Command:
        return Audio(data) if data else Stop()  # an empty frame is the pipe's way to say "stop"

    def render(self, event: Event) -> dict[str, Any] | None:
        if isinstance(event, (Partial, Final)):
            data: dict[str, Any] = {
                "text": event.text, "final": isinstance(event, Final), "start": event.start, "end": event.end, "seq": event.seq,
            }  # fmt: skip
            if isinstance(event, Final):
                data["language"] = event.language
                if event.words is not None:
                    data["words"] = event.to_dict()["words"]
            return data
        if isinstance(event, Error):
            return {"error": event.code, "message": event.message, "final": True, "seq": event.seq}
        return None
