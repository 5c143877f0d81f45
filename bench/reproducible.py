"""Reproducible output (issue 17): what docs/benchmarks.md "Reproducible output" reports.

- ``speed``: malsori batched on the English sets (``Pipeline.transcribe_many`` per set, as
  ``bench/files.py`` does): WER, wall time and the batch sizes the model decoded. It decodes with the
  tree it lies in (``common`` puts that tree's src/ first); to compare two trees, run a copy in each,
  alternately, under the lock::

      flock /tmp/malsori-bench.lock sh -c 'for R in ../main ../wt-x ../main ../wt-x; do \
          chrt -r 1 .venv/bin/python $R/bench/reproducible.py speed; done'

- ``count``: how many windows each decode step saw (plain decode against fallback steps) on the English
  sets, ``multi/``, and the 237 s LJ Speech concatenation.
- ``forced``: the fallback forced (``log_prob_threshold=-0.3``) on the 14 non-LJ English clips, the old
  sampling (twice) against the deterministic ladder, with default and live-final options.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
from common import TESTDATA  # also puts this tree's src/ first on sys.path

import malsori.engine.transcriber as T
from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber, decode_audio
from malsori.evaluation import corpus_wer, load_manifest

SETS = {
    "ljspeech": lambda c: c.path.parent.name == "ljspeech",
    "jfk": lambda c: c.path.name == "jfk.flac",
    "pocketsphinx": lambda c: c.path.parent.name == "pocketsphinx",
    "multi-en": lambda c: c.path.parent.name == "multi" and c.language == "en",
}


class Counting:
    """The model, counting windows per ``generate`` call by kind and batch size."""

    def __init__(self, real) -> None:
        self.real, self.kinds, self.sizes = real, collections.Counter(), collections.Counter()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, enc, prompts, **kw):
        plain = kw.get("repetition_penalty", 1.0) == 1.0 and kw.get("sampling_topk", 1) == 1
        self.kinds["plain" if plain else "fallback"] += len(prompts)
        self.sizes[len(prompts)] += 1
        return self.real.generate(enc, prompts, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("speed", "count", "forced"))
    args = ap.parse_args()
    t = Transcriber(EngineConfig(model="base", device="cpu", compute_type="int8"))
    model = t._ct2 = Counting(t._ct2)
    m = load_manifest(TESTDATA)
    en = TranscribeOptions(beam_size=5, language="en")
    if args.what == "speed":
        data = {n: [c for c in m if p(c)] for n, p in SETS.items()}
        audio = {n: [decode_audio(c.path) for c in cs] for n, cs in data.items()}
        Pipeline(t).transcribe(decode_audio(TESTDATA / "en/jfk.flac"), en)  # warm-up
        model.sizes.clear()
        refs, hyps, wall = [], [], 0.0
        for n in SETS:
            started = time.perf_counter()
            out = Pipeline(t).transcribe_many(audio[n], en)
            wall += time.perf_counter() - started
            refs += [c.reference for c in data[n]]
            hyps += [x.text for x in out]
        print(f"{T.__file__}: WER {100 * corpus_wer(refs, hyps):.2f}% wall {wall:.1f} s batches {sorted(model.sizes.items())}")
    elif args.what == "count":
        for n, p in SETS.items():
            clips = [c for c in m if p(c)]
            model.kinds.clear()
            Pipeline(t).transcribe_many([decode_audio(c.path) for c in clips], en)
            print(f"{n} batched: {dict(model.kinds)}")
        multi = [c for c in m if c.path.parent.name == "multi"]
        model.kinds.clear()
        for c in multi:
            Pipeline(t).transcribe(decode_audio(c.path), TranscribeOptions(language=c.language))
        print(f"multi/ forced languages: {dict(model.kinds)}")
        lj = [c for c in m if SETS["ljspeech"](c)]
        gap = np.zeros(8000, dtype=np.float32)
        long = np.concatenate([x for c in lj for x in (decode_audio(c.path), gap)][:-1])
        for context in (False, True):
            model.kinds.clear()
            Pipeline(t).transcribe(long, en.with_(condition_on_previous_text=context))
            print(f"long input, condition_on_previous_text={context}: {dict(model.kinds)}")
    else:
        ladder = T.fallback_decode

        def sample(temperature, options):
            if temperature <= 0:
                return ladder(temperature, options)
            return dict(beam_size=1, num_hypotheses=options.best_of, sampling_topk=0, sampling_temperature=temperature)

        clips = [c for c in m if SETS["jfk"](c) or SETS["pocketsphinx"](c) or SETS["multi-en"](c)]
        audio = [decode_audio(c.path) for c in clips]
        refs = [c.reference for c in clips]
        for label, o in (
            ("defaults", en.with_(log_prob_threshold=-0.3)),
            ("live finals", en.with_(beam_size=1, best_of=2, temperatures=(0.0, 0.4), log_prob_threshold=-0.3)),
        ):
            for name, fn in (("sampling run 1", sample), ("sampling run 2", sample), ("ladder", ladder)):
                T.fallback_decode = fn
                out = Pipeline(t).transcribe_many(audio, o)
                chosen = sum(1 for x in out for s in x.segments if s.temperature > 0)
                err = 100 * corpus_wer(refs, [x.text for x in out])
                print(f"{label}, {name}: WER {err:.2f}%, {chosen} segments from a fallback step")
        T.fallback_decode = ladder
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
