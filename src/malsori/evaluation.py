"""Scoring transcripts against references, as ``shared/testdata/README.md`` prescribes.

English: Whisper's English normalizer (``whisper-normalizer``) then word error rate; parentheses in
references are replaced by spaces first, because the normalizer deletes text inside them and one LJ
Speech reference holds a spoken 13-word parenthetical. Japanese, Chinese and Korean: character error
rate. Needs the ``dev`` extra (whisper-normalizer, jiwer). Labels (sentiment): accuracy and macro-F1.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["normalize", "wer", "corpus_wer", "TestClip", "load_manifest", "CER_LANGUAGES", "macro_f1", "accuracy"]

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


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of predictions equal to the truth."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("accuracy needs two non-empty label lists of the same length")
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over ``labels`` of each label's F1 (2 TP / (2 TP + FP + FN); 0 for a label never right)."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("macro_f1 needs two non-empty label lists of the same length")
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)
