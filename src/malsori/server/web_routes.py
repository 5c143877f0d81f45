"""Placeholder until the web routes land: the contract every routes module keeps.

- `router`: a FastAPI APIRouter that create_app includes.
- `async startup(services)` / `async shutdown(services)`: called from create_app's lifespan, in
  order jobs, streaming, web, to build and tear down what the routes need (on `services`).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


async def startup(services) -> None:
    return None


async def shutdown(services) -> None:
    return None
