"""The Python client of malsori: live streaming over ``/v1/stream`` and the file API over HTTP.

It depends only on ``httpx`` and ``websockets`` (the core install) and the public wire protocols,
never on the engine, so ``pip install malsori`` is enough to use it against a remote server.
"""

from .errors import ConnectionFailedError
from .events import (
    EndEvent,
    ErrorEvent,
    FinalEvent,
    LanguageEvent,
    PartialEvent,
    ReadyEvent,
    StatsEvent,
    StreamEvent,
    Word,
    parse_event,
)
from .http import HttpClient, Job, Transcription, TranscriptionSegment
from .stream import ENCODINGS, AsyncStreamClient, ReconnectPolicy, StreamOptions
from .sync import StreamClient

__all__ = [
    "AsyncStreamClient",
    "StreamClient",
    "StreamOptions",
    "ReconnectPolicy",
    "ENCODINGS",
    "StreamEvent",
    "ReadyEvent",
    "PartialEvent",
    "FinalEvent",
    "LanguageEvent",
    "ErrorEvent",
    "EndEvent",
    "StatsEvent",
    "Word",
    "parse_event",
    "HttpClient",
    "Transcription",
    "TranscriptionSegment",
    "Job",
    "ConnectionFailedError",
]
