"""Typed events of the ``/v1/stream`` protocol, parsed from the server's JSON messages.

Every event carries ``seq``, the server's sequence number for this session: a reconnecting client
sends the last one it received and the server replays what came after, so the client can drop any
event it has already seen. Fields the server adds later are kept in ``extra`` rather than refused,
so an older client keeps working against a newer server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "Word",
    "ReadyEvent",
    "PartialEvent",
    "FinalEvent",
    "LanguageEvent",
    "ErrorEvent",
    "EndEvent",
    "StatsEvent",
    "StreamEvent",
    "parse_event",
]


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float | None = None
    speaker: str | None = None
    """Who said it, in a session started with ``diarize`` (None while not known)."""


@dataclass(frozen=True)
class ReadyEvent:
    """The session is open (or resumed): keep ``session_id`` and ``resume_token`` to resume it."""

    seq: int
    session_id: str
    resume_token: str
    resumed: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "ready"


@dataclass(frozen=True)
class PartialEvent:
    """The unsettled tail of the current phrase; the next partial or final replaces it."""

    seq: int
    text: str
    start: float | None = None
    end: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "partial"


@dataclass(frozen=True)
class FinalEvent:
    """Settled text of ``[start, end]`` seconds of the stream's audio; it never changes."""

    seq: int
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "final"


@dataclass(frozen=True)
class LanguageEvent:
    seq: int
    language: str
    probability: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "language"


@dataclass(frozen=True)
class ErrorEvent:
    """The server refused something; ``code`` is one of malsori's stable error codes.

    ``seq`` is None for an error sent before a session exists (a bad ``start`` message).
    """

    seq: int | None
    code: str
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "error"


@dataclass(frozen=True)
class EndEvent:
    """The session is over: every final has been sent before this."""

    seq: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "end"


@dataclass(frozen=True)
class StatsEvent:
    """Running statistics (a session started with ``stats``; docs/protocol.md, "Statistics and
    meetings"). Not numbered (``seq`` None): each one supersedes the one before, none is replayed."""

    session_id: str
    stats: Mapping[str, Any]
    meeting_id: str | None = None
    meeting: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    seq: int | None = None
    type: str = "stats"


StreamEvent = ReadyEvent | PartialEvent | FinalEvent | LanguageEvent | ErrorEvent | EndEvent | StatsEvent


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _words(raw: Any) -> tuple[Word, ...]:
    if not raw:
        return ()
    return tuple(
        Word(
            str(w["word"]),
            float(w["start"]),
            float(w["end"]),
            _float_or_none(w.get("probability")),
            None if w.get("speaker") is None else str(w["speaker"]),
        )
        for w in raw
    )


def _rest(message: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in known}


def parse_event(message: Mapping[str, Any]) -> StreamEvent:
    """Turn one decoded JSON message from the server into its typed event.

    Raises :class:`~malsori.errors.ProtocolError` when the message is not a known event or lacks a
    field the protocol requires.
    """
    try:
        kind = message["type"]
        if kind == "error":
            seq = message.get("seq")
            known = {"type", "seq", "code", "message"}
            return ErrorEvent(
                None if seq is None else int(seq),
                str(message.get("code", "error")),
                str(message.get("message", "")),
                _rest(message, known),
            )
        if kind == "stats":
            known = {"type", "seq", "session_id", "stats", "meeting_id", "meeting"}
            meeting = message.get("meeting_id")
            return StatsEvent(
                str(message["session_id"]),
                dict(message["stats"]),
                None if meeting is None else str(meeting),
                None if message.get("meeting") is None else dict(message["meeting"]),
                _rest(message, known),
            )
        seq = int(message["seq"])
        if kind == "ready":
            known = {"type", "seq", "session_id", "resume_token", "resumed"}
            return ReadyEvent(
                seq,
                str(message["session_id"]),
                str(message["resume_token"]),
                bool(message.get("resumed", False)),
                _rest(message, known),
            )
        if kind == "partial":
            known = {"type", "seq", "text", "start", "end"}
            return PartialEvent(
                seq,
                str(message["text"]),
                _float_or_none(message.get("start")),
                _float_or_none(message.get("end")),
                _rest(message, known),
            )
        if kind == "final":
            known = {"type", "seq", "text", "start", "end", "words"}
            return FinalEvent(
                seq,
                str(message["text"]),
                float(message["start"]),
                float(message["end"]),
                _words(message.get("words")),
                _rest(message, known),
            )
        if kind == "language":
            known = {"type", "seq", "language", "probability"}
            return LanguageEvent(seq, str(message["language"]), _float_or_none(message.get("probability")), _rest(message, known))
        if kind == "end":
            return EndEvent(seq, _rest(message, {"type", "seq"}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {message.get('type', 'untyped')!r} event from the server: {exc!r}") from exc
    raise ProtocolError(f"unknown event type from the server: {kind!r}")
