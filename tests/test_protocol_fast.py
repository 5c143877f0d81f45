"""The live WebSocket protocols, fast: the real app (``create_app`` under uvicorn, real sockets) with
the fake decoder and the energy VAD instead of Whisper and Silero, so close codes, malformed
messages, resume, takeover, admission and superseded partials are checked in seconds.

Speech is tone bursts (``engine.fake.tone_speech``): each word has its own frequency, so the
transcript is known exactly. Recognition itself is tested with the real model on real speech in
tests/test_streaming_ws.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inprocess import running_app
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from malsori.config import Settings
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.engine.scheduler import Priority
from malsori.server.app import create_app
from malsori.streaming.vad import EnergyVad

SR = 16000
FRAME = 1600  # 100 ms
PART1 = tone_speech([0.3, "alpha", "bravo", 0.8])
PART2 = tone_speech(["charlie", "delta", 0.8])
FINALS = ["alpha bravo", "charlie delta"]
START = {"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en"}
START_SESSION = {"type": "start_session", "session_id": "call-1", "tenant_id": "acme", "meeting_id": "m1", "language": "en"}
RAW = "/v1/stream/raw?language=en"
MAX_FRAME = 65536


def s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def f32(audio: np.ndarray) -> bytes:
    return audio.astype("<f4").tobytes()


def frames(pcm: bytes, sample_bytes: int = 2) -> list[bytes]:
    size = FRAME * sample_bytes
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


class GatedDecoder(FakeDecoder):
    """Holds every decode until ``gate`` opens, so a test decides what is in flight when."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def decode_windows(self, windows, options):  # type: ignore[override]
        self.entered.set()
        if not self.gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        return super().decode_windows(windows, options)


@dataclass
class Server:
    app: Any
    url: str
    decoder: FakeDecoder

    @property
    def services(self) -> Any:
        return self.app.state.services

    async def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Poll server state the client cannot see (bounded; the condition, not a duration, ends it).
        Asynchronous: the client's own loop must keep running (an aborted socket closes on it)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)


@contextlib.contextmanager
def serve(data_dir: Path, decoder: FakeDecoder | None = None, *, model: str | None = None, **streaming: Any) -> Iterator[Server]:
    """The app under uvicorn in a thread on a free port. ``model``: no injected decoder, load this."""
    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": data_dir}),
            "engine": base.engine.model_copy(update={"model": model or base.engine.model}),
            "streaming": base.streaming.model_copy(update={"max_sessions": 3, "max_frame_bytes": MAX_FRAME, **streaming}),
        }
    )
    decoder = decoder if decoder is not None else FakeDecoder()
    app = create_app(settings, transcriber=None if model else decoder, live_vad=EnergyVad)
    with running_app(app) as port:
        try:
            yield Server(app, f"ws://127.0.0.1:{port}", decoder)
        finally:
            if isinstance(decoder, GatedDecoder):
                decoder.gate.set()  # a held decode must not keep the server from stopping


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """Shared by tests that leave no session behind."""
    with serve(tmp_path_factory.mktemp("fast-ws")) as running:
        yield running


# -- client side ---------------------------------------------------------------------------------
async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_closed(ws: ClientConnection, timeout: float = 10.0) -> tuple[list[dict], int | None]:
    """Every message until the server closes, and its close code."""
    got: list[dict] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                got.append(json.loads(raw))

    await asyncio.wait_for(read(), timeout)
    return got, ws.close_code


async def until(ws: ClientConnection, done: Callable[[dict], bool], timeout: float = 5.0) -> list[dict]:
    """Messages up to and including the first for which ``done`` is true."""
    got: list[dict] = []
    while not got or not done(got[-1]):
        got.append(await recv(ws, timeout))
    return got


async def exchange(url: str, messages: Sequence[str | bytes | dict]) -> tuple[list[dict], int | None]:
    async with connect(url, max_size=None) as ws:
        for m in messages:
            with contextlib.suppress(ConnectionClosed):  # the server may refuse before reading the rest
                await ws.send(json.dumps(m) if isinstance(m, dict) else m)
        return await until_closed(ws)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def error_of(message: dict) -> str | None:
    """The error code in a message of any of the three protocols (raw says ``{"error": code}``)."""
    if message.get("type") == "error":
        return message["code"]
    return message.get("error") if "final" in message else None


def finals(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e.get("type") == "final"]


