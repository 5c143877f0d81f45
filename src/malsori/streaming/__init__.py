"""Live transcription as pure logic: PCM in, typed events out (no I/O, no asyncio, no web)."""

from .config import PRESETS, AdvancedStreamConfig, StreamConfig
from .events import End, Error, Event, Final, Language, Partial, Ready, WordTiming
from .manager import LiveSession, LoadSnapshot, SessionManager
from .session import DecodeRequest, StreamingSession
from .vad import EnergyVad, StreamingVad

__all__ = [
    "StreamConfig",
    "AdvancedStreamConfig",
    "PRESETS",
    "StreamingSession",
    "DecodeRequest",
    "Event",
    "Ready",
    "Partial",
    "Final",
    "Language",
    "Error",
    "End",
    "WordTiming",
    "SessionManager",
    "LiveSession",
    "LoadSnapshot",
    "StreamingVad",
    "EnergyVad",
]
