"""The commit policy (streaming/commit.py) on synthetic timed words: one test per row of its decision tables."""

from __future__ import annotations

import numpy as np
import pytest

from malsori.engine.types import Word
from malsori.streaming.commit import (
    COMMIT_MIN_WORDS,
    LocalAgreement,
    agreed_prefix,
    early_commit,
    echoed_prefix,
    echoes_inside,
    repeated_prefix,
    window_cut,
    word_key,
)
from malsori.streaming.vad import VAD_CHUNK

SR = 16000
START = SR  # the window starts 1 s into the stream
WORD_S, GAP_S, T0 = 0.4, 0.1, 1.1


def timed(*texts: str, t0: float = T0) -> list[Word]:
    """Words of 0.4 s with 0.1 s gaps from ``t0`` (seconds of the stream)."""
    return [Word(t0 + i * (WORD_S + GAP_S), t0 + i * (WORD_S + GAP_S) + WORD_S, " " + t, 0.9) for i, t in enumerate(texts)]


def audio_for(words: list[Word], end: int, gap_level: float = 0.0, gap_levels: dict[int, float] | None = None) -> np.ndarray:
    """The window's audio: a loud tone under each word, ``gap_level`` (or ``gap_levels[j]`` after word j-1) between."""
    t = np.arange(START, end) / SR
    level = np.full(len(t), gap_level)
    for j, (before, after) in enumerate(zip(words, [*words[1:], None], strict=True), start=1):
        if gap_levels and j in gap_levels:
            level[(t >= before.end) & (t < (after.start if after else t[-1] + 1))] = gap_levels[j]
    for w in words:
        level[(t >= w.start) & (t < w.end)] = 0.3
    return (level * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


SIX = ("one", "two", "three", "four", "five", "six")
END = int(4.15 * SR)  # 0.15 s after the last of six words ends (4.0 s)


def decide(words, previous=None, *, end=END, audio=None, long=False, lagging=False, holdback_s=0.6):
    return early_commit(
        words,
        [word_key(w.word) for w in words] if previous is None else previous,
        audio=audio_for(words, end) if audio is None else audio,
        start=START,
        end=end,
        holdback_s=holdback_s,
        unagreed_holdback_s=2 * holdback_s,
        lagging_holdback_s=max(1.0, 2 * holdback_s),
        long=long,
        lagging=lagging,
    )


def assert_cut_in_gap(decision, words, j):
    assert decision.commits and decision.words == tuple(words[:j]) and decision.rest == tuple(words[j:])
    assert words[j - 1].end * SR <= decision.cut <= words[j].start * SR, (decision.cut / SR, words[j - 1].end, words[j].start)


# -- candidates: agreement and holdback ----------------------------------------------------------
def test_words_the_previous_hypothesis_did_not_say_are_held():
    words = timed("one", "two,", "three", "four", "five", "six")
    decision = decide(words, previous=["zulu", "two", "three"])
    assert not decision.commits and decision.reason == "too-few-words"
    assert decision.cut is None and decision.rest is None
    # Agreement on the first word only is still fewer than COMMIT_MIN_WORDS.
    assert decide(words, previous=["one", "zulu"]).reason == "too-few-words"
    assert decide(words, previous=["one", "two", "zulu"]).reason == "clause"


def test_words_within_the_holdback_of_the_newest_audio_are_held():
    words = timed(*SIX)
    # Only "one" (ends 1.5 s) ends 0.6 s before 2.3 s: one candidate, too few.
    assert decide(words, end=int(2.3 * SR)).reason == "too-few-words"
    # With a 0.1 s holdback "one" and "two" qualify (one word always stays after the candidates).
    assert decide(timed("one", "two,", "three"), end=int(2.3 * SR), holdback_s=0.1).reason == "clause"


def test_one_word_always_stays_after_the_committed_ones():
    words = timed("one", "two", "three,")
    decision = decide(words, end=int(6.0 * SR), long=True)  # every word far behind the newest audio
    assert_cut_in_gap(decision, words, 2)


def test_long_speech_without_agreement_commits_words_twice_the_holdback_back():
    words = timed(*SIX)
    disagree = ["zulu"] * 6
    assert decide(words, previous=disagree).reason == "too-few-words"
    decision = decide(words, previous=disagree, long=True)
    # Words ending 1.2 s before 4.15 s: "one", "two", "three" (ends 2.5 s); "four" ends 3.0 s.
    assert decision.reason == "quiet-gap"
    assert_cut_in_gap(decision, words, 3)


def test_a_lagging_session_commits_words_a_second_back_without_agreement():
    words = timed(*SIX)
    decision = decide(words, previous=[], lagging=True, holdback_s=0.2)
    # The lagging horizon is at least 1 s: words ending by 3.15 s ("one" .. "four").
    assert decision.reason == "quiet-gap"
    assert_cut_in_gap(decision, words, 4)


# -- the cut: rows of the table ------------------------------------------------------------------
def test_row_2_no_audio_holds():
    words = timed(*SIX)
    assert decide(words, audio=np.zeros(300, dtype=np.float32)).reason == "no-audio"


def test_row_3_clause_end_with_a_quiet_gap_commits_up_to_the_latest_one():
    words = timed("one", "two,", "three", "four.", "five", "six")
    decision = decide(words)
    assert decision.reason == "clause"
    assert_cut_in_gap(decision, words, 4)
    # Punctuation before a gap that is not quiet does not count.
    loud = audio_for(words, END, gap_levels={4: 0.3})
    decision = decide(words, audio=loud)
    assert decision.reason == "clause"
    assert_cut_in_gap(decision, words, 2)


def test_row_3_clause_beats_a_later_quiet_gap_even_in_long_speech():
    words = timed("one", "two,", "three", "four", "five", "six")
    decision = decide(words, long=True)
    assert decision.reason == "clause"
    assert_cut_in_gap(decision, words, 2)


@pytest.mark.parametrize("long,lagging", [(True, False), (False, True)])
def test_row_4_long_or_lagging_commits_up_to_the_latest_quiet_gap(long, lagging):
    words = timed(*SIX)
    decision = decide(words, long=long, lagging=lagging)
    assert decision.reason == "quiet-gap"
    j = 5 if long else 3  # lagging: only words ending 1.2 s back ("three" ends 2.5 s, "four" 3.0 s)
    assert_cut_in_gap(decision, words, j)


def test_row_5_long_speech_without_a_quiet_gap_commits_up_to_the_quietest():
    words = timed(*SIX)
    audio = audio_for(words, END, gap_level=0.25, gap_levels={3: 0.2})  # no gap below a tenth of the median
    decision = decide(words, audio=audio, long=True)
    assert decision.reason == "quietest-gap"
    assert_cut_in_gap(decision, words, 3)
    # Not long, the same audio is held: a cut there would split speech.
    assert decide(words, audio=audio).reason == "no-clause-end"


def test_row_6_mid_clause_in_short_speech_holds():
    words = timed(*SIX)
    decision = decide(words)
    assert not decision.commits and decision.reason == "no-clause-end"


def test_a_cut_leaves_the_settled_head_at_least_one_vad_chunk():
    words = [Word(1.0, 1.004, " a", 0.9), Word(1.004, 1.008, " b,", 0.9), *timed("c", "d", "e", t0=1.2)]
    decision = decide(words, long=True)
    assert decision.reason == "clause" and decision.words == tuple(words[:2])
    assert decision.cut == START + VAD_CHUNK


# -- the window limit ----------------------------------------------------------------------------
def test_window_cut_row_1_no_word_before_the_reserve_holds():
    words = timed("one", "two")  # end 1.5 s and 2.0 s
    decision = window_cut(words, start=START, end=int(3.0 * SR), reserve_s=1.6)
    assert not decision.commits and decision.reason == "no-word-before-limit"


def test_window_cut_row_2_commits_words_before_the_reserve_and_cuts_mid_gap():
    words = timed(*SIX)
    decision = window_cut(words, start=START, end=END, reserve_s=1.0)  # limit 3.15 s: "one" .. "four"
    assert decision.reason == "window-limit" and decision.words == tuple(words[:4])
    assert decision.cut == round((3.0 + 3.1) / 2 * SR)
    assert decision.rest is None, "the rest is decoded anew, not shown from this hypothesis"
    # No word after the kept ones: the cut goes a quarter second after the last (at most the end).
    decision = window_cut(words[:4], start=START, end=END, reserve_s=1.0)
    assert decision.cut == round((3.0 + 3.65) / 2 * SR)
    decision = window_cut(words[:4], start=START, end=int(3.2 * SR), reserve_s=0.1)
    assert decision.cut == round((3.0 + 3.2) / 2 * SR)


# -- agreement -----------------------------------------------------------------------------------
def test_agreement_compares_words_without_case_or_punctuation():
    assert word_key(" Quick,") == "quick"
    keys = [word_key(w) for w in ("The", "quick,", "brown", "fox")]
    assert agreed_prefix(keys, ["the", "quick", "brown", "box"]) == 3
    assert agreed_prefix(keys, []) == 0
    assert COMMIT_MIN_WORDS == 2


def test_local_agreement_marks_the_common_prefix_stable_and_never_shrinks_it():
    agreement = LocalAgreement()
    assert agreement.update("the quick brown") == ("", "the quick brown")
    assert agreement.update("The quick, brown fox") == ("The quick, brown", "fox")
    assert agreement.update("the quick brown box jumps") == ("The quick, brown", "box jumps")
    assert agreement.update("the quick brown box jumps over")[0] == "The quick, brown box jumps"
    # A hypothesis that no longer starts with the stable words keeps them stable.
    assert agreement.update("a quick brown box jumps over") == ("The quick, brown box jumps", "over")


def test_a_continuation_that_repeats_the_last_settled_words_drops_them():
    assert repeated_prefix(["of", "the", "true"], ["true", "printed", "book"]) == 1
    assert repeated_prefix(["printing", "beautiful", "letters"], ["creating", "beautiful", "letters", "then"]) == 3
    assert repeated_prefix(["the", "art", "of"], ["making", "books"]) == 0
    assert repeated_prefix(["so", "that"], ["that's", "it"]) == 0


def test_a_hypothesis_that_echoes_its_prompt_drops_the_echo_however_long():
    prompt = ["printing", "in", "the", "only", "sense", "with", "which", "we", "are", "at", "present", "concerned"]
    heard = ["in", "the", "only", "sense", "with", "which", "we", "are", "at", "present", "concerned", "differs", "from", "most"]
    assert echoed_prefix(prompt, heard) == 11  # ten-odd words: past what a cut word re-heard can be
    # One word in eight may differ (heard again, not copied); a short run is speech, not an echo.
    assert (
        echoed_prefix(prompt, ["in", "the", "only", "sense", "with", "which", "we", "are", "at", "present", "concern", "differs"])
        == 11
    )
    assert echoed_prefix(prompt, ["at", "present", "concerned", "differs"]) == 0
    assert echoed_prefix(prompt, ["we", "are", "at", "present", "concerned", "as", "ever"]) == 5
    # Words of the prompt that are not its end are not an echo.
    assert echoed_prefix(prompt, ["in", "the", "only", "sense", "we", "know"]) == 0


def test_a_hypothesis_that_says_four_prompt_words_again_past_its_start_echoes():
    prompt = ["또한", "박", "전", "대통령", "측은", "앞으로", "검찰", "수사와", "관련해", "수사", "내용에", "대한", "입장군"]
    heard = ["등도", "수상", "관련해", "수사", "내용에", "대한", "입장군을", "공개한다는"]
    assert echoes_inside(prompt, heard)
    assert not echoes_inside(prompt, ["등도", "소상하게", "공개한다는", "방침이다"])
    assert not echoes_inside(prompt, ["수사", "내용에", "대한", "다른"]), "three words of the prompt are speech"
    assert not echoes_inside(prompt, ["관련해", "수사", "내용에", "대한", "방침"], skip=1), "a leading echo is stripped, not this"
