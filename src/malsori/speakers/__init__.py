"""Speaker diarization: who speaks when, and which speaker said each word. Pure of HTTP.

- :class:`Diarizer` (:mod:`.pipeline`): a whole recording -> :class:`Diarization` (speaker turns),
  the number of speakers found or bounded by :class:`DiarizeOptions`.
- :func:`attribute` (:mod:`.assign`): a transcript's words and segments given their speakers.
- :class:`OnlineSpeakers` (:mod:`.online`): live sessions, one embedding per final, clustered as they come.
- :func:`shared_diarizer`: the process's one diarizer, loaded on first use (about 0.5 s, 21 MB of ONNX).
"""

from __future__ import annotations

import threading

from .assign import attribute
from .pipeline import Diarization, DiarizeOptions, Diarizer, Turn, speaker_label

__all__ = [
    "Diarizer",
    "DiarizeOptions",
    "Diarization",
    "Turn",
    "attribute",
    "speaker_label",
    "shared_diarizer",
]

_lock = threading.Lock()
_shared: Diarizer | None = None


def shared_diarizer() -> Diarizer:
    """The process's one :class:`Diarizer` (ONNX sessions are read-only and thread-safe), loaded on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = Diarizer()
        return _shared
