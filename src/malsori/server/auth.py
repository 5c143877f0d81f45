"""Authentication, scopes and rate limits on every HTTP request and WebSocket (docs/security.md).

:class:`AuthMiddleware` runs before any route (so an unauthenticated upload is refused before its body
is read): it gives the request an id (``X-Request-ID``, echoed), finds its credential
(``Authorization: Bearer``, ``X-API-Key``, or for sockets ``?token=``), turns it into a
:class:`~malsori.tenants.Principal`, and counts it against its key's and tenant's requests per minute.
With no API key configured every request is :data:`~malsori.tenants.OPEN` and nothing is checked.

Routes then say what they need as a dependency (``TranscribeDep``, ``ReadDep``, ``AdminScopeDep``):
403 when the principal lacks the scope. A handful of paths are public (:data:`PUBLIC_PATHS`: health
probes, the static page and panel files, the OpenAPI schema); tests/test_tenants.py checks every other
route declares a scope. WebSockets authenticate in :func:`authenticate_socket` after accepting, so a
refusal is a close with code 4401 or 4403 that a browser can read.
"""

from __future__ import annotations

import contextvars
import json
import re
import uuid
from collections.abc import MutableMapping
from typing import Annotated, Any

import anyio
from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from ..errors import CredentialsError, MalsoriError
from ..logs import request_id as request_id_var
from ..tenants import OPEN, Principal, Scope, Tenants
from .errors import error_response

__all__ = [
    "AuthMiddleware",
    "SOCKET_QUERY_CREDENTIALS",
    "PUBLIC_PATHS",
    "PRINCIPAL_KEY",
    "Require",
    "PrincipalDep",
    "TranscribeDep",
    "ReadDep",
    "AdminScopeDep",
    "current_principal",
    "current_request_id",
    "record_usage",
    "authenticate_socket",
    "USAGE_OPEN_TENANT",
    "get_principal",
    "is_public",
]

SOCKET_QUERY_CREDENTIALS = ("token", "api_key")
"""Query parameters a WebSocket may carry its credentials in (a browser cannot set headers on one)."""

