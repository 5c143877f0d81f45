"""Live statistics of a session or a meeting, updated as its finals arrive (issue 13).

Pure bookkeeping, no clock and no I/O: the transport tells a :class:`LiveStats` about each final
(:meth:`LiveStats.add`, with how late it was) and how much audio has streamed
(:meth:`LiveStats.advance`), and asks for a :class:`StatsSnapshot` whenever it sends a ``stats``
event. The definitions, so a number on the page can be checked by hand:

- ``words``: whitespace-separated words of the finals' text (a Korean eojeol counts as one).
- ``speaking_s``: the sum of the finals' ``end - start`` (finals never overlap).
- ``wpm``: ``words / speaking_s * 60``, the rate while speaking (pauses do not lower it); per speaker
  the same over that speaker's finals, with ``share`` its part of ``speaking_s``.
- ``silence_ratio``: of the audio already settled (streamed, less the speech still waiting for its
  final), the part no final covers.
- ``sentiment``: from finals that carry one (``{"label", "score"}``): count and share per label,
  ``mean`` valence (``+score`` positive, ``-score`` negative, 0 neutral) and ``trend``, the rolling
  mean of the last :data:`TREND_WINDOW` valences after each such final, as ``[end_s, value]`` points
  (the newest :data:`TREND_POINTS`).
- ``latency``: seconds from the arrival of the audio a final ends with to the final going out, as
  nearest-rank p50 and p95 and the last one, in milliseconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Utterance",
    "LiveStats",
    "StatsSnapshot",
    "SpeakerStats",
    "SentimentStats",
    "LatencyStats",
    "SENTIMENT_LABELS",
    "TREND_WINDOW",
    "TREND_POINTS",
    "word_count",
]

SENTIMENT_LABELS = ("negative", "neutral", "positive")
TREND_WINDOW = 5
"""Finals averaged per point of the sentiment trend: one utterance alone swings too much to read."""
TREND_POINTS = 60
"""Trend points kept (and sent): the chart shows the recent course, a stats event stays small."""
_LATENCIES_KEPT = 5000


def word_count(text: str) -> int:
    return len(text.split())


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


@dataclass(frozen=True)
class Utterance:
    """What the statistics take from one final."""

    text: str
    start: float
    end: float
    speaker: str | None = None
    sentiment: str | None = None
    """``negative``, ``neutral`` or ``positive``; None when the final carries no sentiment."""
    score: float = 0.0
    """The sentiment's confidence, 0..1."""

    @property
    def words(self) -> int:
        return word_count(self.text)

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def valence(self) -> float:
        """+score for positive, -score for negative, 0 for neutral (or none)."""
        if self.sentiment == "positive":
            return self.score
        if self.sentiment == "negative":
            return -self.score
        return 0.0

    @classmethod
    def of(cls, final: Any, speaker: str | None = None) -> Utterance:
        """From a ``Final`` event (or anything with its fields); its ``sentiment``, when present, is a
        mapping or an object with ``label`` and ``score``. ``speaker`` overrides the final's."""
        label, score = _sentiment(getattr(final, "sentiment", None))
        who = speaker if speaker is not None else getattr(final, "speaker", None)
        return cls(final.text, float(final.start), float(final.end), who, label, score)


def _sentiment(value: Any) -> tuple[str | None, float]:
    if value is None:
        return None, 0.0
    if isinstance(value, Mapping):
        label, score = value.get("label"), value.get("score")
    else:
        label, score = getattr(value, "label", None), getattr(value, "score", None)
    if label not in SENTIMENT_LABELS:
        return None, 0.0
    return str(label), float(score) if isinstance(score, (int, float)) else 0.0


@dataclass(frozen=True)
class SpeakerStats:
    words: int
    speaking_s: float
    wpm: float
    share: float
    finals: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "words": self.words, "speaking_s": self.speaking_s, "wpm": self.wpm, "share": self.share, "finals": self.finals,
        }  # fmt: skip


@dataclass(frozen=True)
class SentimentStats:
    counts: dict[str, int]
    mix: dict[str, float]
    mean: float
    trend: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "mix": self.mix, "mean": self.mean, "trend": [list(p) for p in self.trend]}


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float
    p95_ms: float
    last_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "last_ms": self.last_ms}