# -- the happy paths: the wire formats of docs/protocol.md ---------------------------------------
def test_v1_stream_events_are_numbered_and_end_with_1000(server):
    async def scenario():
        async with connect(server.url + "/v1/stream") as ws:
            await ws.send(json.dumps({**START, "word_timestamps": True}))
            ready = await recv(ws)
            await ws.send(json.dumps({"type": "ping"}))
            pong = await recv(ws)
            for frame in frames(s16(np.concatenate([PART1, PART2]))):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "stop"}))
            events, code = await until_closed(ws)
            return ready, pong, events, code

    ready, pong, events, code = run(scenario())
    assert ready["type"] == "ready" and ready["seq"] == 0 and ready["resumed"] is False
    assert ready["session_id"] and ready["resume_token"] and ready["received_samples"] == 0 and ready["last_seq"] == 0
    assert (ready["sample_rate"], ready["encoding"], ready["language"], ready["preset"]) == (SR, "pcm_s16le", "en", "balanced")
    assert ready["config"]["word_timestamps"] is True
    assert pong == {"type": "pong", "seq": 0}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert finals(events) == FINALS and code == 1000
    assert [w["word"].strip() for w in next(e for e in events if e["type"] == "final")["words"]] == ["alpha", "bravo"]
    assert events[-1]["type"] == "end" and events[-1]["reason"] == "stopped"
    assert server.services.sessions.active_count() == 0


def test_stt_realtime_echoes_the_labels(server):
    async def scenario():
        async with connect(server.url + "/stt/realtime") as ws:
            await ws.send(json.dumps(START_SESSION))
            started = await recv(ws)
            for frame in frames(s16(np.concatenate([PART1, PART2]))):
                await ws.send(json.dumps({"type": "audio_chunk", "audio": base64.b64encode(frame).decode()}))
            await ws.send(json.dumps({"type": "end_session"}))
            return started, *await until_closed(ws)

    started, events, code = run(scenario())
    assert started == {"type": "session_started", "session_id": "call-1", "tenant_id": "acme", "meeting_id": "m1", "seq": 0}
    ids = {"session_id": "call-1", "tenant_id": "acme", "meeting_id": "m1"}
    assert all({k: e[k] for k in ids} == ids for e in events)
    assert [e["text"] for e in events if e["type"] == "transcript" and e["is_final"]] == FINALS
    assert events[-1]["type"] == "session_ended" and events[-1]["reason"] == "stopped" and code == 1000


@pytest.mark.parametrize("stop", ["stop", "END_OF_AUDIO", json.dumps({"type": "stop"}), b""])
def test_raw_stream_opens_with_the_socket(server, stop):
    async def scenario():
        async with connect(server.url + RAW) as ws:
            for frame in frames(f32(np.concatenate([PART1, PART2])), sample_bytes=4):
                await ws.send(frame)
            await ws.send(stop)
            return await until_closed(ws)

    results, code = run(scenario())
    assert [r["text"] for r in results if r["final"]] == FINALS and code == 1000
    final = next(r for r in results if r["final"])
    assert set(final) == {"text", "final", "start", "end", "seq", "language"} and final["language"] == "en"


# -- close codes: one row per refusal, for every endpoint ----------------------------------------
def test_the_client_reads_close_codes_by_the_table_the_server_closes_by():
    from malsori.protocol import CLOSE_CODES, close_code, error_for_close_code

    for _, code in CLOSE_CODES:  # what a client raises for a bare close maps back to that close
        assert close_code(error_for_close_code(code, "")) == code
    assert error_for_close_code(1011, "").code == "internal_error"
    assert error_for_close_code(4000, "").code == "server_closed"
    assert close_code(RuntimeError("a bug")) == 1011


def _b64(data: bytes) -> dict:
    return {"type": "audio_chunk", "audio": base64.b64encode(data).decode()}


