"""The one exception hierarchy of malsori.

Every error a caller can cause or meet is a :class:`MalsoriError` with a stable ``code`` (a short
snake_case string shown to users and clients) and a readable message. Transports map these classes
to HTTP statuses and WebSocket close codes in one place (``malsori.server.errors``); the engine and
services never know about either.
"""

from __future__ import annotations

__all__ = [
    "MalsoriError",
    "InvalidOptionsError",
    "AudioError",
    "EmptyAudioError",
    "UnsupportedAudioError",
    "AudioTooLargeError",
    "AudioTooLongError",
    "ModelError",
    "ModelNotFoundError",
    "OverloadedError",
    "NotFoundError",
    "ConflictError",
    "AuthError",
    "CredentialsError",
    "ForbiddenError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ProtocolError",
]


class MalsoriError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``str(err)`` is for people."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidOptionsError(MalsoriError, ValueError):
    """An option or field has a value that cannot be used (unknown language, beam size 0, ...)."""

    code = "invalid_options"


class AudioError(MalsoriError, ValueError):
    """The audio given cannot be used."""

    code = "invalid_audio"


class EmptyAudioError(AudioError):
    """No bytes, or a container that decodes to no samples."""

    code = "empty_audio"


class UnsupportedAudioError(AudioError):
    """The bytes are not audio in a format we can decode (corrupt, or not audio at all)."""

    code = "unsupported_audio"


class AudioTooLargeError(AudioError):
    """The input is over the configured size limit (bytes)."""

    code = "audio_too_large"


class AudioTooLongError(AudioError):
    """The decoded audio is over the configured duration limit (seconds)."""

    code = "audio_too_long"


class ModelError(MalsoriError):
    """A model could not be resolved or loaded."""

    code = "model_error"


class ModelNotFoundError(ModelError, LookupError):
    """A model name or path resolves to nothing usable here; the message says what to install."""

    code = "model_not_found"


class OverloadedError(MalsoriError):
    """The service is at capacity; ``retry_after`` says when trying again is sensible (seconds)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(MalsoriError, LookupError):
    """A job, session or other resource does not exist (or is not visible to the caller)."""

    code = "not_found"


class ConflictError(MalsoriError):
    """The request conflicts with the resource's state (cancelling a finished job, ...)."""

    code = "conflict"


class AuthError(MalsoriError):
    """Missing or wrong credentials (admin key, resume token)."""

    code = "unauthorized"


class CredentialsError(AuthError):
    """No API key or token was given where one is needed, or it is unknown, revoked or expired
    (HTTP 401, WebSocket close code 4401)."""

    code = "unauthenticated"


class ForbiddenError(AuthError):
    """The key is valid but lacks the scope this needs, or acts for another tenant (HTTP 403,
    WebSocket close code 4403)."""

    code = "forbidden"


class RateLimitedError(OverloadedError):
    """A tenant's or key's limit was reached (HTTP 429 with Retry-After; close code 1013).
    ``limit`` names which one (``requests_per_minute``, ``live_sessions``, ``audio_minutes_per_day``)."""

    code = "rate_limited"

    def __init__(self, message: str, *, limit: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit = limit


class RequestTimeoutError(MalsoriError):
    """A request body stopped arriving (a slow or stalled upload): HTTP 408."""

    code = "request_timeout"


class ProtocolError(MalsoriError):
    """A streaming client broke the wire protocol (bad JSON, unknown message, audio before start)."""

    code = "protocol_error"
