"""Scale-out throughput: the 32 LJ Speech clips as jobs, in-process default vs Celery workers, one run.

Three deployments, one after the other on the same machine, each given the same 32 jobs at once:

- ``in-process``: ``malsori serve`` as ``make run`` starts it (SQLite, no Redis, its own job runner);
- ``1 worker``: a gateway, redis-server, PostgreSQL and one ``malsori worker`` (every core);
- ``2 workers``: the same with two workers, each given half the cores (``--worker-threads``).

For each: wall time from the first submission to the last job finished, audio seconds per wall
second, jobs per minute, word error rate over the 32 transcripts, and which worker ran how many.

    flock /tmp/malsori-bench.lock nice -n 0 .venv/bin/python bench/scale.py [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import REPO, TESTDATA, free_port, machine_line, replace_section

from malsori.evaluation import load_manifest, wer

PG_SERVER = os.environ.get("MALSORI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@dataclass
class Result:
    name: str
    wall_s: float
    audio_s: float
    jobs: int
    wer: float
    workers: dict[str, int]
    failed: int

    def row(self) -> str:
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(self.workers.items()))
        return (
            f"| {self.name} | {self.jobs} | {self.wall_s:.1f} | {self.audio_s / self.wall_s:.2f} | "
            f"{60 * self.jobs / self.wall_s:.1f} | {100 * self.wer:.1f} | {self.failed} | {spread} |"
        )


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/is_ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - the child writes to it for its whole life
    return subprocess.Popen(
        [sys.executable, "-m", "malsori.cli.app", *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(PG_SERVER)
    name = f"malsori_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def run_jobs(name: str, url: str, clips) -> Result:
    started = time.perf_counter()
    ids = []
    for clip in clips:
        files = {"file": (clip.path.name, clip.path.read_bytes())}
        response = httpx.post(f"{url}/v1/jobs", files=files, data={"language": "en"}, timeout=60)
        response.raise_for_status()
        ids.append(response.json()["id"])
    done: dict[str, dict] = {}
    while len(done) < len(ids):
        for job_id in ids:
            if job_id not in done:
                job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
        time.sleep(0.2)
    wall = time.perf_counter() - started
    jobs = [done[i] for i in ids]
    texts = " ".join((j.get("result") or {}).get("text", "") for j in jobs)
    reference = " ".join(c.reference.replace("(", " ").replace(")", " ") for c in clips)
    return Result(
        name=name,
        wall_s=wall,
        audio_s=sum(c.duration for c in clips),
        jobs=len(jobs),
        wer=wer(reference, texts),
        workers=dict(Counter(j.get("worker") or "in-process" for j in jobs)),
        failed=sum(j["state"] != "succeeded" for j in jobs),
    )


def in_process(clips, root: Path) -> Result:
    port = free_port()
    server = _spawn(
        ["serve", "--port", str(port), "--data-dir", str(root / "inproc"), "--log-level", "warning"], {}, root / "inproc.log"
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server, root / "inproc.log")
        return run_jobs("in-process (make run)", f"http://127.0.0.1:{port}", clips)
    finally:
        _stop([server])


def scaled(clips, root: Path, workers: int, threads: int) -> Result:
    data = root / f"scaled{workers}"
    with _redis(root) as redis_url, _pg_database() as db:
        env = {
            "MALSORI__QUEUE__BROKER_URL": redis_url,
            "MALSORI__STORAGE__URL": db,
            "MALSORI__SERVER__DATA_DIR": str(data),
        }
        worker_env = {**env, "MALSORI__ENGINE__CPU_THREADS": str(threads)}
        processes = [
            _spawn(
                ["worker", "--queues", "stt.cpu", "--name", f"w{n + 1}", "--log-level", "warning"],
                worker_env,
                root / f"w{n + 1}.log",
            )
            for n in range(workers)
        ]
        port = free_port()
        gateway = _spawn(["serve", "--port", str(port), "--log-level", "warning"], env, root / f"gateway{workers}.log")
        processes.append(gateway)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", gateway, root / f"gateway{workers}.log")
            deadline = time.monotonic() + 120  # the gateway is ready at the first worker: wait for every one
            while len(httpx.get(f"http://127.0.0.1:{port}/stt/status", timeout=10).json()["scale"]["workers"]) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every worker announced itself")
                time.sleep(0.2)
            label = f"{workers} worker{'s' if workers > 1 else ''} ({threads or 'all'} thread{'s' if threads != 1 else ''} each)"
            return run_jobs(label, f"http://127.0.0.1:{port}", clips)
        finally:
            _stop(processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--worker-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--write", action="store_true", help="replace the scale-out section of docs/benchmarks.md")
    args = parser.parse_args()
    clips = [c for c in load_manifest(TESTDATA) if "ljspeech" in str(c.path)][: args.clips]
    with tempfile.TemporaryDirectory(prefix="malsori-bench-scale-") as tmp:
        root = Path(tmp)
        results = [
            in_process(clips, root),
            scaled(clips, root, 1, 0),
            scaled(clips, root, 2, args.worker_threads),
        ]
    lines = [
        f"Machine: {machine_line()}. {len(clips)} LJ Speech clips ({sum(c.duration for c in clips):.0f} s of audio) "
        "submitted at once as jobs to one gateway; Whisper base int8, beam 5; each deployment started fresh, one after another.",
        "",
        "| deployment | jobs | wall s | audio s per s | jobs per min | WER % | failed | jobs per worker |",
        "|---|---|---|---|---|---|---|---|",
        *[r.row() for r in results],
        "",
        "Command: `flock /tmp/malsori-bench.lock nice -n 0 .venv/bin/python bench/scale.py --write`",
    ]
    print("\n".join(lines))
    if args.write:
        replace_section("## Scale-out: file jobs on Celery workers", "\n".join(lines))
    return 0 if all(r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
