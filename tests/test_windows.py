"""Cutting inputs into decode windows (plan_windows), and one long input end to end with the real model.

The cutting tests need no Whisper model: synthetic arrays for the energy cut, fixed speech regions for
the VAD merge, and real LJ Speech clips through the Silero VAD (ONNX, fast) for cuts at real pauses.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from malsori.engine import MAX_WINDOW_S, SAMPLE_RATE, Pipeline, TranscribeOptions, decode_audio
from malsori.engine import windows as engine_windows
from malsori.engine.windows import plan_windows
from malsori.evaluation import corpus_wer

SR = SAMPLE_RATE
LIMIT = int(MAX_WINDOW_S * SR)


def _ljspeech(manifest, count: int | None = None):
    clips = sorted((c for c in manifest if c.path.parent.name == "ljspeech"), key=lambda c: c.path.name)
    return clips[:count] if count else clips


def _concatenate(audios, gap_s: float = 0.5):
    """Clips in order with ``gap_s`` of silence between them; returns the audio and each clip's span."""
    gap = np.zeros(int(gap_s * SR), dtype=np.float32)
    parts, spans, pos = [], [], 0
    for k, a in enumerate(audios):
        if k:
            parts.append(gap)
            pos += len(gap)
        parts.append(a)
        spans.append((pos, pos + len(a)))
        pos += len(a)
    return np.concatenate(parts), spans


def _assert_tiles(windows, n):
    """Windows are contiguous, in order, cover [0, n) and none is longer than the limit."""
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (_, e0), (s1, _) in pairwise(windows):
        assert e0 == s1
    assert all(0 < e - s <= LIMIT for s, e in windows), [(e - s) / SR for s, e in windows]


# -- without the VAD: the whole input, cut at the quietest moment --------------------------------------
def test_short_input_is_one_window():
    audio = np.random.default_rng(0).normal(0, 0.1, 10 * SR).astype(np.float32)
    assert plan_windows(audio, vad_filter=False) == [(0, len(audio))]


def test_long_input_is_cut_in_its_quiet_gaps():
    rng = np.random.default_rng(1)
    audio = rng.normal(0, 0.2, 70 * SR).astype(np.float32)
    gaps = [(25.0, 25.4), (40.0, 40.3), (51.0, 51.3), (60.0, 60.2)]  # seconds of near silence
    for a, b in gaps:
        audio[int(a * SR) : int(b * SR)] *= 0.001
    windows = plan_windows(audio, vad_filter=False)
    _assert_tiles(windows, len(audio))
    cuts = [e / SR for _, e in windows[:-1]]
    assert len(cuts) == 2
    # Each cut lies in one of the quiet gaps, never in the loud noise around them.
    for cut in cuts:
        assert any(a <= cut <= b for a, b in gaps), cuts


def test_input_without_pauses_is_still_cut_below_the_limit():
    audio = np.random.default_rng(2).normal(0, 0.2, 95 * SR).astype(np.float32)
    windows = plan_windows(audio, vad_filter=False)
    _assert_tiles(windows, len(audio))
    assert len(windows) in (4, 5)  # 95 s in windows of 23 to 28 s


def test_small_window_limit_never_cuts_before_the_window_start():
    audio = np.random.default_rng(3).normal(0, 0.2, 20 * SR).astype(np.float32)
    windows = plan_windows(audio, vad_filter=False, max_window_s=3.0)
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    assert all(0 < e - s <= 3 * SR for s, e in windows)
    assert all(e0 == s1 for (_, e0), (s1, _) in pairwise(windows))


# -- with the VAD: speech regions merged up to the limit ---------------------------------------------
def test_vad_regions_are_merged_up_to_the_limit(monkeypatch):
    regions_s = [(1, 6), (7, 15), (16, 27), (28, 33), (40, 50), (52, 79), (85, 86)]
    regions = [(a * SR, b * SR) for a, b in regions_s]
    monkeypatch.setattr(engine_windows, "speech_regions", lambda audio: regions)
    windows = plan_windows(np.zeros(90 * SR, dtype=np.float32), vad_filter=True)
    assert [(s / SR, e / SR) for s, e in windows] == [(1, 27), (28, 50), (52, 79), (85, 86)]
    # Every region lies whole inside one window; silence before, between and after windows is dropped.
    for a, b in regions:
        assert sum(s <= a and b <= e for s, e in windows) == 1


def test_vad_drops_an_input_without_speech(monkeypatch):
    monkeypatch.setattr(engine_windows, "speech_regions", lambda audio: [])
    assert plan_windows(np.zeros(5 * SR, dtype=np.float32), vad_filter=True) == []


