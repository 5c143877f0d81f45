"""The browser page, the control panel and the panel's small admin API.

- ``GET /`` is the live page (microphone captions and file uploads), ``GET /panel`` the control panel;
  both are plain HTML/CSS/JS modules under ``malsori/web/static`` (no build step), served from
  ``/static``.
- ``GET /v1/admin/status``: model, device, compute type, the engines and what routing does with them,
  GPU presence, live sessions, queue depth and recent latency, polled by the panel every ~2 s.
- ``PUT /v1/admin/routing`` ``{"mode": "auto" | "cpu" | "gpu"}``: records where new work should go.
  Needs the ``X-Admin-Key`` header when ``auth.admin_key`` is configured; ``gpu`` is refused when this
  machine has no CUDA device, with the reason. With one engine (this process's model, until scale-out
  workers exist) nothing routes by the mode: both endpoints say so in ``routing``, and the panel
  hides the toggle rather than show a control that moves no work.

Errors are raised as :mod:`malsori.errors` classes; the server maps them to statuses in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..errors import ConflictError
from ..tenants import Principal, Scope
from .auth import ReadDep
from .deps import AdminDep, ServicesDep
from .services import Services

__all__ = ["router", "startup", "shutdown", "STATIC_DIR", "RoutingChange", "cuda_device_count"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"

RoutingMode = Literal["auto", "cpu", "gpu"]

router = APIRouter()
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class RoutingChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: RoutingMode
    """auto: GPU when present, else CPU; cpu or gpu: always there (once there is more than one engine)."""


def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can use (0 without a GPU or a CUDA build)."""
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:  # a CUDA build on a machine without the driver
        return 0


# -- pages ----------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def live_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/panel", include_in_schema=False)
async def panel_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "panel.html", media_type="text/html")


# -- the panel API --------------------------------------------------------------------------------
def _queue_facts(services: Services) -> tuple[dict[str, Any], dict[str, Any]]:
    if services.scheduler is None:
        return {"depth": 0, "pending": {}}, {}
    stats = services.scheduler.stats()
    queue = {"depth": sum(stats.pending.values()), "pending": stats.pending}
    latency = {
        "wait_ms_p50": stats.recent_wait_ms_p50,
        "decode_ms_p50": stats.recent_decode_ms_p50,
        "busy_fraction": stats.busy_fraction,
        "mean_batch_size": stats.mean_batch_size,
        "batches": stats.batches,
        "windows": stats.windows,
    }
    return queue, latency


def _session_rows(services: Services, principal: Principal) -> list[dict[str, Any]]:
    """One dict per live session (SessionManager.list(): id, state, language, audio seconds, ...):
    every session for the open service or an admin key, the key's tenant's only for any other."""
    if services.sessions is None:
        return []
    everyone = principal.is_open or Scope.ADMIN in principal.scopes
    return list(services.sessions.list(None if everyone else principal.tenant_id))


@router.get("/v1/admin/status", tags=["admin"])
async def admin_status(principal: ReadDep, services: ServicesDep) -> dict[str, Any]:
    """What the control panel shows; cheap enough to poll every couple of seconds."""
    gpus = cuda_device_count()
    queue, latency = _queue_facts(services)
    engines = services.engines()
    return {
        **engines[0],  # this process's model: model, device, compute_type, ready
        "load_error": services.load_error,
        "engines": engines,
        "routing": services.routing(),
        "routing_mode": services.current_routing_mode(),
        "gpu_available": gpus > 0 if services.scale is None else services.scale.gpu_available(),
        "gpu_count": gpus,
        "admin_key_required": bool(services.settings.auth.admin_key),
        "api_keys_required": not principal.is_open,
        "sessions": _session_rows(services, principal),
        "active_sessions": services.active_sessions(),
        "active_jobs": services.active_jobs(),
        "queue": queue,
        "latency": latency,
        "uptime_s": round(services.uptime_s, 1),
    }


@router.put("/v1/admin/routing", tags=["admin"], dependencies=[AdminDep])
async def set_routing(change: RoutingChange, services: ServicesDep) -> dict[str, Any]:
    """Record where new work should go (work already running stays where it is). The answer's
    ``routing`` says what that changes now: nothing while this process's model is the one engine."""
    if services.scale is not None:  # scaled out: a live worker that announces a GPU is what counts
        refusal = await run_in_threadpool(services.scale.gpu_refusal)
    else:
        refusal = (
            None
            if cuda_device_count() > 0
            else "no CUDA device is present on this machine (CTranslate2 sees 0 GPUs), so work cannot be routed to a GPU"
        )
    # 409 with the reason (the panel shows it); Services.set_routing_mode keeps the same rule.
    if change.mode == "gpu" and refusal is not None:
        raise ConflictError(refusal, code="gpu_unavailable")
    await run_in_threadpool(services.set_routing_mode, change.mode, gpu_available=refusal is None)
    return {"routing_mode": services.current_routing_mode(), "engines": services.engines(), "routing": services.routing()}


# -- lifecycle ------------------------------------------------------------------------------------
async def startup(services: Services) -> None:
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(f"the web page files are missing from {STATIC_DIR} (broken install?)")


async def shutdown(services: Services) -> None:
    return None
