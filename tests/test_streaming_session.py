"""StreamingSession logic with the fake decoder (tone-burst words): fast, deterministic, no model."""

from __future__ import annotations

from dataclasses import fields, replace
from itertools import pairwise

import numpy as np
import pytest

from malsori.engine.fake import VOCABULARY, FakeDecoder, tone_speech
from malsori.errors import AuthError, InvalidOptionsError, NotFoundError, OverloadedError
from malsori.streaming import (
    PRESETS,
    AdvancedStreamConfig,
    EnergyVad,
    Final,
    Language,
    LoadSnapshot,
    Partial,
    SessionManager,
    StreamConfig,
    StreamingSession,
)
from malsori.streaming.guard import clean_text, collapse_repetitions
from malsori.streaming.session import Checkpoint

SR = 16000


def make_session(**overrides) -> StreamingSession:
    overrides.setdefault("language", "en")
    return StreamingSession(StreamConfig.from_preset(overrides.pop("preset", "balanced"), **overrides), vad=EnergyVad())


def run(session, audio, *, frame_s=0.1, decode_every=1, decoder=None, loaded=False):
    """Feed ``audio`` in frames; after every ``decode_every`` frames, run the one decode the session wants
    (``loaded``: as the transport asks while the shared decoder is loaded, finals and commits only)."""
    decoder = decoder or FakeDecoder()
    events, n = [], int(frame_s * SR)
    ask = {"partials": False, "commits": True} if loaded else {}
    for k, i in enumerate(range(0, len(audio), n)):
        events += session.feed(audio[i : i + n])
        if (k + 1) % decode_every == 0 and (request := session.next_window(**ask)) is not None:
            events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    events += session.finish()
    while (request := session.next_window()) is not None:
        events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    assert session.done
    events.append(session.end())
    return events, decoder


def finals(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Final)]


def test_finals_match_the_words_and_pauses_end_phrases():
    audio = tone_speech([0.5, "alpha", "bravo", "charlie", 1.0, "delta", "echo", 0.3, "foxtrot", 1.0])
    events, _ = run(make_session(endpoint_s=0.5), audio)
    # The 1 s pause (> endpoint 0.5 s) ends a phrase; the 0.3 s one does not.
    assert finals(events) == ["alpha bravo charlie", "delta echo foxtrot"]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    first, second = [e for e in events if isinstance(e, Final)]
    assert 0.4 <= first.start < first.end <= 1.9 and first.end <= second.start


def test_a_final_at_a_pause_ends_where_the_speech_did_when_the_decoder_ends_it_early():
    from malsori.engine.types import Segment

    class EarlyEnd(FakeDecoder):
        """Times the end of every segment 0.4 s early, as Whisper often does with a phrase's last word."""

        def _decode(self, window, options):
            result = super()._decode(window, options)
            early = tuple(Segment(**{**s.__dict__, "end": max(s.start, s.end - 0.4)}) for s in result.segments)
            return replace(result, segments=early)

    audio = tone_speech([0.5, "alpha", "bravo", "charlie", 1.0, "delta", "echo", 1.0])
    speech_ends = [0.5 + 3 * 0.38 - 0.08, 0.5 + 3 * 0.38 + 1.0 + 2 * 0.38 - 0.08]  # the last tone of each phrase
    for decoder, late in ((FakeDecoder(), 0.05), (EarlyEnd(), 0.2)):
        events, _ = run(make_session(endpoint_s=0.5), audio, decoder=decoder)
        ends = [e.end for e in events if isinstance(e, Final)]
        assert len(ends) == 2
        for end, spoken in zip(ends, speech_ends, strict=True):
            # Not before the speech's end, and not past it by more than the VAD's hangover (its chunks).
            assert spoken - 0.011 <= end <= spoken + late, (type(decoder).__name__, ends, speech_ends)


def test_partials_show_the_open_phrase_with_an_agreed_stable_prefix():
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", 1.0])
    events, _ = run(make_session(step_s=0.3), audio)
    partials = [e for e in events if isinstance(e, Partial)]
    assert len(partials) >= 3
    for p in partials:
        assert p.text == " ".join(x for x in (p.stable, p.unstable) if x)
        assert "alpha bravo charlie delta echo foxtrot".startswith(p.text)
    stables = [p.stable.split() for p in partials]
    assert all(a == b[: len(a)] for a, b in pairwise(stables)), "stable text never shrinks or changes"
    assert stables[-1], "LocalAgreement settled some words before the end"
    assert finals(events) == ["alpha bravo charlie delta echo foxtrot"]


def test_silence_costs_no_decode_and_yields_nothing():
    session = make_session()
    events, decoder = run(session, np.zeros(SR * 8, dtype=np.float32))
    assert decoder.calls == []
    assert [e.type for e in events] == ["end"]


def test_a_click_shorter_than_min_speech_is_never_decoded():
    audio = np.concatenate([np.zeros(SR), tone_speech(["alpha"], word_s=0.1), np.zeros(SR)])
    events, decoder = run(make_session(), audio)
    assert decoder.calls == [] and finals(events) == []


def test_prompt_carries_settled_text_bounded():
    script = []
    for word in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]:
        script += [word, word, 0.9]
    events, decoder = run(make_session(prompt_chars=30), tone_speech([0.3, *script]))
    assert len(finals(events)) == 8
    final_windows = [w for w in decoder.windows if w.fallback]
    prompts = [w.prompt for w in final_windows]
    assert prompts[0] is None
    assert "alpha alpha" in prompts[1]
    assert all(p is None or len(p) <= 30 for p in prompts)
    assert prompts[-1].endswith("golf golf")


def test_long_speech_is_cut_into_windows_without_losing_or_repeating_words():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"] * 4
    audio = tone_speech([0.2, *words, 1.0], gap_s=0.12)  # 17 s without a pause of endpoint length
    events, decoder = run(make_session(max_window_s=4.0), audio)
    assert len(finals(events)) >= 4
    assert " ".join(finals(events)).split() == words
    assert max(len(w.audio) for w in decoder.windows) <= 4.1 * SR


