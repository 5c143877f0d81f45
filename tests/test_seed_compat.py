"""The original design's clients, as written, against the seed-compatible endpoints.

What the original design specified (issue #3 and #4 texts): ``/stt/realtime`` takes
``{"type": "start_session", "session_id", "tenant_id", "meeting_id", "language"}``, then
``{"type": "audio_chunk", "audio_data": <base64 of 16 kHz int16>}``, then ``{"type": "end_session"}``;
``/stt/upload`` takes the multipart fields ``file, meeting_id, tenant_id, user_id, language`` and
``/stt/process`` the JSON ``audio_url`` with the same ids; both answer ``meeting_id, tenant_id,
transcript, segments [{start, end, text, speaker, confidence}], speakers, confidence, processing_time,
language, total_segments, total_speakers, has_diarization``.

Fast tier: the app with the fake decoder and the energy VAD (tone-burst speech) checks the field
names of ``audio_chunk``. Model tier: a real ``malsori serve`` and real speech (``jfk.flac``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from inprocess import running_app
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from malsori.config import Settings
from malsori.engine.audio import SAMPLE_RATE, decode_audio
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.evaluation import wer
from malsori.server.app import create_app
from malsori.streaming.vad import EnergyVad

_TESTDATA = Path(os.environ.get("MALSORI_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
live_server_env = {"MALSORI__SERVER__MEDIA_DIR": str(_TESTDATA)}

JFK = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
# The original example's messages, field names in its order.
IDS = {"session_id": "call-7", "tenant_id": "acme", "meeting_id": "standup-3"}
START_SESSION = {"type": "start_session", **IDS, "language": "en"}
END_SESSION = {"type": "end_session"}
STT_RESULT_FIELDS = {
    "meeting_id", "tenant_id", "transcript", "segments", "speakers", "confidence", "processing_time", "language",
    "total_segments", "total_speakers", "has_diarization",
}  # fmt: skip
OUR_EXTRA_FIELDS = {"user_id", "duration"}


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def audio_chunk(pcm: bytes) -> dict:
    return {"type": "audio_chunk", "audio_data": base64.b64encode(pcm).decode()}


async def converse(url: str, messages: list[dict]) -> list[dict]:
    """Send the messages in order, then read until the server closes (with any close code)."""
    got: list[dict] = []
    async with connect(url, max_size=None) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close on a bad message before the rest
            for message in messages:
                await ws.send(json.dumps(message))
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                got.append(json.loads(raw))
    return got


# -- fast tier ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(tmp: Path) -> Iterator[str]:
    base = Settings()
    settings = base.model_copy(update={"server": base.server.model_copy(update={"data_dir": tmp})})
    app = create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)
    with running_app(app) as port:
        yield f"ws://127.0.0.1:{port}/stt/realtime"


@pytest.fixture(scope="module")
def fake_url(tmp_path_factory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("seed-fast")) as url:
        yield url


SPEECH = pcm16(tone_speech([0.3, "alpha", "bravo", 0.8, "charlie", 0.8]))


def _chunks(pcm: bytes, field: str) -> list[dict]:
    size = SAMPLE_RATE // 5 * 2  # 200 ms of int16
    return [{"type": "audio_chunk", field: base64.b64encode(pcm[i : i + size]).decode()} for i in range(0, len(pcm), size)]


def _finals(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "transcript" and e["is_final"]]


@pytest.mark.parametrize("field", ["audio_data", "audio"])
def test_audio_chunk_takes_audio_data_and_its_alias_audio(fake_url, field):
    events = asyncio.run(asyncio.wait_for(converse(fake_url, [START_SESSION, *_chunks(SPEECH, field), END_SESSION]), 20))
    assert events[0] == {"type": "session_started", **IDS, "seq": 0}
    assert _finals(events) == ["alpha bravo", "charlie"]
    assert events[-1]["type"] == "session_ended"


@pytest.mark.parametrize(
    "chunk, message",
    [
        ({"type": "audio_chunk", "audio_data": "AAAA", "audio": "AAAA"}, "not both"),
        ({"type": "audio_chunk"}, "needs 'audio_data'"),
        ({"type": "audio_chunk", "audio_data": 5}, "needs 'audio_data'"),
        ({"type": "audio_chunk", "audio_data": "%%%"}, "'audio_data' is not valid base64"),
        ({"type": "audio_chunk", "pcm": "AAAA"}, "unknown field(s) in audio_chunk: pcm"),
    ],
)
def test_a_malformed_audio_chunk_names_the_original_field(fake_url, chunk, message):
    events = asyncio.run(asyncio.wait_for(converse(fake_url, [START_SESSION, chunk]), 20))
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "protocol_error" and message in error["message"], error


# -- model tier: the real server, real speech -------------------------------------------------------------
@pytest.mark.model
@pytest.mark.e2e
def test_the_original_realtime_client_gets_transcripts_of_jfk(live_server, testdata):
    audio = decode_audio(testdata / "en" / "jfk.flac")  # 16 kHz mono
    chunks = [audio_chunk(pcm16(audio[i : i + SAMPLE_RATE // 2])) for i in range(0, len(audio), SAMPLE_RATE // 2)]
    url = live_server.url.replace("http://", "ws://") + "/stt/realtime"
    events = asyncio.run(asyncio.wait_for(converse(url, [START_SESSION, *chunks, END_SESSION]), 120))
    assert events[0] == {"type": "session_started", **IDS, "seq": 0}
    assert not [e for e in events if e["type"] == "error"], events
    transcripts = [e for e in events if e["type"] == "transcript"]
    assert transcripts and all({k: e[k] for k in IDS} == IDS for e in transcripts)
    text = " ".join(e["text"] for e in transcripts if e["is_final"])
    assert wer(JFK, text) <= 0.1, text
    assert events[-1]["type"] == "session_ended" and events[-1]["audio_seconds"] == pytest.approx(11.0, abs=0.1)


def _check_result(body: dict, meeting_id: str, tenant_id: str) -> None:
    assert set(body) >= STT_RESULT_FIELDS and set(body) - STT_RESULT_FIELDS <= OUR_EXTRA_FIELDS, sorted(body)
    assert body["meeting_id"] == meeting_id and body["tenant_id"] == tenant_id
    assert wer(JFK, body["transcript"]) <= 0.05, body["transcript"]
    assert body["segments"] and all(set(s) == {"start", "end", "text", "speaker", "confidence"} for s in body["segments"])
    assert all(
        0 <= s["start"] < s["end"] <= 11.05 and s["speaker"] is None and 0 < s["confidence"] <= 1 for s in body["segments"]
    )
    assert body["speakers"] == {} and body["total_speakers"] == 0 and body["has_diarization"] is False
    assert body["total_segments"] == len(body["segments"]) and 0 < body["confidence"] <= 1
    assert body["language"] == "en" and body["processing_time"] > 0


@pytest.mark.model
@pytest.mark.e2e
def test_upload_and_process_take_the_original_fields_and_answer_its_shape(live_server, testdata):
    with httpx.Client(base_url=live_server.url, timeout=120) as http:
        with open(testdata / "en" / "jfk.flac", "rb") as audio:
            form = {"meeting_id": "m-1", "tenant_id": "t-1", "user_id": "u-1", "language": "en"}
            upload = http.post("/stt/upload", files={"file": ("jfk.flac", audio)}, data=form)
        body = {"audio_url": "en/jfk.flac", "meeting_id": "m-2", "tenant_id": "t-2", "user_id": "u-2", "language": "en"}
        process = http.post("/stt/process", json=body)
    assert upload.status_code == 200, upload.text
    _check_result(upload.json(), "m-1", "t-1")
    assert upload.json()["user_id"] == "u-1"
    assert process.status_code == 200, process.text
    _check_result(process.json(), "m-2", "t-2")
    assert process.json()["user_id"] == "u-2"
