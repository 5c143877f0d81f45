"""Task arguments and replies as JSON; window audio by reference (a Redis key), never in the message.

A window's samples (float32, up to 28 s: 1.8 MB) are written once to ``<prefix>:audio:<id>`` with a
time to live; the task carries the key and the window's small fields. The same float32 samples reach
the model, so a window decodes to the same text on a worker as in-process. Jobs need none of this:
their audio is the upload in shared storage, and the task carries the job id only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..engine.options import TranscribeOptions
from ..engine.types import Segment, Word
from ..engine.windows import Window, WindowResult

__all__ = ["options_to_dict", "options_from_dict", "result_to_dict", "result_from_dict", "AudioStore"]


def options_to_dict(options: TranscribeOptions) -> dict[str, Any]:
    data = asdict(options)
    data["temperatures"] = list(options.temperatures)
    return data


def options_from_dict(data: dict[str, Any]) -> TranscribeOptions:
    return TranscribeOptions(**{**data, "temperatures": tuple(data.get("temperatures") or (0.0,))})


def _segment_to_dict(seg: Segment) -> dict[str, Any]:
    data = asdict(seg)
    data["words"] = None if seg.words is None else [asdict(w) for w in seg.words]
    data["tokens"] = list(seg.tokens)
    return data


def _segment_from_dict(data: dict[str, Any]) -> Segment:
    words = data.get("words")
    return Segment(
        **{k: v for k, v in data.items() if k not in ("words", "tokens")},
        words=None if words is None else tuple(Word(**w) for w in words),
        tokens=tuple(data.get("tokens") or ()),
    )


def result_to_dict(result: WindowResult) -> dict[str, Any]:
    return {
        "segments": [_segment_to_dict(s) for s in result.segments],
        "language": result.language,
        "language_probability": result.language_probability,
        "no_speech_prob": result.no_speech_prob,
        "avg_logprob": result.avg_logprob,
        "compression_ratio": result.compression_ratio,
        "temperature": result.temperature,
        "tokens": list(result.tokens),
    }


def result_from_dict(data: dict[str, Any]) -> WindowResult:
    return WindowResult(
        segments=tuple(_segment_from_dict(s) for s in data["segments"]),
        language=data["language"],
        language_probability=float(data["language_probability"]),
        no_speech_prob=float(data["no_speech_prob"]),
        avg_logprob=float(data["avg_logprob"]),
        compression_ratio=float(data["compression_ratio"]),
        temperature=float(data["temperature"]),
        tokens=tuple(data.get("tokens") or ()),
    )


class AudioStore:
    """Window audio in Redis under ``<prefix>:audio:<id>``, kept ``ttl_s`` (a request's whole life)."""

    def __init__(self, redis_client: Any, prefix: str, ttl_s: float) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def put(self, windows: Sequence[Window]) -> list[dict[str, Any]]:
        """Store each window's samples; the references the task carries (key plus the small fields)."""
        refs = []
        pipe = self.redis.pipeline()
        for window in windows:
            key = f"{self.prefix}:audio:{uuid.uuid4().hex}"
            pipe.set(key, np.ascontiguousarray(window.audio, dtype=np.float32).tobytes(), px=int(self.ttl_s * 1000))
            refs.append(
                {
                    "key": key,
                    "offset": window.offset,
                    "prompt": window.prompt,
                    "prompt_tokens": list(window.prompt_tokens),
                    "language": window.language,
                    "words": window.words,
                    "fallback": window.fallback,
                    "prefix": window.prefix,
                }
            )
        pipe.execute()
        return refs

    def get(self, refs: Sequence[dict[str, Any]]) -> list[Window]:
        """The windows back; LookupError when an audio key has expired (or Redis lost it in a restart)."""
        raws = self.redis.mget([r["key"] for r in refs])
        windows = []
        for ref, raw in zip(refs, raws, strict=True):
            if raw is None:
                raise LookupError(f"the audio of a window ({ref['key']}) is gone from Redis (expired or lost in a restart)")
            audio = np.frombuffer(raw, dtype=np.float32).copy()
            fields = {k: ref[k] for k in ("offset", "prompt", "language", "words", "fallback")}
            fields["prefix"] = ref.get("prefix")  # absent in windows queued by an older gateway
            windows.append(Window(audio, **fields, prompt_tokens=tuple(ref.get("prompt_tokens") or ())))
        return windows

    def delete(self, refs: Sequence[dict[str, Any]]) -> None:
        if refs:
            self.redis.delete(*[r["key"] for r in refs])
