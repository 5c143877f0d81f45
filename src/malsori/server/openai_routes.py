"""OpenAI-compatible endpoints: POST /v1/audio/transcriptions, /v1/audio/translations, GET /v1/models.

Same fields and response shapes as OpenAI's API, so the official ``openai`` package works unchanged
(``OpenAI(base_url=".../v1")``). ``model`` may be ``whisper-1`` or the served model's name: the
service has one shared model, and that is what answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ..engine.options import TranscribeOptions
from ..errors import NotFoundError
from ..formats import render
from .deps import ReadyDep, ServicesDep
from .inference import decode_bytes, read_upload, transcribe
from .services import Services

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"])

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["word", "segment"]

# OpenAI answers text, srt and vtt as text/plain; the openai package reads them as a string.
_MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/plain; charset=utf-8",
}


async def _run(
    services: Services,
    *,
    file: UploadFile,
    model: str | None,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float,
    granularities: Sequence[str] | None,
    task: str,
    route: str,
) -> Response:
    services.check_model(model)
    engine = services.settings.engine
    # temperature 0 means OpenAI's default: start greedy and raise the temperature when a decode
    # looks wrong; a positive value is used as it is.
    temperatures = TranscribeOptions().temperatures if temperature == 0 else (temperature,)
    options = TranscribeOptions(
        language=language,
        task=task,
        initial_prompt=prompt or None,
        beam_size=engine.beam_size,
        temperatures=temperatures,
        word_timestamps="word" in (granularities or ()),
    )
    audio = await decode_bytes(services, await read_upload(file))
    transcript = await transcribe(services, audio, options, route=route)
    return Response(render(transcript, response_format), media_type=_MEDIA_TYPES[response_format])


@router.post("/audio/transcriptions", summary="Transcribe audio (OpenAI-compatible)")
async def transcriptions(
    services: ReadyDep,
    file: Annotated[UploadFile, File(description="The audio file (any format ffmpeg reads)")],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code; empty to detect")] = None,
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[list[Granularity] | None, Form(alias="timestamp_granularities[]")] = None,
) -> Response:
    return await _run(
        services,
        file=file,
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=timestamp_granularities,
        task="transcribe",
        route="/v1/audio/transcriptions",
    )


@router.post("/audio/translations", summary="Translate audio to English text (OpenAI-compatible)")
async def translations(
    services: ReadyDep,
    file: Annotated[UploadFile, File(description="The audio file (any format ffmpeg reads)")],
    model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Response:
    return await _run(
        services,
        file=file,
        model=model,
        language=None,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=None,
        task="translate",
        route="/v1/audio/translations",
    )


def _model_card(name: str, started_at: float) -> dict:
    return {"id": name, "object": "model", "created": int(started_at), "owned_by": "malsori"}


@router.get("/models", summary="Models this server answers to (OpenAI-compatible)")
async def models(services: ServicesDep) -> dict:
    return {"object": "list", "data": [_model_card(n, services.started_at) for n in services.served_model_names()]}


@router.get("/models/{model_id}", summary="One model (OpenAI-compatible)")
async def model(services: ServicesDep, model_id: str) -> dict:
    if model_id not in services.served_model_names():
        raise NotFoundError(f"model {model_id!r} is not served here")
    return _model_card(model_id, services.started_at)
