"""`malsori serve` stops promptly on SIGTERM, also with live connections open or just dropped."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

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
