"""Korean benchmark (issue 18): malsori against plain faster-whisper on real Korean speech, in one run.

Audio: the 10 Zeroth-Korean read sentences of ``shared/testdata/ko`` (speaker 104) and
``multi/test_ko.wav`` (a second speaker), 99 s in all. Scored with :func:`malsori.evaluation.korean_cer`
(NFC, punctuation and every space removed; "CER" spells Arabic digits out in Sino-Korean numerals as the
references do, "CER digits as given" does not).

Sections, all in the same process and run:

- **offline**: plain ``WhisperModel(model_dir, device="cpu", compute_type="int8").transcribe(audio,
  beam_size=5, language="ko")`` one file after another, against malsori's ``Pipeline`` (all files at
  once, batched; and one file at a time), same model directory, beam, threads; one warm-up excluded;
  audio decoding excluded. Speed figures depend on the load, printed beside them (``/proc/loadavg``).
- **causes**: malsori's text with one thing changed at a time (beam, fallback, thresholds, VAD, encoder
  padding, its value and minimum input, batching), to show where Korean accuracy goes.
- **conditions**: the same clips under seeded acoustic changes (tempo 0.9x and 1.1x, white noise at
  20 and 10 dB SNR, a synthetic room, silence around the speech), 77 decodes, faster-whisper against
  malsori with each Korean encoder padding: eleven read sentences are too few to tell a setting from
  the host's arithmetic (a point is five characters), seven conditions of them less so.
- **prompt**: an initial prompt (polite style, with punctuation) and hotwords.
- **detect**: each clip on its own with no language given: share detected as ``ko``.
- **http**: the clips sent to a fresh ``malsori serve`` (defaults, beam 5) as ``POST
  /v1/audio/transcriptions`` with ``language=ko``, one request at a time and then all at once: what the
  server's shared scheduler makes of Korean (on a CPU its batches hold Korean windows of one encoder
  length, see ``Transcriber.batch_class``); speed against the offline section's faster-whisper when both
  run.
- **live**: the clips joined with 0.6 s pauses as one talk, streamed at real time to a fresh
  ``malsori serve`` on ``/v1/stream`` with the ``korean`` preset (``bench/streaming.py``'s client);
  streaming CER of the finals against offline CER of the same audio (``Pipeline``, language ``ko``);
  final latency from each phrase's end of speech (energy) to the first final covering it.
  ``--streams N``: N such talks at once, stream k starting at clip 1 + k * 11 / N (the clips before it
  at its end), so several people say their own sentences to one server.

    flock /tmp/malsori-bench.lock .venv/bin/python bench/korean.py --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DOC, REPO, TESTDATA, machine_line, replace_block

from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber, decode_audio, resolve_model
from malsori.engine.transcriber import cpu_layout
from malsori.evaluation import korean_cer, korean_clips

SECTION = "## Korean (issue 18)"
PROMPT = "안녕하세요. 오늘 회의를 시작하겠습니다."
HOTWORDS = "대통령, 교수, 전기, 커피"


@contextlib.contextmanager
def padded_features_with_zeros():
    """Windows encoded as faster-whisper 1.2's ``transcribe()`` encodes them: the log-mel features of the
    audio alone, then padded to the encoder length with 0.0 (its ``pad_or_trim``), instead of the
    features of the audio followed by silence (zero samples, as OpenAI Whisper's ``log_mel_spectrogram``
    pads and malsori does). 0.0 is a log-mel of 1e-4, a faint noise floor, where silence is clamped to
    the window's loudest frame minus 8: the encoder hears a different padding."""
    from malsori.engine import transcriber as engine

    def features_for(self, windows, options):
        target = max(engine.encoder_frames(w, options) for w in windows)
        feats = np.zeros((len(windows), self._features.mel_filters.shape[0], target), dtype=np.float32)
        lengths = []
        for row, w in enumerate(windows):
            audio = np.asarray(w.audio, dtype=np.float32)[: (target - 1) * engine._HOP]
            own = self._features(audio)[:, :-1][:, :target]  # faster-whisper: 160 samples of padding, last frame cut
            feats[row, :, : own.shape[1]] = own
            lengths.append(min(max(1, math.ceil(len(w.audio) / engine._HOP)), target))
        return feats, lengths

    original = engine.Transcriber._features_for
    engine.Transcriber._features_for = features_for
    try:
        yield
    finally:
        engine.Transcriber._features_for = original


