"""API keys of tenants: made once, shown once, kept only as a hash.

A key reads ``msk_<id>_<secret>``: ``id`` (12 hex characters) finds the row, ``secret`` (32 random
bytes, URL-safe base64) is checked against the row's SHA-256. A fast hash is enough because the secret
is 256 random bits, not a password: nothing can be guessed from the hash (GitHub's tokens work the
same way). Keys carry scopes (``transcribe``, ``read``, ``admin``), an optional expiry, and can be
revoked; a revoked or expired key is refused like an unknown one.

Lookups are cached for ``cache_s`` (default 2 s) so a request costs no database query in the common
case: a key revoked through this process's store is dropped from the cache at once; one revoked
by another process (the CLI, another gateway) stops working within ``cache_s``.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, func, select, update

from ..errors import CredentialsError, InvalidOptionsError, NotFoundError
from ..storage import ApiKeyRow, session_factory

__all__ = ["Scope", "ApiKey", "NewKey", "KeyStore", "DEFAULT_SCOPES", "parse_scopes", "looks_like_key", "KEY_PATTERN"]


class Scope(str, enum.Enum):
    TRANSCRIBE = "transcribe"
    """Send audio: the transcription endpoints, jobs, live sockets, WebSocket tokens."""
    READ = "read"
    """Read one's own jobs and transcripts, usage, models, status and metrics."""
    ADMIN = "admin"
    """Manage keys (any tenant's) and change the control panel's settings."""


DEFAULT_SCOPES = frozenset({Scope.TRANSCRIBE, Scope.READ})
"""What a new key gets unless admin is asked for."""

KEY_PATTERN = re.compile(r"msk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,64}")
"""What a key looks like (log masking finds them with this)."""
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_scopes(value: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes from ``"transcribe read"``, ``"transcribe,read"`` or a list; InvalidOptionsError on an unknown one."""
    names = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        return frozenset(Scope(n.strip().lower()) for n in names if n.strip())
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        raise InvalidOptionsError(f"unknown scope in {names!r}; scopes are {known}") from None


def looks_like_key(value: str) -> bool:
    return KEY_PATTERN.fullmatch(value) is not None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    tenant_id: str
    scopes: frozenset[Scope]
    created_at: datetime
    name: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    requests_per_minute: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > datetime.now(timezone.utc))

    def public(self) -> dict:
        """What the admin API and ``malsori keys list`` show (never the secret or its hash)."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "scopes": sorted(s.value for s in self.scopes),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "requests_per_minute": self.requests_per_minute,
            "active": self.active,
        }

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            scopes=parse_scopes(row.scopes),
            created_at=_utc(row.created_at) or datetime.now(timezone.utc),
            name=row.name,
            expires_at=_utc(row.expires_at),
            revoked_at=_utc(row.revoked_at),
            requests_per_minute=row.requests_per_minute,
        )


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``secret`` is the full key, shown this once."""

    key: ApiKey
    secret: str


class KeyStore:
    """Keys in the service's database. Thread-safe."""

    def __init__(self, engine: Engine, *, cache_s: float = 2.0) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKeyRow | None]] = {}
        self._any: tuple[float, bool] | None = None

    # -- managing ----------------------------------------------------------------------------------
    def create(
        self,
        tenant_id: str,
        *,
        scopes: Iterable[Scope] = DEFAULT_SCOPES,
        name: str | None = None,
        expires_in_days: float | None = None,
        requests_per_minute: int | None = None,
    ) -> NewKey:
        if not _TENANT.fullmatch(tenant_id or ""):
            raise InvalidOptionsError("a tenant id is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        chosen = frozenset(Scope(s) for s in scopes)
        if not chosen:
            raise InvalidOptionsError("a key needs at least one scope")
        if expires_in_days is not None and expires_in_days <= 0:
            raise InvalidOptionsError("expires_in_days must be positive")
        if requests_per_minute is not None and requests_per_minute < 1:
            raise InvalidOptionsError("requests_per_minute must be at least 1")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        row = ApiKeyRow(
            id=key_id,
            tenant_id=tenant_id,
            name=(name or None) and name[:200],
            secret_hash=_hash(secret),
            scopes=" ".join(sorted(s.value for s in chosen)),
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
            requests_per_minute=requests_per_minute,
        )
        with self._sessions.begin() as session:
            session.add(row)
        with self._lock:
            self._any = None
        return NewKey(ApiKey.from_row(row), f"msk_{key_id}_{secret}")

    def list(self, tenant_id: str | None = None, *, include_revoked: bool = False) -> builtins.list[ApiKey]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.tenant_id, ApiKeyRow.created_at)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        with self._sessions() as session:
            return [ApiKey.from_row(r) for r in session.scalars(query).all()]

    def get(self, key_id: str) -> ApiKey:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no key with id {key_id!r}")
            return ApiKey.from_row(row)

    def revoke(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        """Revoke a key (``tenant_id``: only if it is that tenant's); NotFoundError when there is none."""
        where = [ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None)]
        if tenant_id is not None:
            where.append(ApiKeyRow.tenant_id == tenant_id)
        with self._sessions.begin() as session:
            session.execute(update(ApiKeyRow).where(*where).values(revoked_at=datetime.now(timezone.utc)))
        with self._lock:
            self._cache.pop(key_id, None)
            self._any = None
        key = self.get(key_id)
        if tenant_id is not None and key.tenant_id != tenant_id:
            raise NotFoundError(f"no key with id {key_id!r}")
        return key

    # -- checking ----------------------------------------------------------------------------------
    def any_keys(self) -> bool:
        """Whether any key exists that is not revoked (then every request needs one)."""
        now = time.monotonic()
        with self._lock:
            if self._any is not None and now - self._any[0] < self.cache_s:
                return self._any[1]
        with self._sessions() as session:
            count = session.scalar(select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))) or 0
        with self._lock:
            self._any = (now, count > 0)
        return count > 0

    def authenticate(self, presented: str) -> ApiKey:
        """The key ``presented`` is, if it is one and active; CredentialsError otherwise."""
        if not looks_like_key(presented):
            raise CredentialsError("the API key is not valid")
        _, key_id, secret = presented.split("_", 2)
        row = self._row(key_id)
        if row is None or not secrets.compare_digest(row.secret_hash, _hash(secret)):
            raise CredentialsError("the API key is not valid")
        key = ApiKey.from_row(row)
        if key.revoked_at is not None:
            raise CredentialsError("the API key was revoked")
        if not key.active:
            raise CredentialsError("the API key has expired")
        return key

    def active_key(self, key_id: str) -> ApiKey:
        """The key of ``key_id`` if it is still active (a token's key must be); CredentialsError otherwise."""
        row = self._row(key_id)
        key = ApiKey.from_row(row) if row is not None else None
        if key is None or not key.active:
            raise CredentialsError("the key this token was issued for is no longer valid")
        return key

    def _row(self, key_id: str) -> ApiKeyRow | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is not None:
                session.expunge(row)
        with self._lock:
            if len(self._cache) > 10_000:  # unknown ids are cached too: keep the cache bounded
                self._cache.clear()
            self._cache[key_id] = (now, row)
        return row
