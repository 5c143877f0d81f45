"""Live sessions scaled out (issue 11), fast tier: real Redis, fake decoder, in-process gateways.

- the wire format a gateway and a worker exchange windows in keeps every field;
- a session restored from a checkpoint taken at any point gives the same finals as one never
  interrupted (nothing lost, nothing twice), with the sequence going on;
- two gateways over one Redis and a worker thread: windows are decoded by the worker, not the
  gateway; a client whose connection is cut resumes on the *other* gateway, sends its audio again
  from the checkpoint, and gets every final once; the first gateway lets go of the session.
The same with the real model, real speech and real processes is in ``test_live_scale_e2e.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import cast

import numpy as np
import pytest
from inprocess import running_app

from malsori.config import QueueSettings, Settings
from malsori.engine.decoder import decode_now
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.engine.options import TranscribeOptions
from malsori.engine.windows import Window
from malsori.server.app import create_app
from malsori.streaming import Final, StreamConfig, StreamingSession
from malsori.streaming.vad import EnergyVad

SCRIPT = ["alpha", "bravo", 0.8, "charlie", "delta", "echo", 0.8, "foxtrot", 0.8, "golf", "hotel", 0.8,
          "india", "juliett", 0.8, "kilo", "lima", "mike", 0.8, "november", 1.0]  # fmt: skip
WORDS = " ".join(w for w in SCRIPT if isinstance(w, str))


def test_windows_and_results_cross_the_wire_unchanged():
    from malsori.scale.live_wire import WindowRequest, decode_reply, decode_request, encode_reply, encode_request

    audio = tone_speech(["alpha", 0.3, "bravo"])
    windows = (
        Window(audio, offset=1.5, prompt="before", prompt_tokens=(50364, 440, 50464), language="en", words=True, fallback=False),
        Window(audio[:800]),
    )
    options = TranscribeOptions(word_timestamps=True, temperatures=(0.0, 0.4), beam_size=2)
    request = decode_request(encode_request(WindowRequest("r1", "replies", 123.0, options, windows, 100.0)))
    assert (request.id, request.reply_to, request.deadline, request.options) == ("r1", "replies", 123.0, options)
    for got, sent in zip(request.windows, windows, strict=True):
        assert np.array_equal(got.audio, sent.audio) and got.offset == sent.offset and got.prompt == sent.prompt
        assert got.prompt_tokens == sent.prompt_tokens and isinstance(got.prompt_tokens, tuple)
        assert (got.language, got.words, got.fallback) == (sent.language, sent.words, sent.fallback)
    results = decode_now(FakeDecoder(), list(windows), options)
    rid, back, error, _ = decode_reply(encode_reply("r1", results, worker="w"))
    assert rid == "r1" and error is None and back == results and back[0].segments[0].words


def _run(session: StreamingSession, audio: np.ndarray, decoder: FakeDecoder, frame: int = 1600) -> list[Final]:
    finals = []
    for i in range(0, len(audio), frame):
        events = session.feed(audio[i : i + frame])
        while (request := session.next_window()) is not None:
            events += session.apply(request, decode_now(decoder, [request.window], request.options)[0])
        finals += [e for e in events if isinstance(e, Final)]
    return finals


def _finish(session: StreamingSession, decoder: FakeDecoder) -> list[Final]:
    events = session.finish()
    while (request := session.next_window()) is not None:
        events += session.apply(request, decode_now(decoder, [request.window], request.options)[0])
    return [e for e in events if isinstance(e, Final)]


@pytest.mark.parametrize("cut_s", [0.9, 2.0, 3.3, 5.1, 7.7])
def test_a_session_restored_from_its_checkpoint_loses_and_repeats_nothing(cut_s):
    """Cut anywhere (mid-word, in a pause, with a phrase pending): the restored session is fed the
    audio again from the checkpoint's position, and the finals of both halves are the whole script."""
    audio = tone_speech(SCRIPT)
    config = StreamConfig(language="en", partials=True)
    decoder = FakeDecoder()
    whole = StreamingSession(config, vad=EnergyVad())
    reference = _run(whole, audio, decoder) + _finish(whole, decoder)
    assert " ".join(f.text for f in reference) == WORDS

    first = StreamingSession(config, vad=EnergyVad())
    cut = int(cut_s * 16000)
    before = _run(first, audio[:cut], decoder)
    checkpoint = first.checkpoint()
    assert checkpoint.position <= cut and checkpoint.seq == first.seq
    second = StreamingSession.restore(config, checkpoint, vad=EnergyVad())
    assert second.seq == first.seq and second.audio_seconds == checkpoint.position / 16000
    after = _run(second, audio[checkpoint.position :], decoder) + _finish(second, decoder)
    assert " ".join(f.text for f in before + after) == WORDS
    seqs = [f.seq for f in before + after]
    assert seqs == sorted(set(seqs)) and all(s > first.seq for s in (f.seq for f in after))
    # Timestamps go on from where the first half stopped: the same as uninterrupted, within a VAD chunk.
    for got, want in zip(before + after, reference, strict=True):
        assert abs(got.start - want.start) < 0.05 and abs(got.end - want.end) < 0.05


