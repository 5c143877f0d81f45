"""The engine: audio arrays in, typed transcripts out. Knows Whisper; knows nothing of the web."""

from .audio import SAMPLE_RATE, AudioLimits, decode_audio, float32_to_pcm16, pcm_to_float32, wav_bytes
from .decoder import WindowDecoder, decode_async, decode_now
from .models import ModelInfo, list_models, resolve_model
from .options import LANGUAGES, TranscribeOptions
from .pipeline import Pipeline
from .transcriber import EngineConfig, Transcriber
from .types import Segment, Transcript, Word
from .windows import MAX_WINDOW_S, Window, WindowResult, speech_regions

__all__ = [
    "SAMPLE_RATE",
    "AudioLimits",
    "decode_audio",
    "pcm_to_float32",
    "float32_to_pcm16",
    "wav_bytes",
    "ModelInfo",
    "list_models",
    "resolve_model",
    "LANGUAGES",
    "TranscribeOptions",
    "EngineConfig",
    "Transcriber",
    "WindowDecoder",
    "decode_now",
    "decode_async",
    "Pipeline",
    "Window",
    "WindowResult",
    "MAX_WINDOW_S",
    "speech_regions",
    "Segment",
    "Transcript",
    "Word",
]
