"""`malsori serve` stops promptly on SIGTERM, also with live connections open or just dropped."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import numpy as np
import pytest
import websockets
from conftest import LiveServer

pytestmark = pytest.mark.e2e


async def _open_and_drop(url: str, keep_open: bool) -> object:
    """Start a live session, send a second of audio, then drop (or keep) the connection."""
    ws = await websockets.connect(url.replace("http", "ws") + "/v1/stream")
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le", "language": "en"}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready"
    await ws.send(np.zeros(16000, dtype="<f4").tobytes())
    if not keep_open:
        ws.transport.abort()  # a dropped network link, not a clean close: the session waits for a resume
    return ws


@pytest.mark.parametrize("keep_open", [False, True], ids=["dropped", "open"])
def test_sigterm_stops_the_server_with_live_sessions(tmp_path, keep_open):
    server = LiveServer(tmp_path / "data").start()
    try:
        loop = asyncio.new_event_loop()
        ws = loop.run_until_complete(_open_and_drop(server.url, keep_open))
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=20)  # the resume grace period is 30 s: must not wait for it
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 20 s after SIGTERM:\n{server.log_tail()}")
        # uvicorn re-raises the caught signal once its graceful shutdown is done, hence -SIGTERM.
        assert code in (0, -signal.SIGTERM), server.log_tail()
        loop.run_until_complete(ws.close())
        loop.close()
        assert "Traceback" not in server.log_tail(20000)
    finally:
        server.stop()


# -- draining: live sessions end with their finals ------------------------------------------------
DRAIN_CLIPS = [
    ("en/jfk.flac",
     "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."),
    ("en/ljspeech/LJ001-0001.flac",
     "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts "
     "and crafts represented in the Exhibition"),
    ("en/ljspeech/LJ001-0003.flac",
     "For although the Chinese took impressions from wood blocks engraved in relief for centuries before the woodcutters "
     "of the Netherlands, by a similar process"),
]  # fmt: skip


async def _speak_then_wait(url: str, audio: np.ndarray, sent: asyncio.Event) -> tuple[list[dict], int | None, float]:
    """Send ``audio`` (ending mid-speech: no pause after it, so its last phrase has no final yet) at
    2x real time, then keep listening; returns the events, the close code and when the socket closed."""
    from malsori.engine import float32_to_pcm16

    events: list[dict] = []
    async with websockets.connect(url.replace("http", "ws") + "/v1/stream", max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        n = 1600
        for i in range(0, len(audio), n):
            await ws.send(float32_to_pcm16(audio[i : i + n]))
            await asyncio.sleep(0.05)
        sent.set()
        async for raw in ws:
            events.append({**json.loads(raw), "at": time.monotonic()})
    return events, ws.close_code, time.monotonic()


@pytest.mark.model
def test_sigterm_drains_live_sessions_with_their_last_finals(tmp_path, testdata):
    """Three sessions each stop sending in the middle of their last phrase; SIGTERM then finishes
    them: every phrase's final arrives, then ``end`` (reason shutdown) and close code 1000, and the
    process exits. Before draining, uvicorn closed the sockets at once (1012) and the last phrases
    were lost."""
    from malsori.engine import decode_audio
    from malsori.evaluation import wer

    server = LiveServer(tmp_path / "data").start()
    try:
        audios = [decode_audio(testdata / name) for name, _ in DRAIN_CLIPS]

        async def scenario():
            sent = [asyncio.Event() for _ in audios]
            clients = [asyncio.create_task(_speak_then_wait(server.url, a, s)) for a, s in zip(audios, sent, strict=True)]
            for event in sent:
                await event.wait()
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            return signalled, await asyncio.gather(*clients)

        signalled, results = asyncio.run(scenario())
        code = server.process.wait(timeout=30)
        exited = time.monotonic()
    finally:
        server.stop()
    assert code in (0, -signal.SIGTERM), server.log_tail()
    last_finals, texts = [], []
    for (events, close_code, _), audio in zip(results, audios, strict=True):
        finals = [e for e in events if e["type"] == "final"]
        assert events[-1]["type"] == "end" and events[-1]["reason"] == "shutdown", events[-3:]
        assert close_code == 1000
        # The phrase that was still open at SIGTERM got its final: the finals reach the audio's end.
        assert finals and finals[-1]["end"] >= len(audio) / 16000 - 1.0, (finals[-1:], len(audio) / 16000)
        last_finals.append(finals[-1]["at"] - signalled)
        texts.append(" ".join(e["text"] for e in finals))
    assert wer(" ".join(ref for _, ref in DRAIN_CLIPS), " ".join(texts)) <= 0.12, texts
    print(
        f"\ndrain of {len(results)} live sessions: last finals {', '.join(f'{s:.2f}' for s in last_finals)} s after SIGTERM,"
        f" process exited after {exited - signalled:.2f} s"
    )
    assert "Traceback" not in server.log_tail(20000)
