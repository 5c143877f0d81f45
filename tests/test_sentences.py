"""Finals at sentence ends (``segmentation: "sentence"``): the policy's decision table on synthetic
finals, and the session with the fake decoder. Real speech (the LJ talk, Korean) is in
tests/test_stats_live.py."""

from __future__ import annotations

import numpy as np
import pytest

from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.errors import InvalidOptionsError
from malsori.streaming.config import StreamConfig
from malsori.streaming.events import Final, WordTiming
from malsori.streaming.sentences import SentenceJoiner, last_sentence_end, sentence_end
from malsori.streaming.session import StreamingSession
from malsori.streaming.vad import EnergyVad


@pytest.mark.parametrize(
    "word, ends",
    [
        ("Americans.", True), ("not?", True), ("country!", True), ('"Stop!"', True), ("end.)", True), ("1984.", True),
        ("이루어졌다.", True), ("괜찮아요?", True), ("끝。", True), ("합니다", True), ("좋아요", True), ("그렇죠", True),
        ("Dr.", False), ("Mr.", False), ("U.S.", False), ("J.", False), ("e.g.", False), ("3.5", False),
        ("word", False), ("Americans,", False), ("바다", False), ("", False),
    ],
)  # fmt: skip
def test_sentence_end(word, ends):
    assert sentence_end(word) is ends


def test_last_sentence_end():
    assert last_sentence_end(["Ask", "not.", "What", "your"]) == 2
    assert last_sentence_end(["Ask", "not", "what"]) == 0
    assert last_sentence_end(["It", "is.", "Done."]) == 3


def final(text: str, start: float, end: float, words: bool = False) -> Final:
    timings = None
    if words:  # one word per 0.5 s from start
        timings = tuple(WordTiming(w, start + 0.5 * i, start + 0.5 * i + 0.4, 0.9) for i, w in enumerate(text.split()))
    return Final(0, text, start, end, "en", timings)


def texts(finals: list[Final]) -> list[str]:
    return [f.text for f in finals]


# One test per row of the decision table in streaming/sentences.py.
def test_nothing_held_and_the_piece_ends_a_sentence():
    j = SentenceJoiner()
    assert texts(j.push(final("And so, my fellow Americans.", 0.0, 2.0))) == ["And so, my fellow Americans."]
    assert j.held_text == ""


def test_nothing_held_and_a_sentence_ends_inside():
    j = SentenceJoiner()
    out = j.push(final("It is over. Ask not", 0.0, 2.0))
    assert texts(out) == ["It is over."] and j.held_text == "Ask not"
    # times shared out by characters: "It is over. " is 12 of 20 characters (+1 per word)
    assert (out[0].start, out[0].end) == (0.0, 1.2)
    rest = j.flush()[0]
    assert (rest.text, rest.start, rest.end) == ("Ask not", 1.2, 2.0)


def test_nothing_held_and_no_sentence_end():
    j = SentenceJoiner()
    assert j.push(final("And so my", 0.0, 1.0)) == [] and j.held_text == "And so my"


def test_held_words_and_a_sentence_ends_in_the_new_piece():
    j = SentenceJoiner()
    j.push(final("And so my", 0.0, 1.0))
    out = j.push(final("fellow Americans. Ask", 1.5, 3.0))
    assert texts(out) == ["And so my fellow Americans."] and out[0].start == 0.0
    assert j.held_text == "Ask"


def test_held_words_wait_for_one_more_piece_only():
    j = SentenceJoiner()
    j.push(final("Printing, in the only sense", 0.0, 2.0))
    out = j.push(final("with which we are at present concerned,", 2.5, 5.0))
    assert texts(out) == ["Printing, in the only sense with which we are at present concerned,"]
    assert (out[0].start, out[0].end) == (0.0, 5.0) and j.held_text == ""


