"""``stats`` events and meetings over the live protocols, fast: the real app with the fake decoder
and the energy VAD (as tests/test_protocol_fast.py). The statistics themselves are checked against
hand-computed values in tests/test_analysis_stats.py; the real model on the LJ talk, the 2 s cadence
and the meeting after a restart of a real server in tests/test_stats_live.py."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from test_protocol_fast import PART1, PART2, START, START_SESSION, exchange, frames, recv, run, s16, serve, until_closed
from websockets.asyncio.client import connect

AUDIO = s16(np.concatenate([PART1, PART2]))  # finals "alpha bravo", "charlie delta"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A short interval, so periodic stats come while the test waits for a few of them.
    with serve(tmp_path_factory.mktemp("stats-ws"), stats_interval_s=0.05) as running:
        yield running


def _http(server) -> str:
    return server.url.replace("ws://", "http://")


async def _stream(url: str, start: dict, *, ticks: int = 3) -> tuple[dict, list[dict], int | None]:
    """Start, send the audio, wait for ``ticks`` stats events that come without a final, stop."""
    async with connect(url) as ws:
        await ws.send(json.dumps(start))
        ready = await recv(ws)
        for frame in frames(AUDIO):
            await ws.send(frame)
        got: list[dict] = []
        while sum(1 for m in got if m["type"] == "stats") < ticks:
            got.append(await recv(ws))
        await ws.send(json.dumps({"type": "stop"}))
        rest, code = await until_closed(ws)
        return ready, got + rest, code


def test_v1_stats_events_follow_finals_and_match_them(server):
    ready, events, code = run(_stream(server.url + "/v1/stream", {**START, "stats": True, "meeting_id": "fast-m1"}))
    assert code == 1000 and events[-1]["type"] == "end"
    numbered = [e for e in events if e["type"] != "stats"]
    assert [e["seq"] for e in numbered] == list(range(1, len(numbered) + 1))  # stats take no seq
    stats = [e for e in events if e["type"] == "stats"]
    assert stats and all(e["seq"] == 0 and e["session_id"] == ready["session_id"] for e in stats)
    assert all(e["meeting_id"] == "fast-m1" for e in stats)
    for i, e in enumerate(events):  # every final is followed by stats that count it
        if e["type"] == "final":
            after = next(s for s in events[i + 1 :] if s["type"] == "stats")
            done = [f for f in events[: i + 1] if f["type"] == "final"]
            assert after["stats"]["finals"] == len(done)
            assert after["stats"]["words"] == sum(len(f["text"].split()) for f in done)
    last = stats[-1]["stats"]
    finals = [e for e in events if e["type"] == "final"]
    assert [f["text"] for f in finals] == ["alpha bravo", "charlie delta"]
    assert last["words"] == 4 and last["finals"] == 2
    assert last["speaking_s"] == pytest.approx(sum(f["end"] - f["start"] for f in finals), abs=2e-3)
    assert last["wpm"] == pytest.approx(4 / last["speaking_s"] * 60, abs=0.1)
    assert 0.0 < last["silence_ratio"] < 1.0
    assert last["audio_s"] == pytest.approx(events[-1]["audio_seconds"], abs=0.01)
    assert last["latency"]["count"] == 2 and last["latency"]["p50_ms"] >= 0
    assert last["sentiment"] is None and last["speakers"] is None  # no sentiment, no diarize asked
    assert stats[-1]["meeting"]["words"] == 4
    # The stats event comes right before end: the socket's last word is still end.
    assert events[-2]["type"] == "stats"

    meeting = httpx.get(f"{_http(server)}/v1/meetings/fast-m1").json()
    assert meeting["state"] == "ended" and [t["text"] for t in meeting["transcript"]] == ["alpha bravo", "charlie delta"]
    assert meeting["stats"]["words"] == 4 and len(meeting["sessions"]) == 1
    assert meeting["sessions"][0]["session_id"] == ready["session_id"] and meeting["sessions"][0]["end_reason"] == "stopped"


def test_a_meeting_spans_sessions(server):
    start = {**START, "meeting_id": "fast-m2"}
    run(exchange(server.url + "/v1/stream", [start, *frames(AUDIO), {"type": "stop"}]))
    live = httpx.get(f"{_http(server)}/v1/meetings/fast-m2").json()
    assert live["state"] == "ended" and live["stats"]["finals"] == 2
    run(exchange(server.url + "/v1/stream", [start, *frames(AUDIO), {"type": "stop"}]))
    meeting = httpx.get(f"{_http(server)}/v1/meetings/fast-m2").json()
    assert [s["index"] for s in meeting["sessions"]] == [1, 2]
    assert meeting["stats"]["words"] == 8 and meeting["stats"]["finals"] == 4
    assert [t["text"] for t in meeting["transcript"]] == ["alpha bravo", "charlie delta"] * 2
    listed = httpx.get(f"{_http(server)}/v1/meetings").json()["meetings"]
    row = next(m for m in listed if m["meeting_id"] == "fast-m2")
    assert row["transcript_finals"] == 4 and "transcript" not in row
    assert httpx.get(f"{_http(server)}/v1/meetings/nope").status_code == 404


def test_no_stats_unless_asked(server):
    events, code = run(exchange(server.url + "/v1/stream", [START, *frames(AUDIO), {"type": "stop"}]))
    assert code == 1000 and not [e for e in events if e["type"] == "stats"]


def test_stt_realtime_stats_carry_the_labels(server):
    async def scenario():
        async with connect(server.url + "/stt/realtime") as ws:
            await ws.send(json.dumps({**START_SESSION, "session_id": "call-stats", "meeting_id": "fast-m3", "stats": True}))
            await recv(ws)
            for frame in frames(AUDIO):
                await ws.send(json.dumps({"type": "audio_chunk", "audio_data": base64.b64encode(frame).decode()}))
            await ws.send(json.dumps({"type": "end_session"}))
            return await until_closed(ws)

    events, code = run(scenario())
    stats = [e for e in events if e["type"] == "stats"]
    assert code == 1000 and stats
    assert {(e["session_id"], e["tenant_id"], e["meeting_id"]) for e in stats} == {("call-stats", "acme", "fast-m3")}
    assert stats[-1]["stats"]["words"] == 4 and stats[-1]["meeting"]["words"] == 4
    meeting = httpx.get(f"{_http(server)}/v1/meetings/fast-m3").json()
    assert meeting["tenant_id"] == "acme" and meeting["stats"]["finals"] == 2


@pytest.mark.parametrize(
    "start",
    [{**START, "stats": "yes"}, {**START, "meeting_id": ""}, {**START, "meeting_id": 7}, {**START, "meeting_id": "x" * 129}],
)
def test_bad_analysis_options_are_refused(server, start):
    events, code = run(exchange(server.url + "/v1/stream", [start]))
    assert code == 1008 and events[-1]["code"] == "invalid_options"


def test_a_meeting_id_of_another_tenant_is_a_meeting_of_its_own(server):
    # Without keys tenants are labels, but meeting ids are still the tenant's own: naming the same id
    # under another tenant joins another meeting (nobody is refused, or told of the other).
    first = {**START_SESSION, "session_id": "t-1", "meeting_id": "fast-m4"}
    run(exchange(server.url + "/stt/realtime", [first, {"type": "end_session"}]))
    second = {**first, "session_id": "t-2", "tenant_id": "other"}
    events, code = run(exchange(server.url + "/stt/realtime", [second, {"type": "end_session"}]))
    assert code == 1000 and not [e for e in events if e.get("type") == "error"], (code, events)
    http = _http(server)
    # ?tenant_id= picks the tenant (label) of a meeting; without it, the newest meeting of the id.
    for tenant, session in (("other", "t-2"), ("acme", "t-1"), ("", "t-2")):
        query = f"?tenant_id={tenant}" if tenant else ""
        for _ in range(100):  # the ended meeting is written in the background
            got = httpx.get(f"{http}/v1/meetings/fast-m4{query}")
            if got.status_code == 200 and got.json()["state"] == "ended":
                break
        assert [p["session_id"] for p in got.json()["sessions"]] == [session], (tenant, got.json())
    assert server.services.sessions.active_count() == 0


def test_the_python_client_asks_for_stats_and_reads_them(server):
    from malsori.client import AsyncStreamClient, FinalEvent, StatsEvent, StreamOptions

    async def body():
        got = []
        options = StreamOptions(language="en", stats=True, meeting_id="fast-m5")
        async with AsyncStreamClient(server.url + "/v1/stream", options=options) as stream:
            for frame in frames(AUDIO):
                await stream.send_audio(frame)
            await stream.stop()
            async for event in stream:
                got.append(event)
        return got

    events = run(body())
    stats = [e for e in events if isinstance(e, StatsEvent)]
    assert stats and all(e.seq is None and e.meeting_id == "fast-m5" for e in stats)
    assert stats[-1].stats["words"] == 4 and stats[-1].meeting["finals"] == 2  # type: ignore[index]
    assert [e.text for e in events if isinstance(e, FinalEvent)] == ["alpha bravo", "charlie delta"]
