"""Logging of ``malsori serve``: request ids on every line, secrets masked, text or JSON lines.

:func:`configure` installs one handler on the root logger; uvicorn's loggers propagate to it (the CLI
gives uvicorn no logging config of its own), so its access and WebSocket lines (which carry query
strings, ``?token=...`` included) go through the same masking. :class:`MaskingFormatter` replaces,
in the final line (tracebacks included):

- API keys (``msk_<id>_<secret>`` → ``msk_<id>_***``: the id stays, to tell keys apart),
- WebSocket tokens (``mst_...`` → ``mst_***``),
- ``Bearer <anything>``, and ``token=`` / ``api_key=`` / ``resume_token`` values in query strings
  and JSON.

Transcript text is never logged by malsori's own code (tests/test_tenants.py greps a run's log for
it); nothing here can recognise text, so the rule is kept at the source.

:data:`request_id` is the current request's id (set by ``server.auth.AuthMiddleware``), shown as
``[rid]`` in text lines and ``request_id`` in JSON lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from typing import IO

__all__ = ["configure", "mask", "MaskingFormatter", "JsonFormatter", "RequestIdFilter", "request_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("malsori_request_id", default=None)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(msk_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), r"\1***"),
    (re.compile(r"\bmst_[A-Za-z0-9_.-]+"), "mst_***"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), r"\1***"),
    (re.compile(r"(?i)\b((?:token|api_key|resume_token|x-api-key)=)[^\s&\"',;]+"), r"\1***"),
    (re.compile(r"(?i)(\"(?:token|api_key|resume_token|secret)\"\s*:\s*\")[^\"]*"), r"\1***"),
)


def mask(text: str) -> str:
    """``text`` with keys, tokens and bearer credentials replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RequestIdFilter(logging.Filter):
    """Gives every record ``request_id`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": mask(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = mask(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level``, as ``text`` or ``json`` lines, masked; the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
