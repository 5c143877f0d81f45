"""Liveness, readiness and status: GET /health, /is_ready, /stt/status."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .auth import ReadDep
from .deps import ServicesDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is alive (answers while the model loads)")
async def health(services: ServicesDep) -> dict:
    return {"status": "ok", "version": __version__, "uptime_s": round(services.uptime_s, 1)}


@router.get(
    "/is_ready",
    summary="The model is loaded and can take work (503 until then; scaled out, also until a worker is alive)",
    responses={503: {"description": "Not ready yet (model loading) or the model failed to load"}},
)
async def is_ready(services: ServicesDep) -> JSONResponse:
    if services.ready and services.scale is not None:
        # Scaled out: ready when some worker can take work (its heartbeat in Redis is fresh).
        why_not = await run_in_threadpool(services.scale.not_ready_reason)
        if why_not is not None:
            return JSONResponse({"ready": False, "reason": why_not}, status_code=503, headers={"Retry-After": "2"})
    if services.ready:
        return JSONResponse({"ready": True, "model": services.model_name})
    reason = f"model failed to load: {services.load_error}" if services.load_error else "model loading"
    return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "2"})


@router.get("/stt/status", summary="Model, device, queue depth, active jobs and sessions, uptime")
async def stt_status(_: ReadDep, services: ServicesDep) -> dict:
    settings = services.settings
    transcriber = services.transcriber
    engine = services.engines()[0]  # this process's own model comes first
    status: dict = {
        "ready": services.ready,
        "version": __version__,
        "model": engine["model"],
        "device": engine["device"],
        "compute_type": engine["compute_type"],
        "multilingual": transcriber.multilingual if transcriber else None,
        "model_load_seconds": round(getattr(transcriber, "load_seconds", 0.0), 3) if transcriber else None,
        "load_error": services.load_error,
        "routing_mode": services.current_routing_mode(),
        "routing": services.routing(),
        "active_jobs": services.active_jobs(),
        "active_sessions": services.active_sessions(),
        "uptime_s": round(services.uptime_s, 1),
        # Asyncio tasks alive in the server's loop: bench/soak.py checks they return to baseline.
        "tasks": len(asyncio.all_tasks()),
        "queue_depth": {"live": 0, "request": 0, "job": 0},
        "queue_limits": {
            "request": settings.limits.max_pending_requests,
            "job": settings.limits.max_pending_jobs,
        },
        "scheduler": None,
    }
    if services.scale is not None:
        status["scale"] = await run_in_threadpool(services.scale.status)
    if services.scheduler is not None:
        stats = services.scheduler.stats()
        status["queue_depth"] = stats.pending
        status["scheduler"] = {
            "batches": stats.batches,
            "windows": stats.windows,
            "mean_batch_size": stats.mean_batch_size,
            "busy_fraction": stats.busy_fraction,
            "recent_wait_ms_p50": stats.recent_wait_ms_p50,
            "recent_decode_ms_p50": stats.recent_decode_ms_p50,
        }
    return status
