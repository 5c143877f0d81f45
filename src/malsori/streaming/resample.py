"""Stream resampling to Whisper's 16 kHz with PyAV's (libswresample) stateful resampler, so frame
boundaries leave no clicks and no samples are lost between calls."""

from __future__ import annotations

import numpy as np

from ..audio_limits import check_sample_rate
from ..engine.audio import SAMPLE_RATE

__all__ = ["StreamResampler"]


class StreamResampler:
    """float32 mono at ``rate`` in, float32 mono at 16 kHz out; a pass-through at 16 kHz."""

    def __init__(self, rate: int) -> None:
        self.rate = check_sample_rate(rate)
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
