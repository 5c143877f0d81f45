"""Finals cut at sentence ends (``segmentation: "sentence"``, issue 13): a pure policy over the
finals a session settles at pauses.

A session settles text where the speaker pauses; a pause often falls inside a sentence (after a comma,
a breath) and a sentence often ends without one. Long speech is also settled early, before any pause
(``commit.py``): those pieces end at no pause. :class:`SentenceJoiner` re-cuts that stream: it takes
each settled piece (:meth:`~SentenceJoiner.push`, saying whether it ended at a pause) and says which
finals go out now, holding back at most the words after the last sentence end, and never past one
more pause (one extra phrase) or ``max_hold_s`` of speech.

Decisions, for each piece pushed (``held``: words held back, with whether a pause ended them):

====  =================================  ======================================================
held  the piece (held + its text)        goes out now / is held
====  =================================  ======================================================
none  ends a sentence                    all of it / nothing
none  a sentence end inside, more after  up to the last sentence end / the rest
none  no sentence end                    nothing / all of it
some  a sentence end in the new text     up to the last sentence end / the rest
some  no sentence end in the new text,   all of it, as one final / nothing (the first held words
      and two pauses in all (or          waited one more phrase, no longer)
      ``max_hold_s`` of speech)
some  no sentence end in the new text,   nothing / all of it
      fewer pauses
====  =================================  ======================================================

A *phrase* is speech between two pauses: pieces finalized early are parts of one, so words held
after a pause wait for the end of the next phrase, whatever number of pieces it comes in.

Held words go out on their own (:meth:`~SentenceJoiner.flush`) when the stream ends and when the
session has been silent for ``hold_s`` after them (the transport asks :meth:`~SentenceJoiner.due`),
so a speaker who stops mid-sentence still sees the words.

Sentence ends: a word ending in ``. ? ! … 。 ？ ！`` (closing quotes and brackets after it allowed),
except a few English abbreviations (``Mr.``, ``Dr.``, ``e.g.``) and single letters (``U.S.``
inside a name); a Korean word that ends in a polite or formal sentence ending without punctuation
(``…습니다``, ``…어요``, ``…까요``, ``…죠``; Whisper usually writes ``다.`` ``요.`` ``까?`` with
punctuation, which the first rule covers). Times of a piece that is split are taken from its words
when it has them (``word_timestamps``), else shared out in proportion to characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .events import Final, WordTiming

__all__ = ["SentenceJoiner", "sentence_end", "last_sentence_end", "SEGMENTATIONS"]

SEGMENTATIONS = ("pause", "sentence")
"""``pause``: a final at every pause (the default); ``sentence``: finals at sentence ends."""

_CLOSERS = "\"')]\u201d\u2019\u300d\u300f"  # quotes and brackets that may follow the mark
_END = re.compile(r"[.?!…。？！]+[" + re.escape(_CLOSERS) + "]*$")
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "vs.", "etc.", "e.g.", "i.e.", "no.", "mt.", "fig."}
)
_KOREAN_ENDINGS = ("습니다", "니다", "어요", "아요", "에요", "예요", "해요", "세요", "까요", "죠")


def sentence_end(word: str) -> bool:
    """Does a sentence end with this word?"""
    w = word.strip()
    if not w:
        return False
    if _END.search(w):
        lower = w.lower().rstrip(_CLOSERS)
        # "Dr." or an initial ("J.", "U.S.") ends no sentence
        return not (lower in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+", lower))
    return w.endswith(_KOREAN_ENDINGS)


def last_sentence_end(words: list[str]) -> int:
    """How many leading ``words`` make whole sentences (0: none ends)."""
    for i in range(len(words), 0, -1):
        if sentence_end(words[i - 1]):
            return i
    return 0


@dataclass(frozen=True)
class _Piece:
    """Words of settled text with their times (one final, or part of one); ``pause``: a pause ended
    it; ``pauses``: how many pauses ended the pieces it was joined from."""

    final: Final
    words: tuple[str, ...]
    pause: bool = True
    pauses: int = 1

    @classmethod
    def of(cls, final: Final, pause: bool = True) -> _Piece:
        return cls(final, tuple(final.text.split()), pause, int(pause))

    def split(self, n: int) -> tuple[_Piece, _Piece]:
        """The first ``n`` words and the rest, each a final with its own times."""
        f, head, tail = self.final, self.words[:n], self.words[n:]
        at = self._time_after(n)
        timed_head = timed_tail = None
        if f.words is not None and len(f.words) == len(self.words):
            timed_head, timed_tail = f.words[:n], f.words[n:]
        first = replace(f, text=" ".join(head), end=at, words=timed_head)
        second = replace(f, text=" ".join(tail), start=at, words=timed_tail)
        return _Piece(first, head, False, 0), _Piece(second, tail, self.pause, int(self.pause))

    def _time_after(self, n: int) -> float:
        f = self.final
        if f.words is not None and len(f.words) == len(self.words) and 0 < n < len(f.words):
            return round((f.words[n - 1].end + f.words[n].start) / 2, 3)
        chars = sum(len(w) + 1 for w in self.words[:n])
        total = sum(len(w) + 1 for w in self.words) or 1
        return round(f.start + (f.end - f.start) * chars / total, 3)


def _join(a: _Piece, b: _Piece) -> _Piece:
    fa, fb = a.final, b.final
    words: tuple[WordTiming, ...] | None = None
    if fa.words is not None and fb.words is not None:
        words = fa.words + fb.words
    speaker = fa.speaker if fa.speaker == fb.speaker else fa.speaker or fb.speaker
    final = replace(fb, text=" ".join(a.words + b.words), start=fa.start, words=words, speaker=speaker)
    return _Piece(final, a.words + b.words, b.pause, a.pauses + b.pauses)


class SentenceJoiner:
    """Re-cuts settled text at sentence ends; see the module's decision table. Finals it returns
    have ``seq`` 0: the session numbers them as it sends them."""

    def __init__(self, hold_s: float = 2.0, max_hold_s: float = 20.0) -> None:
        self.hold_s = hold_s
        self.max_hold_s = max_hold_s
        self._held: _Piece | None = None

    @property
    def held_text(self) -> str:
        return "" if self._held is None else self._held.final.text

    def push(self, final: Final, pause: bool = True) -> list[Final]:
        """A piece of settled text (a final at a pause, or, with ``pause=False``, finalized early in
        speech that goes on); the finals to send now."""
        piece = _Piece.of(final, pause)
        if not piece.words:
            return []
        held, self._held = self._held, None
        combined = piece if held is None else _join(held, piece)
        offset = 0 if held is None else len(held.words)
        cut = last_sentence_end(list(combined.words))
        if cut == len(combined.words):
            return [combined.final]
        if cut > offset:  # a sentence ends in the new text: send up to it, hold the rest
            out, self._held = combined.split(cut)
            return [out.final]
        if held is not None and (combined.pauses >= 2 or combined.final.end - combined.final.start >= self.max_hold_s):
            return [combined.final]  # the first held words waited one more phrase (or long enough): no longer
        self._held = combined
        return []

    def due(self, now_s: float, speaking: bool) -> list[Final]:
        """Held words go out once ``hold_s`` of the stream passed after them with nobody speaking."""
        if self._held is None or speaking or now_s - self._held.final.end < self.hold_s:
            return []
        return self.flush()

    def flush(self) -> list[Final]:
        """Send the held words as they are (the stream ended, or the speaker stopped)."""
        held, self._held = self._held, None
        return [] if held is None else [held.final]
