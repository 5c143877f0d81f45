"""The original design's file endpoints: POST /stt/upload (multipart) and POST /stt/process (a URL).

Both answer the documented shape: meeting_id, tenant_id, transcript, segments [{start, end, text,
speaker, confidence}], speakers, confidence, processing_time, language, total_segments,
total_speakers, has_diarization. With ``diarize=true`` (a form field, or JSON for /stt/process) every
segment carries its ``speaker`` and ``speakers`` is an object keyed by label with ``total_duration``,
``segments_count`` and ``text_parts``; ``num_speakers``/``min_speakers``/``max_speakers`` fix or bound the count.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from ..engine.options import TranscribeOptions
from ..engine.types import Transcript
from ..formats import speaker_summary
from .auth import TranscribeDep
from .deps import KnownFormFieldsDep, ReadyDep
from .diarize import diarize_options, transcribe_maybe_diarized
from .fetch import load_audio_url
from .inference import decode_bytes, read_upload
from .services import Services

__all__ = ["router", "SttSegment", "SttSpeaker", "SttResult", "ProcessRequest"]

router = APIRouter(prefix="/stt", tags=["stt"], dependencies=[KnownFormFieldsDep])

_ID = Field(default=None, max_length=200)


class SttSegment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    confidence: float


class SttSpeaker(BaseModel):
    total_duration: float
    """Seconds of this speaker's segments."""
    segments_count: int
    text_parts: list[str]
    """The texts of this speaker's segments, in order."""


class SttResult(BaseModel):
    meeting_id: str | None
    tenant_id: str | None
    user_id: str | None = None
    transcript: str
    segments: list[SttSegment]
    speakers: dict[str, SttSpeaker]
    """Per speaker label; empty without diarize=true."""
    confidence: float
    processing_time: float
    """Seconds from receiving the request to the result."""
    language: str
    duration: float
    total_segments: int
    total_speakers: int
    has_diarization: bool


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audio_url: str = Field(min_length=1, max_length=4096)
    """http(s) URL, or a path inside the server's media directory."""
    meeting_id: str | None = _ID
    tenant_id: str | None = _ID
    user_id: str | None = _ID
    language: str | None = Field(default=None, max_length=16)
    diarize: bool = False
    """Find the speakers: each segment carries ``speaker``."""
    num_speakers: int | None = Field(default=None, ge=1, le=20)
    min_speakers: int | None = Field(default=None, ge=1, le=20)
    max_speakers: int | None = Field(default=None, ge=1, le=20)


def _result(
    transcript: Transcript, *, meeting_id: str | None, tenant_id: str | None, user_id: str | None, started: float
) -> SttResult:
    speakers = speaker_summary(transcript)
    segments = [
        SttSegment(start=s.start, end=s.end, text=s.text.strip(), speaker=s.speaker, confidence=round(s.confidence, 4))
        for s in transcript.segments
        if s.text.strip()
    ]
    return SttResult(
        meeting_id=meeting_id,
        tenant_id=tenant_id,
        user_id=user_id,
        transcript=transcript.text,
        segments=segments,
        speakers={label: SttSpeaker(**entry) for label, entry in speakers.items()},
        confidence=round(transcript.confidence, 4),
        processing_time=round(time.perf_counter() - started, 3),
        language=transcript.language,
        duration=round(transcript.duration, 3),
        total_segments=len(segments),
        total_speakers=len(speakers),
        has_diarization=transcript.diarized,
    )


def _options(services: Services, language: str | None) -> TranscribeOptions:
    return TranscribeOptions(language=language, beam_size=services.settings.engine.beam_size)


@router.post("/upload", response_model=SttResult, summary="Transcribe an uploaded file (seed-compatible)")
async def upload(
    principal: TranscribeDep,
    services: ReadyDep,
    file: Annotated[UploadFile, File(description="The audio file")],
    meeting_id: Annotated[str | None, Form(max_length=200)] = None,
    tenant_id: Annotated[str | None, Form(max_length=200)] = None,
    user_id: Annotated[str | None, Form(max_length=200)] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    diarize: Annotated[bool, Form(description="Find the speakers: each segment carries `speaker`")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
    min_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
    max_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
) -> SttResult:
    tenant_id = principal.acting_tenant(tenant_id)
    started = time.perf_counter()
    options = _options(services, language)
    speakers = diarize_options(diarize, num_speakers, min_speakers, max_speakers)
    audio = await decode_bytes(services, await read_upload(file))
    transcript = await transcribe_maybe_diarized(services, audio, options, speakers, route="/stt/upload")
    return _result(transcript, meeting_id=meeting_id, tenant_id=tenant_id, user_id=user_id, started=started)


@router.post("/process", response_model=SttResult, summary="Transcribe audio from a URL or media path (seed-compatible)")
async def process(principal: TranscribeDep, services: ReadyDep, body: ProcessRequest) -> SttResult:
    tenant_id = principal.acting_tenant(body.tenant_id)
    started = time.perf_counter()
    options = _options(services, body.language)
    speakers = diarize_options(body.diarize, body.num_speakers, body.min_speakers, body.max_speakers)
    audio = await decode_bytes(services, await load_audio_url(body.audio_url, services.settings))
    transcript = await transcribe_maybe_diarized(services, audio, options, speakers, route="/stt/process")
    return _result(transcript, meeting_id=body.meeting_id, tenant_id=tenant_id, user_id=body.user_id, started=started)
