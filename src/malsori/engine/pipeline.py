"""Whole inputs to transcripts: plan windows, decode them through any decoder, assemble the result.

Data flows one way: a caller (the CLI, an HTTP route, a job) builds a :class:`Pipeline` over a
:class:`~malsori.engine.decoder.WindowDecoder` (the model itself, a lane of the shared scheduler, a
queue worker) and asks it for transcripts. The pipeline never knows which decoder it has:

1. **plan**: each input is cut into windows (:func:`~malsori.engine.windows.plan_windows`: speech
   regions by the Silero VAD, merged up to ``MAX_WINDOW_S``);
2. **decode**: every window of every input is submitted at once, so they share batches (with
   ``condition_on_previous_text`` an input's windows go one after another, each carrying the text
   before it); progress is reported as each window completes;
3. **assemble**: segments renumbered in order, the language of the longest window stands for the input.

``transcribe``/``transcribe_many`` block the calling thread; ``atranscribe``/``atranscribe_many``
await the decoder's futures on the event loop (planning, which runs the VAD, goes to a thread).
``astream`` awaits the same way but yields each window's result, in order, as soon as every window
before it is done, so a caller can show text while the rest decodes (streamed HTTP transcription).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import aclosing
from dataclasses import replace

import numpy as np

from .audio import SAMPLE_RATE
from .decoder import WindowDecoder
from .options import TranscribeOptions
from .types import Segment, Transcript
from .windows import Window, WindowResult, plan_windows

__all__ = ["Pipeline", "Planner", "Progress"]

Planner = Callable[[np.ndarray, TranscribeOptions], "list[tuple[int, int]]"]
"""Cuts one input into (start, end) sample ranges to decode."""
Progress = Callable[[float, float], None]
"""``progress(done_seconds, total_seconds)``; it may raise to stop the work (its windows are cancelled)."""


def _default_plan(audio: np.ndarray, options: TranscribeOptions) -> list[tuple[int, int]]:
    return plan_windows(audio, options.vad_filter)


CONTEXT_BATCH = 8
"""Windows decoded at once per input with ``condition_on_previous_text``: an input's windows go in as
many runs as keep rounds of eight windows full (see _Run and _context_runs); that is one batch on most
CPUs and four pairs, two at a time, on one with AMX (``transcriber.AUTO_BATCH``, ``AMX_BATCH``)."""
_CONTEXT_TOKENS = 223
"""Tokens of the windows before a window carried as its prompt, at most (Whisper's limit, as the decoder keeps)."""


def _run_starts(n: int, runs: int) -> frozenset[int]:
    """First windows of ``runs`` contiguous runs of ``n`` windows as equal as can be (longer ones first)."""
    runs = max(1, min(n, runs))
    size, extra = divmod(n, runs)
    return frozenset(r * size + min(r, extra) for r in range(runs))


def _context_runs(n: int) -> int:
    """Runs for an input of ``n`` windows: as many as take no more batches of ``CONTEXT_BATCH`` than
    decoding every window at once would (ten windows: five runs of two, two batches of five), but
    two windows a run at least, so that half the windows carry context (five windows: runs of three
    and two, three batches instead of one). A long input's windows nearly all carry context: 150
    windows go in eight runs, 142 with the tokens before them."""
    rounds = math.ceil(n / CONTEXT_BATCH)
    return max(1, min(math.ceil(n / rounds) if n else 1, n // 2))


def _previous_tokens(results: Sequence[WindowResult | None], starts: frozenset[int], k: int) -> tuple[int, ...]:
    """What the model decoded before window ``k`` in its run (text and timestamp tokens, as Whisper
    conditions on them), the last ``_CONTEXT_TOKENS`` or so, back to the last window decoded at a
    temperature over 0.5 (whose text is not trusted, as in Whisper's own prompt reset)."""
    parts: list[tuple[int, ...]] = []
    size = 0
    j = k - 1
    while j >= 0 and size < _CONTEXT_TOKENS:
        result = results[j]
        if result is None or result.temperature > 0.5:
            break
        parts.append(result.tokens)
        size += len(result.tokens)
        if j in starts:
            break
        j -= 1
    return tuple(t for part in reversed(parts) for t in part)[-_CONTEXT_TOKENS:]


class _Run:
    """The planned windows of some inputs, their results so far, and what to submit next."""

    def __init__(
        self, audios: Sequence[np.ndarray], options: TranscribeOptions, plan: Planner, *, first_alone: bool = False
    ) -> None:
        self.started = time.perf_counter()
        self.audios = audios
        self.options = options
        self.plans = [plan(a, options) for a in audios]
        self.results: list[list[WindowResult | None]] = [[None] * len(p) for p in self.plans]
        self.total_s = sum(len(a) for a in audios) / SAMPLE_RATE
        self.done_s = 0.0
        # With ``condition_on_previous_text`` a window after the first carries the text of the windows
        # before it, so it waits for them. To keep batches full, each input's windows are split into
        # contiguous runs decoded side by side (_context_runs): step k decodes the k-th window
        # of every run in one batch, each with its predecessor's text. Only the first window of a run
        # goes without the text before it.
        self.context = options.condition_on_previous_text
        self.run_starts = [_run_starts(len(p), _context_runs(len(p)) if self.context else len(p)) for p in self.plans]
        # Each input's first window goes alone and the rest once it is done, so its text is back after
        # one window's decode instead of a whole batch's (streamed results; see Pipeline.astream).
        self.first_alone = first_alone
        self._submitted = [[False] * len(p) for p in self.plans]

    def ready(self) -> list[tuple[tuple[int, int], Window]]:
        """Windows that can be submitted now: each whose run predecessor is done (with the context on;
        every window otherwise), except that with ``first_alone`` an input's other windows wait for its first."""
        out: list[tuple[tuple[int, int], Window]] = []
        for i, plan in enumerate(self.plans):
            results, submitted, starts = self.results[i], self._submitted[i], self.run_starts[i]
            for k in range(len(plan)):
                if submitted[k]:
                    continue
                if self.first_alone and k > 0 and results[0] is None:
                    break
                if k in starts or results[k - 1] is not None:
                    submitted[k] = True
                    out.append(((i, k), self._window(i, k)))
        return out

    def _window(self, i: int, k: int) -> Window:
        start, end = self.plans[i][k]
        context: tuple[int, ...] = ()
        if self.context and k not in self.run_starts[i]:
            context = _previous_tokens(self.results[i], self.run_starts[i], k)
        return Window(
            self.audios[i][start:end], offset=start / SAMPLE_RATE, prompt=self.options.initial_prompt, prompt_tokens=context
        )

    def accept(self, key: tuple[int, int], window: Window, result: WindowResult) -> None:
        self.results[key[0]][key[1]] = result
        self.done_s = min(self.total_s, self.done_s + len(window.audio) / SAMPLE_RATE)

    def assemble(self) -> list[Transcript]:
        elapsed = time.perf_counter() - self.started
        return [_assemble(a, p, r, self.options, elapsed) for a, p, r in zip(self.audios, self.plans, self.results, strict=True)]


def _assemble(
    audio: np.ndarray, plan: list[tuple[int, int]], results: list[WindowResult | None], options: TranscribeOptions, elapsed: float
) -> Transcript:
    done = [r for r in results if r is not None]
    segments: list[Segment] = [replace(seg, id=n) for n, seg in enumerate(s for r in done for s in r.segments)]
    if done:
        # The language of the window with the most speech stands for the input.
        best = results[max(range(len(plan)), key=lambda k: plan[k][1] - plan[k][0])] or done[0]
        language, probability = best.language, best.language_probability
    else:
        language, probability = options.language or "en", 0.0
    return Transcript(
        segments=tuple(segments),
        language=language,
        language_probability=probability,
        duration=len(audio) / SAMPLE_RATE,
        processing_time=elapsed,
        task=options.task,
        duration_after_vad=sum(e - s for s, e in plan) / SAMPLE_RATE,
    )


class Pipeline:
    """Plan, decode through ``decoder``, assemble. Cheap: build one per caller."""

    def __init__(self, decoder: WindowDecoder, *, plan: Planner = _default_plan) -> None:
        self.decoder = decoder
        self.plan = plan

    # -- blocking ----------------------------------------------------------------------------------
    def transcribe(
        self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions(), progress: Progress | None = None
    ) -> Transcript:
        return self.transcribe_many([audio], options, progress)[0]

    def transcribe_many(
        self, audios: Sequence[np.ndarray], options: TranscribeOptions = TranscribeOptions(), progress: Progress | None = None
    ) -> list[Transcript]:
        """Transcribe several inputs whose windows share batches; ``progress`` after each window."""
        run = _Run(audios, options, self.plan)
        pending: dict[Future[WindowResult], tuple[tuple[int, int], Window]] = {}
        try:
            while True:
                pending.update(self._submit(run))
                if not pending:
                    return run.assemble()
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in finished:
                    key, window = pending.pop(future)
                    run.accept(key, window, future.result())
                if progress is not None:
                    progress(run.done_s, run.total_s)
        except BaseException:
            for future in pending:
                future.cancel()
            raise

    # -- asyncio -----------------------------------------------------------------------------------
    async def atranscribe(
        self,
        audio: np.ndarray,
        options: TranscribeOptions = TranscribeOptions(),
        progress: Progress | None = None,
        *,
        first_alone: bool = False,
    ) -> Transcript:
        return (await self.atranscribe_many([audio], options, progress, first_alone=first_alone))[0]

    async def atranscribe_many(
        self,
        audios: Sequence[np.ndarray],
        options: TranscribeOptions = TranscribeOptions(),
        progress: Progress | None = None,
        *,
        first_alone: bool = False,
    ) -> list[Transcript]:
        """As :meth:`transcribe_many`, awaiting the decoder instead of blocking a thread.

        ``first_alone`` submits each input's first window by itself, as :meth:`astream` does. A window's
        text depends on what it is batched with (the model pads a batch to its longest window: "15th"
        alone was "fifteenth" in a batch of three), so a caller whose text must match a streamed
        one's decodes the same batches."""
        run = await asyncio.to_thread(_Run, audios, options, self.plan, first_alone=first_alone)
        async with aclosing(self._adecode(run)) as rounds:
            async for _ in rounds:
                if progress is not None:
                    progress(run.done_s, run.total_s)
        return run.assemble()

    async def astream(
        self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions(), *, first_alone: bool = True
    ) -> AsyncGenerator[WindowResult, None]:
        """Decode one input and yield its windows' results in order, each as soon as it and every
        window before it are done (the contiguous prefix); the segments of the results, in order, are
        those :meth:`atranscribe` assembles (same plan, same windows, same options).

        ``first_alone`` submits the first window by itself and the rest once it is done, so the first
        text does not wait for a whole batch: on a 2-core CPU (Whisper base int8, beam 5) a 62 s input's
        first 22 s window took 1.4 s alone against 3.5 s for its batch of three. Closing the iterator
        early (or cancelling its consumer) cancels the windows still queued.
        """
        run = await asyncio.to_thread(_Run, [audio], options, self.plan, first_alone=first_alone)
        results, sent = run.results[0], 0
        async with aclosing(self._adecode(run)) as rounds:
            async for _ in rounds:
                while sent < len(results) and (result := results[sent]) is not None:
                    yield result
                    sent += 1

    async def _adecode(self, run: _Run) -> AsyncGenerator[None, None]:
        """Submit what is ready, await, accept what finished; yields after each round. Leaving early
        (an exception, ``aclose``, a cancelled caller) cancels the windows still pending."""
        pending: dict[asyncio.Future[WindowResult], tuple[Future[WindowResult], tuple[int, int], Window]] = {}
        try:
            while True:
                for future, item in self._submit(run).items():
                    pending[asyncio.wrap_future(future)] = (future, *item)
                if not pending:
                    return
                finished, _ = await asyncio.wait(list(pending), return_when=asyncio.FIRST_COMPLETED)
                for waiter in finished:
                    _, key, window = pending.pop(waiter)
                    run.accept(key, window, waiter.result())
                yield
        except BaseException:
            for waiter, (future, _key, _window) in pending.items():
                future.cancel()
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # one error is raised; the rest of a failed batch is not "never retrieved"
            raise

    def _submit(self, run: _Run) -> dict[Future[WindowResult], tuple[tuple[int, int], Window]]:
        ready = run.ready()
        if not ready:
            return {}
        futures = self.decoder.submit([w for _, w in ready], run.options)
        return dict(zip(futures, ready, strict=True))
