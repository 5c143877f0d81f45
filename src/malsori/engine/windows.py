"""Decode windows: what the engine decodes in one piece, and how an input is cut into them.

Light on purpose (numpy; the Silero VAD only when called): the streaming package, the scheduler and
the HTTP layer use these types without importing the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import SAMPLE_RATE
from .types import Segment

__all__ = ["MAX_WINDOW_S", "Window", "WindowResult", "plan_windows", "speech_regions"]

MAX_WINDOW_S = 28.0
"""Longest window the engine decodes (Whisper reads at most 30 s)."""


@dataclass(frozen=True)
class Window:
    """Up to ``MAX_WINDOW_S`` of 16 kHz mono audio to decode as one piece."""

    audio: np.ndarray
    offset: float = 0.0
    """Seconds added to every timestamp of the result."""
    prompt: str | None = None
    """Text said before this window (context for the decoder)."""
    prompt_tokens: tuple[int, ...] = ()
    """Tokens the model decoded just before this window (``WindowResult.tokens`` of the windows before
    it, timestamps included), given to the decoder after ``prompt``: Whisper conditions on its own
    previous output in that form, and does worse on the same text re-encoded without timestamps."""
    language: str | None = None
    """Overrides the options' language for this window."""
    words: bool = False
    """Time this window's words even when the options do not ask for word timestamps."""
    fallback: bool = True
    """Apply the options' temperature fallback to this window; False keeps the first decode (a
    live preview), so windows that differ only in this share a batch."""
    prefix: str | None = None
    """Words the window's speech is known to start with (a live phrase's agreed words): given to the
    decoder as the start of its output, which goes on after them, so only the rest is decoded. The
    result's text and tokens include them. Dropped by the temperature fallback's later steps."""


@dataclass(frozen=True)
class WindowResult:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    temperature: float
    tokens: tuple[int, ...] = field(default=(), repr=False)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def speech_regions(audio: np.ndarray, *, min_silence_ms: int = 500, pad_ms: int = 200) -> list[tuple[int, int]]:
    """Speech regions (start, end sample) by the Silero VAD that faster-whisper ships as ONNX."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms, max_speech_duration_s=MAX_WINDOW_S)
    return [(r["start"], r["end"]) for r in get_speech_timestamps(audio, opts)]


def plan_windows(audio: np.ndarray, vad_filter: bool, max_window_s: float = MAX_WINDOW_S) -> list[tuple[int, int]]:
    """Cut an input into (start, end) sample ranges of at most ``max_window_s``.

    With the VAD, an input without speech has no windows; a short one with speech is one window; a long
    one has windows holding speech regions merged up to the limit (the pauses inside a window are kept,
    so timestamps stay simple offsets) and pure silence between them is dropped. Without it, the whole input
    is covered and long inputs are cut at the quietest 100 ms in the last five seconds of each window
    (the last half, for limits under ten seconds).
    """
    limit = int(max_window_s * SAMPLE_RATE)
    if vad_filter:
        regions = speech_regions(audio)
        if regions and len(audio) <= limit:
            # A short input with speech is decoded whole: trimming it to the VAD's regions clipped word
            # edges ("10 of clubs" became "10 of clothes" on cards_001) and raised WER on the test data.
            return [(0, len(audio))]
        windows: list[tuple[int, int]] = []
        for start, end in regions:
            if windows and end - windows[-1][0] <= limit:
                windows[-1] = (windows[-1][0], end)
            else:
                windows.append((start, end))
        return windows
    windows, start, n = [], 0, len(audio)
    while n - start > limit:
        search_from = start + max(limit - 5 * SAMPLE_RATE, limit // 2)
        frame = SAMPLE_RATE // 10
        tail = audio[search_from : start + limit]
        energies = [float(np.mean(tail[i : i + frame] ** 2)) for i in range(0, len(tail) - frame + 1, frame)]
        cut = search_from + int(np.argmin(energies)) * frame + frame // 2
        windows.append((start, cut))
        start = cut
    if n - start > 0:
        windows.append((start, n))
    return windows
