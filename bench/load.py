"""HTTP load: N concurrent clients sending real speech to POST /v1/audio/transcriptions.

For each N (default 1, 4, 16) the clients share a bounded list of requests (the LJ Speech clips of
``shared/testdata/en/ljspeech``, each sent once per level by default) and a time limit, and the script
reports throughput (requests/s and audio seconds per second), p50/p95 latency, word error rate of
the answers, errors by status (429s apart: they are admission control doing its job; a client waits
Retry-After and sends that clip again) and how many windows the server's scheduler decoded per batch
(from /stt/status). Loopback only: it starts ``malsori serve`` on a free port of 127.0.0.1 with a
fresh data directory, or takes ``--url`` of a server on this machine.

With ``--cli`` the same clips are also transcribed the way the CLI does it, in this process, once before
the levels and once after them (the server idle): ``Pipeline(Transcriber).transcribe_many`` over all of
them at once, as ``bench/files.py``'s "malsori batched" (same model, beam 5, ``language=en``, audio
decoding excluded), so the widest level's throughput is compared with the CLI's batched throughput of
the same session on the same files.

Run it alone on the machine::

    flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python bench/load.py --cli --write
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from common import DOC, REPO, TESTDATA, cpu_name, free_port, replace_block, serve_command  # puts src/ on sys.path

from malsori.evaluation import corpus_wer, load_manifest

SECTION = "## HTTP load"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes
    seconds: float
    reference: str


@dataclass
class Level:
    concurrency: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    refused_429: int = 0
    transport_errors: int = 0
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    batches: int = 0
    windows: int = 0
    unfinished: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        """Failures other than deliberate 429s."""
        return sum(n for status, n in self.statuses.items() if status not in (200, 429)) + self.transport_errors

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_server(data_dir: Path, model: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(port, "--model", model, "--log-level", "warning", data_dir=data_dir)
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes to it for its whole life
    # This tree's code, not whichever malsori the interpreter has installed (a worktree's venv link
    # points at another checkout's editable install).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/is_ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server was not ready after 300 s; see {log_path}")


def load_clips(limit: int | None) -> list[Clip]:
    clips = [c for c in load_manifest(TESTDATA) if "ljspeech" in str(c.path)]
    clips = sorted(clips, key=lambda c: c.path.name)[:limit]
    return [Clip(c.path.name, c.path.read_bytes(), c.duration, c.reference) for c in clips]


async def scheduler_counts(client: httpx.AsyncClient) -> tuple[int, int]:
    status = (await client.get("/stt/status")).json()
    sched = status.get("scheduler") or {}
    return int(sched.get("batches", 0)), int(sched.get("windows", 0))


async def run_level(
    url: str, clips: list[Clip], concurrency: int, requests: int, max_seconds: float, language: str = "en"
) -> Level:
    level = Level(concurrency)
    todo = [clips[i % len(clips)] for i in range(requests)]
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits, trust_env=False) as client:
        batches0, windows0 = await scheduler_counts(client)
        started = time.perf_counter()
        deadline = started + max_seconds

        async def one_client() -> None:
            while todo and time.perf_counter() < deadline:
                clip = todo.pop(0)
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/audio/transcriptions",
                        files={"file": (clip.name, clip.data, "audio/flac")},
                        data={"model": "whisper-1", "language": language, "response_format": "json"},
                    )
                except httpx.HTTPError:
                    level.transport_errors += 1
                    continue
                level.statuses[response.status_code] = level.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    level.latencies.append(time.perf_counter() - sent)
                    level.audio_s += clip.seconds
                    level.references.append(clip.reference)
                    level.hypotheses.append(response.json()["text"])
                elif response.status_code == 429:
                    level.refused_429 += 1
                    todo.append(clip)  # admission control said later: send it again after Retry-After
                    await asyncio.sleep(min(10.0, float(response.headers.get("retry-after", "1"))))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - started
        level.unfinished = len(todo)
        batches1, windows1 = await scheduler_counts(client)
    level.batches, level.windows = batches1 - batches0, windows1 - windows0
    return level


@dataclass(frozen=True)
class CliRun:
    wall_s: float
    audio_s: float
    wer: float


class Cli:
    """The CLI's batched transcription of the clips, in this process (see the module docstring)."""

    def __init__(self, model: str, clips: list[Clip], beam: int = 5) -> None:
        from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber, decode_audio

        self.pipeline = Pipeline(Transcriber(EngineConfig(model=model, device="cpu", compute_type="int8")))
        self.options = TranscribeOptions(beam_size=beam, language="en")
        self.audios = [decode_audio(c.data) for c in clips]
        self.references = [c.reference for c in clips]
        self.pipeline.transcribe(self.audios[0], self.options)  # warm-up, untimed
        self.runs: list[CliRun] = []

    def run(self) -> CliRun:
        started = time.perf_counter()
        texts = [t.text for t in self.pipeline.transcribe_many(self.audios, self.options)]
        wall = time.perf_counter() - started
        self.runs.append(CliRun(wall, sum(len(a) for a in self.audios) / 16000, corpus_wer(self.references, texts)))
        return self.runs[-1]


