"""Stream resampling to Whisper's 16 kHz with PyAV's (libswresample) stateful resampler, so frame
boundaries leave no clicks and no samples are lost between calls."""

from __future__ import annotations

import numpy as np

from ..engine.audio import SAMPLE_RATE
from ..errors import InvalidOptionsError

__all__ = ["StreamResampler", "MIN_RATE", "MAX_RATE"]

MIN_RATE, MAX_RATE = 8_000, 48_000


class StreamResampler:
    """float32 mono at ``rate`` in, float32 mono at 16 kHz out; a pass-through at 16 kHz."""

    def __init__(self, rate: int) -> None:
        if not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise InvalidOptionsError(f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, not {rate!r}")
        self.rate = rate
        self._resampler = None
        if rate != SAMPLE_RATE:
            import av

            self._av = av
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._resampler is None or len(samples) == 0:
            return np.asarray(samples, dtype=np.float32)
        frame = self._av.AudioFrame.from_ndarray(np.asarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)
