"""Live capacity (issue 17): how many real-time streams one machine serves, measured as the issue asks.

Rows (each one ``malsori serve`` started fresh per run, a warm-up stream first), the LJ Speech talk of
bench/streaming.py (32 clips, 0.6 s pauses) sent at real-time pace by every stream of a row at once:

- one stream;
- 8 *lockstep* streams (the same talk started together: every phrase of every stream ends at the same
  moment, the worst case for one shared decoder);
- 24 *rotated* streams (stream k starts the talk k/24 of the way in: 24 people saying their own
  sentences).

Final latency is measured from the wall time each phrase's last *speech* sample was sent (its energy
end, not the end of the clip with its trailing silence); first text from its speech onset. ``--runs``
repeats the whole set and the table gives every run and the median of each figure. WER: every stream's
finals against the references, next to malsori's offline transcription of the same talk.

``--talk mixed`` sends a second English talk instead (``streaming.TALKS``: many voices, cards, a call of
two speakers who overlap) to check the live accuracy beyond one reader; the issue-17 table (``--write``)
stays the LJ Speech talk's.

Targets (issue 17): 8 lockstep final p95 ≤ 2.5 s; 24 rotated final p95 ≤ 2.5 s; 0 missed phrases; WER
within 1 point of offline; 8 streams first text p50 ≤ 1.5 s; one stream final p50 ≤ 0.5 s and p95 ≤ 1.0 s.

    flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python bench/live_capacity.py --runs 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import machine_line, replace_block
from streaming import (
    TALKS,
    Audio,
    Scores,
    load_talk,
    offline_talk_wer,
    pct,
    run_concurrent,
    start_malsori,
    stream_audios,
    stream_malsori,
)

from malsori.client import StreamOptions  # src/ is on sys.path through common

TITLE = "## Live capacity (issue 17)"


@dataclass(frozen=True)
class RowSpec:
    streams: int
    mix: str

    @property
    def label(self) -> str:
        return "1 stream" if self.streams == 1 else f"{self.streams} {self.mix}"


@dataclass
class Figures:
    first_p50: float | None
    first_p95: float | None
    final_p50: float | None
    final_p95: float | None
    clip_p50: float | None
    clip_p95: float | None
    missed: int
    phrases: int
    wer: float | None
    errors: int

    @classmethod
    def of(cls, scores: Scores) -> Figures:
        return cls(
            pct(scores.first_text, 50),
            pct(scores.first_text, 95),
            pct(scores.final_latency, 50),
            pct(scores.final_latency, 95),
            pct(scores.final_from_clip_end, 50),
            pct(scores.final_from_clip_end, 95),
            scores.missed,
            len(scores.final_latency) + scores.missed,
            None if scores.wer is None else 100 * scores.wer,
            len(scores.errors),
        )


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cells(label: str, f: Figures) -> list[str]:
    return [
        label,
        fmt(f.first_p50),
        fmt(f.first_p95),
        fmt(f.final_p50),
        fmt(f.final_p95),
        f"{fmt(f.clip_p50)} / {fmt(f.clip_p95)}",
        f"{f.missed}/{f.phrases}",
        fmt(f.wer, 1),
        str(f.errors),
    ]


HEADER = [
    "row",
    "first text p50 (s)",
    "first text p95 (s)",
    "final p50 (s)",
    "final p95 (s)",
    "final p50 / p95 from clip end (s)",
    "missed",
    "WER %",
    "errors",
]


def run_once(
    specs: list[RowSpec], talk: Audio, clips: int | None, log, options: dict, preset: str | None = None, which: str = "ljspeech"
) -> dict[RowSpec, Figures]:
    workdir = Path(tempfile.mkdtemp(prefix="malsori-bench-capacity-"))
    most = max(spec.streams for spec in specs)
    server, url = start_malsori(workdir, {"MALSORI__STREAMING__MAX_SESSIONS": str(max(16, most + 1))})
    out: dict[RowSpec, Figures] = {}
    try:
        warm = Audio("warm-up", talk.samples[: int(talk.phrases[0].end * 16000)], talk.phrases[:1])
        stream = functools.partial(
            stream_malsori, options=StreamOptions(language="en", encoding="pcm_s16le", preset=preset, options=options)
        )
        asyncio.run(stream(url, warm))
        for spec in specs:
            audios = stream_audios(talk, spec.streams, spec.mix, clips, which)
            records = asyncio.run(run_concurrent(stream, url, audios))
            scores = Scores()
            for audio, record in zip(audios, records, strict=True):
                scores.add(audio, record)
            out[spec] = Figures.of(scores)
            log(
                "  "
                + " | ".join(cells(spec.label, out[spec]))
                + ("  errors: " + "; ".join(scores.errors[:3]) if scores.errors else "")
            )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def verdicts(med: dict[RowSpec, Figures], offline_wer: float) -> list[str]:
    lines = []

    def say(what: str, figure: float | None, target: float, unit: str = " s") -> None:
        ok = figure is not None and figure <= target
        lines.append(f"| {what} | {fmt(figure)}{unit} | ≤ {target:g}{unit} | {'yes' if ok else '**no**'} |")

    for spec, f in med.items():
        if spec.streams == 1:
            say("one stream final p50", f.final_p50, 0.5)
            say("one stream final p95", f.final_p95, 1.0)
        elif spec.mix == "lockstep":
            say(f"{spec.streams} lockstep final p95", f.final_p95, 2.5)
            say(f"{spec.streams} streams first text p50", f.first_p50, 1.5)
        else:
            say(f"{spec.streams} rotated final p95", f.final_p95, 2.5)
    missed = sum(f.missed for f in med.values())
    lines.append(f"| missed phrases (medians, all rows) | {missed:g} | 0 | {'yes' if missed == 0 else '**no**'} |")
    worst = max((f.wer for f in med.values() if f.wer is not None), default=None)
    say("worst row WER minus offline", None if worst is None else worst - 100 * offline_wer, 1.0, " points")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,8:lockstep,24:rotated", help="streams[:mix] per row, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="repeat every row this many times (medians reported)")
    parser.add_argument("--clips", type=int, help="use only the first N clips of the talk (quick runs)")
    parser.add_argument("--talk", default="ljspeech", choices=sorted(TALKS), help="what every stream says (streaming.TALKS)")
    parser.add_argument("--options", type=json.loads, default={}, help="stream options as JSON, e.g. '{\"commit_after_s\": 0}'")
    parser.add_argument("--preset", help="live preset of every stream (default: the server's, balanced)")
    parser.add_argument("--write", action="store_true", help="write the section to docs/benchmarks.md")
    args = parser.parse_args()
    if args.write and args.talk != "ljspeech":
        parser.error("--write records the issue-17 table, measured on the ljspeech talk")
    log = lambda message: print(message, flush=True)  # noqa: E731

    specs = []
    for item in args.rows.split(","):
        n, _, mix = item.partition(":")
        specs.append(RowSpec(int(n), mix or "rotated"))
    talk = load_talk(args.clips, talk=args.talk)
    log(f"talk: {talk.duration:.1f} s, {len(talk.phrases)} phrases; rows {', '.join(s.label for s in specs)}; {args.runs} runs")

    offline_wer = offline_talk_wer(talk)
    log(f"offline WER {100 * offline_wer:.2f}%")

    runs: list[dict[RowSpec, Figures]] = []
    for r in range(args.runs):
        log(f"run {r + 1}:  " + " | ".join(HEADER))
        runs.append(run_once(specs, talk, args.clips, log, args.options, args.preset, args.talk))

    med = {
        spec: Figures(*(median([getattr(run[spec], name) for run in runs]) for name in Figures.__dataclass_fields__))
        for spec in specs
    }
    command = "flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python bench/live_capacity.py " + " ".join(sys.argv[1:])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine_line()}; load average after the runs {load}  ",
        f"Audio: {talk.name}, {talk.duration:.0f} s, sent at real-time pace in 100 ms frames by every stream of a "
        "row at once (lockstep: the same talk started together; rotated: stream k starts k/N of the way in). "
        f"`malsori serve` with its defaults (bundled `base`, preset `{args.preset or 'balanced'}`, language en), "
        "started fresh for every run, the session limit raised above the row's streams. Final latency from the moment the "
        "phrase's last speech sample was sent (energy end); the clip-end figure (trailing silence included) is "
        f"beside it for comparison. Offline WER of the same talk: {100 * offline_wer:.1f}%.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for r, run in enumerate(runs):
        lines += ["| " + " | ".join(cells(f"{spec.label}, run {r + 1}", run[spec])) + " |" for spec in specs]
    lines += ["| " + " | ".join(cells(f"**{spec.label}, median**", med[spec])) + " |" for spec in specs]
    lines += ["", "| target (issue 17) | median | target | met |", "|---|---:|---:|---|", *verdicts(med, offline_wer)]
    body = "\n".join(lines)
    print(f"{TITLE}\n\n{body}")
    if args.write:  # only the generated block: the reading written under it by hand stays
        replace_block(TITLE, "bench/live_capacity.py", body)


if __name__ == "__main__":
    main()
