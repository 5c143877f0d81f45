"""Every plain HTTP route of the service core, in one router that ``create_app`` includes.

- ``health_routes``: /health, /is_ready, /stt/status
- ``openai_routes``: /v1/audio/transcriptions, /v1/audio/translations, /v1/models
- ``stt_routes``: /stt/upload, /stt/process
- ``chunk_routes``: /detect, /transcribe-chunk, /transcribe
- ``analysis_routes``: /v1/analysis/sentiment
"""

from __future__ import annotations

from fastapi import APIRouter

from . import analysis_routes, chunk_routes, health_routes, openai_routes, stt_routes

__all__ = ["router"]

router = APIRouter()
for _module in (health_routes, openai_routes, stt_routes, chunk_routes, analysis_routes):
    router.include_router(_module.router)