def conditions(audios: list[np.ndarray], seed: int = 18) -> list[tuple[str, list[np.ndarray]]]:
    """The clips under seeded acoustic changes (the references stay): each condition's list of audios."""
    rng = np.random.default_rng(seed)

    def tempo(a: np.ndarray, factor: float) -> np.ndarray:  # resampled: faster and higher, or slower and lower
        return np.interp(np.arange(0, len(a) - 1, factor), np.arange(len(a)), a).astype(np.float32)

    def noise(a: np.ndarray, snr_db: float) -> np.ndarray:
        power = float(np.mean(a**2)) / 10 ** (snr_db / 10)
        return (a + rng.normal(0, math.sqrt(power), len(a))).astype(np.float32)

    def room(a: np.ndarray, rt60_s: float = 0.4) -> np.ndarray:  # decaying noise as the impulse response
        t = np.arange(int(rt60_s * 16000)) / 16000
        ir = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / rt60_s)
        ir[0] = 1.0 / 0.3
        n = len(a) + len(ir) - 1
        wet = np.fft.irfft(np.fft.rfft(a, n) * np.fft.rfft(ir, n), n)[: len(a)]
        return (wet * np.max(np.abs(a)) / max(np.max(np.abs(wet)), 1e-9)).astype(np.float32)

    def around(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(16000, np.float32), a, np.zeros(32000, np.float32)])

    return [
        ("as recorded", audios),
        ("tempo 0.9x", [tempo(a, 0.9) for a in audios]),
        ("tempo 1.1x", [tempo(a, 1.1) for a in audios]),
        ("white noise 20 dB", [noise(a, 20) for a in audios]),
        ("white noise 10 dB", [noise(a, 10) for a in audios]),
        ("room (0.4 s)", [room(a) for a in audios]),
        ("1 s of silence before, 2 s after", [around(a) for a in audios]),
    ]


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cer_cells(refs: list[str], hyps: list[str]) -> str:
    return f"{100 * korean_cer(refs, hyps):.1f}% | {100 * korean_cer(refs, hyps, numbers=False):.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--sections", default="offline,causes,prompt,detect,http,live")
    ap.add_argument("--preset", default="korean", help="live preset")
    ap.add_argument("--options", default="{}", help="live: JSON overrides of the preset, e.g. '{\"commit_after_s\": 0}'")
    ap.add_argument("--streams", type=int, default=1, help="live: this many talks at once, each from its own clip")
    ap.add_argument("--condition", default="as recorded", help="live: the clips under one of the conditions section's changes")
    ap.add_argument("--write", action="store_true", help=f"write the results into {DOC.relative_to(REPO)}")
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    clips = [(c.path, c.reference) for c in korean_clips(TESTDATA)]
    refs = [r for _, r in clips]
    audios = [decode_audio(p) for p, _ in clips]
    duration = sum(len(a) for a in audios) / 16000
    model_dir = resolve_model("base")
    threads, workers = cpu_layout(0, 0, cores=args.threads)  # the CLI's layout of the same threads
    transcriber = Transcriber(
        EngineConfig(model="base", device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers)
    )
    lines: list[str] = []
    base_wall: float | None = None

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    def malsori(batched: bool = True, audio_list=None, **options) -> list[str]:
        o = TranscribeOptions(**{"language": "ko", "beam_size": args.beam, **options})
        audio_list = audios if audio_list is None else audio_list
        if batched:
            return [t.text for t in Pipeline(transcriber).transcribe_many(audio_list, o)]
        return [Pipeline(transcriber).transcribe(a, o).text for a in audio_list]

    out(
        f"{len(clips)} Korean clips ({duration:.1f} s): `ko/` (Zeroth-Korean, 10) and `multi/test_ko.wav`; model `base`, "
        f"int8, {args.threads} CPU threads. CER: NFC, punctuation and spaces removed, digits spelled out in "
        'Sino-Korean numerals; "digits as given" leaves them.'
    )
    out()

    if "offline" in sections:
        from faster_whisper import WhisperModel

        plain = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=args.threads)

        def faster_whisper() -> list[str]:
            return [" ".join(s.text.strip() for s in plain.transcribe(a, beam_size=args.beam, language="ko")[0]) for a in audios]

        plain.transcribe(audios[0], beam_size=args.beam, language="ko")  # warm-up, excluded
        malsori(audio_list=audios[:1])
        runs = []
        for name, fn in (
            (f"faster-whisper `transcribe()` (beam {args.beam})", faster_whisper),
            ("malsori batched", lambda: malsori(True)),
            ("malsori one by one", lambda: malsori(False)),
        ):
            before = load()
            started = time.perf_counter()
            hyps = fn()
            runs.append((name, hyps, time.perf_counter() - started, before, load()))
        base_wall = runs[0][2]
        out(f"Offline, language forced `ko`, beam {args.beam}:")
        out()
        out("| system | CER | CER digits as given | wall s | throughput | vs faster-whisper | load before / after |")
        out("|---|---:|---:|---:|---:|---:|---|")
        for name, hyps, wall, before, after in runs:
            out(
                f"| {name} | {cer_cells(refs, hyps)} | {wall:.1f} | {duration / wall:.1f}x | {base_wall / wall:.2f}x | "
                f"{before[13:]} / {after[13:]} |"
            )
        out()

    if "causes" in sections:
        from malsori.engine import transcriber as engine

        out("Causes, one change at a time from malsori's defaults (batched; accuracy only, so no timing):")
        out()
        out("| change | CER | CER digits as given |")
        out("|---|---:|---:|")
        variants: list[tuple[str, dict]] = [
            ("none (defaults)", {}),
            ("beam 1 (greedy, with fallback)", {"beam_size": 1}),
            ("beam 3", {"beam_size": 3}),
            (
                "greedy, best_of 2, temperatures 0 and 0.4 (the live presets' finals)",
                {"beam_size": 1, "best_of": 2, "temperatures": (0.0, 0.4)},
            ),
            ("no temperature fallback", {"temperatures": (0.0,)}),
            (
                "no thresholds (no-speech, log-prob, compression ratio)",
                {"no_speech_threshold": None, "log_prob_threshold": None, "compression_ratio_threshold": None},
            ),
            ("compression ratio threshold 3.0", {"compression_ratio_threshold": 3.0}),
            ("no VAD", {"vad_filter": False}),
        ]
        for label, options in variants:
            out(f"| {label} | {cer_cells(refs, malsori(**options))} |")
        out(f"| one file at a time (no batching) | {cer_cells(refs, malsori(False))} |")
        # The engine's padding itself, not TranscribeOptions.encoder_padding_s: 20 s is beyond the option's range.
        pad, minimum = engine._PAD_FRAMES, engine._MIN_FRAMES
        try:
            for frames in (100, 200, 300, 500, 1000, 2000):
                engine._PAD_FRAMES = frames
                label = f"encoder padding {frames / 100:g} s" + (" (default for ko)" if frames == pad else "")
                out(f"| {label} | {cer_cells(refs, malsori())} |")
                if frames == 200:
                    out(f"| encoder padding 2 s, one file at a time | {cer_cells(refs, malsori(False))} |")
            engine._PAD_FRAMES = pad
            for frames in (1000, 1500, 3000):
                engine._MIN_FRAMES = frames
                out(f"| minimum encoder input {frames / 100:g} s (default {minimum / 100:g}) | {cer_cells(refs, malsori())} |")
            with padded_features_with_zeros():
                out(f"| minimum encoder input 30 s, features padded with 0.0 | {cer_cells(refs, malsori())} |")
                engine._MIN_FRAMES = minimum
                for frames in (200, 300, 500, 1000, 2000):
                    engine._PAD_FRAMES = frames
                    out(f"| encoder padding {frames / 100:g} s, features padded with 0.0 | {cer_cells(refs, malsori())} |")
        finally:
            engine._PAD_FRAMES, engine._MIN_FRAMES = pad, minimum
        out()

    if "conditions" in sections:
        from faster_whisper import WhisperModel

        from malsori.engine import transcriber as engine

        plain = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=args.threads)
        sets = conditions(audios)
        every = [a for _, list_ in sets for a in list_]
        every_ref = refs * len(sets)
        rows: list[tuple[str, list[str]]] = [
            (
                f"faster-whisper `transcribe()` (beam {args.beam})",
                [" ".join(s.text.strip() for s in plain.transcribe(a, beam_size=args.beam, language="ko")[0]) for a in every],
            )
        ]
        for frames in (100, 200, 300, 500, 1000):
            default = " (default)" if frames == engine._PAD_FRAMES else ""
            hyps = malsori(audio_list=every, encoder_padding_s=frames / 100)
            rows.append((f"malsori, encoder padding {frames / 100:g} s{default}", hyps))
        names = [name for name, _ in sets]
        out(f"Acoustic conditions (the {len(refs)} clips each, {len(every)} decodes; CER, digits spelled out):")
        out()
        out("| system | all | " + " | ".join(names) + " |")
        out("|---|---:|" + "---:|" * len(names))
        n = len(refs)
        for label, hyps in rows:
            cells = [f"{100 * korean_cer(refs, hyps[i * n : (i + 1) * n]):.1f}%" for i in range(len(sets))]
            out(f"| {label} | **{100 * korean_cer(every_ref, hyps):.1f}%** | " + " | ".join(cells) + " |")
        out()

    if "prompt" in sections:
        out("Prompt and vocabulary (batched, beam as above):")
        out()
        out("| option | CER | CER digits as given | sentences ending in punctuation |")
        out("|---|---:|---:|---:|")
        for label, options in (
            ("none", {}),
            (f"initial_prompt `{PROMPT}`", {"initial_prompt": PROMPT}),
            (f"hotwords `{HOTWORDS}`", {"hotwords": HOTWORDS}),
        ):
            hyps = malsori(**options)
            marked = sum(h.rstrip().endswith((".", "?", "!")) for h in hyps)
            out(f"| {label} | {cer_cells(refs, hyps)} | {marked} of {len(hyps)} |")
        out()

    if "detect" in sections:
        o = TranscribeOptions(beam_size=args.beam)
        found = [Pipeline(transcriber).transcribe(a, o) for a in audios]
        ko = sum(t.language == "ko" for t in found)
        others = sorted({t.language for t in found} - {"ko"})
        out(
            f"Language detection, each clip alone, no language given: {ko} of {len(found)} detected `ko` "
            f"({100 * ko / len(found):.0f}%){'; others: ' + ', '.join(others) if others else ''}; "
            f"lowest probability {min(t.language_probability for t in found if t.language == 'ko'):.2f}."
        )
        out()

    if "http" in sections:
        for line in http(clips, audios, base_wall):
            out(line)
        out()

    if "live" in sections:
        chosen = None if args.condition == "as recorded" else dict(conditions(audios))[args.condition]
        out(live(args.preset, transcriber, clips, args.beam, json.loads(args.options), chosen, args.condition, args.streams))
        out()

    meta = (
        f"Command: `flock /tmp/malsori-bench.lock .venv/bin/python bench/korean.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {machine_line()}; date {dt.date.today().isoformat()}; other work shared the CPU "
        "(load figures beside the timings)."
    )
    print("\n" + meta)
    if args.write:
        # One block per set of sections: accuracy-only sections need no quiet machine, timed ones do.
        replace_block(SECTION, f"bench/korean.py {args.sections}", meta + "\n\n" + "\n".join(lines))
    return 0


