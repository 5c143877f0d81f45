"""What HTTP routes share between parsing and serializing: audio in, model work through the scheduler.

Container decoding and planning (the VAD) run in worker threads; decodes are awaited on the event
loop, so a request holds no thread while its windows wait. Data flows one way: route → pipeline →
a REQUEST lane of the app's one :class:`~malsori.engine.scheduler.DecodeScheduler` → model, so
concurrent small requests are decoded together in one batch and a full queue turns into 429 with
Retry-After before any work is queued.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from ..audio_limits import check_sample_rate
from ..engine.audio import PCM_ENCODINGS, SAMPLE_RATE, AudioLimits, AudioSource, decode_audio, pcm_to_float32
from ..engine.decoder import WindowDecoder, decode_async
from ..engine.options import TranscribeOptions
from ..engine.pipeline import Pipeline
from ..engine.scheduler import Priority
from ..engine.types import Transcript
from ..engine.windows import Window, WindowResult
from ..errors import AudioTooLongError, EmptyAudioError, InvalidOptionsError, OverloadedError
from .auth import record_usage
from .services import Services

__all__ = [
    "read_upload",
    "decode_bytes",
    "chunk_audio",
    "transcribe",
    "transcribe_stream",
    "decode_window",
    "CHUNK_MAX_SECONDS",
]

CHUNK_MAX_SECONDS = 30.0
"""Longest audio /detect, /transcribe-chunk and /transcribe take (one Whisper window)."""


async def read_upload(upload: UploadFile | None) -> bytes:
    if upload is None:
        raise EmptyAudioError("no file was sent: send the audio as the multipart field 'file'")
    data = await upload.read()
    if not data:
        raise EmptyAudioError("the uploaded file is empty (0 bytes)")
    return data


def _limits(services: Services, max_seconds: float) -> AudioLimits:
    limits = services.settings.limits
    return AudioLimits(
        max_bytes=limits.max_upload_bytes,
        max_seconds=max_seconds,
        max_channels=limits.max_channels,
        max_sample_rate=limits.max_input_sample_rate,
    )


async def decode_bytes(services: Services, data: AudioSource, *, max_seconds: float | None = None) -> np.ndarray:
    """Any container (bytes, or a path) to 16 kHz mono float32, in a worker thread, within the size and sync limits."""
    limits = services.settings.limits
    sync_limit = min(limits.max_audio_seconds, limits.sync_max_seconds)
    limit = sync_limit if max_seconds is None else min(max_seconds, limits.max_audio_seconds)
    try:
        return await run_in_threadpool(decode_audio, data, _limits(services, limit))
    except AudioTooLongError:
        hint = (
            " (submit longer files as a job: POST /v1/jobs)" if max_seconds is None and limit < limits.max_audio_seconds else ""
        )
        raise AudioTooLongError(f"the audio is longer than the limit of {limit:g} s for this endpoint{hint}") from None


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    import av

    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


async def chunk_audio(
    services: Services, data: bytes, encoding: str | None, sample_rate: int | None, *, max_seconds: float = CHUNK_MAX_SECONDS
) -> np.ndarray:
    """A short chunk: raw mono PCM when ``encoding`` is given (``pcm_s16le``/``pcm_f32le`` at
    ``sample_rate``, default 16000), else any container."""
    if not encoding:
        return await decode_bytes(services, data, max_seconds=max_seconds)
    if encoding not in PCM_ENCODINGS:
        raise InvalidOptionsError(f"encoding must be one of {', '.join(PCM_ENCODINGS)}, not {encoding!r}")
    rate = check_sample_rate(sample_rate or SAMPLE_RATE)
    samples = pcm_to_float32(data, encoding)
    if samples.size == 0:
        raise EmptyAudioError("the PCM chunk holds no samples")
    if samples.size / rate > max_seconds:
        raise AudioTooLongError(f"the chunk is {samples.size / rate:.1f} s long, over the limit of {max_seconds:g} s")
    if rate != SAMPLE_RATE:
        samples = await run_in_threadpool(_resample, samples, rate)
    return samples


async def transcribe(services: Services, audio: np.ndarray, options: TranscribeOptions, *, route: str) -> Transcript:
    """A whole input through the pipeline over a lane of the shared scheduler: awaited, not blocking a
    thread; the request's windows are queued all or none (429 before any work when they do not fit)."""
    transcriber, _ = services.require_ready()
    transcriber.check_options(options)
    lane = await _decoder(services)
    started = time.perf_counter()
    try:
        # The first window alone, as with stream=true (transcribe_stream): a window's text depends on
        # its batch, and so streamed and plain requests give the same text. Cost within noise on a
        # 2-core CPU (62 s: 2.95-3.07 s all at once, 2.99-3.68 s first alone; 240 s: 11.6-13.5 s, 11.8-13.5 s).
        transcript = await Pipeline(lane).atranscribe(audio, options, first_alone=True)
    except OverloadedError:
        services.metrics.rejected.labels("queue_full").inc()
        raise
    _observe(services, route, len(audio) / SAMPLE_RATE, time.perf_counter() - started)
    return transcript


async def transcribe_stream(
    services: Services, audio: np.ndarray, options: TranscribeOptions, *, route: str
) -> AsyncGenerator[WindowResult, None]:
    """As :func:`transcribe`, yielding the windows' results in order as they complete
    (:meth:`Pipeline.astream`: the first window is decoded alone, then the rest as one submission).
    Nothing runs before the first ``anext``, and the first window's errors (not ready, a full queue)
    raise there, so a caller that awaits the first result before answering keeps their status codes."""
    transcriber, _ = services.require_ready()
    transcriber.check_options(options)
    lane = await _decoder(services)
    started = time.perf_counter()
    try:
        async with aclosing(Pipeline(lane).astream(audio, options)) as results:
            async for result in results:
                yield result
    except OverloadedError:
        services.metrics.rejected.labels("queue_full").inc()
        raise
    _observe(services, route, len(audio) / SAMPLE_RATE, time.perf_counter() - started)


async def decode_window(services: Services, window: Window, options: TranscribeOptions, *, route: str) -> WindowResult:
    """One short window through the scheduler (batched with whatever else is queued)."""
    services.require_ready()
    started = time.perf_counter()
    try:
        (result,) = await decode_async(await _decoder(services), [window], options)
    except OverloadedError:
        services.metrics.rejected.labels("queue_full").inc()
        raise
    _observe(services, route, len(window.audio) / SAMPLE_RATE, time.perf_counter() - started)
    return result


async def _decoder(services: Services) -> WindowDecoder:
    """A REQUEST lane of this process's scheduler, or scaled out, the workers of the queue the routing
    mode picks now (``services.scale``; reading the registry is a Redis round trip: in a thread)."""
    if services.scale is not None:
        return services.scale.decoder(await run_in_threadpool(services.scale.route))
    _, scheduler = services.require_ready()
    return scheduler.lane(_owner(), Priority.REQUEST)


def _observe(services: Services, route: str, audio_s: float, processing_s: float) -> None:
    """Count a finished request in /metrics and in its tenant's usage (GET /v1/usage)."""
    services.metrics.observe_inference(route, audio_s, processing_s)
    record_usage(services.tenants, route, audio_s)


def _owner() -> str:
    return f"request-{uuid.uuid4().hex[:12]}"
