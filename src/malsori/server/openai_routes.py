"""OpenAI-compatible endpoints: POST /v1/audio/transcriptions, /v1/audio/translations, GET /v1/models.

Same fields and response shapes as OpenAI's API, so the official ``openai`` package works unchanged
(``OpenAI(base_url=".../v1")``). ``model`` may be ``whisper-1`` or the served model's name: the
service has one shared model, and that is what answers.

``stream=true`` on transcriptions answers server-sent events as OpenAI does for its streaming
transcription models (``data: {"type": "transcript.text.delta", "delta": ...}`` per decoded window,
in text order, then ``transcript.text.done`` with the whole text), for every model name here (OpenAI
ignores ``stream`` for ``whisper-1``; the text is the one a plain request gets). Errors before the
first event keep their status codes; an error after it is one last event,
``{"type": "error", "error": {"code", "message"}}``, which the ``openai`` package raises as ``APIError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response, StreamingResponse

from ..engine.options import TranscribeOptions
from ..engine.windows import WindowResult
from ..errors import InvalidOptionsError, MalsoriError, NotFoundError
from ..formats import render
from ..speakers import DiarizeOptions
from .auth import ReadDep, TranscribeDep
from .deps import KnownFormFieldsDep, ReadyDep, ServicesDep
from .diarize import diarize_options, transcribe_maybe_diarized
from .errors import error_body
from .inference import decode_bytes, read_upload, transcribe_stream
from .services import NotReadyError, Services

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[KnownFormFieldsDep])

_MAX_KEYWORDS_CHARS = 500
"""OpenAI's ``keywords[]`` become Whisper's hotwords, which share the prompt's 223 tokens with ``prompt``."""
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
Granularity = Literal["word", "segment"]

# OpenAI answers text, srt and vtt as text/plain; the openai package reads them as a string.
_MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "diarized_json": "application/json",
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
    stream: bool = False,
    speakers: DiarizeOptions | None = None,
    sentiment: bool = False,
    keywords: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
) -> Response:
    services.check_model(model)
    hotwords = ", ".join(k.strip() for k in keywords or () if k.strip()) or None
    if hotwords is not None and len(hotwords) > _MAX_KEYWORDS_CHARS:
        raise InvalidOptionsError(f"keywords: at most {_MAX_KEYWORDS_CHARS} characters in all (Whisper reads them in its prompt)")
    if sentiment and response_format != "verbose_json":
        raise InvalidOptionsError("sentiment=true labels the segments: it needs response_format=verbose_json")
    if stream and response_format not in ("json", "text"):
        raise InvalidOptionsError("stream=true sends text events: response_format must be json or text")
    if response_format == "diarized_json" and speakers is None:
        speakers = DiarizeOptions()  # the format is the speakers
    if stream and speakers is not None:
        raise InvalidOptionsError("diarize=true needs the whole file: it cannot be combined with stream=true")
    engine = services.settings.engine
    # temperature 0 means OpenAI's default: start greedy and raise the temperature when a decode
    # looks wrong; a positive value is used as it is.
    temperatures = TranscribeOptions().temperatures if temperature == 0 else (temperature,)
    options = TranscribeOptions(
        language=language,
        languages=tuple(languages) if languages else None,
        task=task,
        initial_prompt=prompt or None,
        hotwords=hotwords,
        beam_size=engine.beam_size,
        temperatures=temperatures,
        word_timestamps="word" in (granularities or ()) and not stream,  # events carry no word times
    )
    audio = await decode_bytes(services, await read_upload(file))
    if stream:
        results = transcribe_stream(services, audio, options, route=route)
        first = await anext(results, None)  # errors up to the first window's text keep their status codes
        return StreamingResponse(
            _events(first, results),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering
        )
    transcript = await transcribe_maybe_diarized(services, audio, options, speakers, route=route)
    if sentiment:
        if services.sentiment is None:  # only between app construction and startup
            raise NotReadyError("the sentiment service is starting; try again shortly", retry_after=1.0)
        transcript = await services.sentiment.label_transcript(transcript)
    return Response(render(transcript, response_format), media_type=_MEDIA_TYPES[response_format])


def _sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(first: WindowResult | None, rest: AsyncGenerator[WindowResult, None]) -> AsyncIterator[bytes]:
    """One delta per window with text, in order; then the whole text, or an error event."""
    text = ""
    result = first
    try:
        while result is not None:
            if result.text:
                delta = f" {result.text}" if text else result.text  # the deltas join to the done text
                text += delta
                yield _sse({"type": "transcript.text.delta", "delta": delta})
            result = await anext(rest, None)
    except MalsoriError as exc:
        yield _sse({"type": "error", **error_body(exc.code, exc.message)})
        return
    except Exception:
        log.exception("streamed transcription failed after its first event")
        yield _sse({"type": "error", **error_body("internal_error", "the server failed to finish this transcription")})
        return
    finally:
        await rest.aclose()  # a client that went away cancels the windows still queued
    yield _sse({"type": "transcript.text.done", "text": text})


@router.post("/audio/transcriptions", summary="Transcribe audio (OpenAI-compatible)")
async def transcriptions(
    _: TranscribeDep,
    services: ReadyDep,
    file: Annotated[UploadFile, File(description="The audio file (any format ffmpeg reads)")],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(description="ISO-639-1 code (ko-KR is taken as ko); empty to detect")] = None,
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[list[Granularity] | None, Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[
        bool, Form(description="Answer server-sent events: transcript.text.delta per decoded window, then transcript.text.done")
    ] = False,
    diarize: Annotated[bool, Form(description="Find the speakers: segments and words carry `speaker`")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=20, description="With diarize: exactly this many speakers")] = None,
    min_speakers: Annotated[int | None, Form(ge=1, le=20, description="With diarize: at least this many")] = None,
    max_speakers: Annotated[int | None, Form(ge=1, le=20, description="With diarize: at most this many")] = None,
    sentiment: Annotated[
        bool, Form(description="Each segment carries `sentiment` ({label, score}); needs response_format=verbose_json")
    ] = False,
    languages: Annotated[
        list[str] | None,
        Form(alias="languages[]", description="Without language: the languages the audio may be in; detection picks among them"),
    ] = None,
    keywords: Annotated[
        list[str] | None,
        Form(
            alias="keywords[]",
            description="Words or phrases to guide the transcription (names, terms): Whisper's hotwords, read before the audio",
        ),
    ] = None,
    chunking_strategy: Annotated[
        Literal["auto"] | None,
        Form(description="`auto` only, which is what malsori does anyway: long audio is cut at the pauses its VAD finds"),
    ] = None,
) -> Response:
    del chunking_strategy  # accepted for OpenAI clients that send it; there is nothing to choose
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
        stream=stream,
        speakers=diarize_options(diarize, num_speakers, min_speakers, max_speakers),
        sentiment=sentiment,
        keywords=keywords,
        languages=languages,
    )


@router.post("/audio/translations", summary="Translate audio to English text (OpenAI-compatible)")
async def translations(
    _: TranscribeDep,
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
async def models(_: ReadDep, services: ServicesDep) -> dict:
    return {"object": "list", "data": [_model_card(n, services.started_at) for n in services.served_model_names()]}


@router.get("/models/{model_id}", summary="One model (OpenAI-compatible)")
async def model(_: ReadDep, services: ServicesDep, model_id: str) -> dict:
    if model_id not in services.served_model_names():
        raise NotFoundError(f"model {model_id!r} is not served here")
    return _model_card(model_id, services.started_at)
