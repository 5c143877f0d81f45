"""malsori: self-hosted speech-to-text on Whisper.

The engine is imported lazily, so ``import malsori`` (and the client) works without the
``engine`` extra installed.
"""

from __future__ import annotations

import importlib
import typing  # the module, not its names: `from typing import Any` would make Any a public name of malsori

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "MalsoriError",
    "Transcriber",
    "EngineConfig",
    "TranscribeOptions",
    "Transcript",
    "Segment",
    "Word",
    "decode_audio",
]

_LAZY = {
    "MalsoriError": "malsori.errors",
    "Transcriber": "malsori.engine",
    "EngineConfig": "malsori.engine",
    "TranscribeOptions": "malsori.engine",
    "Transcript": "malsori.engine",
    "Segment": "malsori.engine",
    "Word": "malsori.engine",
    "decode_audio": "malsori.engine",
}


def __getattr__(name: str) -> typing.Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'malsori' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
