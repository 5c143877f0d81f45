"""The sample rates malsori accepts for raw PCM, in one place for the server and the client.

Every input that carries raw PCM at a stated rate (the live WebSocket protocols, ``/transcribe-chunk``
and friends with ``encoding``, the client's :class:`~malsori.client.StreamOptions`, ``malsori stream
--sample-rate``) checks it with :func:`check_sample_rate`, so a rate one side takes is never refused
by the other. 8-48 kHz is the range docs/protocol.md documents: it covers telephone audio and every
rate a microphone or browser AudioContext uses, and everything is resampled to 16 kHz anyway. This
module imports only :mod:`malsori.errors`, so the client uses it without the engine extras.
"""

from __future__ import annotations

from .errors import InvalidOptionsError

__all__ = ["MIN_SAMPLE_RATE", "MAX_SAMPLE_RATE", "check_sample_rate"]

MIN_SAMPLE_RATE = 8_000
"""Lowest accepted PCM sample rate, in Hz (telephone audio)."""
MAX_SAMPLE_RATE = 48_000
"""Highest accepted PCM sample rate, in Hz (what browsers and most sound cards capture at)."""


def check_sample_rate(rate: object) -> int:
    """``rate`` as an int if it is a whole number of Hz from 8000 to 48000, else InvalidOptionsError."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidOptionsError(f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, not {rate!r}")
    return rate
