"""Rate limits of tenants and keys: fixed one-minute windows counted in this process or in Redis.

Every authenticated request counts once against its key's ``requests_per_minute`` and once against
its tenant's; over either, it is refused with :class:`~malsori.errors.RateLimitedError` (429,
``Retry-After`` the seconds left in the window, the body naming the limit). Scaled out (a broker
configured) the counters live in Redis (``INCR`` + ``EXPIRE`` on ``<prefix>:rl:...``), so every gateway
counts against the same limit; in one process they are a dictionary. If Redis cannot be reached the
request is let through and a warning logged: a limiter outage should not take the service down.

Concurrent live sessions per tenant are leases (:class:`SessionSlots`), in Redis when scaled out too;
audio minutes per day by the usage meter (:mod:`malsori.tenants.usage`, in the database, shared).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ..errors import RateLimitedError

if TYPE_CHECKING:
    from ..config import AuthSettings, TenantLimits

__all__ = ["Counter", "MemoryCounter", "RedisCounter", "RateLimiter", "SessionSlots", "WINDOW_S"]

log = logging.getLogger(__name__)

WINDOW_S = 60


class Counter(Protocol):
    async def hit(self, name: str, window_s: int) -> tuple[int, float]:
        """Count one more in the current window of ``name``: the count now and seconds until the window ends."""
        ...

    async def close(self) -> None: ...


class MemoryCounter:
    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, name: str, window_s: int) -> tuple[int, float]:
        now = self._clock()
        window = int(now // window_s)
        with self._lock:
            if len(self._counts) > 50_000:  # old windows: drop them all now and then
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((name, window), 0) + 1
            self._counts[(name, window)] = count
        return count, (window + 1) * window_s - now

    async def close(self) -> None:
        return None


class RedisCounter:
    def __init__(self, url: str, prefix: str, clock=time.time) -> None:
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._clock = clock

    async def hit(self, name: str, window_s: int) -> tuple[int, float]:
        now = self._clock()
        window = int(now // window_s)
        key = f"{self._prefix}:rl:{name}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s * 2)
            count, _ = await pipe.execute()
        return int(count), (window + 1) * window_s - now

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    """Requests per minute per key and per tenant (0: no limit)."""

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
                count, reset_in = await self.counter.hit(f"{kind}:{ident}", WINDOW_S)
            except Exception as exc:  # Redis down: let the request through rather than fail it
                log.warning("rate limiter unavailable (%s); request not counted", exc.__class__.__name__)
                return
            if count > limit:
                raise RateLimitedError(
                    f"{whose} limit of {limit} requests per minute is reached; try again in {max(1, round(reset_in))} s",
                    limit=f"{kind}_requests_per_minute",
                    retry_after=max(1.0, reset_in),
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