def test_a_slow_decoder_gets_the_latest_audio_and_no_speech_is_dropped():
    words = ["alpha", "bravo", "charlie", "delta", 0.8, "echo", "foxtrot", 0.8, "golf", "hotel", "india", 0.8]
    audio = tone_speech([0.3, *words])
    fast_events, fast = run(make_session(), audio, decode_every=1)
    slow_events, slow = run(make_session(), audio, decode_every=12)  # one decode per 1.2 s of audio
    assert finals(slow_events) == finals(fast_events) == ["alpha bravo charlie delta", "echo foxtrot", "golf hotel india"]
    assert len(slow.windows) < len(fast.windows)
    # Partials of a lagging session cover the audio up to the moment the decode started (no stale windows).
    assert all(p.end - p.start <= 8.0 for p in slow_events if isinstance(p, Partial))


def test_speculative_final_makes_the_final_arrive_at_the_endpoint():
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", 2.0])
    session = make_session(endpoint_s=0.6)
    decoder, arrival = FakeDecoder(), None
    n = SR // 10
    for i in range(0, len(audio), n):
        for event in session.feed(audio[i : i + n]):
            if isinstance(event, Final):
                arrival = (i + n) / SR
        if (request := session.next_window()) is not None:
            for event in session.apply(request, decoder.decode_windows([request.window], request.options)[0]):
                if isinstance(event, Final):
                    arrival = (i + n) / SR
    speech_end = 0.3 + 3 * 0.38
    assert arrival is not None and arrival - speech_end <= 0.6 + 0.2


def test_language_is_detected_once_and_then_fixed():
    session = StreamingSession(StreamConfig.from_preset("balanced"), vad=EnergyVad())
    events, decoder = run(session, tone_speech([0.3, "alpha", 1.0, "bravo", 1.0]))
    assert [e.language for e in events if isinstance(e, Language)] == ["en"]
    later = [w for w in decoder.windows if w.offset > 1.0]
    assert later and all(w.language == "en" for w in later)


def test_guard_drops_invented_phrases_and_loops_but_keeps_speech():
    unsure = dict(no_speech_prob=0.3, avg_logprob=-0.8)
    assert clean_text("Thank you.", **unsure)[0] == ""
    assert clean_text("Thanks for watching!", **unsure)[0] == ""
    assert clean_text("Untertitel der Amara.org-Community", no_speech_prob=0.0, avg_logprob=-0.1)[0] == ""
    assert clean_text("ご視聴ありがとうございました", **unsure)[0] == ""
    assert clean_text("Hello there.", no_speech_prob=0.9, avg_logprob=-1.3)[0] == ""
    assert clean_text("Thank you.", no_speech_prob=0.01, avg_logprob=-0.2)[0] == "Thank you."
    # Said by a speaker, heard as speech, with a log-probability as low as an invented one's: kept.
    assert clean_text("Thank you.", no_speech_prob=0.05, avg_logprob=-0.7)[0] == "Thank you."
    assert clean_text("Thank you.", no_speech_prob=0.8, avg_logprob=-0.9)[0] == ""
    assert clean_text("Thank you.", no_speech_prob=0.05, avg_logprob=-1.1)[0] == ""
    assert clean_text("The printer was ready.", no_speech_prob=0.1, avg_logprob=-0.3)[0] == "The printer was ready."
    assert collapse_repetitions("and so my fellow Americans " * 6 + "and so") == "and so my fellow Americans and so"
    assert collapse_repetitions("no no no no") == "no"
    assert collapse_repetitions("that that is") == "that that is"


def test_presets_and_overrides_are_validated():
    assert StreamConfig.from_preset("low-latency").endpoint_s < StreamConfig.from_preset("accurate").endpoint_s
    assert StreamConfig.from_preset("accurate").max_window_s == 10.0
    assert StreamConfig.from_preset("balanced", endpoint_s=0.7).endpoint_s == 0.7
    with pytest.raises(InvalidOptionsError, match="unknown stream option"):
        StreamConfig.from_preset("balanced", bogus=1)
    with pytest.raises(InvalidOptionsError, match="preset"):
        StreamConfig.from_preset("fastest")
    with pytest.raises(InvalidOptionsError, match="language"):
        StreamConfig.from_preset("balanced", language="klingon")
    with pytest.raises(InvalidOptionsError, match="endpoint_s"):
        StreamConfig.from_preset("balanced", endpoint_s=0.0)


def test_advanced_knobs_are_overridden_by_their_flat_names_and_shown_flat():
    config = StreamConfig.from_preset("accurate", commit_holdback_s=0.8, vad_threshold=0.6, endpoint_s=0.5)
    assert config.advanced.commit_holdback_s == 0.8 and config.endpoint_s == 0.5 and config.final_beam_size == 5
    assert config.advanced.vad_release == pytest.approx(0.45)
    assert config.advanced.unagreed_holdback_s == pytest.approx(1.6) and config.advanced.lagging_holdback_s == pytest.approx(1.6)
    assert StreamConfig().advanced.lagging_holdback_s == 1.2
    assert replace(StreamConfig().advanced, commit_holdback_s=0.2).lagging_holdback_s == 1.0
    # The ready event's config: the same flat keys start.options takes, no nested group.
    shown = config.to_dict()
    assert shown["commit_holdback_s"] == 0.8 and shown["endpoint_s"] == 0.5 and "advanced" not in shown
    assert StreamConfig.from_preset("accurate", **{k: v for k, v in shown.items() if k != "preset"}) == config
    with pytest.raises(InvalidOptionsError, match="unknown stream option"):
        StreamConfig.from_preset("balanced", advanced={"pad_s": 0.1})
    with pytest.raises(InvalidOptionsError, match="commit_holdback_s"):
        StreamConfig.from_preset("balanced", commit_holdback_s=9.0)
    with pytest.raises(InvalidOptionsError, match="invalid stream options"):
        StreamConfig.from_preset("balanced", pad_s="wide")


