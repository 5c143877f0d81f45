"""LocalAgreement-2 (Macháček et al., whisper_streaming): a word is settled once two consecutive
hypotheses of the same phrase agree on it and on every word before it."""

from __future__ import annotations

from .guard import normalize_words

__all__ = ["LocalAgreement"]


def _keys(words: list[str]) -> list[str]:
    return [" ".join(normalize_words(w)) for w in words]


class LocalAgreement:
    """Tracks one phrase: ``update(text)`` returns (stable, unstable) text. Stable never shrinks."""

    def __init__(self) -> None:
        self.previous: list[str] = []
        self.stable: list[str] = []

    def update(self, text: str) -> tuple[str, str]:
        words = text.split()
        keys, prev_keys = _keys(words), _keys(self.previous)
        agreed = 0
        while agreed < min(len(keys), len(prev_keys)) and keys[agreed] == prev_keys[agreed]:
            agreed += 1
        if agreed > len(self.stable) and _keys(words[: len(self.stable)]) == _keys(self.stable):
            self.stable = self.stable + words[len(self.stable) : agreed]
        self.previous = words
        n = len(self.stable)
        # The unstable tail is what this hypothesis says after the settled words (when it still
        # starts with them; otherwise the whole hypothesis past their count).
        return " ".join(self.stable), " ".join(words[n:])

    def reset(self) -> None:
        self.previous, self.stable = [], []
