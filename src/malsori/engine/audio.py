"""Audio input: any container PyAV reads (WAV, MP3, M4A, FLAC, OGG, WebM, MP4) to 16 kHz mono float32.

Limits are checked as early as they can be: size before decoding, duration while decoding, so an
hour-long upload over the limit is refused after reading its first hour, not after decoding it all.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import (
    AudioTooLargeError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidOptionsError,
    UnsupportedAudioError,
)

__all__ = [
    "SAMPLE_RATE",
    "AudioLimits",
    "check_stream",
    "AudioSource",
    "decode_audio",
    "pcm_to_float32",
    "float32_to_pcm16",
    "wav_bytes",
    "PCM_ENCODINGS",
]

SAMPLE_RATE = 16_000
PCM_ENCODINGS = ("pcm_s16le", "pcm_f32le")

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class AudioLimits:
    """Upper bounds for one input. Defaults: 100 MB, one hour, 32 channels, 384 kHz.

    The duration is counted on the decoded samples, as they come: a tiny file that decodes to hours
    (a decompression bomb: minutes of FLAC silence fit in a few kB) stops at ``max_seconds``, never
    decoded whole. Channels and rate bound the work per second of audio before any is decoded."""

    max_bytes: int = 100 * 1024 * 1024
    max_seconds: float = 3600.0
    max_channels: int = 32
    max_sample_rate: int = 384_000


def check_stream(channels: int | None, rate: int | None, limits: AudioLimits) -> None:
    """UnsupportedAudioError when an audio stream has more channels or a higher rate than allowed."""
    if channels is not None and channels > limits.max_channels:
        raise UnsupportedAudioError(f"the audio has {channels} channels, over the limit of {limits.max_channels}")
    if rate is not None and rate > limits.max_sample_rate:
        raise UnsupportedAudioError(f"the audio's sample rate is {rate} Hz, over the limit of {limits.max_sample_rate} Hz")


def _size_of(source: AudioSource) -> int | None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).stat().st_size
        except FileNotFoundError:
            raise UnsupportedAudioError(f"no such audio file: {os.fspath(source)}") from None
    try:
        pos = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def decode_audio(source: AudioSource, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Decode ``source`` (path, bytes or binary file) to 16 kHz mono float32 in [-1, 1].

    Raises :class:`EmptyAudioError`, :class:`UnsupportedAudioError`, :class:`AudioTooLargeError`
    or :class:`AudioTooLongError`, each with a message a person can act on.
    """
    import av  # PyAV: imported here so light users of this module (PCM helpers) do not pay for it

    size = _size_of(source)
    if size == 0:
        raise EmptyAudioError("the audio input is empty (0 bytes)")
    if size is not None and size > limits.max_bytes:
        raise AudioTooLargeError(f"the audio input is {size / 1e6:.1f} MB, over the limit of {limits.max_bytes / 1e6:.1f} MB")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)

    max_samples = int(limits.max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UnsupportedAudioError("the input has no audio stream")
            stream = container.streams.audio[0]
            check_stream(stream.channels, stream.rate, limits)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if total > max_samples:
                    raise AudioTooLongError(f"the audio is longer than the limit of {limits.max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except (AudioTooLongError, UnsupportedAudioError):
        raise
    except av.error.FFmpegError as exc:  # corrupt data, unknown container, truncated file...
        reason = (exc.strerror or str(exc)).rstrip(".").lower()  # without FFmpeg's "[Errno N]" noise
        raise UnsupportedAudioError(f"the input could not be decoded as audio ({reason})") from None
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise UnsupportedAudioError(f"the input could not be decoded as audio: {exc}") from None

    if not chunks:
        raise EmptyAudioError("the audio input decodes to no samples")
    pcm = np.concatenate(chunks)
    if pcm.size == 0:
        raise EmptyAudioError("the audio input decodes to no samples")
    if pcm.size > max_samples:
        raise AudioTooLongError(f"the audio is longer than the limit of {limits.max_seconds:g} s")
    return pcm.astype(np.float32) / 32768.0


def pcm_to_float32(data: bytes, encoding: str = "pcm_s16le") -> np.ndarray:
    """Raw little-endian PCM bytes (``pcm_s16le`` or ``pcm_f32le``, mono) to float32 samples."""
    if encoding == "pcm_s16le":
        if len(data) % 2:
            raise UnsupportedAudioError("pcm_s16le data must have an even number of bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "pcm_f32le":
        if len(data) % 4:
            raise UnsupportedAudioError("pcm_f32le data must be a multiple of 4 bytes")
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise UnsupportedAudioError("pcm_f32le data contains NaN or infinite samples")
        return np.clip(samples, -1.0, 1.0)
    raise InvalidOptionsError(f"unknown PCM encoding {encoding!r}; use one of {', '.join(PCM_ENCODINGS)}")


def float32_to_pcm16(samples: np.ndarray) -> bytes:
    """Float32 samples in [-1, 1] to little-endian int16 bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono float32 samples in [-1, 1] as a 16-bit PCM WAV file, in memory (to upload or send)."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(float32_to_pcm16(samples))
    return buffer.getvalue()