def test_only_knobs_the_presets_set_differently_are_top_level():
    advanced = {f.name for f in fields(AdvancedStreamConfig)}
    top = {f.name for f in fields(StreamConfig)} - {
        "advanced",
        "language",
        "task",
        "word_timestamps",
        "preset",
        "partials",
        "diarize",
        "sentiment",
        "segmentation",
    }
    for name in top:
        assert len({StreamConfig.from_preset(p).to_dict()[name] for p in PRESETS}) > 1, name
    for name in advanced:
        assert len({StreamConfig.from_preset(p).to_dict()[name] for p in PRESETS}) == 1, name


def test_streaming_package_exports_what_all_says():
    import inspect

    import malsori.streaming

    public = {n for n, v in vars(malsori.streaming).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(malsori.streaming.__all__)


def test_streaming_vad_matches_the_one_shot_silero_model(testdata):
    from faster_whisper.vad import get_vad_model

    from malsori.engine import decode_audio
    from malsori.streaming import StreamingVad

    audio = decode_audio(testdata / "en" / "jfk.flac")
    audio = audio[: len(audio) // 512 * 512]
    one_shot = get_vad_model()(audio)
    vad = StreamingVad()
    pieces = [vad(audio[i : i + 1234]) for i in range(0, len(audio), 1234)]
    incremental = np.concatenate(pieces)
    np.testing.assert_allclose(incremental, np.asarray(one_shot).reshape(-1), atol=1e-5)
    assert incremental.max() > 0.9 and incremental[:5].max() < 0.5


def test_manager_admission_resume_tokens_and_replay():
    manager = SessionManager(max_sessions=2, resume_grace_s=30.0, vad_factory=EnergyVad)
    config = StreamConfig.from_preset("balanced", language="en")
    one = manager.create(config, sample_rate=16000, encoding="pcm_s16le")
    manager.create(config, sample_rate=16000, encoding="pcm_s16le")
    with pytest.raises(OverloadedError, match="limit of 2 live sessions"):
        manager.create(config, sample_rate=16000, encoding="pcm_s16le")
    manager.remove(manager.all()[1])
    with pytest.raises(OverloadedError, match="saturated"):
        manager.create(config, sample_rate=16000, encoding="pcm_s16le", load=LoadSnapshot(8, 1.0, 4000.0))
    with pytest.raises(AuthError):
        manager.resume(one.id, "not-the-token")
    with pytest.raises(NotFoundError):
        manager.resume("s-unknown", one.token)
    assert manager.resume(one.id, one.token) is one
    events, _ = run(one.session, tone_speech([0.3, "alpha", 1.0, "bravo", 1.0]))
    one.publish(events)
    assert [e.seq for e in one.events_after(2)] == [e.seq for e in events if e.seq > 2]
    assert manager.list()[0]["session_id"] == one.id


def test_default_presets_send_no_prompt_and_greedy_finals():
    # A prompt made Whisper loop on short windows (LJ Speech WER 16.6% vs 4.8%; streaming/config.py).
    events, decoder = run(make_session(), tone_speech([0.3, "alpha", "bravo", 0.9, "charlie", "delta", 0.9]))
    assert finals(events) == ["alpha bravo", "charlie delta"]
    assert all(w.prompt is None for batch, _ in decoder.calls for w in batch)
    assert {opts.beam_size for _, opts in decoder.calls} == {1}
    assert StreamConfig.from_preset("accurate").final_beam_size == 5


def _partial_ends(backoff: float, lag_frames: int) -> list[float]:
    """Feed 100 ms frames; each decode's result is applied ``lag_frames`` frames after its request."""
    session = make_session(step_s=0.3, partial_backoff=backoff)
    audio = tone_speech([0.3] + ["alpha", "bravo", "charlie", "delta"] * 4 + [1.0])
    decoder, inflight, ends = FakeDecoder(), None, []
    for k, i in enumerate(range(0, len(audio), 1600)):
        session.feed(audio[i : i + 1600])
        if inflight is not None and k >= inflight[1] + lag_frames:
            session.apply(inflight[0], decoder.decode_windows([inflight[0].window], inflight[0].options)[0])
            inflight = None
        if inflight is None and (request := session.next_window()) is not None:
            inflight = (request, k)
            if request.kind == "partial":
                ends.append(request.end / SR)
    return ends


def test_partials_back_off_when_decodes_are_slow():
    # A partial that took 0.5 s (5 frames of audio arrived meanwhile) delays the next by 2 x 0.5 s.
    slow = _partial_ends(2.0, 5)
    assert len(slow) >= 3 and all(b - a >= 1.0 - 1e-6 for a, b in pairwise(slow[1:]))
    # Without backoff the next partial goes out as soon as the previous returns.
    eager = _partial_ends(0.0, 5)
    assert len(eager) > len(slow) and min(b - a for a, b in pairwise(eager)) < 0.7
    # A fast decoder keeps the configured step.
    fast = _partial_ends(2.0, 0)
    assert min(b - a for a, b in pairwise(fast)) < 0.5


def test_scheduler_batches_an_urgent_final_before_queued_partials():
    import threading

    from malsori.engine.scheduler import DecodeScheduler, Priority
    from malsori.engine.windows import Window

    release, entered = threading.Event(), threading.Event()

    class Held(FakeDecoder):
        def decode_windows(self, windows, options=None):
            entered.set()
            release.wait(5)
            return super().decode_windows(windows, options)

    decoder = Held()
    scheduler = DecodeScheduler(decoder, max_batch=8)
    config = StreamConfig(language="en", final_beam_size=2)
    try:
        window = Window(tone_speech(["alpha"]))
        futures = [scheduler.submit(window, config.partial_options(), owner="hold", priority=Priority.LIVE)]
        assert entered.wait(5)  # the worker holds the first batch while the rest queue up
        futures += [scheduler.submit(window, config.partial_options(), owner=o, priority=Priority.LIVE) for o in "ab"]
        futures.append(scheduler.submit(window, config.final_options(), owner="c", priority=Priority.LIVE, urgent=True))
        release.set()
        for f in futures:
            f.result(5)
    finally:
        scheduler.close()
    kinds = ["final" if opts == config.final_options() else "partial" for _, opts in decoder.calls]
    # The first batch was taken before the others were queued; then the final goes first.
    assert kinds[1:] == ["final", "partial"]


def test_scheduler_decodes_live_windows_in_half_batches_finals_first():
    import threading

    from malsori.engine.scheduler import DecodeScheduler, Priority
    from malsori.engine.windows import Window

    release, entered = threading.Event(), threading.Event()

    class Held(FakeDecoder):
        def decode_windows(self, windows, options=None):
            entered.set()
            release.wait(5)
            return super().decode_windows(windows, options)

    decoder = Held()
    scheduler = DecodeScheduler(decoder, max_batch=8)
    partial, final = StreamConfig(language="en").partial_options(), StreamConfig(language="en", final_beam_size=2).final_options()
    window = Window(tone_speech(["alpha"]))
    try:
        futures = [scheduler.submit(window, partial, owner="hold", priority=Priority.LIVE)]
        assert entered.wait(5)
        futures += [scheduler.submit(window, partial, owner=f"p{i}", priority=Priority.LIVE) for i in range(8)]
        futures += [scheduler.submit(window, final, owner=f"f{i}", priority=Priority.LIVE, urgent=True) for i in range(8)]
        release.set()
        for f in futures:
            f.result(5)
    finally:
        scheduler.close()
    sizes = [(len(batch), opts == final) for batch, opts in decoder.calls[1:]]
    assert sizes == [(4, True), (4, True), (4, False), (4, False)]


@pytest.mark.parametrize(("preset", "loaded_s", "other"), [("balanced", 5.0, 8.0), ("korean", 8.0, 5.0)])
def test_unpunctuated_speech_is_settled_early_past_eight_seconds_or_five_while_an_english_decoder_is_loaded(
    preset, loaded_s, other
):
    # Read sentences run 7-10 s without a pause or a comma, and a forced cut inside one (at 5 s) cost the
    # streamed talks WER and CER; under load the cut at 5 s keeps English finals short, where 8 Korean
    # streams at once read better without it (docs/benchmarks.md, "Korean: early commits at 8 s", "Early
    # commits at 8 s in English", "Several Korean streams at once"). low-latency and accurate: 5 s.
    config = StreamConfig.from_preset(preset)
    assert (config.commit_force_s, config.commit_force_loaded_s) == (8.0, loaded_s)
    assert StreamConfig.from_preset("low-latency").commit_force_s == StreamConfig.from_preset("accurate").commit_force_s == 5.0
    words = list(VOCABULARY[:20])
    sentence = tone_speech([0.3, *words, 1.0])  # 7.6 s of speech, no punctuation
    events, _ = run(make_session(preset=preset), sentence)
    assert finals(events) == [" ".join(words)], "the preset waits for the pause"
    events, _ = run(make_session(preset=preset, commit_force_s=5.0), sentence)
    assert len(finals(events)) >= 2, "at 5 s agreed words are settled before the pause"
    shorter = list(VOCABULARY[:17])  # 6.5 s: past 5 s, never near 8 s
    events, _ = run(make_session(preset=preset), tone_speech([0.3, *shorter, 1.0]), loaded=True)
    pieces = finals(events)
    if loaded_s == 5.0:
        assert len(pieces) >= 2 and " ".join(pieces).split() == shorter, "loaded: settled past 5 s"
    else:
        assert pieces == [" ".join(shorter)], "loaded: still whole"
    events, _ = run(make_session(preset=preset, commit_force_loaded_s=other), tone_speech([0.3, *shorter, 1.0]), loaded=True)
    assert (len(finals(events)) == 1) == (other == 8.0), "commit_force_loaded_s is the loaded threshold"
    longer = tone_speech([0.3, *VOCABULARY, 1.0])  # 9.9 s: still settled early, before the window cut
    events, _ = run(make_session(preset=preset), longer)
    pieces = finals(events)
    assert len(pieces) >= 2 and " ".join(pieces).split() == list(VOCABULARY)


def test_agreed_words_are_finalized_before_the_pause_and_the_final_decodes_only_the_rest():
    words = list(VOCABULARY[:20])  # distinct: the guard collapses a repeated run of words
    audio = tone_speech([0.3, *words, 1.0])  # 7.6 s of speech without a pause
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio)
    pieces = finals(events)
    assert len(pieces) >= 3, "words were settled while the speech went on"
    assert " ".join(pieces).split() == words, "nothing lost or repeated at the cuts"
    # Each piece was final before the speech ended; the last decode covered only the tail.
    speech_end = 0.3 + len(words) * 0.38
    early = [e for e in events if isinstance(e, Final) and e.end < speech_end - 1.0]
    assert len(early) >= 2
    last_final_window = [w for w in decoder.windows if w.fallback][-1]
    assert len(last_final_window.audio) / SR < 4.0
    # The rest of the speech is decoded with the settled words as its context.
    continued = [w for w in decoder.windows if w.offset > 1.0]
    assert continued and all(w.prompt for w in continued)


@pytest.mark.parametrize("holdback", [2, 0])
def test_prefix_finals_start_the_final_decode_from_the_agreed_words(holdback):
    words = list(VOCABULARY[:12])
    audio = tone_speech([0.3, *words, 1.0])  # 4.6 s of speech, then a pause
    # speculate_s 0: the final is asked at pad_s, after one more partial (which agrees on the last word).
    session = make_session(step_s=0.3, commit_after_s=0, prefix_finals=True, prefix_holdback_words=holdback, speculate_s=0)
    events, decoder = run(session, audio)
    assert finals(events) == [" ".join(words)]
    # The partials of the whole phrase agreed on all its words by the pause; the final's prefix is
    # those less the last ``holdback``.
    prefix = [w for w in decoder.windows if w.fallback][-1].prefix
    assert prefix is not None and prefix.split() == words[: len(words) - holdback], prefix
    assert all(w.prefix is None for w in decoder.windows if not w.fallback), "partials decode their whole window"
    # Off (every preset but korean): no final gets a prefix.
    _, plain = run(make_session(step_s=0.3, commit_after_s=0), audio)
    assert all(w.prefix is None for w in plain.windows)


def test_a_continued_phrase_whose_decode_echoes_its_prompt_loses_the_echo_not_speech():
    # Whisper given the text settled before as its prompt sometimes starts by saying the prompt's end
    # again, ten words and more (a live final "... at present concerned in the only sense with which
    # we are at present concerned differs ..."): every such echo is dropped, and nothing else.
    from malsori.engine.types import Word

    class Echo(FakeDecoder):
        """Starts each window decoded with six or more words of prompt by saying its last nine again."""

        def _decode(self, window, options):
            result = super()._decode(window, options)
            said = (window.prompt or "").split()[-9:]
            if len(said) < 6 or not result.segments:
                return result
            first = result.segments[0]
            t = window.offset
            echo = tuple(Word(t + 0.01 * i, t + 0.01 * (i + 1), " " + w, 0.5) for i, w in enumerate(said))
            words = echo + tuple(first.words or ()) if first.words is not None else None
            echoed = replace(first, start=t, text=" ".join(said) + " " + first.text, words=words)
            return replace(result, segments=(echoed, *result.segments[1:]))

    words = list(VOCABULARY[:20])
    audio = tone_speech([0.3, *words, 1.0])
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio, decoder=Echo())
    assert sum(len((w.prompt or "").split()) >= 6 for w in decoder.windows) >= 3, "decodes were given long prompts"
    assert " ".join(finals(events)).split() == words, "nothing lost or repeated"
    for p in (e for e in events if isinstance(e, Partial)):
        said = p.text.split()
        first = words.index(said[0])
        assert said == words[first : first + len(said)], p.text


