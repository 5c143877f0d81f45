"""A deterministic stand-in for the Whisper engine, for protocol, session and scheduler tests.

Speech is written as tone bursts: each word of :data:`VOCABULARY` has its own frequency, so
``tone_speech(["alpha", "bravo", 0.8, "charlie"])`` is audio whose "transcript" is known exactly.
:class:`FakeDecoder` implements ``decode_windows(windows, options)`` like the real
:class:`~malsori.engine.Transcriber`: it finds the bursts in each window (10 ms energy frames), names
each by its dominant frequency, and returns one timed segment per run of words. A burst cut by the
window's end is still named (as Whisper usually does); silence gives no segments and a high
no-speech probability. It records every window it was given so tests can check what was decoded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .audio import SAMPLE_RATE
from .decoder import DirectDecoder
from .options import TranscribeOptions
from .types import Segment, Word
from .windows import Window, WindowResult

__all__ = ["FakeDecoder", "VOCABULARY", "tone_speech", "word_frequency"]

VOCABULARY: tuple[str, ...] = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)
_BASE_HZ, _STEP_HZ = 400.0, 100.0
_FRAME = SAMPLE_RATE // 100  # 10 ms
_ON_RMS = 0.02
_GAP_FRAMES = 25  # bursts closer than 250 ms belong to one segment


def word_frequency(word: str) -> float:
    return _BASE_HZ + _STEP_HZ * VOCABULARY.index(word)


def tone_speech(script: Sequence[str | float], *, word_s: float = 0.3, gap_s: float = 0.08, amplitude: float = 0.3) -> np.ndarray:
    """16 kHz audio for ``script``: a word is a tone burst of ``word_s``; a number is that many seconds of silence."""
    parts: list[np.ndarray] = []
    for item in script:
        if isinstance(item, str):
            t = np.arange(int(word_s * SAMPLE_RATE)) / SAMPLE_RATE
            ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
            parts.append((amplitude * ramp * np.sin(2 * np.pi * word_frequency(item) * t)).astype(np.float32))
            parts.append(np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32))
        else:
            parts.append(np.zeros(int(float(item) * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class FakeDecoder(DirectDecoder):
    """``decode_windows`` over tone-burst audio; thread-safe; records the windows it decoded.

    It carries the facts a server shows about its model, so ``create_app(transcriber=FakeDecoder())``
    serves every route (status, model lists) as with the real one."""

    model_name = "fake"
    device = "cpu"
    compute_type = "int8"
    multilingual = True
    load_seconds = 0.0

    def check_options(self, options: TranscribeOptions) -> None:
        """Every option is fine for the fake (it has no language limits)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Window], TranscribeOptions]] = []
        self._lock = threading.Lock()

    @property
    def windows(self) -> list[Window]:
        return [w for batch, _ in self.calls for w in batch]

    def decode_windows(self, windows: Sequence[Window], options: TranscribeOptions = TranscribeOptions()) -> list[WindowResult]:
        with self._lock:
            self.calls.append((list(windows), options))
        return [self._decode(w, options) for w in windows]

    def _decode(self, window: Window, options: TranscribeOptions) -> WindowResult:
        audio = np.asarray(window.audio, dtype=np.float32)
        n = len(audio) // _FRAME
        frames = audio[: n * _FRAME].reshape(n, _FRAME) if n else np.zeros((0, _FRAME), dtype=np.float32)
        on = np.sqrt(np.mean(frames**2, axis=1)) > _ON_RMS if n else np.zeros(0, dtype=bool)
        bursts: list[tuple[int, int]] = []
        k = 0
        while k < n:
            if on[k]:
                j = k
                while j < n and on[j]:
                    j += 1
                if j - k >= 3:  # at least 30 ms of tone
                    bursts.append((k, j))
                k = j
            else:
                k += 1
        words: list[Word] = []
        for a, b in bursts:
            piece = audio[a * _FRAME : b * _FRAME]
            spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
            hz = float(np.argmax(spectrum)) * SAMPLE_RATE / len(piece)
            index = round((hz - _BASE_HZ) / _STEP_HZ)
            if 0 <= index < len(VOCABULARY):
                words.append(Word(window.offset + a / 100, window.offset + b / 100, " " + VOCABULARY[index], 0.9))
        segments: list[Segment] = []
        run: list[Word] = []
        for w in [*words, None]:
            if run and (w is None or (w.start - run[-1].end) * 100 > _GAP_FRAMES):
                text = "".join(x.word for x in run).strip()
                segments.append(
                    Segment(
                        len(segments),
                        round(run[0].start, 3),
                        round(run[-1].end, 3),
                        text,
                        -0.2,
                        0.01,
                        1.2,
                        0.0,
                        tuple(run) if options.word_timestamps or window.words else None,
                    )
                )
                run = []
            if w is not None:
                run.append(w)
        language = window.language or options.language or "en"
        no_speech = 0.01 if segments else 0.95
        tokens = tuple(VOCABULARY.index(w.word.strip()) for w in words)  # a word's index stands for its token
        return WindowResult(tuple(segments), language, 0.99, no_speech, -0.2 if segments else -1.5, 1.2, 0.0, tokens)
