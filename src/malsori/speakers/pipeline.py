"""Offline diarization: segmentation -> embeddings -> clustering -> who speaks when.

The recipe is pyannote 3.x's, on the two ONNX models of :mod:`.models`:

1. The segmentation model runs on 10 s chunks every ``step`` seconds (10: chunks side by side, each
   second segmented and embedded once; a 5 s step did all of it twice for DER 6.6% instead of 9.4% on
   the call and 13.8% instead of 11.7% on the meeting, see docs/benchmarks.md); each chunk says, frame by frame
   (17 ms), which of up to three *local* speakers talk (two at once where they overlap).
2. Every local speaker with enough clean speech in a chunk (no overlap) gets a CAM++ embedding of
   those frames.
3. The embeddings are clustered (agglomerative, cosine, average linkage): the number of speakers is
   where the distance passes a threshold, bounded by ``min_speakers``/``max_speakers``, or fixed by
   ``num_speakers``. Each chunk's local speakers are then matched to the clusters' centroids, two local
   speakers of one chunk never to the same cluster (the Hungarian algorithm).
4. The chunks' activities, now with global labels, are averaged frame by frame; the number of speakers
   in a frame is the chunks' average count, and that many of the most active labels speak there. So
   overlapping speech gives two speakers at once.

Labels are ``SPEAKER_00``, ``SPEAKER_01``... in order of first appearance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidOptionsError
from .models import CHUNK_SAMPLES, FRAME_DURATION, FRAME_STEP, SAMPLE_RATE, SpeakerModels, fbank

__all__ = ["DiarizeOptions", "Turn", "Diarization", "Diarizer", "speaker_label"]

_FBANK_SHIFT = 0.01  # seconds per filter-bank frame
_MIN_EMBED_S = 0.6  # clean speech a local speaker needs in a chunk for an embedding


def speaker_label(index: int) -> str:
    return f"SPEAKER_{index:02d}"


@dataclass(frozen=True)
class DiarizeOptions:
    """How many speakers to look for. Leave all three out to find the number."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    threshold: float = 0.4
    """Cosine distance between cluster averages above which two clusters are different speakers."""

    def __post_init__(self) -> None:
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 20:
                raise InvalidOptionsError(f"{name} must be between 1 and 20, not {value}")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise InvalidOptionsError(
                f"min_speakers ({self.min_speakers}) must not be more than max_speakers ({self.max_speakers})"
            )
        if self.num_speakers and (
            (self.min_speakers and self.num_speakers < self.min_speakers)
            or (self.max_speakers and self.num_speakers > self.max_speakers)
        ):
            raise InvalidOptionsError("num_speakers must lie between min_speakers and max_speakers")

    @property
    def bounds(self) -> tuple[int, int]:
        if self.num_speakers:
            return self.num_speakers, self.num_speakers
        return self.min_speakers or 1, self.max_speakers or 20


@dataclass(frozen=True)
class Turn:
    """One stretch of one speaker talking. Turns of different speakers may overlap."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Diarization:
    turns: tuple[Turn, ...]
    duration: float
    processing_time: float = 0.0
    centroids: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.turns})

    def speaker_at(self, start: float, end: float) -> str | None:
        """The speaker who talks most between ``start`` and ``end``; when nobody does, the nearest turn's."""
        talk: dict[str, float] = {}
        for t in self.turns:
            overlap = min(end, t.end) - max(start, t.start)
            if overlap > 0:
                talk[t.speaker] = talk.get(t.speaker, 0.0) + overlap
        if talk:
            return max(talk, key=lambda s: talk[s])
        if not self.turns:
            return None
        mid = (start + end) / 2
        nearest = min(self.turns, key=lambda t: max(t.start - mid, mid - t.end, 0.0))
        return nearest.speaker