def test_a_decode_that_says_its_prompt_again_past_its_start_is_decoded_again_without_it():
    # Korean, a continued phrase: "등도 수상 관련해 수사 내용에 대한 입장군을 공개한다는" after a prompt
    # that said "관련해 수사 내용에 대한 입장군": a run of prompt words inside the text is copied, not heard.
    from malsori.engine.types import Word

    class MidEcho(FakeDecoder):
        """After the first word of a window decoded with six or more words of prompt, says four words
        from the middle of that prompt again."""

        def _decode(self, window, options):
            result = super()._decode(window, options)
            prompt = (window.prompt or "").split()
            if len(prompt) < 6 or not result.segments:
                return result
            copied = prompt[len(prompt) // 2 - 2 : len(prompt) // 2 + 2]
            first = result.segments[0]
            text = first.text.split()
            words = first.words
            if words is not None:
                t = words[0].end
                echo = tuple(Word(t + 0.001 * i, t + 0.001 * (i + 1), " " + w, 0.5) for i, w in enumerate(copied))
                words = (words[0], *echo, *words[1:])
            echoed = replace(first, text=" ".join([text[0], *copied, *text[1:]]), words=words)
            return replace(result, segments=(echoed, *result.segments[1:]))

    words = list(VOCABULARY[:20])
    audio = tone_speech([0.3, *words, 1.0])
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio, decoder=MidEcho())
    assert sum(len((w.prompt or "").split()) >= 6 for w in decoder.windows) >= 2, "decodes were given long prompts"
    assert " ".join(finals(events)).split() == words, "the copied words are dropped, nothing is lost"