def table(levels: list[Level]) -> list[str]:
    rows = [
        "| clients | requests ok | wall s | requests/s | audio s/s | p50 latency s | p95 latency s | WER "
        "| windows per batch | 429s | other errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        wer = corpus_wer(lv.references, lv.hypotheses) if lv.references else float("nan")
        other = ", ".join(f"{s}: {n}" for s, n in sorted(lv.statuses.items()) if s not in (200, 429))
        if lv.transport_errors:
            other = (other + ", " if other else "") + f"transport: {lv.transport_errors}"
        rows.append(
            f"| {lv.concurrency} | {lv.ok} | {lv.wall_s:.1f} | {lv.ok / lv.wall_s:.2f} | {lv.audio_s / lv.wall_s:.1f} | "
            f"{lv.percentile(0.5):.2f} | {lv.percentile(0.95):.2f} | {wer * 100:.1f}% | "
            f"{(lv.windows / lv.batches if lv.batches else 0):.2f} | {lv.refused_429} | {other or 0} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on this machine (default: start one on a free loopback port)")
    parser.add_argument("--model", default="base", help="model of the server this script starts (default base)")
    parser.add_argument("--concurrency", default="1,4,16", help="client counts to run, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (default: each of the 32 clips once)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time limit per level")
    parser.add_argument("--clips", type=int, default=None, help="use only the first N LJ Speech clips")
    parser.add_argument("--cli", action="store_true", help="also time the CLI's batched transcription of the clips (see above)")
    parser.add_argument("--write", action="store_true", help=f"write the results into {DOC.relative_to(REPO)}")
    args = parser.parse_args()

    levels_wanted = [int(n) for n in args.concurrency.split(",") if n.strip()]
    clips = load_clips(args.clips)
    process = None
    scratch = tempfile.TemporaryDirectory(prefix="malsori-load-")
    if args.url:
        if urlsplit(args.url).hostname not in LOOPBACK:
            raise SystemExit("--url must be a server on this machine (127.0.0.1, localhost or ::1)")
        url = args.url.rstrip("/")
    else:
        process, url = start_server(Path(scratch.name) / "data", args.model, Path(scratch.name) / "server.log")
    cli = Cli(args.model, clips) if args.cli else None
    try:
        if cli is not None:
            print(f"cli: {cli.run().wall_s:.1f} s", flush=True)
        # One untimed request so the first level does not pay for first-call setup.
        asyncio.run(run_level(url, clips[:1], 1, 1, 60.0))
        levels = []
        for n in levels_wanted:
            level = asyncio.run(run_level(url, clips, n, args.requests, args.max_seconds))
            levels.append(level)
            print(table([level])[-1], flush=True)
        if cli is not None:
            print(f"cli: {cli.run().wall_s:.1f} s", flush=True)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        scratch.cleanup()

    audio_total = sum(c.seconds for c in clips[: args.requests]) if args.requests <= len(clips) else None
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine}, server `malsori serve --model {args.model}` "
        f"(defaults otherwise: CPU int8, beam 5, the shared scheduler's batches of as many windows as the model "
        f"picks for the CPU, `engine.transcriber.auto_batch_size`), client and "
        f"server on the same machine over loopback.",
        "",
        "```",
        "flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python " + " ".join(["bench/load.py", *sys.argv[1:]]),
        "```",
        "",
        f"Each level sends {args.requests} requests (the LJ Speech clips of `shared/testdata`, 1.8 to 10 s each"
        + (f", {audio_total:.0f} s of audio in all" if audio_total else "")
        + f") to `POST /v1/audio/transcriptions` (`language=en`) from N concurrent clients, within {args.max_seconds:g} s. "
        "Latency is from sending a request to its full answer; WER is over the answers (Whisper normalizer); "
        "windows per batch is what the server's scheduler decoded per model call during the level.",
        "",
        *table(levels),
    ]
    sequential = next((lv for lv in levels if lv.concurrency == 1), None)
    widest = max(levels, key=lambda lv: lv.concurrency)
    if sequential is not None and widest is not sequential:
        ratio = (widest.ok / widest.wall_s) / (sequential.ok / sequential.wall_s)
        lines += [
            "",
            f"At {widest.concurrency} clients: {widest.errors} errors other than 429s, {widest.refused_429} 429s, "
            f"throughput {ratio:.2f}x that of sequential requests.",
        ]
    if cli is not None and cli.runs:
        cli_speed = sum(r.audio_s for r in cli.runs) / sum(r.wall_s for r in cli.runs)
        wide_speed = widest.audio_s / widest.wall_s
        lines += [
            "",
            f"The CLI's batched transcription of the same {len(clips)} clips in the same session (`Pipeline.transcribe_many`, "
            f"as `bench/files.py`'s malsori batched; audio decoding excluded), before and after the levels: "
            + ", ".join(f"{r.wall_s:.1f} s ({r.audio_s / r.wall_s:.1f}x, WER {r.wer * 100:.1f}%)" for r in cli.runs)
            + f"; together {cli_speed:.1f}x. {widest.concurrency} clients reach {wide_speed / cli_speed:.0%} of it"
            + (f"; sequential requests {(sequential.audio_s / sequential.wall_s) / cli_speed:.0%}." if sequential else "."),
        ]
        if sequential is not None and widest is not sequential:
            over_seq, over_cli = wide_speed / (sequential.audio_s / sequential.wall_s), wide_speed / cli_speed
            lines += [
                "",
                f"Targets (issue 17) at {widest.concurrency} clients: throughput at least 3x sequential: "
                f"{'met' if over_seq >= 3 else 'not met'} ({over_seq:.2f}x); at least 80% of the CLI's batched: "
                f"{'met' if over_cli >= 0.8 else 'not met'} ({over_cli:.0%}).",
            ]
    body = "\n".join(lines)
    print()
    print(body)
    if args.write:
        replace_block(SECTION, "bench/load.py", body)
    failed = widest.errors > 0 or (sequential is not None and widest.ok / widest.wall_s < sequential.ok / sequential.wall_s)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
