"""Endurance soak: N live streams and a steady job load against one ``malsori serve`` for a long time.

What runs (one real server, bundled ``base`` model, a free loopback port, its own data directory):

- **Rounds of live streams.** Each round, N streams (default 4) send the LJ Speech talk of
  ``bench/streaming.py`` at real-time pace over ``/v1/stream``, stream k starting the talk k/N of the
  way in (N people saying their own sentences), then stop. When every stream of the round has ended
  the jobs are held, the server is left to go idle (no live session, no job) and its open file
  descriptors and asyncio tasks are read: a **gap probe**, compared with the baseline read the same
  way before the soak. Then, after ``--pause-s``, the next round starts. Near the end a round's talk
  is cut to the phrases that still fit, so no stream is cut off in the middle.
- **A steady job load**: every ``--job-interval`` seconds one LJ Speech clip goes in as a job
  (``HttpClient.submit_job`` then ``wait_job``), the clips in turn; held only during gap probes.
- **A sample every ``--sample-s``**: the server's resident memory (VmRSS), open fds
  (``/proc/<pid>/fd``), asyncio tasks, live sessions and active jobs (``/stt/status``), jobs done, the
  p50/p95 of the final latencies of phrases finalized since the previous sample, and errors.

Final latency is ``bench/streaming.py``'s: the first final covering a phrase, minus the wall time the
phrase's last sample was sent. Every HTTP request of this script says ``Connection: close``, so no
idle keep-alive socket of ours is counted among the server's fds.

Targets (issue 16), computed from the samples, with W = ``--window-min`` (10; a third of the run when
the run is shorter than 3 W):
- resident memory: the last sample is less than 5% above the sample at the end of the first W;
- every gap probe: fds and tasks at most their baseline (+ ``--slack-fds`` / ``--slack-tasks``);
- final latency p95 over the last W at most 1.2 x the p95 over the first W (faster is no failure).

    flock /tmp/malsori-bench.lock .venv/bin/python bench/soak.py --minutes 60 --streams 4 --write

writes a section of docs/benchmarks.md, the plot docs/soak.png and the samples docs/soak.csv;
without ``--write`` the CSV and plot go to ``--out`` (default: the run's temporary directory). Exit
status 0 when all three targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from common import DOC, REPO, TESTDATA, machine_line, replace_section  # puts src/ on sys.path
from streaming import (
    Audio,
    Record,
    Scores,
    load_talk,
    pct,
    rss_mb,
    start_malsori,
    stream_malsori,
)

from malsori.client import HttpClient
from malsori.engine import SAMPLE_RATE
from malsori.evaluation import corpus_wer, load_manifest

SECTION = "## Endurance (soak)"
CLOSE = {"Connection": "close"}
TAIL_MARGIN_S = 15.0  # a round's talk ends at least this long before the deadline, for the last finals
IDLE_TIMEOUT_S = 60.0  # how long a gap probe waits for the server to have no session and no job
JOB_TIMEOUT_S = 300.0
RSS_TARGET = 0.05
LATENCY_TARGET = 1.2


# -- what is recorded -----------------------------------------------------------------------------------
@dataclass
class Sample:
    """One row of the CSV: a periodic sample, the baseline, or a gap probe between rounds."""

    kind: str  # "sample" | "baseline" | "gap"
    t_s: float  # seconds since the soak started
    rss_mb: float
    fds: int
    tasks: int
    live_sessions: int
    active_jobs: int
    jobs_done: int  # cumulative
    jobs_failed: int  # cumulative
    finals: int  # phrases finalized since the previous sample
    final_p50_s: float | None
    final_p95_s: float | None
    missed: int  # phrases no final covered, of sessions that ended since the previous sample
    errors: int  # stream, job and probe errors since the previous sample
    note: str = ""


@dataclass
class Tally:
    """Everything the load produced, stamped with ``time.monotonic()``."""

    finals: list[tuple[float, float]] = field(default_factory=list)  # (wall time of the final, latency s)
    missed: list[float] = field(default_factory=list)  # wall time the session ended, one per missed phrase
    errors: list[tuple[float, str]] = field(default_factory=list)
    jobs: list[tuple[float, float, bool]] = field(default_factory=list)  # (finished at, latency s, succeeded)
    job_refs: list[str] = field(default_factory=list)
    job_hyps: list[str] = field(default_factory=list)
    sessions: int = 0
    stream_refs: list[str] = field(default_factory=list)
    stream_hyps: list[str] = field(default_factory=list)
    jobs_late: int = 0  # a job started later than its slot because the previous one was still running

    def add_session(self, audio: Audio, record: Record) -> None:
        """Score one stream with streaming.py's rule, one phrase at a time so each final keeps its wall time."""
        ended = time.monotonic()  # scored as soon as the round's streams have all ended
        whole = Scores()
        whole.add(audio, record)
        self.sessions += 1
        self.stream_refs += whole.references
        self.stream_hyps += whole.hypotheses
        if record.error:
            self.errors.append((ended, f"stream: {record.error}"))
        for phrase in audio.phrases:
            one = Scores()
            one.add(Audio(audio.name, audio.samples, (phrase,)), record)
            if one.final_latency:
                sent_end = record.sent_at(phrase.speech_end - 1 / SAMPLE_RATE)
                self.finals.append((sent_end + one.final_latency[0], one.final_latency[0]))
            else:
                self.missed.append(ended)