def test_a_decode_that_loops_on_its_prompt_is_decoded_again_without_it():
    # Under load a short continued phrase decoded with the text settled before as its prompt looped
    # ("of find typography, a find typography, a find typography, a find typography."): such a result is
    # dropped and the phrase decoded again without a prompt, so its final has its words once.
    class Looping(FakeDecoder):
        """Says every window decoded with a prompt three times over."""

        def _decode(self, window, options):
            result = super()._decode(window, options)
            if not window.prompt or not result.segments:
                return result
            first = result.segments[0]
            return replace(result, segments=(replace(first, text=" ".join([first.text.strip()] * 3)), *result.segments[1:]))

    words = list(VOCABULARY[:20])
    audio = tone_speech([0.3, *words, 1.0])
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio, decoder=Looping())
    prompted = [w for w in decoder.windows if w.prompt]
    assert prompted, "continued phrases were decoded with a prompt (and looped)"
    again = {w.offset for w in decoder.windows if not w.prompt and w.fallback}  # finals and cuts without one
    assert any(w.offset in again for w in prompted if w.fallback), "a looped final was decoded again without the prompt"
    assert " ".join(finals(events)).split() == words, "nothing lost or repeated"


def test_commits_need_two_agreeing_hypotheses_and_cut_only_between_words():
    from malsori.engine.types import Segment, Word

    class Flaky(FakeDecoder):
        """Every other partial hypothesis hears the first word differently: they never agree."""

        n = 0

        def _decode(self, window, options):
            result = super()._decode(window, options)
            self.n += 1
            if window.fallback or self.n % 2 or not result.segments:
                return result
            first = result.segments[0]
            words = (Word(first.words[0].start, first.words[0].end, " zulu", 0.5), *first.words[1:]) if first.words else None
            text = " ".join(["zulu", *first.text.split()[1:]])
            return replace(result, segments=(Segment(**{**first.__dict__, "text": text, "words": words}), *result.segments[1:]))

    words = list(VOCABULARY[:20])  # distinct: the guard collapses a repeated run of words
    audio = tone_speech([0.3, *words, 1.0])
    events, _ = run(make_session(commit_after_s=2.0, commit_force_s=28.0), audio, decoder=Flaky())
    assert finals(events) == [" ".join(words)], "without agreement nothing is settled early"

    events, _ = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio)
    cuts = [e.end for e in events if isinstance(e, Final)][:-1]
    assert cuts, "agreed words were settled"
    for cut in cuts:  # every cut lies in the silence between two tone bursts (word 0.3 s, gap 0.08 s)
        into_word = (cut - 0.3) % 0.38
        assert into_word >= 0.3 - 0.011, (cut, into_word)
    assert " ".join(finals(events)).split() == words