REFUSALS = [
    # /v1/stream
    ("/v1/stream", ["{not json"], 1008, "protocol_error"),
    ("/v1/stream", ["[1, 2]"], 1008, "protocol_error"),
    ("/v1/stream", [{"type": "dance"}], 1008, "protocol_error"),
    ("/v1/stream", [{**START, "colour": "red"}], 1008, "protocol_error"),
    ("/v1/stream", [{**START, "encoding": "mp3"}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "sample_rate": 4000}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "sample_rate": "16000"}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "preset": "fastest"}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "options": {"endpoint": 0.3}}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "last_seq": -1}], 1008, "invalid_options"),
    ("/v1/stream", [{**START, "session_id": "s-gone", "resume_token": "t"}], 1008, "not_found"),
    ("/v1/stream", [b"\x00\x01" * 100], 1008, "protocol_error"),
    ("/v1/stream", [{"type": "stop"}], 1008, "protocol_error"),
    ("/v1/stream", [START, START], 1008, "protocol_error"),
    ("/v1/stream", [START, "{not json"], 1008, "protocol_error"),
    ("/v1/stream", [START, b"\x00\x01\x02"], 1003, "unsupported_audio"),
    ("/v1/stream", [START, b"\x00" * (MAX_FRAME + 2)], 1009, "audio_too_large"),
    # /stt/realtime
    ("/stt/realtime", ["{not json"], 1008, "protocol_error"),
    ("/stt/realtime", [{"type": "start"}], 1008, "protocol_error"),
    ("/stt/realtime", [{**START_SESSION, "colour": "red"}], 1008, "protocol_error"),
    ("/stt/realtime", [{**START_SESSION, "tenant_id": 7}], 1008, "invalid_options"),
    ("/stt/realtime", [{**START_SESSION, "encoding": "mp3"}], 1008, "invalid_options"),
    ("/stt/realtime", [{**START_SESSION, "session_id": "x" * 129}], 1008, "invalid_options"),
    ("/stt/realtime", [_b64(b"\x00\x00")], 1008, "protocol_error"),
    ("/stt/realtime", [b"\x00\x00"], 1008, "protocol_error"),
    ("/stt/realtime", [START_SESSION, START_SESSION], 1008, "protocol_error"),
    ("/stt/realtime", [START_SESSION, {"type": "audio_chunk", "audio": "%%%"}], 1008, "protocol_error"),
    ("/stt/realtime", [START_SESSION, {"type": "audio_chunk"}], 1008, "protocol_error"),
    ("/stt/realtime", [START_SESSION, {**_b64(b"\x00\x00"), "colour": "red"}], 1008, "protocol_error"),
    ("/stt/realtime", [START_SESSION, _b64(b"\x00\x01\x02")], 1003, "unsupported_audio"),
    ("/stt/realtime", [START_SESSION, _b64(b"\x00" * (MAX_FRAME + 2))], 1009, "audio_too_large"),
    # A query parameter the protocol does not read is refused, not ignored (/v1/stream configures in start).
    ("/v1/stream?langauge=ko", [], 1008, "protocol_error"),
    ("/v1/stream?language=ko", [], 1008, "protocol_error"),
    ("/stt/realtime?colour=red", [], 1008, "protocol_error"),
    # /v1/stream/raw
    ("/v1/stream/raw?colour=red", [], 1008, "protocol_error"),
    ("/v1/stream/raw?sample_rate=fast", [], 1008, "invalid_options"),
    ("/v1/stream/raw?sample_rate=200000", [], 1008, "invalid_options"),
    ("/v1/stream/raw?encoding=mp3", [], 1008, "invalid_options"),
    (RAW, ["hello"], 1008, "protocol_error"),
    (RAW, [b"\x00" * 6], 1003, "unsupported_audio"),
    (RAW, [np.array([0.1, np.nan], dtype="<f4").tobytes()], 1003, "unsupported_audio"),
    (RAW, [b"\x00" * (MAX_FRAME + 4)], 1009, "audio_too_large"),
]


@pytest.mark.parametrize("path, messages, close, code", REFUSALS)
def test_a_refusal_is_a_fatal_error_then_its_close_code(server, path, messages, close, code):
    got, close_code = run(exchange(server.url + path, messages))
    errors = [m for m in got if error_of(m)]
    assert [error_of(m) for m in errors] == [code], got
    assert close_code == close
    error = errors[0]
    if path.startswith("/v1/stream/raw"):
        assert error["final"] is True and error["message"]
    else:
        assert error["fatal"] is True and error["message"]
    if path == "/stt/realtime":  # the seed protocol names the caller's ids in every message
        assert {"session_id", "tenant_id", "meeting_id"} <= set(error)
    assert server.services.sessions.active_count() == 0  # the refused session is gone, not leaked


