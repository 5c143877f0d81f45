"""Fuzzing with keys configured (issue 14): schemathesis over the whole schema with a valid key gives
no 5xx, and a WebSocket message fuzzer (random JSON, wrong types, huge frames, binary before start,
thousands of tiny frames) leaves another session's finals intact and the server's sessions bounded.

In process with the fake decoder (no model), so every route and socket is reached quickly; the
model-backed fuzz pass without keys is tests/test_fuzz_openapi.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from inprocess import running_app
from schemathesis.checks import not_a_server_error
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from malsori.config import Settings
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.server.app import create_app
from malsori.storage import open_engine
from malsori.streaming.vad import EnergyVad
from malsori.tenants import KeyStore, Scope

EXAMPLES_PER_OPERATION = 12
START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}
FIELDS = ["sample_rate", "encoding", "language", "preset", "task", "session_id", "options", "last_seq", "meeting_id"]
SPEECH = tone_speech([0.3, "alpha", "bravo", 0.8, "charlie", "delta", 0.8])


def _app(data_dir: Path):
    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": data_dir}),
            "streaming": base.streaming.model_copy(update={"max_sessions": 8, "max_frame_bytes": 65536}),
        }
    )
    engine = open_engine(settings.database_url())
    key = KeyStore(engine).create("fuzz", scopes=list(Scope)).secret
    engine.dispose()
    return create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad), key


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[tuple[str, str, object]]:
    app, key = _app(tmp_path_factory.mktemp("fuzz-keyed"))
    with running_app(app) as port:
        yield f"127.0.0.1:{port}", key, app


schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_with_a_valid_key(case, keyed_server):
    host, key, _ = keyed_server
    if isinstance(case.body, dict) and isinstance(case.body.get("audio_url"), str) and "://" in case.body["audio_url"]:
        case.body["audio_url"] = "http://127.0.0.1:9/fuzz.wav"  # refused without connecting (see test_fuzz_openapi)
    if case.path.startswith("/v1/admin/keys/") and case.method.upper() == "DELETE":
        return  # revoking the fuzzer's own key would turn every later case into a 401
    case.call_and_validate(
        base_url=f"http://{host}", headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error], timeout=60
    )


def _garbage(rng: random.Random) -> list[str | bytes]:
    """Messages a broken or hostile client sends."""
    values: list[object] = [None, True, 3, -1.5, "x" * 300, [], {}, [1, "a"], {"nested": {"deep": [None]}}]
    out: list[str | bytes] = [
        "not json",
        "{",
        json.dumps([START]),
        json.dumps({"type": 7}),
        json.dumps({**START, "sample_rate": "16000"}),
        json.dumps({**START, "language": ["en"]}),
        json.dumps({**START, "unknown": 1}),
        json.dumps({"type": "stop"}),
        b"\x00\x01" * 10,
        b"\xff" * 70000,  # over max_frame_bytes
        "x" * 200_000,
    ]
    for _ in range(20):
        field = rng.choice(
            ["sample_rate", "encoding", "language", "preset", "task", "session_id", "options", "last_seq", "meeting_id"]
        )
        out.append(json.dumps({field: rng.choice(values)}))
        out.append(json.dumps({**START, field: rng.choice(values)}))
    return out


def _session_finals(url: str, token: str) -> list[str]:
    finals: list[str] = []
    with connect(f"{url}/v1/stream?token={token}", max_size=None) as ws:
        ws.send(json.dumps(START))
        pcm = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()
        for i in range(0, len(pcm), 3200):
            ws.send(pcm[i : i + 3200])
        ws.send(json.dumps({"type": "stop"}))
        for message in ws:
            event = json.loads(message)
            if event["type"] == "final":
                finals.append(event["text"])
            if event["type"] == "end":
                break
    return finals


def test_websocket_fuzz_leaves_other_sessions_intact(keyed_server):
    import threading

    import httpx

    host, key, app = keyed_server
    url = f"ws://{host}"
    token = httpx.post(f"http://{host}/v1/tokens", headers={"Authorization": f"Bearer {key}"}).json()["token"]
    rng = random.Random(14)
    outcome: dict[str, list[str]] = {}
    honest = threading.Thread(target=lambda: outcome.setdefault("finals", _session_finals(url, token)))
    honest.start()
    closes = []
    for message in _garbage(rng):
        for before_start in (True, False):
            try:
                with connect(f"{url}/v1/stream?token={token}", max_size=None, close_timeout=2) as ws:
                    if not before_start:
                        ws.send(json.dumps(START))
                        ws.recv(timeout=10)
                    ws.send(message)
                    while True:
                        ws.recv(timeout=1.5)  # an answer, or a close, comes at once when there is one
            except ConnectionClosed as exc:
                closes.append(exc.rcvd.code if exc.rcvd else None)
            except TimeoutError:
                closes.append("open")  # accepted and waiting: fine, the socket is closed on leaving
    # Thousands of tiny frames on one session, then a proper stop.
    with connect(f"{url}/v1/stream?token={token}", max_size=None) as ws:
        ws.send(json.dumps(START))
        ws.recv(timeout=10)
        for _ in range(3000):
            ws.send(b"\x00\x00")
        ws.send(json.dumps({"type": "stop"}))
        events = [json.loads(m) for m in ws]
        assert events[-1]["type"] == "end", events[-3:]
    honest.join(60)
    assert outcome.get("finals") == ["alpha bravo", "charlie delta"], outcome
    assert all(code in (1000, 1003, 1008, 1009, "open") for code in closes), closes
    # Nothing left attached: what remains are sessions of dropped sockets, waiting out their resume
    # grace (by design), never more than the sockets that were left open.
    left = app.state.services.sessions.all()
    assert all(not s.attached for s in left) and len(left) <= closes.count("open"), (len(left), closes.count("open"))
