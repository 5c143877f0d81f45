"""Hostile input (issue 14): a tiny file that decodes to far more than the limit, absurd channel
counts and sample rates, sockets that go quiet. The fake decoder stands in for Whisper; what is
checked is the refusal (status, error code, close code), never a timing."""

from __future__ import annotations

import io
import json
import wave

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from malsori.config import Settings
from malsori.engine.fake import FakeDecoder
from malsori.server.app import create_app
from malsori.streaming.vad import EnergyVad

LIMIT_S = 60.0


def _flac_silence(seconds: float, rate: int = 8000) -> bytes:
    """FLAC of digital silence: about 230 bytes a second, so minutes fit in a few kB."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        zeros = np.zeros((1, 4096), dtype=np.int16)
        for _ in range(int(seconds * rate) // 4096):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def _wav(channels: int = 1, rate: int = 16000, seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.zeros(int(rate * seconds) * channels, "<i2").tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": tmp_path_factory.mktemp("hostile")}),
            "limits": base.limits.model_copy(update={"max_audio_seconds": LIMIT_S, "sync_max_seconds": LIMIT_S}),
            "streaming": base.streaming.model_copy(update={"idle_timeout_s": 0.5}),
        }
    )
    with TestClient(create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)) as client:
        yield client


def test_a_decompression_bomb_stops_at_the_duration_limit(client):
    bomb = _flac_silence(600)  # ten minutes of audio in a few kB
    assert len(bomb) < 600 * 16000 * 2 / 50  # over 50 times smaller than its PCM
    for path in ("/v1/audio/transcriptions", "/stt/upload", "/v1/jobs"):
        r = client.post(path, files={"file": ("bomb.flac", bomb)})
        assert r.status_code == 413, (path, r.text)
        assert r.json()["error"]["code"] == "audio_too_long"


@pytest.mark.parametrize(("channels", "rate", "what"), [(40, 16000, "channels"), (1, 768000, "sample rate")])
def test_absurd_channel_counts_and_rates_are_refused(client, channels, rate, what):
    data = _wav(channels, rate, seconds=0.1)
    for path in ("/v1/audio/transcriptions", "/v1/jobs"):
        r = client.post(path, files={"file": ("odd.wav", data)})
        assert r.status_code == 415, (path, r.text)
        assert r.json()["error"]["code"] == "unsupported_audio" and what in r.json()["error"]["message"]
    assert client.post("/v1/jobs", files={"file": ("fine.wav", _wav(2, 48000))}).status_code == 202  # stereo 48 kHz is fine


def _closed(ws) -> tuple[list[dict], int]:
    events = []
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            return events, message["code"]
        if message.get("text"):
            events.append(json.loads(message["text"]))


@pytest.mark.parametrize("start", [False, True])
def test_an_idle_socket_is_closed(client, start):
    with client.websocket_connect("/v1/stream") as ws:
        if start:
            ws.send_text(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}))
        events, code = _closed(ws)  # nothing more is sent: the server gives up after idle_timeout_s
    assert code == 1008
    assert events[-1]["type"] == "error" and events[-1]["code"] == "idle_timeout", events
    assert client.app.state.services.sessions.active_count() == 0  # its session slot is free again


def test_an_oversize_form_field_is_a_4xx(client):
    r = client.post("/v1/jobs", files={"file": ("a.wav", _wav())}, data={"meeting_id": "m" * (2 << 20)})
    assert 400 <= r.status_code < 500, r.text


def test_a_stalled_upload_is_dropped_with_408(tmp_path):
    import socket

    from inprocess import running_app

    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": tmp_path}),
            "limits": base.limits.model_copy(update={"body_timeout_s": 0.5}),
        }
    )
    with (
        running_app(create_app(settings, transcriber=FakeDecoder())) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF')  # then nothing
        sock.settimeout(30)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
