"""When live text is settled before a pause: the commit policy as pure functions over timed words.

A phrase is finalized whole at a pause (``endpoint_s``). Before that, two decisions settle its
leading words early; both are here, free of session state, so each rule is read and tested alone:

- :func:`early_commit`, after a word-timed partial decode of a long phrase, and
- :func:`window_cut`, after the ``cut`` decode of a phrase that reached ``max_window_s``.

Both answer a :class:`Decision`: finalize these leading words and start the rest of the phrase at
sample ``cut``, or hold, and why (``reason``). The session applies it (``session.py``).

Agreement is LocalAgreement-2 (Macháček et al., whisper_streaming): a word is settled once two
consecutive hypotheses of the same speech agree on it and on every word before it. The same
:func:`agreed_prefix` marks the ``stable`` part of partials (:class:`LocalAgreement`) and gates
:func:`early_commit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..engine.audio import SAMPLE_RATE
from ..engine.types import Word
from .guard import normalize_words
from .vad import VAD_CHUNK

__all__ = [
    "COMMIT_MIN_WORDS",
    "ECHO_MIN",
    "MAX_REPEAT",
    "Decision",
    "LocalAgreement",
    "Reason",
    "agreed_prefix",
    "early_commit",
    "echoed_prefix",
    "echoes_inside",
    "repeated_prefix",
    "window_cut",
    "word_key",
]

_SR = SAMPLE_RATE
COMMIT_MIN_WORDS = 2
"""Fewest words finalized at once before a pause."""
MAX_REPEAT = 5
"""Longest run of finalized words a continuing hypothesis may repeat (see :func:`repeated_prefix`)."""
ECHO_MIN = 4
"""Fewest words of its prompt a hypothesis must start with to be taken for an echo (see :func:`echoed_prefix`)."""
_CLAUSE_END = tuple(",.;:!?。，、！？")
_FRAME = _SR // 100  # 10 ms energy frames
_CUT_SEARCH_S = 0.1  # an early cut goes at the quietest 10 ms this close to the gap between two words
_QUIET = 0.1  # a gap is quiet below this share of the window's median energy
_TAIL_GAP_S = 0.5  # with no word after the last kept one, a window cut goes mid-way into this much after it

Reason = Literal[
    "clause",
    "quiet-gap",
    "quietest-gap",
    "window-limit",
    "too-few-words",
    "no-audio",
    "no-clause-end",
    "no-word-before-limit",
]


@dataclass(frozen=True)
class Decision:
    """Finalize ``words`` (the leading words of the phrase) now; the rest starts at sample ``cut``.

    Nothing is finalized when ``words`` is empty (``reason`` says why). ``rest`` is the hypothesis
    after the cut, shown as the partial of the phrase that goes on; None when it is not to be shown.
    """

    reason: Reason
    words: tuple[Word, ...] = ()
    cut: int | None = None
    rest: tuple[Word, ...] | None = None

    @property
    def commits(self) -> bool:
        return bool(self.words)


# -- agreement ----------------------------------------------------------------------------------
def word_key(word: str) -> str:
    """A word as hypotheses are compared: lower case, without punctuation."""
    return " ".join(normalize_words(word))


def agreed_prefix(keys: Sequence[str], previous: Sequence[str]) -> int:
    """How many leading word keys two consecutive hypotheses share."""
    agreed = 0
    while agreed < min(len(keys), len(previous)) and keys[agreed] == previous[agreed]:
        agreed += 1
    return agreed


def repeated_prefix(before: Sequence[str], keys: Sequence[str]) -> int:
    """How many leading ``keys`` repeat the end of ``before`` (the words finalized just before).

    A phrase that continues after a cut often hears the end of the cut word again. Three or more
    words may differ in one (the cut word heard differently: "printing beautiful letters" then
    "creating beautiful letters"); shorter runs must match exactly."""
    for k in range(min(MAX_REPEAT, len(before), len(keys)), 0, -1):
        differ = sum(a != b for a, b in zip(keys[:k], before[-k:], strict=True))
        if differ == 0 or (k >= 3 and differ == 1):
            return k
    return 0


def echoed_prefix(prompt: Sequence[str], keys: Sequence[str]) -> int:
    """How many leading ``keys`` echo the end of the ``prompt`` the window was decoded with.

    Given the text settled before it as its prompt, Whisper sometimes starts a window by saying the
    end of that prompt again, however long ("printing in the only sense ... concerned" then "in the
    only sense ... concerned differs from ..."): a run of ``ECHO_MIN`` or more words equal to the
    prompt's last words is that echo (one word in eight may differ, as heard again), not speech."""
    for k in range(min(len(prompt), len(keys)), ECHO_MIN - 1, -1):
        if sum(a != b for a, b in zip(keys[:k], prompt[-k:], strict=True)) <= k // 8:
            return k
    return 0


def echoes_inside(prompt: Sequence[str], keys: Sequence[str], skip: int = 0) -> bool:
    """Whether ``keys``, past their first ``skip`` (a leading echo or repeat, stripped anyway), say
    ``ECHO_MIN`` or more words of the ``prompt`` again in its order: Whisper, given the text before
    as its prompt, sometimes goes back to it mid-window ("등도 수상 관련해 수사 내용에 대한 입장군을
    공개한다는" after a prompt that said "관련해 수사 내용에 대한 입장군"). Such a run is copied, not
    heard."""
    runs = {tuple(prompt[i : i + ECHO_MIN]) for i in range(len(prompt) - ECHO_MIN + 1)}
    return any(tuple(keys[i : i + ECHO_MIN]) in runs for i in range(skip, len(keys) - ECHO_MIN + 1))


class LocalAgreement:
    """The ``stable`` part of a phrase's partials: ``update(text)`` returns (stable, unstable) text.

    Stable text never shrinks: it grows by the words the new hypothesis and the previous one agree
    on, as long as the new one still starts with the stable words."""

    def __init__(self) -> None:
        self._previous: list[str] = []
        self._stable: list[str] = []

    @property
    def stable(self) -> list[str]:
        """The stable words so far, as the hypotheses wrote them."""
        return list(self._stable)

    def update(self, text: str) -> tuple[str, str]:
        words = text.split()
        keys = [word_key(w) for w in words]
        agreed = agreed_prefix(keys, self._previous)
        n = len(self._stable)
        if agreed > n and keys[:n] == [word_key(w) for w in self._stable]:
            self._stable = self._stable + words[n:agreed]
        self._previous = keys
        n = len(self._stable)
        # The unstable tail is what this hypothesis says after the settled words (when it still
        # starts with them; otherwise the whole hypothesis past their count).
        return " ".join(self._stable), " ".join(words[n:])


# -- decisions ----------------------------------------------------------------------------------
def _leading(words: Sequence[Word], limit: float, most: int) -> int:
    """How many leading words (at most ``most``, always one left after them) end by ``limit``."""
    n = 0
    while n < most and n + 1 < len(words) and words[n].end <= limit:
        n += 1
    return n


def _clamp(cut: int, start: int, end: int) -> int:
    """A settled head keeps at least one VAD chunk (the rest's speech probabilities start after it)."""
    return min(max(cut, start + VAD_CHUNK), end)


def early_commit(
    words: Sequence[Word],
    previous: Sequence[str],
    *,
    audio: np.ndarray,
    start: int,
    end: int,
    holdback_s: float,
    unagreed_holdback_s: float,
    lagging_holdback_s: float,
    long: bool,
    lagging: bool,
) -> Decision:
    """Which leading words of a partial hypothesis to finalize before the pause, and where to cut.

    ``words``: the hypothesis's timed words (seconds of the stream), without any that repeat words
    already finalized; ``previous``: the :func:`word_key` of the previous hypothesis's words;
    ``audio``: the window, samples ``start`` to ``end`` of the stream; ``long``: the phrase has
    more unsettled than ``commit_force_s`` (``StreamingSession._commit_force_s``: less while the decoder
    is loaded); ``lagging``: this session's decodes take longer than a step
    (a loaded decoder gives it few hypotheses, too far apart to agree often).

    First the candidates: leading words, always one left after them, that end far enough before
    the newest audio (``end``) for Whisper to no longer revise them.

    ============  ==================================  ==========================================
    lagging       long                                candidates
    ============  ==================================  ==========================================
    no            either                              words both hypotheses agree on, ending
                                                      ``holdback_s`` before ``end``
    no            yes, and under 2 agreed candidates  any words ending ``unagreed_holdback_s``
                                                      before ``end``
    yes           either                              any words ending ``lagging_holdback_s``
                                                      before ``end``
    ============  ==================================  ==========================================

    Then the cut: between two words, at the quietest 10 ms near their gap (word timings are off by
    tens of milliseconds). A cut where the audio is not quiet splits a word across two windows and
    both get it wrong, so the first row that holds decides (a gap is *quiet* below a tenth of the
    window's median energy; gaps after the first ``COMMIT_MIN_WORDS`` candidates are considered):

    ==  ==================================================  ===================================  ==============
    #   condition                                           decision                             reason
    ==  ==================================================  ===================================  ==============
    1   fewer than ``COMMIT_MIN_WORDS`` candidates          hold                                 too-few-words
    2   under 20 ms of audio                                hold                                 no-audio
    3   a quiet gap after clause punctuation (``,.;:!?``)   commit up to the latest such gap     clause
    4   long or lagging, and a quiet gap                    commit up to the latest quiet gap    quiet-gap
    5   long                                                commit up to the quietest gap        quietest-gap
    6   otherwise (mid-clause, no pause to cut in)          hold                                 no-clause-end
    ==  ==================================================  ===================================  ==============

    A commit's ``rest`` is the hypothesis after the cut (the partial of the phrase that goes on).
    """
    keys = [word_key(w.word) for w in words]
    end_s = end / _SR
    if lagging:
        n = _leading(words, end_s - lagging_holdback_s, len(words))
    else:
        n = _leading(words, end_s - holdback_s, agreed_prefix(keys, previous))
        if n < COMMIT_MIN_WORDS and long:
            n = _leading(words, end_s - unagreed_holdback_s, len(words))
    if n < COMMIT_MIN_WORDS:
        return Decision("too-few-words")
    energy = np.mean(audio[: len(audio) // _FRAME * _FRAME].reshape(-1, _FRAME) ** 2, axis=1)
    if energy.size < 2:
        return Decision("no-audio")
    quiet = _QUIET * float(np.median(energy))
    gaps: dict[int, tuple[float, int]] = {}  # words before the gap -> (its quietest energy, sample)
    for j in range(COMMIT_MIN_WORDS, n + 1):
        lo = max(1, int((words[j - 1].end - start / _SR - _CUT_SEARCH_S) * 100))
        hi = min(energy.size, max(lo + 1, int((max(words[j].start, words[j - 1].end) - start / _SR + _CUT_SEARCH_S) * 100) + 1))
        k = lo + int(np.argmin(energy[lo:hi]))
        gaps[j] = (float(energy[k]), start + k * _FRAME + _FRAME // 2)
    marked = [j for j in gaps if words[j - 1].word.rstrip()[-1:] in _CLAUSE_END and gaps[j][0] <= quiet]
    silent = [j for j in gaps if gaps[j][0] <= quiet]
    reason: Reason
    if marked:
        j, reason = marked[-1], "clause"
    elif silent and (long or lagging):
        j, reason = silent[-1], "quiet-gap"
    elif long:
        j, reason = min(gaps, key=lambda j: gaps[j][0]), "quietest-gap"
    else:
        return Decision("no-clause-end")
    return Decision(reason, tuple(words[:j]), _clamp(gaps[j][1], start, end), tuple(words[j:]))


def window_cut(words: Sequence[Word], *, start: int, end: int, reserve_s: float) -> Decision:
    """Which words a phrase at the window limit finalizes (from its word-timestamped ``cut`` decode).

    ===  ==========================================  =======================================  ====================
    #    condition                                   decision                                 reason
    ===  ==========================================  =======================================  ====================
    1    no word ends ``reserve_s`` before ``end``   hold (the session cuts at the quietest   no-word-before-limit
                                                     VAD chunk instead)
    2    otherwise                                   commit the words ending by then; cut     window-limit
                                                     mid-way to the next word's start (or
                                                     into ``_TAIL_GAP_S`` after, at most
                                                     ``end``)
    ===  ==========================================  =======================================  ====================

    The last ``reserve_s`` stays open so the next window starts with context, not mid-sentence.
    The rest is not shown as a partial (``rest`` is None): the next decode covers it anew.
    """
    end_s = end / _SR
    limit = end_s - reserve_s
    keep = tuple(w for w in words if w.end <= limit)
    if not keep:
        return Decision("no-word-before-limit")
    following = words[len(keep)] if len(words) > len(keep) else None
    gap_end = following.start if following is not None else min(limit + _TAIL_GAP_S, end_s)
    cut = round((keep[-1].end + max(keep[-1].end, gap_end)) / 2 * _SR)
    return Decision("window-limit", keep, _clamp(cut, start, end))
