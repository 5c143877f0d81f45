"""The registry of live sessions: admission, resume tokens, event logs for replay, grace periods.

Pure bookkeeping (no sockets, no asyncio): the transport attaches a connection by giving a
``deliver`` callback, and asks :meth:`SessionManager.expired` which detached sessions ran out of
grace. A session ends in one place, :meth:`SessionManager.end`. Everything here is called from one
thread (the server's event loop).
"""

from __future__ import annotations

import builtins
import collections
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import AuthError, InvalidOptionsError, NotFoundError, OverloadedError
from .config import StreamConfig
from .events import Event, Ready
from .session import StreamingSession

__all__ = ["SessionManager", "LiveSession", "LoadSnapshot", "VadFactory", "Journal"]

Deliver = Callable[[Event], None]


class Journal(Protocol):
    """Where a session's events are written before its connection gets them (the Redis session store
    when scaled out, so another gateway can resume the session). ``publish`` never blocks: it hands
    the events to ``deliver`` (the connection at the time they were published, or None) once they
    are written, in order."""

    def publish(self, live: LiveSession, events: Sequence[Event], deliver: Deliver | None) -> None: ...


VadFactory = Callable[[], Callable[[np.ndarray], np.ndarray]]
"""Makes one session's voice activity detector (they keep state, so one each): ``StreamingVad``
(Silero) by default; ``EnergyVad`` where tests speak in tone bursts."""


@dataclass(frozen=True)
class LoadSnapshot:
    """How busy the shared decoder is, for admission (from ``DecodeScheduler.stats()``)."""

    live_pending: int = 0
    busy_fraction: float = 0.0
    recent_wait_ms: float = 0.0


@dataclass
class LiveSession:
    """One live session and what outlives its connections."""

    id: str
    token: str
    session: StreamingSession
    sample_rate: int
    encoding: str
    labels: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "v1"
    """The name of the wire protocol that opened it (``v1``, ``stt``, ``raw``), for the session list."""
    created: float = field(default_factory=time.monotonic)
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    deliver: Deliver | None = None
    connection: object = None
    detached_at: float | None = None
    received_samples: int = 0
    ended: bool = False
    """Set by :meth:`SessionManager.end` only (and when another gateway took the session over)."""
    journal: Journal | None = None
    """Set when the session's state is kept outside this process (scaled out); None: here only."""
    tenant_id: str | None = None
    """The tenant whose key opened it (None: the open service). Only that tenant can resume it."""

    def publish(self, events: Sequence[Event]) -> None:
        """Keep events for replay and hand them to the attached connection, if any (through the
        journal when there is one: written first, delivered after)."""
        self.log.extend(events)
        if self.journal is not None:
            self.journal.publish(self, events, self.deliver)
            return
        if self.deliver is not None:
            for event in events:
                self.deliver(event)

    def events_after(self, last_seq: int) -> list[Event]:
        return [e for e in self.log if e.seq > last_seq]

    def ready(self, *, resumed: bool) -> Ready:
        """What a connection is told when it opens (or resumes) this session; not part of its log."""
        s = self.session
        return Ready(
            0,
            session_id=self.id,
            resume_token=self.token,
            resumed=resumed,
            received_samples=self.received_samples,
            last_seq=s.seq,
            sample_rate=self.sample_rate,
            encoding=self.encoding,
            language=s.config.language,
            task=s.config.task,
            preset=s.config.preset,
            config=s.config.to_dict(),
        )

    @property
    def attached(self) -> bool:
        return self.deliver is not None

    def describe(self) -> dict:
        s = self.session
        return {
            "session_id": self.id,
            "protocol": self.protocol,
            "state": "detached" if not self.attached and not self.ended else s.state,
            "connected": self.attached,
            "language": s.language,
            "preset": s.config.preset,
            "task": s.config.task,
            "audio_seconds": round(s.audio_seconds, 2),
            "finals": s.finals,
            "decodes": s.decodes,
            "backlog_seconds": round(s.backlog_s, 2),
            "age_seconds": round(time.monotonic() - self.created, 1),
            **{k: v for k, v in self.labels.items() if v is not None},
        }


