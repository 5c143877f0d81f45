"""Rate limits of tenants and keys: a smooth limiter (GCRA) kept in this process or in Redis.

Every authenticated request counts once against its key's ``requests_per_minute`` and once against
its tenant's; over either, it is refused with :class:`~malsori.errors.RateLimitedError` (429, the body
naming the limit, ``Retry-After`` the seconds until the next request would be admitted). The limiter
is the generic cell rate algorithm: a limit of N a minute admits one request every 60/N s, with a
small burst (:func:`burst_for`, a tenth of the limit, at least 1) for requests that come together, so
a tenant over its limit gets its share spread over the minute instead of all of it in the first
seconds of each fixed window. The state per key is one number, the theoretical arrival time of the
next request. Scaled out (a broker configured) it lives in Redis (``<prefix>:rl:...``, updated by an
atomic Lua script), so every gateway counts against the same limit; in one process it is a dictionary.
If Redis cannot be reached the request is let through and a warning logged: a limiter outage should
not take the service down.

Concurrent live sessions per tenant are leases (:class:`SessionSlots`), in Redis when scaled out too;
audio minutes per day by the usage meter (:mod:`malsori.tenants.usage`, in the database, shared).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ..errors import RateLimitedError

if TYPE_CHECKING:
    from ..config import AuthSettings, TenantLimits

__all__ = ["Counter", "MemoryCounter", "RedisCounter", "RateLimiter", "SessionSlots", "WINDOW_S", "burst_for"]

log = logging.getLogger(__name__)

WINDOW_S = 60
"""The period the limits are given in (requests per minute)."""


def burst_for(limit: int) -> int:
    """Requests admitted back to back before the spacing applies: a tenth of the limit, at least 1."""
    return max(1, limit // 10)


class Counter(Protocol):
    async def hit(self, name: str, interval_s: float, burst: int) -> tuple[bool, float]:
        """Admit one more request of ``name`` spaced ``interval_s`` apart with ``burst`` back to back:
        whether it is admitted and, if not, the seconds until one would be."""
        ...

    async def close(self) -> None: ...


def _gcra(tat: float | None, now: float, interval_s: float, burst: int) -> tuple[bool, float, float]:
    """One step of the algorithm: (admitted, retry after, the new theoretical arrival time)."""
    tat = now if tat is None or tat < now else tat
    tolerance = (burst - 1) * interval_s
    if tat - now > tolerance + 1e-6:  # (a microsecond of slack for the floating point sums)
        return False, tat - tolerance - now, tat
    return True, 0.0, tat + interval_s


class MemoryCounter:
    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, float] = {}

    async def hit(self, name: str, interval_s: float, burst: int) -> tuple[bool, float]:
        now = self._clock()
        with self._lock:
            if len(self._tats) > 50_000:  # keys idle long enough to be back at a full burst: drop them
                self._tats = {k: t for k, t in self._tats.items() if t > now}
            ok, retry_after, tat = _gcra(self._tats.get(name), now, interval_s, burst)
            self._tats[name] = tat
        return ok, retry_after

    async def close(self) -> None:
        return None


class RedisCounter:
    def __init__(self, url: str, prefix: str, clock=time.time) -> None:
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._clock = clock
        self._script = self._redis.register_script(_GCRA)

    async def hit(self, name: str, interval_s: float, burst: int) -> tuple[bool, float]:
        now = self._clock()
        ok, retry_after = await self._script(keys=[f"{self._prefix}:rl:{name}"], args=[repr(now), repr(interval_s), burst])
        return bool(int(ok)), float(retry_after)

    async def close(self) -> None:
        await self._redis.aclose()


# KEYS[1] the theoretical arrival time of the next request; ARGV: now, interval, burst.
# Returns {1, "0"} when admitted, {0, "<seconds to wait>"} when not (a string: Lua numbers come back
# as integers). The key expires when it would be back at a full burst anyway.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = (tonumber(ARGV[3]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance + 1e-6 then
  return {0, string.format('%.6f', tat - tolerance - now)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return {1, '0'}
"""


