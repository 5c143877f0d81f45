"""Sentiment through the server, fast: POST /v1/analysis/sentiment (real model, validation); live
finals carrying ``sentiment`` (the fake decoder and a scripted analyzer, over real sockets); segments
of file transcriptions and jobs with ``sentiment=true`` (fake model, scripted analyzer)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
from inprocess import running_app
from test_protocol_fast import FINALS, START, frames, recv, run, s16, serve, until_closed
from websockets.asyncio.client import connect

from malsori.analysis import Sentiment
from malsori.analysis.service import SentimentService
from malsori.config import Settings
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.server.app import create_app
from malsori.streaming.events import Final


# -- the endpoint --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(tmp_path_factory):
    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": tmp_path_factory.mktemp("sentiment")}),
            "analysis": base.analysis.model_copy(update={"max_texts": 4, "max_text_chars": 50}),
        }
    )
    with (
        running_app(create_app(settings, transcriber=FakeDecoder())) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        yield client


def test_endpoint_labels_english_and_korean(http):
    texts = ["Thank you, this is wonderful!", "This is awful, I hate it.", "오늘 정말 행복해요.", "진짜 최악이에요."]
    response = http.post("/v1/analysis/sentiment", json={"texts": texts, "language": "ko"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["label"] for r in results] == ["positive", "negative", "positive", "negative"]
    assert all(1 / 3 < r["score"] <= 1 for r in results)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"texts": []}, "texts: List should have at least 1 item"),
        ({"texts": ["a", "b", "c", "d", "e"]}, "at most 4 texts per request, not 5"),
        ({"texts": ["x" * 51]}, "texts[0] is 51 characters long; the limit is 50"),
        ({"texts": [3]}, "texts.0: Input should be a valid string"),
        ({"texts": ["hi"], "language": "klingon"}, "unknown language 'klingon'"),
        ({"texts": ["hi"], "model": "x"}, "model: Extra inputs are not permitted"),
        ({}, "texts: Field required"),
    ],
)
def test_endpoint_refuses_bad_requests_with_422(http, body, message):
    response = http.post("/v1/analysis/sentiment", json=body)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


# -- live finals ---------------------------------------------------------------------------------
class ScriptedAnalyzer:
    """alpha... is positive, charlie... negative, anything else neutral; can be held or made to fail."""

    name = "scripted"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if not self.gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("analyzer broke")
        labels = {"alpha": "positive", "charlie": "negative"}
        return [Sentiment(labels.get(t.split()[0] if t.split() else "", "neutral"), 0.8) for t in texts]


@pytest.fixture
def live(tmp_path):
    with serve(tmp_path) as server:
        analyzer = ScriptedAnalyzer()
        server.services.sentiment = SentimentService(lambda: analyzer)
        yield server, analyzer
        analyzer.gate.set()


SPEECH = np.concatenate(
    [tone_speech([0.3, "alpha", "bravo", 0.8]), tone_speech(["charlie", "delta", 0.8]), tone_speech(["echo", 0.8])]
)


async def _stream(url: str, start: dict) -> list[dict]:
    async with connect(url + "/v1/stream") as ws:
        await ws.send(json.dumps(start))
        assert (await recv(ws))["type"] == "ready"
        for frame in frames(s16(SPEECH)):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "stop"}))
        events, code = await until_closed(ws)
        assert code == 1000
        return events


def test_live_finals_carry_sentiment_in_order(live):
    server, analyzer = live
    events = run(_stream(server.url, {**START, "sentiment": True}))
    finals = [e for e in events if e["type"] == "final"]
    assert [f["text"] for f in finals] == [*FINALS, "echo"]
    assert [f["sentiment"] for f in finals] == [
        {"label": "positive", "score": 0.8},
        {"label": "negative", "score": 0.8},
        {"label": "neutral", "score": 0.8},
    ]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "end"
    assert analyzer.threads == {"malsori-sentiment_0"}  # the service's thread, never the event loop


def test_live_without_sentiment_has_no_field_and_no_analysis(live):
    server, analyzer = live
    events = run(_stream(server.url, START))
    finals = [e for e in events if e["type"] == "final"]
    assert [f["text"] for f in finals] == [*FINALS, "echo"]
    assert all("sentiment" not in f for f in finals)
    assert analyzer.calls == []


def test_live_sentiment_failure_sends_finals_with_null(live):
    server, analyzer = live
    analyzer.fail = True
    events = run(_stream(server.url, {**START, "sentiment": True}))
    finals = [e for e in events if e["type"] == "final"]
    assert [f["text"] for f in finals] == [*FINALS, "echo"]
    assert [f["sentiment"] for f in finals] == [None, None, None]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_live_events_wait_behind_a_final_being_analysed(live):
    """While the first final's sentiment is held, nothing after it is sent; then all come in order."""
    server, analyzer = live
    analyzer.gate.clear()

    async def scenario():
        async with connect(server.url + "/v1/stream") as ws:
            await ws.send(json.dumps({**START, "sentiment": True}))
            await recv(ws)
            for frame in frames(s16(SPEECH)):
                await ws.send(frame)
            await server.wait_for(lambda: len(analyzer.calls) >= 1, "the first final to reach the analyzer")
            got = []
            try:
                while True:
                    got.append(await recv(ws, timeout=0.5))
            except (asyncio.TimeoutError, TimeoutError):
                pass
            analyzer.gate.set()
            await ws.send(json.dumps({"type": "stop"}))
            rest, _ = await until_closed(ws)
            return got, rest

    held, rest = run(scenario())
    assert all(e["type"] != "final" for e in held)
    events = held + rest
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["text"] for e in events if e["type"] == "final"] == [*FINALS, "echo"]


