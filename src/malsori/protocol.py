"""What the server and the client of the live WebSocket protocols must agree on: the close codes.

The server closes a socket with :func:`close_code` of the error that ended it; a client that saw only
the close (no ``error`` event before it) raises :func:`error_for_close_code`'s class. Both read the
one table below, so a code cannot mean one thing on one side and another on the other
(docs/protocol.md, "Close codes"). This module imports only :mod:`malsori.errors`, so the client
uses it without the server extras.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import (
    AudioError,
    AudioTooLargeError,
    AuthError,
    ConflictError,
    CredentialsError,
    ForbiddenError,
    InvalidOptionsError,
    MalsoriError,
    ModelError,
    NotFoundError,
    OverloadedError,
    ProtocolError,
    UnsupportedAudioError,
)

__all__ = ["CloseCode", "CLOSE_CODES", "RESUMABLE_CLOSE_CODES", "close_code", "error_for_close_code"]


class CloseCode(IntEnum):
    """RFC 6455 / IANA WebSocket close codes that malsori sends or a client meets."""

    NORMAL = 1000
    """After the session's ``end`` event."""
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    """Audio in the wrong format."""
    ABNORMAL = 1006
    """Never sent: what a client sees when the TCP link dies without a close frame."""
    POLICY_VIOLATION = 1008
    """The protocol was broken, a value is invalid, a resume was refused, or the session was taken over."""
    MESSAGE_TOO_BIG = 1009
    """A frame over ``streaming.max_frame_bytes``."""
    INTERNAL_ERROR = 1011
    """A server bug."""
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    """Refused for now: the session limit, a saturated decoder, the model still loading."""
    BAD_GATEWAY = 1014
    UNAUTHENTICATED = 4401
    """No valid API key or token (the HTTP 401 of a socket): get a token from ``POST /v1/tokens``."""
    FORBIDDEN = 4403
    """The key or token lacks the ``transcribe`` scope (the HTTP 403 of a socket)."""


# Most specific class first: the first isinstance match wins (NotReadyError is an OverloadedError).
# Read backwards, the first class listed for a code is what a client raises for that code alone.
CLOSE_CODES: tuple[tuple[type[MalsoriError], CloseCode], ...] = (
    (OverloadedError, CloseCode.TRY_AGAIN_LATER),
    (AudioTooLargeError, CloseCode.MESSAGE_TOO_BIG),
    (UnsupportedAudioError, CloseCode.UNSUPPORTED_DATA),
    (AudioError, CloseCode.UNSUPPORTED_DATA),
    (CredentialsError, CloseCode.UNAUTHENTICATED),
    (ForbiddenError, CloseCode.FORBIDDEN),
    (ProtocolError, CloseCode.POLICY_VIOLATION),
    (InvalidOptionsError, CloseCode.POLICY_VIOLATION),
    (AuthError, CloseCode.POLICY_VIOLATION),
    (NotFoundError, CloseCode.POLICY_VIOLATION),
    (ConflictError, CloseCode.POLICY_VIOLATION),
    (ModelError, CloseCode.TRY_AGAIN_LATER),
)

RESUMABLE_CLOSE_CODES: frozenset[int | None] = frozenset(
    {None, CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART, CloseCode.BAD_GATEWAY}
)
"""Closes that mean the link broke, not that the server ended the session: a client should resume.
``None``: the connection ended without any close frame received."""


def close_code(exc: BaseException) -> CloseCode:
    """The code a server closes with after ``exc``: 1008 for any other malsori error (the caller's
    fault), 1011 for anything else (ours)."""
    for cls, code in CLOSE_CODES:
        if isinstance(exc, cls):
            return code
    return CloseCode.POLICY_VIOLATION if isinstance(exc, MalsoriError) else CloseCode.INTERNAL_ERROR


def error_for_close_code(code: int | None, reason: str) -> MalsoriError:
    """The error for a connection closed with ``code`` and no ``error`` event before it."""
    message = reason or f"the server closed the connection (code {code})"
    for cls, known in CLOSE_CODES:
        if known == code:
            return cls(message)
    if code == CloseCode.INTERNAL_ERROR:
        return MalsoriError(message, code="internal_error")
    return MalsoriError(message, code="server_closed")