def test_an_error_inside_a_session_is_numbered_in_its_sequence_and_spares_the_others(server):
    async def scenario():
        async with connect(server.url + "/v1/stream") as good:
            await good.send(json.dumps(START))
            await recv(good)
            for frame in frames(s16(PART1)):
                await good.send(frame)
            first = await until(good, lambda e: e["type"] == "final")
            bad = await exchange(server.url + "/v1/stream", [START, *frames(s16(PART1)), "{not json"])
            for frame in frames(s16(PART2)):
                await good.send(frame)
            await good.send(json.dumps({"type": "stop"}))
            rest, code = await until_closed(good)
            return bad, first + rest, code

    (bad, bad_code), events, code = run(scenario())
    assert bad_code == 1008 and bad[0]["type"] == "ready"
    error = bad[-1]
    assert error["type"] == "error" and error["code"] == "protocol_error" and error["fatal"] is True
    assert error["seq"] == max(e.get("seq", 0) for e in bad[:-1]) + 1  # in the session's numbering, no end after it
    assert finals(events) == FINALS and code == 1000


# -- resume and takeover (/v1/stream) --------------------------------------------------------------
async def _start_and_speak(url: str) -> tuple[ClientConnection, dict, list[dict], int]:
    """A session that has said PART1 and got its final; returns (socket, ready, events, bytes sent)."""
    ws = await connect(url + "/v1/stream")
    await ws.send(json.dumps(START))
    ready = await recv(ws)
    pcm = s16(PART1)
    for frame in frames(pcm):
        await ws.send(frame)
    events = await until(ws, lambda e: e["type"] == "final")
    return ws, ready, events, len(pcm)


def _resume(ready: dict, last_seq: int, **extra: Any) -> dict:
    return {**START, "session_id": ready["session_id"], "resume_token": ready["resume_token"], "last_seq": last_seq, **extra}


@pytest.mark.parametrize("keep", [0, 1, "all"], ids=["nothing-kept", "first-kept", "all-kept"])
def test_resume_replays_what_the_client_lacks_once_in_order_and_loses_no_audio(tmp_path, keep):
    with serve(tmp_path) as server:

        async def scenario():
            ws, ready, before, sent = await _start_and_speak(server.url)
            ws.transport.abort()  # the link dies without a close frame
            sid = ready["session_id"]
            await server.wait_for(lambda: server.services.sessions.get(sid).detached_at is not None, "the server to see the drop")
            last_seq = before[-1]["seq"] if keep == "all" else before[keep - 1]["seq"] if keep else 0
            refused = await exchange(server.url + "/v1/stream", [_resume(ready, last_seq, resume_token="wrong")])
            mismatch = await exchange(server.url + "/v1/stream", [_resume(ready, last_seq, encoding="pcm_f32le")])
            async with connect(server.url + "/v1/stream") as again:
                await again.send(json.dumps(_resume(ready, last_seq)))
                ready2 = await recv(again)
                replay = [await recv(again) for _ in range(before[-1]["seq"] - last_seq)]
                received = ready2["received_samples"] * 2
                for frame in frames((s16(PART1) + s16(PART2))[received:]):
                    await again.send(frame)
                await again.send(json.dumps({"type": "stop"}))
                rest, code = await until_closed(again)
            return before, refused, mismatch, ready2, last_seq, replay, rest, code, sent

        before, refused, mismatch, ready2, last_seq, replay, rest, code, sent = run(scenario())
    assert refused[1] == 1008 and [m["code"] for m in refused[0]] == ["unauthorized"]
    assert mismatch[1] == 1008 and [m["code"] for m in mismatch[0]] == ["invalid_options"]
    assert ready2["resumed"] is True and ready2["seq"] == 0 and ready2["last_seq"] >= before[-1]["seq"]
    assert 0 < ready2["received_samples"] * 2 <= sent
    assert replay == [e for e in before if e["seq"] > last_seq]  # exactly what it lacked, in order
    after = replay + rest
    assert [e["seq"] for e in after] == list(range(last_seq + 1, last_seq + 1 + len(after)))  # each once, no gap
    kept = [e for e in before if e["seq"] <= last_seq]
    assert finals(kept + after) == FINALS and after[-1]["type"] == "end" and code == 1000


