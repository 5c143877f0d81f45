"""Short-chunk endpoints of the original design: POST /detect, /transcribe-chunk, /transcribe.

A chunk is at most 30 s: a file in any container, or raw mono PCM when ``encoding`` (``pcm_s16le`` or
``pcm_f32le``) and ``sample_rate`` are given. Detection logic lives in :mod:`malsori.detection`.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from ..detection import Detectors, SpeechDecision
from ..engine.audio import SAMPLE_RATE
from ..engine.options import TranscribeOptions
from ..engine.windows import Window, WindowResult
from .auth import TranscribeDep, record_usage
from .deps import DetectorsDep, KnownFormFieldsDep, ReadyDep
from .inference import chunk_audio, decode_window, read_upload
from .services import Services

__all__ = ["router"]

router = APIRouter(tags=["chunks"], dependencies=[KnownFormFieldsDep])

Detector = Literal["silero", "whisper"]
Encoding = Literal["pcm_s16le", "pcm_f32le"]

_ENCODING_DOC = "Raw PCM sample format; leave out for a file in a container (WAV, FLAC, ...)"
_RATE_DOC = "Sample rate of raw PCM (default 16000)"


async def _detect(
    services: Services, detectors: Detectors, audio: np.ndarray, detector: str, threshold: float | None
) -> SpeechDecision:
    started = time.perf_counter()
    decision = await run_in_threadpool(lambda: detectors.get(detector).detect(audio, threshold))
    services.metrics.observe_inference("/detect", len(audio) / SAMPLE_RATE, time.perf_counter() - started)
    record_usage(services.tenants, "/detect", len(audio) / SAMPLE_RATE)
    return decision


def _window_json(result: WindowResult, duration: float, elapsed: float) -> dict:
    return {
        "text": result.text,
        "language": result.language,
        "duration": round(duration, 3),
        "processing_time": round(elapsed, 3),
        "no_speech_prob": round(result.no_speech_prob, 4),
        "segments": [
            {"start": s.start, "end": s.end, "text": s.text.strip(), "confidence": round(s.confidence, 4)}
            for s in result.segments
        ],
    }


@router.post("/detect", summary="Is this chunk speech? Decision, probability and speech regions")
async def detect(
    _: TranscribeDep,
    services: ReadyDep,
    detectors: DetectorsDep,
    file: Annotated[UploadFile, File(description="The chunk (file or raw PCM)")],
    detector: Annotated[
        Detector, Form(description="silero (default, cheap) or whisper (tiny.en no-speech probability)")
    ] = "silero",
    threshold: Annotated[float | None, Form(gt=0.0, lt=1.0)] = None,
    encoding: Annotated[Encoding | None, Form(description=_ENCODING_DOC)] = None,
    sample_rate: Annotated[int | None, Form(description=_RATE_DOC)] = None,
) -> dict:
    audio = await chunk_audio(services, await read_upload(file), encoding, sample_rate)
    decision = await _detect(services, detectors, audio, detector, threshold)
    return decision.to_dict()


async def _transcribe_chunk(services: Services, audio: np.ndarray, prompt: str | None, language: str | None, route: str) -> dict:
    options = TranscribeOptions(language=language, beam_size=services.settings.engine.beam_size, vad_filter=False)
    started = time.perf_counter()
    result = await decode_window(services, Window(audio, prompt=prompt or None), options, route=route)
    return _window_json(result, len(audio) / SAMPLE_RATE, time.perf_counter() - started)


@router.post("/transcribe-chunk", summary="Transcribe one short chunk, with an optional prompt")
async def transcribe_chunk(
    _: TranscribeDep,
    services: ReadyDep,
    detectors: DetectorsDep,
    file: Annotated[UploadFile, File(description="The chunk (file or raw PCM), at most 30 s")],
    prompt: Annotated[str | None, Form(max_length=2000, description="Text said before this chunk")] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    encoding: Annotated[Encoding | None, Form(description=_ENCODING_DOC)] = None,
    sample_rate: Annotated[int | None, Form(description=_RATE_DOC)] = None,
    vad: Annotated[
        bool, Form(description="Return no text for a chunk without speech (Silero VAD); false decodes whatever is sent")
    ] = True,
) -> dict:
    audio = await chunk_audio(services, await read_upload(file), encoding, sample_rate)
    if vad and not (decision := await _detect(services, detectors, audio, "silero", None)).is_speech:
        # Whisper invents text on silence and noise (measured: Welsh-looking words on 2 s of digital
        # silence, "1,5,5,5,..." on low noise), so a chunk without speech is never decoded.
        return {
            "text": "",
            "language": language,
            "duration": round(decision.duration, 3),
            "processing_time": 0.0,
            "no_speech_prob": 1.0,
            "segments": [],
        }
    return await _transcribe_chunk(services, audio, prompt, language, "/transcribe-chunk")


@router.post("/transcribe", summary="Detect speech, then transcribe the chunk only if it is speech")
async def transcribe_detected(
    _: TranscribeDep,
    services: ReadyDep,
    detectors: DetectorsDep,
    file: Annotated[UploadFile, File(description="The chunk (file or raw PCM), at most 30 s")],
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    detector: Annotated[Detector, Form()] = "silero",
    threshold: Annotated[float | None, Form(gt=0.0, lt=1.0)] = None,
    encoding: Annotated[Encoding | None, Form(description=_ENCODING_DOC)] = None,
    sample_rate: Annotated[int | None, Form(description=_RATE_DOC)] = None,
) -> dict:
    audio = await chunk_audio(services, await read_upload(file), encoding, sample_rate)
    decision = await _detect(services, detectors, audio, detector, threshold)
    body: dict = {"is_speech": decision.is_speech, "detection": decision.to_dict()}
    if not decision.is_speech:
        # Never hand non-speech to Whisper as if it were speech: it invents text on silence.
        return {**body, "text": "", "segments": [], "duration": round(decision.duration, 3)}
    return {**body, **await _transcribe_chunk(services, audio, prompt, language, "/transcribe")}