def test_a_phrase_going_on_after_an_early_commit_is_decoded_with_the_words_before_the_cut_forced():
    words = list(VOCABULARY[:20])
    audio = tone_speech([0.3, *words, 1.0])  # words 0.3 s, gaps 0.08 s: one word every 0.38 s
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0, lead_s=1.0), audio)
    cuts = [e.end for e in events if isinstance(e, Final)][:-1]
    assert cuts, "agreed words were settled early"
    assert " ".join(finals(events)).split() == words, "the forced words are not said twice, nothing is lost"
    led = [w for w in decoder.windows if w.prefix]
    assert led, "the phrases after the cuts were decoded from before the cut"
    for window in led:
        forced = window.prefix.split()
        cut = min((c for c in cuts if c > window.offset), default=None)
        assert cut is not None and cut - window.offset <= 1.0 + 0.38, (window.offset, cut)
        # The forced words are the last ones finalized before the cut, and the window starts in the
        # gap before the first of them, so it hears them whole and no part of the word before.
        before = [w for w in words if 0.3 + 0.38 * words.index(w) + 0.3 <= cut + 0.01]
        assert forced == before[-len(forced) :] and 1 <= len(forced) <= 5
        first = 0.3 + 0.38 * words.index(forced[0])
        assert first - 0.08 - 0.011 <= window.offset <= first, (window.offset, first)
        assert not (window.prompt or "").endswith(forced[-1]), "the forced words are not also the prompt's end"

    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0), audio)
    assert [e.end for e in events if isinstance(e, Final)][:-1], "agreed words were settled early"
    assert not any(w.prefix for w in decoder.windows), "lead_s 0 (the default): windows start at the cut"


def test_a_lead_window_that_says_its_forced_words_again_is_decoded_again_from_the_cut_without_them():
    # Korean: a window forced to start with "수사 내용에 대한 입장군 아니라" (the words before the cut)
    # went on "변호인단의 활동 상황 등도 수상 수사 내용에 대한 입장군 아니라 검찰 수사와 관련해": the
    # forced words again, past the echo guard, which then compared only the prompt (without them).
    from malsori.engine.types import Word

    class Rehear(FakeDecoder):
        """A window forced to start with four or more words says them again after the next word."""

        def _decode(self, window, options):
            result = super()._decode(window, options)
            forced = (window.prefix or "").split()
            first = result.segments[0] if result.segments else None
            said = first.text.split() if first else []
            if len(forced) < 4 or said[: len(forced)] != forced or len(said) <= len(forced):
                return result
            k = len(forced) + 1
            words = first.words
            if words is not None:
                t = words[k - 1].end
                again = tuple(Word(t + 0.001 * i, t + 0.001 * (i + 1), " " + w, 0.5) for i, w in enumerate(forced))
                words = (*words[:k], *again, *words[k:])
            echoed = replace(first, text=" ".join([*said[:k], *forced, *said[k:]]), words=words)
            return replace(result, segments=(echoed, *result.segments[1:]))

    words = list(VOCABULARY[:24])
    audio = tone_speech([0.3, *words, 1.0])
    events, decoder = run(make_session(commit_after_s=2.0, commit_force_s=3.0, lead_s=2.0), audio, decoder=Rehear())
    forced = [w for w in decoder.windows if w.prefix and len(w.prefix.split()) >= 4 and w.fallback]
    assert forced, "finals or cuts were decoded with four or more words forced (and said them again)"
    again = [w for w in decoder.windows if w.fallback and not w.prefix and not w.prompt]
    assert again, "the phrase was decoded again without the forced words or a prompt"
    assert " ".join(finals(events)).split() == words, "nothing said twice, nothing lost"


def test_a_lead_window_starts_at_most_a_tenth_of_a_second_before_the_first_word_it_forces():
    # Word timings can leave a long gap before a word: a window starting mid-way into it heard a whole
    # clause that was not forced, and said it again.
    from malsori.engine.types import Word
    from malsori.streaming.session import _Phrase

    session = make_session(lead_s=2.0)
    words = [Word(2.0, 2.4, " alpha", 0.9), Word(6.9, 7.3, " bravo", 0.9), Word(7.4, 7.9, " charlie", 0.9)]
    new = _Phrase(1, 8 * SR, 8 * SR)  # the phrase that goes on after a cut at 8.0 s
    session._lead(new, words, floor=0)
    assert new.lead_text == "bravo charlie"
    assert (8.0 - new.lead / SR) == pytest.approx(6.8), "0.1 s before bravo, not mid-way into the 4.5 s gap"
    new = _Phrase(2, 8 * SR, 8 * SR)
    session._lead(new, words[1:], floor=0)
    assert (8.0 - new.lead / SR) == pytest.approx(6.85), "no word before it: just before the first forced one"


def test_a_final_overtakes_a_partial_still_decoding():
    session = make_session()
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", 1.0])
    decoder, partial = FakeDecoder(), None
    n = SR // 10
    events = []
    for i in range(0, len(audio), n):
        events += session.feed(audio[i : i + n])
        request = session.next_window()
        if request is not None and request.kind == "partial" and partial is None and i > SR:
            partial = request  # held: its decode never returns in time
            continue
        if request is not None:
            if request.kind == "final":
                assert partial is not None and session.superseded() == [partial.id]
            events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    assert finals(events) == ["alpha bravo charlie"]
    late = session.apply(partial, decoder.decode_windows([partial.window], partial.options)[0])
    assert late == [], "a superseded partial's result is ignored"


def test_finals_only_when_the_transport_says_the_decoder_is_busy():
    session = make_session()
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", "delta", 1.0, "echo", 1.0])
    decoder, events, n = FakeDecoder(), [], SR // 10
    for i in range(0, len(audio), n):
        events += session.feed(audio[i : i + n])
        if (request := session.next_window(partials=False)) is not None:
            events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    assert finals(events) == ["alpha bravo charlie delta", "echo"]
    assert all(w.fallback for w in decoder.windows), "no partial window was decoded"


