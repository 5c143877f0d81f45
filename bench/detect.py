"""Benchmark the two speech detectors of POST /detect: accuracy and cost per chunk.

Positives: every speech recording of the test data (whole clips, Whisper reads the first 30 s), and the
first eight LJ Speech clips again with white noise mixed in at 10 dB SNR. Negatives:
``silence/empty.wav`` and non-speech generated here with numpy (fixed seeds): white, pink and brown
noise at several levels, mains hum, tones and chords that sound like music, a sine sweep, clicks,
digital silence, and empty.wav with noise added. Cost is the median wall time of one call on 1 s,
2 s and 10 s chunks (after a warm-up), on this machine's CPU.

    flock /tmp/malsori-bench.lock .venv/bin/python bench/detect.py [--testdata ../shared/testdata]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from malsori.detection import SileroDetector, WhisperDetector
from malsori.engine import EngineConfig, Transcriber, decode_audio
from malsori.engine.audio import SAMPLE_RATE
from malsori.evaluation import load_manifest

SR = SAMPLE_RATE


def _db(level_dbfs: float) -> float:
    return 10 ** (level_dbfs / 20)


def _normalize(x: np.ndarray, rms_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return (x / rms * _db(rms_dbfs)).astype(np.float32)


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


def non_speech(testdata: Path, seconds: float = 5.0) -> list[tuple[str, np.ndarray]]:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out: list[tuple[str, np.ndarray]] = []
    empty = decode_audio(testdata / "silence" / "empty.wav")
    out.append(("silence/empty.wav", empty))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for name, exponent in (("white", 0), ("pink", 1), ("brown", 2)):
            for level in (-20, -40):
                out.append((f"{name} noise {level} dBFS #{seed}", _normalize(_colored(rng, n, exponent), level)))
    rng = np.random.default_rng(10)
    out.append(("low-level white noise -60 dBFS", _normalize(rng.standard_normal(n), -60)))
    out.append(("digital silence", np.zeros(n, np.float32)))
    for mains in (50, 60):
        hum = sum(np.sin(2 * np.pi * mains * k * t) / k for k in (1, 2, 3, 5))
        out.append((f"{mains} Hz hum with harmonics", _normalize(hum, -20)))
    notes = [261.6, 329.6, 392.0, 523.3, 440.0, 349.2, 293.7, 246.9]
    melody = np.concatenate([np.sin(2 * np.pi * f * t[: n // len(notes)]) * np.exp(-3 * t[: n // len(notes)]) for f in notes])
    out.append(("melody of decaying tones", _normalize(melody, -20)))
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    out.append(("tremolo major chord", _normalize(chord, -20)))
    square = np.sign(np.sin(2 * np.pi * 220 * t)) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    out.append(("gated square wave", _normalize(square, -25)))
    sweep = np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * seconds) * t**2))
    out.append(("sine sweep 100-4000 Hz", _normalize(sweep, -20)))
    clicks = np.zeros(n)
    clicks[:: SR // 4] = 1.0
    out.append(("clicks 4 per second", (clicks * 0.8).astype(np.float32)))
    noisy_empty = empty + _normalize(np.random.default_rng(11).standard_normal(len(empty)), -40)
    out.append(("empty.wav + white noise -40 dBFS", noisy_empty.astype(np.float32)))
    return [(name, np.clip(audio, -1, 1).astype(np.float32)) for name, audio in out]


def speech(testdata: Path) -> list[tuple[str, np.ndarray]]:
    clips = [c for c in load_manifest(testdata) if c.reference]
    out = [(str(c.path.relative_to(testdata)), decode_audio(c.path)) for c in clips]
    rng = np.random.default_rng(20)
    for name, audio in [x for x in out if "ljspeech" in x[0]][:8]:
        rms = float(np.sqrt(np.mean(audio**2)))
        noise = rng.standard_normal(len(audio)) * rms / _db(10)
        out.append((f"{name} + white noise 10 dB SNR", np.clip(audio + noise, -1, 1).astype(np.float32)))
    return out


def cost_ms(detector, audio: np.ndarray, repeats: int) -> float:
    detector.detect(audio)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        detector.detect(audio)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    default = Path(os.environ.get("MALSORI_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testdata", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--show-errors", action="store_true", help="list each misclassified clip")
    args = parser.parse_args()

    tiny = Transcriber(EngineConfig(model="tiny.en"))
    detectors = {
        "silero": SileroDetector(),
        "whisper": WhisperDetector(lambda: tiny),
    }
    positives, negatives = speech(args.testdata), non_speech(args.testdata)
    jfk = decode_audio(args.testdata / "en" / "jfk.flac")
    print(f"{len(positives)} speech clips, {len(negatives)} non-speech clips; cpu cores: {os.cpu_count()}")
    print()
    print(
        "| detector | speech detected | non-speech rejected | accuracy "
        "| ms per 1 s chunk | ms per 2 s chunk | ms per 10 s chunk |"
    )
    print("|---|---|---|---|---|---|---|")
    errors: dict[str, list[str]] = {}
    for name, detector in detectors.items():
        hits = [detector.detect(audio).is_speech for _, audio in positives]
        rejects = [not detector.detect(audio).is_speech for _, audio in negatives]
        errors[name] = [n for (n, _), ok in zip(positives, hits, strict=True) if not ok] + [
            n for (n, _), ok in zip(negatives, rejects, strict=True) if not ok
        ]
        accuracy = (sum(hits) + sum(rejects)) / (len(hits) + len(rejects))
        costs = [cost_ms(detector, jfk[: int(s * SR)], args.repeats) for s in (1, 2, 10)]
        print(
            f"| {name} | {sum(hits)}/{len(hits)} | {sum(rejects)}/{len(rejects)} | {accuracy:.1%} | "
            + " | ".join(f"{c:.1f}" for c in costs)
            + " |"
        )
    if args.show_errors:
        for name, wrong in errors.items():
            print(f"\n{name} misclassified: {', '.join(wrong) or 'none'}")


if __name__ == "__main__":
    main()
