"""Sentiment when scaled out: texts go to the ``analyze`` queue while a worker serves it.

A gateway's :class:`~malsori.analysis.service.SentimentService` holds a :class:`RoutedSentimentAnalyzer`:
each call asks the registry whether a live worker consumes ``queue.analyze_queue`` (``malsori worker
-Q stt.cpu,analyze``); if one does, the texts go there as a ``malsori.analyze`` task and the answer
comes back through the Celery result backend; if none does, the gateway's own model answers, so a
deployment without analysis workers still labels its finals. Runs in the service's thread, never in
the event loop (a Redis round trip, then a blocking wait).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..analysis import Sentiment, SentimentAnalyzer
from ..errors import OverloadedError
from .celery_app import ANALYZE_TASK, make_celery
from .registry import Registry

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["RoutedSentimentAnalyzer", "analyze_task_body"]

log = logging.getLogger(__name__)


class RoutedSentimentAnalyzer:
    """The ``analyze`` queue when a worker serves it, else ``local()`` (made on first need)."""

    def __init__(self, settings: Settings, local: Callable[[], SentimentAnalyzer]) -> None:
        self.q = settings.queue
        self.timeout_s = settings.analysis.timeout_s
        self.celery = make_celery(self.q, name="malsori-analysis")
        self.registry = Registry(self.q.redis(), prefix=self.q.key_prefix, ttl_s=self.q.worker_ttl_s)
        self._local_factory = local
        self._local: SentimentAnalyzer | None = None
        self.name = "analyze-queue"
        self.last_route: str | None = None
        """``queue`` or ``local``: where the last call ran (for tests and logs)."""

    def _worker_serves_queue(self) -> bool:
        try:
            return any(self.q.analyze_queue in w.queues for w in self.registry.alive())
        except Exception as exc:  # Redis away: the gateway's own model still answers
            log.warning("worker registry unreadable (%s); analysing in the gateway", exc)
            return False

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        if self._worker_serves_queue():
            self.last_route = "queue"
            return self._remote(list(texts), language)
        self.last_route = "local"
        if self._local is None:
            self._local = self._local_factory()
        return self._local.analyze(texts, language)

    def _remote(self, texts: list[str], language: str | None) -> list[Sentiment]:
        from celery.exceptions import TimeoutError as CeleryTimeout

        result = self.celery.send_task(ANALYZE_TASK, args=[texts, language], queue=self.q.analyze_queue)
        try:
            data = result.get(timeout=self.timeout_s)
        except CeleryTimeout:
            raise OverloadedError(
                f"no analysis worker answered within {self.timeout_s:g} s", retry_after=self.timeout_s
            ) from None
        finally:
            result.forget()
        return [Sentiment.from_dict(d) for d in data]

    def close(self) -> None:
        self.registry.close()


def analyze_task_body(analyzer: SentimentAnalyzer, texts: Sequence[str], language: str | None) -> list[dict[str, Any]]:
    """What a worker's ``malsori.analyze`` task returns: one ``{"label", "score"}`` per text."""
    return [s.to_dict() for s in analyzer.analyze([str(t) for t in texts], language)]
