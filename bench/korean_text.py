"""Korean post-processing, measured before it is shipped (issue 13): does normalizing Whisper's Korean
text lower the character error rate on real Korean speech?

    flock /tmp/malsori-bench.lock .venv/bin/python bench/korean_text.py [--write]

Clips: the 10 Zeroth-Korean sentences of ``shared/testdata/ko`` and ``multi/test_ko.wav``, transcribed
once with the bundled ``base`` model (language ko, beam 5, the file pipeline). Each hypothesis is then
scored as it is and after each candidate step:

- ``kiwi spacing``: ``kiwipiepy.Kiwi().space()`` (word spacing by a Korean morphological analyzer);
- ``kiwi spacing + sentence ends``: spacing, then ``Kiwi().split_into_sents()`` joined with a period
  where a sentence has none (punctuation);

CER is ``malsori.evaluation.korean_cer`` (issue 18: NFC, no spaces or punctuation, digits read out in
Sino-Korean as the references write them), so spacing and punctuation cannot lower it by construction:
the question is whether they raise it (a step that changes letters) and what they change. Numbers are
issue 18's (the scorer reads them; the text keeps its digits).
"""

from __future__ import annotations

import argparse
import time

from common import TESTDATA, machine_line, replace_section

from malsori.evaluation import korean_cer, korean_clips

TITLE = "## Korean post-processing (bench/korean_text.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    from kiwipiepy import Kiwi

    from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber, decode_audio

    pipeline = Pipeline(Transcriber(EngineConfig(model="base")))
    items = korean_clips(TESTDATA)
    refs, hyps = [], []
    for clip in items:
        transcript = pipeline.transcribe(decode_audio(clip.path), TranscribeOptions(language="ko", beam_size=5))
        refs.append(clip.reference)
        hyps.append(transcript.text.strip())
        print(clip.path.name, "|", hyps[-1], flush=True)

    kiwi = Kiwi()
    started = time.perf_counter()
    spaced = [kiwi.space(h) for h in hyps]
    space_ms = 1000 * (time.perf_counter() - started) / len(hyps)

    def with_ends(text: str) -> str:
        sents = [s.text.strip() for s in kiwi.split_into_sents(text)]
        return " ".join(s if s[-1:] in ".?!" else s + "." for s in sents if s)

    variants = {
        "as decoded": hyps,
        "kiwi spacing": spaced,
        "kiwi spacing + sentence ends": [with_ends(s) for s in spaced],
    }
    rows = []
    for name, texts in variants.items():
        changed = sum(a != b for a, b in zip(texts, hyps, strict=True))
        rows.append((name, 100 * korean_cer(refs, texts), changed))
        print(name, f"CER {rows[-1][1]:.2f}%", f"changed {changed}", flush=True)

    examples = [(h, s) for h, s in zip(hyps, spaced, strict=True) if h != s][:3]
    table = ["| text | CER % | hypotheses changed |", "|---|---|---|"]
    table += [f"| {name} | {cer:.2f} | {changed} of {len(hyps)} |" for name, cer, changed in rows]
    body = "\n".join(
        [
            "Command: `flock /tmp/malsori-bench.lock .venv/bin/python bench/korean_text.py --write` "
            f"(kiwipiepy installed by hand: it is not a dependency). Machine: {machine_line()}.",
            "",
            f"{len(items)} Korean clips (Zeroth-Korean speaker 104 and multi/test_ko.wav), bundled `base`, language ko, "
            f"beam 5; CER: malsori.evaluation.korean_cer. Kiwi spacing took {space_ms:.1f} ms per hypothesis.",
            "",
            *table,
            "",
            "Spacing examples (as decoded → kiwi):",
            "",
            *[f"- `{a}` → `{b}`" for a, b in examples],
        ]
    )
    print(body)
    if args.write:
        replace_section(TITLE, body)


if __name__ == "__main__":
    main()
