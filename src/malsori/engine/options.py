"""Decoding options, validated once with messages a person understands."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidOptionsError

__all__ = ["TranscribeOptions", "LANGUAGES", "TASKS", "normalize_language"]

TASKS = ("transcribe", "translate")


def _languages() -> dict[str, str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # the codes Whisper's tokenizer knows

    return {code: code for code in _LANGUAGE_CODES}


LANGUAGES: tuple[str, ...] = tuple(sorted(_languages()))


def normalize_language(language: str | None) -> str | None:
    """``None``/``""``/``auto`` mean detect; otherwise a Whisper language code (``en``, ``de``, ...), in
    any case. A language tag with a region or script, as browsers give it (``navigator.language``:
    ``ko-KR``, ``en_US``, ``zh-Hant-TW``), is taken as its language: Whisper has one model of each."""
    if language is None:
        return None
    if not isinstance(language, str):  # a client's JSON may carry anything (tests/test_fuzz_keyed.py)
        raise InvalidOptionsError(f"language must be a language code such as en, not {language!r}")
    code = language.strip().lower()
    if code in ("", "auto", "detect"):
        return None
    code = code.replace("_", "-").split("-", 1)[0] if code not in LANGUAGES else code
    if code not in LANGUAGES:
        raise InvalidOptionsError(
            f"unknown language {language!r}: use a Whisper language code such as en, de, es, ja, "
            "or leave it out to detect the language"
        )
    return code


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode. Build with keyword arguments; invalid values raise InvalidOptionsError."""

    language: str | None = None
    """Language code, or None to detect it."""
    task: str = "transcribe"
    """``transcribe`` keeps the spoken language; ``translate`` outputs English."""
    languages: tuple[str, ...] | None = None
    """Without ``language``: the languages the audio may be in (OpenAI's ``languages``; a Korean meeting
    with English in it: ``("ko", "en")``). A window is read in the most likely of them that detection
    finds, never in another. None: any language."""
    initial_prompt: str | None = None
    """Text that precedes the audio (names, spelling, style)."""
    hotwords: str | None = None
    """Words to favour, passed to the decoder as a prefix hint."""
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    """Temperature fallback: the next step is tried when a decode looks wrong (repetitive, unlikely), with
    Whisper's rules. Deterministic: a step above 0 is a beam decode that departs further from the plain
    one the higher its temperature (repetition penalty 1 + t/4; above 0.5 no repeated 4-token run and
    no context decoded before the window), not sampling, so the same window in the same batch always gives the same text
    (``transcriber.fallback_decode``)."""
    best_of: int = 5
    """Beam width of the fallback steps (at least ``beam_size``): the hypotheses Whisper's sampling drew."""
    vad_filter: bool = True
    """Skip non-speech with the Silero VAD before decoding (long inputs are always split at pauses)."""
    word_timestamps: bool = False
    without_timestamps: bool = False
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    encoder_padding_s: float | None = None
    """Silence after a window's speech in its encoder input, in seconds (malsori encodes a window at its
    own length, not Whisper's 30 s: see :mod:`malsori.engine.transcriber`). None: the engine's default,
    2 s. The ``korean`` live preset sets 3 s (measured, ``streaming.config.PRESETS``)."""
    condition_on_previous_text: bool = False
    """Within one long input, windows after the first of their run are decoded with the tokens the model
    decoded before them (the input's windows go in contiguous runs side by side, so batches stay full;
    see :mod:`malsori.engine.pipeline`). On the 237 s LJ Speech concatenation: WER 3.4% against 4.4%
    without, at about the same speed (13.8 s vs 12.6 s; faster-whisper 3.9% in 24.6 s); docs/benchmarks.md.
    Still off by default: the streamed HTTP transcription then sends the rest of an input in steps,
    not as one submission, which its tests and latency figures pin."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", normalize_language(self.language))
        if self.languages is not None:
            if isinstance(self.languages, str):
                raise InvalidOptionsError("languages must be a list of language codes such as ['ko', 'en']")
            codes = tuple(dict.fromkeys(c for c in (normalize_language(x) for x in self.languages) if c))
            object.__setattr__(self, "languages", codes or None)
            if self.language is None and len(codes) == 1:  # one possible language is the language
                object.__setattr__(self, "language", codes[0])
        if self.task not in TASKS:
            raise InvalidOptionsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if not 1 <= self.beam_size <= 20:
            raise InvalidOptionsError(f"beam_size must be between 1 and 20, not {self.beam_size}")
        if not 1 <= self.best_of <= 20:
            raise InvalidOptionsError(f"best_of must be between 1 and 20, not {self.best_of}")
        temps = tuple(float(t) for t in (self.temperatures or (0.0,)))
        if any(not 0.0 <= t <= 2.0 for t in temps):
            raise InvalidOptionsError("temperatures must each be between 0 and 2")
        object.__setattr__(self, "temperatures", temps)
        if self.encoder_padding_s is not None and not 0.5 <= self.encoder_padding_s <= 10.0:
            raise InvalidOptionsError(f"encoder_padding_s must be between 0.5 and 10, not {self.encoder_padding_s}")
        for name in ("initial_prompt", "hotwords"):
            value = getattr(self, name)
            if value is not None and len(value) > 2000:
                raise InvalidOptionsError(f"{name} is too long ({len(value)} characters, at most 2000)")

    def with_(self, **changes) -> TranscribeOptions:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
