"""Where a live stream's latency goes: the real live path in one process, instrumented.

Drives ``SessionManager`` + ``LiveRunner`` + ``DecodeScheduler`` + ``Transcriber`` exactly as the
WebSocket server does (minus the socket and JSON), feeding LJ Speech clips concatenated with pauses
at real-time pace in 100 ms frames to N sessions at once, and reports:

- final latency: arrival of the first final covering a phrase (end >= last speech - 0.3 s) minus
  the wall time the phrase's last speech sample was fed (as bench/streaming.py measures it), p50/p95;
- first partial/text after speech onset (first 20 ms frame above an energy threshold);
- streaming WER of the finals vs the references (evaluation.corpus_wer);
- every batched decode: kind (beam), batch size, window seconds, wait in the queue, decode time;
- VAD + session bookkeeping time per fed second; RSS growth per session.

    flock /tmp/malsori-bench.lock .venv/bin/python bench/stream_latency.py --streams 1
    flock /tmp/malsori-bench.lock .venv/bin/python bench/stream_latency.py --streams 8 --clips 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import TESTDATA  # puts src/ on sys.path
from streaming import speech_bounds  # phrase bounds exactly as the official benchmark finds them

from malsori.engine import SAMPLE_RATE, decode_audio
from malsori.evaluation import corpus_wer, load_manifest

CHUNK = SAMPLE_RATE // 10
COVER_TOLERANCE_S = 0.3


@dataclass(frozen=True)
class Phrase:
    start: float
    end: float
    speech_start: float
    speech_end: float
    reference: str


def load_talk(clips: int | None, pause_s: float, first: int = 0) -> tuple[np.ndarray, list[Phrase]]:
    items = [c for c in load_manifest(TESTDATA) if "/ljspeech/" in c.path.as_posix()][first:]
    items = items[:clips] if clips else items
    pieces, phrases, t = [], [], 0.0
    for i, clip in enumerate(items):
        samples = decode_audio(clip.path)
        s0, s1 = speech_bounds(samples)
        d = len(samples) / SAMPLE_RATE
        phrases.append(Phrase(t, t + d, t + s0, t + s1, clip.reference))
        pieces.append(samples)
        t += d
        if i < len(items) - 1:
            pieces.append(np.zeros(int(pause_s * SAMPLE_RATE), np.float32))
            t += pause_s
    return np.concatenate(pieces), phrases


class TimedDecoder:
    """The transcriber, with a log of every batched decode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.log: list[dict] = []
        self.lock = threading.Lock()

    def decode_windows(self, windows, options):
        started = time.monotonic()
        out = self.inner.decode_batch(windows, options)  # as the scheduler composed it
        ended = time.monotonic()
        # Partials and finals share options (and batches); a window without temperature fallback
        # is a partial preview.
        previews = sum(not w.fallback for w in windows)
        kind = "partial" if previews == len(windows) else "final" if not previews else "mixed"
        with self.lock:
            self.log.append(
                dict(
                    start=started,
                    end=ended,
                    n=len(windows),
                    beam=options.beam_size,
                    kind=kind,
                    words=options.word_timestamps or any(w.words for w in windows),
                    seconds=[round(len(w.audio) / SAMPLE_RATE, 2) for w in windows],
                )
            )
        return out


