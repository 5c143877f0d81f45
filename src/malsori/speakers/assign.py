"""A transcript's words and segments attributed to the speakers of a diarization.

Every word gets the speaker who talks most during it (the nearest turn's speaker when it falls in a
gap); a segment is split wherever the speaker of its words changes, and each piece carries its
speaker. A segment without word times gets the speaker who talks most during the whole segment.
"""

from __future__ import annotations

import dataclasses

from ..engine.types import Segment, Transcript, Word
from .pipeline import Diarization

__all__ = ["attribute"]


def _split(seg: Segment, diarization: Diarization) -> list[Segment]:
    if not seg.words:
        return [dataclasses.replace(seg, speaker=diarization.speaker_at(seg.start, seg.end))]
    words = [dataclasses.replace(w, speaker=diarization.speaker_at(w.start, w.end)) for w in seg.words]
    runs: list[list[Word]] = []
    for w in words:
        if runs and runs[-1][0].speaker == w.speaker:
            runs[-1].append(w)
        else:
            runs.append([w])
    if len(runs) == 1:
        return [dataclasses.replace(seg, words=tuple(words), speaker=words[0].speaker)]
    pieces = []
    for i, run in enumerate(runs):
        pieces.append(
            dataclasses.replace(
                seg,
                start=seg.start if i == 0 else run[0].start,
                end=seg.end if i == len(runs) - 1 else run[-1].end,
                text="".join(w.word for w in run),
                words=tuple(run),
                tokens=(),  # the segment's tokens cannot be split by word
                speaker=run[0].speaker,
            )
        )
    return pieces


def attribute(transcript: Transcript, diarization: Diarization, *, keep_words: bool = True) -> Transcript:
    """``transcript`` with a speaker on every segment and word, segments split at speaker changes
    (``keep_words=False``: the words are dropped once they have served to split the segments)."""
    pieces = [p for seg in transcript.segments for p in _split(seg, diarization)]
    if not keep_words:
        pieces = [dataclasses.replace(p, words=None) for p in pieces]
    return dataclasses.replace(
        transcript,
        segments=tuple(dataclasses.replace(p, id=i) for i, p in enumerate(pieces)),
        diarized=True,
        speaker_turns=tuple((t.start, t.end, t.speaker) for t in diarization.turns),
    )
