"""One sentiment analyzer behind one thread: what the routes, live sessions and jobs call.

The model is loaded on first use (or by :meth:`SentimentService.warm`) in the service's own thread,
and every call runs there, so the event loop never waits on it: a live final's sentiment is computed
while the loop keeps feeding audio and sending partials. One thread, because the model serializes
its calls anyway and runs beside Whisper (docs/benchmarks.md: about 35 ms per utterance on one core).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..engine.types import Transcript
from ..errors import InvalidOptionsError
from .segments import SEGMENT_BATCH, label_segments
from .sentiment import Sentiment, SentimentAnalyzer

__all__ = ["SentimentService"]


class SentimentService:
    """``analyze`` (blocking) and ``analyze_async`` over an analyzer made by ``factory`` on first use.

    ``max_texts`` and ``max_chars`` bound one call (InvalidOptionsError past them, HTTP 422).
    """

    def __init__(self, factory: Callable[[], SentimentAnalyzer], *, max_texts: int = 64, max_chars: int = 2000) -> None:
        self._factory = factory
        self._analyzer: SentimentAnalyzer | None = None
        self.max_texts = max_texts
        self.max_chars = max_chars
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="malsori-sentiment")

    def _get(self) -> SentimentAnalyzer:
        if self._analyzer is None:  # only ever in the service's one thread
            self._analyzer = self._factory()
        return self._analyzer

    @property
    def name(self) -> str | None:
        """The analyzer's name once loaded."""
        return None if self._analyzer is None else self._analyzer.name

    def check(self, texts: Sequence[str]) -> list[str]:
        """The texts as a list, or InvalidOptionsError saying which limit they break."""
        texts = list(texts)
        if not texts:
            raise InvalidOptionsError("texts must hold at least one text")
        if len(texts) > self.max_texts:
            raise InvalidOptionsError(f"at most {self.max_texts} texts per request, not {len(texts)}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidOptionsError(f"texts[{i}] must be a string")
            if len(text) > self.max_chars:
                raise InvalidOptionsError(f"texts[{i}] is {len(text)} characters long; the limit is {self.max_chars}")
        return texts

    def _run(self, texts: list[str], language: str | None) -> list[Sentiment]:
        results = self._get().analyze(texts, language)
        if len(results) != len(texts):
            raise RuntimeError(f"the sentiment analyzer answered {len(results)} results for {len(texts)} texts")
        return results

    def submit(self, texts: Sequence[str], language: str | None = None) -> Future[list[Sentiment]]:
        """Analyze in the service's thread (no limit checks: for texts the server made itself)."""
        return self._executor.submit(self._run, list(texts), language)

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        """Blocking (job threads, the CLI)."""
        return self.submit(texts, language).result()

    async def analyze_async(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        """Awaitable without holding the event loop."""
        return await asyncio.wrap_future(self.submit(texts, language))

    async def label_transcript(self, transcript: Transcript) -> Transcript:
        """``transcript`` with every segment's sentiment; batch by batch, so live finals get a turn between."""
        segments = list(transcript.segments)
        done: list[Sentiment] = []
        for i in range(0, len(segments), SEGMENT_BATCH):
            texts = [s.text.strip() for s in segments[i : i + SEGMENT_BATCH]]
            done += await self.analyze_async(texts, transcript.language or None)
        told = iter(done)
        return label_segments(transcript, lambda texts, language: [next(told) for _ in texts])

    def warm(self) -> Future[None]:
        """Load the analyzer now, in its thread (a live session that asks for sentiment calls this at start)."""
        return self._executor.submit(self._load)

    def _load(self) -> None:
        self._get()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
