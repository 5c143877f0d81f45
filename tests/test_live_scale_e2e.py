"""Live sessions scaled out (issue 11), end to end: real Redis, two real gateway processes, a
``malsori worker`` process with the real model, real speech.

A stream of four LJ Speech sentences goes to gateway A; halfway through, gateway A is killed
(SIGKILL: its connection is cut and nothing of it survives but what it wrote to Redis), the client
reconnects to gateway B, which takes the session over from Redis, and the stream finishes there. The
finals of both gateways together must be the reference text (word error rate as the model gives it
on these clips) with no final lost or repeated, numbered in one sequence.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.model]

CLIPS = ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004"]
SR = 16000


@pytest.fixture(scope="module")
def scaled(redis_server, tmp_path_factory):
    """Gateway A, gateway B and one ``malsori worker`` over one Redis."""
    from scaled import WorkerProcess

    root = tmp_path_factory.mktemp("scaled")
    # A slow heartbeat on a loaded machine (tests at nice 19 beside benchmarks) must not pass for a dead worker.
    env = {"MALSORI__QUEUE__BROKER_URL": redis_server.url, "MALSORI__QUEUE__HEARTBEAT_S": "0.5"}
    env["MALSORI__QUEUE__WORKER_TTL_S"] = "30"
    worker = WorkerProcess("live", "stt.cpu", {**env, "MALSORI__SERVER__DATA_DIR": str(root / "worker")}, root)
    gateways = [LiveServer(root / name, env=env) for name in ("a", "b")]
    try:
        worker.start(timeout=600)
        for gateway in gateways:
            gateway.start(timeout=600)  # bounds for a loaded machine: each loads its model
        yield gateways[0], gateways[1], worker
    finally:
        for gateway in gateways:
            gateway.stop()
        worker.stop()


def test_a_stream_cut_by_a_killed_gateway_resumes_on_the_other_with_every_final_once(scaled, testdata, manifest):
    from malsori.client import AsyncStreamClient, FinalEvent, ReconnectPolicy, StreamOptions
    from malsori.engine import decode_audio, float32_to_pcm16
    from malsori.evaluation import wer

    gateway_a, gateway_b, worker = scaled
    gap = np.zeros(int(0.6 * SR), dtype=np.float32)
    clips = [decode_audio(testdata / "en" / "ljspeech" / f"{clip}.flac") for clip in CLIPS]
    audio = np.concatenate([part for clip in clips for part in (clip, gap)])
    reference = " ".join(next(c.reference for c in manifest if c.path.stem == clip) for clip in CLIPS)
    pcm = float32_to_pcm16(audio)
    frame = 3200  # 100 ms
    speed = 1.5

    async def scenario():
        url_a, url_b = (g.url.replace("http://", "ws://") + "/v1/stream" for g in (gateway_a, gateway_b))
        client = AsyncStreamClient(url_a, StreamOptions(language="en"), reconnect=ReconnectPolicy(initial_delay_s=0.1))
        await client.connect()
        finals: list[tuple[str, FinalEvent]] = []

        async def read():
            async for event in client:
                if isinstance(event, FinalEvent):
                    finals.append((client.url, event))

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        t0, killed_at = loop.time(), None
        for i in range(0, len(pcm), frame):
            if killed_at is None and i >= len(pcm) // 2 and finals:
                client.url = url_b  # where a load balancer sends the reconnect once A is gone
                gateway_a.process.kill()
                killed_at = len(finals)
            await client.send_audio(pcm[i : i + frame])
            delay = (i + frame) / 2 / SR / speed - (loop.time() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
        await client.stop()
        await asyncio.wait_for(reader, 120)
        return finals, killed_at, client.resumes

    finals, killed_at, resumes = asyncio.run(asyncio.wait_for(scenario(), 240))
    texts = [event.text for _, event in finals]
    hypothesis = " ".join(texts)
    assert killed_at is not None and resumes == 1
    assert 0 < killed_at < len(finals), f"finals before the kill: {killed_at} of {len(finals)}"
    assert gateway_a.process.poll() is not None
    seqs = [event.seq for _, event in finals]
    assert seqs == sorted(set(seqs)), seqs
    error = wer(reference, hypothesis)
    print(f"WER {error:.3f}; finals before the kill {killed_at}:", *[f"{u[-25:]} {e.seq} {e.text}" for u, e in finals], sep="\n")
    # A final lost or repeated at the cut would cost a whole phrase (5 to 20 words of 86).
    # Lost: fewer words than the reference. Repeated: the same final text twice. A repetition the model
    # makes inside one final (seen in full-suite CI runs: "...concerned in the only sense ... concerned",
    # WER 21.7%) is the model's, not the resume's: WER is only a gross bound here.
    assert error <= 0.25, f"WER {error:.3f}\nref: {reference}\nhyp: {texts}"
    words_ref, words_hyp = len(reference.split()), len(hypothesis.split())
    assert words_hyp >= words_ref - 3, (words_ref, words_hyp, texts)
    assert len(set(texts)) == len(texts), texts
    assert "live decode failed" not in worker.log_tail(100_000)
