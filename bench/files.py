"""File-transcription benchmark: malsori against plain faster-whisper, in one run, on one machine.

Measures word error rate (Whisper English normalizer, parentheses kept as words, as
``shared/testdata/README.md`` prescribes) and throughput (audio seconds per wall second) over the
English sets of the test data for three ways of transcribing the same decoded arrays:

- ``faster-whisper``: plain ``WhisperModel(model_dir, device="cpu", compute_type="int8")
  .transcribe(audio, beam_size=5, language=...)``, one file after another (its defaults otherwise);
- ``malsori batched``: ``Pipeline(transcriber).transcribe_many`` over all files of a set at once;
- ``malsori one by one``: ``Transcriber.transcribe`` per file.

Same model directory, beam size, language setting and CPU threads in all for all (malsori splits them
as the CLI does: two decodes of one thread each on two cores); one warm-up file per
system is excluded; audio decoding is excluded for all. Further sections check that the short encoder
does not cost accuracy elsewhere (every language of ``multi/``, scored by CER for ja/ko/zh) and a long
input (all LJ Speech clips concatenated into one ~4 minute recording).

Run it alone on the machine (figures are meaningless while other work shares the CPU)::

    flock /tmp/malsori-bench.lock .venv/bin/python bench/files.py --write

``--only-long`` runs the long input alone (a couple of minutes; printed, not written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import DOC, REPO, TESTDATA, cpu_name, replace_block  # also puts src/ on sys.path

from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber, decode_audio, resolve_model
from malsori.engine.transcriber import cpu_layout
from malsori.evaluation import TestClip, corpus_wer, load_manifest, normalize

SECTION = "## File transcription"

# The English sets: name -> predicate on a manifest clip.
SETS = {
    "ljspeech": lambda c: c.path.parent.name == "ljspeech",
    "jfk": lambda c: c.path.name == "jfk.flac",
    "pocketsphinx": lambda c: c.path.parent.name == "pocketsphinx",
    "multi-en": lambda c: c.path.parent.name == "multi" and c.language == "en",
}


@dataclass
class Run:
    system: str
    texts: list[str]
    wall: float


class PlainFasterWhisper:
    """faster-whisper's own ``transcribe()``, as a user would call it."""

    name = "faster-whisper"

    def __init__(self, model_dir: Path, threads: int, beam: int) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
        self.beam = beam

    def one(self, audio: np.ndarray, language: str | None) -> str:
        segments, _ = self.model.transcribe(audio, beam_size=self.beam, language=language)
        return " ".join(s.text.strip() for s in segments)

    def run(self, audios, languages) -> list[str]:
        return [self.one(a, lang) for a, lang in zip(audios, languages, strict=True)]


class Malsori:
    def __init__(self, transcriber: Transcriber, beam: int, batched: bool, **options) -> None:
        self.t = transcriber
        self.beam = beam
        self.batched = batched
        self.options = options
        self.name = "malsori batched" if batched else "malsori one by one"

    def _opts(self, language):
        return TranscribeOptions(beam_size=self.beam, language=language, **self.options)

    def run(self, audios, languages) -> list[str]:
        if self.batched and len(set(languages)) == 1:
            return [t.text for t in Pipeline(self.t).transcribe_many(audios, self._opts(languages[0]))]
        if self.batched:  # one batch per language
            out: list[str | None] = [None] * len(audios)
            for lang in dict.fromkeys(languages):
                idx = [i for i, x in enumerate(languages) if x == lang]
                for i, t in zip(idx, Pipeline(self.t).transcribe_many([audios[i] for i in idx], self._opts(lang)), strict=True):
                    out[i] = t.text
            return out  # type: ignore[return-value]
        return [Pipeline(self.t).transcribe(a, self._opts(lang)).text for a, lang in zip(audios, languages, strict=True)]


def timed(system, audios, languages) -> Run:
    started = time.perf_counter()
    texts = system.run(audios, languages)
    return Run(system.name, texts, time.perf_counter() - started)


