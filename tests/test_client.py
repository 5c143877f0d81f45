"""The Python client: typed events, public API, import without the engine, reconnect and resume.

Protocol and resume logic run against a small fake ``/v1/stream`` server (fast, deterministic);
recognition and a real resume run against a real server process with the real model on real speech.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import subprocess
import sys

import pytest
from websockets.asyncio.server import serve

import malsori.client as client_pkg
from malsori.client import (
    AsyncStreamClient,
    EndEvent,
    ErrorEvent,
    FinalEvent,
    PartialEvent,
    ReadyEvent,
    ReconnectPolicy,
    StreamClient,
    StreamOptions,
    parse_event,
)
from malsori.errors import (
    AudioTooLargeError,
    InvalidOptionsError,
    MalsoriError,
    OverloadedError,
    ProtocolError,
    UnsupportedAudioError,
)

FRAME = 3200  # 100 ms of 16 kHz int16


def test_public_api_is_all():
    public = {name for name in dir(client_pkg) if not name.startswith("_")}
    modules = {"errors", "events", "http", "stream", "sync"}
    assert public - modules == set(client_pkg.__all__)
    for name in client_pkg.__all__:
        assert getattr(client_pkg, name) is not None


def test_client_imports_without_the_engine():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'faster_whisper', 'ctranslate2', 'av', 'onnxruntime', 'fastapi'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "for name in ('faster_whisper', 'ctranslate2', 'av'):\n"
        "    sys.modules.pop(name, None)\n"
        "from malsori.client import AsyncStreamClient, StreamClient, HttpClient, FinalEvent\n"
        "import malsori.cli.stream\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'faster_whisper', 'ctranslate2', 'av', 'fastapi'})\n"
        "print('OK', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK []"


def test_events_are_typed():
    final = parse_event(
        {
            "type": "final",
            "seq": 3,
            "text": "And so",
            "start": 0.3,
            "end": 1.5,
            "language": "en",
            "words": [{"word": "And", "start": 0.3, "end": 0.5, "probability": 0.9}],
        }
    )
    assert isinstance(final, FinalEvent)
    assert (final.seq, final.text, final.start, final.end) == (3, "And so", 0.3, 1.5)
    assert final.words[0].word == "And" and final.words[0].probability == 0.9
    assert final.extra == {"language": "en"}
    partial = parse_event({"type": "partial", "seq": 1, "text": "a b", "stable": "a", "unstable": " b"})
    assert isinstance(partial, PartialEvent) and partial.text == "a b" and partial.start is None
    assert isinstance(parse_event({"type": "end", "seq": 9, "reason": "stopped"}), EndEvent)
    error = parse_event({"type": "error", "seq": 2, "code": "protocol_error", "message": "bad", "fatal": True})
    assert isinstance(error, ErrorEvent) and error.code == "protocol_error"
    with pytest.raises(ProtocolError):
        parse_event({"type": "gossip", "seq": 1})
    with pytest.raises(ProtocolError):
        parse_event({"type": "final", "seq": 1, "text": "no times"})


def test_options_are_validated_and_start_message_follows_the_protocol():
    with pytest.raises(InvalidOptionsError):
        StreamOptions(encoding="mp3")
    with pytest.raises(InvalidOptionsError):
        StreamOptions(task="summarize")
    message = StreamOptions(language="en", preset="low-latency", options={"endpoint_s": 0.4}).start_message(
        session_id="s1", resume_token="t", last_seq=7
    )
    assert message == {
        "type": "start",
        "sample_rate": 16000,
        "encoding": "pcm_s16le",
        "task": "transcribe",
        "language": "en",
        "preset": "low-latency",
        "options": {"endpoint_s": 0.4},
        "session_id": "s1",
        "resume_token": "t",
        "last_seq": 7,
    }


class FakeStreamServer:
    """Speaks /v1/stream: one ``final`` per 100 ms frame received, naming the frame's number.

    On resume it reports ``received_samples`` and replays from two events *before* ``last_seq``,
    an overlap a real server does not send, so the client's own de-duplication is what is tested.
    """

    def __init__(self, refuse_with: int | None = None) -> None:
        self.sessions: dict[str, dict] = {}
        self.connections = 0
        self.refuse_with = refuse_with

    async def handler(self, ws) -> None:
        self.connections += 1
        start = json.loads(await ws.recv())
        if self.refuse_with:
            await ws.send(json.dumps({"type": "error", "seq": 0, "code": "overloaded", "message": "at capacity", "fatal": True}))
            await ws.close(self.refuse_with, "overloaded")
            return
        if "session_id" in start:
            session = self.sessions[start["session_id"]]
            assert start["resume_token"] == session["token"]
            await ws.send(
                json.dumps(
                    {
                        "type": "ready",
                        "seq": 0,
                        "session_id": start["session_id"],
                        "resume_token": session["token"],
                        "resumed": True,
                        "received_samples": len(session["audio"]) // 2,
                    }
                )
            )
            for event in session["events"]:
                if event["seq"] > start["last_seq"] - 2:
                    await ws.send(json.dumps(event))
        else:
            sid = f"s{len(self.sessions) + 1}"
            session = self.sessions[sid] = {"token": "tok-" + sid, "audio": bytearray(), "events": []}
            await ws.send(
                json.dumps(
                    {
                        "type": "ready",
                        "seq": 0,
                        "session_id": sid,
                        "resume_token": session["token"],
                        "resumed": False,
                        "received_samples": 0,
                    }
                )
            )

        async def emit(event: dict) -> None:
            event["seq"] = len(session["events"]) + 1
            session["events"].append(event)
            await ws.send(json.dumps(event))

        async for message in ws:
            if isinstance(message, bytes):
                session["audio"] += message
                while len(session["audio"]) >= FRAME * (session.get("done", 0) + 1):
                    n = session.get("done", 0)
                    (number,) = struct.unpack_from("<i", session["audio"], n * FRAME)
                    session["done"] = n + 1
                    await emit({"type": "final", "text": f"f{number}", "start": n / 10, "end": (n + 1) / 10})
            elif json.loads(message)["type"] == "stop":
                await emit({"type": "end", "reason": "stopped"})
                await ws.close()
                return


def numbered_frames(count: int) -> list[bytes]:
    return [struct.pack("<i", i) + bytes(FRAME - 4) for i in range(count)]


async def _run_fake(server: FakeStreamServer, body):
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        return await asyncio.wait_for(body(f"ws://127.0.0.1:{port}/v1/stream"), timeout=30)


def test_async_client_resumes_after_a_dropped_connection_without_loss_or_duplicates():
    server = FakeStreamServer()

    async def body(url):
        finals, seqs = [], []
        async with AsyncStreamClient(url, reconnect=ReconnectPolicy(initial_delay_s=0.05)) as stream:

            async def resumed(count: int) -> None:
                # The client has no event for a resume; its own counter is polled, bounded by wait_for.
                while stream.resumes < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)

            async def send():
                for i, frame in enumerate(numbered_frames(60)):
                    if i == 41:  # cut the second link only once the first cut has been resumed
                        await asyncio.wait_for(resumed(1), 10)
                    if i in (20, 41):
                        stream.connection.transport.abort()  # the link dies without a close frame
                    await stream.send_audio(frame)
                    await asyncio.sleep(0.002)
                await stream.stop()

            sender = asyncio.create_task(send())
            async for event in stream:
                seqs.append(event.seq)
                if isinstance(event, FinalEvent):
                    finals.append(event.text)
            await sender
            return finals, seqs, stream.resumes

    finals, seqs, resumes = asyncio.run(_run_fake(server, body))
    assert resumes == 2 and server.connections == 3
    assert finals == [f"f{i}" for i in range(60)]
    assert seqs == sorted(set(seqs))  # every event once, in order


def test_sync_client_streams_and_resumes():
    server = FakeStreamServer()

    async def body(url):
        def run() -> list[str]:
            with StreamClient(url, reconnect=ReconnectPolicy(initial_delay_s=0.05)) as stream:
                frames = numbered_frames(30)

                def chunks():
                    for i, frame in enumerate(frames):
                        if i == 15:
                            stream.call_soon(lambda: stream.async_client.connection.transport.abort())
                        yield frame

                texts = [e.text for e in stream.stream(chunks()) if isinstance(e, FinalEvent)]
                assert stream.resumes >= 1
                return texts

        return await asyncio.to_thread(run)

    assert asyncio.run(_run_fake(server, body)) == [f"f{i}" for i in range(30)]


def test_refusal_with_1013_raises_overloaded():
    server = FakeStreamServer(refuse_with=1013)

    async def body(url):
        stream = AsyncStreamClient(url)
        with pytest.raises(OverloadedError, match="at capacity"):
            await stream.connect()

    asyncio.run(_run_fake(server, body))


@pytest.mark.parametrize(
    "close, raised",
    [(1003, UnsupportedAudioError), (1008, ProtocolError), (1009, AudioTooLargeError), (1013, OverloadedError)],
)
def test_a_bare_close_raises_the_error_the_server_closes_with(close, raised):
    """No error event before the close: the client reads the close code by malsori.protocol's table."""

    async def handler(ws):
        await ws.recv()
        await ws.close(close, "refused")

    async def body():
        async with serve(handler, "127.0.0.1", 0) as ws_server:
            url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}/v1/stream"
            with pytest.raises(MalsoriError) as info:
                await AsyncStreamClient(url).connect()
            return info.value

    error = asyncio.run(asyncio.wait_for(body(), 30))
    assert type(error) is raised and str(error) == "refused"


