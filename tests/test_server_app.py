"""In-process tests of the service core with a fake model: error mapping, readiness, admission
control, batching, body limits, the SSRF and path guards, settings from the CLI."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FORM_ROUTES
from fastapi.testclient import TestClient

from malsori.config import Settings
from malsori.engine.audio import SAMPLE_RATE, decode_audio
from malsori.engine.decoder import DirectDecoder
from malsori.engine.types import Segment
from malsori.engine.windows import WindowResult
from malsori.errors import (
    AudioTooLargeError,
    AuthError,
    ConflictError,
    EmptyAudioError,
    InvalidOptionsError,
    NotFoundError,
    OverloadedError,
    ProtocolError,
    UnsupportedAudioError,
)
from malsori.server.app import create_app
from malsori.server.errors import http_status, ws_close_code
from malsori.server.services import NotReadyError


class FakeTranscriber(DirectDecoder):
    """Says how many samples each window had; can hold the decoder until released."""

    model_name = "fake"
    device = "cpu"
    compute_type = "int8"
    multilingual = True
    load_seconds = 0.01

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def decode_windows(self, windows, options):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(windows))
        out = []
        for w in windows:
            seconds = len(w.audio) / SAMPLE_RATE
            seg = Segment(0, w.offset, w.offset + seconds, f"{len(w.audio)} samples", -0.1, 0.01)
            out.append(WindowResult((seg,), "en", 1.0, 0.01, -0.1, 1.0, 0.0))
        return out

    def check_options(self, options) -> None:
        pass


def _wav(seconds: float = 1.0) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)
        wav.writeframes((tone * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def _settings(**limits) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"limits": settings.limits.model_copy(update=limits)})


@pytest.fixture
def fake():
    return FakeTranscriber()


@pytest.fixture
def client(fake):
    with TestClient(create_app(_settings(max_pending_requests=4, max_upload_bytes=200_000), transcriber=fake)) as c:
        yield c


# -- the one mapping ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, status, close",
    [
        (EmptyAudioError("x"), 400, 1003),
        (UnsupportedAudioError("x"), 415, 1003),
        (AudioTooLargeError("x"), 413, 1009),
        (InvalidOptionsError("x"), 422, 1008),
        (OverloadedError("x"), 429, 1013),
        (NotReadyError("x"), 503, 1013),
        (NotFoundError("x"), 404, 1008),
        (ConflictError("x"), 409, 1008),
        (AuthError("x"), 401, 1008),
        (ProtocolError("x"), 400, 1008),
        (RuntimeError("bug"), 500, 1011),
    ],
)
def test_error_mapping(exc, status, close):
    assert http_status(exc) == status
    assert ws_close_code(exc) == close


def test_requests_go_through_the_fake_model(client, testdata):
    # Real speech: the pipeline plans windows with the VAD, and a short clip with speech is one window.
    path = testdata / "en" / "ljspeech" / "LJ001-0002.flac"
    samples = len(decode_audio(path))
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.flac", path.read_bytes())})
    assert response.status_code == 200 and response.json() == {"text": f"{samples} samples"}
    text = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.flac", path.read_bytes())}, data={"response_format": "text"}
    )
    assert text.text == f"{samples} samples\n" and text.headers["content-type"].startswith("text/plain")
    silence = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav(1.0))})
    assert silence.status_code == 200 and silence.json() == {"text": ""}  # a tone is no speech: nothing decoded


def test_validation_errors_have_the_error_body(client):
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav())}, data={"response_format": "docx"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "response_format" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", FORM_ROUTES)
def test_an_unknown_form_field_is_refused_by_name(client, route):
    """A misspelt field (``langauge``) is refused, as an unknown field of a JSON body is, instead of
    being ignored (the audio would be transcribed with its language detected)."""
    response = client.post(route, files={"file": ("a.wav", _wav())}, data={"langauge": "ko", "zzz": "1"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "langauge: Extra inputs are not permitted; zzz: Extra inputs are not permitted"


def test_known_form_fields_and_openai_s_chunking_strategy_auto_are_taken(client):
    fields = {"model": "whisper-1", "language": "en", "timestamp_granularities[]": "word", "chunking_strategy": "auto"}
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav())}, data=fields)
    assert response.status_code == 200, response.text
    other = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav())}, data={"chunking_strategy": "x"})
    assert other.status_code == 422 and "chunking_strategy" in other.json()["error"]["message"]
    urlencoded = client.post("/v1/jobs", data={"audio_url": "/nowhere.wav", "zzz": "1"})
    assert urlencoded.status_code == 422 and urlencoded.json()["error"]["message"].startswith("zzz:")


def test_openai_keywords_are_the_decode_s_hotwords(client, fake, testdata):
    seen = []
    decode = fake.decode_windows
    fake.decode_windows = lambda windows, options: seen.append(options) or decode(windows, options)
    clip = (testdata / "en" / "ljspeech" / "LJ001-0002.flac").read_bytes()
    fields = {"keywords[]": ["Gutenberg", " Schoeffer ", ""]}
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.flac", clip)}, data=fields)
    assert response.status_code == 200, response.text
    assert seen and {o.hotwords for o in seen} == {"Gutenberg, Schoeffer"}


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("POST", "/v1/jobs", {"audio_url": "/nowhere.wav", "zzz": 1}),
        ("POST", "/stt/process", {"audio_url": "/nowhere.wav", "zzz": 1}),
        ("POST", "/v1/admin/keys", {"tenant_id": "acme", "zzz": 1}),
        ("PUT", "/v1/admin/routing", {"mode": "auto", "zzz": 1}),
        ("POST", "/v1/analysis/sentiment", {"texts": ["good"], "zzz": 1}),
    ],
)
def test_an_unknown_json_field_is_refused(client, method, route, body):
    response = client.request(method, route, json=body)
    assert response.status_code == 422, response.text
    assert "zzz" in response.json()["error"]["message"]


def test_queue_full_is_429_with_retry_after(client, fake):
    services = client.app.state.services
    fake.gate.clear()  # hold the decoder so windows pile up
    from malsori.engine.options import TranscribeOptions
    from malsori.engine.scheduler import Priority
    from malsori.engine.windows import Window

    def hold(i: int):
        # Different options per window: the worker batches only equal options, one window at a time.
        window = Window(np.zeros(1600, np.float32))
        return services.scheduler.submit(window, TranscribeOptions(beam_size=i + 1), owner=f"o{i}", priority=Priority.REQUEST)

    held = [hold(0)]
    assert fake.entered.wait(5)  # the decoder holds the first window
    held += [hold(i) for i in range(1, 5)]  # four waiting: the queue (4) is full
    try:
        response = client.post("/transcribe-chunk", files={"file": ("a.wav", _wav())}, data={"vad": "false"})
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
        assert 'malsori_rejected_requests_total{reason="queue_full"} 1.0' in client.get("/metrics").text
    finally:
        fake.gate.set()
        for future in held:
            future.result(5)


def test_concurrent_chunks_are_decoded_in_one_batch(client, fake):
    fake.gate.clear()
    services = client.app.state.services
    from malsori.engine.options import TranscribeOptions
    from malsori.engine.scheduler import Priority
    from malsori.engine.windows import Window

    # A first window occupies the decoder; three requests queue behind it and go in together.
    first = services.scheduler.submit(
        Window(np.zeros(1600, np.float32)),
        TranscribeOptions(beam_size=5, vad_filter=False),
        owner="first",
        priority=Priority.REQUEST,
    )
    assert fake.entered.wait(5)
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(client.post, "/transcribe-chunk", files={"file": ("a.wav", _wav(1.0))}, data={"vad": "false"})
            for _ in range(3)
        ]
        for _ in range(1000):  # until all three are queued (bounded: 10 s)
            if services.scheduler.pending(Priority.REQUEST) >= 3:
                break
            threading.Event().wait(0.01)
        fake.gate.set()
        responses = [f.result(10) for f in futures]
    first.result(5)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.json()["text"] == "16000 samples" for r in responses)
    assert fake.batches == [1, 3]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_server_decodes_as_many_batches_at_once_as_its_model_has_workers(workers):
    # A CPU model runs two one-thread decodes side by side (engine.transcriber.cpu_layout): the server's
    # scheduler must run one worker thread per model worker, or the second core idles.
    from malsori.engine.options import TranscribeOptions
    from malsori.engine.scheduler import Priority
    from malsori.engine.windows import Window

    class Parallel(FakeTranscriber):
        def __init__(self) -> None:
            super().__init__()
            self.workers = workers
            self.inside, self.most = 0, 0
            self.lock = threading.Lock()

        def decode_windows(self, windows, options):
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                return super().decode_windows(windows, options)
            finally:
                with self.lock:
                    self.inside -= 1

    fake = Parallel()
    fake.gate.clear()
    with TestClient(create_app(_settings(), transcriber=fake)) as client:
        scheduler = client.app.state.services.scheduler
        # Windows with different options never share a batch: three batches, for however many workers.
        futures = [
            scheduler.submit(
                Window(np.zeros(1600, np.float32)),
                TranscribeOptions(beam_size=b, vad_filter=False),
                owner=f"o{b}",
                priority=Priority.JOB,
            )
            for b in (1, 2, 3)
        ]
        assert fake.entered.wait(5)
        threading.Event().wait(0.3)  # time for a second worker, if there is one, to take a batch too
        fake.gate.set()
        for future in futures:
            future.result(5)
    assert fake.most == workers


def test_a_cpu_server_decodes_live_finals_one_at_a_time_unless_told(monkeypatch):
    # On a CPU a batch of finals costs about the sum of its windows, and each waits for all of them
    # (docs/benchmarks.md "Live capacity"); a GPU keeps batching them.
    def urgent_batch(device: str, settings: Settings) -> int | None:
        fake = FakeTranscriber()
        fake.device = device
        with TestClient(create_app(settings, transcriber=fake)) as client:
            return client.app.state.services.scheduler.urgent_batch

    assert urgent_batch("cpu", _settings()) == 1
    assert urgent_batch("cuda", _settings()) is None
    assert Settings().engine.final_batch(None) is None  # a live gateway: its workers' devices unknown
    monkeypatch.setenv("MALSORI__ENGINE__LIVE_FINAL_BATCH", "3")
    assert urgent_batch("cpu", Settings()) == urgent_batch("cuda", Settings()) == Settings().engine.final_batch(None) == 3
    monkeypatch.setenv("MALSORI__ENGINE__LIVE_FINAL_BATCH", "-1")
    with pytest.raises(ValueError, match="live_final_batch"):
        Settings()


def test_a_server_batches_as_many_windows_as_its_model_picked_unless_told(monkeypatch):
    # A CPU with AMX int8 decodes pairs, others eights (engine.transcriber.auto_batch_size); the
    # setting, when given, wins; a decoder that says nothing (remote workers) gets eight.
    def max_batch(picked: int | None, settings: Settings) -> int:
        fake = FakeTranscriber()
        if picked is not None:
            fake.max_batch_size = picked  # type: ignore[attr-defined]
        with TestClient(create_app(settings, transcriber=fake)) as client:
            return client.app.state.services.scheduler.max_batch

    assert max_batch(2, _settings()) == 2
    assert max_batch(8, _settings()) == 8
    assert max_batch(None, _settings()) == 8
    monkeypatch.setenv("MALSORI__ENGINE__MAX_BATCH_SIZE", "3")
    assert max_batch(2, Settings()) == max_batch(None, Settings()) == 3
    monkeypatch.setenv("MALSORI__ENGINE__MAX_BATCH_SIZE", "-1")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()


def test_body_over_limit_is_refused_before_reading(client):
    response = client.post("/stt/upload", content=b"\x00" * 1_400_000, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "audio_too_large"


def test_chunked_body_over_limit_is_413(client):
    # No Content-Length: the limit is enforced while the body streams in.
    def body():
        for _ in range(20):
            yield b"\x00" * 100_000

    for path, kind in (("/stt/upload", "multipart/form-data; boundary=xyz"), ("/stt/process", "application/json")):
        response = client.post(path, content=body(), headers={"content-type": kind})
        assert response.status_code == 413 and response.json()["error"]["code"] == "audio_too_large"


def test_not_ready_until_loaded_and_load_errors_are_reported(tmp_path):
    settings = Settings().model_copy(update={"engine": Settings().engine.model_copy(update={"model": str(tmp_path / "missing")})})
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services
        assert client.get("/health").status_code == 200
        for _ in range(200):
            if services.load_error:
                break
            threading.Event().wait(0.02)
        ready = client.get("/is_ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "failed to load" in ready.json()["reason"]
        refused = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav())})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert client.get("/stt/status").json()["load_error"]


def test_two_apps_have_separate_metrics(fake):
    one, two = create_app(transcriber=fake), create_app(transcriber=FakeTranscriber())
    with TestClient(one) as a, TestClient(two) as b:
        a.get("/health")
        a.get("/health")
        b.get("/health")
        assert 'malsori_http_requests_total{method="GET",route="/health",status="200"} 2.0' in a.get("/metrics").text
        assert 'malsori_http_requests_total{method="GET",route="/health",status="200"} 1.0' in b.get("/metrics").text


def test_routes_modules_start_in_order_and_stop_in_reverse(fake, monkeypatch):
    from malsori.server import app as app_module

    calls = []
    for module in app_module._ROUTE_MODULES:
        name = module.__name__.rsplit(".", 1)[-1]

        async def start(services, name=name):
            calls.append(("start", name))

        async def stop(services, name=name):
            calls.append(("stop", name))

        monkeypatch.setattr(module, "startup", start)
        monkeypatch.setattr(module, "shutdown", stop)
    with TestClient(create_app(transcriber=fake)):
        pass
    assert calls == [
        ("start", "jobs_routes"),
        ("start", "meetings_routes"),
        ("start", "streaming_routes"),
        ("start", "web_routes"),
        ("stop", "web_routes"),
        ("stop", "streaming_routes"),
        ("stop", "meetings_routes"),
        ("stop", "jobs_routes"),
    ]


# -- guards ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "100.64.0.1",
    ],
)
def test_private_addresses_are_refused(address):
    from malsori.server.fetch import check_address

    with pytest.raises(InvalidOptionsError) as info:
        check_address(address)
    assert info.value.code == "url_not_allowed"


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    from malsori.server.fetch import check_address

    assert check_address(address) is None


def test_media_paths_stay_inside_the_media_dir(tmp_path):
    from malsori.server.fetch import read_media_path

    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (media / "sub" / "a.wav").write_bytes(b"x")
    (tmp_path / "secret.wav").write_bytes(b"x")
    (media / "link.wav").symlink_to(tmp_path / "secret.wav")
    assert read_media_path("sub/a.wav", media) == (media / "sub" / "a.wav").resolve()
    assert read_media_path(f"file://{media}/sub/a.wav", media) == (media / "sub" / "a.wav").resolve()
    for bad in ("../secret.wav", "sub/../../secret.wav", str(tmp_path / "secret.wav"), "link.wav", "gopher://x/a"):
        with pytest.raises(InvalidOptionsError):
            read_media_path(bad, media)
    with pytest.raises(NotFoundError):
        read_media_path("sub/none.wav", media)
    with pytest.raises(InvalidOptionsError):
        read_media_path("sub/a.wav", None)


def test_routing_mode_refuses_gpu_without_one(fake):
    services = create_app(transcriber=fake).state.services
    services.set_routing_mode("cpu", gpu_available=False)
    assert services.routing_mode == "cpu"
    with pytest.raises(InvalidOptionsError):
        services.set_routing_mode("gpu", gpu_available=False)
    with pytest.raises(InvalidOptionsError):
        services.set_routing_mode("tpu", gpu_available=True)
    assert services.routing_mode == "cpu"


def test_serve_settings_from_env_and_flags(monkeypatch):
    from malsori.cli.serve import build_settings

    monkeypatch.setenv("MALSORI__SERVER__PORT", "9001")
    monkeypatch.setenv("MALSORI__ENGINE__COMPUTE_TYPE", "int8")
    settings = build_settings(host="0.0.0.0", model="tiny.en", data_dir=Path("/tmp/d"))
    assert settings.server.port == 9001 and settings.server.host == "0.0.0.0"
    assert settings.engine.model == "tiny.en" and settings.engine.compute_type == "int8"
    assert settings.server.data_dir == Path("/tmp/d")
    assert build_settings(port=1234).server.port == 1234


def test_cors_only_for_configured_origins(fake):
    settings = Settings()
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"cors_origins": ["https://app.example"]})}
    )
    preflight = {"Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings, transcriber=fake)) as client:
        allowed = client.options("/v1/audio/transcriptions", headers={"Origin": "https://app.example", **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = client.options("/v1/audio/transcriptions", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in refused.headers
    with TestClient(create_app(transcriber=FakeTranscriber())) as client:
        response = client.get("/health", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


def test_interactive_docs_and_schema(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]


def test_server_modules_export_what_all_says():
    import malsori.detection
    import malsori.server.errors
    import malsori.server.services

    for module in (malsori.detection, malsori.server.errors, malsori.server.services):
        assert len(module.__all__) == len(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


@pytest.fixture
def file_host(testdata):
    """A local HTTP server over the test data, with /redirect -> /en/jfk.flac."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/en/jfk.flac")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(testdata)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _url_app(fake, *, allow_private: bool, max_upload_bytes: int = 100 * 1024 * 1024):
    settings = _settings(max_upload_bytes=max_upload_bytes)
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"allow_private_urls": allow_private})})
    return create_app(settings, transcriber=fake)


def test_stt_process_fetches_urls_when_private_ones_are_allowed(fake, file_host):
    with TestClient(_url_app(fake, allow_private=True)) as client:
        for path in ("/en/jfk.flac", "/redirect"):
            response = client.post("/stt/process", json={"audio_url": file_host + path, "meeting_id": "m"})
            assert response.status_code == 200, response.text
            assert response.json()["transcript"] == f"{11 * SAMPLE_RATE} samples"
        missing = client.post("/stt/process", json={"audio_url": file_host + "/nope.wav"})
        assert missing.status_code == 422 and missing.json()["error"]["code"] == "fetch_failed"
    with TestClient(_url_app(FakeTranscriber(), allow_private=True, max_upload_bytes=200_000)) as client:
        big = client.post("/stt/process", json={"audio_url": file_host + "/en/jfk.flac"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "audio_too_large"


def test_stt_process_refuses_loopback_by_default(fake, file_host):
    with TestClient(_url_app(fake, allow_private=False)) as client:
        response = client.post("/stt/process", json={"audio_url": file_host + "/en/jfk.flac"})
        assert response.status_code == 422 and response.json()["error"]["code"] == "url_not_allowed"
    assert fake.batches == []  # nothing was fetched or decoded