def test_sentiment_option_is_checked():
    from malsori.errors import InvalidOptionsError
    from malsori.streaming.config import StreamConfig

    assert StreamConfig.from_preset(None, sentiment=True).sentiment is True
    with pytest.raises(InvalidOptionsError, match="sentiment must be true or false"):
        StreamConfig.from_preset(None, sentiment="yes")


def test_final_wire_form_and_journal_round_trip():
    from malsori.scale.live_state import event_from_dict

    with_sentiment = Final(3, "hi", 0.0, 1.0, "en", sentiment=Sentiment("positive", 0.91234), analyzed=True)
    assert with_sentiment.to_dict()["sentiment"] == {"label": "positive", "score": 0.9123}
    unknown = Final(4, "hi", 0.0, 1.0, "en", analyzed=True)
    assert unknown.to_dict()["sentiment"] is None
    assert "sentiment" not in Final(5, "hi", 0.0, 1.0, "en").to_dict()
    for event in (with_sentiment, unknown):
        back = event_from_dict(event.to_dict())
        assert back.to_dict() == event.to_dict()


def test_live_stats_count_the_finals_sentiment(live):
    """The two halves of issue 13 meet: with ``stats`` and ``sentiment`` the last statistics count
    every final's label (the stats are told of a final once its sentiment is known)."""
    server, _ = live
    events = run(_stream(server.url, {**START, "sentiment": True, "stats": True}))
    last = [e for e in events if e["type"] == "stats"][-1]
    assert last["stats"]["sentiment"]["counts"] == {"negative": 1, "neutral": 1, "positive": 1}


