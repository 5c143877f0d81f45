"""OpenAI Realtime transcription (``/v1/realtime?intent=transcription``).

Fast tier: the real app under uvicorn with the fake decoder and the energy VAD (tone-burst speech,
``engine.fake``), so the event sequence, manual commit, clear, malformed events and 24 kHz input are
checked in seconds; every server event is validated against the official ``openai`` package's types.
Model tier: the official ``openai`` client's realtime connection transcribes jfk.flac through a real
server with the real model.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pydantic
import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from test_protocol_fast import PART1, PART2, recv, run, s16, serve, until, until_closed
from websockets.asyncio.client import ClientConnection, connect

from malsori.engine.fake import FakeDecoder, tone_speech

SR = 16000
PATH = "/v1/realtime?intent=transcription"
BETA = {"OpenAI-Beta": "realtime=v1"}
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
GA_EVENTS = pydantic.TypeAdapter(RealtimeServerEvent)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    decoder = FakeDecoder()
    decoder.model_name = "fake-base"  # type: ignore[attr-defined]  # the served model's name (Services.model_name)
    with serve(tmp_path_factory.mktemp("realtime"), decoder) as running:
        yield running


def at_24k(audio: np.ndarray) -> np.ndarray:
    """16 kHz to OpenAI's 24 kHz (linear interpolation: the tones are far below either Nyquist)."""
    n = len(audio) * 3 // 2
    return np.interp(np.arange(n) * SR / 24000, np.arange(len(audio)), audio).astype(np.float32)


def appends(audio: np.ndarray, rate: int, frame_s: float = 0.1) -> list[dict]:
    pcm, step = s16(audio), int(rate * frame_s) * 2
    return [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + step]).decode()}
        for i in range(0, len(pcm), step)
    ]


async def send(ws: ClientConnection, *messages: dict | str | bytes) -> None:
    for m in messages:
        await ws.send(json.dumps(m) if isinstance(m, dict) else m)


def valid(message: dict, *, beta: bool = False) -> dict:
    """The message as the openai package's GA types define it (the beta dialect's session events are
    checked by name: the package's beta session type requires a client_secret its docs say is absent)."""
    if not (beta and message["type"].startswith("transcription_session.")) and message["type"] != "conversation.item.created":
        GA_EVENTS.validate_python(message)
    assert message["event_id"].startswith("event_")
    return message


