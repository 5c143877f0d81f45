"""Sentiment of a transcript's segments (``sentiment=true`` on file transcriptions and jobs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..engine.types import Transcript
from .sentiment import Sentiment

__all__ = ["label_segments", "SEGMENT_BATCH"]

SEGMENT_BATCH = 16
"""Segments analysed per call: a long file's segments go in small batches, so a live final waiting for
the same analyzer thread waits behind one batch (about half a second with e5), not the whole file."""


def label_segments(transcript: Transcript, analyze: Callable[[Sequence[str], str | None], list[Sentiment]]) -> Transcript:
    """``transcript`` with each segment's ``sentiment`` (``analyze(texts, language)``, batch by batch)."""
    segments = list(transcript.segments)
    language = transcript.language or None
    for i in range(0, len(segments), SEGMENT_BATCH):
        batch = segments[i : i + SEGMENT_BATCH]
        results = analyze([s.text.strip() for s in batch], language)
        segments[i : i + SEGMENT_BATCH] = [replace(s, sentiment=r) for s, r in zip(batch, results, strict=True)]
    return replace(transcript, segments=tuple(segments))
