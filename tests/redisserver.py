"""A real ``redis-server`` (Debian's package) on a free loopback port, for the scale-out tests.

The ``redis_server`` fixture in ``conftest.py`` starts one per test module. A machine without the
server gets it from apt-get first (as ``test_browser.py`` does for Chromium), so ``make test`` on a
fresh machine needs nothing installed by hand. ``restart()`` keeps the port and the data directory
(with ``appendonly=True`` the data survives it, as a production Redis with AOF would).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["RedisServer", "ensure_redis_server"]


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)


def ensure_redis_server() -> str:
    """The path of ``redis-server``, installing Debian's package when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("redis-server is missing and there is no apt-get to install it (Debian package 'redis-server')")
    result = _apt_get("install", "-y", "-q", "redis-server")
    if result.returncode != 0:  # a fresh machine has no package lists yet
        _apt_get("update", "-q")
        result = _apt_get("install", "-y", "-q", "redis-server")
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"apt-get install redis-server failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return found


class RedisServer:
    """One ``redis-server`` process; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, data_dir: Path, *, appendonly: bool = True) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.log_path = data_dir / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        import redis

        binary = ensure_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--logfile", str(self.log_path),
            "--protected-mode", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server not answering after {timeout} s:\n{self.log_tail()}") from None
                time.sleep(0.05)  # polling a readiness probe, not waiting for an outcome
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (no final AOF rewrite)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