def test_a_loaded_decoder_still_settles_long_phrases_early():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo", "lima"]
    audio = tone_speech([0.3, *words, 1.0])
    for commits in (False, True):
        session = make_session()
        decoder, events, n = FakeDecoder(), [], SR // 10
        for i in range(0, len(audio), n):
            events += session.feed(audio[i : i + n])
            if (request := session.next_window(partials=False, commits=commits)) is not None:
                events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
        assert " ".join(finals(events)) == " ".join(words)
        previews = [w for w in decoder.windows if not w.fallback]
        if commits:  # the phrase's first partial, then word-timed decodes of its unsettled part past commit_force_s
            first, *rest = previews
            assert not first.words and len(first.audio) < 1.5 * SR
            assert rest and all(w.words and len(w.audio) >= 5.0 * SR for w in rest)
            assert len(finals(events)) > 1, "words were finalized before the pause"
        else:
            assert not previews and len(finals(events)) == 1


def test_a_loaded_decoder_still_shows_each_phrases_first_words_once_no_final_waits():
    """Under load (finals only) every phrase still gets one early partial, the text a reader waits for,
    when the transport says no live window waits (``commits``); not while one does, nor when turned off."""
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", 1.0, "delta", "echo", "foxtrot", 1.0])
    for commits, enabled in ((True, True), (False, True), (True, False)):
        session = make_session(first_partial_under_load=enabled)
        decoder, events, n = FakeDecoder(), [], SR // 10
        for i in range(0, len(audio), n):
            events += session.feed(audio[i : i + n])
            if (request := session.next_window(partials=False, commits=commits)) is not None:
                events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
        assert finals(events) == ["alpha bravo charlie", "delta echo foxtrot"]
        shown = [e.text for e in events if isinstance(e, Partial)]
        previews = [w for w in decoder.windows if not w.fallback]
        if commits and enabled:  # one short greedy decode per phrase, its text shown before the final
            assert len(previews) == 2 and all(len(w.audio) < 1.5 * SR for w in previews)
            assert shown[0] == "alpha bravo" and "delta echo" in shown
        else:
            assert previews == [] and "alpha bravo" not in shown


def test_a_speculative_final_is_kept_when_speech_resumes_in_a_long_phrase():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    # 3.7 s of speech, a 0.32 s pause (past pad_s 0.3, short of endpoint_s 0.4), then more speech.
    audio = tone_speech([0.3, *words, 0.32, "juliett", "kilo", 1.0])
    events, decoder = run(make_session(commit_after_s=0), audio)
    assert finals(events) == [" ".join(words), "juliett kilo"]
    final_windows = [w for w in decoder.windows if w.fallback]
    assert len(final_windows) == 2, "the decode at the pause was not thrown away"


# 6.0 s of tones: longer than commit_after_s and than a commit_force_s of 5 s (given: balanced waits 8 s),
# so it is finalized in pieces before its pause.
_LONG_SENTENCE = list(VOCABULARY[:16])


def _fed(session, audio):
    """Feed ``audio`` in 0.1 s frames, running the decode the session asks for at once (fake decoder):
    yields the samples fed so far and each frame's events."""
    decoder, n = FakeDecoder(), SR // 10
    for i in range(0, len(audio), n):
        events = session.feed(audio[i : i + n])
        if (request := session.next_window()) is not None:
            events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
        yield i + n, events


def _final_delays(session, words):
    """``words`` spoken after 0.3 s of silence and followed by 2 s of it, fed in 0.1 s frames, each decode
    run at once: every final's text and how long after the last word's end it came (s of audio)."""
    audio = tone_speech([0.3, *words, 2.0])
    speech_end = 0.3 + len(words) * 0.38 - 0.08
    return [
        (e.text, round(fed / SR - speech_end, 2)) for fed, events in _fed(session, audio) for e in events if isinstance(e, Final)
    ]


def test_a_long_phrase_is_final_once_its_pause_reaches_pad_s_and_its_decode_is_ready():
    """Its speculative decode is its final whether the pause goes on or speech resumes, so it is sent at
    ``pad_s`` of silence, not ``endpoint_s``; a short phrase still waits for the end of the pause."""
    long_words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]  # 3.4 s

    [(text, delay)] = _final_delays(make_session(commit_after_s=0, endpoint_s=1.0), long_words)
    assert text == " ".join(long_words) and 0.3 <= delay <= 0.5, delay
    for session, words in (
        (make_session(commit_after_s=0, endpoint_s=1.0), ["alpha", "bravo", "charlie"]),  # under soft_after_s
        (make_session(commit_after_s=0, endpoint_s=1.0, reuse_candidates=False), long_words),
    ):
        [(text, delay)] = _final_delays(session, words)
        assert text == " ".join(words) and delay >= 1.0, delay


def test_speech_after_a_pause_a_little_over_endpoint_s_is_heard_from_pad_s_before_its_onset():
    """A long phrase's final settles at ``pad_s`` of silence and a phrase opens after it, which closes
    without speech at ``endpoint_s``. Speech that resumes soon after is decoded from ``pad_s`` before its
    onset, as after any pause (not within ``pad_s`` of the speech before, whose end it would hear), not
    from where the empty phrase closed: with real speech, a soft onset the VAD calls silence is lost
    there (the mixed talk lost "we" of "we are expecting")."""
    long_words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]  # 3.4 s
    speech_end = 0.3 + len(long_words) * 0.38 - 0.08
    for pause in (0.45, 0.5, 0.55, 0.6, 0.7):
        audio = tone_speech([0.3, *long_words, pause, "juliett", "kilo", 1.0])
        onset = speech_end + 0.08 + pause
        events, decoder = run(make_session(commit_after_s=0, endpoint_s=0.5), audio)
        assert finals(events) == [" ".join(long_words), "juliett kilo"]
        [start] = {w.offset for w in decoder.windows if w.offset > 3.0}  # every window of the second phrase
        expected = max(onset - 0.3, speech_end + 0.3)  # pad_s
        assert abs(start - expected) <= 0.033, (pause, onset, start)  # to the VAD chunk (32 ms)


