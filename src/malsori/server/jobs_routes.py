"""Jobs over HTTP: long files transcribed in the background (a thin layer over :class:`JobService`).

- ``POST /v1/jobs``: multipart ``file`` (or an ``audio_url`` form field, or a JSON body
  ``{"audio_url": ...}``) plus options and ids → 202 with the job.
- ``GET /v1/jobs/{id}``: state, progress, the transcript once succeeded, the error once failed.
- ``GET /v1/jobs/{id}/result?format=``: the transcript as json, text, srt, vtt, verbose_json or tsv.
- ``DELETE /v1/jobs/{id}``: cancel (200 when cancelled, 202 while a running job stops, 409 when done);
  ``?purge=true``: delete the job with its audio and transcript (204; a queued job is cancelled first,
  a running one is 409 until it stopped).
- Retention (``storage.retention_days``): finished jobs and ended meetings older than that are
  deleted, checked at start and hourly.
- ``GET /v1/jobs``: newest first, filtered by tenant, meeting and state, with limit and offset.

With API keys (docs/security.md) a job belongs to the key's tenant: another tenant's job is 404 as
if it did not exist, and listings show only the caller's tenant. Submitting and cancelling need the
``transcribe`` scope, reading ``read``.

The contract of every routes module: ``router``, ``startup(services)`` (builds the job service on
``services.jobs``, recovers what a previous process left, and starts running jobs once the model is
loaded) and ``shutdown(services)`` (stops the runner; a running job goes back to the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import ConflictError, EmptyAudioError, InvalidOptionsError, NotFoundError
from ..formats import CONTENT_TYPES, normalize_format, render
from ..jobs import JobIds, JobOptions, JobService, transcript_from_dict
from ..jobs.uploads import UploadSource
from ..storage import JobRecord, JobState
from ..tenants import Principal
from .auth import ReadDep, TranscribeDep, record_usage
from .deps import JobsDep, KnownFormFieldsDep, ServicesDep
from .fetch import load_audio_url
from .services import Services

__all__ = ["router", "startup", "shutdown", "JobOut", "JobList"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[KnownFormFieldsDep])

StateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ResultFormat = Literal["json", "text", "txt", "srt", "vtt", "verbose_json", "tsv", "diarized_json", "rttm"]
_ID_PATH = Path(min_length=1, max_length=64, description="The job id")


# -- wire shapes -----------------------------------------------------------------------------------
class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    result: str


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    state: StateName
    progress: float = Field(ge=0.0, le=1.0)
    tenant_id: str | None
    meeting_id: str | None
    user_id: str | None
    filename: str | None
    options: dict[str, Any]
    audio_seconds: float | None
    attempts: int
    worker: str | None = None
    """The scale-out worker running or that ran the job (null when the server's own runner did)."""
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    result: dict[str, Any] | None = None
    """The transcript (``text``, ``language``, ``segments``, ...) once the job has succeeded."""
    links: JobLinks


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    total: int
    limit: int
    offset: int


class JobUrlRequest(BaseModel):
    """The JSON form of POST /v1/jobs: audio from a URL or the media directory instead of an upload."""

    model_config = ConfigDict(extra="forbid")

    audio_url: str = Field(min_length=1, max_length=4096)
    language: str | None = Field(default=None, max_length=16)
    task: Literal["transcribe", "translate"] = "transcribe"
    model: str | None = Field(default=None, max_length=200)
    prompt: str | None = Field(default=None, max_length=2000)
    response_format: ResultFormat = "json"
    word_timestamps: bool = False
    diarize: bool = False
    sentiment: bool = False
    num_speakers: int | None = Field(default=None, ge=1, le=20)
    min_speakers: int | None = Field(default=None, ge=1, le=20)
    max_speakers: int | None = Field(default=None, ge=1, le=20)
    tenant_id: str | None = Field(default=None, max_length=200)
    meeting_id: str | None = Field(default=None, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)


def _job_out(job: JobRecord, *, with_result: bool) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    return JobOut(
        id=job.id,
        state=job.state.value,
        progress=round(job.progress, 4),
        tenant_id=job.tenant_id,
        meeting_id=job.meeting_id,
        user_id=job.user_id,
        filename=job.filename,
        options=job.options,
        audio_seconds=None if job.audio_seconds is None else round(job.audio_seconds, 3),
        attempts=job.attempts,
        worker=job.worker,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=JobError(code=job.error_code or "error", message=job.error_message or "") if job.state is JobState.FAILED else None,
        result=job.result if with_result and job.state is JobState.SUCCEEDED else None,
        links=JobLinks(self=base, result=f"{base}/result"),
    )


def _job_options(
    services: Services,
    *,
    language: str | None,
    task: str,
    model: str | None,
    prompt: str | None,
    response_format: str,
    word_timestamps: bool,
    speakers: tuple[bool, int | None, int | None, int | None] = (False, None, None, None),
    sentiment: bool = False,
) -> JobOptions:
    services.check_model(model)
    return JobOptions(
        sentiment=sentiment,
        diarize=speakers[0],
        num_speakers=speakers[1],
        min_speakers=speakers[2],
        max_speakers=speakers[3],
        language=language,
        task=task,
        model=model or None,
        prompt=prompt or None,
        response_format=response_format,
        word_timestamps=word_timestamps,
        beam_size=services.settings.engine.beam_size,
    )


async def _submit(
    services: Services, jobs: JobService, source: UploadSource, *, filename: str | None, options: JobOptions, ids: JobIds
) -> JSONResponse:
    job = await run_in_threadpool(lambda: jobs.submit(source, filename=filename, options=options, ids=ids))
    # Metered when accepted, at the duration its container declares (scaled out, workers finish jobs).
    record_usage(services.tenants, "/v1/jobs", float(job.audio_seconds or 0.0))
    body = _job_out(job, with_result=False)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.links.self})


