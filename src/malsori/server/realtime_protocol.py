"""OpenAI Realtime transcription (``/v1/realtime?intent=transcription``) as a live protocol.

The client speaks OpenAI's events (docs/protocol.md, "OpenAI Realtime transcription"): it configures
the session with ``transcription_session.update`` (the beta dialect) or ``session.update`` with
``session.type`` ``transcription`` (the GA dialect), appends base64 pcm16 with
``input_audio_buffer.append``, and may ``commit`` or ``clear`` the buffer. The server answers with
OpenAI's events, in the dialect the client spoke.

How ours maps onto theirs:

- An *item* is one turn. With ``turn_detection`` ``server_vad`` a turn is the session's speech from
  an onset to a pause of ``silence_duration_ms`` (``endpoint_s``): ``speech_started`` when the session
  opens a phrase, ``speech_stopped`` + ``committed`` when that pause closes it. With
  ``turn_detection`` null a turn is everything appended between two commits, whatever pauses it has.
- A turn can hold several of our finals (a long turn is finalized in pieces, a manual turn has
  pauses). ``completed`` comes once every final of the turn is out, with their text joined.
- Deltas are append-only, ours are not: a delta is what the turn's settled text (its finals so far,
  then the ``stable`` part of the newest partial) adds to the text already sent. A final that revises
  what was sent ends the deltas of that turn; ``completed`` always has the final text.
- ``commit`` (and ``clear``) ends the turn now: the session finalizes speech only at a pause, so the
  connection feeds it a pause's worth of silence (:class:`~.live_protocols.Silence`); times reported
  to the client leave that silence out.

Every message here is built from the session's events and its public state (``state``,
``backlog_s``, ``audio_seconds``), which :meth:`RealtimeProtocol.observe` reads after every change.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import StreamingSettings
from ..engine.audio import SAMPLE_RATE
from ..errors import AudioTooLargeError, InvalidOptionsError, ProtocolError
from ..streaming.config import StreamConfig
from ..streaming.events import Error, Event, Final, Partial
from ..streaming.manager import LiveSession
from ..streaming.session import StreamingSession
from ..streaming.vad import VAD_CHUNK
from .live_protocols import Audio, Command, Commands, LiveProtocol, Reply, Silence, Start, StartSpec, parse_json

__all__ = ["RealtimeProtocol", "RealtimeRequestError", "TurnDetection", "TranscriptionConfig", "OPENAI_MODELS"]

_SR = SAMPLE_RATE
OPENAI_RATE = 24000
"""OpenAI's pcm16 is 24 kHz; 16 kHz is our extension (``input_audio_sample_rate`` or
``audio.input.format.rate``)."""
_RATES = (OPENAI_RATE, _SR)
_MIN_COMMIT_MS = 100
"""OpenAI refuses to commit less audio than this (``input_audio_buffer_commit_empty``)."""
OPENAI_MODELS = ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-1")
"""OpenAI's transcription model names, accepted as ``model``: the one served model answers to all."""
_CLIENT_ERRORS = frozenset(
    {
        "protocol_error",
        "invalid_options",
        "invalid_audio",
        "unsupported_audio",
        "empty_audio",
        "audio_too_large",
        "model_not_found",
    }
)
_BETA_FIELDS = frozenset(
    {
        "input_audio_format", "input_audio_transcription", "turn_detection", "input_audio_noise_reduction",
        "include", "modalities", "client_secret", "input_audio_sample_rate",
    }
)  # fmt: skip
_GA_FIELDS = frozenset({"type", "audio", "include", "client_secret"})
_TRANSCRIPTION_FIELDS = frozenset({"model", "language", "prompt"})
_TURN_FIELDS = frozenset(
    {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response", "idle_timeout_ms"}
)


class RealtimeRequestError(InvalidOptionsError):
    """A client event this session cannot take. It is answered with an OpenAI ``error`` event and
    the connection stays open, as OpenAI's does (``param`` names the offending field)."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


@dataclass(frozen=True)
class TurnDetection:
    """``server_vad``: our VAD threshold, the audio kept before an onset, the pause that ends a turn."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def to_dict(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}  # fmt: skip


@dataclass(frozen=True)
class TranscriptionConfig:
    """The session as a client configured it (OpenAI's names)."""

    model: str
    language: str | None = None
    prompt: str | None = None
    """Echoed, not used: a live session's decodes take the text settled before them as their prompt."""
    sample_rate: int = OPENAI_RATE
    vad: TurnDetection = field(default_factory=TurnDetection)
    manual: bool = False
    """``turn_detection`` null: a turn ends at ``input_audio_buffer.commit``. The VAD values still cut
    the audio into phrases (a decode never spans a pause); only the turns are the client's."""

    @property
    def turn_detection(self) -> TurnDetection | None:
        return None if self.manual else self.vad

    def stream_config(self, preset: str) -> StreamConfig:
        """Our session's configuration."""
        vad = self.vad
        return StreamConfig.from_preset(
            preset,
            language=self.language,
            vad_threshold=vad.threshold,
            pad_s=vad.prefix_padding_ms / 1000,
            endpoint_s=vad.silence_duration_ms / 1000,
        )


@dataclass
class _Item:
    """One turn: the user message item OpenAI would create for it."""

    id: str
    start: int
    """Session sample where its audio begins."""
    boundary: int | None = None
    """Session sample where it ends, once committed (or cleared): its finals start before it, the
    next turn's start at or after it. None while audio still goes into it."""
    discarded: bool = False
    """Cleared: its text is dropped."""
    finals: list[str] = field(default_factory=list)
    sent: str = ""
    """Text sent as deltas."""
    diverged: bool = False
    """A final revised text already sent: no more deltas for this item."""

    @property
    def transcript(self) -> str:
        return " ".join(t for t in self.finals if t)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RealtimeRequestError(f"Invalid type for '{name}': expected an object.", code="invalid_type", param=name)
    return value


def _known(data: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise RealtimeRequestError(f"Unknown parameter: '{prefix}{key}'.", code="unknown_parameter", param=f"{prefix}{key}")


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise RealtimeRequestError(f"Invalid value for '{name}': expected {what} between {low:g} and {high:g}.", param=name)
    return value


class RealtimeProtocol(LiveProtocol):
    """``/v1/realtime?intent=transcription``: OpenAI's Realtime transcription events over our session."""

    name = "openai-realtime"
    follows_turns = True
    query_names = None  # intent=transcription is required (greeting); the SDK may add model= and others

    def __init__(
        self,
        settings: StreamingSettings,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        *,
        model_names: Sequence[str],
    ) -> None:
        super().__init__(settings)
        self.query = dict(query)
        self.models = (*model_names, *OPENAI_MODELS)
        self.session_id = _new_id("sess")
        self.beta = "realtime=v1" in headers.get("openai-beta", "")
        """The client speaks the beta dialect (OpenAI's SDK sends this header from ``client.beta``)."""
        self.config = TranscriptionConfig(model=model_names[0])
        self.live: LiveSession | None = None
        self._stream_config = self.config.stream_config(settings.default_preset)
        self._items: deque[_Item] = deque()
        self._previous: str | None = None
        """The last committed item: ``previous_item_id`` of the next."""
        self._speaking = False
        self._flushing = False
        """Silence was fed to end an open phrase at a commit; until it closes, nothing is complete."""
        self._inserted = 0
        """Samples of silence fed so far (left out of the times the client is told)."""
        self._last_boundary = 0
        self._appended = 0
        """Samples appended so far (at the client's rate)."""
        self._mark = 0
        """``_appended`` where the buffer was last committed or cleared: what follows is the buffer."""
        self._handlers = {
            "transcription_session.update": self._beta_update,
            "session.update": self._ga_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
        }

    # -- the connection ----------------------------------------------------------------------------
    def greeting(self) -> list[dict[str, Any]]:
        intent = self.query.get("intent")
        if intent != "transcription":
            raise InvalidOptionsError(
                f"this endpoint serves transcription sessions only: use /v1/realtime?intent=transcription (got intent={intent!r})"
            )
        kind = "transcription_session.created" if self.beta else "session.created"
        return [self._event(kind, session=self._session_object())]

    def opened(self, live: LiveSession) -> None:
        self.live = live

    def binary(self, data: bytes) -> Commands:
        return Reply(
            self._error("invalid_value", "Binary frames are not accepted: send audio as input_audio_buffer.append events.")
        )

    def text(self, text: str) -> Commands:
        event_id: str | None = None
        try:
            data = parse_json(text)
            event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
            kind = data.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RealtimeRequestError(
                    f"Invalid value: {kind!r}. Supported values are: {', '.join(repr(k) for k in self._handlers)}.", param="type"
                )
            return handler(data)
        except RealtimeRequestError as exc:
            return Reply(self._error(exc.code, exc.message, param=exc.param, event_id=event_id))
        except ProtocolError as exc:  # not JSON, or not an object
            return Reply(self._error("invalid_json", exc.message, event_id=event_id))

    # -- session configuration -----------------------------------------------------------------------
    def _beta_update(self, data: Mapping[str, Any]) -> Commands:
        _known(data, frozenset({"type", "event_id", "session"}), "")
        session = _object(data.get("session"), "session")
        _known(session, _BETA_FIELDS, "session.")
        config = self.config
        if "input_audio_format" in session and session["input_audio_format"] != "pcm16":
            raise RealtimeRequestError(
                f"Invalid value: {session['input_audio_format']!r}. Supported values are: 'pcm16'.",
                param="session.input_audio_format",
            )
        if "input_audio_sample_rate" in session:
            config = replace(
                config, sample_rate=self._rate(session["input_audio_sample_rate"], "session.input_audio_sample_rate")
            )
        if session.get("input_audio_transcription") is not None:
            config = self._transcription(config, session["input_audio_transcription"], "session.input_audio_transcription")
        if "turn_detection" in session:
            config = self._turns(config, session["turn_detection"], "session.turn_detection")
        self.beta = True
        return self._apply(config, "transcription_session.updated")

    def _ga_update(self, data: Mapping[str, Any]) -> Commands:
        _known(data, frozenset({"type", "event_id", "session"}), "")
        session = _object(data.get("session"), "session")
        if session.get("type") != "transcription":
            raise RealtimeRequestError(
                "This is a transcription session: session.type must be 'transcription'.", param="session.type"
            )
        _known(session, _GA_FIELDS, "session.")
        config = self.config
        audio = _object(session.get("audio") or {}, "session.audio")
        _known(audio, frozenset({"input"}), "session.audio.")
        audio_input = _object(audio.get("input") or {}, "session.audio.input")
        _known(audio_input, frozenset({"format", "transcription", "turn_detection", "noise_reduction"}), "session.audio.input.")
        if audio_input.get("format") is not None:
            fmt = _object(audio_input["format"], "session.audio.input.format")
            _known(fmt, frozenset({"type", "rate"}), "session.audio.input.format.")
            if fmt.get("type", "audio/pcm") != "audio/pcm":
                raise RealtimeRequestError(
                    f"Invalid value: {fmt.get('type')!r}. Supported values are: 'audio/pcm'.",
                    param="session.audio.input.format.type",
                )
            if "rate" in fmt:
                config = replace(config, sample_rate=self._rate(fmt["rate"], "session.audio.input.format.rate"))
        if audio_input.get("transcription") is not None:
            config = self._transcription(config, audio_input["transcription"], "session.audio.input.transcription")
        if "turn_detection" in audio_input:
            config = self._turns(config, audio_input["turn_detection"], "session.audio.input.turn_detection")
        self.beta = False
        return self._apply(config, "session.updated")

    @staticmethod
    def _rate(value: Any, name: str) -> int:
        if value not in _RATES or isinstance(value, bool):
            raise RealtimeRequestError(f"Invalid value: {value!r}. Supported values are: 24000, 16000.", param=name)
        return int(value)

    def _transcription(self, config: TranscriptionConfig, value: Any, name: str) -> TranscriptionConfig:
        data = _object(value, name)
        _known(data, _TRANSCRIPTION_FIELDS, f"{name}.")
        model, language, prompt = (
            data.get("model", config.model),
            data.get("language", config.language),
            data.get("prompt", config.prompt),
        )
        if model not in self.models:
            raise RealtimeRequestError(
                f"Invalid value: {model!r}. Supported values are: {', '.join(repr(m) for m in self.models)}.",
                param=f"{name}.model",
            )
        for key, text in (("language", language), ("prompt", prompt)):
            if text is not None and not isinstance(text, str):
                raise RealtimeRequestError(
                    f"Invalid type for '{name}.{key}': expected a string.", code="invalid_type", param=f"{name}.{key}"
                )
        return replace(config, model=model, language=language or None, prompt=prompt)

    @staticmethod
    def _turns(config: TranscriptionConfig, value: Any, name: str) -> TranscriptionConfig:
        if value is None:
            return replace(config, manual=True)
        data = _object(value, name)
        _known(data, _TURN_FIELDS, f"{name}.")
        if data.get("type", "server_vad") != "server_vad":
            raise RealtimeRequestError(
                f"Invalid value: {data.get('type')!r}. Supported values are: 'server_vad' (or turn_detection null).",
                param=f"{name}.type",
            )
        base = config.vad
        # Silero probabilities, like OpenAI's threshold; below 0.2 the session's release level (0.15
        # lower) is never reached and speech would never end.
        return replace(
            config,
            manual=False,
            vad=TurnDetection(
                threshold=_number(data.get("threshold", base.threshold), f"{name}.threshold", 0.2, 0.95),
                prefix_padding_ms=_number(
                    data.get("prefix_padding_ms", base.prefix_padding_ms), f"{name}.prefix_padding_ms", 0, 1000, integer=True
                ),
                silence_duration_ms=_number(
                    data.get("silence_duration_ms", base.silence_duration_ms),
                    f"{name}.silence_duration_ms",
                    100,
                    5000,
                    integer=True,
                ),
            ),
        )

    def _apply(self, config: TranscriptionConfig, reply: str) -> Commands:
        try:
            stream = config.stream_config(self.settings.default_preset)
        except InvalidOptionsError as exc:  # the language, in practice
            raise RealtimeRequestError(exc.message, param="language") from None
        if self.started and (stream, config.sample_rate) != (self._stream_config, self.config.sample_rate):
            raise RealtimeRequestError(
                "The language, the audio format and the turn detection values are fixed once audio has been appended; "
                "only turning turn detection on or off, the model name and the prompt can change. Reconnect to change them.",
                code="session_config_locked",
                param="session",
            )
        self.config, self._stream_config = config, stream
        return Reply(self._event(reply, session=self._session_object()))

    # -- the input audio buffer ----------------------------------------------------------------------
    def _append(self, data: Mapping[str, Any]) -> Commands:
        _known(data, frozenset({"type", "event_id", "audio"}), "")
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise RealtimeRequestError("Missing required parameter: 'audio'.", code="missing_required_parameter", param="audio")
        limit = self.settings.max_frame_bytes
        if len(audio) > limit * 4 // 3 + 4:  # refuse before decoding: base64 is 4 characters per 3 bytes
            raise AudioTooLargeError(f"input_audio_buffer.append audio over the limit of {limit} bytes")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeRequestError("Invalid value for 'audio': not valid base64.", param="audio") from None
        if len(pcm) % 2:
            raise RealtimeRequestError("Invalid value for 'audio': pcm16 needs an even number of bytes.", param="audio")
        commands: list[Command] = []
        if not self.started:
            self.started = True
            spec = StartSpec(self._stream_config, self.config.sample_rate, "pcm_s16le", session_id=self.session_id)
            commands.append(Start(spec))
        self._appended += len(pcm) // 2
        if self.config.turn_detection is None and pcm:
            self._open_item()
        return [*commands, Audio(pcm)]

    def _end_turn(self) -> list[Command]:
        """Close the open turn at the current position; the silence that makes the session finalize
        its open phrase (a pause long enough to close it, and to keep the next phrase's padding out of
        this turn), as commands."""
        session = self.live.session if self.live is not None else None
        self._mark = self._appended
        item = self._open_item() if session is not None else None
        if session is None or item is None:
            return []
        position = self._position(session)
        c = self._stream_config
        pause = max(c.endpoint_s, c.advanced.pad_s)
        samples = (-position) % VAD_CHUNK + math.ceil(pause * _SR / VAD_CHUNK) * VAD_CHUNK
        item.boundary = self._last_boundary = position
        self._inserted += samples
        self._flushing = self._flushing or session.state == "speaking"
        return [Silence(samples)]

    def _commit(self, data: Mapping[str, Any]) -> Commands:
        _known(data, frozenset({"type", "event_id"}), "")
        ms = (self._appended - self._mark) * 1000 / self.config.sample_rate
        if self.live is None or ms < _MIN_COMMIT_MS:
            raise RealtimeRequestError(
                f"Error committing input audio buffer: buffer too small. Expected at least {_MIN_COMMIT_MS}ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item = self._open_item()
        commands = self._end_turn()
        return [*[Reply(m) for m in self._committed(item)], *commands]

    def _clear(self, data: Mapping[str, Any]) -> Commands:
        _known(data, frozenset({"type", "event_id"}), "")
        commands: list[Command] = []
        if self.live is not None and self._open() is not None:
            item = self._open_item()
            item.discarded = True
            commands = self._end_turn()
        self._mark = self._appended
        return [Reply(self._event("input_audio_buffer.cleared")), *commands]

    # -- turns -----------------------------------------------------------------------------------------
    def _open(self) -> _Item | None:
        return self._items[-1] if self._items and self._items[-1].boundary is None else None

    def _open_item(self, start: int | None = None) -> _Item:
        item = self._open()
        if item is None:
            if start is None:
                start = self._position(self.live.session) if self.live is not None else 0
            item = _Item(_new_id("item"), start)
            self._items.append(item)
        return item

    @staticmethod
    def _position(session: StreamingSession) -> int:
        return round(session.audio_seconds * _SR)

    def _ms(self, position: int) -> int:
        return max(0, (position - self._inserted) * 1000 // _SR)

    def observe(self, session: StreamingSession, events: Sequence[Event]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, Partial):
                item = self._open_item()
                out += self._show(item, [*item.finals, event.stable])
            elif isinstance(event, Final):
                item = self._item_for(event, out)
                item.finals.append(event.text)
                out += self._show(item, item.finals)
        speaking = session.state == "speaking"
        if speaking != self._speaking and not self._flushing and self.config.turn_detection is not None:
            out += self._speech_started(session) if speaking else self._speech_stopped(session)
        self._speaking = speaking
        if not speaking:
            self._flushing = False
        if session.backlog_s == 0 and not self._flushing:  # every closed phrase has its final
            while self._items and self._items[0].boundary is not None:
                out += self._complete(self._items.popleft())
        return out

    def _speech_started(self, session: StreamingSession) -> list[dict[str, Any]]:
        # The session's phrase starts at the onset chunk less the prefix padding, never before the
        # end of the previous phrase (StreamingSession._step).
        pad = round(self._stream_config.advanced.pad_s * _SR)
        start = max(self._position(session) - VAD_CHUNK - pad, self._last_boundary, 0)
        item = self._open_item(start)
        return [self._event("input_audio_buffer.speech_started", audio_start_ms=self._ms(start), item_id=item.id)]

    def _speech_stopped(self, session: StreamingSession) -> list[dict[str, Any]]:
        item = self._open()
        if item is None:
            return []
        # The session closed the phrase after ``endpoint_s`` of silence; the phrase (and this turn)
        # ends ``pad_s`` after the last speech, where the next phrase may start.
        c = self._stream_config
        position = self._position(session)
        silence = math.ceil(c.endpoint_s * _SR / VAD_CHUNK) * VAD_CHUNK
        item.boundary = self._last_boundary = min(position, position - silence + round(c.advanced.pad_s * _SR))
        # The buffer now holds what was appended after this point (the rest of the frame being fed).
        self._mark = (position - self._inserted) * self.config.sample_rate // _SR
        stopped = self._event("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(position), item_id=item.id)
        return [stopped, *self._committed(item)]

    def _committed(self, item: _Item) -> list[dict[str, Any]]:
        previous, self._previous = self._previous, item.id
        message = {
            "id": item.id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }  # fmt: skip
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        return [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id),
            self._event(added, previous_item_id=previous, item=message),
        ]

    def _item_for(self, final: Final, out: list[dict[str, Any]]) -> _Item:
        """The turn ``final`` belongs to: the oldest not completed, unless ``final`` starts at or after
        its end (then that turn has all its finals: it is completed first)."""
        while self._items and self._items[0].boundary is not None and final.start * _SR >= self._items[0].boundary - _SR // 2000:
            out += self._complete(self._items.popleft())
        return self._items[0] if self._items else self._open_item()

    def _show(self, item: _Item, parts: Sequence[str]) -> list[dict[str, Any]]:
        """A delta for what ``parts`` (settled text) add to what ``item`` has sent, if they extend it."""
        if item.discarded or item.diverged:
            return []
        text = " ".join(p for p in parts if p)
        if text == item.sent or not text.startswith(item.sent):
            item.diverged = item.diverged or not text.startswith(item.sent)
            return []
        if item.sent and not text[len(item.sent)].isspace():  # the last word sent grew: a revision
            item.diverged = True
            return []
        delta, item.sent = text[len(item.sent) :], text
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0, delta=delta)]

    def _complete(self, item: _Item) -> list[dict[str, Any]]:
        if item.discarded:
            return []
        seconds = max(0, (item.boundary or item.start) - item.start) / _SR
        return [
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item.id,
                content_index=0,
                transcript=item.transcript,
                usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        ]

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, event: Event) -> dict[str, Any] | None:
        """Only the session's errors go out as they are; its text goes out through :meth:`observe`."""
        if isinstance(event, Error):
            kind = "invalid_request_error" if event.code in _CLIENT_ERRORS else "server_error"
            return self._error(event.code, event.message, kind=kind)
        return None

    @staticmethod
    def _event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": _new_id("event"), **fields}

    def _error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> dict[str, Any]:
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        return self._event("error", error=error)

    def _session_object(self) -> dict[str, Any]:
        c = self.config
        transcription = {"model": c.model, "language": c.language, "prompt": c.prompt}
        turns = c.turn_detection.to_dict() if c.turn_detection is not None else None
        common = {"id": self.session_id, "object": "realtime.transcription_session", "expires_at": 0, "include": None}
        if self.beta:
            session = {
                **common, "modalities": ["text"], "input_audio_format": "pcm16", "input_audio_transcription": transcription,
                "turn_detection": turns, "input_audio_noise_reduction": None,
            }  # fmt: skip
            if c.sample_rate != OPENAI_RATE:
                session["input_audio_sample_rate"] = c.sample_rate
            return session
        audio_input = {
            "format": {"type": "audio/pcm", "rate": c.sample_rate}, "transcription": transcription,
            "turn_detection": turns, "noise_reduction": None,
        }  # fmt: skip
        return {"type": "transcription", **common, "audio": {"input": audio_input}}
