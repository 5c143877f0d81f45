"""The original design's file endpoints: POST /stt/upload (multipart) and POST /stt/process (a URL).

Both answer the documented shape: meeting_id, tenant_id, transcript, segments [{start, end, text,
speaker, confidence}], speakers, confidence, processing_time, language, total_segments,
total_speakers, has_diarization. Speakers stay empty until diarization exists.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from ..engine.options import TranscribeOptions
from ..engine.types import Transcript
from .deps import ReadyDep
from .fetch import load_audio_url
from .inference import decode_bytes, read_upload, transcribe
from .services import Services

__all__ = ["router", "SttSegment", "SttResult", "ProcessRequest"]

router = APIRouter(prefix="/stt", tags=["stt"])

_ID = Field(default=None, max_length=200)


class SttSegment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    confidence: float


class SttResult(BaseModel):
    meeting_id: str | None
    tenant_id: str | None
    user_id: str | None = None
    transcript: str
    segments: list[SttSegment]
    speakers: list[str]
    confidence: float
    processing_time: float
    """Seconds from receiving the request to the result."""
    language: str
    duration: float
    total_segments: int
    total_speakers: int
    has_diarization: bool


class ProcessRequest(BaseModel):
    audio_url: str = Field(min_length=1, max_length=4096)
    """http(s) URL, or a path inside the server's media directory."""
    meeting_id: str | None = _ID
    tenant_id: str | None = _ID
    user_id: str | None = _ID
    language: str | None = Field(default=None, max_length=16)


def _result(
    transcript: Transcript, *, meeting_id: str | None, tenant_id: str | None, user_id: str | None, started: float
) -> SttResult:
    segments = [
        SttSegment(start=s.start, end=s.end, text=s.text.strip(), speaker=None, confidence=round(s.confidence, 4))
        for s in transcript.segments
        if s.text.strip()
    ]
    return SttResult(
        meeting_id=meeting_id,
        tenant_id=tenant_id,
        user_id=user_id,
        transcript=transcript.text,
        segments=segments,
        speakers=[],
        confidence=round(transcript.confidence, 4),
        processing_time=round(time.perf_counter() - started, 3),
        language=transcript.language,
        duration=round(transcript.duration, 3),
        total_segments=len(segments),
        total_speakers=0,
        has_diarization=False,
    )


def _options(services: Services, language: str | None) -> TranscribeOptions:
    return TranscribeOptions(language=language, beam_size=services.settings.engine.beam_size)


@router.post("/upload", response_model=SttResult, summary="Transcribe an uploaded file (seed-compatible)")
async def upload(
    services: ReadyDep,
    file: Annotated[UploadFile, File(description="The audio file")],
    meeting_id: Annotated[str | None, Form(max_length=200)] = None,
    tenant_id: Annotated[str | None, Form(max_length=200)] = None,
    user_id: Annotated[str | None, Form(max_length=200)] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
) -> SttResult:
    started = time.perf_counter()
    options = _options(services, language)
    audio = await decode_bytes(services, await read_upload(file))
    transcript = await transcribe(services, audio, options, route="/stt/upload")
    return _result(transcript, meeting_id=meeting_id, tenant_id=tenant_id, user_id=user_id, started=started)


@router.post("/process", response_model=SttResult, summary="Transcribe audio from a URL or media path (seed-compatible)")
async def process(services: ReadyDep, body: ProcessRequest) -> SttResult:
    started = time.perf_counter()
    options = _options(services, body.language)
    audio = await decode_bytes(services, await load_audio_url(body.audio_url, services.settings))
    transcript = await transcribe(services, audio, options, route="/stt/process")
    return _result(transcript, meeting_id=body.meeting_id, tenant_id=body.tenant_id, user_id=body.user_id, started=started)