# -- against a real server with the real model ---------------------------------------------------------
def _pcm16(path) -> bytes:
    from malsori.engine import decode_audio, float32_to_pcm16

    return float32_to_pcm16(decode_audio(path))


def _ws_url(live_server) -> str:
    return live_server.url.replace("http://", "ws://") + "/v1/stream"


def _frames(pcm: bytes, ms: int = 100) -> list[bytes]:
    size = 32 * ms  # 16 kHz int16: 32 bytes per ms
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


@pytest.mark.model
@pytest.mark.e2e
def test_sync_client_transcribes_jfk_over_a_real_socket(live_server, manifest, testdata):
    from malsori.evaluation import wer

    clip = next(c for c in manifest if c.path.name == "jfk.flac")
    frames = _frames(_pcm16(clip.path))
    with StreamClient(_ws_url(live_server), StreamOptions(language="en")) as stream:
        events = list(stream.stream(frames))
    assert isinstance(events[0], ReadyEvent) and events[0].session_id
    assert isinstance(events[-1], EndEvent)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert finals, [e.type for e in events]
    for before, after in itertools.pairwise(finals):
        assert before.end <= after.start + 1e-6  # finals never overlap
    text = " ".join(f.text for f in finals)
    assert wer(clip.reference, text) <= 0.1, text


