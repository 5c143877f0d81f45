"""Tenants: who a request is (API keys, WebSocket tokens), what it may do (scopes), how much
(rate limits, quotas) and what it used (usage). Transport-free; ``malsori.server.auth`` applies it to
HTTP requests and sockets. docs/security.md tells the whole story.

- With no API key in the database the service is open, as it always was: every request is the
  :data:`OPEN` principal (no tenant, every scope), and jobs keep the ``tenant_id`` label they are given.
  That is only allowed on a loopback address unless ``auth.allow_open`` says so
  (:func:`exposure_problem`).
- Once a key exists, every request must carry one (or a token made from one): it then acts as the
  key's tenant, sees only that tenant's jobs and sessions, and is limited by its scopes and limits.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ForbiddenError, RateLimitedError
from .keys import DEFAULT_SCOPES, KEY_PATTERN, ApiKey, KeyStore, NewKey, Scope, parse_scopes
from .limits import MemoryCounter, RateLimiter, RedisCounter, SessionSlots
from .tokens import TOKEN_PATTERN, TokenIssuer
from .usage import UsageMeter

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..config import Settings

__all__ = [
    "Principal",
    "OPEN",
    "Tenants",
    "Scope",
    "ApiKey",
    "NewKey",
    "KeyStore",
    "TokenIssuer",
    "UsageMeter",
    "RateLimiter",
    "SessionSlots",
    "DEFAULT_SCOPES",
    "KEY_PATTERN",
    "TOKEN_PATTERN",
    "parse_scopes",
    "exposure_problem",
    "is_loopback",
]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. ``tenant_id`` None: the open service (no keys configured)."""

    tenant_id: str | None
    key_id: str | None
    scopes: frozenset[Scope]
    via: str = "open"
    """``open``, ``key`` or ``token``."""
    requests_per_minute: int | None = None
    """The key's own request limit, if it has one."""

    @property
    def is_open(self) -> bool:
        return self.tenant_id is None

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(f"this key lacks the {scope.value!r} scope needed here")

    def owns(self, tenant_id: str | None) -> bool:
        """Whether a resource labelled ``tenant_id`` is visible to this principal."""
        return self.is_open or tenant_id == self.tenant_id

    def acting_tenant(self, asked: str | None) -> str | None:
        """The tenant a new job or session belongs to: the key's (a different ``asked`` is 403); open: ``asked``."""
        if self.is_open:
            return asked
        if asked and asked != self.tenant_id:
            raise ForbiddenError(f"a key of tenant {self.tenant_id!r} cannot act for tenant {asked!r}")
        return self.tenant_id

    @classmethod
    def of_key(cls, key: ApiKey, *, via: str = "key", scopes: frozenset[Scope] | None = None) -> Principal:
        return cls(key.tenant_id, key.id, key.scopes if scopes is None else scopes & key.scopes, via, key.requests_per_minute)


OPEN = Principal(None, None, frozenset(Scope), "open")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings, keys_exist: bool) -> str | None:
    """Why the service must not start as configured (None: it may): a non-loopback address with no
    API key, unless ``auth.allow_open``."""
    host = settings.server.host
    if keys_exist or settings.auth.allow_open or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} with no API key configured: anyone who can reach the port could use "
        "everything. Create a key first (malsori keys create --tenant NAME, with the same data dir or "
        "MALSORI__STORAGE__URL), or set MALSORI__AUTH__ALLOW_OPEN=true to serve open on purpose."
    )


class Tenants:
    """Keys, tokens, limits and usage of one app (or one CLI command), over the service's database."""

    def __init__(self, settings: Settings, engine: Engine, *, redis_url: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.keys = KeyStore(engine)
        self.tokens = TokenIssuer(engine, ttl_s=settings.auth.token_ttl_s)
        counter = RedisCounter(redis_url, settings.queue.key_prefix) if redis_url else MemoryCounter()
        self.limiter = RateLimiter(settings.auth, counter)
        self.slots = SessionSlots(redis_url, settings.queue.key_prefix)
        self.usage = UsageMeter(engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tenants:
        from ..storage import open_engine

        redis_url = settings.queue.redis() if settings.queue.broker_url else None
        return cls(settings, open_engine(settings.database_url()), redis_url=redis_url)

    def required(self) -> bool:
        """Whether requests need a key (some key exists)."""
        return self.keys.any_keys()

    def authenticate(self, credential: str) -> Principal:
        """The principal of an API key or a token; CredentialsError when it is neither valid."""
        if credential.startswith("mst_"):
            claims = self.tokens.verify(credential)
            key = self.keys.active_key(claims.key_id)
            return Principal.of_key(key, via="token", scopes=claims.scopes)
        return Principal.of_key(self.keys.authenticate(credential))

    def check_audio_quota(self, principal: Principal) -> None:
        """RateLimitedError once the tenant used its audio minutes of the day (checked before new work;
        the request that crosses the limit still finishes)."""
        if principal.tenant_id is None:
            return
        minutes = self.limiter.limits_for(principal.tenant_id).audio_minutes_per_day
        if minutes <= 0:
            return
        used = self.usage.seconds_today(principal.tenant_id)
        if used >= minutes * 60:
            from datetime import datetime, timedelta, timezone

            now = datetime.now(timezone.utc)
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            raise RateLimitedError(
                f"tenant {principal.tenant_id!r} used its {minutes:g} audio minutes of today "
                f"({used / 60:.1f} min); the quota resets at 00:00 UTC",
                limit="audio_minutes_per_day",
                retry_after=(midnight - now).total_seconds(),
            )

    def live_session_limit(self, tenant_id: str | None) -> int:
        return 0 if tenant_id is None else self.limiter.limits_for(tenant_id).live_sessions

    async def close(self) -> None:
        await self.limiter.counter.close()
        await self.slots.close()
        self.usage.flush()
        self.engine.dispose()
