"""Live sessions' state in Redis, so a client whose connection drops resumes on ANY gateway.

Scaled out, every resumable session is written to Redis as it goes (:class:`LiveStore` is the
session's :class:`~malsori.streaming.manager.Journal`):

- ``<prefix>:live:s:<id>`` (hash): the resume token, the session's format and stream options, the
  ``epoch`` and ``owner`` (the gateway that runs it now), whether it ended, and its ``checkpoint``
  (:class:`~malsori.streaming.session.Checkpoint`: the finals' sequence, the prompt context, and
  the audio position from which nothing is finalized yet);
- ``<prefix>:live:s:<id>:events`` (list): its events, for the replay after ``last_seq``.

Events are written *before* the connection gets them, in order, one Lua script per batch that also
checks the epoch: so what a client has seen is always in Redis, and a gateway that lost the session
to another one (its client resumed there) writes nothing more and lets go of it (fencing).

A resume that reaches a gateway without the session (:meth:`LiveStore.adopt`) takes it over (epoch
+1), restores the session from its checkpoint and log, and answers ``ready`` with
``received_samples`` at the checkpoint: the client sends its audio again from there (it keeps the
last 30 s for that), the new gateway decodes it, and the finals continue the sequence with nothing
lost or repeated. Without a broker none of this exists: sessions live in the process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis

from ..analysis.sentiment import Sentiment
from ..engine.audio import SAMPLE_RATE
from ..errors import AuthError, NotFoundError
from ..streaming.config import StreamConfig
from ..streaming.events import End, Error, Event, Final, Language, Partial, WordTiming
from ..streaming.manager import Deliver, LiveSession, SessionManager
from ..streaming.session import Checkpoint, StreamingSession

if TYPE_CHECKING:
    from ..server.live import LiveRunner

__all__ = ["LiveStore", "event_from_dict"]

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 5.0
"""Without events (silence), the checkpoint is still written after this much new audio, so a
resume never asks the client for more than the audio it keeps (30 s by default)."""

SESSION_TTL_S = 3600
"""A session's keys expire this long after its last write (a live session writes every few seconds)."""

_EVENTS = {cls.type: cls for cls in (Partial, Final, Language, Error, End)}

