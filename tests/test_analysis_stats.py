"""Live statistics (issue 13) against values computed by hand on a fixed transcript."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from malsori.analysis.stats import TREND_WINDOW, LiveStats, Utterance
from malsori.streaming.events import Final

# Four finals, two speakers; every value below is worked out in the comments.
TRANSCRIPT = [
    # text, start, end, speaker, sentiment, latency (s)
    ("Hello there everyone", 0.5, 2.0, "A", {"label": "positive", "score": 0.8}, 0.9),  # 3 words, 1.5 s
    ("this is bad", 3.0, 4.0, "B", {"label": "negative", "score": 0.6}, 1.1),  # 3 words, 1.0 s
    ("okay let us go on now", 5.0, 7.5, "A", {"label": "neutral", "score": 0.9}, 0.7),  # 6 words, 2.5 s
    ("great", 8.0, 8.5, "B", {"label": "positive", "score": 1.0}, 2.0),  # 1 word, 0.5 s
]


def _finals():
    for i, (text, start, end, speaker, sentiment, _) in enumerate(TRANSCRIPT):
        # Finals as the live session sends them with diarize and sentiment on.
        yield SimpleNamespace(seq=i + 1, text=text, start=start, end=end, speaker=speaker, sentiment=sentiment)


def _stats() -> LiveStats:
    stats = LiveStats()
    for final, row in zip(_finals(), TRANSCRIPT, strict=True):
        stats.add(Utterance.of(final), latency_s=row[5])
    stats.advance(10.0)
    return stats


def test_totals_rates_and_silence():
    snap = _stats().snapshot()
    assert snap.finals == 4
    assert snap.words == 13
    assert snap.speaking_s == 5.5
    assert snap.wpm == 141.8  # 13 / 5.5 * 60 = 141.82
    assert snap.silence_ratio == 0.45  # (10 - 5.5) / 10
    assert snap.audio_s == 10.0


def test_silence_ratio_leaves_out_speech_waiting_for_its_final():
    stats = _stats()
    stats.advance(10.0, open_s=1.0)
    assert stats.snapshot().silence_ratio == 0.389  # (9 - 5.5) / 9


def test_per_speaker():
    speakers = _stats().snapshot().speakers
    assert speakers is not None and set(speakers) == {"A", "B"}
    a, b = speakers["A"], speakers["B"]
    assert (a.words, a.speaking_s, a.wpm, a.finals, a.share) == (9, 4.0, 135.0, 2, 0.727)  # 9 / 4 * 60; 4 / 5.5
    assert (b.words, b.speaking_s, b.wpm, b.finals, b.share) == (4, 1.5, 160.0, 2, 0.273)


def test_sentiment_mix_mean_and_trend():
    sentiment = _stats().snapshot().sentiment
    assert sentiment is not None
    assert sentiment.counts == {"negative": 1, "neutral": 1, "positive": 2}
    assert sentiment.mix == {"negative": 0.25, "neutral": 0.25, "positive": 0.5}
    assert sentiment.mean == 0.3  # (0.8 - 0.6 + 0 + 1.0) / 4
    # Rolling mean of the valences so far (fewer than TREND_WINDOW of them): .8, .2/2, .2/3, 1.2/4
    assert sentiment.trend == ((2.0, 0.8), (4.0, 0.1), (7.5, 0.067), (8.5, 0.3))


def test_trend_is_a_rolling_mean_of_the_last_window():
    stats = LiveStats()
    for i in range(TREND_WINDOW + 2):  # five negatives (-1), then two positives (+1)
        label = "negative" if i < TREND_WINDOW else "positive"
        stats.add(Utterance("word", i, i + 0.5, sentiment=label, score=1.0))
    trend = stats.snapshot().sentiment.trend  # type: ignore[union-attr]
    assert [v for _, v in trend] == [-1.0, -1.0, -1.0, -1.0, -1.0, -0.6, -0.2]


def test_latency_percentiles():
    latency = _stats().snapshot().latency
    assert latency is not None
    # sorted 0.7 0.9 1.1 2.0: nearest rank p50 = 2nd, p95 = 4th
    assert (latency.count, latency.p50_ms, latency.p95_ms, latency.last_ms) == (4, 900.0, 2000.0, 2000.0)


def test_no_speakers_no_sentiment_no_latency():
    stats = LiveStats()
    stats.add(Utterance.of(Final(1, "one two three four", 0.0, 2.0)))
    snap = stats.snapshot()
    assert (snap.words, snap.wpm, snap.speakers, snap.sentiment, snap.latency) == (4, 120.0, None, None, None)
    assert snap.silence_ratio == 0.0  # no audio beyond the final told yet: settled = speaking time
    data = snap.to_dict()
    assert data["speakers"] is None and data["sentiment"] is None and data["words"] == 4


def test_unknown_sentiment_label_is_ignored():
    u = Utterance.of(SimpleNamespace(text="x", start=0, end=1, speaker=None, sentiment={"label": "angry", "score": 1}))
    assert u.sentiment is None and u.valence == 0.0


@pytest.mark.parametrize("empty", [LiveStats()])
def test_empty(empty):
    snap = empty.snapshot()
    assert (snap.words, snap.wpm, snap.silence_ratio, snap.finals) == (0, 0.0, 0.0, 0)