def http(clips: list[tuple[Path, str]], audios: list[np.ndarray], base_wall: float | None) -> list[str]:
    """The clips sent to a fresh ``malsori serve`` (defaults: beam 5, the shared scheduler), language
    ``ko``: one request at a time, then all at once (``bench/load.py``'s clients)."""
    from load import Clip, run_level, start_server

    sent = [Clip(p.name, p.read_bytes(), len(a) / 16000, ref) for (p, ref), a in zip(clips, audios, strict=True)]
    lines = [
        "HTTP, a fresh `malsori serve` (defaults: beam 5, the shared scheduler), `POST /v1/audio/transcriptions` "
        "with `language=ko`, one request at a time, then every clip at once (one untimed request first):",
        "",
        "| clients | CER | CER digits as given | wall s | throughput | vs faster-whisper | load before / after |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="malsori-korean-http-") as scratch:
        process, url = start_server(Path(scratch) / "data", "base", Path(scratch) / "server.log")
        try:
            asyncio.run(run_level(url, sent[:1], 1, 1, 600.0, language="ko"))  # warm-up, excluded
            for concurrency in (1, len(sent)):
                before = load()
                level = asyncio.run(run_level(url, sent, concurrency, len(sent), 600.0, language="ko"))
                if level.ok != len(sent):
                    raise SystemExit(f"{len(sent) - level.ok} of {len(sent)} requests failed: {level.statuses}")
                ratio = f"{base_wall / level.wall_s:.2f}x" if base_wall else "–"
                lines.append(
                    f"| {concurrency} | {cer_cells(level.references, level.hypotheses)} | {level.wall_s:.1f} | "
                    f"{level.audio_s / level.wall_s:.1f}x | {ratio} | {before[13:]} / {load()[13:]} |"
                )
                print(lines[-1], flush=True)
        finally:
            process.terminate()
            process.wait(30)
    return lines


def live(
    preset: str,
    transcriber: Transcriber,
    clips: list[tuple[Path, str]],
    beam: int,
    overrides: dict | None = None,
    audios: list[np.ndarray] | None = None,
    condition: str = "as recorded",
    streams: int = 1,
) -> str:
    """``streams`` > 1: that many talks at once, stream k starting at clip k * clips / streams (the
    ones before it at its end), like several people each saying their own sentences."""
    from streaming import PAUSE_S, Scores, join_talk, pct, run_concurrent, start_malsori, stream_malsori

    from malsori.client import StreamOptions

    samples = [decode_audio(path) for path, _ in clips] if audios is None else audios
    pairs = [(s, ref) for s, (_, ref) in zip(samples, clips, strict=True)]
    starts = [k * len(clips) // streams for k in range(streams)]
    talks = [join_talk("Korean talk", pairs[k:] + pairs[:k], first=k) for k in starts]
    offline = [
        Pipeline(transcriber).transcribe(talk.samples, TranscribeOptions(language="ko", beam_size=beam)).text for talk in talks
    ]
    refs = [" ".join(p.reference for p in talk.phrases) for talk in talks]

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_malsori(Path(tmp), {"MALSORI__STREAMING__MAX_SESSIONS": str(max(16, streams + 1))})
        try:
            before = load()
            options = StreamOptions(language="ko", preset=preset, options=overrides or {})
            stream = functools.partial(stream_malsori, options=options)
            records = asyncio.run(run_concurrent(stream, url, talks))
            after = load()
        finally:
            server.stop()
    texts = [" ".join(e[2].strip() for e in record.events if e[1] and e[2].strip()) for record in records]
    scores = Scores()
    for talk, record in zip(talks, records, strict=True):
        scores.add(talk, record)
    from_speech, missed = scores.final_latency, scores.missed
    stream_cer, offline_cer = korean_cer(refs, texts), korean_cer(refs, offline)
    errors = "; ".join(r.error for r in records if r.error) or "none"
    who = "one stream" if streams == 1 else f"{streams} streams at once (stream k from clip 1 + k * {len(clips)} / {streams})"
    return "\n".join(
        [
            f"Live: the {len(clips)} clips{'' if audios is None else f' ({condition})'} joined with {PAUSE_S} s pauses "
            f"({talks[0].duration:.0f} s), {who} at real time "
            f"to `malsori serve` `/v1/stream`, preset `{preset}`{f' with {overrides}' if overrides else ''}, language `ko`; "
            f"{before} before, {after} after.",
            "",
            "| streaming CER | offline CER (same audio) | difference | final p50 / p95 from end of speech | "
            "from end of clip | missed | errors |",
            "|---:|---:|---:|---:|---:|---:|---|",
            f"| {100 * stream_cer:.1f}% | {100 * offline_cer:.1f}% | {100 * (stream_cer - offline_cer):+.1f} | "
            f"{pct(from_speech, 50):.2f} / {pct(from_speech, 95):.2f} s | "
            f"{pct(scores.final_from_clip_end, 50):.2f} / {pct(scores.final_from_clip_end, 95):.2f} s | "
            f"{missed} of {sum(len(t.phrases) for t in talks)} | "
            f"{errors} |",
            "",
            *(f"Streamed finals{'' if streams == 1 else f' (stream {k + 1})'}: {text}" for k, text in enumerate(texts)),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
