"""Prometheus metrics of one app, on its own registry (not the global one: tests build many apps).

Counted by a small ASGI middleware (requests by route template and status, latency; WebSocket
connections open, accepted and closed by route and close code), by the inference helpers (audio
seconds, processing time, real-time factor), by the scheduler's batch observer (batch size, decode
time and real-time factor by priority, audio decoded by device: the GPU/CPU split) and by the live
runner (final latency); gauges (queue depth, sessions, jobs, model load) are read from
:class:`~malsori.server.services.Services` when /metrics is scraped. deploy/grafana's dashboard and
deploy/prometheus's alert rules are built on these names (tests/test_deploy_prometheus.py checks them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import HTTPConnection

from ..tenants import Scope
from .auth import Require
from .deps import ServicesDep

if TYPE_CHECKING:
    from ..engine.scheduler import BatchReport
    from .services import Services

__all__ = ["Metrics", "MetricsMiddleware", "router"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Live finals land 0.5-3 s after their audio on a CPU (docs/benchmarks.md); finer steps there.
_FINAL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
PRIORITIES = ("live", "request", "job")


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

        self.request_rtf = Histogram(
            "malsori_real_time_factor",
            "Processing time over audio duration per transcription request (below 1: faster than real time), by route.",
            ["route"],
            buckets=_RTF_BUCKETS,
            registry=self.registry,
        )
        self.final_latency = Histogram(
            "malsori_live_final_latency_seconds",
            "Live finals: from the arrival of the audio a final ends with to the final being sent, by protocol.",
            ["protocol"],
            buckets=_FINAL_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "malsori_decode_batch_size",
            "Windows decoded together in one model call, by priority class (live, request, job).",
            ["priority"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "malsori_decode_batch_seconds",
            "Wall time of one batched model call, by priority class.",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decode_rtf = Histogram(
            "malsori_decode_real_time_factor",
            "Decode time over the audio time of a batch's windows (below 1: faster than real time), by priority class.",
            ["priority"],
            buckets=_RTF_BUCKETS,
            registry=self.registry,
        )
        self.decoded_audio = Counter(
            "malsori_decoded_audio_seconds",
            "Seconds of audio decoded, by device (cpu, cuda) and priority class: where the work ran.",
            ["device", "priority"],
            registry=self.registry,
        )
        self.decode_failures = Counter(
            "malsori_decode_failures",
            "Batched decodes that failed, by device.",
            ["device"],
            registry=self.registry,
        )
        self.websockets_open = Gauge(
            "malsori_websocket_connections",
            "WebSocket connections open now, by route.",
            ["route"],
            registry=self.registry,
        )
        self.websockets_accepted = Counter(
            "malsori_websocket_accepted",
            "WebSocket connections accepted, by route.",
            ["route"],
            registry=self.registry,
        )
        self.websockets_closed = Counter(
            "malsori_websocket_closes",
            "WebSocket connections closed, by route, by which side (server, client) and close code.",
            ["route", "side", "code"],
            registry=self.registry,
        )

    def bind(self, services: Services) -> None:
        """Export the gauges read from ``services`` at scrape time."""
        self.registry.register(_ServiceGauges(services))

    def observe_inference(self, route: str, audio_s: float, processing_s: float) -> None:
        self.audio_seconds.labels(route).inc(max(0.0, audio_s))
        self.processing_seconds.labels(route).observe(max(0.0, processing_s))
        if audio_s > 0:
            self.request_rtf.labels(route).observe(max(0.0, processing_s) / audio_s)

    def watch_device(self, device: str) -> None:
        """Start the decode series of ``device`` at zero, so a dashboard shows the split before work comes."""
        self.decode_failures.labels(device)
        for priority in PRIORITIES:
            self.decoded_audio.labels(device, priority)
            self.batch_size.labels(priority)
            self.batch_seconds.labels(priority)
            self.decode_rtf.labels(priority)

    def observe_batch(self, report: BatchReport, device: str) -> None:
        """The scheduler's ``on_batch`` observer (called in its worker thread)."""
        self.batch_size.labels(report.priority).observe(report.size)
        self.batch_seconds.labels(report.priority).observe(report.decode_s)
        if report.failed:
            self.decode_failures.labels(device).inc()
            return
        self.decoded_audio.labels(device, report.priority).inc(report.audio_s)
        if report.audio_s > 0:
            self.decode_rtf.labels(report.priority).observe(report.decode_s / report.audio_s)

    def observe_final(self, protocol: str, latency_s: float) -> None:
        self.final_latency.labels(protocol).observe(max(0.0, latency_s))

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
        pending: dict[str, int] = {}
        # Scaled out, live windows wait in the gateway's live scheduler (in front of the workers) too.
        for scheduler in (s.scheduler, s.live_scheduler):
            if scheduler is not None:
                for priority, count in scheduler.stats().pending.items():
                    pending[priority] = pending.get(priority, 0) + count
        for priority, count in pending.items():
            depth.add_metric([priority], float(count))
        if s.scheduler is not None:
            busy.add_metric([], s.scheduler.stats().busy_fraction)
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
        if s.scale is not None:
            yield from _scale_gauges(s)