def test_vad_keeps_a_short_input_with_speech_whole(monkeypatch):
    monkeypatch.setattr(engine_windows, "speech_regions", lambda audio: [(SR // 2, 2 * SR), (3 * SR, 4 * SR)])
    assert plan_windows(np.zeros(5 * SR, dtype=np.float32), vad_filter=True) == [(0, 5 * SR)]


def test_vad_windows_on_real_speech_cut_at_pauses(manifest):
    clips = _ljspeech(manifest)
    audio, _ = _concatenate([decode_audio(c.path) for c in clips])
    windows = plan_windows(audio, vad_filter=True)
    assert len(windows) >= len(audio) / LIMIT
    assert all(0 < e - s <= LIMIT for s, e in windows), [(e - s) / SR for s, e in windows]
    # All speech is inside a window: every 100 ms with speech energy is covered.
    frame = SR // 10
    loud = [k for k in range(0, len(audio) - frame, frame) if np.sqrt(np.mean(audio[k : k + frame] ** 2)) > 0.02]
    assert loud
    uncovered = [k / SR for k in loud if not any(s <= k and k + frame <= e for s, e in windows)]
    assert not uncovered, uncovered
    # Each cut between windows falls in a pause: the 50 ms either side of it is quiet.
    for (_, e0), (s1, _) in pairwise(windows):
        for edge in (e0, s1):
            around = audio[max(0, edge - SR // 20) : edge + SR // 20]
            assert np.sqrt(np.mean(around**2)) < 0.01, edge / SR


# -- one long input, real model ----------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("condition", [True, False])
def test_long_input_loses_no_words_at_window_cuts(transcriber, manifest, condition):
    clips = _ljspeech(manifest, 6)  # LJ001-0001..0006: 43 s, so at least two windows
    audio, _ = _concatenate([decode_audio(c.path) for c in clips])
    t = Pipeline(transcriber).transcribe(audio, TranscribeOptions(language="en", condition_on_previous_text=condition))
    reference = " ".join(c.reference for c in clips)
    rate = corpus_wer([reference], [t.text])
    # Measured 2.8% (3 errors in 108 words: "wood cutters", "mentioning") with and without conditioning;
    # plain faster-whisper 3.7% on the same audio. A window cut that dropped or repeated a clause would
    # add 10 or more errors.
    assert rate <= 0.06, t.text
    assert t.duration == pytest.approx(len(audio) / SR)
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and t.segments[-1].end <= t.duration + 0.01
    assert t.segments[-1].end > t.duration - 3.0  # the last clip is transcribed, not dropped


@pytest.mark.model
def test_long_input_with_context_chains_windows_and_keeps_the_error_rate_low(transcriber, manifest):
    """The 237 s LJ Speech concatenation of bench/files.py with ``condition_on_previous_text``: each
    window after the first of its run is decoded with the tokens its predecessor decoded (timestamps
    included, as Whisper conditions on its own output), runs side by side so batches stay full.

    Measured on this input (docs/benchmarks.md "File transcription"): 3.4% (19 errors in 567 words,
    the proper names and "wood cutters" that plain faster-whisper also misses; it scored 3.9%), against
    4.4% without context, 4.8% with context when a window's repeat of its last phrase was kept, and
    5.3-5.6% with the previous text as a plain-text prompt (no timestamps), which made Whisper repeat
    the end of a window ("and it was natural, therefore" twice) or skip the start of the next.
    Those figures are from a CPU with AVX-512; on one with AVX2 only (other int8 kernels, so other
    beam choices on the names) the same code gives 4.2% (24 errors: "lowercase" twice, "chauffeur"),
    so the bound sits between that and the broken variants."""
    from malsori.engine.decoder import DirectDecoder

    class Recording(DirectDecoder):
        def __init__(self) -> None:
            self.pairs: list[tuple[object, object]] = []

        def decode_windows(self, windows, options=None):
            results = transcriber.decode_windows(windows, options)
            self.pairs.extend(zip(windows, results, strict=True))
            return results

    clips = _ljspeech(manifest)
    audio, _ = _concatenate([decode_audio(c.path) for c in clips])
    recording = Recording()
    t = Pipeline(recording).transcribe(audio, TranscribeOptions(language="en", condition_on_previous_text=True))
    rate = corpus_wer([" ".join(c.reference for c in clips)], [t.text])
    assert rate <= 0.045, (rate, t.text)

    windows = sorted(recording.pairs, key=lambda p: p[0].offset)
    assert len(windows) >= 8
    chained = [w for w, _ in windows if w.prompt_tokens]
    assert len(chained) >= len(windows) // 2  # runs of two windows at least: all but each run's first
    for (_, result), (window, _) in pairwise(windows):
        if window.prompt_tokens:
            n = min(len(result.tokens), len(window.prompt_tokens))  # at most 223 are carried
            assert n and window.prompt_tokens[-n:] == result.tokens[-n:]  # its predecessor's output
