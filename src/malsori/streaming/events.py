"""Typed events of a live session. ``seq`` numbers a session's events from 1 without gaps;
:class:`Ready` is about one connection, not the session: it always has ``seq`` 0, is never kept
for replay, and each wire protocol renders it its own way (``ready``, ``session_started``, nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from ..analysis.sentiment import Sentiment

__all__ = ["Event", "Ready", "Partial", "Final", "Language", "Error", "End", "Stats", "WordTiming"]


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    probability: float
    speaker: str | None = None
    """With ``diarize``: who said the word (None while it cannot be told)."""


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    seq: int

    def to_dict(self) -> dict:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class Ready(Event):
    type: ClassVar[str] = "ready"
    session_id: str = ""
    resume_token: str = ""
    resumed: bool = False
    received_samples: int = 0
    last_seq: int = 0
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    language: str | None = None
    task: str = "transcribe"
    preset: str = "balanced"
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Partial(Event):
    type: ClassVar[str] = "partial"
    text: str = ""
    stable: str = ""
    unstable: str = ""
    start: float = 0.0
    end: float = 0.0


@dataclass(frozen=True)
class Final(Event):
    type: ClassVar[str] = "final"
    text: str = ""
    start: float = 0.0
    end: float = 0.0
    language: str | None = None
    words: tuple[WordTiming, ...] | None = None
    speaker: str | None = None
    """With ``diarize``: the speaker's label, or None while it cannot be told."""
    diarized: bool = False
    """The session labels speakers (``speaker`` is on the wire, maybe null)."""
    sentiment: Sentiment | None = None
    """With ``sentiment``: the text's sentiment (None when it could not be told: the analyzer failed)."""
    analyzed: bool = False
    """The session asked for sentiment (``sentiment`` is on the wire, maybe null)."""
    label_speakers: Callable[[], tuple[str | None, tuple[WordTiming, ...] | None]] | None = field(
        default=None, compare=False, repr=False
    )
    """With ``diarize``, until :meth:`labelled`: the work that finds ``speaker`` and the words' speakers
    (CPU-bound, about 0.1-0.3 s: the live runner runs it in a thread, finals in order)."""

    def labelled(self) -> Final:
        """This final with its speakers found (blocking; itself when there is nothing to find)."""
        if self.label_speakers is None:
            return self
        speaker, words = self.label_speakers()
        return replace(self, speaker=speaker, words=words, label_speakers=None)

    def to_dict(self) -> dict:
        data = {"type": self.type, "seq": self.seq, "text": self.text, "start": self.start, "end": self.end}
        data["language"] = self.language
        if self.words is not None:
            data["words"] = [{k: v for k, v in asdict(w).items() if k != "speaker" or self.diarized} for w in self.words]
        if self.diarized:
            data["speaker"] = self.speaker
            data["diarized"] = True
        if self.analyzed:
            data["sentiment"] = None if self.sentiment is None else self.sentiment.to_dict()
        return data


@dataclass(frozen=True)
class Language(Event):
    type: ClassVar[str] = "language"
    language: str = ""
    probability: float = 0.0


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str = "error"
    message: str = ""
    fatal: bool = False


@dataclass(frozen=True)
class End(Event):
    type: ClassVar[str] = "end"
    reason: str = "stopped"
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class Stats(Event):
    """The running statistics of a session (and of its meeting): ``seq`` 0 like :class:`Ready`.
    Each one supersedes the one before, so they are never kept for replay; a resumed connection
    gets a fresh one within ``stats_interval_s``. ``stats`` and ``meeting`` are
    ``malsori.analysis.stats.StatsSnapshot.to_dict()`` values."""

    type: ClassVar[str] = "stats"
    session_id: str = ""
    stats: dict = field(default_factory=dict)
    meeting_id: str | None = None
    meeting: dict | None = None