@dataclass
class Record:
    fed: list[float] = field(default_factory=list)
    events: list[tuple[float, object]] = field(default_factory=list)
    feed_cpu: float = 0.0

    def fed_at(self, seconds: float) -> float:
        return self.fed[min(len(self.fed) - 1, max(0, int(seconds * SAMPLE_RATE) // CHUNK))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_streams(services, manager, runner, config, audio, n: int, stagger_s: float) -> list[Record]:
    records = [Record() for _ in range(n)]

    async def one(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        rec = records[k]
        done = asyncio.Event()

        def deliver(event) -> None:
            rec.events.append((time.monotonic(), event))
            if event.type == "end":
                done.set()

        live = manager.create(config, sample_rate=SAMPLE_RATE, encoding="pcm_f32le", load=runner.load())
        manager.attach(live, deliver, None)
        runner.start(live)
        t0 = time.monotonic()
        for offset in range(0, len(audio), CHUNK):
            await asyncio.sleep(max(0.0, t0 + offset / SAMPLE_RATE - time.monotonic()))
            c0 = time.thread_time()
            runner.feed(live, audio[offset : offset + CHUNK])
            rec.feed_cpu += time.thread_time() - c0
            rec.fed.append(time.monotonic())
        runner.finish(live)
        await asyncio.wait_for(done.wait(), 120)

    await asyncio.gather(*(one(k) for k in range(n)))
    return records


def score(records: list[Record], phrases: list[Phrase]) -> dict:
    first, finals_lat, missed, refs, hyps = [], [], 0, [], []
    for rec in records:
        finals = [(w, e) for w, e in rec.events if e.type == "final"]
        texts = [(w, e) for w, e in rec.events if e.type in ("final", "partial") and e.text.strip()]
        refs.append(" ".join(p.reference for p in phrases))
        hyps.append(" ".join(e.text for _, e in finals))
        for p in phrases:
            onset = rec.fed_at(p.speech_start)
            end_wall = rec.fed_at(p.speech_end - 1 / SAMPLE_RATE)
            t = next((w for w, e in texts if w >= onset and e.end > p.speech_start), None)
            if t is not None:
                first.append(t - onset)
            f = next((w for w, e in finals if e.end >= p.speech_end - COVER_TOLERANCE_S), None)
            if f is None:
                missed += 1
            else:
                finals_lat.append(f - end_wall)
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return dict(
        final_p50=pct(finals_lat, 50),
        final_p95=pct(finals_lat, 95),
        final_max=max(finals_lat, default=float("nan")),
        first_p50=pct(first, 50),
        first_p95=pct(first, 95),
        missed=missed,
        wer=100 * corpus_wer(refs, hyps),
        latencies=[round(x, 2) for x in finals_lat],
    )


def decode_summary(log: list[dict], t_begin: float, t_end: float) -> dict:
    by: dict[str, list[dict]] = {}
    for d in log:
        by.setdefault(f"{d['kind']} beam{d['beam']}{'+words' if d['words'] else ''}", []).append(d)
    out = {}
    for kind, ds in sorted(by.items()):
        ms = [1000 * (d["end"] - d["start"]) for d in ds]
        out[kind] = dict(
            batches=len(ds),
            windows=sum(d["n"] for d in ds),
            mean_batch=round(statistics.mean(d["n"] for d in ds), 2),
            ms_p50=round(statistics.median(ms)),
            ms_p95=round(float(np.percentile(ms, 95))),
            window_s_mean=round(statistics.mean(s for d in ds for s in d["seconds"]), 2),
        )
    busy = sum(d["end"] - d["start"] for d in log)
    out["busy_fraction"] = round(busy / max(1e-9, t_end - t_begin), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--clips", type=int, default=None, help="first N LJ Speech clips (default all 32)")
    parser.add_argument("--first", type=int, default=0, help="skip the first N clips")
    parser.add_argument("--pause", type=float, default=0.6, help="silence between clips (bench/streaming.py: 0.6)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--options", default="{}", help="JSON overrides of preset values")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between stream starts")
    parser.add_argument("--threads", type=int, default=0, help="engine cpu_threads (0: all cores)")
    parser.add_argument("--model", default="base")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()

    from malsori.engine import EngineConfig, Transcriber
    from malsori.engine.scheduler import DecodeScheduler
    from malsori.server.live import LiveRunner
    from malsori.streaming import SessionManager, StreamConfig

    audio, phrases = load_talk(args.clips, args.pause, args.first)
    config = StreamConfig.from_preset(args.preset, language="en", **json.loads(args.options))
    transcriber = Transcriber(EngineConfig(model=args.model, cpu_threads=args.threads))
    decoder = TimedDecoder(transcriber)
    scheduler = DecodeScheduler(decoder, max_batch=transcriber.max_batch_size, workers=transcriber.workers)
    # Warm up: first calls allocate.
    from malsori.engine.windows import Window

    scheduler.submit(Window(audio[: 3 * SAMPLE_RATE]), config.final_options(), owner="warm").result()
    scheduler.submit(Window(audio[: 3 * SAMPLE_RATE]), config.partial_options(), owner="warm").result()
    decoder.log.clear()

    async def go():
        services = SimpleNamespace(scheduler=scheduler)
        manager = SessionManager(max_sessions=64)
        runner = LiveRunner(services, manager)
        rss0 = rss_mb()
        peak = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.25):
                peak[0] = max(peak[0], rss_mb())

        threading.Thread(target=sample, daemon=True).start()
        t_begin = time.monotonic()
        records = await run_streams(services, manager, runner, config, audio, args.streams, args.stagger)
        t_end = time.monotonic()
        stop.set()
        await runner.close()
        return records, rss0, peak[0], t_begin, t_end

    records, rss0, peak, t_begin, t_end = asyncio.run(go())
    scheduler.close()
    s = score(records, phrases)
    talk_s = len(audio) / SAMPLE_RATE
    result = dict(
        streams=args.streams,
        talk_s=round(talk_s, 1),
        phrases=len(phrases),
        preset=args.preset,
        options=json.loads(args.options),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items() if k != "latencies"},
        feed_ms_per_s=round(1000 * statistics.mean(r.feed_cpu for r in records) / talk_s, 2),
        rss_before_mb=round(rss0),
        rss_growth_per_stream_mb=round((peak - rss0) / args.streams, 1),
        decodes=decode_summary(decoder.log, t_begin, t_end),
        errors=sum(1 for r in records for _, e in r.events if e.type == "error"),
    )
    print(json.dumps(result, indent=1))
    print("latencies:", s["latencies"])
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **result,
                    "latencies": s["latencies"],
                    "finals": [[e.text for _, e in r.events if e.type == "final"] for r in records],
                }
            )
        )


if __name__ == "__main__":
    main()