@dataclass(frozen=True)
class StatsSnapshot:
    """The statistics at one moment (the body of a ``stats`` event)."""

    audio_s: float
    finals: int
    words: int
    speaking_s: float
    wpm: float
    silence_ratio: float
    speakers: dict[str, SpeakerStats] | None = None
    """Per speaker label, when the finals carry speakers (``diarize``); None otherwise."""
    sentiment: SentimentStats | None = None
    """None until a final carries a sentiment."""
    latency: LatencyStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio_s": self.audio_s,
            "finals": self.finals,
            "words": self.words,
            "speaking_s": self.speaking_s,
            "wpm": self.wpm,
            "silence_ratio": self.silence_ratio,
            "speakers": None if self.speakers is None else {k: v.to_dict() for k, v in self.speakers.items()},
            "sentiment": None if self.sentiment is None else self.sentiment.to_dict(),
            "latency": None if self.latency is None else self.latency.to_dict(),
        }


@dataclass
class _Tally:
    words: int = 0
    speaking_s: float = 0.0
    finals: int = 0

    def add(self, u: Utterance) -> None:
        self.words += u.words
        self.speaking_s += u.duration
        self.finals += 1


def _wpm(words: int, seconds: float) -> float:
    return _r(words / seconds * 60.0, 1) if seconds > 0 else 0.0


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class LiveStats:
    """The running statistics of one session (or one meeting: feed it every session's finals)."""

    total: _Tally = field(default_factory=_Tally)
    speakers: dict[str, _Tally] = field(default_factory=dict)
    audio_s: float = 0.0
    open_s: float = 0.0
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SENTIMENT_LABELS, 0))
    valence_sum: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=TREND_WINDOW))
    trend: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=TREND_POINTS))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES_KEPT))

    def add(self, utterance: Utterance, latency_s: float | None = None) -> None:
        """Count one final (``latency_s``: how late it went out, when measured)."""
        self.total.add(utterance)
        if utterance.speaker is not None:
            self.speakers.setdefault(utterance.speaker, _Tally()).add(utterance)
        if utterance.sentiment is not None:
            self.labels[utterance.sentiment] += 1
            self.valence_sum += utterance.valence
            self.recent.append(utterance.valence)
            self.trend.append((_r(utterance.end, 2), _r(sum(self.recent) / len(self.recent))))
        if latency_s is not None:
            self.latencies.append(max(0.0, latency_s))

    def advance(self, audio_s: float, open_s: float = 0.0) -> None:
        """``audio_s`` seconds of audio have streamed; the last ``open_s`` of them are speech still
        waiting for its final (not silence, not counted yet)."""
        self.audio_s = max(self.audio_s, audio_s)
        self.open_s = max(0.0, min(open_s, self.audio_s))

    def snapshot(self) -> StatsSnapshot:
        t = self.total
        settled = max(self.audio_s - self.open_s, t.speaking_s)
        silence = _r((settled - t.speaking_s) / settled) if settled > 0 else 0.0
        speakers = None
        if self.speakers:
            speakers = {
                name: SpeakerStats(
                    s.words,
                    _r(s.speaking_s),
                    _wpm(s.words, s.speaking_s),
                    _r(s.speaking_s / t.speaking_s) if t.speaking_s else 0.0,
                    s.finals,
                )
                for name, s in sorted(self.speakers.items())
            }
        sentiment = None
        rated = sum(self.labels.values())
        if rated:
            sentiment = SentimentStats(
                dict(self.labels),
                {k: _r(v / rated) for k, v in self.labels.items()},
                _r(self.valence_sum / rated),
                tuple(self.trend),
            )
        latency = None
        if self.latencies:
            ordered = sorted(self.latencies)
            ms = [_nearest_rank(ordered, 0.5), _nearest_rank(ordered, 0.95), self.latencies[-1]]
            latency = LatencyStats(len(ordered), *(_r(v * 1000, 1) for v in ms))
        return StatsSnapshot(
            audio_s=_r(self.audio_s, 2),
            finals=t.finals,
            words=t.words,
            speaking_s=_r(t.speaking_s),
            wpm=_wpm(t.words, t.speaking_s),
            silence_ratio=silence,
            speakers=speakers,
            sentiment=sentiment,
            latency=latency,
        )
