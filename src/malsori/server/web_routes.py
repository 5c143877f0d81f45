"""The browser page, the control panel and the panel's small admin API.

- ``GET /`` is the live page (microphone captions and file uploads), ``GET /panel`` the control panel;
  both are plain HTML/CSS/JS modules under ``malsori/web/static`` (no build step), served from
  ``/static``.
- ``GET /v1/admin/status``: model, device, compute type, routing mode, GPU presence, live sessions,
  queue depth and recent latency, polled by the panel every ~2 s.
- ``PUT /v1/admin/routing`` ``{"mode": "auto" | "cpu" | "gpu"}``: where new work goes. Needs the
  ``X-Admin-Key`` header when ``auth.admin_key`` is configured; ``gpu`` is refused when this machine has
  no CUDA device, with the reason, rather than silently running on the CPU.

Errors are raised as :mod:`malsori.errors` classes; the server maps them to statuses in one place.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..errors import AuthError, ConflictError

__all__ = ["router", "startup", "shutdown", "STATIC_DIR", "RoutingChange", "cuda_device_count"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"

RoutingMode = Literal["auto", "cpu", "gpu"]

router = APIRouter()
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class RoutingChange(BaseModel):
    mode: RoutingMode
    """auto: GPU when present, else CPU; cpu or gpu: always there."""


def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can use (0 without a GPU or a CUDA build)."""
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count()
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
def _check_admin(services: Any, key: str | None) -> None:
    expected = services.settings.auth.admin_key
    if not expected:
        return
    if key is None:
        raise AuthError("changing settings needs the admin key (X-Admin-Key header)")
    if not secrets.compare_digest(key.encode(), expected.encode()):
        raise AuthError("the admin key is wrong")


def _engine_facts(services: Any) -> dict[str, Any]:
    """The loaded model's facts; while it loads, what the settings ask for."""
    engine = services.settings.engine
    transcriber = services.transcriber
    if transcriber is None:
        return {
            "model": engine.model,
            "device": engine.device,
            "compute_type": engine.compute_type,
            "ready": False,
            "load_error": services.load_error,
        }
    return {
        "model": transcriber.model_name,
        "device": transcriber.device,
        "compute_type": transcriber.compute_type,
        "ready": True,
        "load_error": None,
    }


def _queue_facts(services: Any) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _session_rows(services: Any) -> list[dict[str, Any]]:
    """One dict per live session (SessionManager.list(): id, state, language, audio seconds, ...)."""
    return [] if services.sessions is None else list(services.sessions.list())


@router.get("/v1/admin/status", tags=["admin"])
async def admin_status(request: Request) -> dict[str, Any]:
    """What the control panel shows; cheap enough to poll every couple of seconds."""
    services = request.app.state.services
    gpus = cuda_device_count()
    queue, latency = _queue_facts(services)
    return {
        **_engine_facts(services),
        "routing_mode": services.routing_mode,
        "gpu_available": gpus > 0,
        "gpu_count": gpus,
        "admin_key_required": bool(services.settings.auth.admin_key),
        "sessions": _session_rows(services),
        "active_sessions": services.active_sessions(),
        "active_jobs": services.active_jobs(),
        "queue": queue,
        "latency": latency,
        "uptime_s": round(services.uptime_s, 1),
    }


@router.put("/v1/admin/routing", tags=["admin"])
async def set_routing(
    change: RoutingChange,
    request: Request,
    x_admin_key: str | None = Header(default=None),
) -> dict[str, Any]:
    """Choose where new work goes. Work already running stays where it is."""
    services = request.app.state.services
    _check_admin(services, x_admin_key)
    gpu_available = cuda_device_count() > 0
    # 409 with the reason (the panel shows it); Services.set_routing_mode keeps the same rule.
    if change.mode == "gpu" and not gpu_available:
        raise ConflictError(
            "no CUDA device is present on this machine (CTranslate2 sees 0 GPUs), so work cannot be routed to a GPU",
            code="gpu_unavailable",
        )
    services.set_routing_mode(change.mode, gpu_available=gpu_available)
    return {"routing_mode": services.routing_mode}


# -- lifecycle ------------------------------------------------------------------------------------
async def startup(services: Any) -> None:
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(f"the web page files are missing from {STATIC_DIR} (broken install?)")


async def shutdown(services: Any) -> None:
    return None