class Diarizer:
    """Who speaks when in a whole recording. Thread-safe; one per process (:meth:`diarize` is CPU work)."""

    def __init__(self, models: SpeakerModels | None = None, *, step: float = 10.0) -> None:
        started = time.perf_counter()
        self.models = models or SpeakerModels()
        self.step = step
        self.load_time = time.perf_counter() - started

    # -- 1. segmentation ----------------------------------------------------------------------------
    def _chunks(self, audio: np.ndarray) -> tuple[np.ndarray, list[int]]:
        step = int(self.step * SAMPLE_RATE)
        n = len(audio)
        starts = list(range(0, max(n - CHUNK_SAMPLES, 0) + 1, step))
        if n > CHUNK_SAMPLES and starts[-1] + CHUNK_SAMPLES < n:
            starts.append(n - CHUNK_SAMPLES)
        chunks = np.zeros((len(starts), CHUNK_SAMPLES), np.float32)
        for i, s in enumerate(starts):
            piece = audio[s : s + CHUNK_SAMPLES]
            chunks[i, : len(piece)] = piece
        return chunks, starts

    # -- 2. embeddings --------------------------------------------------------------------------------
    def _embeddings(self, feats: np.ndarray, seg: np.ndarray, starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(chunks, 3, 192) embeddings and a (chunks, 3) mask of those computed."""
        n_chunks, n_frames, n_local = seg.shape
        emb = np.zeros((n_chunks, n_local, 192))
        valid = np.zeros((n_chunks, n_local), bool)
        # Segmentation frame centres, in filter-bank frame indices.
        centres = (np.arange(n_frames) * FRAME_STEP + FRAME_DURATION / 2) / _FBANK_SHIFT
        for c, start in enumerate(starts):
            offset = start / SAMPLE_RATE / _FBANK_SHIFT
            clean = seg[c] * (seg[c].sum(axis=1, keepdims=True) == 1)
            for k in range(n_local):
                active = clean[:, k] > 0
                if active.sum() * FRAME_STEP < _MIN_EMBED_S:
                    active = seg[c, :, k] > 0  # with the overlap, when there is too little clean speech
                    if active.sum() * FRAME_STEP < _MIN_EMBED_S:
                        continue
                idx = _frames_of(active, centres, offset, len(feats))
                if len(idx) < 20:
                    continue
                emb[c, k] = self.models.embed(feats[idx])
                valid[c, k] = True
        return emb, valid

    # -- 3. clustering --------------------------------------------------------------------------------
    @staticmethod
    def _cluster(vectors: np.ndarray, options: DiarizeOptions) -> np.ndarray:
        """Cluster index of each vector (0-based)."""
        from scipy.cluster.hierarchy import fcluster, linkage

        lo, hi = options.bounds
        n = len(vectors)
        if n == 1:
            return np.zeros(1, int)
        tree = linkage(vectors, method="average", metric="cosine")
        labels = fcluster(tree, t=options.threshold, criterion="distance")
        k = len(set(labels))
        if k < lo or k > hi:
            labels = fcluster(tree, t=min(max(k, lo), hi, n), criterion="maxclust")
        _, labels = np.unique(labels, return_inverse=True)
        return labels

    # -- the whole recording ------------------------------------------------------------------------
    def diarize(self, audio: np.ndarray, options: DiarizeOptions = DiarizeOptions()) -> Diarization:
        started = time.perf_counter()
        duration = len(audio) / SAMPLE_RATE
        if len(audio) < SAMPLE_RATE // 2:
            return Diarization((), duration, time.perf_counter() - started)
        chunks, starts = self._chunks(audio)
        seg = self.models.segment(chunks)
        feats = fbank(audio)
        emb, valid = self._embeddings(feats, seg, starts)
        if not valid.any():
            return Diarization((), duration, time.perf_counter() - started)

        labels = self._cluster(emb[valid], options)
        n_clusters = int(labels.max()) + 1
        centroids = np.stack([emb[valid][labels == j].mean(axis=0) for j in range(n_clusters)])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        # Each chunk's local speakers onto distinct clusters (cannot-link within a chunk).
        from scipy.optimize import linear_sum_assignment

        n_chunks, n_frames, n_local = seg.shape
        assign = np.full((n_chunks, n_local), -1)
        for c in range(n_chunks):
            active = seg[c].sum(axis=0) > 0
            locals_ = [k for k in range(n_local) if active[k]]
            if not locals_:
                continue
            cost = np.ones((len(locals_), n_clusters))
            for i, k in enumerate(locals_):
                if valid[c, k]:
                    cost[i] = 1.0 - centroids @ emb[c, k]
            rows, cols = linear_sum_assignment(cost)
            for r, col in zip(rows, cols, strict=True):
                if valid[c, locals_[r]]:
                    assign[c, locals_[r]] = col

        # Aggregate the chunks on one frame grid.
        total = int(np.ceil(duration / FRAME_STEP)) + 1
        score = np.zeros((total, n_clusters))
        count = np.zeros(total)
        cover = np.zeros(total)
        for c, start in enumerate(starts):
            f0 = round(start / SAMPLE_RATE / FRAME_STEP)
            f1 = min(f0 + n_frames, total)
            span = f1 - f0
            cover[f0:f1] += 1
            count[f0:f1] += seg[c, :span].sum(axis=1)
            for k in range(n_local):
                if assign[c, k] >= 0:
                    score[f0:f1, assign[c, k]] += seg[c, :span, k]
        cover = np.maximum(cover, 1)
        score /= cover[:, None]
        speakers_in_frame = np.rint(count / cover).astype(int)
        active = np.zeros_like(score, dtype=bool)
        order = np.argsort(-score, axis=1)
        for j in range(min(2, n_clusters)):
            pick = (speakers_in_frame > j) & (score[np.arange(total), order[:, j]] > 0)
            active[np.arange(total)[pick], order[pick, j]] = True

        turns = _turns(active, duration)
        # Labels in order of first appearance.
        first: dict[int, float] = {}
        for start_s, _, j in turns:
            first.setdefault(j, start_s)
        names = {j: speaker_label(i) for i, j in enumerate(sorted(first, key=lambda j: first[j]))}
        return Diarization(
            tuple(Turn(round(float(s), 3), round(float(e), 3), names[j]) for s, e, j in turns),
            duration,
            time.perf_counter() - started,
            {names[j]: centroids[j] for j in names},
        )


def _frames_of(active: np.ndarray, centres: np.ndarray, offset: float, n_feats: int) -> np.ndarray:
    """Filter-bank frame indices under the active segmentation frames."""
    half = FRAME_STEP / _FBANK_SHIFT / 2
    lo = np.floor(centres[active] + offset - half).astype(int)
    hi = np.ceil(centres[active] + offset + half).astype(int)
    mask = np.zeros(n_feats, bool)
    for a, b in zip(lo, hi, strict=True):
        mask[max(a, 0) : max(min(b, n_feats), 0)] = True
    return np.flatnonzero(mask)


def _turns(active: np.ndarray, duration: float, *, min_off: float = 0.1, min_on: float = 0.1) -> list[tuple[float, float, int]]:
    """(start, end, speaker index) turns from a (frames, speakers) activity grid, gaps under ``min_off`` filled."""
    out = []
    for j in range(active.shape[1]):
        col = np.concatenate([[False], active[:, j], [False]])
        edges = np.flatnonzero(np.diff(col.astype(int)))
        spans = [
            [a * FRAME_STEP + FRAME_DURATION / 2, b * FRAME_STEP + FRAME_DURATION / 2]
            for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
        merged: list[list[float]] = []
        for s in spans:
            if merged and s[0] - merged[-1][1] < min_off:
                merged[-1][1] = s[1]
            else:
                merged.append(s)
        out += [(max(0.0, s), min(e, duration), j) for s, e in merged if e - s >= min_on]
    out.sort()
    return out