def concatenate(audios: list[np.ndarray], gap_s: float) -> np.ndarray:
    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    parts: list[np.ndarray] = []
    for a in audios:
        parts.extend([a, gap])
    return np.concatenate(parts[:-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every system")
    ap.add_argument("--language", default="en", help="'en' forces English for both systems; 'detect' lets both detect")
    ap.add_argument("--sets", default="ljspeech,jfk,pocketsphinx,multi-en", help=f"comma list of {', '.join(SETS)}")
    ap.add_argument("--no-one-by-one", action="store_true", help="skip malsori one file at a time")
    ap.add_argument("--no-languages", action="store_true", help="skip the multi/ languages accuracy check")
    ap.add_argument("--no-long", action="store_true", help="skip the long-input check")
    ap.add_argument("--only-long", action="store_true", help="run only the long-input check (not with --write)")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds of silence between clips of the long input")
    ap.add_argument(
        "--context-runs",
        type=int,
        default=0,
        help="long input with context: decode its windows in this many runs instead of the pipeline's choice "
        "(1: every window after the first with the text before it, as faster-whisper)",
    )
    ap.add_argument("--write", action="store_true", help=f"write the results into {DOC.relative_to(REPO)}")
    args = ap.parse_args()
    if args.context_runs and args.write:
        ap.error("--context-runs is for a study of the long input; its figures are not the default's to --write")
    if args.only_long:
        if args.write or args.no_long:
            ap.error("--only-long prints the long-input table only; it cannot --write or go with --no-long")
        args.sets, args.no_languages, args.no_one_by_one = "", True, True

    language = None if args.language in ("detect", "auto") else args.language
    manifest = load_manifest(TESTDATA)
    model_dir = resolve_model(args.model)
    plain = PlainFasterWhisper(model_dir, args.threads, args.beam)
    threads, workers = cpu_layout(0, 0, cores=args.threads)  # the CLI's layout of the same threads
    transcriber = Transcriber(
        EngineConfig(model=args.model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers)
    )
    systems = [plain, Malsori(transcriber, args.beam, batched=True)]
    if not args.no_one_by_one:
        systems.append(Malsori(transcriber, args.beam, batched=False))

    # Warm-up (excluded): one clip through each system.
    warm = decode_audio(TESTDATA / "en/jfk.flac")
    for system in systems:
        system.run([warm], [language])

    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    # -- English sets: WER and throughput ---------------------------------------------------------
    names = [s for s in args.sets.split(",") if s]
    clips: dict[str, list[TestClip]] = {n: [c for c in manifest if SETS[n](c)] for n in names}
    audio = {n: [decode_audio(c.path) for c in cs] for n, cs in clips.items()}
    runs: dict[str, dict[str, Run]] = {n: {} for n in names}
    for n in names:
        for system in systems:
            runs[n][system.name] = timed(system, audio[n], [language] * len(audio[n]))
            print(f"  {n:<13} {system.name:<20} {runs[n][system.name].wall:6.1f} s", file=sys.stderr, flush=True)

    if names:
        lang_note = "forced `en` for every system" if language else "detected by each system"
        out(f"English sets, beam {args.beam}, language {lang_note}, {args.threads} CPU threads, int8, model `{args.model}`.")
        out("Throughput is audio seconds per wall second (higher is faster); the ratio compares it to faster-whisper's.")
        out()
        out("| set | files | audio s | system | WER | wall s | throughput | vs faster-whisper |")
        out("|---|---:|---:|---|---:|---:|---:|---:|")
        for n in names + (["all"] if len(names) > 1 else []):
            set_names = names if n == "all" else [n]
            refs = [c.reference for s in set_names for c in clips[s]]
            dur = sum(len(a) for s in set_names for a in audio[s]) / 16000
            base_wall = sum(runs[s][plain.name].wall for s in set_names)
            for system in systems:
                hyps = [t for s in set_names for t in runs[s][system.name].texts]
                wall = sum(runs[s][system.name].wall for s in set_names)
                err = corpus_wer(refs, hyps)
                out(
                    f"| {n} | {len(refs)} | {dur:.1f} | {system.name} | {100 * err:.1f}% | {wall:.1f} | "
                    f"{dur / wall:.1f}x | {base_wall / wall:.2f}x |"
                )

    # -- Other languages: does the short encoder cost accuracy? -------------------------------------
    if not args.no_languages:
        multi = [c for c in manifest if c.path.parent.name == "multi"]
        m_audio = [decode_audio(c.path) for c in multi]
        m_lang = [c.language for c in multi]
        m_runs = [timed(s, m_audio, m_lang) for s in systems[:2]]
        out()
        out(
            "Every clip of `multi/` with its language forced (the short encoder against the padded 30 s one); "
            "CER for ja, ko, zh, WER otherwise."
        )
        out()
        out("| clip | lang | metric | faster-whisper | malsori batched |")
        out("|---|---|---|---:|---:|")
        for k, c in enumerate(multi):
            metric = "CER" if c.language in ("ja", "ko", "zh") else "WER"
            scores = [corpus_wer([c.reference], [r.texts[k]], c.language) for r in m_runs]
            out(f"| {c.path.name} | {c.language} | {metric} | {100 * scores[0]:.1f}% | {100 * scores[1]:.1f}% |")

    # -- One long input ------------------------------------------------------------------------------
    if not args.no_long:
        lj = [c for c in manifest if SETS["ljspeech"](c)]
        long_audio = concatenate([decode_audio(c.path) for c in lj], args.gap)
        if args.context_runs:
            from malsori.engine import pipeline

            pipeline._context_runs = lambda n: min(args.context_runs, n)
        ref = " ".join(c.reference for c in lj)
        dur = len(long_audio) / 16000
        variants: list[tuple[str, object]] = [
            ("faster-whisper (condition_on_previous_text=True)", plain),
            (
                "malsori, condition_on_previous_text=True" + (f", {args.context_runs} runs" if args.context_runs else ""),
                Malsori(transcriber, args.beam, True, condition_on_previous_text=True),
            ),
            (
                "malsori, condition_on_previous_text=False",
                Malsori(transcriber, args.beam, True, condition_on_previous_text=False),
            ),
        ]
        out()
        out(
            f"One long input: the {len(lj)} LJ Speech clips in order with {args.gap} s gaps, {dur:.0f} s of audio, "
            "transcribed as one recording. With `condition_on_previous_text` malsori decodes the input's windows "
            "in contiguous runs side by side (as many as keep its batches as full as without context, two windows a run "
            "at least), each window prompted with the tokens its predecessor decoded."
        )
        out()
        out("| system | WER | errors | wall s | throughput | vs faster-whisper |")
        out("|---|---:|---:|---:|---:|---:|")
        long_runs = [(label, timed(system, [long_audio], [language])) for label, system in variants]
        base = long_runs[0][1]
        base_wer = corpus_wer([ref], base.texts)
        for label, r in long_runs:
            err = corpus_wer([ref], r.texts)
            out(
                f"| {label} | {100 * err:.1f}% | {round(err * len(normalize(ref).split()))} | {r.wall:.1f} | "
                f"{dur / r.wall:.1f}x | {base.wall / r.wall:.2f}x |"
            )
        ctx_label, ctx = long_runs[1]
        ctx_wer = corpus_wer([ref], ctx.texts)
        met = ctx_wer <= base_wer + 1e-9 and base.wall / ctx.wall >= 1.5
        out()
        out(
            f"Target (issue 17): WER at most faster-whisper's at 1.5x its speed or more: {ctx_label} "
            f"{100 * ctx_wer:.1f}% against {100 * base_wer:.1f}%, {base.wall / ctx.wall:.2f}x: {'met' if met else 'not met'}."
        )

    command = "flock /tmp/malsori-bench.lock .venv/bin/python " + " ".join(["bench/files.py", *sys.argv[1:]])
    meta = (
        f"Command: `{command}`  \n"
        f"Machine: {os.cpu_count()}-core CPU ({cpu_name()}), {platform.system()}; "
        f"date {dt.date.today().isoformat()}."
    )
    print("\n" + meta)
    if args.write:
        # Only the generated block: the tuning evidence written by hand in this section stays.
        replace_block(SECTION, "bench/files.py", meta + "\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