def test_resuming_an_attached_session_takes_it_over(tmp_path):
    with serve(tmp_path) as server:

        async def scenario():
            old, ready, before, _ = await _start_and_speak(server.url)
            async with connect(server.url + "/v1/stream") as new:
                await new.send(json.dumps(_resume(ready, before[-1]["seq"])))
                ready2 = await recv(new)
                dropped, old_code = await until_closed(old)
                for frame in frames(s16(PART2)):
                    await new.send(frame)
                await new.send(json.dumps({"type": "stop"}))
                rest, code = await until_closed(new)
            return before, ready2, dropped, old_code, rest, code

        before, ready2, dropped, old_code, rest, code = run(scenario())
    assert ready2["resumed"] is True
    assert dropped == [
        {"type": "error", "seq": 0, "code": "taken_over", "message": "another connection resumed this session", "fatal": True}
    ]
    assert old_code == 1008
    assert [e["seq"] for e in rest] == list(range(before[-1]["seq"] + 1, before[-1]["seq"] + 1 + len(rest)))
    assert finals(before + rest) == FINALS and code == 1000


def test_a_session_that_ended_while_its_client_was_away_can_still_be_fetched(tmp_path):
    """Stop, then the link drops before the last final: a resume gets the rest and the end."""
    decoder = GatedDecoder()
    with serve(tmp_path, decoder) as server:

        async def scenario():
            async with connect(server.url + "/v1/stream") as ws:
                await ws.send(json.dumps(START))
                ready = await recv(ws)
                for frame in frames(s16(tone_speech([0.3, "alpha", "bravo"]))):  # speech still open at the stop
                    await ws.send(frame)
                await ws.send(json.dumps({"type": "stop"}))
                await server.wait_for(
                    lambda: server.services.sessions.get(ready["session_id"]).session.state == "finishing", "stop"
                )
                ws.transport.abort()
            live = server.services.sessions.get(ready["session_id"])
            await server.wait_for(lambda: live.detached_at is not None, "the server to see the drop")
            decoder.gate.set()
            await server.wait_for(lambda: live.ended, "the session to end")
            assert server.services.sessions.active_count() == 0  # ended: it takes no capacity
            return await exchange(server.url + "/v1/stream", [_resume(ready, 0)])

        got, code = run(scenario())
    assert got[0]["type"] == "ready" and got[0]["resumed"] is True
    assert [e["type"] for e in got[1:]] == ["final", "end"] and got[1]["text"] == "alpha bravo"
    assert [e["seq"] for e in got[1:]] == [1, 2] and code == 1000


def test_a_detached_session_is_finalized_and_forgotten_after_its_grace_period(tmp_path):
    with serve(tmp_path, resume_grace_s=0.2) as server:

        async def scenario():
            ws, ready, _, _ = await _start_and_speak(server.url)
            ws.transport.abort()
            await server.wait_for(
                lambda: server.services.sessions.get(ready["session_id"]) is None, "the grace period to run out"
            )
            return await exchange(server.url + "/v1/stream", [_resume(ready, 0)])

        got, code = run(scenario())
    assert [m["code"] for m in got] == ["not_found"] and code == 1008


# -- admission -------------------------------------------------------------------------------------
OPENERS: dict[str, tuple[str, list[str | bytes | dict]]] = {
    "v1": ("/v1/stream", [START]),
    "stt": ("/stt/realtime", [{**START_SESSION, "session_id": None}]),  # a generated id: several may be open
    "raw": (RAW, []),
}


async def _open(url: str, endpoint: str) -> ClientConnection:
    path, messages = OPENERS[endpoint]
    ws = await connect(url + path)
    for m in messages:
        await ws.send(json.dumps(m))
    if endpoint != "raw":
        assert (await recv(ws))["type"] in ("ready", "session_started")
    return ws


@pytest.mark.parametrize("endpoint", ["v1", "stt", "raw"])
def test_admission_is_refused_with_1013_at_the_session_limit(tmp_path, endpoint):
    with serve(tmp_path, max_sessions=2) as server:
        sessions = server.services.sessions

        async def scenario():
            v1 = await _open(server.url, "v1")
            other = await _open(server.url, endpoint)
            await server.wait_for(lambda: sessions.active_count() == 2, "two sessions")
            path, messages = OPENERS[endpoint]
            refused = await exchange(server.url + path, messages)
            await v1.send(json.dumps({"type": "stop"}))
            await until_closed(v1)  # an ended session frees its place
            admitted = await _open(server.url, endpoint)
            await other.close()
            await admitted.close()
            return refused

        got, code = run(scenario())
    assert code == 1013 and [error_of(m) for m in got] == ["overloaded"]
    assert "limit of 2 live sessions" in got[0]["message"]


