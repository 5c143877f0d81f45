"""The asyncio side of live sessions: one decode loop per session over the shared scheduler, the
outbound queue of each connection, and the grace-period sweeper.

Each session has at most one window in the scheduler (``StreamingSession.next_window`` enforces it),
so a slow decoder makes sessions skip stale partials instead of piling up windows. Every way a
session ends (stopped and finalized, a fatal error, its grace period over, shutdown) goes through
:meth:`LiveRunner.end`.

A session started with ``diarize`` has its finals' speakers found in a thread, and one started with
``sentiment`` its finals analysed in the sentiment service's thread, before they are published
(:meth:`LiveRunner._publish`): while one waits, the session's later events wait behind it, so the
client still gets them in ``seq`` order, and the event loop keeps serving every session meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.meetings import Meeting
from ..analysis.stats import LiveStats, Utterance
from ..engine.scheduler import DecodeScheduler, Priority
from ..errors import MalsoriError, OverloadedError
from ..protocol import CloseCode
from ..streaming.events import End, Error, Event, Final, Stats
from ..streaming.manager import LiveSession, LoadSnapshot, SessionManager
from ..streaming.session import DecodeRequest

if TYPE_CHECKING:
    from .services import Services

__all__ = ["LiveRunner", "Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """Serializes one connection's outgoing frames in order; ``deliver`` never blocks the caller."""

    def __init__(self, ws, render: Callable[[Event], dict[str, Any] | None]) -> None:
        self.ws = ws
        self.render = render
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def deliver(self, event: Event) -> None:
        self.queue.put_nowait(("event", event))

    def send_raw(self, data: dict[str, Any]) -> None:
        self.queue.put_nowait(("raw", data))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.queue.put_nowait(("close", code, reason[:120]))

    async def _run(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if item[0] == "close":
                    with contextlib.suppress(Exception):
                        await self.ws.close(item[1], item[2])
                    return
                data = item[1] if item[0] == "raw" else self.render(item[1])
                if data is not None:
                    await self.ws.send_text(json.dumps(data, ensure_ascii=False))
                if item[0] == "event" and isinstance(item[1], End):
                    with contextlib.suppress(Exception):
                        await self.ws.close(CloseCode.NORMAL)
                    return
        except Exception:  # the peer went away; the receive side sees the disconnect
            return
        finally:
            self.closed.set()


@dataclass
class _Analysis:
    """A session's running statistics (and its meeting's), kept here like its arrival times."""

    stats: LiveStats
    send: bool
    """The client asked for ``stats`` events."""
    meeting: Meeting | None = None
    ticker: asyncio.Task | None = None


class LiveRunner:
    """Runs every live session's decode loop and ends sessions whose grace period ran out."""

    partial_load_limit = 0.6
    """Partials are decoded only while the decoder was busy less than this share of the last 5 s.
    A partial costs as much as a final; past this load they delay finals (8 real-time streams on
    2 cores, bench/stream_latency.py: limit 0.6 gave final p95 2.4 s, 0.75 gave 2.6 s)."""

    def __init__(self, services: Services, manager: SessionManager, sweep_s: float = 0.5) -> None:
        self.services = services
        self.manager = manager
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._reasons: dict[str, str] = {}
        self._watchers: dict[str, Callable[[], None]] = {}
        # Per session: (seconds of audio received, monotonic time it arrived), for final latency.
        self._arrivals: dict[str, collections.deque[tuple[float, float]]] = {}
        self._analysis: dict[str, _Analysis] = {}
        # Per session: the publication still waiting (for a final's sentiment); later ones queue behind it.
        self._pending: dict[str, asyncio.Task] = {}
        self.draining = False
        """Set by :meth:`drain`: the server is stopping, audio that still comes in is dropped."""
        self._sweeper = asyncio.create_task(self._sweep(sweep_s))

    @property
    def scheduler(self) -> DecodeScheduler | None:
        """Where live windows go: the workers' queue when scaled out, else the shared model's."""
        return self.services.live_scheduler or self.services.scheduler

    def load(self) -> LoadSnapshot:
        scheduler = self.scheduler
        if scheduler is None:
            return LoadSnapshot()
        stats = scheduler.stats()
        return LoadSnapshot(stats.pending.get("live", 0), stats.busy_fraction, stats.recent_wait_ms_p50)

    def _decoder_idle(self) -> bool:
        """No live window waits for the decoder and it has spare time: room for a partial."""
        scheduler = self.scheduler
        if scheduler is None:
            return True
        return scheduler.pending(Priority.LIVE) == 0 and scheduler.busy_fraction(5.0) < self.partial_load_limit

    def _no_live_waiting(self) -> bool:
        """No live window waits for the decoder: room for the decode that settles a long phrase."""
        scheduler = self.scheduler
        return scheduler is None or scheduler.pending(Priority.LIVE) == 0

    def start(self, live: LiveSession, *, stats: bool = False, meeting_id: str | None = None) -> None:
        """Run ``live``'s decode loop; ``stats``: send it ``stats`` events (every
        ``streaming.stats_interval_s`` and after each final); ``meeting_id``: it joins that meeting
        (``malsori.analysis.meetings``), persisted as its sessions end."""
        if live.session.config.sentiment and self.services.sentiment is not None:
            self.services.sentiment.warm()  # loaded before the first final needs it
        if stats or meeting_id is not None:
            meeting = None
            book = self.services.meetings
            if meeting_id is not None and book is not None:
                try:
                    meeting = book.join(meeting_id, live.id, protocol=live.protocol, tenant_id=live.labels.get("tenant_id"))
                except Exception:
                    self.manager.remove(live)
                    raise
            analysis = self._analysis[live.id] = _Analysis(LiveStats(), stats, meeting)
            if stats:
                analysis.ticker = asyncio.create_task(self._tick(live, analysis), name=f"stats-{live.id}")
        self._wake[live.id] = asyncio.Event()
        self._tasks[live.id] = asyncio.create_task(self._drive(live), name=f"live-{live.id}")

    def watch(self, live: LiveSession, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of ``live``'s session (audio fed, a decode applied or
        given up, finish), until it ends: a protocol that follows turns reads the session there."""
        self._watchers[live.id] = callback

    def wake(self, live: LiveSession) -> None:
        """The session changed: tell its watcher, and let its decode loop look for work."""
        watcher = self._watchers.get(live.id)
        if watcher is not None:
            watcher()
        event = self._wake.get(live.id)
        if event is not None:
            event.set()

    def feed(self, live: LiveSession, pcm: np.ndarray) -> None:
        events = live.session.feed(pcm)
        # About 10 frames a second; the cap (over half an hour of frames without a final) bounds memory.
        arrivals = self._arrivals.setdefault(live.id, collections.deque(maxlen=20000))
        arrivals.append((live.session.audio_seconds, time.monotonic()))
        self._publish(live, events)
        self.wake(live)

    def _publish(self, live: LiveSession, events: list[Event]) -> None:
        """Publish ``events`` now, or, when a final needs its sentiment or an earlier publication is
        still waiting for one, in a task that keeps their order."""
        if not events:
            return
        previous = self._pending.get(live.id)
        if previous is None and not self._wants_sentiment(live, events) and not _unlabelled(events):
            self._emit(live, events)
            return
        task = asyncio.create_task(self._publish_in_order(live, list(events), previous), name=f"publish-{live.id}")
        self._pending[live.id] = task

        def forget(done: asyncio.Task, session_id: str = live.id) -> None:
            if self._pending.get(session_id) is done:
                del self._pending[session_id]

        task.add_done_callback(forget)

    def _wants_sentiment(self, live: LiveSession, events: Sequence[Event]) -> bool:
        return live.session.config.sentiment and self.services.sentiment is not None and any(isinstance(e, Final) for e in events)

    async def _publish_in_order(self, live: LiveSession, events: list[Event], previous: asyncio.Task | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # never raises: a failed or cancelled one is simply over
        if _unlabelled(events):
            events = await self._with_speakers(live, events)
        if self._wants_sentiment(live, events):
            events = await self._with_sentiment(live, events)
        if not live.ended:
            self._emit(live, events)
        self.wake(live)

    @staticmethod
    async def _with_speakers(live: LiveSession, events: list[Event]) -> list[Event]:
        """``events`` with every final's speakers found, in a thread (the clustering is CPU work; the
        publications of one session run one after another, so its finals are clustered in order).
        When it fails, the final goes out with its speaker unknown (null)."""

        def label(final: Final) -> Final:
            try:
                return final.labelled()
            except Exception as exc:
                log.warning("live session %s: speakers failed (%s: %s); final sent without", live.id, type(exc).__name__, exc)
                return replace(final, label_speakers=None)

        return [await asyncio.to_thread(label, e) if isinstance(e, Final) else e for e in events]

    async def _with_sentiment(self, live: LiveSession, events: list[Event]) -> list[Event]:
        """``events`` with every final's ``sentiment`` (null when the analyzer failed: the text still goes out)."""
        assert self.services.sentiment is not None
        finals = [e for e in events if isinstance(e, Final)]
        results: list[Any]
        try:
            results = await self.services.sentiment.analyze_async(
                [f.text for f in finals], finals[0].language or live.session.config.language
            )
        except Exception as exc:
            log.warning("live session %s: sentiment failed (%s: %s); finals sent without it", live.id, type(exc).__name__, exc)
            results = [None] * len(finals)
        told = iter(results)
        return [replace(e, sentiment=next(told), analyzed=True) if isinstance(e, Final) else e for e in events]

    def _emit(self, live: LiveSession, events: list[Event]) -> None:
        """Publish ``events``; a final's latency (from the arrival of the audio it ends with) is measured."""
        arrivals = self._arrivals.get(live.id)
        analysis = self._analysis.get(live.id)
        finals = False
        for event in events:
            if not isinstance(event, Final):
                continue
            finals = True
            latency = None
            if arrivals:
                while len(arrivals) > 1 and arrivals[0][0] < event.end - 1e-3:
                    arrivals.popleft()  # finals come in time order: audio before this one is done with
                latency = time.monotonic() - arrivals[0][1]
                self.services.metrics.observe_final(live.protocol, latency)
            if analysis is not None:
                analysis.stats.add(Utterance.of(event), latency)
                if analysis.meeting is not None:
                    analysis.meeting.add_final(live.id, event, latency)
                    if self.services.meetings is not None:
                        self.services.meetings.changed(analysis.meeting)
        live.publish(events)
        if finals and analysis is not None and analysis.send:
            self._send_stats(live, analysis)

    def _send_stats(self, live: LiveSession, analysis: _Analysis) -> None:
        """Bring the statistics up to the session's audio; send them if its client asked and is there.
        Straight to the connection, outside the session's log: the next one supersedes this one."""
        session, meeting = live.session, analysis.meeting
        analysis.stats.advance(session.audio_seconds, session.unsettled_s)
        if meeting is not None:
            meeting.advance(live.id, session.audio_seconds, session.unsettled_s)
        deliver = live.deliver
        if not analysis.send or deliver is None:
            return
        deliver(
            Stats(
                0,
                session_id=live.id,
                stats=analysis.stats.snapshot().to_dict(),
                meeting_id=None if meeting is None else meeting.id,
                meeting=None if meeting is None else meeting.stats.snapshot().to_dict(),
            )
        )

    async def _tick(self, live: LiveSession, analysis: _Analysis) -> None:
        every = self.services.settings.streaming.stats_interval_s
        while not live.ended:
            await asyncio.sleep(every)
            if not live.ended:
                self._send_stats(live, analysis)

    def _end_analysis(self, live: LiveSession, reason: str) -> None:
        """The session ends (or leaves this process): a last ``stats`` event, its meeting told."""
        analysis = self._analysis.pop(live.id, None)
        if analysis is None:
            return
        if analysis.ticker is not None and analysis.ticker is not asyncio.current_task():
            analysis.ticker.cancel()
        self._send_stats(live, analysis)
        book = self.services.meetings
        if analysis.meeting is not None and book is not None:
            book.leave(analysis.meeting, live.id, reason, live.session.audio_seconds)

    def finish(self, live: LiveSession, reason: str = "stopped") -> None:
        """No more audio: finalize what was said, then end the session with ``reason``."""
        if live.ended:
            return
        self._reasons.setdefault(live.id, reason)
        self._publish(live, live.session.finish())
        self.wake(live)

    def kill(self, live: LiveSession, code: str, message: str) -> Error | None:
        """End a session at once after a fatal error (its remaining speech is not decoded).

        Returns the fatal error event (also kept in the session's log), or None if it had ended."""
        if live.ended:
            return None
        error = live.session.error(code, message, fatal=True)
        self.end(live, "error", before=[error])
        return error

    def end(self, live: LiveSession, reason: str, *, before: Sequence[Event] = ()) -> None:
        """End ``live`` now (``SessionManager.end``: its last events, then ``end``) and stop its loop."""
        if live.ended:
            return
        self._end_analysis(live, reason)
        if not self.manager.end(live, reason, before=before):
            return
        self._stop_loop(live)

    def _stop_loop(self, live: LiveSession) -> None:
        """Cancel ``live``'s loop (unless it is the caller) and drop everything kept for it here."""
        task = self._tasks.pop(live.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._wake.pop(live.id, None)
        self._watchers.pop(live.id, None)
        self._reasons.pop(live.id, None)
        self._arrivals.pop(live.id, None)
        analysis = self._analysis.pop(live.id, None)
        if analysis is not None and analysis.ticker is not None and analysis.ticker is not asyncio.current_task():
            analysis.ticker.cancel()
        pending = self._pending.pop(live.id, None)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()

    def release(self, live: LiveSession, *, close_code: int = CloseCode.POLICY_VIOLATION) -> None:
        """Let go of ``live`` without ending it: another gateway took it over (its client resumed
        there), or this one shuts down and the session goes on elsewhere. Its loop stops and nothing
        more is published; an attached connection is told (``taken_over``) or closed with ``close_code``."""
        if live.ended:
            return
        self._end_analysis(live, "moved")  # a meeting is followed by the gateway its session started on
        live.ended = True  # locally: its decodes' results are dropped, no event is published
        if self.services.live_store is not None:
            self.services.live_store.forget(live)
        self._stop_loop(live)  # its arrival times too (they were kept after a release)
        connection = live.connection
        self.manager.remove(live)
        if close_code == CloseCode.POLICY_VIOLATION and hasattr(connection, "taken_over"):
            connection.taken_over()
        elif hasattr(connection, "outbox"):
            connection.outbox.close(close_code, "the server is restarting; resume the session")

    async def _drive(self, live: LiveSession) -> None:
        session = live.session
        wake = self._wake[live.id]
        decodes: dict[int, asyncio.Task] = {}
        state = {"warned": False}
        try:
            while True:
                request = session.next_window(partials=self._decoder_idle(), commits=self._no_live_waiting())
                for stale in session.superseded():  # a final overtook it: free its place in the queue
                    task = decodes.pop(stale, None)
                    if task is not None:
                        task.cancel()
                if request is not None:
                    decodes[request.id] = asyncio.create_task(self._decode(live, request, state, decodes))
                    continue
                if session.done and not any(t for t in decodes.values() if not t.done()):
                    pending = self._pending.get(live.id)
                    if pending is not None and not pending.done():
                        await asyncio.wait([pending])  # the last finals' sentiment: they go out before end
                        continue
                    self.end(live, self._reasons.get(live.id, "stopped"))
                    return
                if live.ended:
                    return
                wake.clear()
                await wake.wait()
        except asyncio.CancelledError:
            for task in decodes.values():
                task.cancel()
            raise
        except Exception:
            log.exception("live session %s failed", live.id)
            self.kill(live, "internal_error", "the server failed while decoding this session")

    async def _decode(
        self, live: LiveSession, request: DecodeRequest, state: dict[str, bool], decodes: dict[int, asyncio.Task]
    ) -> None:
        """One decode of a session's window; its events are published and the session's loop woken."""
        session = live.session
        try:
            scheduler = self.scheduler
            try:
                if scheduler is None:
                    raise OverloadedError("the model is not loaded yet", retry_after=1.0)
                result = await scheduler.decode(
                    request.window,
                    request.options,
                    owner=live.id,
                    priority=Priority.LIVE,
                    urgent=request.kind != "partial",
                )
            except OverloadedError as exc:
                # Keep the audio and retry: finals are never dropped because the queue was full. The
                # request stays in flight while waiting, so the session asks for nothing else meanwhile.
                if not state["warned"]:
                    live.publish([session.error(exc.code, f"{exc.message}; retrying", fatal=False)])
                    state["warned"] = True
                await asyncio.sleep(min(1.0, exc.retry_after))
                self._publish(live, session.abort(request))
                return
            except MalsoriError as exc:
                session.abort(request)
                self.kill(live, exc.code, exc.message)
                return
            if not live.ended:
                self._publish(live, session.apply(request, result))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("live session %s failed", live.id)
            self.kill(live, "internal_error", "the server failed while decoding this session")
        finally:
            decodes.pop(request.id, None)
            self.wake(live)

    async def _sweep(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            for live in self.manager.expired():
                if live.ended:  # kept only for its client to fetch its last events
                    self.manager.remove(live)
                else:
                    log.info("live session %s: no reconnect within the grace period; finalizing", live.id)
                    live.detached_at = None  # nobody will resume it now: it leaves when it ends (detach(grace=False))
                    self.finish(live, "expired")

    async def drain(self, timeout: float) -> int:
        """Finish every live session as if its client had said stop (reason ``shutdown``): its open
        phrase is decoded, its finals and ``end`` go out, its socket closes with 1000. Waits at most
        ``timeout`` seconds for that; returns how many sessions there were."""
        self.draining = True
        lives = [live for live in self.manager.all() if not live.ended]
        waits: list[asyncio.Task] = []
        for live in lives:
            outbox = getattr(live.connection, "outbox", None)
            if isinstance(outbox, Outbox):
                waits.append(outbox.task)
            live.detached_at = None  # a detached one ends now too: there is no later to resume in
            self.finish(live, "shutdown")
            task = self._tasks.get(live.id)
            if task is not None:
                waits.append(task)
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        return len(lives)

    async def close(self) -> None:
        self._sweeper.cancel()
        store = self.services.live_store
        for live in self.manager.all():
            if store is not None and live.journal is not None and not live.ended:
                # Scaled out: its state is in Redis, so its client resumes it on another gateway.
                self.release(live, close_code=CloseCode.SERVICE_RESTART)
                continue
            self.end(live, "shutdown")
            self.manager.remove(live)  # also those kept for a resume: there is no server to resume on
        if store is not None:
            await store.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper


def _unlabelled(events: Sequence[Event]) -> bool:
    """Whether a final of ``events`` still has its speakers to find (``diarize``)."""
    return any(isinstance(e, Final) and e.label_speakers is not None for e in events)