PRINCIPAL_KEY = "malsori.principal"
_ERROR_KEY = "malsori.auth_error"
PUBLIC_PATHS = frozenset({"/health", "/is_ready", "/", "/panel", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})
"""Paths anyone may fetch: probes, the page and panel (static files, no data), the API schema."""
_PUBLIC_PREFIXES = ("/static/",)
USAGE_OPEN_TENANT = "_open"
"""The tenant usage is recorded under while the service is open (no keys)."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_FIRST_MESSAGE_TIMEOUT_S = 10.0

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("malsori_principal", default=None)
current_request_id = request_id_var  # shown on every log line (malsori.logs)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


def _credential(scope: dict) -> str | None:
    headers = {k.lower(): v for k, v in scope.get("headers", ())}
    auth = headers.get(b"authorization")
    if auth:
        kind, _, value = auth.decode("latin-1").partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    if scope["type"] == "websocket":
        from urllib.parse import parse_qs

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        for name in SOCKET_QUERY_CREDENTIALS:
            if query.get(name):
                return query[name][0]
    return None


def _tenants(scope: MutableMapping[str, Any]) -> Tenants | None:
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    return getattr(services, "tenants", None)


class AuthMiddleware:
    """Request ids, authentication and request rate limits, before any route runs."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        id_token = current_request_id.set(request_id)
        try:
            principal, error = await self._identify(scope)
            scope[PRINCIPAL_KEY] = principal
            token = current_principal.set(principal)
            try:
                if error is not None and scope["type"] == "http":
                    await error_response(error)(scope, receive, _with_request_id(send, request_id))
                    return
                if error is not None:
                    scope[_ERROR_KEY] = error  # the socket handler accepts, then closes with the right code
                send_with_id = _with_request_id(send, request_id) if scope["type"] == "http" else send
                await self.app(scope, receive, send_with_id)
            finally:
                current_principal.reset(token)
        finally:
            current_request_id.reset(id_token)

    async def _identify(self, scope: dict) -> tuple[Principal | None, MalsoriError | None]:
        tenants = _tenants(scope)
        if tenants is None:  # before startup: nothing can be checked, and nothing is served either
            return OPEN, None
        required = await anyio.to_thread.run_sync(tenants.required)
        if not required:
            return OPEN, None
        credential = _credential(scope)
        if credential is None:
            path = scope.get("path", "")
            if is_public(path) or (path == "/metrics" and tenants.settings.auth.public_metrics) or scope["type"] == "websocket":
                return None, None  # public, or a socket that may send a token as its first message
            return None, CredentialsError("an API key is needed: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        try:
            principal = await anyio.to_thread.run_sync(tenants.authenticate, credential)
            assert principal.key_id is not None and principal.tenant_id is not None
            await tenants.limiter.check_request(principal.tenant_id, principal.key_id, principal.requests_per_minute)
        except MalsoriError as exc:
            return None, exc
        return principal, None


def _request_id(scope: dict) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex[:16]


def _with_request_id(send, request_id: str):
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", request_id.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


# -- route dependencies ----------------------------------------------------------------------------
def get_principal(conn: HTTPConnection) -> Principal:
    principal = conn.scope.get(PRINCIPAL_KEY)
    if principal is None:
        raise CredentialsError("an API key is needed: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class Require:
    """A dependency: the request's principal, if it has ``scope`` (ForbiddenError, 403, otherwise).
    ``transcribe`` also checks the tenant's audio minutes of the day."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, conn: HTTPConnection) -> Principal:
        principal = get_principal(conn)
        principal.require(self.scope)
        if self.scope is Scope.TRANSCRIBE:
            tenants = _tenants(conn.scope)
            if tenants is not None:
                tenants.check_audio_quota(principal)
        return principal

    def __repr__(self) -> str:
        return f"Require({self.scope.value})"


TranscribeDep = Annotated[Principal, Depends(Require(Scope.TRANSCRIBE))]
ReadDep = Annotated[Principal, Depends(Require(Scope.READ))]
AdminScopeDep = Annotated[Principal, Depends(Require(Scope.ADMIN))]


def record_usage(tenants: Tenants | None, route: str, audio_seconds: float, principal: Principal | None = None) -> None:
    """Meter ``audio_seconds`` for the current request's tenant (or ``principal``'s)."""
    who = principal or current_principal.get()
    if tenants is None or who is None:
        return
    tenants.usage.record(who.tenant_id or USAGE_OPEN_TENANT, route, audio_seconds)


# -- sockets ---------------------------------------------------------------------------------------
async def authenticate_socket(ws: WebSocket) -> Principal:
    """The principal of an accepted socket, if it may transcribe.

    With a token or key in the query or headers, that decided it already. Otherwise, when keys are
    required, the first message must be ``{"type": "auth", "token": "..."}`` (a token or a key).
    Raises CredentialsError (close 4401), ForbiddenError (4403) or RateLimitedError (1013)."""
    error = ws.scope.get(_ERROR_KEY)
    if error is not None:
        raise error
    principal = ws.scope.get(PRINCIPAL_KEY)
    if principal is None:
        principal = await _first_message_auth(ws)
    principal.require(Scope.TRANSCRIBE)
    tenants = _tenants(ws.scope)
    if tenants is not None:
        await anyio.to_thread.run_sync(tenants.check_audio_quota, principal)
    ws.scope[PRINCIPAL_KEY] = principal
    current_principal.set(principal)
    return principal


async def _first_message_auth(ws: WebSocket) -> Principal:
    tenants = _tenants(ws.scope)
    assert tenants is not None
    with anyio.move_on_after(_FIRST_MESSAGE_TIMEOUT_S):
        message = await ws.receive()
        text = message.get("text")
        if message["type"] == "websocket.disconnect":
            raise CredentialsError("the connection closed before authenticating")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("type") != "auth" or not isinstance(data.get("token"), str):
            raise CredentialsError(
                "an API key is needed: connect with ?token=<a token from POST /v1/tokens, made with your API key>, "
                'or send {"type": "auth", "token": ...} as the first message'
            )
        principal = await anyio.to_thread.run_sync(tenants.authenticate, data["token"])
        assert principal.key_id is not None and principal.tenant_id is not None
        await tenants.limiter.check_request(principal.tenant_id, principal.key_id, principal.requests_per_minute)
        return principal
    raise CredentialsError(f"no credentials within {_FIRST_MESSAGE_TIMEOUT_S:g} s of connecting")