class SessionManager:
    """Live sessions of one server. ``max_sessions`` and the saturation limits decide admission."""

    def __init__(
        self,
        *,
        max_sessions: int = 16,
        resume_grace_s: float = 30.0,
        max_wait_ms: float = 1500.0,
        max_busy: float = 0.97,
        clock: Callable[[], float] = time.monotonic,
        vad_factory: VadFactory | None = None,
        on_end: Callable[[LiveSession], None] | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.resume_grace_s = resume_grace_s
        self.max_wait_ms = max_wait_ms
        self.max_busy = max_busy
        self._clock = clock
        self._vad_factory = vad_factory
        self.on_end = on_end
        """Called once as each session ends (usage metering)."""
        self._sessions: dict[str, LiveSession] = {}

    def active_count(self) -> int:
        """Sessions not ended yet (an ended one stays listed while its client may resume to fetch its
        last events, but takes no capacity)."""
        return sum(1 for s in self._sessions.values() if not s.ended)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def list(self, tenant_id: str | None = None) -> builtins.list[dict]:
        """Every session, or (``tenant_id`` given) only that tenant's."""
        return [s.describe() for s in self._sessions.values() if tenant_id is None or s.tenant_id == tenant_id]

    def tenant_count(self, tenant_id: str) -> int:
        return sum(1 for s in self._sessions.values() if not s.ended and s.tenant_id == tenant_id)

    # -- admission ---------------------------------------------------------------------------------
    def check_admission(self, load: LoadSnapshot) -> None:
        """Raise :class:`OverloadedError` (close code 1013) when a new session would slow all others."""
        if self.active_count() >= self.max_sessions:
            raise OverloadedError(
                f"the server is at its limit of {self.max_sessions} live sessions; try again later",
                retry_after=5.0,
            )
        # Saturated: the decoder has been busy nearly all of the last seconds AND windows wait long.
        # Either alone is normal under load; both mean every stream's latency is already growing.
        if load.busy_fraction >= self.max_busy and load.recent_wait_ms >= self.max_wait_ms:
            raise OverloadedError(
                f"the decoder is saturated (busy {load.busy_fraction:.0%}, windows wait "
                f"{load.recent_wait_ms / 1000:.1f} s); try again later",
                retry_after=5.0,
            )

    def create(
        self,
        config: StreamConfig,
        *,
        sample_rate: int,
        encoding: str,
        load: LoadSnapshot = LoadSnapshot(),
        labels: dict[str, str | None] | None = None,
        protocol: str = "v1",
        session_id: str | None = None,
        tenant_id: str | None = None,
    ) -> LiveSession:
        """A new session (of ``tenant_id``: the tenant's own limit is the transport's, malsori.tenants)."""
        self.check_admission(load)
        if session_id is not None:
            if not session_id or len(session_id) > 128 + 1 + 256:  # a chosen id (128) in a tenant's namespace
                raise InvalidOptionsError("session_id must be 1 to 128 characters")
            if session_id in self._sessions:
                raise InvalidOptionsError(f"session {session_id!r} is already live; resume it with its token or pick another id")
        sid = session_id or f"s-{uuid.uuid4().hex[:16]}"
        vad = self.new_vad()
        live = LiveSession(
            id=sid,
            token=secrets.token_urlsafe(24),
            session=StreamingSession(config, vad=vad),
            sample_rate=sample_rate,
            encoding=encoding,
            labels=dict(labels or {}),
            protocol=protocol,
            tenant_id=tenant_id,
        )
        self._sessions[sid] = live
        return live

    def new_vad(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """A voice activity detector for one more session (None: the session's default, Silero)."""
        return self._vad_factory() if self._vad_factory else None

    def adopt(self, live: LiveSession) -> None:
        """Take in a session restored from elsewhere (another gateway's, resumed here), replacing
        any stale copy of it; it waits detached for the connection that resumes it."""
        self._sessions[live.id] = live

    # -- connections -------------------------------------------------------------------------------
    def resume(self, session_id: str, token: str | None, *, tenant_id: str | None = None) -> LiveSession:
        """The session to resume; :class:`NotFoundError` or :class:`AuthError` (nothing changes then).
        ``tenant_id`` given: another tenant's session is NotFoundError, token or not.

        It may have ended while its client was away: then there is nothing to attach to, only its
        last events to replay (it is kept for that until its grace period runs out)."""
        live = self._sessions.get(session_id)
        if live is None or (tenant_id is not None and live.tenant_id != tenant_id):
            raise NotFoundError(f"no live session {session_id!r} (it ended, or its grace period ran out)")
        if not token or not secrets.compare_digest(token, live.token):
            raise AuthError("wrong resume token for this session")
        return live

    def attach(self, live: LiveSession, deliver: Deliver, connection: object = None) -> object:
        """Route the session's events to ``deliver``; returns the connection it replaces (or None)."""
        previous = live.connection if live.deliver is not None else None
        live.deliver, live.connection, live.detached_at = deliver, connection, None
        return previous

    def detach(self, live: LiveSession, connection: object = None, *, grace: bool = True) -> None:
        """The connection is gone (unless another took over): keep the session for the grace period,
        for its client to resume. ``grace=False``: nobody will come back for it (its protocol cannot
        resume, or the connection failed), so it leaves the registry as soon as it ends."""
        if connection is not None and live.connection is not connection:
            return
        live.deliver, live.connection = None, None
        live.detached_at = self._clock() if grace else None

    def expired(self) -> builtins.list[LiveSession]:
        now = self._clock()
        return [s for s in self._sessions.values() if s.detached_at is not None and now - s.detached_at >= self.resume_grace_s]

    def end(self, live: LiveSession, reason: str, *, before: Sequence[Event] = ()) -> bool:
        """End ``live``: publish ``before`` and its ``end`` event; False if it had ended already.

        The one place a session ends. A session whose client is away (detached, in its grace period)
        stays listed so that client can resume and fetch these last events; any other leaves now."""
        if live.ended:
            return False
        live.publish([*before, live.session.end(reason)])
        live.ended = True
        if self.on_end is not None:
            self.on_end(live)
        if live.detached_at is None:
            self.remove(live)
        return True

    def remove(self, live: LiveSession) -> None:
        """Forget ``live`` (ended, or the server is shutting down); its events go nowhere from now."""
        live.deliver, live.connection = None, None
        self._sessions.pop(live.id, None)

    def all(self) -> builtins.list[LiveSession]:
        return list(self._sessions.values())
