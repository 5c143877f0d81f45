"""How live windows and their results travel between a gateway and a worker (one Redis list item each).

A request is ``4-byte header length | JSON header | float32 audio of every window, back to back``:
the audio goes as raw bytes (a 10 s window is 640 kB; as JSON numbers it would be about four times
that and slow to parse). A reply is JSON. Nothing is pickled, so a Redis shared with other software
cannot make a worker run code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..engine.options import TranscribeOptions
from ..engine.types import Segment, Word
from ..engine.windows import Window, WindowResult

__all__ = ["WindowRequest", "encode_request", "decode_request", "encode_reply", "decode_reply", "options_key"]

_LENGTH = struct.Struct("<I")
_WINDOW_FIELDS = ("offset", "prompt", "prompt_tokens", "language", "words", "fallback", "prefix")


@dataclass(frozen=True)
class WindowRequest:
    """Windows to decode with one set of options; the reply goes to the list ``reply_to``."""

    id: str
    reply_to: str
    deadline: float
    """``time.time()`` after which the gateway no longer waits for the answer (a worker skips it)."""
    options: TranscribeOptions
    windows: tuple[Window, ...]
    sent: float = 0.0
    """``time.time()`` when the gateway queued it (for the hop's figures)."""


def options_key(options: TranscribeOptions) -> str:
    """Equal for options a worker may decode in one batch."""
    return json.dumps(asdict(options), sort_keys=True)


def encode_request(request: WindowRequest) -> bytes:
    header = {
        "id": request.id,
        "reply_to": request.reply_to,
        "deadline": request.deadline,
        "sent": request.sent,
        "options": asdict(request.options),
        "windows": [{**{name: getattr(w, name) for name in _WINDOW_FIELDS}, "samples": len(w.audio)} for w in request.windows],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    audio = b"".join(np.ascontiguousarray(w.audio, dtype=np.float32).tobytes() for w in request.windows)
    return _LENGTH.pack(len(head)) + head + audio


def decode_request(data: bytes) -> WindowRequest:
    (length,) = _LENGTH.unpack_from(data)
    header = json.loads(data[_LENGTH.size : _LENGTH.size + length])
    audio = np.frombuffer(data, dtype=np.float32, offset=_LENGTH.size + length)
    options = header["options"]
    options["temperatures"] = tuple(options["temperatures"])
    windows, position = [], 0
    for w in header["windows"]:
        n = int(w.pop("samples"))
        w["prompt_tokens"] = tuple(w.get("prompt_tokens") or ())
        windows.append(Window(audio[position : position + n], **w))
        position += n
    if position != len(audio):
        raise ValueError(f"window request {header['id']!r}: {len(audio)} samples of audio, the header counts {position}")
    return WindowRequest(
        header["id"], header["reply_to"], float(header["deadline"]), TranscribeOptions(**options), tuple(windows),
        float(header.get("sent", 0.0)),
    )  # fmt: skip


def _result_dict(result: WindowResult) -> dict:
    data = asdict(result)
    data["tokens"] = list(result.tokens)
    return data


def _result(data: dict) -> WindowResult:
    segments = []
    for s in data["segments"]:
        words = s.get("words")
        s = {**s, "tokens": tuple(s.get("tokens") or ()), "words": None if words is None else tuple(Word(**w) for w in words)}
        segments.append(Segment(**{f.name: s[f.name] for f in fields(Segment) if f.name in s}))
    return WindowResult(**{**data, "segments": tuple(segments), "tokens": tuple(data.get("tokens") or ())})


def encode_reply(
    request_id: str, results: Sequence[WindowResult] | None = None, *, worker: str, error: tuple[str, str] | None = None,
    decode_ms: float = 0.0,
) -> bytes:  # fmt: skip
    """``results`` (one per window, in order), or ``error`` as (code, message)."""
    data: dict = {"id": request_id, "worker": worker, "decode_ms": round(decode_ms, 2)}
    if error is not None:
        data["error"] = {"code": error[0], "message": error[1]}
    else:
        data["results"] = [_result_dict(r) for r in results or ()]
    return json.dumps(data, separators=(",", ":")).encode()


def decode_reply(data: bytes) -> tuple[str, list[WindowResult] | None, dict | None, dict]:
    """(request id, results or None, error or None, the whole reply for its facts)."""
    reply = json.loads(data)
    results = [_result(r) for r in reply["results"]] if "results" in reply else None
    return reply["id"], results, reply.get("error"), reply