@pytest.mark.model
@pytest.mark.e2e
def test_dropped_connection_resumes_without_losing_or_repeating_finals(live_server, manifest):
    """Three LJ Speech sentences with pauses at 2x real time; the TCP link is cut in the middle."""
    from malsori.evaluation import corpus_wer

    clips = [c for c in manifest if "/ljspeech/" in c.path.as_posix()][4:7]
    pause = bytes(int(0.8 * 16000) * 2)
    pcm = pause.join(_pcm16(c.path) for c in clips)
    frames = _frames(pcm)

    async def run():
        events = []
        client = AsyncStreamClient(
            _ws_url(live_server), StreamOptions(language="en"), reconnect=ReconnectPolicy(initial_delay_s=0.05)
        )
        await client.connect()

        async def send():
            started = asyncio.get_running_loop().time()
            for i, frame in enumerate(frames):
                await asyncio.sleep(max(0.0, started + i * 0.05 - asyncio.get_running_loop().time()))
                if i == len(frames) // 2:
                    client.connection.transport.abort()
                await client.send_audio(frame)
            await client.stop()

        sender = asyncio.create_task(send())
        async for event in client:
            events.append(event)
        await sender
        await client.close()
        return events, client.resumes

    events, resumes = asyncio.run(asyncio.wait_for(run(), timeout=180))
    assert resumes == 1
    assert isinstance(events[-1], EndEvent)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    finals = [e for e in events if isinstance(e, FinalEvent)]
    for before, after in itertools.pairwise(finals):
        assert before.end <= after.start + 1e-6
    text = " ".join(f.text for f in finals)
    reference = " ".join(c.reference for c in clips)
    assert corpus_wer([reference], [text]) <= 0.1, text


@pytest.mark.model
@pytest.mark.e2e
def test_http_client_transcribes_and_runs_a_job(live_server, manifest):
    from malsori.client import HttpClient
    from malsori.errors import EmptyAudioError, NotFoundError
    from malsori.evaluation import wer

    clip = next(c for c in manifest if c.path.name == "jfk.flac")
    with HttpClient(live_server.url) as http:
        result = http.transcribe(clip.path, language="en")
        assert wer(clip.reference, result.text) <= 0.1, result.text
        assert result.language == "en" and result.segments and result.duration == pytest.approx(11.0, abs=0.1)
        job = http.submit_job(clip.path, language="en", meeting_id="m-1")
        assert job.state in ("queued", "running", "succeeded") and job.raw["meeting_id"] == "m-1"
        done = http.wait_job(job.id, timeout=120, poll_interval=0.2)
        assert done.state == "succeeded" and done.result is not None
        assert wer(clip.reference, done.result.text) <= 0.1, done.result.text
        with pytest.raises(EmptyAudioError):
            http.transcribe(b"")
        with pytest.raises(NotFoundError):
            http.get_job("no-such-job")


def test_a_fatal_error_before_end_raises_after_the_end_event():
    """A session the server ends because it failed must not look like a normal end."""

    async def handler(ws):
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "seq": 0, "session_id": "s1", "resume_token": "t"}))
        await ws.send(
            json.dumps({"type": "error", "seq": 1, "code": "internal_error", "message": "decoder failed", "fatal": True})
        )
        await ws.send(json.dumps({"type": "end", "seq": 2, "reason": "error"}))
        await ws.close()

    async def body():
        async with serve(handler, "127.0.0.1", 0) as ws_server:
            url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}/v1/stream"
            seen = []
            async with AsyncStreamClient(url) as stream:
                with pytest.raises(MalsoriError, match="decoder failed") as raised:
                    async for event in stream:
                        seen.append(event.type)
            return seen, raised.value.code

    seen, code = asyncio.run(asyncio.wait_for(body(), 30))
    assert seen == ["ready", "error", "end"] and code == "internal_error"
