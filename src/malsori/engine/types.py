"""Typed results of the engine: words, segments, transcripts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the engine runs without the analysis layer
    from ..analysis.sentiment import Sentiment

__all__ = ["Word", "Segment", "Transcript"]


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None
    """Who said it, when the transcript was diarized (``SPEAKER_00``...)."""


@dataclass(frozen=True)
class Segment:
    """One timed piece of text. ``confidence`` is exp(avg_logprob), in [0, 1]."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float = 1.0
    temperature: float = 0.0
    words: tuple[Word, ...] | None = None
    tokens: tuple[int, ...] = ()
    speaker: str | None = None
    """Who talks most during the segment, when the transcript was diarized."""
    sentiment: Sentiment | None = None
    """The segment text's sentiment, when it was asked for (``sentiment=true``; malsori.analysis)."""

    @property
    def confidence(self) -> float:
        return float(min(1.0, max(0.0, math.exp(self.avg_logprob))))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["confidence"] = round(self.confidence, 4)
        data["tokens"] = list(self.tokens)
        if self.speaker is None:
            data.pop("speaker")
        if self.sentiment is None:
            data.pop("sentiment")
        else:
            data["sentiment"] = self.sentiment.to_dict()
        if self.words is None:
            data.pop("words")
        else:
            data["words"] = [{k: v for k, v in asdict(w).items() if k != "speaker" or v is not None} for w in self.words]
        return data


@dataclass(frozen=True)
class Transcript:
    """The result of transcribing one input."""

    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float
    processing_time: float = 0.0
    task: str = "transcribe"
    duration_after_vad: float | None = None
    extra: dict = field(default_factory=dict, compare=False)
    diarized: bool = False
    """Speakers were looked for (segments and words carry ``speaker``; see :mod:`malsori.speakers`)."""
    speaker_turns: tuple[tuple[float, float, str], ...] = ()
    """Who spoke when, (start, end, speaker), from diarization; turns may overlap."""

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def confidence(self) -> float:
        """Duration-weighted mean segment confidence (0 when there are no segments)."""
        total = sum(max(s.end - s.start, 0.01) for s in self.segments)
        if not total:
            return 0.0
        return sum(s.confidence * max(s.end - s.start, 0.01) for s in self.segments) / total

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in (s.words or ())]

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "language_probability": round(self.language_probability, 4),
            "duration": round(self.duration, 3),
            "processing_time": round(self.processing_time, 3),
            "task": self.task,
            "confidence": round(self.confidence, 4),
            "segments": [s.to_dict() for s in self.segments],
            **(self._speaker_dict() if self.diarized else {}),
        }

    def _speaker_dict(self) -> dict:
        return {
            "speakers": sorted({s.speaker for s in self.segments if s.speaker} | {t[2] for t in self.speaker_turns}),
            "speaker_turns": [{"start": round(a, 3), "end": round(b, 3), "speaker": who} for a, b, who in self.speaker_turns],
        }
