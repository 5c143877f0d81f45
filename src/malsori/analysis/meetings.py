"""Meetings: the live sessions that share a ``meeting_id``, with their transcript, speakers and
statistics, kept while they run and persisted when each session ends (issue 13).

A meeting spans sessions: every live session started with the same ``meeting_id`` joins it, one
after another (a reconnect after the resume grace ran out, a second part) or at once (one
microphone per participant). Its statistics are those of all its finals together
(:class:`~malsori.analysis.stats.LiveStats`), its audio the sum of its sessions'. Speaker labels
come from each session's own diarization, so they are qualified by the session's number in the
meeting from the second session on (``2/SPEAKER_00``); the first session's stay as they are.

Meeting ids belong to a tenant: two tenants' sessions that name the same ``meeting_id`` join two
meetings, and neither learns that the other's exists. A meeting is known by ``(tenant_id, meeting_id)``
(:attr:`Meeting.key`); the tenant is the session's (its key's tenant, or the ``tenant_id`` label on a
server without keys).

A meeting is ``live`` while any of its sessions runs and ``ended`` after the last one ends. Its record
is written when a session joins or leaves, and while it runs at most every :data:`WRITE_EVERY_S` as
finals arrive (:meth:`MeetingBook.changed`), so a server that dies loses at most that much of it. A session
joining an ended meeting (also after a restart) takes it up again: its record is read back and its
statistics rebuilt from the stored transcript.

Pure of the web and of SQL: :class:`MeetingBook` is given a :class:`MeetingStore` (the SQLAlchemy
one is ``malsori.storage.meetings.MeetingRepository``), writes to it on one background thread, in
order, so the event loop of the live sessions never waits for the database.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ..errors import InvalidOptionsError
from .stats import LiveStats, Utterance

__all__ = ["Meeting", "MeetingBook", "MeetingStore", "check_meeting_id"]

log = logging.getLogger(__name__)

MAX_ID_CHARS = 128
WRITE_EVERY_S = 10.0
"""A live meeting's record is rewritten at most this often as its finals arrive (the whole record is
one JSON row: about 0.2 KB per final, so an hour's meeting is a write of a few hundred KB)."""


def check_meeting_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise InvalidOptionsError(f"meeting_id must be a string of 1 to {MAX_ID_CHARS} characters")
    return value


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class MeetingStore(Protocol):
    """Where meetings are kept: one JSON record each (:meth:`Meeting.record`)."""

    def save(self, record: dict[str, Any]) -> None: ...

    def get(self, meeting_id: str, tenant_id: str | None = None) -> dict[str, Any] | None: ...


@dataclass
class _Part:
    """One session of a meeting."""

    session_id: str
    index: int
    protocol: str
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    audio_s: float = 0.0
    open_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "index": self.index, "protocol": self.protocol,
            "started_at": _iso(self.started_at), "ended_at": _iso(self.ended_at), "end_reason": self.end_reason,
            "audio_s": round(self.audio_s, 3),
        }  # fmt: skip