class RateLimiter:
    """Requests per minute per key and per tenant (0: no limit), spaced evenly with a small burst."""

    def __init__(self, settings: AuthSettings, counter: Counter) -> None:
        self.settings = settings
        self.counter = counter

    def limits_for(self, tenant_id: str) -> TenantLimits:
        return self.settings.tenant_limits.get(tenant_id, self.settings.limits)

    async def check_request(self, tenant_id: str, key_id: str, key_limit: int | None) -> None:
        limits = self.limits_for(tenant_id)
        per_key = key_limit if key_limit is not None else limits.key_requests_per_minute
        checks = (
            ("key", key_id, per_key, "this API key's"),
            ("tenant", tenant_id, limits.requests_per_minute, f"tenant {tenant_id!r}'s"),
        )
        for kind, ident, limit, whose in checks:
            if limit <= 0:
                continue
            try:
                ok, retry_after = await self.counter.hit(f"{kind}:{ident}", WINDOW_S / limit, burst_for(limit))
            except Exception as exc:  # Redis down: let the request through rather than fail it
                log.warning("rate limiter unavailable (%s); request not counted", exc.__class__.__name__)
                return
            if not ok:
                raise RateLimitedError(
                    f"{whose} limit of {limit} requests per minute is reached; try again in {max(1, math.ceil(retry_after))} s",
                    limit=f"{kind}_requests_per_minute",
                    retry_after=max(1.0, retry_after),
                )


class SessionSlots:
    """Live sessions open per tenant, as leases: ``acquire`` takes one (False when the tenant has
    ``limit`` already), ``release`` gives it back when the session ends, and the server renews the
    leases of its open sessions every couple of seconds (:meth:`refresh`), so the slots of a gateway
    that died free themselves after ``lease_s``. In this process, or scaled out in Redis (a sorted set
    per tenant, scored by lease expiry), so the limit holds across gateways."""

    def __init__(self, redis_url: str | None = None, prefix: str = "malsori", *, lease_s: float = 30.0, clock=time.time) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._prefix = prefix
        self._local: dict[str, dict[str, float]] = {}
        self._redis = None
        if redis_url:
            import redis.asyncio as aredis

            self._redis = aredis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            self._acquire = self._redis.register_script(_ACQUIRE)

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:live:tenant:{tenant}"

    async def acquire(self, tenant: str, session_id: str, limit: int) -> bool:
        now = self._clock()
        if self._redis is None:
            leases = {s: t for s, t in self._local.get(tenant, {}).items() if t > now}
            if session_id not in leases and len(leases) >= limit:
                return False
            leases[session_id] = now + self.lease_s
            self._local[tenant] = leases
            return True
        try:
            args = [now, now + self.lease_s, limit, session_id, int(self.lease_s) + 1]
            return bool(await self._acquire(keys=[self._key(tenant)], args=args))
        except Exception as exc:  # Redis down: let the session in rather than refuse everyone
            log.warning("live session slots unavailable (%s); session not counted", exc.__class__.__name__)
            return True

    async def release(self, tenant: str, session_id: str) -> None:
        if self._redis is None:
            self._local.get(tenant, {}).pop(session_id, None)
            return
        try:
            await self._redis.zrem(self._key(tenant), session_id)
        except Exception as exc:
            log.warning("live session slot not released (%s); its lease runs out", exc.__class__.__name__)

    async def refresh(self, held: list[tuple[str, str]]) -> None:
        """Renew the leases of sessions still open here (tenant, session id)."""
        expiry = self._clock() + self.lease_s
        if self._redis is None:
            for tenant, session_id in held:
                self._local.setdefault(tenant, {})[session_id] = expiry
            return
        if not held:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant, session_id in held:
                    pipe.zadd(self._key(tenant), {session_id: expiry})
                    pipe.expire(self._key(tenant), int(self.lease_s) + 1)
                await pipe.execute()
        except Exception as exc:
            log.warning("live session leases not renewed (%s)", exc.__class__.__name__)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


# KEYS[1] the tenant's set; ARGV: now, expiry, limit, session id, key ttl. Expired leases go first.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