# -- the server, read from outside ----------------------------------------------------------------------
def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def server_status(base: str) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=CLOSE, trust_env=False) as client:
        response = await client.get("/stt/status")
        response.raise_for_status()
        return response.json()


@dataclass
class Probe:
    rss_mb: float
    fds: int
    tasks: int
    live_sessions: int
    active_jobs: int


async def probe(base: str, pid: int) -> Probe:
    status = await server_status(base)
    return Probe(rss_mb(pid), open_fds(pid), int(status["tasks"]), int(status["active_sessions"]), int(status["active_jobs"]))


# -- the load -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    path: Path
    reference: str


def lj_clips() -> list[Clip]:
    return [Clip(c.path, c.reference) for c in load_manifest(TESTDATA) if "/ljspeech/" in c.path.as_posix()]


def run_job(base: str, clip: Clip) -> tuple[bool, str, str]:
    """(succeeded, text, error) of one job, on this thread (the client is synchronous)."""
    try:
        with HttpClient(base, headers=CLOSE, timeout=60) as client:
            job = client.wait_job(client.submit_job(clip.path, language="en").id, timeout=JOB_TIMEOUT_S)
    except Exception as exc:  # counted as an error of the load, never hidden
        return False, "", f"{type(exc).__name__}: {exc}"
    if job.state != "succeeded" or job.result is None:
        return False, "", f"job {job.id} {job.state}: {job.error_code} {job.error}"
    return True, job.result.text, ""


class JobLoad:
    """One job every ``interval`` seconds, never two at once; ``hold()`` pauses it for a gap probe."""

    def __init__(self, base: str, clips: list[Clip], interval: float, tally: Tally) -> None:
        self.base, self.clips, self.interval, self.tally = base, clips, interval, tally
        self.allowed = asyncio.Event()
        self.allowed.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        next_at, k = time.monotonic(), 0
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), max(0.0, next_at - time.monotonic()))
                return
            except asyncio.TimeoutError:
                pass
            await self.allowed.wait()
            if self.stopping.is_set():
                return
            clip = self.clips[k % len(self.clips)]
            k += 1
            self.idle.clear()
            started = time.monotonic()
            try:
                ok, text, error = await asyncio.to_thread(run_job, self.base, clip)
            finally:
                self.idle.set()
            done = time.monotonic()
            self.tally.jobs.append((done, done - started, ok))
            if ok:
                self.tally.job_refs.append(clip.reference)
                self.tally.job_hyps.append(text)
            else:
                self.tally.errors.append((done, f"job: {error}"))
            next_at += self.interval
            if next_at < time.monotonic():
                self.tally.jobs_late += 1
                next_at = time.monotonic()

    async def hold(self) -> None:
        """Let the job in flight finish and start no other until :meth:`release`."""
        self.allowed.clear()
        await self.idle.wait()

    def release(self) -> None:
        self.allowed.set()


