"""Usage metering: audio seconds each tenant had transcribed, by UTC day and endpoint.

:meth:`UsageMeter.record` is cheap (it adds to a dictionary, safe from the event loop);
:meth:`UsageMeter.flush` writes what was added to the database, one row per tenant, day and endpoint,
and runs every couple of seconds in a thread and before every read. Kept in the database, usage is
shared by every gateway on it and survives restarts; it feeds ``GET /v1/usage`` and the
``audio_minutes_per_day`` quota.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from ..storage import UsageRow, session_factory

__all__ = ["UsageMeter", "today"]

log = logging.getLogger(__name__)


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


class UsageMeter:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0])

    def record(self, tenant_id: str, endpoint: str, audio_seconds: float) -> None:
        with self._lock:
            entry = self._pending[(tenant_id, today(), endpoint[:64])]
            entry[0] += max(0.0, float(audio_seconds))
            entry[1] += 1

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, defaultdict(lambda: [0.0, 0])
            for (tenant, day, endpoint), (seconds, requests) in pending.items():
                try:
                    self._add(tenant, day, endpoint, seconds, int(requests))
                except Exception:  # the database is away: keep the numbers for the next flush
                    log.warning("usage could not be written; kept for the next try", exc_info=True)
                    with self._lock:
                        entry = self._pending[(tenant, day, endpoint)]
                        entry[0] += seconds
                        entry[1] += requests

    def _add(self, tenant: str, day: str, endpoint: str, seconds: float, requests: int) -> None:
        where = (UsageRow.tenant_id == tenant, UsageRow.day == day, UsageRow.endpoint == endpoint)
        for _ in range(2):
            with self._sessions.begin() as session:
                result = session.execute(
                    update(UsageRow)
                    .where(*where)
                    .values(audio_seconds=UsageRow.audio_seconds + seconds, requests=UsageRow.requests + requests)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) == 1:
                    return
            try:
                with self._sessions.begin() as session:
                    session.add(UsageRow(tenant_id=tenant, day=day, endpoint=endpoint, audio_seconds=seconds, requests=requests))
                return
            except IntegrityError:  # another process inserted the row first: update it
                continue

    def seconds_today(self, tenant_id: str) -> float:
        """Audio seconds ``tenant_id`` used today (UTC), everything recorded so far included."""
        self.flush()
        with self._sessions() as session:
            rows = session.scalars(select(UsageRow).where(UsageRow.tenant_id == tenant_id, UsageRow.day == today())).all()
            return float(sum(r.audio_seconds for r in rows))

    def summary(self, tenant_id: str, days: int = 30) -> builtins.list[dict]:
        """One entry per day (newest first) with seconds and requests by endpoint, over the last ``days``."""
        self.flush()
        since = (datetime.now(timezone.utc) - timedelta(days=max(1, days) - 1)).strftime("%Y-%m-%d")
        with self._sessions() as session:
            rows = session.scalars(
                select(UsageRow).where(UsageRow.tenant_id == tenant_id, UsageRow.day >= since).order_by(UsageRow.day.desc())
            ).all()
        by_day: dict[str, dict] = {}
        for r in rows:
            day = by_day.setdefault(r.day, {"day": r.day, "audio_seconds": 0.0, "requests": 0, "endpoints": {}})
            day["audio_seconds"] = round(day["audio_seconds"] + r.audio_seconds, 3)
            day["requests"] += r.requests
            day["endpoints"][r.endpoint] = {"audio_seconds": round(r.audio_seconds, 3), "requests": r.requests}
        return list(by_day.values())
