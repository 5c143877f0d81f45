"""Is this chunk speech? Two detectors behind one small interface, no transport in sight.

- :class:`SileroDetector` (default): the Silero VAD that faster-whisper ships as ONNX. Frame-level
  speech probabilities every 32 ms; speech regions from faster-whisper's own region logic. Cheap.
- :class:`WhisperDetector`: one greedy decode with Whisper ``tiny.en`` and its no-speech probability,
  the original design's choice. Also returns the text it heard, and regions from its timestamps.

Both return a :class:`SpeechDecision`. ``bench/detect.py`` measures their accuracy and cost
(docs/benchmarks.md, "Speech detection").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .engine.audio import SAMPLE_RATE
from .engine.decoder import WindowDecoder, decode_now
from .engine.options import TranscribeOptions
from .engine.windows import Window
from .errors import EmptyAudioError, InvalidOptionsError

__all__ = [
    "DETECTORS",
    "SpeechRegion",
    "SpeechDecision",
    "SpeechDetector",
    "SileroDetector",
    "WhisperDetector",
    "Detectors",
]

DETECTORS = ("silero", "whisper")

_FRAME = 512  # Silero's frame at 16 kHz (32 ms)


@dataclass(frozen=True)
class SpeechRegion:
    start: float
    end: float


@dataclass(frozen=True)
class SpeechDecision:
    """The answer for one chunk. ``probability`` is the detector's speech probability in [0, 1]."""

    is_speech: bool
    probability: float
    regions: tuple[SpeechRegion, ...]
    detector: str
    duration: float
    processing_time: float
    threshold: float
    text: str | None = None
    """What Whisper heard (whisper detector only)."""
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        data = {
            "is_speech": self.is_speech,
            "probability": round(self.probability, 4),
            "threshold": self.threshold,
            "detector": self.detector,
            "speech_regions": [{"start": round(r.start, 3), "end": round(r.end, 3)} for r in self.regions],
            "duration": round(self.duration, 3),
            "processing_time": round(self.processing_time, 4),
        }
        if self.text is not None:
            data["text"] = self.text
        return data


class SpeechDetector(Protocol):
    name: str
    default_threshold: float

    def detect(self, audio: np.ndarray, threshold: float | None = None) -> SpeechDecision: ...


def _check(audio: np.ndarray, threshold: float | None, default: float) -> float:
    if audio.size == 0:
        raise EmptyAudioError("the chunk holds no samples")
    threshold = default if threshold is None else float(threshold)
    if not 0.0 < threshold < 1.0:
        raise InvalidOptionsError(f"threshold must be between 0 and 1 (exclusive), not {threshold}")
    return threshold


class SileroDetector:
    """Speech when Silero finds at least one region of 250 ms or more above ``threshold``.

    ``probability`` is the highest frame probability: a chunk with any clear speech in it scores
    near 1 even when most of it is silence, which is what "is there speech in this chunk" asks.
    """

    name = "silero"
    default_threshold = 0.5

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._model = get_vad_model()  # cached by faster-whisper; the ONNX session is thread-safe

    def detect(self, audio: np.ndarray, threshold: float | None = None) -> SpeechDecision:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        threshold = _check(audio, threshold, self.default_threshold)
        started = time.perf_counter()
        audio = np.asarray(audio, dtype=np.float32)
        padded = np.pad(audio, (0, (-len(audio)) % _FRAME))
        probs = self._model(padded).reshape(-1)
        options = VadOptions(threshold=threshold, min_silence_duration_ms=300, speech_pad_ms=100)
        stamps = get_speech_timestamps(audio, options)
        regions = tuple(SpeechRegion(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps)
        return SpeechDecision(
            is_speech=bool(regions),
            probability=float(probs.max()) if probs.size else 0.0,
            regions=regions,
            detector=self.name,
            duration=len(audio) / SAMPLE_RATE,
            processing_time=time.perf_counter() - started,
            threshold=threshold,
        )


class WhisperDetector:
    """Speech when Whisper's no-speech probability is under ``1 - threshold`` and it heard words.

    One greedy pass without temperature fallback or the engine's own silence filtering, so the raw
    no-speech probability of the first decoding step decides. ``decoder`` gives the
    :class:`~malsori.engine.decoder.WindowDecoder` of one detection (the server: a lane of a scheduler over
    the tiny.en model, one owner per call so concurrent calls are batched fairly; tests: the model).
    """

    name = "whisper"
    default_threshold = 0.5
    options = TranscribeOptions(
        language="en",
        beam_size=1,
        temperatures=(0.0,),
        vad_filter=False,
        no_speech_threshold=None,
        log_prob_threshold=None,
        compression_ratio_threshold=None,
        condition_on_previous_text=False,
    )

    def __init__(self, decoder: Callable[[], WindowDecoder]) -> None:
        self._decoder = decoder

    def detect(self, audio: np.ndarray, threshold: float | None = None) -> SpeechDecision:
        threshold = _check(audio, threshold, self.default_threshold)
        started = time.perf_counter()
        duration = len(audio) / SAMPLE_RATE
        # Whisper reads at most 30 s; a longer chunk is judged on its first 30 s.
        window = Window(np.asarray(audio[: 30 * SAMPLE_RATE], dtype=np.float32))
        (result,) = decode_now(self._decoder(), [window], self.options)
        probability = 1.0 - float(result.no_speech_prob)
        text = result.text.strip()
        is_speech = probability >= threshold and bool(text)
        regions = tuple(SpeechRegion(s.start, min(s.end, duration)) for s in result.segments) if is_speech else ()
        return SpeechDecision(
            is_speech=is_speech,
            probability=probability,
            regions=regions,
            detector=self.name,
            duration=duration,
            processing_time=time.perf_counter() - started,
            threshold=threshold,
            text=text if is_speech else "",
        )


class Detectors:
    """Both detectors of one server. The Whisper one loads its model on first use (about 75 MB)."""

    def __init__(self, whisper_factory: Callable[[], WhisperDetector]) -> None:
        self.silero = SileroDetector()
        self._whisper_factory = whisper_factory
        self._whisper: WhisperDetector | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> SpeechDetector:
        if name == "silero":
            return self.silero
        if name == "whisper":
            with self._lock:
                if self._whisper is None:
                    self._whisper = self._whisper_factory()
                return self._whisper
        raise InvalidOptionsError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")
