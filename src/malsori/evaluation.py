"""Scoring transcripts against references, as ``shared/testdata/README.md`` prescribes.

English: Whisper's English normalizer (``whisper-normalizer``) then word error rate; parentheses in
references are replaced by spaces first, because the normalizer deletes text inside them and one LJ
Speech reference holds a spoken 13-word parenthetical. Japanese, Chinese and Korean: character error
rate. Needs the ``dev`` extra (whisper-normalizer, jiwer). Labels (sentiment): accuracy and macro-F1.

Korean has its own character error rate (:func:`korean_cer`, issue 18): the Zeroth-Korean references of
``shared/testdata/ko`` are morpheme-spaced with numbers spelled out, so spaces cannot count, and a
correct "2018년" must not cost four characters against "이천 십 팔 년".
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "normalize",
    "wer",
    "corpus_wer",
    "TestClip",
    "load_manifest",
    "CER_LANGUAGES",
    "macro_f1",
    "accuracy",
    "korean_clips",
    "korean_text",
    "korean_cer",
    "sino_korean",
]

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


_DIGITS = "영일이삼사오육칠팔구"
_SMALL = ((1000, "천"), (100, "백"), (10, "십"))
_LARGE = ((10**12, "조"), (10**8, "억"), (10**4, "만"))


def _under_10000(n: int) -> str:
    out = ""
    for unit, name in _SMALL:
        d, n = divmod(n, unit)
        if d:
            out += ("" if d == 1 else _DIGITS[d]) + name
    return out + (_DIGITS[n] if n else "")


def sino_korean(number: int) -> str:
    """How Korean reads a number with Sino-Korean numerals: 2018 -> 이천십팔, 10 -> 십, 0 -> 영."""
    if number == 0:
        return _DIGITS[0]
    out = ""
    for unit, name in _LARGE:
        d, number = divmod(number, unit)
        if d:
            out += ("" if d == 1 and unit == 10**4 else _under_10000(d)) + name
    return out + _under_10000(number)


def korean_text(text: str, numbers: bool = False) -> str:
    """Korean text as :func:`korean_cer` compares it: Unicode NFC, every character that is not a letter
    or a digit removed (punctuation, symbols, all spaces). With ``numbers``, each run of Arabic digits
    (thousands separators allowed) is first spelled out in Sino-Korean numerals (:func:`sino_korean`),
    as the Zeroth-Korean references write them; native Korean counting (두 개) is not guessed."""
    text = unicodedata.normalize("NFC", text)
    if numbers:
        text = re.sub(r"\d+(?:,\d{3})*", lambda m: sino_korean(int(m.group().replace(",", ""))), text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def korean_cer(references: Sequence[str], hypotheses: Sequence[str], numbers: bool = True) -> float:
    """Character error rate over a set of Korean transcripts: total character edits (Levenshtein) over
    total reference characters, after :func:`korean_text` on both sides. ``numbers=False`` scores digits
    as given (a hypothesis's "2018" against a spelled-out reference counts as errors)."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise ValueError("korean_cer needs two non-empty lists of the same length")
    refs = [korean_text(r, numbers) for r in references]
    hyps = [korean_text(h, numbers) for h in hypotheses]
    return float(jiwer.cer(refs, hyps))


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


def korean_clips(testdata: Path) -> list[TestClip]:
    """Every Korean clip of the test data: ``ko/manifest.tsv`` (Zeroth-Korean, same columns as the main
    manifest, paths relative to the test data folder, no header line) in its order, then the main
    manifest's Korean clips (``multi/test_ko.wav``)."""
    columns = ["path", "lang", "kind", "duration_s", "reference"]
    with open(testdata / "ko" / "manifest.tsv", newline="", encoding="utf-8") as handle:
        rows = [dict(zip(columns, r, strict=True)) for r in csv.reader(handle, delimiter="\t") if r and r[0] != "path"]
    clips = [TestClip(testdata / r["path"], r["lang"], r["kind"], float(r["duration_s"]), r["reference"]) for r in rows]
    return clips + [c for c in load_manifest(testdata) if c.language == "ko"]


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