def of(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def completed_count(n: int):
    state = {"n": 0}

    def done(message: dict) -> bool:
        state["n"] += message["type"] == COMPLETED
        return state["n"] >= n

    return done


def test_server_vad_turns_at_24k_give_the_openai_event_sequence(server):
    """Two phrases with a pause between: two turns, each started, stopped, committed, then completed
    with deltas first; the tones are only named right if the 24 kHz audio was resampled correctly."""

    async def scenario():
        async with connect(server.url + PATH) as ws:
            created = valid(await recv(ws))
            update = {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                            "turn_detection": {
                                "type": "server_vad",
                                "threshold": 0.5,
                                "prefix_padding_ms": 300,
                                "silence_duration_ms": 500,
                            },
                        }
                    },
                },
            }
            await send(ws, update)
            updated = valid(await recv(ws))
            await send(ws, *appends(at_24k(np.concatenate([PART1, PART2])), 24000))
            return created, updated, [valid(m) for m in await until(ws, completed_count(2))]

    created, updated, got = run(scenario())
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert updated["type"] == "session.updated"
    audio_input = updated["session"]["audio"]["input"]
    assert audio_input["transcription"]["language"] == "en" and audio_input["transcription"]["model"] == "gpt-4o-transcribe"
    assert audio_input["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }

    started, stopped = of(got, "input_audio_buffer.speech_started"), of(got, "input_audio_buffer.speech_stopped")
    committed, completed = of(got, "input_audio_buffer.committed"), of(got, COMPLETED)
    assert [c["transcript"] for c in completed] == ["alpha bravo", "charlie delta"]
    items = [s["item_id"] for s in started]
    assert len(items) == 2 and len(set(items)) == 2
    assert [s["item_id"] for s in stopped] == [c["item_id"] for c in committed] == [c["item_id"] for c in completed] == items
    assert [c["previous_item_id"] for c in committed] == [None, items[0]]
    assert [a["item"]["id"] for a in of(got, "conversation.item.added")] == items
    for item in items:
        kinds = [m["type"] for m in got if m.get("item_id") == item or m.get("item", {}).get("id") == item]
        order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
        assert [k for k in kinds if k in order] == order
        assert kinds.index("conversation.item.added") > kinds.index("input_audio_buffer.committed")
        assert kinds[-1] == COMPLETED and DELTA in kinds  # deltas, then completed
        deltas = "".join(m["delta"] for m in got if m["type"] == DELTA and m["item_id"] == item)
        assert deltas == next(c["transcript"] for c in completed if c["item_id"] == item)
    # Times are in ms of the audio sent: speech from 0.3 s (less 300 ms padding); the first phrase
    # ends 0.8 s of silence after its last word, and speech_stopped comes 500 ms after that.
    onset2 = len(PART1) / SR
    assert started[0]["audio_start_ms"] <= 64
    assert abs(started[1]["audio_start_ms"] - (onset2 - 0.3) * 1000) <= 64
    last_word_end = (len(PART1) / SR - 0.8 - 0.08) * 1000
    assert abs(stopped[0]["audio_end_ms"] - (last_word_end + 500)) <= 96
    assert completed[0]["usage"]["type"] == "duration" and completed[0]["usage"]["seconds"] > 0.5


def test_manual_commit_without_turn_detection_beta_dialect_16k(server):
    """turn_detection null: one item per commit, whatever pauses it holds; a commit finalizes speech
    that never paused; an empty commit is an error event and the connection goes on."""

    async def scenario():
        async with connect(server.url + PATH, additional_headers=BETA) as ws:
            created = await recv(ws)
            update = {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_sample_rate": 16000,
                    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": None,
                },
            }
            await send(ws, update)
            updated = await recv(ws)
            await send(ws, *appends(np.concatenate([PART1, PART2]), SR), {"type": "input_audio_buffer.commit"})
            first = await until(ws, completed_count(1))
            # No pause after these words: only the commit ends them.
            await send(ws, {"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
            empty = await recv(ws)
            await send(ws, *appends(tone_speech(["echo", "foxtrot"]), SR), {"type": "input_audio_buffer.commit"})
            second = await until(ws, completed_count(1))
            return created, updated, first, empty, second

    created, updated, first, empty, second = run(scenario())
    assert created["type"] == "transcription_session.created" and created["session"]["input_audio_format"] == "pcm16"
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["turn_detection"] is None and updated["session"]["input_audio_sample_rate"] == 16000
    for message in first + second:
        valid(message, beta=True)
    assert not [m for m in first + second if m["type"].startswith("input_audio_buffer.speech_")]
    (c1,), (c2,) = of(first, COMPLETED), of(second, COMPLETED)
    assert c1["transcript"] == "alpha bravo charlie delta" and c2["transcript"] == "echo foxtrot"
    (k1,), (k2,) = of(first, "input_audio_buffer.committed"), of(second, "input_audio_buffer.committed")
    assert k1["item_id"] == c1["item_id"] and k1["previous_item_id"] is None
    assert k2["item_id"] == c2["item_id"] and k2["previous_item_id"] == c1["item_id"]
    assert [m["item"]["id"] for m in of(first, "conversation.item.created")] == [c1["item_id"]]
    assert empty["type"] == "error" and empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert empty["error"]["event_id"] == "evt_empty" and empty["error"]["type"] == "invalid_request_error"


def test_clear_drops_the_uncommitted_audio(server):
    async def scenario():
        async with connect(server.url + PATH) as ws:
            await recv(ws)
            update = {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
            await send(ws, update)
            await recv(ws)
            await send(ws, *appends(at_24k(tone_speech(["alpha", "bravo"])), 24000), {"type": "input_audio_buffer.clear"})
            cleared = await until(ws, lambda m: m["type"] == "input_audio_buffer.cleared")
            await send(ws, *appends(at_24k(tone_speech(["charlie"])), 24000), {"type": "input_audio_buffer.commit"})
            return cleared, await until(ws, completed_count(1))

    cleared, got = run(scenario())
    (done,) = of(got, COMPLETED)
    assert done["transcript"] == "charlie"
    assert not of(cleared + got, "input_audio_buffer.committed")[:-1]  # only the commit's item was committed


BAD_EVENTS: list[tuple[Any, str, str | None]] = [
    ("not json", "invalid_json", None),
    ({"type": "response.create"}, "invalid_value", "type"),
    ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
    ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_value", "audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}, "invalid_value", "audio"),
    ({"type": "input_audio_buffer.append", "audio": "", "extra": 1}, "unknown_parameter", "extra"),
    ({"type": "session.update", "session": {"type": "realtime"}}, "invalid_value", "session.type"),
    ({"type": "session.update", "session": {"type": "transcription", "voice": "alloy"}}, "unknown_parameter", "session.voice"),
    (
        {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
        "invalid_value",
        "session.audio.input.format.type",
    ),
    (
        {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}},
        "invalid_value",
        "session.input_audio_format",
    ),
    (
        {"type": "transcription_session.update", "session": {"input_audio_sample_rate": 44100}},
        "invalid_value",
        "session.input_audio_sample_rate",
    ),
    (
        {"type": "transcription_session.update", "session": {"turn_detection": {"threshold": 2}}},
        "invalid_value",
        "session.turn_detection.threshold",
    ),
    (
        {"type": "transcription_session.update", "session": {"turn_detection": {"type": "semantic_vad"}}},
        "invalid_value",
        "session.turn_detection.type",
    ),
    (
        {"type": "transcription_session.update", "session": {"input_audio_transcription": {"model": "gpt-9"}}},
        "invalid_value",
        "session.input_audio_transcription.model",
    ),
    (
        {"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "xx"}}},
        "invalid_value",
        "language",
    ),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
    (b"\x00\x01", "invalid_value", None),
]


def test_malformed_events_get_openai_error_events_and_the_connection_stays_open(server):
    async def scenario():
        async with connect(server.url + PATH) as ws:
            await recv(ws)
            answers = []
            for i, (message, _, _) in enumerate(BAD_EVENTS):
                if isinstance(message, dict):
                    message = {**message, "event_id": f"evt_{i}"}
                await send(ws, message)
                answers.append(await recv(ws))
            await send(ws, {"type": "session.update", "session": {"type": "transcription"}})
            return answers, await recv(ws)

    answers, still_open = run(scenario())
    for i, ((message, code, param), answer) in enumerate(zip(BAD_EVENTS, answers, strict=True)):
        valid(answer)
        error = answer["error"]
        assert (answer["type"], error["type"], error["code"], error["param"]) == (
            "error",
            "invalid_request_error",
            code,
            param,
        ), message
        assert error["event_id"] == (f"evt_{i}" if isinstance(message, dict) else None) and error["message"]
    assert still_open["type"] == "session.updated"


def test_config_is_fixed_once_audio_flows_but_turn_detection_can_be_switched(server):
    async def scenario():
        async with connect(server.url + PATH) as ws:
            await recv(ws)
            await send(ws, *appends(at_24k(tone_speech([0.2])), 24000))
            language = {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"transcription": {"language": "ko"}}}},
            }
            manual = {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
            await send(ws, language)
            refused = await recv(ws)
            await send(ws, manual)
            return refused, await recv(ws)

    refused, switched = run(scenario())
    assert refused["type"] == "error" and refused["error"]["code"] == "session_config_locked"
    assert switched["type"] == "session.updated" and switched["session"]["audio"]["input"]["turn_detection"] is None


def test_wrong_intent_and_oversized_audio_close_with_their_codes(server):
    async def scenario(path: str, *messages: dict) -> tuple[list[dict], int | None]:
        async with connect(server.url + path, max_size=None) as ws:
            await send(ws, *messages)
            return await until_closed(ws)

    got, code = run(scenario("/v1/realtime?model=gpt-4o-realtime-preview"))
    assert code == 1008 and got[-1]["type"] == "error" and "intent=transcription" in got[-1]["error"]["message"]
    huge = {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(200_000)).decode()}
    got, code = run(scenario(PATH, huge))
    assert code == 1009 and got[0]["type"] == "session.created" and got[-1]["error"]["code"] == "audio_too_large"


