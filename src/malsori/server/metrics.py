"""Prometheus metrics of one app, on its own registry (not the global one: tests build many apps).

Counted by a small ASGI middleware (requests by route template and status, latency) and by the
inference helpers (audio seconds, processing time); gauges (queue depth, sessions, jobs, model load)
are read from :class:`~malsori.server.services.Services` when /metrics is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .deps import ServicesDep

if TYPE_CHECKING:
    from .services import Services

__all__ = ["Metrics", "MetricsMiddleware", "router"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "malsori_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "malsori_http_request_duration_seconds",
            "Time from request to response, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "malsori_audio_seconds",
            "Seconds of audio received for transcription or detection, by route.",
            ["route"],
            registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "malsori_processing_seconds",
            "Inference time per request (decode and transcribe, not upload), by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "malsori_rejected_requests",
            "Requests refused by admission control (429) or while not ready (503).",
            ["reason"],
            registry=self.registry,
        )

    def bind(self, services: Services) -> None:
        """Export the gauges read from ``services`` at scrape time."""
        self.registry.register(_ServiceGauges(services))

    def observe_inference(self, route: str, audio_s: float, processing_s: float) -> None:
        self.audio_seconds.labels(route).inc(max(0.0, audio_s))
        self.processing_seconds.labels(route).observe(max(0.0, processing_s))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServiceGauges(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self.services
        ready = GaugeMetricFamily("malsori_model_ready", "1 when the model is loaded and taking work.")
        ready.add_metric([], 1.0 if s.ready else 0.0)
        yield ready
        load = GaugeMetricFamily("malsori_model_load_seconds", "Seconds the model took to load.", labels=["model"])
        if s.transcriber is not None:
            load.add_metric([s.transcriber.model_name], float(getattr(s.transcriber, "load_seconds", 0.0)))
        yield load
        depth = GaugeMetricFamily("malsori_queue_depth", "Windows waiting for the model, by priority.", labels=["priority"])
        busy = GaugeMetricFamily("malsori_decoder_busy_ratio", "Share of the last 10 s the decoder was busy.")
        if s.scheduler is not None:
            stats = s.scheduler.stats()
            for priority, count in stats.pending.items():
                depth.add_metric([priority], float(count))
            busy.add_metric([], stats.busy_fraction)
        yield depth
        yield busy
        sessions = GaugeMetricFamily("malsori_active_sessions", "Live streaming sessions open now.")
        sessions.add_metric([], float(s.active_sessions()))
        yield sessions
        jobs = GaugeMetricFamily("malsori_active_jobs", "Jobs queued or running now.")
        jobs.add_metric([], float(s.active_jobs()))
        yield jobs
        uptime = GaugeMetricFamily("malsori_uptime_seconds", "Seconds since the app started.")
        uptime.add_metric([], s.uptime_s)
        yield uptime


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by its route template (bounded labels)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