def fit(audio: Audio, seconds: float) -> Audio | None:
    """The talk cut to the phrases that end within ``seconds`` (None when not even one does)."""
    phrases = tuple(p for p in audio.phrases if p.end <= seconds)
    if not phrases:
        return None
    if len(phrases) == len(audio.phrases):
        return audio
    return Audio(audio.name, audio.samples[: int(phrases[-1].end * SAMPLE_RATE)], phrases)


async def wait_idle(base: str) -> None:
    """Until the server has no live session and no job (bounded; a session that never ends is a finding
    the gap probe then shows)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = await server_status(base)
        if status["active_sessions"] == 0 and status["active_jobs"] == 0:
            return
        await asyncio.sleep(0.5)  # polling the server's own count; there is nothing to wait on


async def gap_probe(
    base: str, pid: int, baseline: Probe | None, slack_fds: int, slack_tasks: int, settle_s: float
) -> tuple[Probe, float]:
    """Read fds and tasks once the server is idle; a closed socket or finished task may take a moment
    to go, so read again every 0.5 s for up to ``settle_s`` until within the baseline. Returns the last
    reading and how long it took."""
    started = time.monotonic()
    await wait_idle(base)
    while True:
        reading = await probe(base, pid)
        if baseline is None:
            if time.monotonic() - started >= settle_s:
                return reading, time.monotonic() - started
        elif (reading.fds <= baseline.fds + slack_fds and reading.tasks <= baseline.tasks + slack_tasks) or (
            time.monotonic() - started >= settle_s
        ):
            return reading, time.monotonic() - started
        await asyncio.sleep(0.5)


# -- the soak ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    samples: list[Sample]
    tally: Tally
    baseline: Probe
    t0: float  # time.monotonic() when the soak started (the finals' stamps are monotonic too)
    duration_s: float
    rounds: int
    talk: Audio
    args_line: str = ""


async def soak(args: argparse.Namespace, ws_url: str, base: str, pid: int, log) -> Run:
    tally = Tally()
    first = load_talk(args.clips)
    talks = [first] + [load_talk(args.clips, rotate=k * len(first.phrases) // args.streams) for k in range(1, args.streams)]
    clips = lj_clips()

    # Warm-up, unmeasured: one short stream and one job, so first-call costs (lazy setup, first
    # allocations, the job worker) are in the baseline rather than counted as growth.
    warm = fit(talks[0], talks[0].phrases[0].end)
    assert warm is not None
    warm_record = await stream_malsori(ws_url, warm)
    ok, _text, error = await asyncio.to_thread(run_job, base, clips[0])
    log(
        f"warm-up: stream {' '.join(e[2].strip() for e in warm_record.events if e[1])!r} "
        f"{warm_record.error or ''}; job {'ok' if ok else error}"
    )
    baseline, _ = await gap_probe(base, pid, None, args.slack_fds, args.slack_tasks, settle_s=2.0)
    log(f"baseline: RSS {baseline.rss_mb:.0f} MB, {baseline.fds} fds, {baseline.tasks} tasks")

    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    samples: list[Sample] = [
        Sample(
            "baseline",
            0.0,
            baseline.rss_mb,
            baseline.fds,
            baseline.tasks,
            baseline.live_sessions,
            baseline.active_jobs,
            0,
            0,
            0,
            None,
            None,
            0,
            0,
        )
    ]

    def sample(kind: str, reading: Probe | None, note: str = "") -> Sample:
        """The server's facts now; the latency, missed and error columns are filled in at the end
        (:func:`fill_windows`), when every stream of every round has been scored."""
        done = sum(1 for _, _, ok in tally.jobs if ok)
        r = reading or Probe(float("nan"), -1, -1, -1, -1)
        row = Sample(
            kind,
            time.monotonic() - t0,
            r.rss_mb,
            r.fds,
            r.tasks,
            r.live_sessions,
            r.active_jobs,
            done,
            len(tally.jobs) - done,
            0,
            None,
            None,
            0,
            0,
            note,
        )
        samples.append(row)
        return row

    async def read_sample() -> None:
        try:
            reading = await probe(base, pid)
            note = ""
        except Exception as exc:  # the sample is kept, marked, and counted as an error
            tally.errors.append((time.monotonic(), f"probe: {type(exc).__name__}: {exc}"))
            reading, note = None, f"probe failed: {type(exc).__name__}"
        row = sample("sample", reading, note)
        log(
            f"  {row.t_s / 60:5.1f} min  RSS {row.rss_mb:6.1f} MB  fds {row.fds:3d}  tasks {row.tasks:3d}  "
            f"sessions {row.live_sessions}  jobs {row.jobs_done} done/{row.jobs_failed} failed  {note}"
        )

    async def sampler() -> None:
        k = 1
        while True:
            await asyncio.sleep(max(0.0, t0 + k * args.sample_s - time.monotonic()))
            if time.monotonic() >= deadline - 1.0:  # the last sample is read after the load has stopped
                return
            await read_sample()
            k += 1

    jobs = JobLoad(base, clips, args.job_interval, tally)
    job_task = asyncio.create_task(jobs.run())
    sampler_task = asyncio.create_task(sampler())
    await read_sample()  # t = 0
    rounds = 0
    try:
        while True:
            room = deadline - time.monotonic() - TAIL_MARGIN_S
            audios = [a for a in (fit(talk, room) for talk in talks) if a is not None]
            if not audios:
                break
            rounds += 1
            log(f"round {rounds}: {len(audios)} streams, {max(a.duration for a in audios):.0f} s of talk")
            records = await asyncio.gather(*(stream_malsori(ws_url, audio) for audio in audios))
            for audio, record in zip(audios, records, strict=True):
                tally.add_session(audio, record)
            await jobs.hold()
            try:
                reading, took = await gap_probe(base, pid, baseline, args.slack_fds, args.slack_tasks, args.pause_s)
            except Exception as exc:
                tally.errors.append((time.monotonic(), f"gap probe: {type(exc).__name__}: {exc}"))
                reading, took = None, 0.0
            finally:
                jobs.release()
            gap = sample("gap", reading, f"round {rounds}, settled in {took:.1f} s")
            log(
                f"  gap after round {rounds}: {gap.fds} fds (baseline {baseline.fds}), {gap.tasks} tasks "
                f"(baseline {baseline.tasks}), {gap.live_sessions} sessions, read after {took:.1f} s"
            )
            await asyncio.sleep(max(0.0, min(args.pause_s - took, deadline - time.monotonic())))
        # The last round ended with room to spare: the load (jobs) goes on until the deadline.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        jobs.stopping.set()
        sampler_task.cancel()
        await asyncio.gather(job_task, sampler_task, return_exceptions=True)
    await read_sample()  # at the end
    fill_windows(samples, tally, t0)
    return Run(samples, tally, baseline, t0, time.monotonic() - t0, rounds, talks[0])


def fill_windows(samples: list[Sample], tally: Tally, t0: float) -> None:
    """Each periodic sample's finals, p50/p95, missed phrases and errors: what happened since the
    previous periodic sample (the first sample, at t = 0, covers nothing)."""
    lo: float | None = None
    for row in samples:
        if row.kind != "sample":
            continue
        hi = t0 + row.t_s
        if lo is not None:
            window = [lat for at, lat in tally.finals if lo <= at < hi]
            row.finals, row.final_p50_s, row.final_p95_s = len(window), pct(window, 50), pct(window, 95)
            row.missed = sum(1 for at in tally.missed if lo <= at < hi)
            row.errors = sum(1 for at, _ in tally.errors if lo <= at < hi)
        lo = hi


# -- targets ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: str
    passed: bool
    detail: str


def evaluate(run: Run, window_s: float, slack_fds: int, slack_tasks: int) -> list[Target]:
    return [memory_target(run, window_s), baseline_target(run, slack_fds, slack_tasks), latency_target(run, window_s)]


def memory_target(run: Run, window_s: float) -> Target:
    periodic = [s for s in run.samples if s.kind == "sample" and s.fds >= 0]
    ref = next((s for s in periodic if s.t_s >= window_s), None)
    if ref is None or ref is periodic[-1]:
        return Target("memory", False, f"no sample after the first {window_s / 60:.1f} min to compare")
    last = periodic[-1]
    growth = (last.rss_mb - ref.rss_mb) / ref.rss_mb
    peak = max(s.rss_mb for s in periodic if s.t_s >= ref.t_s)
    return Target(
        "memory",
        growth < RSS_TARGET,
        f"RSS {ref.rss_mb:.1f} MB at {ref.t_s / 60:.1f} min -> {last.rss_mb:.1f} MB at {last.t_s / 60:.1f} min: "
        f"{100 * growth:+.1f}% (target < +{100 * RSS_TARGET:.0f}%; peak after {ref.t_s / 60:.1f} min "
        f"{peak:.1f} MB; baseline before the soak {run.baseline.rss_mb:.1f} MB)",
    )


def baseline_target(run: Run, slack_fds: int, slack_tasks: int) -> Target:
    gaps = [s for s in run.samples if s.kind == "gap"]
    b = run.baseline
    if not gaps:
        return Target("fds and tasks between rounds", False, "no gap between rounds was measured")
    bad = [s for s in gaps if s.fds < 0 or s.fds > b.fds + slack_fds or s.tasks > b.tasks + slack_tasks]
    return Target(
        "fds and tasks between rounds",
        not bad,
        f"baseline {b.fds} fds / {b.tasks} tasks; {len(gaps)} gaps: fds {min(s.fds for s in gaps)} to "
        f"{max(s.fds for s in gaps)}, tasks {min(s.tasks for s in gaps)} to {max(s.tasks for s in gaps)} "
        f"(allowed: baseline + {slack_fds} fds, + {slack_tasks} tasks; {len(bad)} over)",
    )


def latency_target(run: Run, window_s: float) -> Target:
    first = [lat for at, lat in run.tally.finals if at - run.t0 < window_s]
    last = [lat for at, lat in run.tally.finals if at - run.t0 >= run.duration_s - window_s]
    p_first, p_last = pct(first, 95), pct(last, 95)
    if p_first is None or p_last is None:
        return Target("final latency p95", False, f"no finals in the first or the last {window_s / 60:.1f} min")
    ratio = p_last / p_first
    return Target(
        "final latency p95",
        ratio <= LATENCY_TARGET,
        f"first {window_s / 60:.1f} min {p_first:.2f} s ({len(first)} finals), last {window_s / 60:.1f} min "
        f"{p_last:.2f} s ({len(last)} finals): x{ratio:.2f} (target <= x{LATENCY_TARGET})",
    )


# -- output -------------------------------------------------------------------------------------------------
def write_csv(samples: list[Sample], path: Path) -> None:
    names = [f.name for f in fields(Sample)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for s in samples:
            row = asdict(s)
            for key, value in row.items():
                if isinstance(value, float):
                    row[key] = "" if value != value else f"{value:.3f}"  # NaN (a failed probe) as empty
            writer.writerow(row)


def plot(run: Run, window_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periodic = [s for s in run.samples if s.kind == "sample" and s.fds >= 0]
    gaps = [s for s in run.samples if s.kind == "gap" and s.fds >= 0]
    minutes = [s.t_s / 60 for s in periodic]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    ax.plot(minutes, [s.rss_mb for s in periodic], marker=".", label="server RSS")
    ref = next((s for s in periodic if s.t_s >= window_s), None)
    if ref is not None:
        ax.axhline(
            ref.rss_mb * (1 + RSS_TARGET),
            color="tab:red",
            ls="--",
            lw=1,
            label=f"+{100 * RSS_TARGET:.0f}% of RSS at {ref.t_s / 60:.0f} min",
        )
    ax.set_ylabel("RSS (MB)")
    for ax, key, label in ((axes[1], "fds", "open fds"), (axes[2], "tasks", "asyncio tasks")):
        ax.plot(minutes, [getattr(s, key) for s in periodic], marker=".", label=f"{label} (every sample)")
        ax.scatter(
            [s.t_s / 60 for s in gaps], [getattr(s, key) for s in gaps], color="tab:green", zorder=3, label="between rounds"
        )
        ax.axhline(getattr(run.baseline, key), color="tab:gray", ls="--", lw=1, label="baseline")
        ax.set_ylabel(label)
    axes[2].plot(minutes, [s.live_sessions for s in periodic], color="tab:purple", lw=1, alpha=0.6, label="live sessions")
    ax = axes[3]
    with_finals = [s for s in periodic if s.final_p95_s is not None]
    ax.plot([s.t_s / 60 for s in with_finals], [s.final_p95_s for s in with_finals], marker=".", label="final p95")
    ax.plot([s.t_s / 60 for s in with_finals], [s.final_p50_s for s in with_finals], marker=".", label="final p50")
    ax.set_ylabel("final latency (s)")
    ax.set_xlabel("minutes")
    for ax in axes:
        ax.axvspan(0, window_s / 60, color="0.93", zorder=0)
        ax.axvspan((run.duration_s - window_s) / 60, run.duration_s / 60, color="0.93", zorder=0)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"malsori soak: {run.args_line}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(run: Run, targets: list[Target]) -> list[str]:
    t = run.tally
    lat = [lat for _, lat in t.finals]
    job_lat = [lat for _, lat, ok in t.jobs if ok]
    done = sum(1 for *_, ok in t.jobs if ok)
    stream_wer = corpus_wer(t.stream_refs, t.stream_hyps) if t.stream_refs else None
    job_wer = corpus_wer(t.job_refs, t.job_hyps) if t.job_refs else None

    def f(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        f"- {run.duration_s / 60:.1f} min, {run.rounds} round{'s' if run.rounds != 1 else ''}, "
        f"{t.sessions} stream sessions; {len(lat)} phrases "
        f"finalized, {len(t.missed)} missed; final latency p50 {f(pct(lat, 50))} s, p95 {f(pct(lat, 95))} s; "
        f"stream WER {f(None if stream_wer is None else 100 * stream_wer, 1)}%",
        f"- jobs: {done} succeeded, {len(t.jobs) - done} failed, {t.jobs_late} started late; latency p50 "
        f"{f(pct(job_lat, 50))} s, p95 {f(pct(job_lat, 95))} s; WER {f(None if job_wer is None else 100 * job_wer, 1)}%",
        f"- errors: {len(t.errors)}" + (" (" + "; ".join(e for _, e in t.errors[:3]) + ")" if t.errors else ""),
    ]
    lines += [f"- **{x.name}: {'pass' if x.passed else 'FAIL'}**: {x.detail}" for x in targets]
    return lines


def sample_table(samples: list[Sample]) -> list[str]:
    head = [
        "kind",
        "min",
        "RSS MB",
        "fds",
        "tasks",
        "sessions",
        "jobs active",
        "jobs done",
        "failed",
        "finals",
        "p50 s",
        "p95 s",
        "missed",
        "errors",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in samples:
        cells = [
            s.kind,
            f"{s.t_s / 60:.1f}",
            f"{s.rss_mb:.1f}",
            str(s.fds),
            str(s.tasks),
            str(s.live_sessions),
            str(s.active_jobs),
            str(s.jobs_done),
            str(s.jobs_failed),
            str(s.finals),
            "–" if s.final_p50_s is None else f"{s.final_p50_s:.2f}",
            "–" if s.final_p95_s is None else f"{s.final_p95_s:.2f}",
            str(s.missed),
            str(s.errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(run: Run, targets: list[Target], args: argparse.Namespace, window_s: float, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Load: {args.streams} live streams in rounds (each stream sends the {run.talk.name.split(',')[0]}, "
        f"{run.talk.duration:.0f} s, at real-time pace over `/v1/stream`, stream k starting it k/{args.streams} of the "
        f"way in; all stop, the server goes idle, its fds and tasks are read (*gap*), {args.pause_s:g} s pause, "
        f"the next round) and one LJ Speech clip as a job every {args.job_interval:g} s (held during gap "
        "readings); server `malsori serve`, bundled `base`, defaults otherwise; client and server on the same "
        f"machine. A sample every {args.sample_s:g} s; *baseline*: fds and tasks after one warm-up stream and job, "
        f"server idle. Windows for the targets: the first and the last {window_s / 60:g} min.",
        "",
        *summary(run, targets),
        "",
        "![soak: RSS, fds, tasks and final latency over time](soak.png)",
        "",
        "Samples (also in `docs/soak.csv`): finals, p50/p95, missed and errors count what happened since the previous sample.",
        "",
        *sample_table(run.samples),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the soak runs (default 60)")
    parser.add_argument("--streams", type=int, default=4, help="live streams per round (default 4)")
    parser.add_argument("--job-interval", type=float, default=15.0, help="seconds between jobs (default 15)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--pause-s", type=float, default=5.0, help="pause between rounds, the gap reading included")
    parser.add_argument(
        "--window-min",
        type=float,
        default=10.0,
        help="first/last window of the targets (default 10; a third of the run if shorter)",
    )
    parser.add_argument("--clips", type=int, help="use only the first N LJ Speech clips as the talk (shorter rounds)")
    parser.add_argument("--slack-fds", type=int, default=1, help="fds over the baseline still counted as back to it")
    parser.add_argument("--slack-tasks", type=int, default=1, help="tasks over the baseline still counted as back to it")
    parser.add_argument("--out", type=Path, help="where the CSV and plot go without --write (default: the run's temp dir)")
    parser.add_argument(
        "--write", action="store_true", help=f"write a section of {DOC.relative_to(REPO)}, docs/soak.png and docs/soak.csv"
    )
    args = parser.parse_args()
    if args.streams < 1 or args.minutes <= 0 or args.sample_s <= 0 or args.job_interval <= 0:
        parser.error("--streams, --minutes, --sample-s and --job-interval must be positive")

    log = lambda message: print(message, flush=True)  # noqa: E731
    window_s = min(args.window_min * 60, args.minutes * 60 / 3)
    workdir = Path(tempfile.mkdtemp(prefix="malsori-soak-"))
    log(f"logs in {workdir}")
    server, ws_url = start_malsori(workdir)
    parts = urlsplit(ws_url)
    base = f"http://{parts.netloc}"
    try:
        run = asyncio.run(soak(args, ws_url, base, server.pid, log))
    finally:
        server.stop()
        shutil.rmtree(workdir / "malsori-data", ignore_errors=True)
    command = "flock /tmp/malsori-bench.lock .venv/bin/python bench/soak.py " + " ".join(sys.argv[1:])
    run.args_line = f"{args.minutes:g} min, {args.streams} streams, a job every {args.job_interval:g} s"
    targets = evaluate(run, window_s, args.slack_fds, args.slack_tasks)

    out = REPO / "docs" if args.write else (args.out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(run.samples, out / "soak.csv")
    plot(run, window_s, out / "soak.png")
    log(f"wrote {out / 'soak.csv'} and {out / 'soak.png'}")
    section = markdown(run, targets, args, window_s, command.strip())
    print()
    print(SECTION)
    print()
    print(section)
    if args.write:
        replace_section(SECTION, section)
    return 0 if all(t.passed for t in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
