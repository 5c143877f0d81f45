"""Turning what the server says (error codes, WebSocket close codes, HTTP bodies) into malsori's errors.

The client raises the same :mod:`malsori.errors` classes the server raised, found by their stable
``code``; only failures that exist on the client's side alone (the server cannot be reached, a session
could not be resumed in time) get classes of their own here.
"""

from __future__ import annotations

from .. import errors as _errors
from ..errors import MalsoriError, OverloadedError, ProtocolError

__all__ = ["ConnectionFailedError", "error_for_code", "error_for_close"]


class ConnectionFailedError(MalsoriError):
    """The server could not be reached, or a dropped session could not be resumed in time."""

    code = "connection_failed"


def _classes_by_code() -> dict[str, type[MalsoriError]]:
    found: dict[str, type[MalsoriError]] = {}
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        if isinstance(cls, type) and issubclass(cls, MalsoriError):
            found.setdefault(cls.code, cls)
    return found


_BY_CODE = _classes_by_code()

# RFC 6455 / IANA close codes the server uses, for when no error event said more.
_BY_CLOSE = {
    1003: ProtocolError,  # unsupported data (text where audio was expected, wrong sample format)
    1007: ProtocolError,  # invalid payload (bad JSON)
    1008: ProtocolError,  # policy violation (bad resume token, broken protocol)
    1009: ProtocolError,  # frame too big
    1013: OverloadedError,  # try again later: the server refuses new sessions when saturated
}


def error_for_code(code: str, message: str) -> MalsoriError:
    """The malsori error class whose ``code`` is ``code`` (MalsoriError when unknown), instantiated."""
    if code == "not_ready":  # the server is still loading its model: the same advice as overloaded
        return OverloadedError(message)
    cls = _BY_CODE.get(code, MalsoriError)
    if cls is MalsoriError:
        return MalsoriError(message, code=code)
    return cls(message)


def error_for_close(close_code: int | None, reason: str) -> MalsoriError:
    """An error for a connection the server closed with ``close_code`` and no error event before it."""
    message = reason or f"the server closed the connection (code {close_code})"
    cls = _BY_CLOSE.get(close_code or 0)
    if cls is None:
        return MalsoriError(message, code="server_closed")
    return cls(message)
