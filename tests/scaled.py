"""Real pieces of a scaled-out deployment for tests: PostgreSQL databases, worker processes.

(``redis-server`` itself: ``tests/redisserver.py`` and the ``redis_server`` fixture.)

- :func:`pg_database`: a fresh PostgreSQL database on the machine's server (``MALSORI_TEST_PG``).
- :class:`WorkerProcess`: ``malsori worker`` in a subprocess with its own log; ``kill()`` is SIGKILL.

Gateways are ``conftest.LiveServer`` processes (or in-process apps) given :func:`scaled_env`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from logscan import remember_log

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("MALSORI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(PG_SERVER)
    name = f"malsori_scale_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"no PostgreSQL server answers at {server.render_as_string(hide_password=True)}: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def scaled_env(redis_url: str, db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment every gateway and worker of one deployment shares (fast heartbeats for tests)."""
    return {
        "MALSORI__QUEUE__BROKER_URL": redis_url,
        "MALSORI__STORAGE__URL": db_url,
        "MALSORI__SERVER__DATA_DIR": str(data_dir),
        "MALSORI__QUEUE__HEARTBEAT_S": "0.5",
        # Well above the heartbeat: tests run at nice 19 beside benchmarks, and a starved heartbeat
        # must not pass for a dead worker.
        "MALSORI__QUEUE__WORKER_TTL_S": "8",
        **extra,
    }


class WorkerProcess:
    """``malsori worker`` in a subprocess; ``start()`` returns once it is in the registry."""

    def __init__(self, name: str, queues: str, env: dict[str, str], logdir: Path) -> None:
        self.name, self.queues, self.env = name, queues, dict(env)
        self.log_path = logdir / f"worker-{name}.log"
        remember_log(self.log_path)
        self.process: subprocess.Popen | None = None
        self.metrics_url: str | None = None

    def start(self, timeout: float = 300.0) -> WorkerProcess:
        import redis

        command = [sys.executable, "-m", "malsori.cli.app", "worker", "--queues", self.queues, "--name", self.name]
        command += ["--log-level", "info"]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        self.process = subprocess.Popen(command, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        prefix = self.env.get("MALSORI__QUEUE__KEY_PREFIX", "malsori")
        client = redis.Redis.from_url(self.env["MALSORI__QUEUE__BROKER_URL"])
        deadline = time.monotonic() + timeout
        while not client.exists(f"{prefix}:worker:{self.name}"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)  # polling the registry, the worker's readiness probe
        # Announced before Celery consumes: wait for Celery's own "ready" line too.
        while b"ready." not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start consuming:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up, no acknowledgement, no goodbye in the registry."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
