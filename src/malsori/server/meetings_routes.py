"""Meetings over HTTP (a thin layer over :class:`~malsori.analysis.meetings.MeetingBook`).

- ``GET /v1/meetings/{id}``: a meeting's sessions, transcript, speakers and statistics; while it is
  live, as of now; after it ended, as stored (also after a restart).
- ``GET /v1/meetings``: newest first, without transcripts; filtered by tenant and state.

A live session joins a meeting when its start message names a ``meeting_id`` (docs/protocol.md).
With API keys (docs/security.md) both need the ``read`` scope, and a meeting belongs to its sessions'
tenant: another tenant's is 404, and the listing shows only the caller's.

Routes-module contract: ``router``, ``async startup(services)`` (opens the meetings table in the
jobs database, sets ``services.meetings``), ``async shutdown(services)`` (finishes pending writes).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from ..analysis.meetings import MeetingBook
from ..errors import NotFoundError
from ..storage import open_engine
from ..storage.meetings import MeetingRepository, summary
from .auth import ReadDep
from .deps import ServicesDep
from .services import NotReadyError, Services

__all__ = ["router", "startup", "shutdown"]

router = APIRouter(prefix="/v1/meetings", tags=["meetings"])


def get_book(services: ServicesDep) -> MeetingBook:
    if services.meetings is None:  # only between app construction and startup
        raise NotReadyError("the meeting service is starting; try again shortly", retry_after=2.0)
    return services.meetings


MeetingsDep = Annotated[MeetingBook, Depends(get_book)]


def _repository(book: MeetingBook) -> MeetingRepository:
    assert isinstance(book.store, MeetingRepository)
    return book.store


@router.get("/{meeting_id}")
async def get_meeting(
    principal: ReadDep,
    book: MeetingsDep,
    meeting_id: Annotated[str, Path(min_length=1, max_length=128)],
    tenant_id: Annotated[str | None, Query(max_length=256, description="Without keys: the tenant label of the meeting")] = None,
) -> dict[str, Any]:
    """The caller's tenant's meeting of that id (ids belong to tenants). Without keys, tenants are
    labels: ``tenant_id`` picks one; without it, the newest meeting of that id."""
    repository = _repository(book)
    if principal.is_open and tenant_id is None:
        live = book.find_live(meeting_id)
        record = live.record() if live is not None else await run_in_threadpool(repository.find, meeting_id)
    else:
        tenant = tenant_id if principal.is_open else principal.tenant_id
        live = book.get_live(meeting_id, tenant)
        record = live.record() if live is not None else await run_in_threadpool(repository.get, meeting_id, tenant)
    if record is None or not principal.owns(record.get("tenant_id")):
        raise NotFoundError(f"no meeting {meeting_id!r}")
    return record


@router.get("")
async def list_meetings(
    principal: ReadDep,
    book: MeetingsDep,
    tenant_id: Annotated[str | None, Query(max_length=256)] = None,
    state: Annotated[Literal["live", "ended"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Stored meetings, newest first; a live one shows its state as of its last write (session start or end)."""
    if not principal.is_open:
        if tenant_id is not None and tenant_id != principal.tenant_id:  # never another tenant's
            return {"meetings": [], "limit": limit, "offset": offset}
        tenant_id = principal.tenant_id
    await asyncio.wrap_future(book.written())  # a meeting that just started or ended is in the store
    rows = await run_in_threadpool(_repository(book).list, tenant_id=tenant_id, state=state, limit=limit, offset=offset)
    live = {(m["tenant_id"], m["meeting_id"]): m for m in book.live_records()}
    meetings = [summary(live[key]) if (key := (r["tenant_id"], r["meeting_id"])) in live else r for r in rows]
    return {"meetings": meetings, "limit": limit, "offset": offset}


async def startup(services: Services) -> None:
    repository = MeetingRepository(await run_in_threadpool(open_engine, services.settings.database_url()))
    services.meetings = MeetingBook(repository)


async def shutdown(services: Services) -> None:
    book = services.meetings
    if book is not None:
        await run_in_threadpool(book.close)
        if isinstance(book.store, MeetingRepository):
            book.store.close()
