"""Short-lived tokens for WebSockets, which browsers cannot give headers.

A client holding an API key asks ``POST /v1/tokens`` for a token and opens the socket with
``?token=...`` (or sends ``{"type": "auth", "token": ...}`` as its first message). A token reads
``mst_<payload>.<signature>``: the payload (tenant, key id, scopes, expiry) signed with HMAC-SHA256
under a secret the server makes once and keeps in the database, so every gateway on that database
accepts the tokens of every other. A token is checked by its signature and expiry, and its key must
still be active (a revoked key's tokens stop working with it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from ..errors import CredentialsError
from ..storage import SecretRow, session_factory
from .keys import Scope, parse_scopes

__all__ = ["TokenIssuer", "TokenClaims", "TOKEN_PATTERN"]

TOKEN_PATTERN = re.compile(r"mst_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
"""What a token looks like (log masking finds them with this)."""
_SECRET_NAME = "token_signing_key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    tenant_id: str
    key_id: str
    scopes: frozenset[Scope]
    expires_at: float
    """Unix time."""


class TokenIssuer:
    def __init__(self, engine: Engine, *, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self._secret = _shared_secret(engine)

    def issue(self, tenant_id: str, key_id: str, scopes: frozenset[Scope]) -> tuple[str, float]:
        """A token for these claims and its expiry (Unix time)."""
        expires = time.time() + self.ttl_s
        payload = _b64(
            json.dumps({"t": tenant_id, "k": key_id, "s": sorted(s.value for s in scopes), "e": round(expires, 3)}).encode()
        )
        return f"mst_{payload}.{self._sign(payload)}", expires

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid, unexpired token; CredentialsError otherwise."""
        if not TOKEN_PATTERN.fullmatch(token):
            raise CredentialsError("the token is not valid")
        payload, signature = token[4:].split(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise CredentialsError("the token is not valid")
        try:
            data = json.loads(_unb64(payload))
            claims = TokenClaims(str(data["t"]), str(data["k"]), parse_scopes(data["s"]), float(data["e"]))
        except Exception:
            raise CredentialsError("the token is not valid") from None
        if claims.expires_at < time.time():
            raise CredentialsError("the token has expired; get a new one from POST /v1/tokens")
        return claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def _shared_secret(engine: Engine) -> bytes:
    """The signing key in the database, made by whichever process comes first."""
    sessions = session_factory(engine)
    for _ in range(3):
        with sessions() as session:
            row = session.get(SecretRow, _SECRET_NAME)
            if row is not None:
                return _unb64(row.value)
        try:
            with sessions.begin() as session:
                session.add(SecretRow(name=_SECRET_NAME, value=_b64(secrets.token_bytes(32))))
        except IntegrityError:  # another process made it first: read theirs
            continue
    raise RuntimeError("could not read or create the token signing key")
