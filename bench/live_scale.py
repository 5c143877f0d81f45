"""Live decoding on workers (issue 11): what the gateway → worker hop costs, and by which transport.

1. **Transport**: round trip of one live window request through an echo worker that parses it and
   answers a reply of the real size (no decoding), one request in flight, for three transports over
   the same Redis: a Redis list (RPUSH, BLPOP; what malsori uses), a Redis stream (XADD,
   XREADGROUP, XACK; reply on a stream), and a Celery task per batch (JSON arguments, the audio as
   base64; Redis result backend). Windows of 2 s and 10 s (float32, 128 kB and 640 kB).
2. **Live final latency**: the LJ Speech talk streamed at real-time pace (bench/streaming.py's
   client and scoring) to ``malsori serve`` in one process, and to a gateway with
   ``MALSORI__QUEUE__BROKER_URL`` set whose live windows ``malsori worker`` decodes; same run,
   alternating, a warm-up stream each first. Target: the hop adds at most 150 ms to final p50.

    flock /tmp/malsori-bench.lock .venv/bin/python bench/live_scale.py --write
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from common import REPO, free_port, machine_line, replace_section, serve_command
from streaming import Scores, Server, load_talk, pct, start_malsori, stream_malsori

from malsori.engine.options import TranscribeOptions
from malsori.engine.types import Segment
from malsori.engine.windows import Window, WindowResult
from malsori.scale.live_wire import WindowRequest, decode_reply, decode_request, encode_reply, encode_request

TITLE = "## Live through a worker (issue 11)"
SR = 16000
TEXT = " a reply of the usual size, some twenty words of text " * 2
REPLY = WindowResult((Segment(0, 0.0, 2.0, TEXT, -0.2, 0.01),), "en", 0.99, 0.01, -0.2, 1.2, 0.0)


# -- echo workers (one process each) -------------------------------------------------------------------
def echo_list(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    while True:
        _, data = r.blpop(["hop:list"])
        request = decode_request(data)
        r.rpush(request.reply_to, encode_reply(request.id, [REPLY] * len(request.windows), worker="echo"))


def echo_stream(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ResponseError):  # the group exists already
        r.xgroup_create("hop:stream", "workers", id="0", mkstream=True)
    while True:
        for _, entries in r.xreadgroup("workers", "echo", {"hop:stream": ">"}, count=1, block=0):
            for entry_id, fields in entries:
                request = decode_request(fields[b"r"])
                reply = encode_reply(request.id, [REPLY] * len(request.windows), worker="echo")
                r.xadd(request.reply_to, {"r": reply}, maxlen=1000)
                r.xack("hop:stream", "workers", entry_id)
                r.xdel("hop:stream", entry_id)


def celery_app(url: str):
    from celery import Celery

    app = Celery("hop", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="hop.echo")
    def echo(header: dict, audio: str) -> str:
        samples = np.frombuffer(base64.b64decode(audio), dtype=np.float32)
        assert len(samples) == sum(w["samples"] for w in header["windows"])
        return encode_reply(header["id"], [REPLY] * len(header["windows"]), worker="echo").decode()

    return app, echo


def echo_celery(url: str) -> None:
    app, _ = celery_app(url)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--loglevel=warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            "hop",
        ]
    )


# -- transport round trips -----------------------------------------------------------------------------
def request_for(seconds: float, reply_to: str) -> WindowRequest:
    audio = (np.random.default_rng(0).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
    return WindowRequest(uuid.uuid4().hex, reply_to, time.time() + 60, TranscribeOptions(), (Window(audio),), time.time())


def rtt_list(url: str, seconds: float, n: int) -> list[float]:
    import redis

    r = redis.Redis.from_url(url)
    out = []
    for _ in range(n):
        request = request_for(seconds, "hop:reply:list")
        t0 = time.perf_counter()
        r.rpush("hop:list", encode_request(request))
        _, data = r.blpop(["hop:reply:list"], timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        assert decode_reply(data)[0] == request.id
    return out


def rtt_stream(url: str, seconds: float, n: int) -> list[float]:
    import redis

    r = redis.Redis.from_url(url)
    r.delete("hop:reply:stream")
    last = "0-0"  # not "$": a reply that comes before XREAD blocks would be missed
    out = []
    for _ in range(n):
        request = request_for(seconds, "hop:reply:stream")
        t0 = time.perf_counter()
        r.xadd("hop:stream", {"r": encode_request(request)}, maxlen=1000)
        got = r.xread({"hop:reply:stream": last}, count=1, block=10000)
        out.append((time.perf_counter() - t0) * 1000)
        last = got[0][1][0][0]
        assert decode_reply(got[0][1][0][1][b"r"])[0] == request.id
    return out


def rtt_celery(url: str, seconds: float, n: int) -> list[float]:
    _, echo = celery_app(url)
    out = []
    for _ in range(n):
        request = request_for(seconds, "")
        t0 = time.perf_counter()
        data = encode_request(request)  # the same JSON header; the audio as base64 (JSON has no bytes)
        length = int.from_bytes(data[:4], "little")
        header, audio = json.loads(data[4 : 4 + length]), base64.b64encode(data[4 + length :]).decode()
        reply = echo.apply_async((header, audio), queue="hop").get(timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        assert decode_reply(reply.encode())[0] == request.id
    return out


def transports(url: str, n: int, log) -> list[list[str]]:
    rows = []
    for name, mode, measure in (
        ("Redis list (RPUSH / BLPOP)", "list", rtt_list),
        ("Redis stream (XADD / XREADGROUP)", "stream", rtt_stream),
        ("Celery task per batch (JSON, base64 audio)", "celery", rtt_celery),
    ):
        worker = subprocess.Popen(
            [sys.executable, __file__, "--echo", mode, "--redis", url],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            measure(url, 2.0, 5 if mode != "celery" else 1)  # the echo worker is up and warm (blocks until it answers)
            cells = [name]
            for seconds in (2.0, 10.0):
                values = measure(url, seconds, n)
                cells += [f"{statistics.median(values):.2f}", f"{np.percentile(values, 95):.2f}"]
            rows.append(cells)
            log("  " + " | ".join(cells))
        finally:
            worker.terminate()
            worker.wait(10)
    return rows


# -- live latency, in process vs through a worker ------------------------------------------------------
def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis.from_url(url).ping():
                return process, url
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_scaled(workdir: Path, url: str) -> tuple[Server, Server, str]:
    import httpx

    env = {"PYTHONPATH": str(REPO / "src"), "MALSORI__QUEUE__BROKER_URL": url}
    log_path = workdir / "worker.log"

    def worker_ready() -> bool:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        return "serving live windows" in text and "ready." in text  # the live server, then Celery

    command = [sys.executable, "-m", "malsori.cli.app", "worker", "--queues", "stt.cpu", "--name", "bench-live"]
    command += ["--log-level", "info"]
    worker = Server("worker", command, {**env, "MALSORI__SERVER__DATA_DIR": str(workdir / "worker-data")}, worker_ready, log_path)
    port = free_port()

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/is_ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    command = serve_command(port, "--log-level", "warning", data_dir=workdir / "gateway-data")
    gateway = Server("gateway", command, env, ready, workdir / "gateway.log")
    return gateway, worker, f"ws://127.0.0.1:{port}/v1/stream"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="first N LJ Speech clips as the talk (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each system")
    parser.add_argument("--trips", type=int, default=200, help="round trips per transport and window size")
    parser.add_argument("--write", action="store_true", help=f"write the figures into docs/benchmarks.md ({TITLE})")
    parser.add_argument("--echo", choices=("list", "stream", "celery"), help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        {"list": echo_list, "stream": echo_stream, "celery": echo_celery}[args.echo](args.redis)
        return

    def log(line: str) -> None:
        print(line, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="malsori-live-scale-"))
    redis_process, url = start_redis(workdir)
    servers: list[Server] = []
    try:
        log(f"transports ({args.trips} round trips each, ms: 2 s window p50, p95, 10 s window p50, p95)")
        transport_rows = transports(url, args.trips, log)
        talk = load_talk(args.clips)
        local, local_url = start_malsori(workdir)
        servers.append(local)
        gateway, worker, scaled_url = start_scaled(workdir, url)
        servers += [gateway, worker]
        systems = {"in process (malsori serve)": local_url, "through a worker (gateway + worker, Redis list)": scaled_url}
        warm = type(talk)("warm-up", talk.samples[: int(talk.phrases[0].end * SR)], talk.phrases[:1])
        for ws_url in systems.values():
            asyncio.run(stream_malsori(ws_url, warm))
        scores = {name: Scores() for name in systems}
        for r in range(args.rounds):
            for name, ws_url in systems.items():
                record = asyncio.run(stream_malsori(ws_url, talk))
                scores[name].add(talk, record)
                s = Scores()
                s.add(talk, record)
                log(
                    f"  round {r + 1} {name}: final p50 {pct(s.final_latency, 50):.3f} s, p95 {pct(s.final_latency, 95):.3f} s, "
                    f"missed {s.missed}, WER {100 * (s.wer or 0):.1f}%{' ERROR ' + record.error if record.error else ''}"
                )
                log("    finals: " + " | ".join(e[2] for e in record.events if e[1]))
        rows = []
        for name, s in scores.items():
            rows.append(
                [
                    name,
                    str(len(s.final_latency)),
                    f"{pct(s.final_latency, 50):.3f}",
                    f"{pct(s.final_latency, 95):.3f}",
                    f"{pct(s.first_text, 50):.3f}",
                    str(s.missed),
                    f"{100 * (s.wer or 0):.1f}",
                    str(len(s.errors)),
                ]
            )
        names = list(scores)
        added = pct(scores[names[1]].final_latency, 50) - pct(scores[names[0]].final_latency, 50)
        log(f"the hop adds {added * 1000:.0f} ms to final p50 (target: at most 150 ms)")
    finally:
        for server in servers:
            server.stop()
        redis_process.terminate()
        redis_process.wait(10)

    command = (
        "flock /tmp/malsori-bench.lock .venv/bin/python bench/live_scale.py --write"
        + (f" --clips {args.clips}" if args.clips != 16 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 2 else "")
    )
    body = "\n".join(
        [
            f"`{command}` · {machine_line()} · Whisper base int8, one Redis {redis_version()} on the same machine.",
            "",
            "**Transport of one live window request** (round trip through an echo worker that parses the request and",
            f"answers a reply of the usual size; one request in flight; {args.trips} trips each; ms):",
            "",
            "| transport | 2 s window p50 | p95 | 10 s window p50 | p95 |",
            "|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in transport_rows),
            "",
            f"**Live final latency**, the first {args.clips} LJ Speech clips as one talk at real-time pace, one stream,",
            f"{args.rounds} alternating runs of each system (final latency as in *Live streaming*):",
            "",
            "| system | finals | final p50 (s) | final p95 (s) | first text p50 (s) | missed | stream WER % | errors |",
            "|---|---|---|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            f"The hop adds **{added * 1000:.0f} ms** to final p50 (target: at most 150 ms).",
        ]
    )
    print(body)
    if args.write:
        replace_section(TITLE, body)


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((p.split("=")[1] for p in out.split() if p.startswith("v=")), "?")


if __name__ == "__main__":
    threading.current_thread().name = "main"
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))
    main()
