"""Turning what the server says (error codes, HTTP bodies) into malsori's errors.

The client raises the same :mod:`malsori.errors` classes the server raised, found by their stable
``code``; only failures that exist on the client's side alone (the server cannot be reached, a session
could not be resumed in time) get classes of their own here. A WebSocket close without an error
event is mapped by :func:`malsori.protocol.error_for_close_code`, from the table the server closes by.
"""

from __future__ import annotations

from .. import errors as _errors
from ..errors import MalsoriError, OverloadedError

__all__ = ["ConnectionFailedError", "error_for_code"]


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


def error_for_code(code: str, message: str) -> MalsoriError:
    """The malsori error class whose ``code`` is ``code`` (MalsoriError when unknown), instantiated."""
    if code == "not_ready":  # the server is still loading its model: the same advice as overloaded
        return OverloadedError(message)
    cls = _BY_CODE.get(code, MalsoriError)
    if cls is MalsoriError:
        return MalsoriError(message, code=code)
    return cls(message)
