"""The pipeline over the one decoder seam, with the fake decoder: plan → decode → assemble.

Fast (no model): what the pipeline submits, in what order, with what prompts; progress per window;
a progress callback that raises cancels what is still queued; the async path awaits the same results;
and the layering rule (engine and streaming never import the server or the web framework).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pytest

from malsori.engine import Pipeline, TranscribeOptions, decode_async, decode_now
from malsori.engine.audio import SAMPLE_RATE
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.engine.scheduler import DecodeScheduler, Priority
from malsori.engine.windows import Window

SCRIPT = ["alpha", "bravo", 1.0, "charlie", "delta", 1.0, "echo"]


def three_windows(audio, options) -> list[tuple[int, int]]:
    """Cut at the two 1 s pauses of SCRIPT (the fake's tone bursts are no speech to Silero)."""
    third = len(audio) // 3
    return [(0, third), (third, 2 * third), (2 * third, len(audio))]


def test_windows_of_several_inputs_share_one_submission_and_assemble_in_order():
    decoder = FakeDecoder()
    audios = [tone_speech(SCRIPT), tone_speech(["foxtrot", 1.0, "golf"])]
    transcripts = Pipeline(decoder, plan=three_windows).transcribe_many(audios, TranscribeOptions(language="en"))
    assert len(decoder.calls) == 1 and len(decoder.calls[0][0]) == 6  # every window in one call
    assert [t.text for t in transcripts] == ["alpha bravo charlie delta echo", "foxtrot golf"]
    first = transcripts[0]
    assert [s.id for s in first.segments] == list(range(len(first.segments)))
    assert all(a.end <= b.start for a, b in zip(first.segments, first.segments[1:], strict=False))
    assert first.duration == pytest.approx(len(audios[0]) / SAMPLE_RATE)
    assert first.language == "en"


def test_condition_on_previous_text_gives_each_window_the_tokens_decoded_before_it():
    decoder = FakeDecoder()
    options = TranscribeOptions(language="en", condition_on_previous_text=True, initial_prompt="Names:")
    transcript = Pipeline(decoder, plan=three_windows).transcribe(tone_speech(SCRIPT), options)
    # Three windows are one run (two windows a run at least): one after another.
    assert [len(batch) for batch, _ in decoder.calls] == [1, 1, 1]
    windows = decoder.windows
    assert [w.prompt for w in windows] == ["Names:"] * 3
    first, second = (decoder._decode(w, options).tokens for w in windows[:2])
    assert first and second
    assert windows[0].prompt_tokens == ()
    assert windows[1].prompt_tokens == first  # the model's own output before it, as Whisper conditions
    assert windows[2].prompt_tokens == first + second
    assert transcript.text == "alpha bravo charlie delta echo"


EIGHT = ["alpha", 1.0, "bravo", 1.0, "charlie", 1.0, "delta", 1.0, "echo", 1.0, "foxtrot", 1.0, "golf", 1.0, "hotel"]


def eight_windows(audio, options) -> list[tuple[int, int]]:
    step = len(audio) // 8
    return [(k * step, (k + 1) * step if k < 7 else len(audio)) for k in range(8)]


def test_context_runs_keep_batches_full_and_chain_each_window_to_its_predecessor():
    """Eight windows with the context on: four runs of two, decoded in two batches of four, the
    second window of each run carrying the first's tokens; without it, one batch of eight."""
    decoder = FakeDecoder()
    audio = tone_speech(EIGHT)
    options = TranscribeOptions(language="en", condition_on_previous_text=True)
    with_context = Pipeline(decoder, plan=eight_windows).transcribe(audio, options)
    assert [len(batch) for batch, _ in decoder.calls] == [4, 4]
    first_step, second_step = (batch for batch, _ in decoder.calls)
    assert [w.offset for w in first_step] == [eight_windows(audio, options)[k][0] / SAMPLE_RATE for k in (0, 2, 4, 6)]
    assert all(w.prompt_tokens == () for w in first_step)
    for before, window in zip(first_step, second_step, strict=True):
        assert window.prompt_tokens == decoder._decode(before, options).tokens != ()
    without = Pipeline(FakeDecoder(), plan=eight_windows).transcribe(audio, options.with_(condition_on_previous_text=False))
    assert with_context.text == without.text == "alpha bravo charlie delta echo foxtrot golf hotel"


def test_streamed_context_sends_the_first_window_alone_then_the_runs():
    decoder = FakeDecoder()

    async def stream() -> list[str]:
        options = TranscribeOptions(language="en", condition_on_previous_text=True)
        return [r.text async for r in Pipeline(decoder, plan=eight_windows).astream(tone_speech(EIGHT), options)]

    assert asyncio.run(stream()) == ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    assert [len(batch) for batch, _ in decoder.calls] == [1, 4, 3]
    assert decoder.calls[1][0][0].prompt_tokens != ()  # the first window's second half carries its tokens


def test_the_context_goes_back_to_the_run_start_and_stops_after_a_hot_decode():
    from malsori.engine.pipeline import _previous_tokens, _run_starts
    from malsori.engine.windows import WindowResult

    def result(tokens, temperature=0.0):
        return WindowResult((), "en", 1.0, 0.0, -0.1, 1.0, temperature, tuple(tokens))

    assert _run_starts(10, 4) == {0, 3, 6, 8} and _run_starts(3, 1) == {0}
    results = [result([1, 2]), result([3], 0.8), result([4]), result([5]), None]
    assert _previous_tokens(results, frozenset({0}), 4) == (4, 5)  # not past the window decoded at 0.8
    assert _previous_tokens(results, frozenset({0, 3}), 4) == (5,)  # not past its run's first window
    assert _previous_tokens(results, frozenset({0}), 1) == (1, 2)
    long = [result(range(200)), result(range(200, 400))]
    assert _previous_tokens(long, frozenset({0}), 2) == tuple(range(400 - 223, 400))


def test_an_input_without_windows_is_an_empty_transcript():
    decoder = FakeDecoder()
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    transcript = Pipeline(decoder).transcribe(silence, TranscribeOptions(language="de"))
    assert decoder.calls == [] and transcript.segments == () and transcript.language == "de"
    assert transcript.duration_after_vad == 0.0


class Stop(Exception):
    pass


def test_progress_is_reported_per_window_and_a_raising_callback_cancels_the_rest():
    decoder = FakeDecoder()
    scheduler = DecodeScheduler(decoder, max_batch=1)
    permits = threading.Semaphore(1)  # the decoder may finish one window; the next ones wait
    real = decoder.decode_windows
    decoder.decode_windows = lambda windows, options: permits.acquire(timeout=10) and real(windows, options)  # type: ignore[method-assign]
    seen: list[float] = []

    def progress(done: float, total: float) -> None:
        seen.append(done / total)
        raise Stop  # e.g. a job cancelled: the caller stops at its first report

    try:
        pipeline = Pipeline(scheduler.lane("job-1", Priority.JOB), plan=three_windows)
        with pytest.raises(Stop):
            pipeline.transcribe(tone_speech(SCRIPT), TranscribeOptions(language="en"), progress)
        assert seen == [pytest.approx(1 / 3, abs=0.01)]
        assert scheduler.pending() == 0  # the window still queued was dropped
        permits.release(2)
        assert len(decoder.calls) <= 2  # the first window, and at most the one already started
    finally:
        permits.release(2)
        scheduler.close()


def test_the_async_path_awaits_the_same_result_through_a_scheduler_lane():
    decoder = FakeDecoder()
    scheduler = DecodeScheduler(decoder, max_batch=8)
    try:
        audio = tone_speech(SCRIPT)
        lane = scheduler.lane("request-1", Priority.REQUEST)
        blocking = Pipeline(lane, plan=three_windows).transcribe(audio, TranscribeOptions(language="en"))
        awaited = asyncio.run(Pipeline(lane, plan=three_windows).atranscribe(audio, TranscribeOptions(language="en")))
        assert awaited.text == blocking.text == "alpha bravo charlie delta echo"
        assert [s.start for s in awaited.segments] == [s.start for s in blocking.segments]
    finally:
        scheduler.close()


def test_a_lane_queues_all_windows_or_none():
    from malsori.errors import OverloadedError

    gate = threading.Event()
    decoder = FakeDecoder()
    real = decoder.decode_windows
    decoder.decode_windows = lambda windows, options: gate.wait(10) and real(windows, options)  # type: ignore[method-assign]
    scheduler = DecodeScheduler(decoder, max_batch=1, max_pending={Priority.REQUEST: 3})
    try:
        window = Window(tone_speech(["alpha"]))
        held = scheduler.submit(window, TranscribeOptions(), owner="first")  # taken by the worker, held
        while scheduler.pending(Priority.REQUEST):
            pass
        two = scheduler.lane("a").submit([window, window], TranscribeOptions())
        with pytest.raises(OverloadedError):
            scheduler.lane("b").submit([window, window], TranscribeOptions())
        assert scheduler.pending(Priority.REQUEST) == 2  # nothing of "b" was queued
        gate.set()
        assert [r.text for r in [held.result(10), *(f.result(10) for f in two)]] == ["alpha"] * 3
    finally:
        gate.set()
        scheduler.close()


def held_decoder() -> tuple[FakeDecoder, threading.Event, list[list[str]]]:
    """A fake decoder whose decodes wait for the gate it returns, recording each batch's prompts."""
    gate = threading.Event()
    decoder = FakeDecoder()
    real = decoder.decode_windows
    batches: list[list[str]] = []

    def recorded(windows, options):
        gate.wait(10)
        batches.append([w.prompt or "" for w in windows])
        return real(windows, options)

    decoder.decode_windows = recorded  # type: ignore[method-assign]
    return decoder, gate, batches


@dataclass
class Held:
    future: Future
    options: TranscribeOptions


@contextlib.contextmanager
def held_requests(max_batch: int):
    """A scheduler over :func:`held_decoder` whose worker holds one request window ("held") until the
    gate opens, so the windows submitted meanwhile queue and form the next batches."""
    decoder, gate, batches = held_decoder()
    options = TranscribeOptions(beam_size=1)
    scheduler = DecodeScheduler(decoder, max_batch=max_batch)
    try:
        held = scheduler.submit(Window(tone_speech(["alpha"]), prompt="held"), options, owner="r9")
        while scheduler.pending(Priority.REQUEST):  # taken by the worker, held
            pass
        yield scheduler, decoder, gate, batches, Held(held, options)
    finally:
        gate.set()
        scheduler.close()


@pytest.mark.parametrize(
    ("urgent_batch", "finals"),
    [
        (None, [["final4", "final5", "final6"]]),
        (1, [["final4"], ["final5"], ["final6"]]),
        (2, [["final4", "final5"], ["final6"]]),
    ],
)
def test_while_finals_wait_a_live_batch_holds_only_finals(urgent_batch, finals):
    """Partials queued ahead of finals do not take a batch's places: the finals go first, alone (a short
    partial beside them would be encoded at their length), and the partials in the batch after.
    ``urgent_batch`` bounds the finals of a batch (a CPU server decodes them one at a time); the partials
    still go four together."""
    decoder, gate, batches = held_decoder()
    options = TranscribeOptions(beam_size=1)
    scheduler = DecodeScheduler(decoder, max_batch=8, urgent_batch=urgent_batch)  # live batches of 4
    try:
        held = scheduler.submit(Window(tone_speech(["alpha"]), prompt="held"), options, owner="s9", priority=Priority.LIVE)
        while scheduler.pending(Priority.LIVE):  # taken by the worker, held
            pass
        futures = [
            scheduler.submit(
                Window(tone_speech(["alpha"]), prompt=f"{kind}{n}"),
                options,
                owner=f"s{n}",
                priority=Priority.LIVE,
                urgent=kind == "final",
            )
            for n, kind in enumerate(["partial"] * 4 + ["final"] * 3)
        ]
        gate.set()
        assert [f.result(5).text for f in [held, *futures]] == ["alpha"] * 8
        assert batches == [["held"], *finals, ["partial0", "partial1", "partial2", "partial3"]]
    finally:
        gate.set()
        scheduler.close()


def test_a_batch_holds_windows_of_one_class_of_its_decoder():
    """A decoder that decodes some windows apart even in one batch (``batch_class``: the model's prompt
    and no prompt, Korean encoder lengths on a CPU) gets batches of one class; the other class waits for
    the next batch (another worker's, at once) and keeps its turn."""
    with held_requests(max_batch=8) as (scheduler, decoder, gate, batches, held):
        decoder.batch_class = lambda window, options: (window.prompt or "")[0]  # type: ignore[attr-defined]
        names = ["a0", "b1", "a2", "b3", "a4"]
        futures = [scheduler.submit(Window(tone_speech(["alpha"]), prompt=n), held.options, owner=f"r{n}") for n in names]
        gate.set()
        assert [f.result(5).text for f in [held.future, *futures]] == ["alpha"] * 6
        assert batches == [["held"], ["a0", "a2", "a4"], ["b1", "b3"]]


def test_a_request_batch_takes_the_waiting_windows_closest_in_length_to_the_one_whose_turn_it_is():
    """Every window of a batch is encoded at its longest window's length: a 2 s clip beside a 10 s one
    costs the 10 s decode. Requests arrive in no order, so a batch takes, after the window whose turn
    it is, the waiting windows nearest its length; the next batch starts with the next owner in turn."""
    with held_requests(max_batch=2) as (scheduler, _, gate, batches, held):
        lengths = {"long0": 8.0, "short1": 2.0, "long2": 8.5, "short3": 2.5, "mid4": 5.0}
        futures = [
            scheduler.submit(Window(np.zeros(int(s * SAMPLE_RATE), np.float32), prompt=name), held.options, owner=name)
            for name, s in lengths.items()
        ]
        gate.set()
        for f in [held.future, *futures]:
            f.result(5)
        assert batches == [["held"], ["long0", "long2"], ["short1", "short3"], ["mid4"]]


def test_a_batch_by_length_goes_on_taking_windows_after_the_first_owner_has_none_left():
    """An owner with several windows gives one per pass; by the second pass the owner whose turn it was
    may have no window left (a scheduler worker that failed there would leave every caller waiting)."""
    with held_requests(max_batch=8) as (scheduler, _, gate, batches, held):
        windows = [("a", 5.0), ("b", 5.0), ("d", 9.0), ("c", 6.0), ("b", 5.0), ("c", 6.0), ("d", 9.0)]
        futures = [
            scheduler.submit(Window(np.zeros(int(s * SAMPLE_RATE), np.float32), prompt=f"{o}{n}"), held.options, owner=o)
            for n, (o, s) in enumerate(windows)
        ]
        gate.set()
        for f in [held.future, *futures]:
            f.result(5)
        assert batches == [["held"], ["a0", "b1", "c3", "d2", "b4", "c5", "d6"]]


def test_a_window_the_decoder_cannot_place_in_a_batch_fails_alone_and_the_worker_goes_on():
    """Composing a batch calls the decoder (``batch_class``); an error there fails the window it was
    about, not the scheduler's worker thread (which would leave every caller waiting forever)."""

    def batch_class(window, options):
        if window.prompt == "bad":
            raise ValueError("no class for this window")
        return 0

    with held_requests(max_batch=8) as (scheduler, decoder, gate, batches, held):
        decoder.batch_class = batch_class  # type: ignore[attr-defined]
        bad = scheduler.submit(Window(tone_speech(["alpha"]), prompt="bad"), held.options, owner="x")
        good = scheduler.submit(Window(tone_speech(["alpha"]), prompt="good"), held.options, owner="y")
        gate.set()
        with pytest.raises(ValueError, match="no class"):
            bad.result(5)
        assert good.result(5).text == "alpha" and held.future.result(5).text == "alpha"
        assert batches == [["held"], ["good"]] and scheduler.pending() == 0


def test_live_partials_never_take_the_last_free_worker():
    """With two workers, a batch of partials runs on one; more partials wait for it, so a final that comes
    due starts at once on the other. Request windows may still use the second worker."""
    gate = threading.Event()
    decoder = FakeDecoder()
    real = decoder.decode_windows
    started: list[str] = []

    def held(windows, options):
        started.append(windows[0].prompt or "")
        if windows[0].prompt.startswith("partial"):
            gate.wait(10)
        return real(windows, options)

    decoder.decode_windows = held  # type: ignore[method-assign]
    options = TranscribeOptions(beam_size=1)

    def window(name: str) -> Window:
        return Window(tone_speech(["alpha"]), prompt=name)

    scheduler = DecodeScheduler(decoder, max_batch=2, workers=2)  # live batches of 1
    try:
        first = scheduler.submit(window("partial0"), options, owner="s0", priority=Priority.LIVE)
        while not started:  # the first worker holds a batch of partials
            pass
        second = scheduler.submit(window("partial1"), options, owner="s1", priority=Priority.LIVE)
        assert not gate.wait(0.2) and started == ["partial0"], "the second worker stays free for finals"
        request = scheduler.submit(window("request"), options, owner="r")
        assert request.result(5).text == "alpha"
        final = scheduler.submit(window("final"), options, owner="s2", priority=Priority.LIVE, urgent=True)
        assert final.result(5).text == "alpha" and not second.done()
        gate.set()
        assert [f.result(5).text for f in (first, second)] == ["alpha"] * 2
        assert started == ["partial0", "request", "final", "partial1"]
    finally:
        gate.set()
        scheduler.close()


def test_with_two_workers_a_final_is_decoded_beside_a_batch_that_is_still_running():
    """A model that runs two decodes at once (``Transcriber.workers``) gets a scheduler thread per decode:
    a live final does not wait for the partials ahead of it to finish."""
    gate = threading.Event()
    decoder = FakeDecoder()
    real = decoder.decode_windows

    def held_partials(windows, options):
        if options.beam_size == 1:  # the partials: held until the final is done
            gate.wait(10)
        return real(windows, options)

    decoder.decode_windows = held_partials  # type: ignore[method-assign]
    partial, final = TranscribeOptions(beam_size=1), TranscribeOptions(beam_size=5)
    window = Window(tone_speech(["alpha"]))
    for workers, beside in ((2, True), (1, False)):
        scheduler = DecodeScheduler(decoder, workers=workers)
        try:
            partials = [scheduler.submit(window, partial, owner=f"s{n}", priority=Priority.LIVE) for n in range(2)]
            while scheduler.pending(Priority.LIVE):  # the partials are taken, their batch held
                pass
            done = scheduler.submit(window, final, owner="s0", priority=Priority.LIVE, urgent=True)
            if beside:
                assert done.result(5).text == "alpha" and not any(f.done() for f in partials)
            else:
                assert not gate.wait(0.3) and not done.done()  # one decode at a time: the final waits
            gate.set()
            assert [f.result(5).text for f in [*partials, done]] == ["alpha"] * 3
        finally:
            gate.set()
            scheduler.close()
            gate.clear()


def test_cpu_layout_shares_the_cores_between_two_decodes_unless_told():
    from malsori.engine.transcriber import cpu_layout

    assert cpu_layout(0, 0, cores=2) == (1, 2)  # auto: two one-thread decodes on two cores
    assert cpu_layout(0, 0, cores=8) == (4, 2)
    assert cpu_layout(0, 0, cores=1) == (1, 1)
    assert cpu_layout(3, 0, cores=8) == (3, 2)  # threads given: kept
    assert cpu_layout(0, 1, cores=8) == (0, 1)  # workers given: CTranslate2's own thread default
    assert cpu_layout(2, 3, cores=8) == (2, 3)


def test_decode_helpers_over_a_direct_decoder_and_its_errors():
    decoder = FakeDecoder()
    windows = [Window(tone_speech(["kilo"])), Window(tone_speech(["lima"]), offset=5.0)]
    assert [r.text for r in decode_now(decoder, windows, TranscribeOptions())] == ["kilo", "lima"]
    assert [r.text for r in asyncio.run(decode_async(decoder, windows, TranscribeOptions()))] == ["kilo", "lima"]
    assert decode_now(decoder, [], TranscribeOptions()) == []

    class Broken(FakeDecoder):
        def decode_windows(self, windows, options=TranscribeOptions()):  # noqa: B008 - frozen; the decoder protocol's signature
            raise RuntimeError("device lost")

    futures = Broken().submit(windows, TranscribeOptions())
    assert all(isinstance(f, Future) and isinstance(f.exception(), RuntimeError) for f in futures)
    with pytest.raises(RuntimeError, match="device lost"):
        decode_now(Broken(), windows, TranscribeOptions())


def test_engine_and_streaming_never_import_the_server_or_the_web_framework():
    code = (
        "import pkgutil, importlib, sys\n"
        "import malsori.engine, malsori.streaming\n"
        "for pkg in (malsori.engine, malsori.streaming):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "bad = sorted(n for n in sys.modules if n.startswith(('malsori.server', 'fastapi', 'starlette', 'sqlalchemy')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported: {out}"


# -- streamed results (Pipeline.astream) -------------------------------------------------------------
class HeldDecoder(FakeDecoder):
    """Submissions are recorded and held; the test finishes each window when it chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Window, Future]] = []
        self.submitted: list[int] = []
        self.changed = asyncio.Event()  # the pipeline submits from the event loop's thread

    def submit(self, windows, options):
        futures = [Future() for _ in windows]
        self.submitted.append(len(windows))
        self.held.extend(zip(windows, futures, strict=True))
        self.options = options
        self.changed.set()
        return futures

    async def holding(self, n: int) -> None:
        """Until ``n`` windows have been submitted (planning runs in a thread first)."""
        while len(self.held) < n:
            self.changed.clear()
            await self.changed.wait()

    def finish(self, k: int) -> None:
        window, future = self.held[k]
        future.set_result(self._decode(window, self.options))


def test_astream_yields_window_results_in_order_and_they_join_to_the_transcript():
    decoder = FakeDecoder()
    audio = tone_speech(SCRIPT)

    async def collect():
        return [r async for r in Pipeline(decoder, plan=three_windows).astream(audio, TranscribeOptions(language="en"))]

    results = asyncio.run(collect())
    assert [len(batch) for batch, _ in decoder.calls] == [1, 2]  # the first window alone, then the rest
    whole = Pipeline(FakeDecoder(), plan=three_windows).transcribe(audio, TranscribeOptions(language="en"))
    assert " ".join(r.text for r in results if r.text) == whole.text == "alpha bravo charlie delta echo"
    assert [s.start for r in results for s in r.segments] == [s.start for s in whole.segments]


def test_astream_yields_only_the_contiguous_prefix_and_all_at_once_without_first_alone():
    decoder = HeldDecoder()

    async def scenario():
        stream = Pipeline(decoder, plan=three_windows).astream(tone_speech(SCRIPT), TranscribeOptions(language="en"))
        first = asyncio.ensure_future(anext(stream))
        await decoder.holding(1)
        assert decoder.submitted == [1]  # nothing else is queued before the first window is back
        decoder.finish(0)
        assert (await first).text == "alpha bravo"
        second = asyncio.ensure_future(anext(stream))
        await decoder.holding(3)
        assert decoder.submitted == [1, 2]
        decoder.finish(2)  # the last window first: nothing may be yielded before the middle one
        await asyncio.sleep(0.05)
        assert not second.done()
        decoder.finish(1)
        assert (await second).text == "charlie delta"
        assert (await anext(stream)).text == "echo"
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    asyncio.run(scenario())

    batched = HeldDecoder()

    async def all_at_once():
        stream = Pipeline(batched, plan=three_windows).astream(tone_speech(SCRIPT), TranscribeOptions(), first_alone=False)
        task = asyncio.ensure_future(anext(stream))
        await batched.holding(1)
        assert batched.submitted == [3]
        for k in range(3):
            batched.finish(k)
        assert (await task).text == "alpha bravo"
        await stream.aclose()

    asyncio.run(all_at_once())


def test_closing_a_stream_early_cancels_the_windows_still_queued():
    decoder = HeldDecoder()

    async def scenario():
        stream = Pipeline(decoder, plan=three_windows).astream(tone_speech(SCRIPT), TranscribeOptions())
        task = asyncio.ensure_future(anext(stream))
        await decoder.holding(1)
        decoder.finish(0)
        await task
        pending = asyncio.ensure_future(anext(stream))  # submits the other two windows
        await decoder.holding(3)
        pending.cancel()  # the consumer goes away (a client disconnects)
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert [f.cancelled() for _, f in decoder.held] == [False, True, True]

    asyncio.run(scenario())