# -- routes ----------------------------------------------------------------------------------------
@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a file as a background job",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": JobUrlRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
            }
        }
    },
)
async def create_job(
    principal: TranscribeDep,
    request: Request,
    services: ServicesDep,
    jobs: JobsDep,
    file: Annotated[UploadFile | None, File(description="The audio file (any format ffmpeg reads)")] = None,
    audio_url: Annotated[
        str | None, Form(max_length=4096, description="Instead of a file: an http(s) URL or a media-directory path")
    ] = None,
    language: Annotated[str | None, Form(max_length=16, description="Language code; empty to detect")] = None,
    task: Annotated[Literal["transcribe", "translate"], Form()] = "transcribe",
    model: Annotated[str | None, Form(max_length=200)] = None,
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    response_format: Annotated[ResultFormat, Form(description="Default format of the result endpoint")] = "json",
    word_timestamps: Annotated[bool, Form()] = False,
    diarize: Annotated[bool, Form(description="Find the speakers: segments and words carry `speaker`")] = False,
    sentiment: Annotated[bool, Form(description="Each segment carries `sentiment` ({label, score})")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
    min_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
    max_speakers: Annotated[int | None, Form(ge=1, le=20)] = None,
    tenant_id: Annotated[str | None, Form(max_length=200)] = None,
    meeting_id: Annotated[str | None, Form(max_length=200)] = None,
    user_id: Annotated[str | None, Form(max_length=200)] = None,
) -> JSONResponse:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        return await _create_from_json(request, services, jobs, principal)
    options = _job_options(
        services,
        language=language,
        task=task,
        model=model,
        prompt=prompt,
        response_format=response_format,
        word_timestamps=word_timestamps,
        speakers=(diarize, num_speakers, min_speakers, max_speakers),
        sentiment=sentiment,
    )
    ids = JobIds(tenant_id=principal.acting_tenant(tenant_id), meeting_id=meeting_id, user_id=user_id)
    if file is not None and audio_url:
        raise InvalidOptionsError("send either a file or an audio_url, not both")
    if audio_url:
        source = await load_audio_url(audio_url, services.settings)
        name = audio_url.rsplit("/", 1)[-1][:200] or None
        return await _submit(services, jobs, source, filename=name, options=options, ids=ids)
    if file is None:
        raise EmptyAudioError("no audio was sent: send the file as the multipart field 'file' (or give an audio_url)")
    return await _submit(services, jobs, file.file, filename=file.filename, options=options, ids=ids)


async def _create_from_json(request: Request, services: Services, jobs: JobService, principal: Principal) -> JSONResponse:
    try:
        body = JobUrlRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise InvalidOptionsError("invalid JSON body") from None
        where = ".".join(str(p) for p in errors[0]["loc"])
        raise InvalidOptionsError(f"invalid JSON body: {where + ': ' if where else ''}{errors[0]['msg']}") from None
    options = _job_options(
        services,
        language=body.language,
        task=body.task,
        model=body.model,
        prompt=body.prompt,
        response_format=body.response_format,
        word_timestamps=body.word_timestamps,
        speakers=(body.diarize, body.num_speakers, body.min_speakers, body.max_speakers),
        sentiment=body.sentiment,
    )
    source = await load_audio_url(body.audio_url, services.settings)
    ids = JobIds(tenant_id=principal.acting_tenant(body.tenant_id), meeting_id=body.meeting_id, user_id=body.user_id)
    name = body.audio_url.rsplit("/", 1)[-1][:200] or None
    return await _submit(services, jobs, source, filename=name, options=options, ids=ids)


@router.get("", response_model=JobList, summary="List jobs, newest first")
async def list_jobs(
    principal: ReadDep,
    jobs: JobsDep,
    tenant_id: Annotated[str | None, Query(max_length=200)] = None,
    meeting_id: Annotated[str | None, Query(max_length=200)] = None,
    state: Annotated[StateName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobList:
    if not principal.is_open:
        if tenant_id is not None and tenant_id != principal.tenant_id:  # never another tenant's
            return JobList(data=[], total=0, limit=limit, offset=offset)
        tenant_id = principal.tenant_id
    records, total = await run_in_threadpool(
        lambda: jobs.list(tenant_id=tenant_id, meeting_id=meeting_id, state=state, limit=limit, offset=offset)
    )
    return JobList(data=[_job_out(r, with_result=False) for r in records], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, summary="A job: state, progress, and its transcript once done")
async def get_job(principal: ReadDep, jobs: JobsDep, job_id: Annotated[str, _ID_PATH]) -> JobOut:
    return _job_out(await _own_job(jobs, job_id, principal), with_result=True)


@router.get(
    "/{job_id}/result",
    summary="A finished job's transcript in an output format",
    responses={200: {"content": {t: {} for t in sorted(set(CONTENT_TYPES.values()))}}, 409: {"description": "Not finished"}},
)
async def get_result(
    principal: ReadDep,
    jobs: JobsDep,
    job_id: Annotated[str, _ID_PATH],
    format: Annotated[ResultFormat | None, Query(description="Default: the job's response_format")] = None,
) -> Response:
    job = await _own_job(jobs, job_id, principal)
    if job.state is not JobState.SUCCEEDED or job.result is None:
        detail = f": {job.error_message}" if job.state is JobState.FAILED and job.error_message else ""
        raise ConflictError(f"job {job_id} is {job.state.value}; its result exists once it has succeeded{detail}")
    fmt = normalize_format(format or job.options.get("response_format") or "json")
    return Response(render(transcript_from_dict(job.result), fmt), media_type=CONTENT_TYPES[fmt])


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    summary="Cancel a job, or with purge=true delete it with its audio and transcript",
    responses={
        202: {"description": "Running: it stops at its next progress report"},
        204: {"description": "Deleted (purge=true)"},
        409: {"description": "Already finished (cancel), or still running (purge)"},
    },
)
async def cancel_job(
    principal: TranscribeDep,
    jobs: JobsDep,
    job_id: Annotated[str, _ID_PATH],
    purge: Annotated[bool, Query(description="Delete the job with its audio and transcript (204)")] = False,
) -> Response:
    await _own_job(jobs, job_id, principal)
    if purge:
        await run_in_threadpool(jobs.purge, job_id)
        return Response(status_code=204)
    job = await run_in_threadpool(jobs.cancel, job_id)
    status = 200 if job.state is JobState.CANCELLED else 202
    return JSONResponse(_job_out(job, with_result=False).model_dump(mode="json"), status_code=status)


async def _own_job(jobs: JobService, job_id: str, principal: Principal) -> JobRecord:
    """The job, if the caller's tenant owns it; another tenant's job is NotFoundError like a missing one."""
    job = await run_in_threadpool(jobs.get, job_id)
    if not principal.owns(job.tenant_id):
        raise NotFoundError(f"no job with id {job_id!r}")
    return job


# -- lifecycle -------------------------------------------------------------------------------------
async def startup(services: Services) -> None:
    """Open storage, settle what a previous process left, and run jobs once the model is loaded.
    Scaled out, jobs go to workers, and recovery is the gateways' sweep (one at a time), not this."""
    if services.scale is not None:
        scale = services.scale
        jobs = await run_in_threadpool(JobService.from_settings, services.settings, dispatch=scale.dispatch_job)
        services.jobs = jobs
        scale.start(jobs)
        _start_retention(services, jobs)
        return
    jobs = await run_in_threadpool(JobService.from_settings, services.settings, on_finished=_observer(services))
    await run_in_threadpool(jobs.recover)
    services.jobs = jobs

    async def start_when_ready() -> None:
        await services.wait_ready()
        _, scheduler = services.require_ready()
        jobs.start(scheduler)

    services.tasks["jobs.start"] = asyncio.create_task(start_when_ready())
    _start_retention(services, jobs)


_RETENTION_INTERVAL_S = 3600.0


def _start_retention(services: Services, jobs: JobService) -> None:
    """With ``storage.retention_days``, delete what is older at start and every hour (every gateway
    may run it: each delete is one conditional statement)."""
    days = services.settings.storage.retention_days
    if days <= 0:
        return

    def sweep() -> None:
        jobs.expire(days)
        book = services.meetings
        store = getattr(book, "store", None)
        if store is not None and hasattr(store, "delete_ended_before"):
            from datetime import timedelta

            from ..storage import utcnow

            removed = store.delete_ended_before(utcnow() - timedelta(days=days))
            if removed:
                log.info("retention: %d meetings older than %g days deleted", removed, days)

    async def loop() -> None:
        while True:
            try:
                await run_in_threadpool(sweep)
            except Exception:  # the database away for a moment: try again next time
                log.exception("retention sweep failed")
            await asyncio.sleep(_RETENTION_INTERVAL_S)

    services.tasks["jobs.retention"] = asyncio.create_task(loop(), name="malsori-retention")


async def shutdown(services: Services) -> None:
    retention = services.tasks.pop("jobs.retention", None)
    if retention is not None:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
    starter = services.tasks.pop("jobs.start", None)
    if starter is not None and not starter.done():
        starter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starter
    jobs: JobService | None = services.jobs
    if jobs is not None:
        await run_in_threadpool(jobs.stop)
        jobs.close()


def _observer(services: Services) -> Callable[[JobRecord], None]:
    """Count finished jobs' audio and processing time in /metrics, like the request routes do."""

    def on_finished(job: JobRecord) -> None:
        if job.state is JobState.SUCCEEDED and job.result:
            services.metrics.observe_inference(
                "/v1/jobs", float(job.audio_seconds or 0.0), float(job.result.get("processing_time", 0.0))
            )

    return on_finished
