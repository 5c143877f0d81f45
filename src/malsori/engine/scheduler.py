"""One queue in front of the shared model: many callers, batched decodes, fair and bounded.

Live streams, short HTTP requests and file jobs all submit windows here. A worker thread takes the
most urgent class first (live, then requests, then jobs), round-robin across owners (a stream, a
request, a job) so one busy owner cannot starve the others, and decodes up to ``max_batch`` windows
that share decoding options (and the decoder's ``batch_class``, where it has one) in one call. When
the queue of a class is full, ``submit`` raises :class:`OverloadedError` at once: callers turn that
into 429 or close code 1013 instead of every caller slowing down.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import OverloadedError
from .audio import SAMPLE_RATE
from .decoder import WindowDecoder, decode_composed
from .options import TranscribeOptions
from .windows import Window, WindowResult

__all__ = ["Priority", "DecodeScheduler", "SchedulerLane", "SchedulerStats", "BatchReport"]

log = logging.getLogger(__name__)


class Priority(IntEnum):
    LIVE = 0
    REQUEST = 1
    JOB = 2


@dataclass(eq=False)  # identity: an item is removed from its queue by identity (see _forget)
class _Item:
    window: Window
    options: TranscribeOptions
    owner: str
    priority: Priority
    future: Future
    urgent: bool = False
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchReport:
    """One decoded batch, as told to the scheduler's ``on_batch`` observer (the server's metrics)."""

    priority: str
    """live, request or job."""
    size: int
    """Windows decoded together."""
    decode_s: float
    """Wall time of the batched decode."""
    audio_s: float
    """Seconds of audio in the batch's windows."""
    failed: bool = False


@dataclass
class SchedulerStats:
    pending: dict[str, int]
    batches: int
    windows: int
    mean_batch_size: float
    busy_fraction: float
    """Share of the last ~10 s the worker spent decoding (0..1)."""
    recent_wait_ms_p50: float
    recent_decode_ms_p50: float