# KEYS: hash, events. ARGV: epoch, checkpoint JSON, ttl, ended flag, events JSON...
# Returns 1 (written), 0 (another gateway took the session over), -1 (the session is not in Redis:
# Redis lost it, e.g. restarted without persistence; the writer puts it back and writes again).
_WRITE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return -1 end
if epoch ~= ARGV[1] then return 0 end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if #ARGV >= 5 then redis.call('LTRIM', KEYS[2], -4096, -1) end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'ended', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: hash, events. ARGV: owner. Returns {epoch, checkpoint, ended, events...} or {} if gone.
_TAKEOVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
local out = {epoch, redis.call('HGET', KEYS[1], 'checkpoint') or '', redis.call('HGET', KEYS[1], 'ended') or '0'}
for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = e end
return out
"""


def event_from_dict(data: dict) -> Event:
    data = dict(data)
    cls = _EVENTS[data.pop("type")]
    if cls is Final and data.get("words") is not None:
        data["words"] = tuple(WordTiming(**w) for w in data["words"])
    if cls is Final and "sentiment" in data:
        data["analyzed"] = True
        data["sentiment"] = None if data["sentiment"] is None else Sentiment.from_dict(data["sentiment"])
    return cls(**data)


def _checkpoint_json(live: LiveSession, checkpoint: Checkpoint) -> str:
    # The client counts samples at its own rate: the position it must send again from, in its units.
    client = checkpoint.position * live.sample_rate // SAMPLE_RATE
    return json.dumps({**checkpoint.to_dict(), "client_position": client})


@dataclass
class _Writer:
    live: LiveSession
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    epoch: int = 1
    written_position: int = -1
    meta: dict = field(default_factory=dict)
    """What :meth:`LiveStore.track` wrote first, to write again if Redis loses the session."""


class LiveStore:
    """One per gateway. ``on_fenced(live)`` is called when another gateway took a session over."""

    def __init__(
        self, redis_url: str, *, gateway_id: str, resume_grace_s: float, prefix: str = "malsori",
        on_fenced: Callable[[LiveSession], None] | None = None,
    ) -> None:  # fmt: skip
        self.gateway_id = gateway_id
        self.resume_grace_s = resume_grace_s
        self.prefix = prefix
        self.on_fenced = on_fenced
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2.0, health_check_interval=10)
        self._write = self._redis.register_script(_WRITE)
        self._takeover = self._redis.register_script(_TAKEOVER)
        self._writers: dict[str, _Writer] = {}
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self.adopted = 0
        """Sessions this gateway took over from another (for /stt/status and tests)."""
        self.write_failures = 0

    @property
    def _channel(self) -> str:
        return f"{self.prefix}:live:takeovers"

    def start(self) -> None:
        """Listen for takeovers (from the event loop): a gateway that resumed one of our sessions says
        so at once, so we let go of it now rather than at its next write."""
        self._listener = asyncio.create_task(self._listen_takeovers(), name="live-takeovers")

    async def _listen_takeovers(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            session_id, _, epoch = message["data"].decode().partition(" ")
                            writer = self._writers.get(session_id)
                            if writer is not None and writer.epoch < int(epoch):
                                self._fenced(writer.live)
            except redis.RedisError as exc:
                log.warning("live takeovers: Redis unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)

    def _fenced(self, live: LiveSession) -> None:
        log.info("live session %s: taken over by another gateway; letting go of it here", live.id)
        self._writers.pop(live.id, None)
        if self.on_fenced is not None:
            self.on_fenced(live)

    def _keys(self, session_id: str) -> list[str]:
        key = f"{self.prefix}:live:s:{session_id}"
        return [key, f"{key}:events"]

    # -- writing (the Journal) -------------------------------------------------------------------------
    def track(self, live: LiveSession) -> None:
        """Keep ``live`` (just created here) in Redis from now on."""
        self._start(live, epoch=1, create=True)

    def _start(self, live: LiveSession, *, epoch: int, create: bool = False) -> None:
        meta = {
            "token": live.token, "sample_rate": live.sample_rate, "encoding": live.encoding, "protocol": live.protocol,
            "labels": json.dumps(live.labels), "config": json.dumps(live.session.config.to_dict()), "owner": self.gateway_id,
            "ended": "0", "tenant": live.tenant_id or "",
        }  # fmt: skip
        writer = self._writers[live.id] = _Writer(live, epoch=epoch, meta=meta)
        if create:
            checkpoint = _checkpoint_json(live, live.session.checkpoint())
            writer.queue.put_nowait(("create", {**meta, "epoch": epoch, "checkpoint": checkpoint}))
        writer.task = task = asyncio.create_task(self._run(live, writer), name=f"live-journal-{live.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        live.journal = self

    def publish(self, live: LiveSession, events: Sequence[Event], deliver: Deliver | None) -> None:
        writer = self._writers.get(live.id)
        if writer is None:  # let go of (fenced, shut down): nothing more goes out
            return
        checkpoint = live.session.checkpoint()
        if not events and checkpoint.position - writer.written_position < CHECKPOINT_EVERY_S * SAMPLE_RATE:
            return
        writer.written_position = checkpoint.position
        ended = any(isinstance(e, End) for e in events)
        writer.queue.put_nowait(("write", list(events), _checkpoint_json(live, checkpoint), ended, deliver))

    async def _run(self, live: LiveSession, writer: _Writer) -> None:
        keys = self._keys(live.id)
        while True:
            item = await writer.queue.get()
            if item[0] == "create":
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        pipe.hset(keys[0], mapping=item[1])
                        pipe.delete(keys[1])
                        pipe.expire(keys[0], SESSION_TTL_S)
                        await pipe.execute()
                except redis.RedisError as exc:
                    self.write_failures += 1
                    log.warning("live session %s: not kept in Redis (%s); it can resume on this gateway only", live.id, exc)
                continue
            if item[0] == "stop":
                return
            _, events, checkpoint, ended, deliver = item
            ttl = max(1, round(self.resume_grace_s + 5)) if ended else SESSION_TTL_S
            args = [writer.epoch, checkpoint, ttl, "1" if ended else "0", *(json.dumps(e.to_dict()) for e in events)]
            try:
                written = await self._write(keys=keys, args=args)
                if written == -1:  # Redis lost the session (restarted): put it back, then write
                    log.warning("live session %s: not in Redis any more; writing it again", live.id)
                    await self._redis.hset(keys[0], mapping={**writer.meta, "epoch": writer.epoch, "checkpoint": checkpoint})
                    written = await self._write(keys=keys, args=args)
            except redis.RedisError as exc:
                # Availability first: the client gets its events; only a resume elsewhere may miss them.
                self.write_failures += 1
                log.warning("live session %s: events not kept in Redis (%s)", live.id, exc)
                written = 1
            if written == 0:
                if self._writers.get(live.id) is writer:
                    self._fenced(live)
                return
            if deliver is not None:
                for event in events:
                    deliver(event)
            if ended:
                self._writers.pop(live.id, None)
                return

    def forget(self, live: LiveSession) -> None:
        """Stop writing ``live`` (released): what is queued is written, then nothing more."""
        writer = self._writers.pop(live.id, None)
        if writer is not None:
            writer.queue.put_nowait(("stop",))

    async def flush(self, timeout: float = 5.0) -> None:
        """Write what is queued (shutdown), at most ``timeout`` seconds."""
        for writer in self._writers.values():
            writer.queue.put_nowait(("stop",))
        self._writers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in [*self._tasks, *([self._listener] if self._listener else [])]:
            task.cancel()
        self._writers.clear()
        await self._redis.aclose()

    # -- resuming elsewhere ------------------------------------------------------------------------
    async def adopt(
        self, session_id: str, token: str | None, manager: SessionManager, runner: LiveRunner, *, tenant_id: str | None = None
    ) -> None:
        """Make sure the session a client resumes is here and current: taken over from the gateway
        that ran it (restored from Redis) unless this gateway runs it and still owns it. A session
        Redis does not know is left to the local registry (which says ``not_found``)."""
        keys = self._keys(session_id)
        try:
            stored = await self._redis.hmget(keys[0], ["token", "epoch", "tenant"])
        except redis.RedisError as exc:
            log.warning("live session %s: Redis unreachable (%s); resuming from this gateway only", session_id, exc)
            return
        if stored[0] is None:
            return
        owner = stored[2].decode() if isinstance(stored[2], bytes) else (stored[2] or "")
        if tenant_id is not None and owner != tenant_id:  # another tenant's session: as if unknown
            raise NotFoundError(f"no live session {session_id!r} (it ended, or its grace period ran out)")
        expected = stored[0] if isinstance(stored[0], bytes) else str(stored[0]).encode()
        if not token or not secrets.compare_digest(token.encode(), expected):
            raise AuthError("wrong resume token for this session")
        local = manager.get(session_id)
        writer = self._writers.get(session_id)
        if local is not None and writer is not None and writer.epoch == int(stored[1] or 0):
            return  # ours and current: the ordinary resume
        if local is not None:
            runner.release(local)  # a stale copy: the session went on elsewhere since
        result = await self._takeover(keys=keys, args=[self.gateway_id])
        if not result:
            return
        meta = await self._redis.hgetall(keys[0])
        epoch, checkpoint_raw, ended, raw_events = int(result[0]), result[1], result[2] in (b"1", "1"), result[3:]
        live = self._restore(session_id, meta, json.loads(checkpoint_raw), [json.loads(e) for e in raw_events], manager)
        manager.adopt(live)
        manager.detach(live)  # waits (for its grace period) for the connection that resumes it
        self.adopted += 1
        with contextlib.suppress(redis.RedisError):  # else the other gateway lets go at its next write (fenced)
            await self._redis.publish(self._channel, f"{session_id} {epoch}")
        if ended:
            live.ended = True
            return
        self._start(live, epoch=epoch)
        runner.start(live)
        log.info("live session %s: taken over (epoch %d), going on from %.2f s", session_id, epoch, live.session.audio_seconds)

    def _restore(self, session_id: str, meta: dict, checkpoint: dict, events: list[dict], manager: SessionManager) -> LiveSession:
        text = {k.decode(): v.decode() for k, v in meta.items()}
        options = json.loads(text["config"])
        config = StreamConfig.from_preset(options.pop("preset"), **options)
        client_position = int(checkpoint.pop("client_position"))
        rate = int(text["sample_rate"])
        log_events = [event_from_dict(e) for e in events]
        restored = Checkpoint.from_dict(checkpoint)
        restored = Checkpoint.from_dict(
            {
                **restored.to_dict(),
                # Where the resent audio will start, at 16 kHz (exact at 16 kHz; within a sample otherwise).
                "position": round(client_position * SAMPLE_RATE / rate),
                "seq": max([restored.seq, *(e.seq for e in log_events)]),
            }
        )
        live = LiveSession(
            id=session_id,
            token=text["token"],
            session=StreamingSession.restore(config, restored, vad=manager.new_vad()),
            sample_rate=rate,
            encoding=text["encoding"],
            labels=json.loads(text.get("labels") or "{}"),
            protocol=text.get("protocol", "v1"),
            received_samples=client_position,
            tenant_id=text.get("tenant") or None,
        )
        live.log.extend(log_events)
        return live


def gateway_id() -> str:
    return f"gw-{secrets.token_hex(4)}-{int(time.time()) % 100000}"