def test_pieces_finalized_early_are_parts_of_one_phrase_and_held_words_wait_for_its_end():
    j = SentenceJoiner()
    assert j.push(final("Printing, in the only sense with which we are at present concerned,", 0.0, 4.0)) == []
    # The next phrase comes in pieces settled before its pause: the held words wait for all of them.
    assert j.push(final("differs from most if not from", 4.4, 6.2), pause=False) == []
    assert j.push(final("all the arts and crafts", 6.2, 7.6), pause=False) == []
    out = j.push(final("represented in the Exhibition", 7.6, 9.6))
    assert texts(out) == [
        "Printing, in the only sense with which we are at present concerned, differs from most if not from "
        "all the arts and crafts represented in the Exhibition"
    ]
    assert (out[0].start, out[0].end) == (0.0, 9.6) and j.held_text == ""
    # Early pieces with no pause at all go out once max_hold_s of speech is held.
    j = SentenceJoiner(max_hold_s=5.0)
    assert j.push(final("and so on", 0.0, 2.0), pause=False) == []
    assert j.push(final("and so forth", 2.0, 4.0), pause=False) == []
    assert texts(j.push(final("and then some", 4.0, 6.0), pause=False)) == ["and so on and so forth and then some"]
    # The words after a sentence end keep whether a pause ended their piece.
    j = SentenceJoiner()
    j.push(final("It was late", 0.0, 1.0), pause=False)
    assert texts(j.push(final("at night. Then", 1.0, 2.0))) == ["It was late at night."]
    assert texts(j.push(final("she left", 2.5, 3.0))) == ["Then she left"]


def test_a_split_uses_word_times_when_the_final_has_them():
    j = SentenceJoiner()
    out = j.push(final("It is over. Ask not", 10.0, 12.0, words=True))
    # "over." ends at 11.4, "Ask" starts at 11.5: the cut is between them
    assert out[0].end == 11.45 and [w.word for w in out[0].words] == ["It", "is", "over."]
    rest = j.flush()[0]
    assert rest.start == 11.45 and [w.word for w in rest.words] == ["Ask", "not"]


def test_held_words_go_out_after_a_silence_or_at_the_end():
    j = SentenceJoiner(hold_s=2.0)
    j.push(final("and then", 0.0, 1.0))
    assert j.due(2.5, speaking=False) == []  # 1.5 s of silence after them
    assert j.due(3.5, speaking=True) == []  # someone speaks: the sentence may go on
    assert texts(j.due(3.5, speaking=False)) == ["and then"]
    assert j.flush() == []


def test_segmentation_is_validated():
    assert StreamConfig.from_preset("balanced", segmentation="sentence").segmentation == "sentence"
    with pytest.raises(InvalidOptionsError, match="segmentation"):
        StreamConfig.from_preset("balanced", segmentation="paragraph")
    with pytest.raises(InvalidOptionsError, match="diarize"):  # not together yet: labels come after the cut
        StreamConfig.from_preset("balanced", segmentation="sentence", diarize=True)


# -- a session with the fake decoder: the words are the tone bursts' names (no punctuation), so
# -- the fake's text never ends a sentence; a decoder that adds a period shows the cut.
class PeriodDecoder(FakeDecoder):
    """Ends every decoded segment that ends with "bravo" or "delta" with a period."""

    def decode_windows(self, windows, options):  # type: ignore[override]
        from dataclasses import replace

        results = super().decode_windows(windows, options)
        out = []
        for r in results:
            segs = tuple(replace(s, text=s.text + ".") if s.text.strip().endswith(("bravo", "delta")) else s for s in r.segments)
            out.append(replace(r, segments=segs))
        return out


def _run(config: StreamConfig, audio: np.ndarray, decoder: FakeDecoder) -> list[Final]:
    session = StreamingSession(config, vad=EnergyVad())
    events = []
    for i in range(0, len(audio), 1600):
        events += session.feed(audio[i : i + 1600])
        while (request := session.next_window(partials=False)) is not None:
            events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    events += session.finish()
    while (request := session.next_window(partials=False)) is not None:
        events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    finals = [e for e in events if isinstance(e, Final)]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # held finals are numbered when they go out
    return finals


def test_a_session_joins_phrases_into_sentences():
    # four phrases: "alpha" | "bravo." | "charlie" | "delta." (each pause ends a phrase)
    audio = tone_speech([0.3, "alpha", 0.8, "bravo", 0.8, "charlie", 0.8, "delta", 0.8])
    pauses = _run(StreamConfig(language="en"), audio, PeriodDecoder())
    assert texts(pauses) == ["alpha", "bravo.", "charlie", "delta."]
    sentences = _run(StreamConfig(language="en", segmentation="sentence"), audio, PeriodDecoder())
    assert texts(sentences) == ["alpha bravo.", "charlie delta."]
    assert sentences[0].start == pauses[0].start and sentences[0].end == pauses[1].end


def test_a_session_sends_held_words_at_the_end():
    audio = tone_speech([0.3, "alpha", "bravo", 0.8, "charlie", 0.5])
    sentences = _run(StreamConfig(language="en", segmentation="sentence"), audio, PeriodDecoder())
    assert texts(sentences) == ["alpha bravo.", "charlie"]
