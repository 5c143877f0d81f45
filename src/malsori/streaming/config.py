"""How a live session cuts speech into windows and when it settles text: presets and overrides.

A preset sets the values that trade latency against accuracy (:data:`PRESETS`); every other knob has
one value for all presets and sits in :class:`AdvancedStreamConfig` (``StreamConfig.advanced``).
Both kinds are overridden by name, flat, as the ``start`` message's ``options`` carries them:
``StreamConfig.from_preset("balanced", endpoint_s=0.4, commit_holdback_s=0.8)``. The whole set is
validated once, here, with messages a person understands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..engine.options import TASKS, TranscribeOptions, normalize_language
from ..errors import InvalidOptionsError
from .sentences import SEGMENTATIONS

__all__ = ["StreamConfig", "AdvancedStreamConfig", "PRESETS"]

VAD_HYSTERESIS = 0.15
"""Speech goes on while the Silero probability stays above ``vad_threshold`` less this: one low
32 ms chunk inside a word does not end the speech."""
LAGGING_HOLDBACK_MIN_S = 1.0
"""A lagging session finalizes words with at least this much audio after them (Whisper no longer
revises those); see :attr:`AdvancedStreamConfig.lagging_holdback_s`."""


def _check(*checks: tuple[bool, str]) -> None:
    for ok, message in checks:
        if not ok:
            raise InvalidOptionsError(message)


@dataclass(frozen=True)
class AdvancedStreamConfig:
    """Knobs with one value for every preset: overridable like the others, rarely worth it."""

    soft_after_s: float = 3.0
    """Speech this long before a pause can be settled at the pause (``reuse_candidates``). It counts the
    speech since the last full pause, the words finalized early (``commit_after_s``) included."""
    reuse_candidates: bool = True
    """A phrase of ``soft_after_s`` or more whose speculative final decode covers its speech up to a pause
    of ``pad_s`` is finalized with that decode as soon as both hold, without waiting for ``endpoint_s``:
    whether the pause goes on (that decode is then the final) or speech resumes (it is kept as the final
    of the speech before the pause), the text is the same, only sooner."""
    context_chars: int = 200
    """Text settled earlier in the same speech (before a short pause, or finalized early) is the prompt
    of the decodes of the rest, up to this many characters (0: off)."""
    commit_after_s: float = 3.0
    """Once this much of a phrase is unsettled, partial decodes carry word timings and the words two
    consecutive hypotheses agree on are finalized before the pause (0: only at pauses and cuts)."""
    commit_holdback_s: float = 0.6
    """Words ending this close to the newest audio are never finalized early (Whisper still revises them)."""
    vad_threshold: float = 0.5
    """Silero probability that starts speech; speech continues while above :attr:`vad_release`."""
    pad_s: float = 0.3
    """Audio kept before the detected onset and after the detected end of speech."""
    speculate_s: float = 0.1
    """While the decoder has time to spare (the transport says so, as for partials), a phrase is
    decoded speculatively after this much silence rather than after ``pad_s``, so its final is ready
    sooner when the pause goes on to ``endpoint_s``; when speech resumes first, that decode is thrown
    away (0: only at ``pad_s``). 0.05 gave one English stream 0.04 s at the median on the AVX-512 VNNI
    host but was not kept: the Korean talk read +2.2, +1.1, +1.1 CER points over offline with it against
    +0.9, +0.7, +1.1 with 0.1 (docs/benchmarks.md "A speculative final after 0.05 s of silence")."""
    prompt_chars: int = 0
    """Settled text carried into the next decode as the prompt (the original design's prefix).
    Off by default: on short windows the prompt makes Whisper loop (see ``PRESETS``)."""
    prefix_finals: bool = False
    """A phrase's final decode is given the words its partials agreed on (all but the last
    ``prefix_holdback_words``) as the start of its output, so only the rest is decoded: the final still
    hears the whole phrase. Measured on Korean finals at pauses only (docs/benchmarks.md "Korean"): the
    same CER, a final decode about 10% shorter, so no preset turns it on: CTranslate2 runs the forced
    tokens through the decoder one step each, as if it decoded them (a Korean clip: 0.67 s to generate
    with 90% of its tokens forced, 0.65 s without). Off: every final decodes its whole window."""
    prefix_holdback_words: int = 2
    """Agreed words at the end that a final's prefix leaves out: Whisper may still revise the last words
    it heard without what follows them."""
    partial_backoff: float = 2.0
    """Under load, the next partial waits this many times the last partial's turnaround (0: off)."""
    first_partial_under_load: bool = True
    """While the decoder is loaded (the transport asks for finals only), a phrase's first partial is
    still decoded once no live window waits for the decoder: it is the text a reader waits for, and a
    short greedy window costs little beside the finals (False: finals only under load)."""
    min_speech_s: float = 0.25
    """Phrases with less detected speech than this are dropped without decoding (clicks, breaths)."""
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4

    def __post_init__(self) -> None:
        _check(
            (1.0 <= self.soft_after_s <= 28.0, "soft_after_s must be between 1 and 28"),
            (0 <= self.context_chars <= 1000, "context_chars must be between 0 and 1000"),
            (
                self.commit_after_s == 0 or 1.0 <= self.commit_after_s <= 28.0,
                "commit_after_s must be 0 (off) or between 1 and 28",
            ),
            (0.0 <= self.commit_holdback_s <= 5.0, "commit_holdback_s must be between 0 and 5"),
            (0.1 <= self.vad_threshold <= 0.95, "vad_threshold must be between 0.1 and 0.95"),
            (0.0 <= self.pad_s <= 1.0, "pad_s must be between 0 and 1"),
            (0.0 <= self.speculate_s <= 1.0, "speculate_s must be between 0 and 1"),
            (0 <= self.prompt_chars <= 1000, "prompt_chars must be between 0 and 1000"),
            (0.0 <= self.min_speech_s <= 2.0, "min_speech_s must be between 0 and 2"),
            (0.0 <= self.partial_backoff <= 10.0, "partial_backoff must be between 0 and 10"),
            (0 <= self.prefix_holdback_words <= 20, "prefix_holdback_words must be between 0 and 20"),
        )

    @property
    def vad_release(self) -> float:
        """Silero probability below which speech that has started ends (hysteresis)."""
        return self.vad_threshold - VAD_HYSTERESIS

    @property
    def unagreed_holdback_s(self) -> float:
        """In long speech (``StreamConfig.commit_force_s``) without agreement, words ending this far
        before the newest audio are finalized anyway: twice the holdback, so Whisper has heard what
        follows them."""
        return 2 * self.commit_holdback_s

    @property
    def lagging_holdback_s(self) -> float:
        """A loaded decoder gives a session few hypotheses, too far apart to agree often: words ending
        this far before the newest audio are finalized without agreement."""
        return max(LAGGING_HOLDBACK_MIN_S, self.unagreed_holdback_s)