# -- two gateways, one Redis, one worker --------------------------------------------------------------
class SwitchableDecoder(FakeDecoder):
    """The fake decoder, failing like a GPU out of memory while ``fail`` is set."""

    fail = False

    def decode_windows(self, windows, options=TranscribeOptions()):  # type: ignore[override]
        if self.fail:
            raise RuntimeError("CUDA out of memory (a test)")
        return super().decode_windows(windows, options)


@contextlib.contextmanager
def fake_worker(redis_url: str, name: str = "worker-fake", queue: str = "stt.cpu", device: str = "cpu") -> Iterator[FakeDecoder]:
    """A worker as ``malsori worker`` runs one, minus Celery: announced in the registry (heartbeat),
    its live-window server (``start_live_server``) over a scheduler in front of a fake decoder."""
    from malsori.engine.scheduler import DecodeScheduler
    from malsori.scale.live_worker import start_live_server
    from malsori.scale.registry import Registry, WorkerInfo

    settings = Settings().model_copy(update={"queue": QueueSettings(broker_url=redis_url)})
    decoder, stop = SwitchableDecoder(), threading.Event()
    scheduler = DecodeScheduler(decoder)
    info = WorkerInfo(name=name, queues=(queue,), device=device, model="fake")
    registry = Registry(redis_url)

    def heartbeat() -> None:
        import redis

        while not stop.is_set():
            # Redis restarting: keep announcing, as the real worker's heartbeat does (scale/worker.py)
            with contextlib.suppress(redis.RedisError):
                registry.announce(info)
            stop.wait(0.5)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    handle = start_live_server(scheduler=scheduler, settings=settings, worker=info)
    try:
        yield decoder
    finally:
        stop.set()
        handle.close()
        beat.join(5)
        registry.withdraw(name)
        registry.close()
        scheduler.close()


@contextlib.contextmanager
def gateway(tmp_path, redis_url: str, name: str, **queue):
    base = Settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": tmp_path / name}),
            "queue": QueueSettings(broker_url=redis_url, **queue),
        }
    )
    local = FakeDecoder()  # the gateway's own decoder: scaled out, live windows must not come here
    app = create_app(settings, transcriber=local, live_vad=EnergyVad)
    with running_app(app) as port:
        yield app.state.services, f"ws://127.0.0.1:{port}/v1/stream", local


async def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_cut_stream_resumes_on_the_other_gateway_with_every_final_once(tmp_path, redis_server):
    from malsori.client import AsyncStreamClient, FinalEvent, ReconnectPolicy, StreamOptions

    audio = tone_speech(SCRIPT)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    frame = 3200  # 100 ms of 16-bit samples
    with (
        fake_worker(redis_server.url) as worker,
        gateway(tmp_path, redis_server.url, "a") as (a, url_a, local_a),
        gateway(tmp_path, redis_server.url, "b") as (b, url_b, local_b),
    ):

        async def scenario():
            client = AsyncStreamClient(url_a, StreamOptions(language="en"), reconnect=ReconnectPolicy(initial_delay_s=0.05))
            ready = await client.connect()
            finals: list[FinalEvent] = []

            async def read():
                async for event in client:
                    if isinstance(event, FinalEvent):
                        finals.append(event)

            reader = asyncio.create_task(read())
            cut_at = len(pcm) // 2 // 2 * 2
            for i in range(0, len(pcm), frame):
                if i <= cut_at < i + frame:
                    await wait_for(lambda: finals, "a final from gateway A before the cut")
                    client.url = url_b  # what a load balancer does once gateway A's link is gone
                    client.connection.transport.abort()
                await client.send_audio(pcm[i : i + frame])
                await asyncio.sleep(0.02)  # 5x real time
            await client.stop()
            await asyncio.wait_for(reader, 90)
            return ready, finals, client.resumes

        ready, finals, resumes = asyncio.run(asyncio.wait_for(scenario(), 180))
        assert resumes == 1 and b.live_store.adopted == 1 and a.live_store.adopted == 0
        assert " ".join(f.text for f in finals) == WORDS
        seqs = [f.seq for f in finals]
        assert seqs == sorted(set(seqs))
        assert worker.windows and not local_a.windows and not local_b.windows  # the worker decoded every window
        # Gateway A lets go of the session (its next write is refused: B owns it now).
        deadline = time.monotonic() + 60
        while a.sessions.get(ready.session_id) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.sessions.get(ready.session_id) is None