def _scale_gauges(s: Services) -> Iterable[GaugeMetricFamily]:
    """Scaled out: the broker's queues and the workers the registry knows, as this gateway sees them."""
    assert s.scale is not None
    q = s.settings.queue
    broker = GaugeMetricFamily("malsori_broker_queue_depth", "Tasks waiting in the broker, by queue.", labels=["queue"])
    workers = GaugeMetricFamily("malsori_workers_alive", "Workers with a fresh heartbeat, by device.", labels=["device"])
    try:
        with s.scale.celery.connection_for_read() as connection:
            channel = connection.default_channel
            for queue in (q.cpu_queue, q.gpu_queue, q.analyze_queue):
                broker.add_metric([queue], float(_queue_length(channel, queue)))
        yield broker
    except Exception as exc:  # the broker is down: the gauge is missing, which the dashboard shows
        log.warning("reading the broker's queues for /metrics failed: %s", exc)
    try:
        alive: dict[str, int] = {"cpu": 0}
        for worker in s.scale.workers():
            alive[worker.device] = alive.get(worker.device, 0) + 1
        for device, count in alive.items():
            workers.add_metric([device], float(count))
        yield workers
    except Exception as exc:
        log.warning("reading the worker registry for /metrics failed: %s", exc)


def _queue_length(channel, queue: str) -> int:
    """Messages waiting in ``queue``: a passive declare reads the length without creating the queue
    (Redis: LLEN); a queue that does not exist yet (Redis: an empty list has no key) holds none."""
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:
        if str(getattr(exc, "reply_code", None)) == "404":  # AMQP's NOT_FOUND, also from kombu's Redis transport
            return 0
        raise


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and WebSocket connection by its route template
    (bounded labels)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
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

    async def _websocket(self, scope, receive, send) -> None:
        """Open connections by route (counted from the accept, when the route is known), and each
        close with the side that closed first and its code."""
        m = self.metrics
        state: dict = {"route": None, "closed": False}

        def close(side: str, code: int) -> None:
            if state["route"] is not None and not state["closed"]:
                state["closed"] = True
                m.websockets_closed.labels(state["route"], side, str(code)).inc()

        async def send_wrapper(message) -> None:
            if message["type"] == "websocket.accept":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                state["route"] = route
                m.websockets_accepted.labels(route).inc()
                m.websockets_open.labels(route).inc()
            elif message["type"] == "websocket.close":
                close("server", int(message.get("code", 1000)))
            await send(message)

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                close("client", int(message.get("code", 1005)))
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            if state["route"] is not None:
                close("server", 1006)  # the handler ended without a close frame either way
                m.websockets_open.labels(state["route"]).dec()


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(conn: HTTPConnection, services: ServicesDep) -> Response:
    if not services.settings.auth.public_metrics:  # counts only, but with keys a read key unless said otherwise
        Require(Scope.READ)(conn)
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
