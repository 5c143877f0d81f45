"""``stream=true`` on ``POST /v1/audio/transcriptions``: how soon the first text comes, against the
plain request on the same file in the same run (issue 16: first delta within 3 s on a 60 s file).

Starts ``malsori serve`` on a free loopback port (fresh data directory), builds a ~60 s talk from the
LJ Speech clips in order (0.5 s apart, as tests/test_streamed_http.py does), then alternates a plain
request and a streamed one through the official ``openai`` package, ``--repeats`` times, and prints
each run and the medians: first delta, last event, plain request; and whether both gave the same text.

    flock /tmp/malsori-bench.lock .venv/bin/python bench/streamed_http.py --repeats 5 --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TESTDATA, machine_line, replace_section
from load import start_server

from malsori.engine import SAMPLE_RATE, decode_audio, wav_bytes
from malsori.evaluation import load_manifest, wer

TALK_S = 60.0
GAP_S = 0.5


def talk_wav() -> tuple[bytes, str, float]:
    rows = sorted((r for r in load_manifest(TESTDATA) if r.path.parent.name == "ljspeech"), key=lambda r: r.path.name)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    total = 0
    for row in rows:
        audio = decode_audio(row.path)
        parts += [audio, np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)]
        texts.append(row.reference.replace("(", " ").replace(")", " "))
        total += len(audio) + int(GAP_S * SAMPLE_RATE)
        if total >= TALK_S * SAMPLE_RATE:
            break
    audio = np.concatenate(parts)
    return wav_bytes(audio), " ".join(texts), len(audio) / SAMPLE_RATE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="base")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()

    from openai import OpenAI

    wav, reference, seconds = talk_wav()
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_server(Path(scratch) / "data", args.model, Path(scratch) / "server.log")
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=600)
            client.audio.transcriptions.create(model="whisper-1", file=("warm.wav", wav))  # warm-up, not counted
            firsts, dones, plains, same, wers = [], [], [], 0, []
            for run in range(args.repeats):
                started = time.perf_counter()
                plain = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav)).text
                plains.append(time.perf_counter() - started)
                started, first, deltas, text = time.perf_counter(), None, 0, None
                for event in client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav), stream=True):
                    if event.type == "transcript.text.delta":
                        first = first if first is not None else time.perf_counter() - started
                        deltas += 1
                    elif event.type == "transcript.text.done":
                        text = event.text
                dones.append(time.perf_counter() - started)
                assert first is not None and text is not None, "the stream gave no delta or no done event"
                firsts.append(first)
                same += text == plain
                wers.append(wer(reference, text))
                print(
                    f"run {run + 1}: first delta {first:.2f} s, done {dones[-1]:.2f} s ({deltas} deltas); "
                    f"plain {plains[-1]:.2f} s; same text {text == plain}; WER {wers[-1]:.3f}",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(30)

    median = statistics.median
    summary = (
        f"first delta median {median(firsts):.2f} s (max {max(firsts):.2f}), done {median(dones):.2f} s, "
        f"plain request {median(plains):.2f} s; same text as plain {same}/{args.repeats}; WER {median(wers):.3f}"
    )
    print(summary)
    if args.write:
        rows = "\n".join(
            f"| {i + 1} | {f:.2f} | {d:.2f} | {p:.2f} |" for i, (f, d, p) in enumerate(zip(firsts, dones, plains, strict=True))
        )
        replace_section(
            "## Streamed HTTP transcription (first delta)",
            f"`flock /tmp/malsori-bench.lock .venv/bin/python bench/streamed_http.py --repeats {args.repeats} --write`, "
            f"{dt.date.today().isoformat()}, {machine_line()}; `malsori serve --model {args.model}`, the official "
            f"`openai` package, a {seconds:.1f} s talk of LJ Speech clips. Target (issue 16): first delta within 3 s.\n\n"
            f"| run | first delta (s) | done (s) | plain request (s) |\n|---|---|---|---|\n{rows}\n\n{summary}.",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