def test_a_window_no_worker_answers_fails_as_overload_and_is_not_decoded_late(redis_server):
    """A worker that dies with a window never answers: the gateway gives up after its timeout with
    OverloadedError (the live loop asks for the window again), and the request it gave up on is
    skipped by the next worker instead of being decoded for nobody."""
    from malsori.errors import OverloadedError
    from malsori.scale.live_client import RemoteWindowDecoder

    remote = RemoteWindowDecoder(redis_server.url, gateway_id="gw-timeout", timeout_s=0.5, queue="t:live:windows")
    try:
        window = Window(tone_speech(["alpha", "bravo"]))
        options = StreamConfig().final_options()
        lost = remote.submit([window], options)[0]
        with pytest.raises(OverloadedError, match="no worker answered"):
            lost.result(timeout=30)
        from malsori.scale.live_worker import serve_live_windows

        remote.timeout_s = 60.0  # from here on the worker answers (however loaded the machine is)
        decoder, stop = FakeDecoder(), threading.Event()
        args = (decoder, redis_server.url, "w", stop)
        thread = threading.Thread(target=serve_live_windows, args=args, kwargs={"queue": "t:live:windows"})
        thread.start()
        try:
            assert decode_now(remote, [window], options)[0].text == "alpha bravo"
        finally:
            stop.set()
            thread.join(5)
        assert len(decoder.windows) == 1  # the request given up on was skipped
        assert remote.timed_out == 1 and remote.last_worker == "w"
    finally:
        remote.close()


def test_a_gateway_that_shuts_down_hands_its_streams_to_another(tmp_path, redis_server):
    """SIGTERM-like shutdown of gateway A (uvicorn stops, the lifespan ends): its sessions are let go,
    not ended, so their clients resume on gateway B and every final arrives once."""
    from malsori.client import AsyncStreamClient, EndEvent, FinalEvent, ReconnectPolicy, StreamOptions

    audio = tone_speech(SCRIPT)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    frame = 3200
    with (
        fake_worker(redis_server.url),
        contextlib.ExitStack() as a_stack,
        gateway(tmp_path, redis_server.url, "b2") as (b, url_b, _),
    ):
        _, url_a, _ = a_stack.enter_context(gateway(tmp_path, redis_server.url, "a2"))

        async def scenario():
            client = AsyncStreamClient(url_a, StreamOptions(language="en"), reconnect=ReconnectPolicy(initial_delay_s=0.05))
            await client.connect()
            events: list = []

            async def read():
                async for event in client:
                    events.append(event)

            reader = asyncio.create_task(read())
            for i in range(0, len(pcm), frame):
                if i == len(pcm) // 2 // frame * frame:
                    await wait_for(lambda: any(isinstance(e, FinalEvent) for e in events), "a final from gateway A")
                    client.url = url_b
                    await asyncio.to_thread(a_stack.close)  # gateway A shuts down
                await client.send_audio(pcm[i : i + frame])
                await asyncio.sleep(0.02)
            await client.stop()
            await asyncio.wait_for(reader, 90)
            return events, client.resumes

        events, resumes = asyncio.run(asyncio.wait_for(scenario(), 180))
        adopted = b.live_store.adopted
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert resumes == 1 and adopted == 1
    assert " ".join(f.text for f in finals) == WORDS
    assert isinstance(events[-1], EndEvent) and events[-1].extra.get("reason", "stopped") == "stopped"


async def stream_once(url: str, script: list) -> list[str]:
    from malsori.client import AsyncStreamClient, FinalEvent, StreamOptions

    pcm = (np.clip(tone_speech(script), -1, 1) * 32767).astype("<i2").tobytes()
    client = AsyncStreamClient(url, StreamOptions(language="en"))
    finals: list[str] = []

    async def frames():
        for i in range(0, len(pcm), 3200):
            yield pcm[i : i + 3200]
            await asyncio.sleep(0.01)

    async for event in client.stream(frames()):
        if isinstance(event, FinalEvent):
            finals.append(event.text)
    return finals


