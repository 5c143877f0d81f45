"""Tenant isolation under load (issue 14): does one tenant over its rate limit slow another down?

A keyed ``malsori serve`` (fresh data dir, loopback, the model given by ``--model``) with two tenants:
``quiet`` (no limit) sends one LJ Speech clip to ``POST /v1/audio/transcriptions`` at a time, back
to back; ``noisy`` has ``requests_per_minute = --limit`` and sends clips open-loop at a fixed rate.
Three phases of ``--seconds`` each, same server, same run:

- **alone**: quiet only (the baseline);
- **at limit**: noisy at exactly its limit (every request admitted, so its work competes for the CPU);
- **limit + 50 %**: noisy at 1.5 times its limit (the excess must be refused with 429 cheaply).

The target: the quiet tenant's p95 in the third phase within 20 % of the second (the excess costs
nothing), reported beside the first (what the admitted share costs, which the limit bounds).

    flock /tmp/malsori-bench.lock .venv/bin/python bench/tenants_load.py --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import REPO, TESTDATA, free_port, machine_line, replace_section, serve_command

from malsori.tenants.limits import burst_for

SECTION = "## Tenants under load (issue 14)"


@dataclass
class Phase:
    name: str
    noisy_rate_per_min: float
    quiet: list[float] = field(default_factory=list)
    quiet_errors: int = 0
    noisy_sent: int = 0
    noisy_ok: int = 0
    noisy_429: int = 0
    noisy_429_ms: list[float] = field(default_factory=list)
    noisy_other: int = 0

    def p(self, q: float) -> float:
        data = sorted(self.quiet)
        return data[min(len(data) - 1, round(q * (len(data) - 1)))] if data else float("nan")


def _clip() -> bytes:
    return (TESTDATA / "en" / "ljspeech" / "LJ001-0002.flac").read_bytes()  # 1.9 s


def _keys(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    keys = {}
    for tenant in ("quiet", "noisy"):
        out = subprocess.run(
            [sys.executable, "-m", "malsori.cli.app", "keys", "create", "--tenant", tenant, "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=env, check=True, cwd=REPO,
        )  # fmt: skip
        keys[tenant] = out.stdout.strip().splitlines()[-1]
    return keys


def _run_phase(url: str, keys: dict[str, str], clip: bytes, phase: Phase, seconds: float) -> None:
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def post(client: httpx.Client, key: str) -> tuple[int, float]:
        started = time.perf_counter()
        r = client.post(
            f"{url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": ("clip.flac", clip)},
            data={"model": "whisper-1", "language": "en"},
            timeout=120,
        )
        return r.status_code, time.perf_counter() - started

    def quiet() -> None:
        with httpx.Client() as client:
            while time.monotonic() < stop:
                status, took = post(client, keys["quiet"])
                with lock:
                    if status == 200:
                        phase.quiet.append(took)
                    else:
                        phase.quiet_errors += 1

    def noisy_one() -> None:
        with httpx.Client() as client:
            status, took = post(client, keys["noisy"])
        with lock:
            if status == 200:
                phase.noisy_ok += 1
            elif status == 429:
                phase.noisy_429 += 1
                phase.noisy_429_ms.append(took * 1000)
            else:
                phase.noisy_other += 1

    threads = [threading.Thread(target=quiet)]
    for t in threads:
        t.start()
    if phase.noisy_rate_per_min > 0:
        interval = 60.0 / phase.noisy_rate_per_min
        next_at = time.monotonic()
        while next_at < stop:
            time.sleep(max(0.0, next_at - time.monotonic()))  # open loop: a fixed schedule, whatever the answers
            worker = threading.Thread(target=noisy_one)
            worker.start()
            threads.append(worker)
            phase.noisy_sent += 1
            next_at += interval
    for t in threads:
        t.join(180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--limit", type=int, default=30, help="the noisy tenant's requests per minute")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in docs/benchmarks.md")
    args = parser.parse_args()

    clip = _clip()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "MALSORI__AUTH__TENANT_LIMITS": json.dumps({"noisy": {"requests_per_minute": args.limit}}),
        }
        keys = _keys(data_dir, env)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 (the server writes to it until the end)
        server = subprocess.Popen(
            serve_command(port, "--model", args.model, "--log-level", "warning", data_dir=data_dir),
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/is_ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)  # polling readiness
            else:
                raise SystemExit("the server did not become ready")
            _run_phase(url, keys, clip, Phase("warm-up", 0), 5)
            phases = [
                Phase("alone", 0),
                Phase("noisy at its limit", args.limit),
                Phase("noisy at limit + 50 %", args.limit * 1.5),
            ]
            for phase in phases:
                # A pause between phases: the noisy tenant's burst refills (the limiter spaces requests
                # at 60/limit s with a burst of a tenth of the limit; there are no minute windows to align to).
                time.sleep(10)
                _run_phase(url, keys, clip, phase, args.seconds)
        finally:
            server.terminate()
            server.wait(30)

    load_after = os.getloadavg()
    at_limit, over = phases[1], phases[2]
    change = over.p(0.95) / at_limit.p(0.95) - 1
    vs_alone = over.p(0.95) / phases[0].p(0.95) - 1
    rows = [
        "| phase | noisy sent/min | noisy 200 | noisy 429 (median ms) | quiet requests | quiet p50 | quiet p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for ph in phases:
        median_429 = f"{statistics.median(ph.noisy_429_ms):.0f}" if ph.noisy_429_ms else "-"
        rows.append(
            f"| {ph.name} | {ph.noisy_rate_per_min:g} | {ph.noisy_ok} | {ph.noisy_429} ({median_429}) | {len(ph.quiet)} "
            f"| {ph.p(0.5) * 1000:.0f} ms | {ph.p(0.95) * 1000:.0f} ms |"
        )
    verdict = "met" if change <= 0.20 else "NOT met"
    body = "\n".join(
        [
            f"`bench/tenants_load.py --model {args.model} --limit {args.limit} --seconds {args.seconds:g}`, "
            f"{dt.date.today().isoformat()}, {machine_line()}. One keyed `malsori serve`; the quiet tenant sends a 1.9 s "
            "LJ Speech clip at a time, back to back; the noisy tenant sends the same clip open-loop at the rate shown, "
            f"with a limit of {args.limit} requests per minute (GCRA: spaced at {60 / args.limit:g} s, a burst of "
            f"{burst_for(args.limit)}).",
            "",
            *rows,
            "",
            f"Quiet p95 with the noisy tenant at 150 % of its limit against at its limit: {change:+.0%} "
            f"(target: at most +20 %: {verdict}); against the quiet tenant alone: {vs_alone:+.0%} (the admitted "
            "share of the noisy tenant's work competes for the same CPU; the limit is what bounds it). "
            f"Load average (1, 5, 15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
            f"after: {' / '.join(f'{x:.2f}' for x in load_after)} (other work shared the machine).",
        ]
    )
    print(body)
    if args.write:
        replace_section(SECTION, body)


if __name__ == "__main__":
    main()
