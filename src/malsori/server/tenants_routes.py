"""Keys, WebSocket tokens and usage over HTTP (docs/security.md).

- ``POST /v1/tokens`` (scope ``transcribe``): a short-lived token for opening a live socket from a
  browser (``?token=``, or a first ``{"type": "auth", "token": ...}`` message). With no API keys
  configured the answer is ``{"token": null, "required": false}``.
- ``GET /v1/usage?days=30`` (scope ``read``): the caller's tenant's audio seconds and requests by day
  and endpoint, today's total and the limits that apply; an admin key may ask for ``tenant_id``.
- ``POST /v1/admin/keys``, ``GET /v1/admin/keys``, ``DELETE /v1/admin/keys/{id}`` (scope ``admin``; on
  the open service, the panel's admin key if one is configured): what ``malsori keys`` does.
  A new key is in the creation answer's ``secret``, the only time it is shown.

Routes-module contract: ``router``, ``startup(services)``, ``shutdown(services)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import NotFoundError
from ..tenants import DEFAULT_SCOPES, Scope, Tenants, exposure_problem
from .auth import USAGE_OPEN_TENANT, ReadDep, TranscribeDep
from .deps import AdminDep, ServicesDep
from .services import NotReadyError, Services

__all__ = ["router", "startup", "shutdown", "KeyRequest"]

log = logging.getLogger(__name__)

router = APIRouter()
_FLUSH_INTERVAL_S = 2.0


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(min_length=1, max_length=128)
    scopes: list[Scope] = Field(default_factory=lambda: sorted(DEFAULT_SCOPES, key=lambda s: s.value), max_length=3)
    """Default: transcribe and read."""
    name: str | None = Field(default=None, max_length=200)
    expires_in_days: float | None = Field(default=None, gt=0, le=36500)
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)


def _tenants(services: Services) -> Tenants:
    if services.tenants is None:
        raise NotReadyError("the service is starting; try again shortly", retry_after=2.0)
    return services.tenants


@router.post("/v1/tokens", tags=["auth"], summary="A short-lived token for opening a live WebSocket")
async def create_token(principal: TranscribeDep, services: ServicesDep) -> dict[str, Any]:
    if principal.is_open:
        return {"token": None, "required": False, "expires_in": None}
    assert principal.tenant_id is not None and principal.key_id is not None
    token, expires = _tenants(services).tokens.issue(principal.tenant_id, principal.key_id, principal.scopes)
    return {"token": token, "required": True, "expires_at": expires, "expires_in": services.settings.auth.token_ttl_s}


@router.get("/v1/usage", tags=["auth"], summary="Audio seconds and requests of the caller's tenant, by day and endpoint")
async def usage(
    principal: ReadDep,
    services: ServicesDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
    tenant_id: Annotated[str | None, Query(max_length=128, description="Another tenant (admin keys only)")] = None,
) -> dict[str, Any]:
    tenants = _tenants(services)
    tenant = principal.tenant_id or USAGE_OPEN_TENANT
    if tenant_id is not None and tenant_id != tenant:
        if not (principal.is_open or Scope.ADMIN in principal.scopes):
            raise NotFoundError(f"no usage of tenant {tenant_id!r}")
        tenant = tenant_id
    summary = await run_in_threadpool(tenants.usage.summary, tenant, days)
    limits = tenants.limiter.limits_for(tenant)
    today = summary[0] if summary and summary[0]["day"] == _today() else None
    return {
        "object": "usage",
        "tenant_id": None if tenant == USAGE_OPEN_TENANT else tenant,
        "today": {"audio_seconds": today["audio_seconds"] if today else 0.0, "requests": today["requests"] if today else 0},
        "limits": limits.model_dump(),
        "days": summary,
    }


def _today() -> str:
    from ..tenants.usage import today

    return today()


@router.post("/v1/admin/keys", tags=["admin"], status_code=201, dependencies=[AdminDep], summary="Create an API key")
async def create_key(body: KeyRequest, services: ServicesDep) -> JSONResponse:
    tenants = _tenants(services)
    new = await run_in_threadpool(
        lambda: tenants.keys.create(
            body.tenant_id,
            scopes=body.scopes,
            name=body.name,
            expires_in_days=body.expires_in_days,
            requests_per_minute=body.requests_per_minute,
        )
    )
    scopes = " ".join(sorted(s.value for s in new.key.scopes))
    log.info("API key %s created for tenant %s (scopes %s)", new.key.id, new.key.tenant_id, scopes)
    return JSONResponse({"key": new.key.public(), "secret": new.secret}, status_code=201)


@router.get("/v1/admin/keys", tags=["admin"], dependencies=[AdminDep], summary="List API keys (never their secrets)")
async def list_keys(
    services: ServicesDep,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    include_revoked: bool = False,
) -> dict[str, Any]:
    keys = await run_in_threadpool(lambda: _tenants(services).keys.list(tenant_id, include_revoked=include_revoked))
    return {"object": "list", "data": [k.public() for k in keys]}


@router.delete("/v1/admin/keys/{key_id}", tags=["admin"], dependencies=[AdminDep], summary="Revoke an API key")
async def revoke_key(services: ServicesDep, key_id: Annotated[str, Path(min_length=1, max_length=32)]) -> dict[str, Any]:
    key = await run_in_threadpool(_tenants(services).keys.revoke, key_id)
    log.info("API key %s of tenant %s revoked", key.id, key.tenant_id)
    return key.public()


# -- lifecycle -------------------------------------------------------------------------------------
async def startup(services: Services) -> None:
    """Open the key store (refusing to start exposed with no key) and flush usage every few seconds."""
    tenants = await run_in_threadpool(Tenants.from_settings, services.settings)
    problem = exposure_problem(services.settings, await run_in_threadpool(tenants.required))
    if problem is not None:
        await tenants.close()
        raise RuntimeError(problem)
    services.tenants = tenants

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            await anyio.to_thread.run_sync(tenants.usage.flush)
            # Renew the live-session leases of this gateway's open sessions (a dead gateway's run out).
            live = services.sessions.all() if services.sessions is not None else []
            await tenants.slots.refresh([(s.tenant_id, s.id) for s in live if s.tenant_id is not None and not s.ended])

    services.tasks["tenants.flush"] = asyncio.create_task(flush_loop(), name="malsori-usage-flush")


async def shutdown(services: Services) -> None:
    task = services.tasks.pop("tenants.flush", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if services.tenants is not None:
        await services.tenants.close()
