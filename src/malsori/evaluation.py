"""Scoring transcripts against references, as ``shared/testdata/README.md`` prescribes.

English: Whisper's English normalizer (``whisper-normalizer``) then word error rate; parentheses in
references are replaced by spaces first, because the normalizer deletes text inside them and one LJ
Speech reference holds a spoken 13-word parenthetical. Japanese, Chinese and Korean: character error
rate. Needs the ``dev`` extra (whisper-normalizer, jiwer).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["normalize", "wer", "corpus_wer", "TestClip", "load_manifest", "CER_LANGUAGES"]

CER_LANGUAGES = {"ja", "zh", "ko"}


def normalize(text: str, language: str = "en") -> str:
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    text = text.replace("(", " ").replace(")", " ")
    if language == "en":
        return EnglishTextNormalizer()(text)
    return BasicTextNormalizer()(text)


def _error_rate(references: list[str], hypotheses: list[str], language: str) -> float:
    import jiwer

    refs = [normalize(r, language) for r in references]
    hyps = [normalize(h, language) for h in hypotheses]
    if language in CER_LANGUAGES:
        refs = [r.replace(" ", "") for r in refs]
        hyps = [h.replace(" ", "") for h in hyps]
        return float(jiwer.cer(refs, hyps))
    return float(jiwer.wer(refs, hyps))


def wer(reference: str, hypothesis: str, language: str = "en") -> float:
    """Word error rate of one pair (character error rate for ja, zh, ko)."""
    return _error_rate([reference], [hypothesis], language)


def corpus_wer(references: list[str], hypotheses: list[str], language: str = "en") -> float:
    """Error rate over a whole set: total edits over total reference words (not a mean of rates)."""
    return _error_rate(references, hypotheses, language)


@dataclass(frozen=True)
class TestClip:
    path: Path
    language: str
    kind: str
    duration: float
    reference: str


def load_manifest(testdata: Path) -> list[TestClip]:
    """The clips of ``shared/testdata/manifest.tsv``."""
    with open(testdata / "manifest.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [TestClip(testdata / r["path"], r["lang"], r["kind"], float(r["duration_s"]), r["reference"] or "") for r in rows]
