"""Speakers of a live session, clustered online, final by final.

A live final often holds more than one voice (on a call, people answer without a pause). So each
final's audio goes through the segmentation model (10 s pieces), which says which *local* speakers
talk when; each local speaker with enough clean speech gets a CAM++ embedding, compared with the
session's speakers so far: close enough (cosine) to a speaker's running average, it is that speaker
(and refines the average); far from all of them and long enough, it is a new speaker. Every word then
gets the speaker who talks most during it, and the final the speaker of most of its words.

Labels never change once given (``SPEAKER_00`` is the first voice of the session). Speech too short
for a reliable embedding is labelled only when it is clearly one known speaker; otherwise its speaker
is ``None``: not known, rather than a guess.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .models import CHUNK_SAMPLES, FRAME_DURATION, FRAME_STEP, SAMPLE_RATE, SpeakerModels, fbank
from .pipeline import _frames_of, speaker_label

__all__ = ["OnlineSpeakers"]

_FBANK_SHIFT = 0.01
_MIN_LOCAL_S = 0.3  # less speech than this from a local speaker: no embedding at all


class OnlineSpeakers:
    def __init__(
        self,
        models: SpeakerModels,
        *,
        threshold: float = 0.45,
        short_threshold: float = 0.3,
        min_seconds: float = 1.0,
        max_speakers: int = 20,
    ) -> None:
        self.models = models
        self.threshold = threshold
        """Cosine distance to a speaker's average under which speech is that speaker."""
        self.short_threshold = short_threshold
        """The same for speech shorter than ``min_seconds`` (which never starts a new speaker)."""
        self.min_seconds = min_seconds
        self.max_speakers = max_speakers
        self._sums: list[np.ndarray] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._sums)

    def _assign(self, found: Sequence[tuple[float, int, np.ndarray]]) -> dict[int, int | None]:
        """The global index of each local speaker of one piece (``(seconds, local index, embedding)``).

        Jointly, not one by one: of all the ways to give the local speakers distinct known speakers
        (each within its threshold) or none, the one with the least total cosine distance, where a
        local speaker left unmatched costs its threshold. Taken greedily, the voice with the most
        speech in a piece grabs the closest known speaker even when another voice of the piece is
        that speaker's own (early in a call, when one speaker is known from a second of speech).
        Unmatched, a long one is a new speaker; a short one (under ``min_seconds``) stays unknown."""
        if not found:
            return {}
        limits = [self.short_threshold if seconds < self.min_seconds else self.threshold for seconds, _, _ in found]
        distances = np.zeros((len(found), 0))
        if self._sums:
            centroids = np.stack([s / np.linalg.norm(s) for s in self._sums])
            distances = 1.0 - np.stack([vec for _, _, vec in found]) @ centroids.T
        best: tuple[float, tuple[int | None, ...]] = (float(sum(limits)), (None,) * len(found))
        candidates = [[None, *(j for j in range(distances.shape[1]) if distances[i, j] < limits[i])] for i in range(len(found))]
        for choice in itertools.product(*candidates):
            chosen = [j for j in choice if j is not None]
            if len(chosen) != len(set(chosen)):
                continue  # two voices of one piece are two speakers
            cost = sum(limits[i] if j is None else float(distances[i, j]) for i, j in enumerate(choice))
            if cost < best[0]:
                best = (cost, choice)
        labels: dict[int, int | None] = {}
        for (seconds, k, vec), j in sorted(zip(found, best[1], strict=True), key=lambda f: -f[0][0]):  # most speech first
            if j is not None and seconds >= self.min_seconds:
                self._sums[j] = self._sums[j] + vec * min(seconds, 5.0)
            elif j is None and seconds >= self.min_seconds and len(self._sums) < self.max_speakers:
                self._sums.append(vec * min(seconds, 5.0))
                j = len(self._sums) - 1
            labels[k] = j
        return labels

    def _piece(self, audio: np.ndarray) -> tuple[np.ndarray, list[int | None]]:
        """(frames, 3) local activity of one piece of up to 10 s, and the global index of each local speaker."""
        chunk = np.zeros(CHUNK_SAMPLES, np.float32)
        chunk[: len(audio)] = audio
        seg = self.models.segment(chunk[None])[0]
        n_frames = min(len(seg), int(len(audio) / SAMPLE_RATE / FRAME_STEP) + 1)
        seg = seg[:n_frames]
        feats = fbank(audio)
        centres = (np.arange(n_frames) * FRAME_STEP + FRAME_DURATION / 2) / _FBANK_SHIFT
        clean = seg * (seg.sum(axis=1, keepdims=True) == 1)
        found: list[tuple[float, int, np.ndarray]] = []
        for k in range(seg.shape[1]):
            active = clean[:, k] > 0
            seconds = float(active.sum() * FRAME_STEP)
            if seconds < _MIN_LOCAL_S:
                continue
            idx = _frames_of(active, centres, 0.0, len(feats))
            if len(idx) >= 20:
                found.append((seconds, k, self.models.embed(feats[idx])))
        with self._lock:
            assigned = self._assign(found)
        return seg, [assigned.get(k) for k in range(seg.shape[1])]

    def label(
        self, audio: np.ndarray, offset: float, words: Sequence[tuple[float, float]] = (), *, start: float | None = None
    ) -> tuple[str | None, list[str | None]]:
        """The speaker of one final (16 kHz audio starting ``offset`` seconds into the stream), and of
        each of its ``words`` (absolute start and end seconds). ``audio`` may begin before the final,
        at ``offset``, with the final itself from ``start`` on: the segmentation model tells voices
        apart better with the seconds before, and the embeddings get more of each voice."""
        if len(audio) < 0.4 * SAMPLE_RATE:
            return None, [None] * len(words)
        # Activity per global speaker on one frame grid over the final.
        total = int(len(audio) / SAMPLE_RATE / FRAME_STEP) + 1
        activity: dict[int, np.ndarray] = {}
        for p0 in range(0, len(audio), CHUNK_SAMPLES):
            piece = audio[p0 : p0 + CHUNK_SAMPLES]
            if len(piece) < 0.4 * SAMPLE_RATE:
                break
            seg, labels = self._piece(piece)
            f0 = round(p0 / SAMPLE_RATE / FRAME_STEP)
            for k, j in enumerate(labels):
                if j is None:
                    continue
                span = min(len(seg), total - f0)
                activity.setdefault(j, np.zeros(total))[f0 : f0 + span] += seg[:span, k]
        if not activity:
            return None, [None] * len(words)
        speakers = sorted(activity)
        grid = np.stack([activity[j] for j in speakers], axis=1)  # (frames, speakers)
        times = offset + np.arange(total) * FRAME_STEP + FRAME_DURATION / 2
        talking = np.flatnonzero(grid.sum(axis=1) > 0)

        def who(start: float, end: float) -> int | None:
            inside = (times >= start) & (times <= end)
            talk = grid[inside].sum(axis=0)
            if talk.max() > 0:
                return speakers[int(np.argmax(talk))]
            if not len(talking):
                return None
            nearest = talking[np.argmin(np.abs(times[talking] - (start + end) / 2))]
            return speakers[int(np.argmax(grid[nearest]))]

        word_labels = [who(s, e) for s, e in words]
        votes = Counter(j for j in word_labels if j is not None)
        own = grid[times >= start] if start is not None and (times >= start).any() else grid
        final = votes.most_common(1)[0][0] if votes else speakers[int(np.argmax(own.sum(axis=0)))]
        return speaker_label(final), [None if j is None else speaker_label(j) for j in word_labels]