def test_stt_realtime_transcripts_carry_sentiment(live):
    server, _ = live
    start = {"type": "start_session", "session_id": "call-1", "language": "en", "sentiment": True}

    async def scenario():
        async with connect(server.url + "/stt/realtime") as ws:
            await ws.send(json.dumps(start))
            assert (await recv(ws))["type"] == "session_started"
            for frame in frames(s16(SPEECH)):
                await ws.send(json.dumps({"type": "audio_chunk", "audio_data": base64.b64encode(frame).decode()}))
            await ws.send(json.dumps({"type": "end_session"}))
            return await until_closed(ws)

    events, _ = run(scenario())
    finals = [e for e in events if e.get("type") == "transcript" and e["is_final"]]
    assert [(f["text"], f["sentiment"]["label"]) for f in finals] == [
        ("alpha bravo", "positive"),
        ("charlie delta", "negative"),
        ("echo", "neutral"),
    ]


# -- file transcriptions and jobs: per-segment sentiment ---------------------------------------------
class ParityAnalyzer:
    """ "second N" is positive for even N, negative for odd (the jobs' fake model reads each second so)."""

    name = "parity"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        self.calls.append(len(texts))
        out = []
        for text in texts:
            numbers = [int(w) for w in text.split() if w.isdigit()]
            out.append(Sentiment("positive" if numbers and numbers[0] % 2 == 0 else "negative", 0.7))
        return out


def _expected(segments: list[dict]) -> list[str]:
    return ["positive" if int(s["text"].split()[1]) % 2 == 0 else "negative" for s in segments]


@pytest.fixture
def files(tmp_path):
    from fastapi.testclient import TestClient
    from test_jobs_routes import FakeModel

    model = FakeModel()
    base = Settings()
    settings = base.model_copy(update={"server": base.server.model_copy(update={"data_dir": tmp_path / "data"})})
    with TestClient(create_app(settings, transcriber=model)) as client:
        analyzer = ParityAnalyzer()
        client.app.state.services.sentiment = SentimentService(lambda: analyzer)
        client.app.state.services.jobs.sentiment_analyzer = lambda: analyzer
        yield client, analyzer
        model.open()


def test_transcription_segments_carry_sentiment(files, testdata):
    client, analyzer = files
    audio = (testdata / "en" / "jfk.flac").read_bytes()
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("jfk.flac", audio)},
        data={"response_format": "verbose_json", "sentiment": "true"},
    )
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    assert len(segments) > 2
    assert [s["sentiment"]["label"] for s in segments] == _expected(segments)
    assert all(n <= 16 for n in analyzer.calls)  # in batches, so live finals get a turn between them
    plain = client.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", audio)}, data={"response_format": "verbose_json"})
    assert all("sentiment" not in s for s in plain.json()["segments"])


def test_transcription_sentiment_needs_verbose_json(files, testdata):
    client, _ = files
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
        data={"response_format": "json", "sentiment": "true"},
    )
    assert response.status_code == 422
    assert "response_format=verbose_json" in response.json()["error"]["message"]


def test_job_segments_carry_sentiment_in_the_stored_result(files, testdata):
    client, _ = files
    response = client.post(
        "/v1/jobs",
        files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
        data={"sentiment": "true", "response_format": "verbose_json"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    client.app.state.services.jobs.wait(job_id, timeout=30)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["options"]["sentiment"] is True
    stored = job["result"]["segments"]
    assert len(stored) > 2
    assert [s["sentiment"]["label"] for s in stored] == _expected(stored)
    rendered = client.get(f"/v1/jobs/{job_id}/result", params={"format": "verbose_json"}).json()["segments"]
    assert [s["sentiment"] for s in rendered] == [s["sentiment"] for s in stored]


def test_cli_stream_prints_each_finals_sentiment(live, tmp_path):
    import subprocess
    import sys

    from malsori.engine.audio import wav_bytes

    server, _ = live
    path = tmp_path / "talk.wav"
    path.write_bytes(wav_bytes(SPEECH))
    command = [sys.executable, "-m", "malsori.cli.app", "stream", str(path), "--url", server.url + "/v1/stream", "--sentiment"]
    done = subprocess.run([*command, "--language", "en"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alpha bravo  [positive 0.80]", "charlie delta  [negative 0.80]", "echo  [neutral 0.80]"]
