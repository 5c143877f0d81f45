"""Live endpoints end to end: a real `malsori serve` process, real sockets, the real model, real speech."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.model]

live_server_env = {"MALSORI__STREAMING__MAX_SESSIONS": "3", "MALSORI__STREAMING__MAX_FRAME_BYTES": "65536"}

SR = 16000


def ws_url(server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def pcm16(audio: np.ndarray) -> bytes:
    from malsori.engine import float32_to_pcm16

    return float32_to_pcm16(audio)


def load(testdata, *names: str, gap_s: float = 0.6) -> np.ndarray:
    from malsori.engine import decode_audio

    gap = np.zeros(int(gap_s * SR), dtype=np.float32)
    parts = []
    for name in names:
        parts += [decode_audio(testdata / name), gap]
    return np.concatenate(parts)


def reference(manifest, *names: str) -> str:
    by_path = {row.path.as_posix(): row.reference for row in manifest}
    return " ".join(next(ref for path, ref in by_path.items() if path.endswith(name)) for name in names)


async def stream(url, audio, *, speed=4.0, frame_s=0.1, start=None, stop=True, cut_after_s=None, resume=None):
    """Send ``audio`` paced at ``speed`` x real time; collect events. ``cut_after_s``: drop the socket there."""
    import websockets

    events: list[dict] = []
    message = {"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en", **(start or {})}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps(message))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        first = ready.get("received_samples", 0) if resume else 0

        async def receive():
            async for raw in ws:
                events.append(json.loads(raw))

        receiver = asyncio.create_task(receive())
        n = int(frame_s * SR)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(first, len(audio), n):
            if cut_after_s is not None and i >= cut_after_s * SR:
                receiver.cancel()
                ws.transport.abort()
                return ready, events, i
            await ws.send(pcm16(audio[i : i + n]))
            delay = (i - first + n) / SR / speed - (loop.time() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
        if stop:
            await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, 120)
        return ready, events, len(audio), ws.close_code


def final_text(events) -> str:
    return " ".join(e["text"] for e in events if e["type"] == "final")


LJ = [f"en/ljspeech/LJ001-{k:04d}.flac" for k in (1, 2, 3, 4)]


def test_real_speech_stream_gives_finals_matching_the_reference(live_server, testdata, manifest):
    from malsori.evaluation import wer as score

    audio = load(testdata, *LJ)
    ready, events, _, close_code = asyncio.run(stream(ws_url(live_server, "/v1/stream"), audio))
    assert ready["session_id"] and ready["resume_token"] and ready["seq"] == 0
    assert close_code == 1000
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "end"
    assert any(e["type"] == "partial" for e in events)
    finals = [e for e in events if e["type"] == "final"]
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in itertools.pairwise(finals))
    error = score(reference(manifest, *LJ), final_text(events))
    assert error <= 0.10, (error, final_text(events))


def test_resume_after_a_dropped_connection_loses_and_duplicates_nothing(live_server, testdata, manifest):
    from malsori.evaluation import wer as score

    audio = load(testdata, *LJ[:3])
    url = ws_url(live_server, "/v1/stream")

    async def scenario():
        ready, events, _ = await stream(url, audio, cut_after_s=9.0)
        last_seq = max((e["seq"] for e in events), default=0)
        wrong = {"session_id": ready["session_id"], "resume_token": "wrong-token", "last_seq": last_seq}
        import websockets

        async with websockets.connect(url) as ws:  # a takeover without the token is refused
            await ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", **wrong}))
            refusal = json.loads(await ws.recv())
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert refusal["type"] == "error" and refusal["code"] == "unauthorized" and ws.close_code == 1008
        resume = {"session_id": ready["session_id"], "resume_token": ready["resume_token"], "last_seq": last_seq}
        ready2, rest, _, code = await stream(url, audio, start=resume, resume=True)
        return ready, ready2, events, rest, code

    ready, ready2, before, after, code = asyncio.run(scenario())
    assert ready2["resumed"] is True and ready2["session_id"] == ready["session_id"]
    assert 0 < ready2["received_samples"] <= 9.1 * SR
    events = before + after
    seqs = [e["seq"] for e in events]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), "no gap in the sequence"
    unique = {e["seq"]: e for e in events}
    text = " ".join(unique[s]["text"] for s in sorted(unique) if unique[s]["type"] == "final")
    assert code == 1000
    error = score(reference(manifest, *LJ[:3]), text)
    assert error <= 0.10, (error, text)


def test_silence_and_noise_produce_no_text(live_server, testdata):
    from malsori.engine import decode_audio

    silence = decode_audio(testdata / "silence" / "empty.wav")
    noise = (np.random.default_rng(7).standard_normal(SR * 6) * 0.05).astype(np.float32)
    for audio in (silence, noise):
        _, events, _, code = asyncio.run(stream(ws_url(live_server, "/v1/stream"), audio, speed=8.0))
        assert [e["type"] for e in events if e["type"] in ("partial", "final")] == []
        assert events[-1]["type"] == "end" and code == 1000


def test_a_spoken_thank_you_is_kept_while_one_invented_on_noise_is_dropped(live_server, testdata, transcriber):
    """The hallucination guard tells "Thank you." said by a speaker (the last words of three_speakers.wav,
    alone after a pause) from the one Whisper invents on noise (brown noise: no-speech probability about
    0.8) by the no-speech probability, not by a log-probability that both have low."""
    from malsori.engine import decode_audio
    from malsori.engine.windows import Window
    from malsori.evaluation import normalize
    from malsori.streaming import StreamConfig
    from malsori.streaming.guard import clean_text

    audio = decode_audio(testdata / "diarization" / "three_speakers.wav")
    _, events, _, code = asyncio.run(stream(ws_url(live_server, "/v1/stream"), audio))
    assert code == 1000
    assert normalize(final_text(events)).endswith("thank you"), final_text(events)

    steps = np.cumsum(np.random.default_rng(3).standard_normal(SR))
    steps -= np.convolve(steps, np.ones(400) / 400, "same")
    noise = (steps / np.abs(steps).max() * 0.01).astype(np.float32)
    options = replace(StreamConfig.from_preset("balanced").final_options(), language="en")
    result = transcriber.decode_windows([Window(noise, offset=0.0)], options)[0]
    assert result.text.strip() and result.no_speech_prob > 0.5, result  # Whisper invents text on it
    assert clean_text(result.text, no_speech_prob=result.no_speech_prob, avg_logprob=result.avg_logprob)[0] == ""


async def _bad(url, messages) -> tuple[list[dict], int]:
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        for m in messages:
            await ws.send(m)
        got = []
        try:
            async for raw in ws:
                got.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return got, ws.close_code


START = json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en"})


@pytest.mark.parametrize(
    "messages, code, error_code",
    [
        (["{not json"], 1008, "protocol_error"),
        ([json.dumps({"type": "dance"})], 1008, "protocol_error"),
        ([json.dumps({"type": "start", "sample_rate": SR, "colour": "red"})], 1008, "protocol_error"),
        ([json.dumps({"type": "start", "encoding": "mp3"})], 1008, "invalid_options"),
        ([b"\x00\x01" * 100], 1008, "protocol_error"),
        ([START, b"\x00\x01\x02"], 1003, "unsupported_audio"),
        ([START, b"\x00" * 70000], 1009, "audio_too_large"),
    ],
    ids=["bad-json", "unknown-type", "unknown-field", "wrong-encoding", "audio-before-start", "odd-bytes", "oversized"],
)
def test_malformed_input_gets_an_error_and_close_code_while_another_session_runs(
    live_server, testdata, manifest, messages, code, error_code
):
    url = ws_url(live_server, "/v1/stream")
    audio = load(testdata, LJ[0])

    async def scenario():
        good = asyncio.create_task(stream(url, audio, speed=4.0))
        await asyncio.sleep(0.5)  # let the good session start first
        bad = await _bad(url, messages)
        return bad, await good

    (got, close_code), (_, events, _, good_code) = asyncio.run(scenario())
    errors = [e for e in got if e.get("type") == "error"]
    assert errors and errors[-1]["code"] == error_code and errors[-1]["fatal"] is True
    assert close_code == code
    from malsori.evaluation import wer as score

    assert good_code == 1000 and score(reference(manifest, LJ[0]), final_text(events)) <= 0.15


def test_admission_is_refused_with_1013_at_max_sessions(live_server):
    import websockets

    async def scenario():
        sockets = []
        for _ in range(3):
            ws = await websockets.connect(ws_url(live_server, "/v1/stream"))
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "ready"
            sockets.append(ws)
        got, code = await _bad(ws_url(live_server, "/v1/stream"), [START])
        for ws in sockets:
            await ws.send(json.dumps({"type": "stop"}))
            await ws.close()
        return got, code

    got, code = asyncio.run(scenario())
    assert code == 1013 and got[-1]["code"] == "overloaded" and "3 live sessions" in got[-1]["message"]


def test_stt_realtime_and_raw_endpoints_transcribe(live_server, testdata, manifest):
    import websockets

    from malsori.engine import decode_audio

    audio = decode_audio(testdata / "en" / "jfk.flac")

    async def stt():
        async with websockets.connect(ws_url(live_server, "/stt/realtime"), max_size=None) as ws:
            start = {"type": "start_session", "session_id": "call-1", "tenant_id": "acme", "meeting_id": "m1", "language": "en"}
            await ws.send(json.dumps(start))
            started = json.loads(await ws.recv())
            for i in range(0, len(audio), SR):
                await ws.send(json.dumps({"type": "audio_chunk", "audio": base64.b64encode(pcm16(audio[i : i + SR])).decode()}))
            await ws.send(json.dumps({"type": "end_session"}))
            return started, [json.loads(m) async for m in ws]

    async def raw():
        url = ws_url(live_server, "/v1/stream/raw?sample_rate=16000&encoding=pcm_f32le&language=en")
        async with websockets.connect(url, max_size=None) as ws:
            for i in range(0, len(audio), SR // 2):
                await ws.send(audio[i : i + SR // 2].astype("<f4").tobytes())
            await ws.send("stop")
            return [json.loads(m) async for m in ws]

    started, events = asyncio.run(stt())
    assert started == {"type": "session_started", "session_id": "call-1", "tenant_id": "acme", "meeting_id": "m1", "seq": 0}
    text = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["is_final"])
    from malsori.evaluation import wer as score

    jfk = reference(manifest, "en/jfk.flac")
    assert score(jfk, text) <= 0.1, text
    assert events[-1]["type"] == "session_ended"
    results = asyncio.run(raw())
    text = " ".join(r["text"] for r in results if r.get("final"))
    assert score(jfk, text) <= 0.1, text
