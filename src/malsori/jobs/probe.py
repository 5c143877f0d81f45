"""A quick look at an upload before a job is accepted: is it audio at all, and not over the limit?

Decoding a whole hour takes long, so a job decodes its audio when it runs; but a client that sends a
text file or a broken container should hear so at once (415), not find a failed job later. Opening
the container and decoding its first frames costs milliseconds whatever the length.
"""

from __future__ import annotations

import os

from ..engine.audio import AudioLimits, check_stream
from ..errors import AudioTooLongError, EmptyAudioError, UnsupportedAudioError

__all__ = ["probe_audio"]

_FRAMES_TO_TRY = 16


def probe_audio(path: str | os.PathLike, max_seconds: float, limits: AudioLimits | None = None) -> float | None:
    """The duration the container declares (seconds; None when it declares none).

    Raises UnsupportedAudioError (not audio, or undecodable), EmptyAudioError (no samples in the
    first frames), AudioTooLongError (declared duration over ``max_seconds``).
    """
    import av

    try:
        with av.open(os.fspath(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UnsupportedAudioError("the input has no audio stream")
            stream = container.streams.audio[0]
            if limits is not None:
                check_stream(stream.channels, stream.rate, limits)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            if duration is not None and duration > max_seconds:
                raise AudioTooLongError(f"the audio is {duration:.0f} s long, over the limit of {max_seconds:g} s")
            samples = 0
            for n, frame in enumerate(container.decode(stream)):
                samples += frame.samples
                if samples or n >= _FRAMES_TO_TRY:
                    break
    except (AudioTooLongError, UnsupportedAudioError):
        raise
    except av.error.FFmpegError as exc:
        raise UnsupportedAudioError(f"the input could not be decoded as audio: {exc}") from None
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise UnsupportedAudioError(f"the input could not be decoded as audio: {exc}") from None
    if not samples:
        raise EmptyAudioError("the audio input decodes to no samples")
    return duration