@dataclass
class Meeting:
    """One meeting in memory: its sessions, its transcript so far and its running statistics."""

    id: str
    started_at: datetime
    tenant_id: str | None = None
    ended_at: datetime | None = None
    parts: dict[str, _Part] = field(default_factory=dict)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    stats: LiveStats = field(default_factory=LiveStats)

    @property
    def key(self) -> tuple[str | None, str]:
        return self.tenant_id, self.id

    @property
    def live(self) -> bool:
        return any(p.ended_at is None for p in self.parts.values())

    @property
    def state(self) -> str:
        return "live" if self.live else "ended"

    def join(self, session_id: str, protocol: str, now: datetime) -> None:
        self.parts[session_id] = _Part(session_id, len(self.parts) + 1, protocol, now)
        self.ended_at = None

    def speaker_key(self, session_id: str, speaker: str | None) -> str | None:
        part = self.parts.get(session_id)
        if speaker is None or part is None or part.index == 1:
            return speaker
        return f"{part.index}/{speaker}"

    def add_final(self, session_id: str, final: Any, latency_s: float | None) -> None:
        """Count a session's ``Final`` and add it to the transcript."""
        speaker = self.speaker_key(session_id, getattr(final, "speaker", None))
        utterance = Utterance.of(final, speaker=speaker)
        self.stats.add(utterance, latency_s)
        sentiment = None if utterance.sentiment is None else {"label": utterance.sentiment, "score": utterance.score}
        self.transcript.append({
            "session_id": session_id, "seq": final.seq, "text": final.text, "start": final.start, "end": final.end,
            "speaker": speaker, "language": getattr(final, "language", None), "sentiment": sentiment,
            "latency_ms": None if latency_s is None else round(latency_s * 1000, 1),
        })  # fmt: skip

    def advance(self, session_id: str, audio_s: float, open_s: float = 0.0) -> None:
        part = self.parts.get(session_id)
        if part is None:
            return
        part.audio_s, part.open_s = audio_s, open_s
        self.stats.advance(sum(p.audio_s for p in self.parts.values()), sum(p.open_s for p in self.parts.values()))

    def leave(self, session_id: str, reason: str, audio_s: float, now: datetime) -> None:
        part = self.parts.get(session_id)
        if part is None:
            return
        self.advance(session_id, audio_s, 0.0)
        part.ended_at, part.end_reason = now, reason
        if not self.live:
            self.ended_at = now

    def record(self) -> dict[str, Any]:
        """The meeting as ``GET /v1/meetings/{id}`` returns it (and as stored)."""
        snapshot = self.stats.snapshot()
        speakers = snapshot.speakers or {}
        return {
            "meeting_id": self.id,
            "state": self.state,
            "tenant_id": self.tenant_id,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "sessions": [p.to_dict() for p in self.parts.values()],
            "speakers": [{"speaker": name, **s.to_dict()} for name, s in speakers.items()],
            "transcript": list(self.transcript),
            "stats": snapshot.to_dict(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Meeting:
        """A meeting taken up again from its stored record: the statistics are rebuilt from its transcript."""
        meeting = cls(record["meeting_id"], datetime.fromisoformat(record["started_at"]), record.get("tenant_id"))
        for p in record.get("sessions", []):
            ended = p.get("ended_at")
            meeting.parts[p["session_id"]] = _Part(
                p["session_id"], p["index"], p.get("protocol", "v1"), datetime.fromisoformat(p["started_at"]),
                # A session the record shows running died with its server: it ends where its record stops.
                datetime.fromisoformat(ended) if ended else datetime.fromisoformat(record["started_at"]),
                p.get("end_reason") or "lost", float(p.get("audio_s", 0.0)),
            )  # fmt: skip
        for entry in record.get("transcript", []):
            sentiment = entry.get("sentiment") or {}
            latency = entry.get("latency_ms")
            label, score = sentiment.get("label"), sentiment.get("score", 0.0)
            utterance = Utterance(entry["text"], entry["start"], entry["end"], entry.get("speaker"), label, score)
            meeting.stats.add(utterance, None if latency is None else latency / 1000)
            meeting.transcript.append(dict(entry))
        meeting.stats.advance(sum(p.audio_s for p in meeting.parts.values()))
        meeting.ended_at = datetime.fromisoformat(record["ended_at"]) if record.get("ended_at") else None
        return meeting


class MeetingBook:
    """The live meetings of this process, and their persistence."""

    def __init__(self, store: MeetingStore | None, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.store = store
        self.clock = clock
        self._live: dict[tuple[str | None, str], Meeting] = {}
        self._written_at: dict[tuple[str | None, str], datetime] = {}
        # Ended meetings whose last write is still under way: read (and joined) from here until it is done.
        self._writing: dict[tuple[str | None, str], tuple[Meeting, concurrent.futures.Future | None]] = {}
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="meetings")

    def get_live(self, meeting_id: str, tenant_id: str | None = None) -> Meeting | None:
        """The tenant's meeting as held here: live, or ended with its record not written yet."""
        self._forget_written()
        key = (tenant_id, meeting_id)
        if key in self._live:
            return self._live[key]
        writing = self._writing.get(key)
        return None if writing is None else writing[0]

    def find_live(self, meeting_id: str) -> Meeting | None:
        """A meeting of that id held here, of any tenant (the newest; for a server without keys)."""
        self._forget_written()
        held = [m for m in self._live.values() if m.id == meeting_id]
        held += [m for m, _ in self._writing.values() if m.id == meeting_id]
        return max(held, key=lambda m: m.started_at, default=None)

    def _forget_written(self) -> None:
        for key in [k for k, (_, done) in self._writing.items() if done is None or done.done()]:
            del self._writing[key]

    def live_records(self) -> list[dict[str, Any]]:
        return [m.record() for m in self._live.values()]

    def join(self, meeting_id: str, session_id: str, *, protocol: str = "v1", tenant_id: str | None = None) -> Meeting:
        """Add a session to the tenant's meeting (started now, or taken up again from the store)."""
        meeting = self.get_live(meeting_id, tenant_id)
        if meeting is None:
            # One primary-key read, at session start only.
            record = self.store.get(meeting_id, tenant_id) if self.store is not None else None
            meeting = Meeting.from_record(record) if record is not None else Meeting(meeting_id, self.clock(), tenant_id)
        self._writing.pop(meeting.key, None)
        self._live[meeting.key] = meeting
        meeting.join(session_id, protocol, self.clock())
        self.persist(meeting)
        return meeting

    def leave(self, meeting: Meeting, session_id: str, reason: str, audio_s: float) -> None:
        """A session of ``meeting`` ended: the record is written; an ended meeting leaves memory."""
        meeting.leave(session_id, reason, audio_s, self.clock())
        written = self.persist(meeting)
        if not meeting.live:
            self._live.pop(meeting.key, None)
            self._writing[meeting.key] = (meeting, written)

    def changed(self, meeting: Meeting) -> None:
        """A final was added: write the record if the last write is :data:`WRITE_EVERY_S` old."""
        last = self._written_at.get(meeting.key)
        if last is None or (self.clock() - last).total_seconds() >= WRITE_EVERY_S:
            self.persist(meeting)

    def persist(self, meeting: Meeting) -> concurrent.futures.Future | None:
        """Write the meeting's record now (its state as of this call) on the writer thread."""
        if self.store is None:
            return None
        self._written_at[meeting.key] = self.clock()
        if not meeting.live:
            self._written_at.pop(meeting.key, None)
        record = meeting.record()
        return self._writer.submit(self._save, record)

    def written(self) -> concurrent.futures.Future:
        """Done once every write asked for so far is done (the writer takes them in order)."""
        return self._writer.submit(lambda: None)

    def _save(self, record: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            self.store.save(record)
        except Exception:
            log.exception("could not save meeting %s", record.get("meeting_id"))

    def close(self) -> None:
        """Finish the writes under way (call after the live sessions ended)."""
        self._writer.shutdown(wait=True)
