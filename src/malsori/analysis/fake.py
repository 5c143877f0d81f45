"""A keyword sentiment analyzer: the fake beside the model, for fast protocol and queue tests.

Positive if a text contains a positive keyword and no negative one, negative the other way round,
neutral otherwise. Deterministic and instant, so a test can say which label each final must carry.
"""

from __future__ import annotations

from collections.abc import Sequence

from .sentiment import Sentiment

__all__ = ["KeywordSentimentAnalyzer"]

_POSITIVE = ("good", "great", "love", "happy", "thank", "좋", "감사", "행복")
_NEGATIVE = ("bad", "terrible", "hate", "sad", "angry", "나쁘", "싫", "최악", "화나")


class KeywordSentimentAnalyzer:
    """Labels by keywords (English and Korean stems); score (confidence) 0.9, or 1.0 for neutral."""

    name = "keywords"

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        out = []
        for text in texts:
            t = text.lower()
            pos = any(k in t for k in _POSITIVE)
            neg = any(k in t for k in _NEGATIVE)
            if pos and not neg:
                out.append(Sentiment(label="positive", score=0.9))
            elif neg and not pos:
                out.append(Sentiment(label="negative", score=0.9))
            else:
                out.append(Sentiment(label="neutral", score=1.0))
        return out
