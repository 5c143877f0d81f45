"""A stored result back into a :class:`~malsori.engine.Transcript`, so every output format can be
rendered from the database long after the job ran."""

from __future__ import annotations

from ..analysis.sentiment import Sentiment
from ..engine.types import Segment, Transcript, Word

__all__ = ["transcript_from_dict"]

_SEGMENT_FIELDS = ("id", "start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio", "temperature")


def transcript_from_dict(data: dict) -> Transcript:
    """The inverse of ``Transcript.to_dict()`` (derived fields such as ``confidence`` are recomputed)."""
    segments = []
    for raw in data.get("segments", ()):
        words = raw.get("words")
        segments.append(
            Segment(
                **{name: raw[name] for name in _SEGMENT_FIELDS if name in raw},
                words=None
                if words is None
                else tuple(Word(w["start"], w["end"], w["word"], w["probability"], w.get("speaker")) for w in words),
                tokens=tuple(raw.get("tokens", ())),
                speaker=raw.get("speaker"),
                sentiment=None if raw.get("sentiment") is None else Sentiment.from_dict(raw["sentiment"]),
            )
        )
    return Transcript(
        segments=tuple(segments),
        language=data.get("language") or "",
        language_probability=float(data.get("language_probability", 0.0)),
        duration=float(data.get("duration", 0.0)),
        processing_time=float(data.get("processing_time", 0.0)),
        task=data.get("task", "transcribe"),
        diarized="speakers" in data,
        speaker_turns=tuple((float(t["start"]), float(t["end"]), str(t["speaker"])) for t in data.get("speaker_turns", ())),
    )