def test_a_dropped_session_keeps_its_place_only_where_it_can_be_resumed(tmp_path):
    with serve(tmp_path, max_sessions=2) as server:
        sessions = server.services.sessions

        async def scenario():
            v1 = await _open(server.url, "v1")
            stt = await _open(server.url, "stt")
            await server.wait_for(lambda: sessions.active_count() == 2, "two sessions")
            stt.transport.abort()  # /stt/realtime cannot resume: its session ends at once
            await server.wait_for(lambda: sessions.active_count() == 1, "the stt session to end")
            raw = await _open(server.url, "raw")
            await server.wait_for(lambda: sessions.active_count() == 2, "the raw session")
            v1.transport.abort()  # /v1/stream can: its session waits for a resume, holding its place
            await server.wait_for(lambda: any(s["state"] == "detached" for s in sessions.list()), "the v1 drop")
            refused = await exchange(server.url + "/v1/stream", [START])
            await raw.close()
            return refused

        got, code = run(scenario())
    assert code == 1013 and [m["code"] for m in got] == ["overloaded"]


@pytest.mark.parametrize("endpoint", ["v1", "stt", "raw"])
def test_sessions_are_refused_with_1013_until_the_model_is_ready(tmp_path, endpoint):
    empty = tmp_path / "no-model"
    empty.mkdir()
    with serve(tmp_path, model=str(empty)) as server:
        path, messages = OPENERS[endpoint]
        got, code = run(exchange(server.url + path, messages))
    assert code == 1013 and [error_of(m) for m in got] == ["not_ready"]


# -- superseded partials -----------------------------------------------------------------------------
def test_a_final_overtakes_a_partial_in_flight_and_the_partial_is_never_sent(tmp_path):
    decoder = GatedDecoder()
    with serve(tmp_path, decoder) as server:
        scheduler = server.services.scheduler

        async def scenario():
            async with connect(server.url + "/v1/stream") as ws:
                await ws.send(json.dumps(START))
                await recv(ws)
                for frame in frames(s16(tone_speech(["alpha", "bravo", "charlie"]))):  # no pause yet
                    await ws.send(frame)
                await asyncio.to_thread(decoder.entered.wait, 5)  # the phrase's partial is decoding
                for frame in frames(s16(np.zeros(SR, dtype=np.float32))):  # the pause: its final is due now
                    await ws.send(frame)
                await server.wait_for(lambda: scheduler.pending(Priority.LIVE) == 1, "the final to queue behind the partial")
                decoder.gate.set()
                await ws.send(json.dumps({"type": "stop"}))
                return await until_closed(ws)

        events, code = run(scenario())
    assert [e["type"] for e in events] == ["final", "end"] and code == 1000
    assert events[0]["text"] == "alpha bravo charlie" and events[0]["seq"] == 1
    assert len(decoder.windows) == 2  # the partial was decoded, and its result dropped


# -- the Python client against the real server ---------------------------------------------------------
def test_the_client_fetches_the_end_of_a_session_that_ended_while_it_was_away(tmp_path):
    from malsori.client import AsyncStreamClient, EndEvent, FinalEvent, ReconnectPolicy, StreamOptions

    decoder = GatedDecoder()
    with serve(tmp_path, decoder) as server:

        async def scenario():
            # One resume, after 1 s: time enough for the session to end before it (checked below).
            client = AsyncStreamClient(
                server.url + "/v1/stream",
                StreamOptions(language="en"),
                reconnect=ReconnectPolicy(initial_delay_s=1.0, max_attempts=1),
            )
            ready = await client.connect()
            for frame in frames(s16(tone_speech([0.3, "alpha", "bravo"]))):
                await client.send_audio(frame)
            await client.stop()
            live = server.services.sessions.get(ready.session_id)
            await server.wait_for(lambda: live.session.state == "finishing", "the stop")
            client.connection.transport.abort()
            await server.wait_for(lambda: live.detached_at is not None, "the server to see the drop")
            decoder.gate.set()
            await server.wait_for(lambda: live.ended, "the session to end")
            assert client.resumes == 0, "the client resumed before the session ended: this test proves nothing"
            events = [event async for event in client]
            await client.close()
            return events, client.resumes

        events, resumes = run(scenario())
    assert resumes == 1
    assert [e.type for e in events] == ["ready", "final", "end"]
    assert isinstance(events[1], FinalEvent) and events[1].text == "alpha bravo" and isinstance(events[-1], EndEvent)
