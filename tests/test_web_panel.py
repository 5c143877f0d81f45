"""The web routes in-process with a fake model: pages and static files, the panel's status API, the
routing API (admin key, no-GPU refusal, and its honest answer that one engine routes nothing). The
browser itself is driven in test_browser.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from malsori.config import AuthSettings, Settings
from malsori.engine.decoder import DirectDecoder
from malsori.engine.options import TranscribeOptions
from malsori.engine.scheduler import Priority
from malsori.engine.windows import Window, WindowResult
from malsori.server import web_routes
from malsori.server.app import create_app

ADMIN_KEY = "s3cret-admin-key"


class HeldDecoder(DirectDecoder):
    """A fake model whose decodes wait until the test releases them, so queue depth can be seen."""

    model_name = "fake-model"
    device = "cpu"
    compute_type = "int8"
    multilingual = True
    load_seconds = 0.0

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def decode_windows(self, windows, options):
        self.entered.set()
        self.gate.wait(10)
        return [WindowResult((), "en", 1.0, 0.0, 0.0, 1.0, 0.0) for _ in windows]


@pytest.fixture
def decoder():
    decoder = HeldDecoder()
    yield decoder
    decoder.gate.set()


def _client(decoder, admin_key: str | None = None) -> TestClient:
    settings = Settings().model_copy(update={"auth": AuthSettings(admin_key=admin_key)})
    return TestClient(create_app(settings, transcriber=decoder))


@pytest.fixture
def client(decoder):
    with _client(decoder) as c:
        yield c


@pytest.fixture
def keyed(decoder):
    with _client(decoder, ADMIN_KEY) as c:
        yield c


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(web_routes, "cuda_device_count", lambda: 0)


# -- pages and static files -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, media, needle",
    [
        ("/", "text/html", 'src="/static/live.js"'),
        ("/panel", "text/html", 'src="/static/panel.js"'),
        ("/static/capture-worklet.js", "text/javascript", 'registerProcessor("malsori-capture"'),
        ("/static/malsori-client.js", "text/javascript", "/v1/stream"),
        ("/static/style.css", "text/css", "prefers-color-scheme"),
    ],
)
def test_pages_and_static_files_are_served(client, path, media, needle):
    response = client.get(path)
    assert response.status_code == 200
    # module scripts and the AudioWorklet are refused by browsers without a JavaScript MIME type
    assert response.headers["content-type"].startswith(media)
    assert needle in response.text


@pytest.mark.parametrize("path", ["/static/../config.py", "/static/%2e%2e/config.py", "/static/missing.js"])
def test_static_files_stay_inside_their_folder(client, path):
    assert client.get(path).status_code == 404


def test_every_static_file_the_pages_load_exists(client):
    import re

    for page in ("/", "/panel"):
        html = client.get(page).text
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert client.get(ref).status_code == 200, ref
    # modules imported by other modules
    for module in ("live.js", "upload.js", "panel.js", "malsori-client.js"):
        source = client.get(f"/static/{module}").text
        for ref in re.findall(r'from "\./([^"]+)"', source):
            assert client.get(f"/static/{ref}").status_code == 200, f"{module} imports {ref}"


# -- status ---------------------------------------------------------------------------------------
def test_status_reports_the_model_and_routing(client, no_gpu):
    status = client.get("/v1/admin/status").json()
    assert (status["model"], status["device"], status["compute_type"]) == ("fake-model", "cpu", "int8")
    assert status["ready"] is True
    assert status["routing_mode"] == "auto"
    assert status["engines"] == [{"model": "fake-model", "device": "cpu", "compute_type": "int8", "ready": True}]
    assert status["routing"] == "single engine: every request runs on this process's model (cpu)"
    assert status["gpu_available"] is False and status["gpu_count"] == 0
    assert status["admin_key_required"] is False
    assert status["sessions"] == []
    assert status["queue"]["depth"] == 0


def test_status_shows_queue_depth_while_the_model_is_busy(client, decoder):
    scheduler = client.app.state.services.scheduler
    window = Window(np.zeros(16000, dtype=np.float32))
    futures = [scheduler.submit(window, TranscribeOptions(), owner="busy", priority=Priority.JOB)]
    assert decoder.entered.wait(5)  # the first window is being decoded; the next ones wait
    futures += [scheduler.submit(window, TranscribeOptions(), owner=f"o{n}", priority=Priority.REQUEST) for n in range(3)]
    status = client.get("/v1/admin/status").json()
    assert status["queue"]["depth"] == 3
    assert status["queue"]["pending"]["request"] == 3
    decoder.gate.set()
    for future in futures:
        future.result(5)
    after = client.get("/v1/admin/status").json()
    assert after["queue"]["depth"] == 0
    assert after["latency"]["windows"] == 4
    assert after["latency"]["decode_ms_p50"] > 0


# -- routing --------------------------------------------------------------------------------------
def test_routing_changes_without_a_configured_key(client, no_gpu):
    response = client.put("/v1/admin/routing", json={"mode": "cpu"})
    assert response.status_code == 200
    assert response.json() == {
        "routing_mode": "cpu",
        "engines": [{"model": "fake-model", "device": "cpu", "compute_type": "int8", "ready": True}],
        # the mode is recorded, and the answer says it moves no work while there is one engine
        "routing": "single engine: every request runs on this process's model (cpu)",
    }
    assert client.get("/v1/admin/status").json()["routing_mode"] == "cpu"


def test_status_while_the_model_loads_names_the_configured_engine(tmp_path):
    settings = Settings().model_copy(update={"engine": Settings().engine.model_copy(update={"model": str(tmp_path / "none")})})
    with TestClient(create_app(settings)) as client:
        status = client.get("/v1/admin/status").json()
    (engine,) = status["engines"]
    assert engine["model"] == str(tmp_path / "none") and engine["ready"] is False
    assert status["ready"] is False
    assert status["routing"].startswith("single engine:")


def test_gpu_is_refused_with_a_reason_when_no_gpu_is_present(client, no_gpu):
    response = client.put("/v1/admin/routing", json={"mode": "gpu"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "gpu_unavailable"
    assert "no CUDA device" in error["message"]
    assert client.get("/v1/admin/status").json()["routing_mode"] == "auto"


def test_gpu_is_accepted_when_a_gpu_is_present(client, monkeypatch):
    monkeypatch.setattr(web_routes, "cuda_device_count", lambda: 1)
    response = client.put("/v1/admin/routing", json={"mode": "gpu"})
    assert response.status_code == 200
    status = client.get("/v1/admin/status").json()
    assert status["routing_mode"] == "gpu" and status["gpu_available"] is True


@pytest.mark.parametrize("body", [{"mode": "tpu"}, {}, {"mode": None}])
def test_bad_routing_bodies_are_422(client, body):
    response = client.put("/v1/admin/routing", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Key": "wrong"}, {"X-Admin-Key": ""}])
def test_admin_key_is_required_when_configured(keyed, no_gpu, headers):
    response = keyed.put("/v1/admin/routing", json={"mode": "cpu"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    status = keyed.get("/v1/admin/status").json()
    assert status["routing_mode"] == "auto"
    assert status["admin_key_required"] is True


def test_the_right_admin_key_changes_routing(keyed, no_gpu):
    response = keyed.put("/v1/admin/routing", json={"mode": "cpu"}, headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code == 200
    assert keyed.get("/v1/admin/status").json()["routing_mode"] == "cpu"
    # the key does not lift the GPU rule
    refused = keyed.put("/v1/admin/routing", json={"mode": "gpu"}, headers={"X-Admin-Key": ADMIN_KEY})
    assert refused.status_code == 409


def test_status_lists_live_sessions_with_their_state(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"})
        ready = ws.receive_json()
        assert ready["type"] == "ready"
        sessions = client.get("/v1/admin/status").json()["sessions"]
        mine = [s for s in sessions if s["session_id"] == ready["session_id"]]
        assert len(mine) == 1
        assert mine[0]["state"] and mine[0]["connected"] is True
        assert mine[0]["language"] == "en"
        ws.send_json({"type": "stop"})
        while ws.receive_json()["type"] != "end":
            pass
