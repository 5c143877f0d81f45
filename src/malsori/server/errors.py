"""The one place that maps malsori's exceptions to HTTP statuses and WebSocket close codes.

Every error response has the body ``{"error": {"code": ..., "message": ...}}``. Bad input is a 4xx,
never a 500: FastAPI's own validation errors (422) and HTTP exceptions (404, 405, ...) are re-shaped to
the same body. Streaming handlers use :func:`ws_close_code` to close a socket with the right code, from
the close-code table the client reads too (:mod:`malsori.protocol`).
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
    AuthError,
    ConflictError,
    EmptyAudioError,
    ForbiddenError,
    InvalidOptionsError,
    MalsoriError,
    ModelError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    ProtocolError,
    RateLimitedError,
    RequestTimeoutError,
    UnsupportedAudioError,
)
from ..protocol import close_code
from .services import NotReadyError

__all__ = [
    "http_status",
    "ws_close_code",
    "error_body",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger(__name__)

# Most specific class first: the first isinstance match wins.
_HTTP_STATUS: tuple[tuple[type[MalsoriError], int], ...] = (
    (NotReadyError, 503),
    (OverloadedError, 429),
    (EmptyAudioError, 400),
    (AudioTooLargeError, 413),
    (AudioTooLongError, 413),
    (UnsupportedAudioError, 415),
    (AudioError, 400),
    (InvalidOptionsError, 422),
    (ModelNotFoundError, 422),
    (ModelError, 503),
    (NotFoundError, 404),
    (ConflictError, 409),
    (RequestTimeoutError, 408),
    (ForbiddenError, 403),
    (AuthError, 401),
    (ProtocolError, 400),
)


def http_status(exc: BaseException) -> int:
    """HTTP status for an exception: 4xx for anything a caller caused, 500 only for our own bugs."""
    for cls, status in _HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, MalsoriError) else 500


def ws_close_code(exc: BaseException) -> int:
    """WebSocket close code for an exception (1003, 1008, 1009, 1011 or 1013)."""
    return int(close_code(exc))


def error_body(code: str, message: str, **extra: object) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(exc: MalsoriError) -> JSONResponse:
    headers = {}
    extra: dict[str, object] = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, RateLimitedError):
        extra["limit"] = exc.limit
    if http_status(exc) == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="malsori"'
    return JSONResponse(error_body(exc.code, exc.message, **extra), status_code=http_status(exc), headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON body."""

    @app.exception_handler(MalsoriError)
    async def _malsori(request: Request, exc: MalsoriError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", _validation_message(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "the server failed to handle this request"), status_code=500)
