"""English sentiment from VADER's lexicon and rules (``vaderSentiment``), and the default analyzer that
uses it for English and the e5 model for every other language.

VADER costs well under a millisecond per utterance, the e5 model about 30 ms of one core on our 2-core
CPU; on our labelled set VADER scores macro-F1 0.88 on English (e5: 0.85) and 0.17 on Korean (it has
no Korean lexicon), so English goes to VADER and the rest to e5 (docs/benchmarks.md, bench/sentiment.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..errors import ModelError
from .sentiment import Sentiment, SentimentAnalyzer, SentimentLabel

__all__ = ["VaderSentimentAnalyzer", "LanguageRoutedAnalyzer"]

VADER_THRESHOLD = 0.05
"""|compound| below this is neutral: the threshold VADER's authors give."""


class VaderSentimentAnalyzer:
    """VADER: ``compound`` >= 0.05 positive, <= -0.05 negative, else neutral. ``score``: how far the
    compound score is into its label's range (|compound| for positive and negative, 1 - |compound| for neutral)."""

    name = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise ModelError("English sentiment needs the analysis extra: pip install 'malsori[analysis]'") from exc
        self._inner = SentimentIntensityAnalyzer()

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        out = []
        for text in texts:
            compound = float(self._inner.polarity_scores(text)["compound"]) if text.strip() else 0.0
            label: SentimentLabel
            if compound >= VADER_THRESHOLD:
                label, score = "positive", compound
            elif compound <= -VADER_THRESHOLD:
                label, score = "negative", -compound
            else:
                label, score = "neutral", 1.0 - abs(compound)
            out.append(Sentiment(label=label, score=round(score, 4)))
        return out


class LanguageRoutedAnalyzer:
    """English (``language == "en"``) to ``english``, everything else (unknown language too) to ``other``;
    each made on first need. Order of results is the order of texts."""

    name = "auto"

    def __init__(self, english: Callable[[], SentimentAnalyzer], other: Callable[[], SentimentAnalyzer]) -> None:
        self._factories = {"en": english, "other": other}
        self._made: dict[str, SentimentAnalyzer] = {}
        self._lock = threading.Lock()

    def _get(self, key: str) -> SentimentAnalyzer:
        with self._lock:
            if key not in self._made:
                self._made[key] = self._factories[key]()
            return self._made[key]

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        return self._get("en" if language == "en" else "other").analyze(texts, language)
