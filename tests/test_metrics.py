"""/metrics counts what the dashboard shows: a live session's finals (latency), WebSocket connections
and their close codes by route, decode batches by priority and audio by device. Fake decoder and tone
bursts (fast); tests/test_deploy_prometheus.py checks the same names against the real model."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import numpy as np
from inprocess import running_app
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from malsori.config import ServerSettings, Settings
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.server.app import create_app
from malsori.streaming.vad import EnergyVad

SR = 16000
SPEECH = np.concatenate([tone_speech([0.3, "alpha", "bravo", 0.8]), tone_speech(["charlie", "delta", 0.8])])
START = {"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


async def _session(url: str) -> tuple[list[dict], int | None]:
    events = []
    async with connect(url + "/v1/stream") as ws:
        await ws.send(json.dumps(START))
        pcm = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i : i + 3200])
        await ws.send(json.dumps({"type": "stop"}))
        async for raw in ws:
            events.append(json.loads(raw))
    return events, ws.close_code


async def _refused(url: str) -> int | None:
    async with connect(url + "/v1/stream") as ws:
        await ws.send(b"\x00\x00")  # audio before start: a protocol error
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
    return ws.close_code


def test_metrics_count_live_finals_websockets_and_batches(tmp_path):
    decoder = FakeDecoder()
    app = create_app(Settings(server=ServerSettings(data_dir=tmp_path)), transcriber=decoder, live_vad=EnergyVad)
    with running_app(app) as port:
        url = f"ws://127.0.0.1:{port}"
        events, code = asyncio.run(asyncio.wait_for(_session(url), 20))
        refused = asyncio.run(asyncio.wait_for(_refused(url), 20))
        samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 2 and code == 1000 and refused == 1008

    # Final latency: one observation per final, each short (the fake decoder answers at once).
    assert _value(samples, "malsori_live_final_latency_seconds_count", protocol="v1") == 2
    assert 0 <= _value(samples, "malsori_live_final_latency_seconds_sum", protocol="v1") < 2 * 5.0
    # WebSockets: both accepted, none open now, closed by the server with 1000 and 1008.
    route = "/v1/stream"
    assert _value(samples, "malsori_websocket_accepted_total", route=route) == 2
    assert _value(samples, "malsori_websocket_connections", route=route) == 0
    assert _value(samples, "malsori_websocket_closes_total", route=route, side="server", code="1000") == 1
    assert _value(samples, "malsori_websocket_closes_total", route=route, side="server", code="1008") == 1
    # Batches: live windows were decoded in batches; their audio counted on the decoder's device.
    batches = _value(samples, "malsori_decode_batch_size_count", priority="live")
    assert batches >= 2 and _value(samples, "malsori_decode_batch_size_sum", priority="live") >= batches
    device = str(getattr(decoder, "device", "cpu"))
    assert _value(samples, "malsori_decoded_audio_seconds_total", device=device, priority="live") > 0
    assert _value(samples, "malsori_decode_real_time_factor_count", priority="live") == batches
    # Series of the other priorities exist at zero, so a dashboard draws them before work comes.
    assert ("malsori_decode_batch_size_count", (("priority", "job"),)) in samples