def test_the_rest_of_speech_finalized_early_is_final_at_pad_s_when_the_speech_was_long():
    """``soft_after_s`` counts the speech since the last full pause, not only the rest left after early
    commits: after a long sentence finalized in pieces, its last piece is final at ``pad_s`` of silence,
    not ``endpoint_s``."""
    words = _LONG_SENTENCE
    delays = _final_delays(make_session(endpoint_s=1.0, commit_force_s=5.0), words)
    assert " ".join(text for text, _ in delays) == " ".join(words)
    assert len(delays) >= 2, "nothing was finalized before the pause"
    (last, delay) = delays[-1]
    assert len(last.split()) * 0.38 < 3.0, "the last piece is shorter than soft_after_s"
    assert 0.3 <= delay <= 0.5, delay


def test_a_session_restored_mid_sentence_still_counts_the_speech_before_its_checkpoint():
    """The checkpoint carries where the continued speech began, so the session restored from it (another
    gateway) settles the sentence's last piece at ``pad_s`` too, as the session it came from would."""
    words = _LONG_SENTENCE
    audio = tone_speech([0.3, *words, 2.0])
    speech_end = 0.3 + len(words) * 0.38 - 0.08
    first = make_session(endpoint_s=1.0, commit_force_s=5.0)
    texts: list[str] = []
    for _, events in _fed(first, audio):
        texts += [e.text for e in events if isinstance(e, Final)]
        if texts:  # up to the first piece finalized early
            break
    checkpoint = first.checkpoint()
    assert checkpoint.continued and 0 <= checkpoint.since < checkpoint.position
    restored = StreamingSession.restore(first.config, Checkpoint.from_dict(checkpoint.to_dict()), vad=EnergyVad())
    last_delay = None
    for fed, events in _fed(restored, audio[checkpoint.position :]):
        for e in events:
            if isinstance(e, Final):
                texts.append(e.text)
                last_delay = round((checkpoint.position + fed) / SR - speech_end, 2)
    assert " ".join(texts) == " ".join(words)
    assert last_delay is not None and 0.3 <= last_delay <= 0.5, last_delay


def _final_requests(session, audio, *, partials=True, hold=None):
    """Feed ``audio`` in 0.1 s frames, decoding each request at once (fake decoder), except the first
    final request for which ``hold(request)`` is true: it is kept in flight, never applied. Returns the
    events, the final requests and the held one."""
    decoder, events, asked, held, n = FakeDecoder(), [], [], None, SR // 10
    for i in range(0, len(audio), n):
        events += session.feed(audio[i : i + n])
        if (request := session.next_window(partials=partials)) is None:
            continue
        if request.kind == "final":
            asked.append(request)
            if held is None and hold is not None and hold(request):
                held = request
                continue
        events += session.apply(request, decoder.decode_windows([request.window], request.options)[0])
    return events, asked, held


def test_an_idle_decoder_decodes_a_pause_speculatively_sooner_than_a_loaded_one():
    audio = tone_speech([0.3, "alpha", "bravo", "charlie", 1.0])
    speech_end = 0.3 + 3 * 0.38 - 0.08  # the last tone's end
    for partials, pause in ((True, 0.1), (False, 0.3)):
        events, asked, _ = _final_requests(make_session(), audio, partials=partials)
        assert finals(events) == ["alpha bravo charlie"]
        first = asked[0]
        # Asked once the silence reached the pause (in 32 ms VAD chunks, fed 0.1 s at a time), with
        # the audio up to then: the phrase's final was ready that much sooner.
        assert pause <= first.end / SR - speech_end <= pause + 0.2, (partials, first.end / SR - speech_end)
        assert len(asked) == 1, "the speculative decode became the final: no second decode"
    # speculate_s 0: only at pad_s, however idle the decoder.
    _, asked, _ = _final_requests(make_session(speculate_s=0), audio)
    assert asked[0].end / SR - speech_end >= 0.3


def test_a_decode_asked_at_a_short_gap_is_thrown_away_when_speech_resumes():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    # 3.4 s of speech (past soft_after_s), a 0.2 s gap (past speculate_s, short of pad_s), more speech.
    audio = tone_speech([0.3, *words, 0.2, "juliett", "kilo", 1.0])
    events, asked, _ = _final_requests(make_session(), audio)
    assert finals(events) == [" ".join([*words, "juliett", "kilo"])], "a short gap is no place for a final"
    gap = 0.3 + 9 * 0.38
    assert any(gap - 0.1 < r.end / SR < gap + 0.25 for r in asked), "the gap was decoded speculatively"

    # Still decoding when speech resumed and the real pause came: the pause's final overtakes it.
    session = make_session()
    events, asked, held = _final_requests(session, audio, hold=lambda r: r.end / SR < gap + 0.25)
    assert held is not None and held.id in session.superseded()
    assert finals(events) == [" ".join([*words, "juliett", "kilo"])]
    assert session.apply(held, FakeDecoder().decode_windows([held.window], held.options)[0]) == []


def test_scheduler_skips_windows_whose_caller_gave_up():
    import threading

    from malsori.engine.scheduler import DecodeScheduler, Priority
    from malsori.engine.windows import Window

    release, entered = threading.Event(), threading.Event()

    class Held(FakeDecoder):
        def decode_windows(self, windows, options=None):
            entered.set()
            release.wait(5)
            return super().decode_windows(windows, options)

    decoder = Held()
    scheduler = DecodeScheduler(decoder, max_batch=8)
    options = StreamConfig(language="en").final_options()
    window = Window(tone_speech(["alpha"]))
    try:
        first = scheduler.submit(window, options, owner="a", priority=Priority.LIVE)
        assert entered.wait(5)
        gone = scheduler.submit(window, options, owner="b", priority=Priority.LIVE)
        kept = scheduler.submit(window, options, owner="c", priority=Priority.LIVE)
        assert gone.cancel()
        release.set()
        first.result(5), kept.result(5)
        assert scheduler.pending() == 0
    finally:
        scheduler.close()
    assert [len(batch) for batch, _ in decoder.calls] == [1, 1]
