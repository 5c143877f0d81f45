"""Incremental voice activity detection with the Silero ONNX model that faster-whisper ships.

faster-whisper's ``SileroVADModel`` scores a whole array at once: 512-sample chunks, each preceded by
the last 64 samples of the chunk before, with the LSTM state ``h``/``c`` carried through the batch.
:class:`StreamingVad` keeps that context and state between calls, so feeding audio piece by piece
gives exactly the probabilities of the one-shot call (tests/test_streaming_session.py checks it)
while each new sample is scored once: about 1% of one core for a live stream.
"""

from __future__ import annotations

import numpy as np

__all__ = ["StreamingVad", "EnergyVad", "VAD_CHUNK"]

VAD_CHUNK = 512  # samples per speech probability (32 ms at 16 kHz)
_CONTEXT = 64


def _silero_session():
    from faster_whisper.vad import get_vad_model  # cached: one ONNX session per process

    return get_vad_model().session


class StreamingVad:
    """Speech probability per 32 ms chunk of 16 kHz audio, fed incrementally."""

    def __init__(self, session=None) -> None:
        self._session = session if session is not None else _silero_session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities for every chunk completed by ``audio`` (leftover samples wait for the next call)."""
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        n = len(samples) // VAD_CHUNK
        self._pending = samples[n * VAD_CHUNK :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        chunks = samples[: n * VAD_CHUNK].reshape(n, VAD_CHUNK)
        previous = np.concatenate([self._context[None, :], chunks[:-1, -_CONTEXT:]], axis=0)
        batch = np.ascontiguousarray(np.concatenate([previous, chunks], axis=1))
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = chunks[-1, -_CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


class EnergyVad:
    """A stand-in for :class:`StreamingVad` in logic tests: probability 1 for chunks louder than
    ``rms`` (tone bursts), else 0. Not for real audio: breath and noise are loud too."""

    def __init__(self, rms: float = 0.02) -> None:
        self.rms = rms
        self._pending = np.zeros(0, dtype=np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        n = len(samples) // VAD_CHUNK
        self._pending = samples[n * VAD_CHUNK :]
        chunks = samples[: n * VAD_CHUNK].reshape(n, VAD_CHUNK)
        return (np.sqrt(np.mean(chunks**2, axis=1)) > self.rms).astype(np.float32)