_ADVANCED = tuple(f.name for f in fields(AdvancedStreamConfig))


@dataclass(frozen=True)
class StreamConfig:
    language: str | None = None
    """Whisper language code, or None to detect it from the first phrase."""
    task: str = "transcribe"
    word_timestamps: bool = False
    preset: str = "balanced"
    partials: bool = True
    """Send partial events at all (an output choice, like ``word_timestamps``, not a preset value)."""
    diarize: bool = False
    """Label each final with its speaker (online clustering of voices; :mod:`malsori.speakers.online`)."""
    sentiment: bool = False
    """Give each final its sentiment (``malsori.analysis``; computed off the event loop by the server)."""
    segmentation: str = "pause"
    """Where finals end: ``pause`` (at every pause, as soon as possible) or ``sentence`` (at sentence
    ends, holding back the words after the last one for at most one more phrase; ``sentences.py``)."""

    step_s: float = 0.6
    """New audio between two partial decodes of the open phrase."""
    min_partial_s: float = 0.5
    """Speech needed before the first partial decode of a phrase."""
    endpoint_s: float = 0.4
    """A pause this long ends the phrase: its text is finalized."""
    max_window_s: float = 12.0
    """A phrase longer than this is finalized in pieces, cut between words (a word-timestamped decode)."""
    partial_beam_size: int = 1
    final_beam_size: int = 1
    lead_s: float = 0.0
    """A phrase that goes on after words finalized before a pause (an early commit, a window cut) is
    decoded from up to this much earlier: its window starts at a gap before the last (at most five)
    finalized words, which are forced as the start of its output, so the first new word is heard after
    the words it follows rather than cut off from them (0: the window starts at the cut)."""

    encoder_padding_s: float = 2.0
    """Silence after a phrase's speech in the encoder input of its decodes (``TranscribeOptions.
    encoder_padding_s``): the engine's default of 2 s but in the ``korean`` preset (see ``PRESETS``)."""

    commit_force_s: float = 5.0
    """Words agreed early (``AdvancedStreamConfig.commit_after_s``) are finalized after punctuation (a
    clause ends); without any, only once this much of the phrase is unsettled (see ``PRESETS``)."""

    commit_force_loaded_s: float = 5.0
    """While the decoder is loaded (the transport asks for finals only), words are settled early past
    this much unsettled instead of ``commit_force_s`` when that is longer: short finals queue less
    behind one another (see ``PRESETS``)."""

    advanced: AdvancedStreamConfig = field(default_factory=AdvancedStreamConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", normalize_language(self.language))
        if self.task not in TASKS:
            raise InvalidOptionsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.preset not in PRESETS:
            raise InvalidOptionsError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if not isinstance(self.diarize, bool):
            raise InvalidOptionsError("diarize must be true or false")
        if not isinstance(self.sentiment, bool):
            raise InvalidOptionsError("sentiment must be true or false")
        if self.segmentation not in SEGMENTATIONS:
            raise InvalidOptionsError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, not {self.segmentation!r}")
        if self.segmentation == "sentence" and self.diarize:
            # A diarized final is labelled after it is cut (in a thread); joining and splitting
            # finals before their labels are known is not done yet.
            raise InvalidOptionsError("segmentation 'sentence' cannot be combined with diarize yet")
        _check(
            (0.1 <= self.step_s <= 5.0, "step_s must be between 0.1 and 5"),
            (0.1 <= self.min_partial_s <= 5.0, "min_partial_s must be between 0.1 and 5"),
            (0.1 <= self.endpoint_s <= 5.0, "endpoint_s must be between 0.1 and 5"),
            (2.0 <= self.max_window_s <= 28.0, "max_window_s must be between 2 and 28"),
            (1 <= self.partial_beam_size <= 10, "partial_beam_size must be between 1 and 10"),
            (1 <= self.final_beam_size <= 10, "final_beam_size must be between 1 and 10"),
            (0.0 <= self.lead_s <= 2.0, "lead_s must be between 0 and 2"),
            (0.5 <= self.encoder_padding_s <= 10.0, "encoder_padding_s must be between 0.5 and 10"),
            (1.0 <= self.commit_force_s <= 28.0, "commit_force_s must be between 1 and 28"),
            (1.0 <= self.commit_force_loaded_s <= 28.0, "commit_force_loaded_s must be between 1 and 28"),
        )

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides) -> StreamConfig:
        """The preset's values with ``overrides`` (flat names, advanced ones too) applied; unknown
        keys raise InvalidOptionsError."""
        preset = preset or "balanced"
        if preset not in PRESETS:
            raise InvalidOptionsError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls) if f.name != "advanced"} | set(_ADVANCED)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidOptionsError(f"unknown stream option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if overrides.get("language") is None and "language" in PRESETS[preset]:
            overrides.pop("language", None)  # not given: the preset's language (korean: ko) holds
        values = {**PRESETS[preset], **overrides, "preset": preset}
        advanced = {k: values.pop(k) for k in _ADVANCED if k in values}
        try:
            return cls(**values, advanced=AdvancedStreamConfig(**advanced))
        except TypeError as exc:
            raise InvalidOptionsError(f"invalid stream options: {exc}") from None

    @property
    def cut_reserve_s(self) -> float:
        """A window cut finalizes only words ending before the window's last third: the rest keeps
        context for the next window."""
        return self.max_window_s / 3

    def to_dict(self) -> dict:
        """The effective values, flat: the names ``start.options`` takes (the ``ready`` event's ``config``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "advanced"}
        return {**data, **asdict(self.advanced)}

    # -- decoding options: equal across sessions so the scheduler batches their windows together --
    def partial_options(self) -> TranscribeOptions:
        # Greedy, no timestamps, no temperature fallback: partials are previews, and a fallback
        # (several extra decodes) would delay the final behind them.
        a = self.advanced
        return TranscribeOptions(
            task=self.task,
            beam_size=self.partial_beam_size,
            best_of=1,
            temperatures=(0.0,),
            without_timestamps=True,
            vad_filter=False,
            encoder_padding_s=self.encoder_padding_s,
            no_speech_threshold=a.no_speech_threshold,
            log_prob_threshold=a.log_prob_threshold,
            compression_ratio_threshold=a.compression_ratio_threshold,
        )

    def final_options(self) -> TranscribeOptions:
        a = self.advanced
        return TranscribeOptions(
            task=self.task,
            beam_size=self.final_beam_size,
            best_of=2,
            temperatures=(0.0, 0.4),
            word_timestamps=self.word_timestamps or self.diarize,  # speakers are told word by word
            vad_filter=False,
            encoder_padding_s=self.encoder_padding_s,
            no_speech_threshold=a.no_speech_threshold,
            log_prob_threshold=a.log_prob_threshold,
            compression_ratio_threshold=a.compression_ratio_threshold,
        )


# The original design's low-latency mode decoded 2 s windows with 1 s overlap; here every phrase is
# decoded as a whole (better text) and the presets trade how often and how soon it is settled.
#
# Measured on the 32 LJ Speech clips, each decoded as one window with ``final_options()`` and the
# previous finals as prompt, as a stream does (2-core CPU, Whisper base int8):
# - prompt_chars 0: carrying the settled text as the prompt made Whisper repeat it or loop ("has
#   never been surpassed." eight times, "in being comparatively modern" seven times): WER 16.6%
#   with a 200-character prompt and beam 5, 16.6% with 60 characters, 9.0% greedy; 4.8% without.
# - final_beam_size 1 (greedy, with temperature fallback): WER 4.4% vs 4.8% with beam 5 and 5.3%
#   with beam 3, and the cheapest decode, so finals queue less behind one another.
# - max_window_s 12: LJ Speech sentences run up to 10 s without a 0.5 s pause; at 8 s every long
#   sentence took a word-timestamped cut decode (about twice a plain decode: alignment re-encodes),
#   and one stream's final p95 went from 2.3 s to 4.5 s (bench/stream_latency.py, 10 clips).
# - endpoint_s 0.4 in balanced: one real-time stream of the whole 32-clip talk (offline WER 4.2%):
#   endpoint 0.3: final p50 0.91 s / p95 1.80 s, WER 5.8% (phrases end at commas and lose context);
#   0.4: 1.01 / 1.87 s, WER 4.8%; 0.5: 1.17 / 1.90 s, WER 4.1%. low-latency keeps 0.3.
#
# - commit_force_s 8.0 in balanced (low-latency and accurate keep 5: 8 s gained nothing there, one run each,
#   docs/benchmarks.md "`low-latency` and `accurate` with early commits at 8 s"), 5 s while the decoder
#   is loaded (commit_force_loaded_s): LJ Speech sentences run up to 10 s, mostly without a comma, and a
#   forced early commit at 5 s cut inside them. bench/live_capacity.py on the AMX host, one run each: one
#   stream WER 4.1% against 5.1% (three runs) at the same final p50 0.40 s; under load the cut at 5 s
#   keeps finals short (8 s throughout: 24 rotated p95 1.61 s against 0.78 s; with 5 s while loaded
#   0.97 s; docs/benchmarks.md "Early commits at 8 s in English").
#
# korean (issue 18), measured on the Korean test data (bench/korean.py, docs/benchmarks.md "Korean"):
# - language ko: a session with this preset and no language is Korean (an explicit language still wins).
# - final_beam_size 5: on the 11 clips offline, beam 1 (greedy with fallback, as the other presets'
#   finals) CER 9.3% against 6.5% with beam 5; beam 3 8.0%.
# - partial_beam_size 5: words agreed by two partials are finalized early (commit_after_s), so partial
#   text becomes final text; three clips joined as a talk, fed to a session with the real model: streamed
#   CER 14.9% with greedy partials, 10.4% with beam 5 (offline on the same audio 7.5%). endpoint_s 0.5 and
#   0.8 gave the same text there (these read sentences hold no pause that long).
# - lead_s 2.0: the CER lost live was lost at early commits between words of long sentences (the word
#   after the cut misheard, "한창 피어난" as "한창 | 시원한"); a window that re-hears the words before
#   the cut, forced, hears it in context. The 11 clips as a talk (offline CER 6.3%) replayed with
#   modelled decode times: 6.6% against 9.2% on average; streamed live at real time (bench/korean.py
#   --sections live): median 8.3% over 16 runs against 9.1% over 3, live runs varying far more than
#   that; 6 of the 16 said a clause twice (the decode repeated its forced words, which the echo guard
#   did not compare): with that fixed, 6.7-7.6% in 5 runs (offline 6.3%). The English talk gained
#   nothing from it (replayed: WER 4.3% either way), so the other presets keep 0.
# - encoder_padding_s 3.0 (files of every language get 2 s): streamed at real time on the AMX host
#   (bench/korean.py --sections live [--condition C]), CER with 3 s against 2 s: as recorded 8.0% / 8.9%,
#   tempo 0.9x 9.5% / 10.8%, tempo 1.1x 9.3% / 9.8%, white noise 20 dB 11.5% / 11.3%. Offline the other
#   way (2 s 11.1%, 3 s 11.6% over 77 decodes), so only live Korean gets 3 s (docs/benchmarks.md
#   "Korean: one padding for files, three seconds live").
# - commit_force_s 8.0 (as balanced): these read sentences run 7-10 s without a pause or a comma, and a
#   forced early commit at 5 s cut inside them; the streamed talk on the AMX host, 3 runs: CER +0.2,
#   +0.4, +0.4 points over offline at final p50 0.47-0.51 s, against +1.5 at 0.45 s with 5 s; with no
#   early commits at all (commit_after_s 0) +0.2 at 0.55 s. Commits still come in longer speech, and
#   at punctuation. Under the conditions' acoustic changes it is a wash (tempo 1.1x and 20 dB noise
#   about 0.8 worse, tempo 0.9x 1.5 better; mean of four talks 9.3% against 9.6%; docs/benchmarks.md
#   "Korean: early commits at 8 s").
# - commit_force_loaded_s 8.0 (balanced: 5): 8 Korean talks streamed at once on the AMX host
#   (bench/korean.py --sections live --streams 8), CER -0.6 points from offline at final p50 / p95
#   0.76 / 1.18 s, against +1.4 at 0.70 / 1.15 s with 5 (docs/benchmarks.md "Several Korean streams
#   at once"): Korean streams are fewer per machine (beam 5), and their finals stay short without it.
PRESETS: dict[str, dict] = {
    "low-latency": dict(step_s=0.4, min_partial_s=0.4, endpoint_s=0.3, max_window_s=8.0, partial_beam_size=1, final_beam_size=1),
    "balanced": dict(
        step_s=0.6,
        min_partial_s=0.5,
        endpoint_s=0.4,
        max_window_s=12.0,
        partial_beam_size=1,
        final_beam_size=1,
        commit_force_s=8.0,
    ),
    "accurate": dict(step_s=1.0, min_partial_s=0.8, endpoint_s=0.8, max_window_s=10.0, partial_beam_size=3, final_beam_size=5),
    "korean": dict(
        language="ko",
        step_s=0.6,
        min_partial_s=0.5,
        endpoint_s=0.5,
        max_window_s=12.0,
        partial_beam_size=5,
        final_beam_size=5,
        lead_s=2.0,
        encoder_padding_s=3.0,
        commit_force_s=8.0,
        commit_force_loaded_s=8.0,
    ),
}