class DecodeScheduler:
    """Thread-safe. ``submit`` from any thread; ``decode`` from asyncio code; ``lane`` for the pipeline.

    ``decoder`` is what does the work (the model, a fake): any :class:`WindowDecoder`.
    """

    def __init__(
        self,
        decoder: WindowDecoder,
        *,
        max_batch: int = 8,
        max_pending: dict[Priority, int] | None = None,
        workers: int = 1,
        urgent_batch: int | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.decoder = decoder
        self.urgent_batch = urgent_batch
        """At most this many urgent windows (live finals) in one batch; None: as many as other live
        windows (half of ``max_batch``). See :meth:`_take_batch`."""
        self.on_batch = on_batch
        """Called in the worker thread after every batch (metrics); its errors are logged, not raised."""
        self.max_batch = max_batch
        self.max_pending = {Priority.LIVE: 256, Priority.REQUEST: 64, Priority.JOB: 1024, **(max_pending or {})}
        # priority -> owner -> deque of items; owners rotate for fairness
        self._queues: dict[Priority, collections.OrderedDict[str, collections.deque[_Item]]] = {
            p: collections.OrderedDict() for p in Priority
        }
        self._counts = dict.fromkeys(Priority, 0)
        self._cond = threading.Condition()
        self._closed = False
        self._batches = 0
        self._windows = 0
        self._busy: collections.deque[tuple[float, float]] = collections.deque(maxlen=512)
        self._waits: collections.deque[float] = collections.deque(maxlen=256)
        self._decodes: collections.deque[float] = collections.deque(maxlen=256)
        self._previews = 0  # live batches of partials being decoded
        self._threads = [threading.Thread(target=self._run, name=f"malsori-decode-{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- submitting --------------------------------------------------------------------------------
    def submit(
        self,
        window: Window,
        options: TranscribeOptions,
        *,
        owner: str,
        priority: Priority = Priority.REQUEST,
        urgent: bool = False,
    ) -> Future[WindowResult]:
        """Queue one window. ``urgent`` windows (a live stream's final) are batched before the others
        of their priority class, so a final never waits behind queued partials."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise OverloadedError("the decoder is shutting down", retry_after=5.0)
            if self._counts[priority] >= self.max_pending[priority]:
                raise OverloadedError(
                    f"the decode queue is full ({self._counts[priority]} {priority.name.lower()} windows waiting)",
                    retry_after=self.retry_after(),
                )
            queue = self._queues[priority].setdefault(owner, collections.deque())
            item = _Item(window, options, owner, priority, future, urgent)
            queue.append(item)
            self._counts[priority] += 1
            self._cond.notify()
        future.add_done_callback(lambda f: self._forget(item) if f.cancelled() else None)
        return future

    def _forget(self, item: _Item) -> None:
        """A window its caller cancelled leaves the queue at once, so it no longer takes room."""
        with self._cond:
            queue = self._queues[item.priority].get(item.owner)
            if queue is None:
                return
            try:
                queue.remove(item)
            except ValueError:  # already taken (the worker skips it) or cleared by close()
                return
            self._counts[item.priority] -= 1
            if not queue:
                del self._queues[item.priority][item.owner]

    async def decode(
        self,
        window: Window,
        options: TranscribeOptions,
        *,
        owner: str,
        priority: Priority = Priority.REQUEST,
        urgent: bool = False,
    ) -> WindowResult:
        """Submit and await one window from asyncio code without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(window, options, owner=owner, priority=priority, urgent=urgent))

    def submit_all(
        self, windows: Sequence[Window], options: TranscribeOptions, *, owner: str, priority: Priority = Priority.REQUEST
    ) -> list[Future[WindowResult]]:
        """Queue all windows or none: a caller that does not fit gets OverloadedError before any of its
        windows is decoded."""
        with self._cond:
            room = self.max_pending[priority] - self._counts[priority]
            if len(windows) > room and not self._closed:
                raise OverloadedError(
                    f"the decode queue is full ({self._counts[priority]} {priority.name.lower()} windows waiting)",
                    retry_after=self.retry_after(),
                )
        futures: list[Future] = []
        try:
            for window in windows:
                futures.append(self.submit(window, options, owner=owner, priority=priority))
        except OverloadedError:
            for future in futures:
                future.cancel()
            raise
        return futures

    def lane(self, owner: str, priority: Priority = Priority.REQUEST) -> SchedulerLane:
        """A :class:`~malsori.engine.decoder.WindowDecoder` whose windows queue here as ``owner``."""
        return SchedulerLane(self, owner, priority)

    # -- facts -------------------------------------------------------------------------------------
    def pending(self, priority: Priority | None = None) -> int:
        with self._cond:
            return self._counts[priority] if priority is not None else sum(self._counts.values())

    def retry_after(self) -> float:
        """A rough number of seconds until the queue has room, for Retry-After headers."""
        decode_s = (sorted(self._decodes)[len(self._decodes) // 2] / 1000) if self._decodes else 1.0
        waiting = sum(self._counts.values())
        return max(1.0, round(decode_s * max(1, waiting) / self.max_batch, 1))

    def busy_fraction(self, horizon_s: float = 10.0) -> float:
        now = time.perf_counter()
        with self._cond:
            spans = list(self._busy)
        # The union of the spans: with several worker threads (a model running two decodes at once, or a
        # gateway's batches on remote workers) overlapping spans are one busy stretch, not two, so
        # partials only fill time in which nothing decodes. Counting each decode as half the capacity
        # instead let partials crowd the finals: 8 lockstep streams, final p95 5.29 s against 3.79 and
        # 4.43 s (bench/live_capacity.py --clips 16, two one-thread decodes on 2 cores).
        busy, reach = 0.0, now - horizon_s
        for start, end in sorted(spans):
            begin, end = max(start, reach), min(end, now)
            if end > begin:
                busy += end - begin
                reach = end
        return max(0.0, min(1.0, busy / horizon_s))

    def stats(self) -> SchedulerStats:
        def p50(values) -> float:
            values = sorted(values)
            return round(values[len(values) // 2], 1) if values else 0.0

        with self._cond:
            pending = {p.name.lower(): self._counts[p] for p in Priority}
            waits, decodes = list(self._waits), list(self._decodes)
            batches, windows = self._batches, self._windows
        return SchedulerStats(
            pending=pending,
            batches=batches,
            windows=windows,
            mean_batch_size=round(windows / batches, 2) if batches else 0.0,
            busy_fraction=round(self.busy_fraction(), 3),
            recent_wait_ms_p50=p50(waits),
            recent_decode_ms_p50=p50(decodes),
        )

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            leftovers = [item for p in Priority for q in self._queues[p].values() for item in q]
            for p in Priority:
                self._queues[p].clear()
                self._counts[p] = 0
            self._cond.notify_all()
        for item in leftovers:
            if item.future.set_running_or_notify_cancel():  # a cancelled window has no one to tell
                item.future.set_exception(OverloadedError("the decoder shut down before this window", retry_after=5.0))
        for thread in self._threads:
            thread.join(timeout)

    # -- the worker --------------------------------------------------------------------------------
    def _previews_blocked(self) -> bool:
        """With several workers, live partials never take the last free one: a final that comes due
        finds a worker at once instead of waiting for a batch of partials (8 lockstep streams, every
        final of a phrase due at the same moment)."""
        return 1 < len(self._threads) <= self._previews + 1

    def _next_class(self) -> Priority | None:
        """The most urgent class with a window a worker may take now (called with the lock held)."""
        for p in Priority:
            if not self._counts[p]:
                continue
            blocked = p is Priority.LIVE and self._previews_blocked()
            if blocked and not any(q and q[0].urgent for q in self._queues[p].values()):
                continue
            return p
        return None

    def _take_batch(self, priority: Priority) -> list[_Item]:
        """Called with the lock held, ``priority`` from :meth:`_next_class`. Composing a batch calls the
        decoder (``batch_class``): should that raise, the windows taken so far and the window whose turn
        it was fail with the error, rather than the worker thread dying and every caller waiting forever;
        the worker goes on with the rest."""
        batch: list[_Item] = []
        try:
            self._fill_batch(priority, batch)
        except Exception as exc:
            log.exception("composing a batch failed")
            owners = self._queues[priority]
            head = next((o for o, q in owners.items() if q), None)
            if head is not None:  # the window it failed on, most likely: never tried again
                batch.append(owners[head].popleft())
            for o in [o for o, q in owners.items() if not q]:
                del owners[o]
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            self._counts[priority] -= len(batch)
            return []
        self._counts[priority] -= len(batch)
        return batch

    def _fill_batch(self, priority: Priority, batch: list[_Item]) -> None:
        owners = self._queues[priority]
        # The batch takes the options of the first urgent window (else of the next owner in turn).
        # While urgent windows wait, a batch holds only urgent ones: a short partial in a batch of
        # finals would delay them (each window is encoded at the batch's longest length), and a final
        # never waits for a partial taken ahead of it; the partials go in the next batch, or to another
        # worker at the same time.
        urgent_owner = next((o for o, q in owners.items() if q and q[0].urgent), None)
        urgent = urgent_owner is not None
        first_owner = urgent_owner if urgent_owner is not None else next(iter(owners))
        options = owners[first_owner][0].options
        # A decoder that decodes some windows apart even in one batch (the model: a window with a prompt
        # and one without; Korean windows of different encoder lengths on a CPU) says so with
        # ``batch_class``: a batch holds one class, and the windows of another go in the next batch, to
        # another worker at the same time, instead of waiting in this one for its first class.
        class_of = getattr(self.decoder, "batch_class", None)
        first_class = class_of(owners[first_owner][0].window, options) if class_of is not None else None
        # Live windows go in half-size batches: a final that arrives while a batch of partials runs
        # waits half as long; on a CPU the encoder is compute-bound, so two half batches cost about
        # what one full batch does (8 partial windows of 4 s: 2.5-3.2 s as one batch, 2.2-2.7 s as
        # two); and the model's peak workspace stays flat (peak RSS +90 MB for a batch of 8 final
        # windows of 2-10 s, +0 MB for batches of 4), which bounds memory per live session.
        limit = max(1, self.max_batch // 2) if priority is Priority.LIVE else self.max_batch
        # Finals may go in smaller batches still (``urgent_batch``): on a CPU a batch costs about the sum
        # of its windows once they are padded to the longest, so every final of a batch waits for all of
        # them. 24 rotated live streams on 2 cores (docs/benchmarks.md "Live capacity", "Live finals one
        # at a time"): a batch of 4 finals took 1.2 s against 0.28 s for one, and final p95 went from
        # 2.47 s to 1.82 s (medians of 3) with finals decoded one at a time.
        if urgent and self.urgent_batch:
            limit = self.urgent_batch
        first_length = len(owners[first_owner][0].window.audio)
        # Round-robin: one window per owner per pass, owners that got a turn move to the back.
        for _ in itertools.count():
            took = False
            for owner in _visit_order(owners, first_owner, None if priority is Priority.LIVE else first_length):
                queue = owners[owner]
                while queue and queue[0].future.cancelled():  # its caller gave up on it
                    queue.popleft()
                    self._counts[priority] -= 1
                if (
                    queue
                    and queue[0].options == options
                    and queue[0].urgent == urgent
                    and len(batch) < limit
                    and (class_of is None or class_of(queue[0].window, options) == first_class)
                ):
                    batch.append(queue.popleft())
                    took = True
                    owners.move_to_end(owner)
                if not queue:
                    del owners[owner]
            if not took or len(batch) >= limit:
                break

    def _report(self, batch: list[_Item], decode_s: float, failed: bool) -> None:
        if self.on_batch is None:
            return
        audio_s = sum(len(item.window.audio) for item in batch) / SAMPLE_RATE
        try:
            self.on_batch(BatchReport(batch[0].priority.name.lower(), len(batch), decode_s, audio_s, failed))
        except Exception:
            log.exception("the batch observer failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (priority := self._next_class()) is None:
                    self._cond.wait()
                if self._closed or priority is None:
                    return
                batch = self._take_batch(priority)
                preview = bool(batch) and batch[0].priority is Priority.LIVE and not batch[0].urgent
                self._previews += preview
            try:
                self._decode_batch(batch)
            finally:
                if preview:
                    with self._cond:
                        self._previews -= 1
                        self._cond.notify_all()

    def _decode_batch(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.perf_counter()
        failed = True
        try:
            results = decode_composed(self.decoder, [item.window for item in batch], batch[0].options)
            failed = False
        except BaseException as exc:  # the error belongs to the callers, not to the worker
            log.exception("batched decode failed")
            for item in batch:
                item.future.set_exception(exc)
            return
        finally:
            ended = time.perf_counter()
            with self._cond:
                self._busy.append((started, ended))
                self._batches += 1
                self._windows += len(batch)
                self._decodes.append((ended - started) * 1000)
                self._waits.extend((started - item.enqueued) * 1000 for item in batch)
            self._report(batch, ended - started, failed)
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)


def _visit_order(owners: dict[str, collections.deque[_Item]], first: str, length: int | None) -> list[str]:
    """The order in which a batch takes the owners' next windows: ``first`` (whose turn it is), then,
    given the ``length`` of its window, the others by how close their next window's length is to it (in
    turn where equal). Called once per pass of :meth:`DecodeScheduler._take_batch`: by the second pass
    ``first`` may have no window left, or no queue.

    Every window of a batch is encoded at its longest window's length, and on a CPU the batch costs
    about that many frames for each of its windows: a 2 s clip batched with a 10 s one costs the 10 s
    decode twice. The CLI sorts its windows by length before it batches them; concurrent requests
    arrive in no order. 16 HTTP clients on the AMX host, batches of two: the encoder took 43% of the
    decode time (py-spy) where a similar-length pair wastes little (docs/benchmarks.md "Requests
    batched by length"). Whose turn it is stays round-robin, so no owner waits for a better match. Live
    batches (``length`` None) keep the plain order: partials and finals were measured that way."""
    order = list(owners)
    if length is None or len(order) < 3:
        return order

    def distance(owner: str) -> float:
        queue = owners[owner]
        if owner == first:
            return -1.0
        return abs(len(queue[0].window.audio) - length) if queue else math.inf

    return sorted(order, key=distance)


@dataclass(frozen=True)
class SchedulerLane:
    """One caller's way into the scheduler: a :class:`WindowDecoder` that queues its windows as
    ``owner`` at ``priority``, all or none (OverloadedError when they do not fit)."""

    scheduler: DecodeScheduler
    owner: str
    priority: Priority = Priority.REQUEST

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]:
        return self.scheduler.submit_all(windows, options, owner=self.owner, priority=self.priority)