# -- the real model, through the official client ---------------------------------------------------
@pytest.mark.model
@pytest.mark.e2e
def test_openai_realtime_client_transcribes_jfk_at_24k(live_server, testdata, manifest):
    import av
    from openai import AsyncOpenAI

    from malsori.evaluation import wer

    with av.open(str(testdata / "en" / "jfk.flac")) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)] + resampler.resample(None)
    pcm = b"".join(f.to_ndarray().tobytes() for f in frames)
    chunk = 24000 * 2 // 10  # 100 ms

    async def scenario() -> list[Any]:
        client = AsyncOpenAI(
            api_key="unused", base_url=live_server.url + "/v1", websocket_base_url=live_server.url.replace("http", "ws") + "/v1"
        )
        events: list[Any] = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(
                session={"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}}
            )

            state = {"commit_sent": False, "stopped": 0, "committed": [], "completed": set()}

            def finished() -> bool:
                # The closing commit is the last committed event (every turn before it was committed
                # by a speech_stopped); once every committed item is completed, nothing is left.
                return (
                    bool(state["commit_sent"])
                    and len(state["committed"]) == state["stopped"] + 1
                    and set(state["committed"]) <= state["completed"]
                )

            async def receive() -> None:
                async for event in conn:
                    events.append(event)
                    if event.type == "input_audio_buffer.speech_stopped":
                        state["stopped"] += 1
                    elif event.type == "input_audio_buffer.committed":
                        state["committed"].append(event.item_id)
                    elif event.type == COMPLETED:
                        state["completed"].add(event.item_id)
                    if finished() or event.type == "error":
                        return

            reader = asyncio.create_task(receive())
            for i in range(0, len(pcm), chunk):  # 4x real time: partials still have room to run
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + chunk]).decode())
                await asyncio.sleep(0.025)
            silence = base64.b64encode(bytes(24000 * 2 // 10)).decode()
            for _ in range(20):  # 2 s of silence: the last turn ends, and 1.5 s of it stays in the buffer
                await conn.input_audio_buffer.append(audio=silence)
            state["commit_sent"] = True
            await conn.input_audio_buffer.commit()  # what the silence after the turn holds: an empty item, last
            await asyncio.wait_for(reader, 60)
        return events

    events = asyncio.run(scenario())
    kinds = [e.type for e in events]
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    completed = [e for e in events if e.type == COMPLETED]
    text = " ".join(e.transcript for e in completed if e.transcript)
    reference = next(row.reference for row in manifest if row.path.as_posix().endswith("en/jfk.flac"))
    assert wer(reference, text) <= 0.1, text
    for done in completed:
        if not done.transcript:
            continue
        deltas = [i for i, e in enumerate(events) if e.type == DELTA and e.item_id == done.item_id]
        assert deltas and max(deltas) < events.index(done), f"no delta before {done.transcript!r}"
    assert "input_audio_buffer.speech_started" in kinds and "input_audio_buffer.committed" in kinds
