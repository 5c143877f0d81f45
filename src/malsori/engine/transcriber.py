"""The Whisper model: one per process, many windows per decode (the engine's :class:`WindowDecoder`).

It decodes windows and nothing else; cutting whole inputs into windows and assembling transcripts is
the pipeline's work (:mod:`malsori.engine.pipeline`), and sharing the model between callers the
scheduler's (:mod:`malsori.engine.scheduler`).

faster-whisper's ``transcribe()`` pads every window to Whisper's 30 s and decodes one window at a time.
Two measured changes make malsori faster on a CPU without losing accuracy (docs/benchmarks.md):

- **Short encoder input.** CTranslate2 accepts fewer than 3000 mel frames, so a window is encoded at its
  real length plus two seconds of silence (``_PAD_FRAMES``). With less, Whisper does not see the speech
  end and loops ("Ask what you can do for your country." over and over on jfk.flac with none; "in being
  comparatively modern" twice on LJ001-0002 with one second); with two, word error rates match the
  padded 30 s decode on the test data while the encoder costs a fraction (docs/benchmarks.md); Korean
  files too (issue 18, below). A caller may give another (``TranscribeOptions.encoder_padding_s``: the
  ``korean`` live preset's 3 s).
- **Batched decoding.** Windows from different inputs (or different streams) are encoded and decoded
  together in one ``generate`` call with a prompt per item, which keeps both CPU cores busy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InvalidOptionsError, ModelError
from .audio import SAMPLE_RATE
from .decoder import DirectDecoder
from .models import resolve_model
from .options import TranscribeOptions
from .types import Segment, Word
from .windows import Window, WindowResult, speech_regions

__all__ = ["EngineConfig", "Transcriber", "encoder_frames", "fallback_decode", "limit_blas_threads"]

log = logging.getLogger(__name__)

_HOP = 160  # samples per mel frame (10 ms)
_PAD_FRAMES = 200  # two seconds of silence after the speech; see the module docstring
# Every language. Korean had 3 s (issue 18), chosen on one host, where its 11 clips read 0.2-0.4 points
# better than with 2 s; on the AMX host 3 s read them worse than faster-whisper (7.4% against 6.9%) and 2 s
# as well as it (6.9%), as on the AVX2 host, and over the clips under seven acoustic conditions
# (`bench/korean.py --sections conditions`, 77 decodes) 2 s gave 11.1% and 3 s 11.6% against
# faster-whisper's 11.7% (docs/benchmarks.md "Korean: one padding for files, three seconds live").
# Languages whose windows share a batch on the CPU only with windows of the same encoder length, so each
# decodes as it would alone (see encoder_frames): on the 11 Korean clips, batches that padded every window
# to the longest of its batch gave CER 7.6% on all three hosts measured, one file at a time 6.7-7.4%,
# faster-whisper 6.9-7.4% (issue 18; docs/benchmarks.md "The AVX2 host again"). A scheduler's batch of such
# windows is decoded one length after another: on a CPU a batch of mixed lengths costs about the sum of
# its windows anyway (docs/benchmarks.md "Live finals one at a time"). Not on a GPU, where batching pays
# and this was not measured.
_OWN_LENGTH_LANGUAGES = frozenset({"ko"})
_FRAME_BUCKET = 50  # encoder lengths are rounded up to 0.5 s so batches share a shape
_MIN_FRAMES = 500  # encoder inputs under about 4 s loop ("Gothic and Roman" x4 on LJ001-0032's last 1.4 s)
_MAX_FRAMES = 3000
_CPU_CHUNK = 1  # windows per encoder or alignment call on the CPU (see Transcriber._encode)
_MAX_TEXT_TOKENS = 448
_DROP_PROMPT_ABOVE = 0.5  # fallback steps above this decode without the decoded context (see fallback_decode)
_REPETITION_PENALTY_PER_T = 0.25  # a fallback step at temperature t penalizes repeated tokens by 1 + t/4
_NO_REPEAT_NGRAM = 4  # steps above 0.5 never repeat a 4-token run
_MAX_RESUMES = 3  # decodes again of one window's rest when Whisper stops early
_MIN_RESUME_S = 0.5
_MIN_REPEAT_WORDS = 4  # a window's text ending with a run of this many words said twice has looped
_PREPEND_PUNCTUATION = "\"'“¿([{-"
_APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class EngineConfig:
    """Which model to load and where to run it."""

    model: str = "base"
    """A bundled name (base, tiny.en), a faster-whisper model name, or a local CTranslate2 directory."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu or cuda."""
    compute_type: str = "auto"
    """auto (float16 on CUDA, int8 on CPU) or any CTranslate2 compute type."""
    cpu_threads: int = 0
    """Threads for CPU inference, per worker; 0: the cores shared out between the workers."""
    num_workers: int = 0
    """Decodes the model may run at the same time (separate threads); 0: :func:`cpu_layout` picks on a
    CPU (two of one thread each on two cores), one on CUDA. A caller's batches run on all of them."""
    max_batch_size: int = 0
    """Windows decoded together in one call; 0: :func:`auto_batch_size` picks for the device."""
    blas_threads: int = 1
    """Threads numpy's BLAS (OpenBLAS) may use in this process, set when the model loads (see
    :func:`limit_blas_threads`); 0 leaves it as it is."""
    cache_dir: Path | None = None
    """Where joined bundled models and downloads are kept (default ~/.cache/malsori)."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidOptionsError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.cpu_threads < 0 or self.num_workers < 0 or self.blas_threads < 0 or self.max_batch_size < 0:
            raise InvalidOptionsError("cpu_threads, num_workers, blas_threads and max_batch_size must be >= 0")


AUTO_CPU_WORKERS = 2
"""Decodes a CPU runs at once when ``num_workers`` is 0 (a server's scheduler decodes on that many threads).
Measured on a 2-core AMD EPYC (docs/benchmarks.md "Decoders side by side"): one beam-5 decode of 9 s of
Korean took 1.2 s on one thread and 1.5 s on two; two of them side by side, one thread each, 1.15-1.35 s
for both; a batch of the two on two threads 1.8 s. Autoregressive decoding is many small steps that
threads share badly, so two one-thread decodes do more than one two-thread decode, and a live final
no longer waits behind a batch of partials."""


AUTO_BATCH = 8
"""Windows a batch holds at most when ``max_batch_size`` is 0, on CUDA and on most CPUs: on a 2-core AMD
EPYC (AVX-512 VNNI) a quiet process decoded equal 6 s windows in 0.177 s each in fours against 0.281 s
alone (docs/benchmarks.md "Live capacity")."""
AMX_BATCH = 2
"""The same on a CPU with AMX int8 (Intel Xeon of the 4th generation and later) running an int8 model. Its
matrix products are so cheap that a batch mostly adds memory traffic: on a 2-core Intel Xeon with AMX,
one thread, beam 5, equal 10 s windows took 0.246 s each alone, 0.235 s in pairs, 0.295 s in fours and
0.310 s in eights (the encoder 0.084 s a window alone, 0.158 s in eights); the CLI's 46 English files ran
at 44.2x real time in pairs against 38.7x in eights, 16 HTTP clients got 41.1 against 34.1 audio s/s in
one session (docs/benchmarks.md "A third host: Intel Xeon with AMX")."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def auto_batch_size(device: str, compute_type: str, flags: frozenset[str] | None = None) -> int:
    """Windows per batch for a model on ``device`` computing in ``compute_type`` (see :data:`AMX_BATCH`)."""
    if device == "cpu" and compute_type.startswith("int8") and "amx_int8" in (cpu_flags() if flags is None else flags):
        return AMX_BATCH
    return AUTO_BATCH


def cpu_layout(cpu_threads: int, num_workers: int, cores: int | None = None) -> tuple[int, int]:
    """(threads per worker, workers) on a CPU. ``num_workers`` 0 is :data:`AUTO_CPU_WORKERS` (at most
    one per core), each with ``cpu_threads`` or else its share of the cores; a number of workers given
    keeps ``cpu_threads`` as it is (0: CTranslate2's default)."""
    if num_workers:
        return cpu_threads, num_workers
    cores = cores or len(os.sched_getaffinity(0))
    workers = max(1, min(AUTO_CPU_WORKERS, cores))
    return cpu_threads or max(1, cores // workers), workers


def limit_blas_threads(threads: int) -> None:
    """Let the BLAS libraries loaded in this process (numpy's OpenBLAS) use at most ``threads`` threads.

    CTranslate2 computes on its own threads; numpy's BLAS only multiplies each window's spectrogram by
    the mel filters, small products that gain nothing from a second thread. By default OpenBLAS starts
    one thread per core, and after each call they spin, waiting for more work, on the cores the decodes
    need. Measured with 24 rotated live streams on 2 cores (docs/benchmarks.md "Live capacity"): one
    OpenBLAS thread used 0.28 of a core and the two decodes got 1.34 cores; with one BLAS thread they got
    1.74, and final p95 went from 3.2-3.7 s to 2.4 s."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _resume_at(tokens: Sequence[int], timestamp_begin: int, duration: float) -> float | None:
    """Where to decode again when a decode ended early with an empty segment (two timestamps).

    Returns the last timestamp in seconds, or None when the decode finished its window (or ended
    within half a second of its end, too little to hold a word worth a second decode).
    """
    if len(tokens) < 2 or tokens[-1] < timestamp_begin or tokens[-2] < timestamp_begin:
        return None
    at = (tokens[-1] - timestamp_begin) * 0.02
    return at if at > 0.0 and duration - at >= _MIN_RESUME_S else None


def _joined(first: WindowResult, rest: WindowResult) -> WindowResult:
    """One window's result followed by the result of decoding its remainder."""
    segments = [*first.segments, *rest.segments]
    return WindowResult(
        **{
            **first.__dict__,
            "segments": tuple(Segment(**{**seg.__dict__, "id": n}) for n, seg in enumerate(segments)),
            "tokens": first.tokens + rest.tokens,
        }
    )


def _word_key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _says_a_run_thrice(text: str) -> bool:
    """Whether ``text`` says a run of ``_MIN_REPEAT_WORDS`` or more words three times in a row (without
    case and punctuation): Whisper looping inside a window, too briefly for the token bound and too
    little of a long window for the compression ratio ("invented in the early middle ages, in the early
    Middle Ages, in the early Middle Ages." on a 27 s LJ Speech window decoded alone, ratio 1.6)."""
    words = [_word_key(w) for w in text.split()]
    for size in range(_MIN_REPEAT_WORDS, len(words) // 3 + 1):
        for start in range(len(words) - 3 * size + 1):
            unit = words[start : start + size]
            if all(unit) and unit == words[start + size : start + 2 * size] == words[start + 2 * size : start + 3 * size]:
                return True
    return False


def _without_repeated_tail(result: WindowResult, tok) -> WindowResult:
    """The result without a repeat of its last words: a window decoded with the tokens before it as
    its prompt sometimes ends by saying its last phrase again ("... and it was natural, therefore,
    and it was natural, therefore," on the LJ Speech concatenation), in the pause after the speech.
    The words are compared without case and punctuation; ``_MIN_REPEAT_WORDS`` or more must repeat,
    so a word or two said twice stays."""
    text = [(n, k, t) for n, seg in enumerate(result.segments) for k, t in enumerate(seg.tokens)]
    starts = [j for j, (_, _, t) in enumerate(text) if tok.decode([t]).startswith(" ") or j == 0]
    words = [_word_key(tok.decode([t for _, _, t in text[a:b]])) for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    cut = None
    for size in range(len(words) // 2, _MIN_REPEAT_WORDS - 1, -1):
        if words[-size:] == words[-2 * size : -size] and all(words[-size:]):
            cut = starts[len(words) - size]
            break
    if cut is None or [t for t in result.tokens if t < tok.eot] != [t for _, _, t in text]:
        return result  # no repeat, or segments that do not hold every text token decoded (left alone)
    last_seg, last_tok = text[cut - 1][:2]
    segments = list(result.segments[: last_seg + 1])
    kept = segments[-1].tokens[: last_tok + 1]
    timed = segments[-1].words
    if timed:  # the words timed in the part dropped from this segment go too
        dropped = sum(1 for j in starts if j >= cut and text[j][0] == last_seg)
        timed = timed[: max(0, len(timed) - dropped)]
    segments[-1] = replace(segments[-1], text=tok.decode(list(kept)).strip(), tokens=kept, words=timed)
    # The raw tokens up to the last text token kept, then the closing timestamp, as the decode ended.
    positions = [j for j, t in enumerate(result.tokens) if t < tok.eot]
    end = positions[cut - 1]
    closing = [t for t in result.tokens[end + 1 :] if t >= tok.timestamp_begin][-1:]
    return replace(result, segments=tuple(segments), tokens=(*result.tokens[: end + 1], *closing))


def _even_groups(order: list[int], lengths: list[int], size: int, workers: int) -> list[list[int]]:
    """``order`` (windows sorted by length, ``lengths`` theirs) cut into contiguous batches of at most
    ``size``: as few as can be, but a multiple of ``workers`` where there are windows enough, each
    holding about the same seconds of audio, which is what a batch costs on the CPU, so batches run side
    by side end together. Nine 26 s windows (a long file without context) in batches of up to eight on
    two workers go five and four, not eight and then one while the other worker idles; eleven clips of
    1-7 s go as the eight shortest and the three longest (2.3 and 2.1 s on two one-thread decodes,
    against 1.6 and 2.7 s cut six and five; docs/benchmarks.md, "The AVX2 host again")."""
    n = len(order)
    if not n:
        return []
    count = min(n, math.ceil(math.ceil(n / size) / workers) * workers)
    groups: list[list[int]] = []
    begin, left_audio = 0, sum(lengths)
    for left in range(count, 1, -1):  # batches still to cut, this one included
        share, end, audio = left_audio / left, begin + 1, lengths[begin]
        # Take the next window while it fits and leaves a window for every later batch, and either the
        # later batches could not hold the rest, or the audio stays nearer this batch's share with it.
        while end - begin < size and n - end > left - 1 and (n - end > size * (left - 1) or audio + lengths[end] / 2 <= share):
            audio += lengths[end]
            end += 1
        groups.append(order[begin:end])
        begin, left_audio = end, left_audio - audio
    groups.append(order[begin:])
    return groups


def _has_prompt(window: Window) -> bool:
    return bool(window.prompt and window.prompt.strip()) or bool(window.prompt_tokens)


def _previous_tokens(window: Window, tok) -> list[int]:
    """The prompt of a window: its text prompt encoded, then its prompt tokens (text and timestamps
    only), the last ones up to Whisper's limit."""
    text = tok.encode(" " + window.prompt.strip()) if window.prompt and window.prompt.strip() else []
    decoded = [t for t in window.prompt_tokens if t < tok.eot or t >= tok.timestamp_begin]
    return [*text, *decoded][-(_MAX_TEXT_TOKENS // 2 - 1) :]


def _forced_prefix(window: Window, tok, without_timestamps: bool) -> list[int]:
    """The tokens a window's ``prefix`` puts at the start of its output (after ``<|0.00|>`` when the
    output is timestamped), at most half of Whisper's text length."""
    if not (window.prefix and window.prefix.strip()):
        return []
    text = tok.encode(" " + window.prefix.strip())[: _MAX_TEXT_TOKENS // 2 - 1]
    return text if without_timestamps else [tok.timestamp_begin, *text]


def _token_cap(duration: float) -> int:
    """Most tokens a window of ``duration`` seconds can honestly produce (text and timestamps)."""
    return int(14 * duration + 24)


def encoder_frames(window: Window, options: TranscribeOptions) -> int:
    """A window's own encoder length in mel frames: its audio plus its silence (the options'
    ``encoder_padding_s``, else 2 s), rounded up to ``_FRAME_BUCKET`` (0.5 s), at least ``_MIN_FRAMES``,
    at most 30 s.

    A batch is encoded at its longest window's length, and Whisper's encoder has no mask, so the extra
    silence can change a window's text (a word, now and then). Windows with equal ``encoder_frames``
    (and prompts of equal length) decode exactly as they would alone: a caller that forms batches by
    this key (the server's scheduler may) gets text independent of the companions. Not done by default
    in :meth:`Transcriber.decode_windows`: batches split by it cost 25-45% more time on the English test
    sets (docs/benchmarks.md "Reproducible output (issue 17)")."""
    pad = _PAD_FRAMES if options.encoder_padding_s is None else round(options.encoder_padding_s * SAMPLE_RATE / _HOP)
    n = max(1, math.ceil(len(window.audio) / _HOP)) + pad
    return min(_MAX_FRAMES, max(_MIN_FRAMES, math.ceil(n / _FRAME_BUCKET) * _FRAME_BUCKET))


def fallback_decode(temperature: float, options: TranscribeOptions) -> dict:
    """CTranslate2 ``generate`` settings for one step of the temperature fallback.

    0 is the plain decode (beam ``options.beam_size``). Whisper retries a failed window by sampling at
    a higher temperature; CTranslate2 cannot seed its sampling per call (its generator is one per
    worker thread, seeded once, so a window's draws would depend on every decode before it in that
    thread), so here a step above 0 is a deterministic decode that departs further from the plain one
    the higher its temperature: a beam of ``max(beam_size, best_of)`` with a repetition penalty of
    1 + t/4 and, above 0.5, no 4-token run repeated and none of the tokens decoded before the window
    in its prompt (``Window.prompt_tokens``; its text prompt stays). The pipeline, like Whisper, does
    not carry the text of a window decoded above 0.5 into the next. docs/benchmarks.md "Reproducible
    output (issue 17)" has the measurements."""
    if temperature <= 0:
        return dict(beam_size=options.beam_size, patience=1.0)
    return dict(
        beam_size=max(options.beam_size, options.best_of),
        patience=1.0,
        repetition_penalty=1.0 + _REPETITION_PENALTY_PER_T * temperature,
        no_repeat_ngram_size=_NO_REPEAT_NGRAM if temperature > _DROP_PROMPT_ABOVE else 0,
    )


class Transcriber(DirectDecoder):
    """One loaded Whisper model, shared by every request and stream of the process (through the scheduler).

    Thread-safe: CTranslate2 runs concurrent calls on its own workers (``num_workers``).
    """

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        import ctranslate2
        from faster_whisper import WhisperModel

        self.config = config
        started = time.perf_counter()
        if config.blas_threads:
            limit_blas_threads(config.blas_threads)
        self.model_path = resolve_model(config.model, config.cache_dir)
        device = config.device
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = config.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.device, self.compute_type = device, compute_type
        self.max_batch_size = config.max_batch_size or auto_batch_size(device, compute_type)
        # How many decodes run at once: a scheduler in front of this model runs that many batches.
        if device == "cpu":
            threads, self.workers = cpu_layout(config.cpu_threads, config.num_workers)
        else:
            threads, self.workers = config.cpu_threads, config.num_workers or 1
        try:
            self._fw = WhisperModel(
                str(self.model_path),
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=self.workers,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            # CTranslate2 says ValueError for an unsupported compute type, RuntimeError when CUDA is
            # asked for without a driver or a model file is broken: one documented error instead.
            raise ModelError(f"model {config.model!r} could not be loaded on {device}/{compute_type}: {exc}") from None
        self._ct2 = self._fw.model
        self._features = self._fw.feature_extractor
        self._tokenizers: dict[tuple[str, str], object] = {}
        self._tokenizer_lock = threading.Lock()
        self._batch_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded model %s from %s on %s/%s in %.2fs (%d decodes at once, batches of up to %d)",
            config.model,
            self.model_path,
            device,
            compute_type,
            self.load_seconds,
            self.workers,
            self.max_batch_size,
        )

    # -- facts -------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.config.model

    @property
    def multilingual(self) -> bool:
        return bool(self._ct2.is_multilingual)

    @property
    def languages(self) -> list[str]:
        return list(self._fw.supported_languages)

    def check_options(self, options: TranscribeOptions) -> None:
        """InvalidOptionsError for what this model cannot do (an English-only model: other languages, translation)."""
        if not self.multilingual:
            if options.language not in (None, "en"):
                raise InvalidOptionsError(f"model {self.model_name} is English-only; it cannot transcribe {options.language!r}")
            if options.task == "translate":
                raise InvalidOptionsError(f"model {self.model_name} is English-only; it cannot translate")

    # -- windows -----------------------------------------------------------------------------------
    def decode_batch(self, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
        """Decode windows a scheduler put in one batch as it composed them, on the calling thread
        (:func:`~malsori.engine.decoder.decode_composed`): the scheduler runs as many batches at once as
        the model has workers, so this does not run parts of the batch side by side, and splits it only
        where windows may not share a batch (a prompt and none; on a CPU, Korean windows of different
        encoder lengths, see ``_OWN_LENGTH_LANGUAGES``)."""
        return self.decode_windows(windows, options, spread=False)

    def batch_class(self, window: Window, options: TranscribeOptions) -> tuple[bool, int]:
        """Windows of different classes never share a model call (a batch that mixes them is decoded one
        class after another): a window with a prompt and one without, and on a CPU a window of a language
        in ``_OWN_LENGTH_LANGUAGES`` and one of another encoder length. A scheduler composes its batches
        of one class (:class:`~malsori.engine.scheduler.DecodeScheduler`), so its workers decode the
        classes side by side rather than one after another on one worker."""
        own = self.device == "cpu" and (window.language or options.language) in _OWN_LENGTH_LANGUAGES
        return _has_prompt(window), encoder_frames(window, options) if own else 0

    def decode_windows(
        self, windows: Sequence[Window], options: TranscribeOptions = TranscribeOptions(), *, spread: bool = True
    ) -> list[WindowResult]:
        """Decode windows of at most 30 s each, batching windows of similar length together.

        ``spread`` (a caller decoding on its own, as the CLI does) runs the batches on every worker at
        once, cut so that each worker gets about the same audio and no core idles (:func:`_even_groups`).

        Whisper sometimes stops before the end of a window, closing with an empty segment
        (``... between<|5.72|><|5.72|>`` on LJ001-0032, whose last 1.4 s say "Gothic and Roman").
        faster-whisper's ``transcribe()`` then decodes again from that timestamp; so does this, for the
        rest of the window when the VAD hears speech in it, and appends what it finds.
        """
        self.check_options(options)
        out = self._decode_sorted(windows, options, spread)
        tails = {i: (w, r) for i, (w, r) in enumerate(zip(windows, out, strict=True))}
        resumed: set[int] = set()
        for _ in range(_MAX_RESUMES):
            follow: dict[int, Window] = {}
            for i, (w, r) in tails.items():
                if not w.fallback:
                    continue  # a preview: its end is decoded again soon anyway
                at = _resume_at(r.tokens, self._tokenizer(r.language, options.task).timestamp_begin, len(w.audio) / SAMPLE_RATE)
                if at is None:
                    continue
                rest = np.asarray(w.audio[int(at * SAMPLE_RATE) :], dtype=np.float32)
                if not speech_regions(rest):
                    continue
                carried = (*w.prompt_tokens, *r.tokens) if options.condition_on_previous_text else w.prompt_tokens
                follow[i] = replace(w, audio=rest, offset=w.offset + at, prompt_tokens=carried, language=r.language)
            if not follow:
                break
            tails = {}
            for (i, w), r in zip(follow.items(), self._decode_sorted(list(follow.values()), options, spread), strict=True):
                out[i] = _joined(out[i], r)
                tails[i] = (w, r)
                resumed.add(i)
        # A window decoded with the text before it (its context, or the start of its own text when it
        # was resumed) may end by saying its last phrase again: cut the repeat.
        return [
            _without_repeated_tail(r, self._tokenizer(r.language, options.task))
            if (w.prompt_tokens or i in resumed) and r.segments
            else r
            for i, (w, r) in enumerate(zip(windows, out, strict=True))
        ]

    def _decode_sorted(self, windows: Sequence[Window], options: TranscribeOptions, spread: bool) -> list[WindowResult]:
        """Batches of similar length; windows with a prompt and without one never share a batch, because
        CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch, and on a
        CPU a window of a language in ``_OWN_LENGTH_LANGUAGES`` shares one only with windows of its encoder
        length."""
        out: list[WindowResult | None] = [None] * len(windows)
        workers = self.workers if spread else 1
        classes: dict[tuple[bool, int], list[int]] = {}
        for i, w in enumerate(windows):
            classes.setdefault(self.batch_class(w, options), []).append(i)
        audio = [len(w.audio) for w in windows]
        groups: list[list[int]] = []
        for _, members in sorted(classes.items()):
            order = sorted(members, key=audio.__getitem__)
            groups.extend(_even_groups(order, [audio[i] for i in order], self.max_batch_size, workers))

        def decode(group: list[int]) -> list[WindowResult]:
            return self._decode_batch([windows[i] for i in group], options)

        if workers > 1 and len(groups) > 1:
            # A caller with several batches (the CLI, a file) keeps every worker busy, as a scheduler does;
            # the batches with the most audio go first, so none is left to run alone at the end.
            groups.sort(key=lambda g: -sum(audio[i] for i in g))
            batches = list(self._pool().map(decode, groups))
        else:
            batches = [decode(group) for group in groups]
        for group, results in zip(groups, batches, strict=True):
            for i, result in zip(group, results, strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    def _pool(self) -> ThreadPoolExecutor:
        """Threads that run a caller's batches side by side, one per CTranslate2 worker."""
        with self._pool_lock:
            if self._batch_pool is None:
                self._batch_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="malsori-batch")
            return self._batch_pool

    def _tokenizer(self, language: str, task: str):
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        with self._tokenizer_lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(self._fw.hf_tokenizer, self.multilingual, task=task, language=language)
            return self._tokenizers[key]

    def _features_for(self, windows: Sequence[Window], options: TranscribeOptions) -> tuple[np.ndarray, list[int]]:
        """Log-mel features of each window, padded with silence to one shared, short length: the
        longest :func:`encoder_frames` of the batch."""
        n_frames = [max(1, math.ceil(len(w.audio) / _HOP)) for w in windows]
        target = max(encoder_frames(w, options) for w in windows)
        feats = np.empty((len(windows), self._features.mel_filters.shape[0], target), dtype=np.float32)
        for row, w in enumerate(windows):
            audio = np.asarray(w.audio, dtype=np.float32)[: (target - 1) * _HOP]
            padded = np.zeros(target * _HOP, dtype=np.float32)
            padded[: len(audio)] = audio
            feats[row] = self._features(padded, padding=0)[:, :target]
        return feats, [min(n, target) for n in n_frames]

    def _decode_batch(self, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:

        from faster_whisper.transcribe import get_suppressed_tokens

        feats, n_frames = self._features_for(windows, options)
        encoded = self._encode(feats)

        languages: list[str] = []
        lang_probs: list[float] = []
        need_detect = [w.language or options.language for w in windows]
        detected = None
        if self.multilingual and any(lang is None for lang in need_detect):
            detected = self._ct2.detect_language(encoded)
        for i, lang in enumerate(need_detect):
            if not self.multilingual:
                lang, prob = "en", 1.0
            elif lang is not None:
                prob = 1.0
            else:
                assert detected is not None
                candidates = [(token[2:-2], p) for token, p in detected[i]]
                if options.languages:  # the most likely of the languages the caller allows
                    candidates = [c for c in candidates if c[0] in options.languages] or candidates
                lang, prob = candidates[0]
            languages.append(lang)
            lang_probs.append(float(prob))

        tokenizers = [self._tokenizer(lang, options.task) for lang in languages]
        previous = [_previous_tokens(w, tok) for w, tok in zip(windows, tokenizers, strict=True)]
        # Every prompt of a batch keeps as many previous-text tokens as the shortest (the last ones, which
        # matter most), so <|startoftranscript|> sits at the same position, as CTranslate2 requires.
        keep = min(len(p) for p in previous)
        prompts = [
            self._fw.get_prompt(
                tok, prev[len(prev) - keep :] if keep else [], options.without_timestamps, hotwords=options.hotwords
            )
            for tok, prev in zip(tokenizers, previous, strict=True)
        ]
        # A window's prefix is forced after the prompt: the decoder's output goes on after it.
        forced = [_forced_prefix(w, tok, options.without_timestamps) for w, tok in zip(windows, tokenizers, strict=True)]
        prompts = [[*p, *f] for p, f in zip(prompts, forced, strict=True)]
        # Fallback steps above _DROP_PROMPT_ABOVE decode without the tokens decoded before the window
        # (its text prompt, the caller's words, stays): a loop often echoes them (see fallback_decode).
        own = [_previous_tokens(replace(w, prompt_tokens=()), tok) for w, tok in zip(windows, tokenizers, strict=True)]
        keep_own = min(len(p) for p in own)
        bare = [
            self._fw.get_prompt(
                tok, prev[len(prev) - keep_own :] if keep_own else [], options.without_timestamps, hotwords=options.hotwords
            )
            for tok, prev in zip(tokenizers, own, strict=True)
        ]
        durations = [len(w.audio) / SAMPLE_RATE for w in windows]
        # Bound the output by the audio's length: about 14 tokens a second covers fast speech and
        # scripts with many tokens per word, and stops a decode that has started to loop. The batch
        # shares one bound, so each window's own bound is checked on its result below.
        caps = [_token_cap(d) for d in durations]
        max_length = min(_MAX_TEXT_TOKENS, max(len(p) for p in prompts) + max(caps))
        caps = [min(cap, max_length - len(p)) for cap, p in zip(caps, prompts, strict=True)]
        suppress = get_suppressed_tokens(tokenizers[0], [-1])

        def generate(indices: list[int], temperature: float):
            enc = encoded if indices == list(range(len(windows))) else self._subset(encoded, feats, indices)
            use = bare if temperature > _DROP_PROMPT_ABOVE else prompts
            return self._ct2.generate(
                enc,
                [use[i] for i in indices],
                length_penalty=1.0,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress,
                max_initial_timestamp_index=50,
                **fallback_decode(temperature, options),
            )

        # Temperature fallback with Whisper's rules: retry a window whose text is too repetitive or
        # unlikely at the next step; after the last one, keep the most likely non-repetitive attempt.
        # Every step is deterministic (fallback_decode), so a window in the same batch gives the same text.
        best: list[tuple | None] = [None] * len(windows)
        attempts: list[list[tuple]] = [[] for _ in windows]
        pending = list(range(len(windows)))
        cr_limit = options.compression_ratio_threshold
        lp_limit = options.log_prob_threshold
        for t_index, temperature in enumerate(options.temperatures):
            if not pending:
                break
            last = t_index + 1 == len(options.temperatures)
            still = []
            for i, res in zip(pending, generate(pending, temperature), strict=True):
                tokens = list(res.sequences_ids[0])
                score = res.scores[0] if res.scores else 0.0
                avg_logprob = score * len(tokens) / (len(tokens) + 1)  # length_penalty 1
                # A decode that runs to its length bound without closing, or says a run of words three
                # times over, has looped (short phrases repeated have a low compression ratio, so the
                # ratio alone misses them).
                # CTranslate2 returns a forced prefix with the tokens after it (include_prompt_in_result).
                text = tokenizers[i].decode(tokens).strip()
                looped = len(tokens) - (len(forced[i]) if temperature <= _DROP_PROMPT_ABOVE else 0) >= caps[i]
                looped = looped or _says_a_run_thrice(text)
                ratio = compression_ratio(text)
                attempt = (tokens, avg_logprob, ratio, float(res.no_speech_prob), temperature, looped)
                attempts[i].append(attempt)
                repetitive = looped or (cr_limit is not None and ratio > cr_limit)
                unlikely = lp_limit is not None and avg_logprob < lp_limit
                silent = options.no_speech_threshold is not None and attempt[3] > options.no_speech_threshold and unlikely
                if not (repetitive or unlikely) or silent or not windows[i].fallback:
                    best[i] = attempt
                elif last:
                    usable = [a for a in attempts[i] if not a[5] and (cr_limit is None or a[2] <= cr_limit)] or attempts[i]
                    best[i] = max(usable, key=lambda a: a[1])
                else:
                    still.append(i)
            pending = still

        results = []
        word_jobs: list[tuple[int, list[int]]] = []
        for i, w in enumerate(windows):
            tokens, avg_logprob, ratio, no_speech, temperature, _ = best[i]  # type: ignore[misc]
            if (
                options.no_speech_threshold is not None
                and no_speech > options.no_speech_threshold
                and (options.log_prob_threshold is None or avg_logprob < options.log_prob_threshold)
            ):
                tokens = []
            segments = self._split_segments(
                tokenizers[i], tokens, durations[i], w.offset, avg_logprob, no_speech, ratio, temperature
            )
            results.append(
                WindowResult(
                    tuple(segments), languages[i], lang_probs[i], no_speech, avg_logprob, ratio, temperature, tuple(tokens)
                )
            )
            if (options.word_timestamps or w.words) and segments:
                word_jobs.append((i, tokens))
        if word_jobs:
            results = self._add_words(results, word_jobs, windows, feats, n_frames, tokenizers, encoded)
        return results

    def _split_segments(self, tok, tokens, duration, offset, avg_logprob, no_speech, ratio, temperature) -> list[Segment]:
        """Turn ``<|t0|> text <|t1|>`` token runs into segments; drop text past the audio's end."""
        begin = tok.timestamp_begin
        segments: list[Segment] = []
        text_run: list[int] = []
        start_t: float | None = None

        def flush(end_t: float) -> None:
            nonlocal text_run, start_t
            text = tok.decode(text_run).strip() if text_run else ""
            s = start_t if start_t is not None else 0.0
            if text and s < duration + 0.1:
                e = min(max(end_t, s), duration)
                segments.append(
                    Segment(
                        0,
                        round(offset + s, 3),
                        round(offset + e, 3),
                        text,
                        avg_logprob,
                        no_speech,
                        ratio,
                        temperature,
                        None,
                        tuple(text_run),
                    )
                )
            text_run, start_t = [], None

        for t in tokens:
            if t >= begin:
                stamp = (t - begin) * 0.02
                if start_t is None:
                    start_t = stamp
                elif text_run:
                    flush(stamp)
                else:
                    start_t = stamp
            elif t < tok.eot:
                text_run.append(t)
        if text_run:
            flush(duration)
        return [Segment(**{**s.__dict__, "id": n}) for n, s in enumerate(segments)]

    def _encode(self, feats: np.ndarray):
        """The encoder output of a batch. On the CPU the encoder is compute-bound (a batch costs its
        windows' sum), so it runs a window at a time: its workspace (attention over every frame)
        then grows with one window, not with the batch, while the decoder still gets the batch."""
        import ctranslate2

        if self.device != "cpu" or len(feats) <= _CPU_CHUNK:
            return self._ct2.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        parts = [
            np.asarray(
                self._ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[i : i + _CPU_CHUNK])), to_cpu=True)
            )
            for i in range(0, len(feats), _CPU_CHUNK)
        ]
        return ctranslate2.StorageView.from_array(np.concatenate(parts))

    def _subset(self, encoded, feats: np.ndarray, indices: list[int]):
        """The encoder output of some windows of a batch: sliced on the CPU, encoded again on a GPU
        (where the output stays in device memory)."""
        import ctranslate2

        if self.device == "cpu":
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[indices]))
        return self._ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[indices])), to_cpu=False)

    def _add_words(self, results, word_jobs, windows, feats, n_frames, tokenizers, encoded):
        from faster_whisper.transcribe import merge_punctuations

        by_lang: dict[str, list[tuple[int, list[int]]]] = {}
        for i, tokens in word_jobs:
            by_lang.setdefault(results[i].language, []).append((i, tokens))
        results = list(results)
        # On the CPU alignment runs a window at a time too (see _encode): one forward pass, so a
        # batch saves little time, while its attention workspace grows with every window.
        chunk = _CPU_CHUNK if self.device == "cpu" else len(windows)
        groups = [[i for i, _ in jobs][k : k + chunk] for jobs in by_lang.values() for k in range(0, len(jobs), chunk)]
        for idx in groups:
            text_tokens = [[t for seg in results[i].segments for t in seg.tokens] for i in idx]
            # When every window wants words, the encoder output is reused instead of encoding again.
            enc = encoded if idx == list(range(len(windows))) else self._subset(encoded, feats, idx)
            alignments = self._fw.find_alignment(tokenizers[idx[0]], text_tokens, enc, [n_frames[i] for i in idx])
            for i, words in zip(idx, alignments, strict=True):
                merge_punctuations(words, _PREPEND_PUNCTUATION, _APPEND_PUNCTUATION)
                offset = windows[i].offset
                new_segments, cursor = [], 0
                for seg in results[i].segments:
                    seg_words, used = [], 0
                    while cursor < len(words) and used < len(seg.tokens):
                        w = words[cursor]
                        used += len(w["tokens"])
                        cursor += 1
                        if w["word"].strip():
                            seg_words.append(
                                Word(
                                    round(offset + float(w["start"]), 3),
                                    round(offset + float(w["end"]), 3),
                                    w["word"],
                                    float(w["probability"]),
                                )
                            )
                    new_segments.append(Segment(**{**seg.__dict__, "words": tuple(seg_words)}))
                results[i] = WindowResult(**{**results[i].__dict__, "segments": tuple(new_segments)})
        return results
