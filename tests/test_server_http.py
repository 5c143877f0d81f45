"""The real ``malsori serve`` process over HTTP: OpenAI client, seed endpoints, detection, errors, metrics.

One server for the module (``live_server``), with small limits so the 413 paths are cheap to reach and
the test data folder as its media directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from malsori.evaluation import wer

pytestmark = [pytest.mark.e2e, pytest.mark.model]

_TESTDATA = Path(os.environ.get("MALSORI_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
MAX_UPLOAD = 1_500_000  # jfk.flac is 1.15 MB
SYNC_MAX_S = 20  # diarization/two_speakers_call.wav is 30 s

live_server_env = {
    "MALSORI__LIMITS__MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "MALSORI__LIMITS__SYNC_MAX_SECONDS": str(SYNC_MAX_S),
    "MALSORI__SERVER__MEDIA_DIR": str(_TESTDATA),
}

JFK = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(live_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{live_server.url}/v1", api_key="not-needed", max_retries=0)


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# -- OpenAI-compatible ----------------------------------------------------------------------------------
def _cue_texts(subtitles: str) -> str:
    lines = [line for line in subtitles.splitlines() if line and line != "WEBVTT" and "-->" not in line and not line.isdigit()]
    return " ".join(lines)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "verbose_json", "vtt"])
def test_openai_client_transcribes_jfk_in_every_format(openai_client, testdata, fmt):
    with open(testdata / "en/jfk.flac", "rb") as audio:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=audio, response_format=fmt)
    if fmt == "json":
        text = result.text
    elif fmt == "verbose_json":
        text = result.text
        assert result.language == "en" and result.duration == pytest.approx(11.0, abs=0.1)
        assert len(result.segments) >= 1 and result.segments[-1].end <= 11.05
        assert " ".join(s.text.strip() for s in result.segments) == text
    elif fmt == "text":
        assert isinstance(result, str)
        text = result
    else:
        assert isinstance(result, str)
        stamp = r"\d\d:\d\d:\d\d[,.]\d\d\d --> \d\d:\d\d:\d\d[,.]\d\d\d"
        assert re.search(stamp, result), result
        assert result.startswith("WEBVTT") == (fmt == "vtt")
        text = _cue_texts(result)
    assert wer(JFK, text) <= 0.05, text


def test_openai_word_timestamps_and_prompt(openai_client, testdata):
    with open(testdata / "en/jfk.flac", "rb") as audio:
        result = openai_client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
            prompt="President Kennedy's inaugural address.",
        )
    words = [w.word for w in result.words]
    assert wer(JFK, " ".join(words)) <= 0.05
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and 0.0 <= starts[0] < 1.0 and result.words[-1].end <= 11.05


def test_openai_keywords_reach_the_decoder_as_hotwords(openai_client, testdata, live_server):
    """The SDK's ``keywords`` (sent as ``keywords[]``) guide the decode; a request with them reads jfk.flac
    as well as without, and too many characters of them are refused."""
    with open(testdata / "en/jfk.flac", "rb") as audio:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=audio, keywords=["Americans", "country"])
    assert wer(JFK, result.text) <= 0.05, result.text
    with open(testdata / "en/jfk.flac", "rb") as audio:
        response = httpx.post(
            f"{live_server.url}/v1/audio/transcriptions", files={"file": ("a.flac", audio)}, data={"keywords[]": ["x" * 501]}
        )
    _error(response, 422, "invalid_options")


def test_openai_languages_bound_the_detection(openai_client, testdata):
    """jfk.flac is detected as English; told it is German or French, it is read in the likelier of the
    two, and told English or Korean, in English."""
    found = {}
    for allowed in (["de", "fr"], ["ko", "en"]):
        with open(testdata / "en/jfk.flac", "rb") as audio:
            result = openai_client.audio.transcriptions.create(
                model="whisper-1", file=audio, response_format="verbose_json", languages=allowed
            )
        found[tuple(allowed)] = result
    assert found[("de", "fr")].language in ("de", "fr")
    assert found[("ko", "en")].language == "en" and wer(JFK, found[("ko", "en")].text) <= 0.05


def test_openai_translation_outputs_english(openai_client, testdata):
    with open(testdata / "multi/test_de.wav", "rb") as audio:
        result = openai_client.audio.translations.create(model="whisper-1", file=audio)
    words = set(re.findall(r"[a-z]+", result.text.lower()))
    assert "the" in words and "was" in words, result.text
    assert not words & {"der", "diesem", "wurde", "liegenden"}, result.text


def test_openai_models_list(openai_client):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids == ["base", "whisper-1"]


# -- seed endpoints ------------------------------------------------------------------------------------
_STT_KEYS = {
    "meeting_id",
    "tenant_id",
    "user_id",
    "transcript",
    "segments",
    "speakers",
    "confidence",
    "processing_time",
    "language",
    "duration",
    "total_segments",
    "total_speakers",
    "has_diarization",
}


def _check_stt_shape(body: dict, meeting: str | None, tenant: str | None) -> None:
    assert set(body) == _STT_KEYS
    assert body["meeting_id"] == meeting and body["tenant_id"] == tenant
    assert wer(JFK, body["transcript"]) <= 0.05, body["transcript"]
    assert body["language"] == "en"
    assert body["total_segments"] == len(body["segments"]) >= 1
    for seg in body["segments"]:
        assert set(seg) == {"start", "end", "text", "speaker", "confidence"}
        assert 0 <= seg["start"] <= seg["end"] <= 11.05 and 0 < seg["confidence"] <= 1 and seg["speaker"] is None
    assert " ".join(s["text"] for s in body["segments"]) == body["transcript"]
    assert body["speakers"] == {} and body["total_speakers"] == 0 and body["has_diarization"] is False
    assert 0 < body["confidence"] <= 1 and body["processing_time"] > 0


def test_stt_upload_returns_documented_shape(http, testdata):
    with open(testdata / "en/jfk.flac", "rb") as audio:
        response = http.post(
            "/stt/upload",
            files={"file": ("jfk.flac", audio, "audio/flac")},
            data={"meeting_id": "m-1", "tenant_id": "t-1", "user_id": "u-1", "language": "en"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    _check_stt_shape(body, "m-1", "t-1")
    assert body["user_id"] == "u-1"


def test_stt_process_reads_media_dir_path(http):
    response = http.post("/stt/process", json={"audio_url": "en/jfk.flac", "meeting_id": "m-2", "tenant_id": "t-2"})
    assert response.status_code == 200, response.text
    _check_stt_shape(response.json(), "m-2", "t-2")


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/etc/passwd", "file:///etc/hostname", "en/../../testdata-escape"])
def test_stt_process_refuses_paths_outside_media_dir(http, path):
    _error(http.post("/stt/process", json={"audio_url": path}), 422, "path_not_allowed")


def test_stt_process_missing_media_file_is_404(http):
    _error(http.post("/stt/process", json={"audio_url": "en/no-such-file.flac"}), 404, "not_found")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.7", "169.254.169.254", "192.168.1.1"])
def test_stt_process_refuses_private_urls(http, live_server, host):
    # The server itself listens on loopback: without the guard this fetch would succeed.
    url = f"http://{host}:{live_server.port}/health"
    error = _error(http.post("/stt/process", json={"audio_url": url}), 422, "url_not_allowed")
    assert "non-public" in error["message"]


def test_stt_process_refuses_other_schemes(http):
    _error(http.post("/stt/process", json={"audio_url": "ftp://example.com/a.wav"}), 422, "url_not_allowed")


# -- detection and chunks -------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", ["silero", "whisper"])
def test_detect_tells_silence_from_speech(http, testdata, detector):
    def detect(name: str) -> dict:
        with open(testdata / name, "rb") as audio:
            response = http.post("/detect", files={"file": (Path(name).name, audio)}, data={"detector": detector})
        assert response.status_code == 200, response.text
        return response.json()

    silence, speech = detect("silence/empty.wav"), detect("en/jfk.flac")
    assert silence["detector"] == speech["detector"] == detector
    assert silence["is_speech"] is False and silence["speech_regions"] == []
    assert speech["is_speech"] is True and speech["probability"] > silence["probability"]
    assert speech["probability"] >= speech["threshold"] > silence["probability"]
    regions = speech["speech_regions"]
    assert regions and regions[0]["start"] < 1.0 and regions[-1]["end"] > 9.5
    assert all(0 <= r["start"] < r["end"] <= 11.05 for r in regions)


def _pcm(testdata: Path, name: str, encoding: str) -> bytes:
    from malsori.engine import decode_audio

    audio = decode_audio(testdata / name)
    if encoding == "pcm_f32le":
        return audio.astype("<f4").tobytes()
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_transcribe_chunk_raw_pcm(http, testdata, encoding):
    data = _pcm(testdata, "en/jfk.flac", encoding)
    response = http.post(
        "/transcribe-chunk",
        files={"file": ("chunk.raw", data, "application/octet-stream")},
        data={"encoding": encoding, "sample_rate": "16000"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert wer(JFK, body["text"]) <= 0.05, body["text"]
    assert body["duration"] == pytest.approx(11.0, abs=0.01)
    assert body["segments"] and all(s["end"] <= 11.05 for s in body["segments"])


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_transcribe_chunk_gives_no_text_without_speech(http, testdata, kind):
    if kind == "silence":
        data = (testdata / "silence/empty.wav").read_bytes()
        files = {"file": ("empty.wav", data)}
        fields = {}
    else:
        noise = np.random.default_rng(7).normal(0, 0.01, 32000).astype("<f4")
        files = {"file": ("noise.raw", noise.tobytes())}
        fields = {"encoding": "pcm_f32le", "sample_rate": "16000"}
    response = http.post("/transcribe-chunk", files=files, data=fields)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "" and response.json()["segments"] == []


def test_transcribe_chunk_resamples_8khz_pcm(http, testdata):
    from malsori.engine import decode_audio

    audio = decode_audio(testdata / "en/jfk.flac")[::2]  # 8 kHz (aliasing is fine for speech this clear)
    data = (audio * 32767).astype("<i2").tobytes()
    response = http.post(
        "/transcribe-chunk",
        files={"file": ("chunk.raw", data)},
        data={"encoding": "pcm_s16le", "sample_rate": "8000"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(11.0, abs=0.05)
    assert wer(JFK, response.json()["text"]) <= 0.1


def test_transcribe_detects_then_transcribes(http, testdata):
    with open(testdata / "silence/empty.wav", "rb") as audio:
        silent = http.post("/transcribe", files={"file": ("empty.wav", audio)}).json()
    assert silent["is_speech"] is False and silent["text"] == "" and silent["segments"] == []
    with open(testdata / "en/jfk.flac", "rb") as audio:
        speech = http.post("/transcribe", files={"file": ("jfk.flac", audio)}).json()
    assert speech["is_speech"] is True and wer(JFK, speech["text"]) <= 0.05


# -- errors ----------------------------------------------------------------------------------------------
def test_empty_file_is_400(http):
    _error(http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")}), 400, "empty_audio")
    _error(http.post("/stt/upload", files={"file": ("a.wav", b"")}), 400, "empty_audio")


def test_garbage_is_415(http):
    garbage = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    _error(http.post("/v1/audio/transcriptions", files={"file": ("a.mp3", garbage)}), 415, "unsupported_audio")
    _error(http.post("/detect", files={"file": ("a.wav", b"RIFF....WAVEfmt garbage")}), 415, "unsupported_audio")


def test_odd_length_pcm_is_415(http):
    response = http.post("/transcribe-chunk", files={"file": ("c.raw", b"\x00\x01\x02")}, data={"encoding": "pcm_s16le"})
    _error(response, 415, "unsupported_audio")


def test_oversize_upload_is_413(http):
    big = b"\x00" * (MAX_UPLOAD + 10)
    _error(http.post("/v1/audio/transcriptions", files={"file": ("big.wav", big)}), 413, "audio_too_large")
    # Bigger than the body limit itself: refused from Content-Length before the body is read.
    huge = b"\x00" * (MAX_UPLOAD + 2 * 1024 * 1024)
    _error(http.post("/stt/upload", files={"file": ("huge.wav", huge)}), 413, "audio_too_large")


def test_too_long_is_413(http, testdata):
    with open(testdata / "diarization/two_speakers_call.wav", "rb") as audio:
        error = _error(http.post("/stt/upload", files={"file": ("call.wav", audio)}), 413, "audio_too_long")
    assert "/v1/jobs" in error["message"]


def test_too_long_chunk_is_413(http):
    data = np.zeros(31 * 16000, dtype="<i2").tobytes()
    _error(http.post("/detect", files={"file": ("c.raw", data)}, data={"encoding": "pcm_s16le"}), 413, "audio_too_long")


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": "xml"},
        {"temperature": "5"},
        {"temperature": "warm"},
        {"language": "klingon"},
        {"model": "gpt-nonexistent"},
        {"timestamp_granularities[]": "sentence"},
    ],
)
def test_bad_fields_are_422(http, testdata, fields):
    with open(testdata / "en/ljspeech/LJ001-0002.flac", "rb") as audio:
        response = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", audio)}, data=fields)
    _error(response, 422)


def test_bad_chunk_fields_are_422(http):
    pcm = np.zeros(16000, dtype="<i2").tobytes()
    for fields in (
        {"detector": "psychic"},
        {"encoding": "mulaw"},
        {"encoding": "pcm_s16le", "sample_rate": "100"},
        {"threshold": "1.5"},
    ):
        _error(http.post("/detect", files={"file": ("c.raw", pcm)}, data=fields), 422)


def test_missing_file_and_malformed_json_are_422(http):
    _error(http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}), 422, "invalid_request")
    response = http.post("/stt/process", content=b"{not json", headers={"content-type": "application/json"})
    _error(response, 422, "invalid_request")
    _error(http.post("/stt/process", json={"meeting_id": "m"}), 422, "invalid_request")


def test_unknown_route_and_method(http):
    _error(http.get("/no/such/route"), 404, "not_found")
    _error(http.get("/v1/audio/transcriptions"), 405, "method_not_allowed")


# -- health, status, metrics ------------------------------------------------------------------------------
def test_health_and_ready(http):
    assert http.get("/health").json()["status"] == "ok"
    assert http.get("/is_ready").json() == {"ready": True, "model": "base"}


def test_stt_status_fields(http):
    status = http.get("/stt/status").json()
    assert status["ready"] is True and status["model"] == "base"
    assert status["device"] == "cpu" and status["compute_type"] == "int8"
    assert status["active_jobs"] >= 0 and status["active_sessions"] >= 0
    assert isinstance(status["tasks"], int) and status["tasks"] >= 1  # at least the request's own task
    assert set(status["queue_depth"]) == {"live", "request", "job"}
    assert status["uptime_s"] > 0 and status["model_load_seconds"] > 0
    assert status["routing_mode"] == "auto"
    assert status["routing"] == "single engine: every request runs on this process's model (cpu)"


def test_metrics_count_requests_audio_and_queue(http, testdata):
    with open(testdata / "en/jfk.flac", "rb") as audio:
        assert http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", audio)}).status_code == 200
    http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})
    text = http.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }

    def value(name: str, **labels) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    route = "/v1/audio/transcriptions"
    assert value("malsori_http_requests_total", route=route, method="POST", status="200") >= 1
    assert value("malsori_http_requests_total", route=route, method="POST", status="400") >= 1
    assert value("malsori_audio_seconds_total", route=route) >= 11.0
    assert value("malsori_processing_seconds_count", route=route) >= 1
    assert value("malsori_http_request_duration_seconds_count", route=route) >= 2
    assert value("malsori_model_ready") == 1.0
    assert value("malsori_model_load_seconds", model="base") > 0
    assert ("malsori_queue_depth", (("priority", "request"),)) in samples
    assert ("malsori_active_sessions", ()) in samples


def test_openapi_schema_lists_the_endpoints(http):
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/models",
        "/stt/upload",
        "/stt/process",
        "/detect",
        "/transcribe-chunk",
        "/transcribe",
        "/health",
        "/is_ready",
        "/stt/status",
    ):
        assert path in paths, path
