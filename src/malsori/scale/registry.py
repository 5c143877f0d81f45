"""What every gateway and worker shares in Redis: who the workers are, the routing mode, counters.

- A worker announces itself every ``heartbeat_s`` as ``<prefix>:worker:<name>`` (JSON, expires after
  ``worker_ttl_s``) and is a member of ``<prefix>:workers``: its queues, device, model, capacity, how
  busy it is. A key that expired is a dead worker (killed, machine lost, cut off from Redis).
- ``<prefix>:routing_mode``: ``auto``, ``cpu`` or ``gpu``, set from any gateway's panel.
- ``<prefix>:stats``: counters (``gpu_fallbacks``: tasks a GPU worker failed and handed to the CPU queue).

Every call is one short Redis round trip; callers in asyncio code run them in a thread.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

__all__ = ["WorkerInfo", "Registry", "default_worker_name"]


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerInfo:
    name: str
    queues: tuple[str, ...]
    device: str
    model: str
    compute_type: str = ""
    capacity: int = 1
    """Tasks it runs at once."""
    running: int = 0
    """Tasks running at the last heartbeat."""
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)
    heartbeat_at: float = 0.0
    jobs: tuple[str, ...] = ()
    """Ids of the jobs it is running (the sweep requeues a job its worker no longer runs)."""
    live_address: str | None = None
    """Where its live-window server listens, when it runs one (docs/scaling.md)."""
    metrics_port: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.device not in ("cpu", "")

    def to_json(self) -> str:
        data = asdict(self)
        data["queues"] = list(self.queues)
        data["jobs"] = list(self.jobs)
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerInfo:
        data = json.loads(raw)
        data["queues"] = tuple(data.get("queues", ()))
        data["jobs"] = tuple(data.get("jobs", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """What /stt/status and the panel show."""
        return {
            "name": self.name,
            "queues": list(self.queues),
            "device": self.device,
            "model": self.model,
            "compute_type": self.compute_type,
            "capacity": self.capacity,
            "running": self.running,
            "heartbeat_age_s": round(max(0.0, time.time() - self.heartbeat_at), 1),
            "ready": True,
        }


class Registry:
    def __init__(self, url: str, *, prefix: str = "malsori", ttl_s: float = 10.0) -> None:
        # Short socket timeouts: a Redis restart must not hang a gateway's /is_ready or a heartbeat.
        # Any: redis-py types its sync client's replies as "value or awaitable" (its async twin's).
        self.redis: Any = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0, health_check_interval=10)
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- workers -----------------------------------------------------------------------------------
    def announce(self, info: WorkerInfo) -> None:
        info.heartbeat_at = time.time()
        pipe = self.redis.pipeline()
        pipe.set(self.key("worker", info.name), info.to_json(), px=int(self.ttl_s * 1000))
        pipe.sadd(self.key("workers"), info.name)
        pipe.execute()

    def withdraw(self, name: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.key("worker", name))
        pipe.srem(self.key("workers"), name)
        pipe.execute()

    def alive(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired, by name; forgets the expired ones."""
        names = sorted(n.decode() for n in self.redis.smembers(self.key("workers")))
        if not names:
            return []
        raws = self.redis.mget([self.key("worker", n) for n in names])
        dead = [n for n, raw in zip(names, raws, strict=True) if raw is None]
        if dead:
            self.redis.srem(self.key("workers"), *dead)
        return [WorkerInfo.from_json(raw) for raw in raws if raw is not None]

    def is_alive(self, name: str) -> bool:
        return bool(self.redis.exists(self.key("worker", name)))

    # -- shared settings and counters --------------------------------------------------------------
    def routing_mode(self) -> str:
        raw = self.redis.get(self.key("routing_mode"))
        return raw.decode() if raw else "auto"

    def set_routing_mode(self, mode: str) -> None:
        self.redis.set(self.key("routing_mode"), mode)

    def count(self, name: str, n: int = 1) -> None:
        self.redis.hincrby(self.key("stats"), name, n)

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.key("stats")).items()}

    def close(self) -> None:
        self.redis.close()