def test_live_windows_go_to_a_gpu_worker_and_fall_back_to_cpu_when_it_fails(tmp_path, redis_server):
    """Routing mode ``auto``: while a worker announces a GPU, live windows go to it; when its device
    fails (a RuntimeError, as CUDA out of memory is), its windows are handed to the CPU workers'
    list and decoded there, the stream loses nothing, and the fallback is counted."""
    from malsori.scale.registry import Registry

    script = ["alpha", "bravo", 0.8, "charlie", "delta", 0.8]
    with (
        fake_worker(redis_server.url, "cpu-1") as cpu,
        fake_worker(redis_server.url, "gpu-1", queue="stt.gpu", device="cuda") as gpu_decoder,
        gateway(tmp_path, redis_server.url, "routed") as (_, url, _),
    ):
        assert asyncio.run(asyncio.wait_for(stream_once(url, script), 120)) == ["alpha bravo", "charlie delta"]
        gpu = cast(SwitchableDecoder, gpu_decoder)
        assert gpu.windows and not cpu.windows
        gpu.fail = True
        decoded_on_gpu = len(gpu.windows)
        assert asyncio.run(asyncio.wait_for(stream_once(url, script), 120)) == ["alpha bravo", "charlie delta"]
        assert cpu.windows and len(gpu.windows) == decoded_on_gpu
        registry = Registry(redis_server.url)
        try:
            assert registry.counters().get("gpu_fallbacks", 0) >= 1
        finally:
            registry.close()


def test_a_redis_restart_mid_stream_loses_no_final(tmp_path):
    """Redis restarted without persistence mid-stream: it forgets the session, the windows queued and
    the workers' registry. The gateway writes the session again (it is not 'taken over'), windows no
    worker answered are asked again, the worker announces itself again, and every final arrives once
    on the same connection."""
    from redisserver import RedisServer

    from malsori.client import AsyncStreamClient, ErrorEvent, FinalEvent, StreamOptions

    redis = RedisServer(tmp_path / "redis", appendonly=False).start()
    pcm = (np.clip(tone_speech(SCRIPT), -1, 1) * 32767).astype("<i2").tobytes()
    try:
        with fake_worker(redis.url), gateway(tmp_path, redis.url, "r", live_timeout_s=2.0) as (_, url, _):

            async def scenario():
                client = AsyncStreamClient(url, StreamOptions(language="en"))
                ready = await client.connect()
                events: list = []

                async def read():
                    async for event in client:
                        events.append(event)

                reader = asyncio.create_task(read())
                for i in range(0, len(pcm), 3200):
                    if i == len(pcm) // 2 // 3200 * 3200:
                        await wait_for(lambda: any(isinstance(e, FinalEvent) for e in events), "a final before the restart")
                        await asyncio.to_thread(redis.restart)
                    await client.send_audio(pcm[i : i + 3200])
                    await asyncio.sleep(0.02)
                await client.stop()
                await asyncio.wait_for(reader, 90)
                return ready, events, client.resumes

            ready, events, resumes = asyncio.run(asyncio.wait_for(scenario(), 180))
            import redis as redis_py

            stored = redis_py.Redis.from_url(redis.url).hget(f"malsori:live:s:{ready.session_id}", "ended")
    finally:
        redis.stop()
    assert " ".join(e.text for e in events if isinstance(e, FinalEvent)) == WORDS
    assert resumes == 0 and not any(isinstance(e, ErrorEvent) and e.extra.get("fatal") for e in events)
    assert stored == b"1"  # written again after the restart, to its end


def test_busy_fraction_counts_overlapping_batches_once():
    """A gateway's live scheduler has two batches on workers at once: two batches in flight over the
    same second are one busy second, or partials would be held back as if the decoder were twice as busy."""
    from malsori.engine.scheduler import DecodeScheduler

    scheduler = DecodeScheduler(FakeDecoder(), workers=2)
    try:
        now = time.perf_counter()
        scheduler._busy.extend([(now - 3.0, now - 2.0), (now - 2.5, now - 1.5), (now - 12.0, now - 9.5)])
        assert scheduler.busy_fraction(10.0) == pytest.approx(0.2, abs=0.01)  # 1.5 s + the 0.5 s inside the horizon
    finally:
        scheduler.close()
