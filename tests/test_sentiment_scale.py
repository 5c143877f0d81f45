"""Sentiment scaled out, for real: redis-server, a gateway app, a ``malsori worker`` process on the
``analyze`` queue (real sentiment model; fake Whisper decoder, so live windows are tone bursts).

While no worker serves ``analyze`` the gateway's own model answers; once one does, texts of
POST /v1/analysis/sentiment and every final of a live session started with ``"sentiment": true`` are
analysed there (its log counts the ``malsori.analyze`` tasks) and the results reach the client.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import numpy as np
import pytest
from inprocess import running_app
from scaled import WorkerProcess, scaled_env
from test_protocol_fast import START, frames, recv, run, s16, until_closed
from websockets.asyncio.client import connect

from malsori.engine.fake import FakeDecoder, tone_speech

pytestmark = [pytest.mark.e2e]

TEXTS = ["Thank you so much, this is wonderful!", "This is awful, I hate it.", "정말 행복해요.", "진짜 최악이에요."]
LABELS = ["positive", "negative", "positive", "negative"]


def _analyze_tasks(worker: WorkerProcess) -> int:
    """``malsori.analyze`` tasks the worker finished (Celery logs each one as it succeeds)."""
    if not worker.log_path.exists():
        return 0
    return len(re.findall(r"Task malsori\.analyze\[[^]]+\] succeeded", worker.log_path.read_text(errors="replace")))


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    from malsori.config import QueueSettings, ServerSettings, Settings
    from malsori.server.app import create_app
    from malsori.streaming.vad import EnergyVad

    root = tmp_path_factory.mktemp("sentiment-scale")
    db = f"sqlite:///{root / 'malsori.db'}"
    env = scaled_env(
        redis_server.url, db, root / "data", MALSORI__QUEUE__KEY_PREFIX="sent", MALSORI__QUEUE__WORKER_DECODER="fake"
    )
    settings = Settings(
        queue=QueueSettings(broker_url=redis_server.url, key_prefix="sent", heartbeat_s=0.5, worker_ttl_s=8),
        storage={"url": db},
        server=ServerSettings(data_dir=root / "data"),
    )
    worker = WorkerProcess("an1", "stt.cpu,analyze", env, root)
    try:
        with running_app(create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)) as port:
            yield f"http://127.0.0.1:{port}", worker
    finally:
        worker.stop()


def _tasks_reach(worker: WorkerProcess, n: int, timeout: float = 20.0) -> int:
    """The worker's finished-task count once it reaches ``n`` (or the deadline passes): Celery logs a
    task's success just after storing its result, so the gateway can have the answer first."""
    deadline = time.monotonic() + timeout
    while (count := _analyze_tasks(worker)) < n and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the worker's log, the only witness of where the task ran
    return count


def _post(base: str) -> list[dict]:
    response = httpx.post(f"{base}/v1/analysis/sentiment", json={"texts": TEXTS}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_without_an_analyze_worker_the_gateway_answers(deployment):
    base, worker = deployment
    assert [r["label"] for r in _post(base)] == LABELS
    assert _analyze_tasks(worker) == 0


def test_with_an_analyze_worker_texts_and_live_finals_go_to_the_queue(deployment):
    base, worker = deployment
    worker.start()
    assert [r["label"] for r in _post(base)] == LABELS, worker.log_tail()
    assert _tasks_reach(worker, 1) == 1

    speech = np.concatenate([tone_speech([0.3, "alpha", "bravo", 0.8]), tone_speech(["charlie", "delta", 0.8])])

    async def scenario():
        async with connect(base.replace("http", "ws") + "/v1/stream") as ws:
            await ws.send(json.dumps({**START, "sentiment": True}))
            assert (await recv(ws))["type"] == "ready"
            for frame in frames(s16(speech)):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "stop"}))
            return await until_closed(ws, timeout=60)

    events, code = run(scenario())
    finals = [e for e in events if e["type"] == "final"]
    assert code == 1000 and [f["text"] for f in finals] == ["alpha bravo", "charlie delta"], events
    for final in finals:
        assert final["sentiment"] is not None, worker.log_tail()
        assert final["sentiment"]["label"] in ("negative", "neutral", "positive")
        assert 1 / 3 < final["sentiment"]["score"] <= 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert _tasks_reach(worker, 1 + len(finals)) == 1 + len(finals)
