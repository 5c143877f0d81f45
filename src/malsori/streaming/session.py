"""One live stream as a state machine: PCM in, typed events out, decoding done elsewhere.

The transport drives it::

    events = session.feed(pcm)                 # VAD, phrase boundaries; cheap, never decodes
    while (request := session.next_window()):  # at most one decode in flight per session
        result = await scheduler.decode(request.window, request.options, ...)
        events += session.apply(request, result)
    events += session.finish()                 # client said stop: flush the open phrase

How speech becomes text:
- The incremental Silero VAD marks speech per 32 ms. Silence opens nothing and costs no decode.
- Speech opens a *phrase* (with ``pad_s`` of audio before the onset). While it is spoken, the whole
  phrase so far is decoded greedily every ``step_s`` for ``partial`` events (only while the shared
  decoder has time to spare: the transport passes ``partials=False`` otherwise, and then only the
  phrase's first, once no final waits); LocalAgreement-2 marks the prefix two consecutive hypotheses
  agree on as ``stable``.
- A window is always built from the newest audio when the previous decode returns, so a session that
  falls behind skips intermediate partials instead of queueing them: latency never accumulates.
- As soon as the speaker pauses (``pad_s`` of silence; ``speculate_s`` while the decoder has time to
  spare), the phrase is decoded speculatively. If the pause reaches ``endpoint_s`` with no new
  speech, that result becomes the ``final`` at once, so a final arrives about ``endpoint_s`` after
  the phrase ends rather than ``endpoint_s`` plus a decode. A phrase of ``soft_after_s`` or more (counted
  from the last full pause, pieces finalized early included) gets that decode as its final as soon as
  the pause reaches ``pad_s`` and the decode is ready: it would be its final whether the pause goes on
  or speech resumes (``reuse_candidates``); a shorter one waits for ``endpoint_s``, and simply
  continues if speech resumes first. A decode asked at a shorter gap is thrown away when speech
  resumes, and overtaken by the next pause's.
- Once ``commit_after_s`` of a phrase is unsettled, partial decodes carry word timings and the words
  two consecutive hypotheses agree on (and that end ``commit_holdback_s`` before the newest audio)
  are finalized before any pause, cut at a quiet gap between words, preferably after punctuation.
  The rest of the phrase goes on as a *continued* phrase: only it is decoded from then on, so
  windows stay short, and the text finalized since the last pause is its prompt (``context_chars``).
- A phrase reaching ``max_window_s`` without a commit is split by a word-timestamped ``cut`` decode.
- Which words those two settle, and where the cut goes, is decided in ``commit.py`` (pure functions
  with decision tables); this class keeps the phrases and applies the decisions.
- A decode given a prompt or a forced start (``lead_s``) whose text loops (the guard would collapse a
  repeated run) or says four of those words again is dropped, and its phrase is decoded again without
  either (:meth:`_without_context`).
- Closed phrases wait in order for their final decode; none is ever dropped. A final due while a
  partial decodes overtakes it (the partial is superseded, see :meth:`superseded`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..engine.audio import SAMPLE_RATE
from ..engine.options import TranscribeOptions
from ..engine.types import Segment, Word
from ..engine.windows import Window, WindowResult
from .commit import (
    MAX_REPEAT,
    Decision,
    LocalAgreement,
    early_commit,
    echoed_prefix,
    echoes_inside,
    repeated_prefix,
    window_cut,
    word_key,
)
from .config import StreamConfig
from .events import End, Error, Event, Final, Language, Partial, WordTiming
from .guard import clean_text, collapse_repetitions
from .sentences import SentenceJoiner
from .vad import VAD_CHUNK, StreamingVad

if TYPE_CHECKING:
    from ..speakers.online import OnlineSpeakers

__all__ = ["StreamingSession", "DecodeRequest", "Checkpoint"]

_SR = SAMPLE_RATE
# Past the window limit a "cut" decode splits a phrase between words; a VAD cut at this much past it
# is the fallback when decodes lag far behind, so no window reaches Whisper's 30 s (28 s with margin).
_VAD_CUT_AFTER_S = 6.0
_VAD_CUT_MAX_S = 27.0
_SPEAKER_CONTEXT = 10 * _SR  # audio before a final its speakers are found with (the segmentation window)
_LEAD_MARGIN_S = 0.1  # a lead window starts at most this much before the first word it forces
_UTTERANCE_CHARS = 1000  # text kept of the speech since the last pause: the most ``context_chars`` takes


@dataclass(frozen=True)
class DecodeRequest:
    """A window the session wants decoded now. ``kind`` is ``partial`` or ``final``."""

    id: int
    kind: str
    phrase: int
    start: int
    end: int
    window: Window
    options: TranscribeOptions
    lagging: bool = False
    """Asked while this session's decodes took longer than a step (a loaded decoder)."""
    loaded: bool = False
    """Asked while the transport asked for finals only (a loaded decoder)."""
    speech: int = -1
    """A final's: where the phrase's speech ended when it was asked (its last speech chunk's end)."""


@dataclass(frozen=True)
class Checkpoint:
    """What a session needs to go on elsewhere (another gateway) with nothing lost or repeated.

    Every final up to ``seq`` is out; the audio from sample ``position`` (16 kHz, absolute) on is not
    finalized yet and is fed again after :meth:`StreamingSession.restore` (a resuming client sends it
    again from there, which its ``ready.received_samples`` tells it). Plain values only (JSON)."""

    position: int
    seq: int
    settled: str = ""
    utterance: str = ""
    language: str | None = None
    language_announced: bool = False
    finals: int = 0
    continued: bool = False
    """The speech at ``position`` continues words finalized just before it (early commit, cut)."""
    before: tuple[str, ...] = ()
    """Keys of the words finalized just before ``position`` when ``continued``."""
    since: int = -1
    """Where the speech at ``position`` began (absolute sample) when ``continued``: ``soft_after_s``
    counts from there. -1: not known (a checkpoint of an older version), counted from ``position``."""

    def to_dict(self) -> dict:
        return {**asdict(self), "before": list(self.before)}

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        return cls(**{**data, "before": tuple(data.get("before") or ())})


@dataclass
class _Phrase:
    id: int
    start: int
    last_speech: int
    speech: int = 0
    end: int | None = None
    candidate: tuple[int, int, WindowResult] | None = None
    """A speculative final decode's window end, the speech end it was asked at, and its result."""
    candidate_for: int = -1
    """The speech end (``last_speech``) the last speculative final was asked at."""
    paused_at: int = -1
    """The speech end at which the silence last reached ``pad_s``: a speculative decode asked at that
    speech end may be kept as a final when speech resumes (``reuse_candidates``); one asked at a
    shorter gap (``speculate_s``) is thrown away."""
    last_partial_end: int = 0
    probs: list[float] = field(default_factory=list)
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    partial_text: str = ""
    hypothesis: list[str] = field(default_factory=list)
    """Word keys of the last word-timed hypothesis, to agree on with the next one."""
    before: list[str] = field(default_factory=list)
    """Keys of the last words finalized just before this phrase, when it continues the same speech:
    a hypothesis that starts by repeating them heard the end of a word cut at the boundary."""
    hard: bool = False
    """Closed by a full pause (``endpoint_s``) or the end of the stream, not split off longer speech."""
    at_pause: bool = False
    """Ends where the speaker paused: ``hard``, or settled from a speculative decode at a short pause."""
    seed: str = ""
    """The words after those finalized early, shown as the partial until the next decode."""
    continued: bool = False
    """Starts where agreed words of the same speech were finalized (never dropped as a click)."""
    prompt: list[str] = field(default_factory=list)
    """Word keys of the prompt its last decode was given: a hypothesis may echo its end."""
    bare: bool = False
    """A decode of it given a prompt looped: it is decoded without one from then on."""
    lead: int = 0
    """Samples before ``start`` its windows begin at: they hear the words finalized there again
    (``lead_text``, forced as the start of the output, and stripped as :meth:`repeats`)."""
    lead_text: str = ""
    since: int = -1
    """Where the speech it continues began (``continued``): the start of the first phrase of it."""

    @property
    def begun(self) -> int:
        """The start of the speech this phrase is part of: where it began after the last full pause."""
        return self.since if self.since >= 0 else self.start

    def repeats(self, keys: Sequence[str]) -> int:
        """How many leading word ``keys`` of a hypothesis of this phrase are not its speech: words
        finalized just before, heard again at the cut (``before``), or an echo of the prompt."""
        return max(repeated_prefix(self.before, keys), echoed_prefix(self.prompt, keys))

    def strip_repeats(self, text: str) -> tuple[str, int]:
        """``text`` without its leading :meth:`repeats`, and how many words went."""
        words = text.split()
        n = self.repeats([word_key(w) for w in words])
        return " ".join(words[n:]), n


def _looped(result: WindowResult) -> bool:
    """The decoder repeated itself: the guard would have to collapse a repeated run of its words."""
    words = result.text.split()
    return bool(words) and collapse_repetitions(" ".join(words)) != " ".join(words)


class _Buffer:
    """Audio kept for open and pending phrases: absolute sample positions, amortized appends."""

    def __init__(self, base: int = 0) -> None:
        self._data = np.zeros(_SR * 4, dtype=np.float32)
        self.base = base  # absolute position of _data[0]
        self._len = 0

    @property
    def end(self) -> int:
        return self.base + self._len

    def append(self, samples: np.ndarray) -> None:
        need = self._len + len(samples)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len : need] = samples
        self._len = need

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.base), min(end, self.end)
        return self._data[start - self.base : max(start, end) - self.base].copy()

    def trim_before(self, position: int) -> None:
        drop = min(max(0, position - self.base), self._len)
        if drop < _SR:  # move memory at most about once a second of audio
            return
        self._data[: self._len - drop] = self._data[drop : self._len]
        self._len -= drop
        self.base += drop


class StreamingSession:
    """Feed 16 kHz float32 PCM; get events. Not thread-safe: one driver (the transport) at a time."""

    def __init__(self, config: StreamConfig = StreamConfig(), *, vad: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.config = config
        self._vad = vad if vad is not None else StreamingVad()
        self._buffer = _Buffer()
        self._seq = 0
        self._ids = itertools.count(1)
        self._phrase_ids = itertools.count(1)
        self._open: _Phrase | None = None
        self._pending: deque[_Phrase] = deque()
        self._in_speech = False
        self._silence = 0
        self._vad_pos = 0  # absolute sample where the next VAD probability starts
        self._last_end = 0  # end of the last closed phrase: phrases never overlap
        self._inflight: DecodeRequest | None = None
        self._superseded: list[int] = []
        self._partial_lag = 0  # samples that arrived while the last partial decode ran
        self._settled = ""  # tail of the settled text, the prompt
        self._utterance = ""  # text finalized since the last pause that ended a phrase (the context of the rest)
        self._language = config.language
        self._language_announced = config.language is not None
        self._stopping = False
        self._ended = False
        # Every window of a session is decoded with the same options when the beams agree (the
        # default presets), so the scheduler batches finals, cuts and partials of all sessions
        # together; what differs (word timings, temperature fallback, padding) is per window.
        self._final_options = config.final_options()
        self._partial_options = (
            self._final_options if config.partial_beam_size == config.final_beam_size else config.partial_options()
        )
        self.finals = 0
        self.decodes = 0
        self._resumed_at: Checkpoint | None = None
        self._sentences = SentenceJoiner() if config.segmentation == "sentence" else None
        self._speakers: OnlineSpeakers | None = None
        if config.diarize:
            from ..speakers import shared_diarizer
            from ..speakers.online import OnlineSpeakers as _Online

            self._speakers = _Online(shared_diarizer().models)

    @classmethod
    def restore(
        cls, config: StreamConfig, checkpoint: Checkpoint, *, vad: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> StreamingSession:
        """A session that goes on from ``checkpoint`` (taken by :meth:`checkpoint`, maybe in another
        process): its next event is numbered after ``checkpoint.seq``, its timestamps continue, its
        prompt is the text settled before, and it expects audio from ``checkpoint.position`` on."""
        session = cls(config, vad=vad)
        c = checkpoint
        session._buffer = _Buffer(c.position)
        session._vad_pos = session._last_end = c.position
        session._seq = c.seq
        session._settled, session._utterance = c.settled, c.utterance
        session._language = c.language if c.language_announced else config.language
        session._language_announced = c.language_announced or config.language is not None
        session.finals = c.finals
        session._resumed_at = c if c.continued else None
        return session

    def checkpoint(self) -> Checkpoint:
        """Where this session stands, for :meth:`restore`. ``position`` is the start of the oldest
        phrase without its final (the open or a pending one), else the end of the audio less the pad
        a phrase onset needs, but never before the end of the last finalized phrase, so no word is
        finalized twice."""
        starts = [p.start for p in self._pending] + ([self._open.start] if self._open is not None else [])
        if starts:
            position = min(starts)
        else:
            keep = self._buffer.end - int(self.config.advanced.pad_s * _SR) - VAD_CHUNK
            position = max(keep, self._last_end, self._buffer.base)
        first = self._pending[0] if self._pending else self._open
        continued = first is not None and first.start == position and first.continued
        return Checkpoint(
            position=position,
            seq=self._seq,
            settled=self._settled,
            utterance=self._utterance,
            language=self._language,
            language_announced=self._language_announced,
            finals=self.finals,
            continued=continued,
            before=tuple(first.before) if continued and first is not None else (),
            since=first.begun if continued and first is not None else -1,
        )

    # -- facts -------------------------------------------------------------------------------------
    @property
    def seq(self) -> int:
        """The highest sequence number issued so far."""
        return self._seq

    @property
    def audio_seconds(self) -> float:
        return self._buffer.end / _SR

    @property
    def language(self) -> str | None:
        return self._language

    @property
    def busy(self) -> bool:
        """A decode is in flight."""
        return self._inflight is not None

    @property
    def done(self) -> bool:
        """Stopped, and every phrase has its final."""
        return self._stopping and self._open is None and not self._pending and self._inflight is None

    @property
    def state(self) -> str:
        if self._ended:
            return "ended"
        if self._stopping:
            return "finishing"
        return "speaking" if self._open is not None else "listening"

    @property
    def unsettled_s(self) -> float:
        """Audio at the end of the stream that belongs to phrases still without their final (the
        open one and those waiting for their decode): speech, not yet in any final."""
        starts = [p.start for p in self._pending] + ([self._open.start] if self._open is not None else [])
        return (self._buffer.end - min(starts)) / _SR if starts else 0.0

    @property
    def backlog_s(self) -> float:
        """Audio of closed phrases still waiting for their final decode."""
        return sum((p.end or p.start) - p.start for p in self._pending) / _SR

    # -- input -------------------------------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> list[Event]:
        """Append 16 kHz float32 samples; returns the events they cause (finals of speculative decodes)."""
        if self._stopping:
            return []
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            return []
        self._buffer.append(pcm)
        events: list[Event] = []
        for prob in self._vad(pcm):
            events.extend(self._step(float(prob)))
        if self._sentences is not None:  # words held back for the rest of their sentence, and none came
            speaking = self._open is not None or bool(self._pending)
            events.extend(self._number(self._sentences.due(self.audio_seconds, speaking)))
        self._trim()
        return events

    def _number(self, finals: list[Final]) -> list[Event]:
        return [replace(f, seq=self._next_seq()) for f in finals]

    def _step(self, prob: float) -> list[Event]:
        c, a = self.config, self.config.advanced
        chunk_start, chunk_end = self._vad_pos, self._vad_pos + VAD_CHUNK
        self._vad_pos = chunk_end
        speech = prob >= (a.vad_release if self._in_speech else a.vad_threshold)
        self._in_speech = speech
        events: list[Event] = []
        ph = self._open
        if ph is None:
            if speech:
                start = max(chunk_start - int(a.pad_s * _SR), self._last_end, self._buffer.base)
                ph = self._open = _Phrase(next(self._phrase_ids), start, chunk_end)
                ph.probs.extend([0.0] * ((chunk_start - start) // VAD_CHUNK))
                ph.last_partial_end = start
                resumed = self._resumed_at
                if resumed is not None and start == resumed.position:  # it goes on with words finalized elsewhere
                    ph.continued, ph.before, ph.since = True, list(resumed.before), resumed.since
                self._resumed_at = None
            else:
                return events
        ph.probs.append(prob)
        if speech and ph.candidate is not None:
            events.extend(self._settle_candidate(ph))
            ph = self._open
            assert ph is not None  # still ph, or the phrase that continues it
        if speech:
            ph.last_speech = chunk_end
            ph.speech += VAD_CHUNK
            self._silence = 0
        else:
            self._silence += VAD_CHUNK
            if self._paused():
                ph.paused_at = ph.last_speech
                if settled := self._settle_candidate(ph):
                    return events + settled  # the decode of the speech before this pause is its final
            if self._silence >= c.endpoint_s * _SR:
                events.extend(self._close(self._speech_end(ph)))
                return events
        if chunk_end - ph.start >= min(c.max_window_s + _VAD_CUT_AFTER_S, _VAD_CUT_MAX_S) * _SR:
            events.extend(self._cut(ph))
        return events

    def _speech_end(self, ph: _Phrase) -> int:
        return min(ph.last_speech + int(self.config.advanced.pad_s * _SR), self._buffer.end)

    def _speech_in(self, probs: Sequence[float]) -> int:
        """Samples of speech in these VAD chunks."""
        release = self.config.advanced.vad_release
        return sum(VAD_CHUNK for p in probs if p >= release)

    def _cut(self, ph: _Phrase) -> list[Event]:
        """Close a too-long phrase at its quietest chunk in the last third; speech goes on in a new one."""
        probs = ph.probs
        first = max(1, len(probs) * 2 // 3)
        k = first + int(np.argmin(probs[first:])) if len(probs) > first else len(probs)
        cut = ph.start + k * VAD_CHUNK
        events = self._close(cut, keep_open=True)
        self._continue(ph, cut)
        return events

    def _continue(self, ph: _Phrase, cut: int) -> _Phrase:
        """Open the speech of ``ph`` after ``cut`` (``ph`` was just closed or finalized there) as a new
        phrase that continues it: its decodes take the text settled since the last pause as context."""
        tail_probs = ph.probs[(cut - ph.start) // VAD_CHUNK :]
        new = self._open = _Phrase(next(self._phrase_ids), cut, max(cut, ph.last_speech))
        new.probs = list(tail_probs)
        new.speech = self._speech_in(tail_probs)
        new.last_partial_end = cut
        new.continued = True
        new.since = ph.begun
        return new

    def _close(self, end: int, keep_open: bool = False) -> list[Event]:
        ph = self._open
        assert ph is not None
        self._open = None
        ph.hard = ph.at_pause = not keep_open
        ph.end = max(end, ph.start)
        self._last_end = ph.end
        speech_in = ph.speech if not keep_open else self._speech_in(ph.probs[: (ph.end - ph.start) // VAD_CHUNK])
        if speech_in < self.config.advanced.min_speech_s * _SR and not (ph.continued and ph.hypothesis):
            if not keep_open:  # a pause ended the phrase: the next speech starts a new utterance
                self._utterance = ""
            # Nothing of its audio was decoded: the next phrase may start pad_s before its onset, as if it
            # had not been opened, though not within pad_s of the last speech (the end of its words).
            # The mixed talk lost "we" of "we are expecting": the phrase that went on after a final
            # settled at a short pause closed without speech at endpoint_s, its end pad_s past the cut
            # (up to twice pad_s past the last speech), and the next phrase started there, after the
            # soft onset of "we".
            speech_end = self._vad_pos - self._silence + int(self.config.advanced.pad_s * _SR)
            self._last_end = max(ph.start, min(ph.end, speech_end))
            return []  # a click or a breath (or no speech after a final at the pause): no decode, no text
        if not self._pending and (ready := self._covering_candidate(ph)) is not None:
            # The speculative decode already covers the whole phrase: final now, no decode.
            return self._finalize(ph, ready)
        self._pending.append(ph)
        return []

    def _phrases(self) -> Iterator[_Phrase]:
        """The phrases still to be finalized: the closed ones waiting for their final, then the open one."""
        return itertools.chain(self._pending, [self._open] if self._open else [])

    def _trim(self) -> None:
        keep = self._buffer.end - int(self.config.advanced.pad_s * _SR) - VAD_CHUNK
        for ph in self._phrases():
            keep = min(keep, ph.start - ph.lead)
        if self._speakers is not None:
            keep -= _SPEAKER_CONTEXT  # the seconds before a final, for its speakers (_speaker_labelling)
        self._buffer.trim_before(keep)

    def finish(self) -> list[Event]:
        """The audio is over: close the open phrase so its final gets decoded. Idempotent."""
        if self._stopping:
            return []
        events: list[Event] = []
        if self._open is not None:
            events = self._close(self._speech_end(self._open))
        self._stopping = True
        return events + self._flush_sentences()

    def _flush_sentences(self) -> list[Event]:
        """Once stopped with every phrase finalized, the words held for a sentence end go out."""
        if self._sentences is None or self._open is not None or self._pending or not self._stopping:
            return []
        return self._number(self._sentences.flush())

    # -- decoding ----------------------------------------------------------------------------------
    def _prompt(self, ph: _Phrase) -> str | None:
        if ph.bare:
            return None
        chars = self.config.advanced.context_chars
        utterance = self._utterance
        if ph.lead_text and utterance.endswith(ph.lead_text):
            utterance = utterance[: -len(ph.lead_text)].rstrip()  # the window hears those words again
        if ph.continued and chars and utterance:
            context = utterance[-chars:]
            return context.split(" ", 1)[1] if len(utterance) > chars and " " in context else context
        return self._settled or None

    def _request(self, kind: str, ph: _Phrase, end: int, words: bool = False, speech: int = -1) -> DecodeRequest:
        audio = self._buffer.slice(ph.start - ph.lead, end)
        prompt = self._prompt(ph)
        ph.prompt = [word_key(w) for w in (prompt or "").split()]
        prefix = " ".join(p for p in (ph.lead_text, self._final_prefix(ph) if kind == "final" else None) if p)
        window = Window(
            audio,
            offset=(ph.start - ph.lead) / _SR,
            prompt=prompt,
            language=self._language,
            words=words or kind == "cut",
            fallback=kind != "partial",
            prefix=prefix or None,
        )
        options = self._partial_options if kind == "partial" else self._final_options
        self._inflight = DecodeRequest(next(self._ids), kind, ph.id, ph.start, end, window, options, speech=speech)
        self.decodes += 1
        return self._inflight

    def _final_prefix(self, ph: _Phrase) -> str | None:
        """With ``prefix_finals``: the words the phrase's partials agreed on, less the last
        ``prefix_holdback_words``, which its final decode starts from (None: nothing agreed yet)."""
        a = self.config.advanced
        if not a.prefix_finals:
            return None
        stable = ph.agreement.stable
        return " ".join(stable[: max(0, len(stable) - a.prefix_holdback_words)]) or None

    def next_window(self, partials: bool = True, commits: bool = False) -> DecodeRequest | None:
        """The window to decode now, or None (a decode is in flight, or nothing new to decode).

        ``partials=False`` asks for finals only: the transport says so while the shared decoder is
        loaded, so partials only fill spare decoder time and never queue ahead of finals. With
        ``commits=True`` a phrase with ``commit_force_loaded_s`` (or a shorter ``commit_force_s``) or more
        unsettled still gets its word-timed partial decodes (which finalize its agreed words): under
        load they keep the final decode of every phrase short (8 streams in lockstep, 16 clips: final
        p95 3.4 s without, 2.9 s with; rotated 2.6 s and 2.3 s).

        A final never waits for a partial: when one is due while a partial is still decoding, the
        final is returned and the partial is superseded (its result will be ignored; the transport
        may cancel it, see :meth:`superseded`)."""
        if self._ended:
            return None
        if self._inflight is not None:
            if not self._overtakable(self._inflight) or not self._final_due(early=partials):
                return None
            self._superseded.append(self._inflight.id)
            self._inflight = None
        c, a = self.config, self.config.advanced
        if self._pending:
            closed = self._pending[0]
            return self._request("final", closed, closed.end)  # type: ignore[arg-type]
        ph = self._open
        if ph is None:
            return None
        now = self._buffer.end
        if self._paused(early=partials):
            if ph.candidate_for != ph.last_speech and ph.speech >= a.min_speech_s * _SR:
                ph.candidate_for = ph.last_speech
                return self._request("final", ph, self._speech_end(ph), speech=ph.last_speech)
            return None
        if now - ph.start >= c.max_window_s * _SR:
            return self._request("cut", ph, min(now, ph.start + int(c.max_window_s * _SR)))  # asked late: no longer
        long = now - ph.start >= self._commit_force_s(loaded=not partials) * _SR
        unshown = ph.last_partial_end == ph.start  # no partial of this phrase asked for yet
        # Under load, only the phrase's first partial (the text a reader waits for) once no final waits.
        first_only = not partials and commits and unshown and c.partials and a.first_partial_under_load
        if not partials and not (commits and a.commit_after_s and long) and not first_only:
            return None
        # Under load a partial decode takes longer (a shared batch, other sessions' windows); waiting
        # twice its turnaround before the next keeps partials from filling the decoder so finals
        # find it free. Audio that arrived during a decode measures its turnaround, no clock needed.
        # A phrase's first partial never waits (it is the one a reader waits for), unless the session
        # lags: then a first decode that is too short to settle any word is not worth its cost. Under
        # load (finals only) it is still asked once no final waits (8 streams in lockstep: first text
        # p50 3.1 s without, 1.4 s with; docs/benchmarks.md "Live capacity").
        lagging = self._partial_lag > c.step_s * _SR
        first = unshown and (first_only or not (lagging and a.commit_after_s))
        step = c.step_s * _SR if first else max(c.step_s * _SR, a.partial_backoff * self._partial_lag)
        if (c.partials or a.commit_after_s) and ph.speech >= c.min_partial_s * _SR and now - ph.last_partial_end >= step:
            ph.last_partial_end = now
            # A session whose decodes take longer than a step gets few hypotheses: time every one's
            # words, so each can settle some.
            commit = a.commit_after_s and (now - ph.start >= a.commit_after_s * _SR or lagging) and not first_only
            request = self._request("partial", ph, now, words=bool(commit))
            self._inflight = request = replace(request, lagging=lagging, loaded=not partials)
            return request
        return None

    def _commit_force_s(self, loaded: bool) -> float:
        """Unsettled speech past which agreed words are settled early without punctuation: the preset's
        ``commit_force_s``, or while the decoder is loaded ``commit_force_loaded_s`` when shorter."""
        force = self.config.commit_force_s
        return min(force, self.config.commit_force_loaded_s) if loaded else force

    def _paused(self, early: bool = False) -> bool:
        """The speaker has paused: ``pad_s`` of silence (less when the pause ends the phrase sooner), or
        with ``early`` (the decoder has time to spare) ``speculate_s`` when that is set and shorter."""
        c = self.config
        pause = min(c.advanced.pad_s, c.endpoint_s)
        if early and c.advanced.speculate_s:
            pause = min(pause, c.advanced.speculate_s)
        return self._silence >= pause * _SR

    def _final_due(self, early: bool = False) -> bool:
        """A final decode would be asked for now (a closed phrase waits, or a pause began)."""
        if self._pending:
            return True
        ph = self._open
        return (
            ph is not None
            and self._paused(early)
            and ph.candidate_for != ph.last_speech
            and ph.speech >= self.config.advanced.min_speech_s * _SR
        )

    def _overtakable(self, request: DecodeRequest) -> bool:
        """A decode in flight that a due final may overtake: a partial, or a speculative final of the
        open phrase asked at a gap the speech went on after without pausing for ``pad_s`` (its result
        would be thrown away)."""
        ph = self._open
        if request.kind == "partial":
            return True
        return (
            request.kind == "final"
            and ph is not None
            and request.phrase == ph.id
            and request.speech != ph.last_speech
            and request.speech != ph.paused_at
        )

    def _covers(self, ph: _Phrase, end: int, speech: int) -> bool:
        """A final decode of ``ph``'s audio up to ``end``, asked when its speech ended at ``speech``, is
        the decode of the whole phrase: it ends where the phrase does, or the phrase ended at a pause
        with no speech after ``speech`` and the decode reaches that speech's end."""
        return end == ph.end or (ph.hard and speech == ph.last_speech and ph.last_speech <= end <= (ph.end or end))

    def _covering_candidate(self, ph: _Phrase) -> WindowResult | None:
        """The result of ``ph``'s speculative decode when it :meth:`_covers` the closed phrase."""
        if ph.candidate is None:
            return None
        end, speech, result = ph.candidate
        return result if self._covers(ph, end, speech) else None

    def superseded(self) -> list[int]:
        """Ids of decode requests whose results are no longer wanted (since the last call)."""
        ids, self._superseded = self._superseded, []
        return ids

    def abort(self, request: DecodeRequest) -> list[Event]:
        """The decode of ``request`` failed (overload, shutdown): forget it; finals are asked again."""
        if self._inflight is not None and self._inflight.id == request.id:
            self._inflight = None
            if self._open is not None and self._open.id == request.phrase:
                self._open.candidate_for = -1
        return []

    def apply(self, request: DecodeRequest, result: WindowResult) -> list[Event]:
        """Take a decode's result; returns the events it causes."""
        if self._inflight is None or self._inflight.id != request.id:
            return []
        self._inflight = None
        if request.kind == "partial":
            self._partial_lag = max(0, self._buffer.end - request.end)
        events: list[Event] = []
        of = next((p for p in self._phrases() if p.id == request.phrase), None)
        if of is not None and self._given_context(of, request) and (_looped(result) or self._echoes(of, request, result)):
            # A looped partial is only dropped: the prompt still helps its phrase's other decodes
            # (Korean, a continued phrase: "등은" with the prompt, "인생은" without).
            return [] if request.kind == "partial" else self._without_context(of)
        if self._pending and self._pending[0].id == request.phrase:
            closed = self._pending[0]
            if request.kind == "final" and self._covers(closed, request.end, request.speech):
                events.extend(self._finalize(closed, result))
            return events
        ph = self._open
        if ph is None or ph.id != request.phrase:
            return events  # the phrase was closed or cut meanwhile; its final is asked for anew
        if request.kind == "cut":
            return self._apply_cut(ph, request, result)
        if request.kind == "final":
            ph.candidate = (request.end, request.speech, result)
            # Speech resumed while it decoded, or the pause already reached pad_s: in a long phrase this
            # decode is the final of the speech before the pause either way.
            if ph.last_speech != request.speech or self._paused():
                settled = self._settle_candidate(ph)
                if settled:
                    return events + settled
        text = self._clean(result)
        if text and request.kind == "partial" and request.window.words and not self._pending:
            events.extend(self._commit(ph, request, result))
            if self._open is not ph and self._open is not None:  # words were finalized: show the words after them
                ph = self._open
                text = ph.seed
        if text:
            text = ph.strip_repeats(text)[0]
        if text and self.config.partials:
            stable, unstable = ph.agreement.update(text)
            if text != ph.partial_text:
                ph.partial_text = text
                start, end = round(ph.start / _SR, 3), round(request.end / _SR, 3)
                events.append(Partial(self._next_seq(), text, stable, unstable, start, end))
        return events

    @staticmethod
    def _given_context(ph: _Phrase, request: DecodeRequest) -> bool:
        """The decode was given text it may copy instead of hearing: a prompt, or the words before a
        cut it heard again, forced (``lead_text``). A phrase decoded again without either (``bare``) is
        not decoded a third time."""
        return not ph.bare and bool(request.window.prompt or ph.lead_text)

    def _echoes(self, ph: _Phrase, request: DecodeRequest, result: WindowResult) -> bool:
        """The decode says words of its prompt or of its forced start again past that start
        (:func:`~.commit.echoes_inside`): Korean, a window forced to start with "수사 내용에 대한 입장군
        아니라" went on "변호인단의 활동 상황 등도 수상 수사 내용에 대한 입장군 아니라 검찰 수사와 관련해"."""
        keys = [word_key(w) for w in result.text.split()]
        w = request.window
        forced = [word_key(x) for x in (w.prefix or "").split()]
        given = [word_key(x) for x in (w.prompt or "").split()] + forced  # as the decoder read them: prompt, then prefix
        skip = max(ph.repeats(keys), len(forced) if keys[: len(forced)] == forced else 0)
        return echoes_inside(given, keys, skip)

    def _without_context(self, ph: _Phrase) -> list[Event]:
        """A decode given the text settled before as its prompt, or the words before a cut forced as
        its start, looped on it or said it again (a short continued phrase under load: "of find
        typography, a find typography, a find typography, a find typography."): its result is dropped
        and the phrase is decoded again, and from then on, without a prompt, from its own start (the
        words it hears again at the cut are still stripped, :meth:`_Phrase.repeats`). The final or cut
        is asked again at once (:meth:`next_window`)."""
        ph.bare = True
        ph.lead, ph.lead_text = 0, ""
        if ph is self._open:
            ph.candidate_for = -1
        return []

    # -- settling text before the pause (the decisions are in commit.py) -----------------------------
    def _apply_cut(self, ph: _Phrase, request: DecodeRequest, result: WindowResult) -> list[Event]:
        """Finalize the words of a too-long phrase that end before its last ``cut_reserve_s``; the rest
        (and the audio from the gap after the last finalized word) stays open."""
        words = [w for seg in result.segments for w in (seg.words or ()) if w.word.strip()]
        words = words[ph.repeats([word_key(w.word) for w in words]) :]  # words finalized before it, heard again
        decision = window_cut(words, start=ph.start, end=request.end, reserve_s=self.config.cut_reserve_s)
        if not decision.commits or not self._clean(result):
            return self._cut(ph)  # no usable words: split at the quietest point instead
        return self._settle_words(ph, result, decision)

    def _commit(self, ph: _Phrase, request: DecodeRequest, result: WindowResult) -> list[Event]:
        """Finalize the leading words of this word-timed hypothesis that :func:`~.commit.early_commit`
        settles (mostly those the previous hypothesis agrees on); the phrase goes on from the cut after
        them, so its next decodes (and its final) cover only the rest."""
        a = self.config.advanced
        words = [w for seg in result.segments for w in (seg.words or ()) if w.word.strip()]
        keys = [word_key(w.word) for w in words]
        repeated = ph.repeats(keys)
        words, keys = words[repeated:], keys[repeated:]
        previous, ph.hypothesis = ph.hypothesis, keys
        decision = early_commit(
            words,
            previous,
            audio=self._buffer.slice(ph.start, request.end),
            start=ph.start,
            end=request.end,
            holdback_s=a.commit_holdback_s,
            unagreed_holdback_s=a.unagreed_holdback_s,
            lagging_holdback_s=a.lagging_holdback_s,
            long=request.end - ph.start >= self._commit_force_s(loaded=request.loaded) * _SR,
            lagging=request.lagging,
        )
        return self._settle_words(ph, result, decision) if decision.commits else []

    def _settle_words(self, ph: _Phrase, result: WindowResult, decision: Decision) -> list[Event]:
        """Finalize the decision's words (the leading words of the open phrase) as the phrase's text up
        to its cut; the rest goes on as a new phrase, showing the decision's ``rest`` as its partial."""
        keep, r = decision.words, result
        text = "".join(w.word for w in keep).strip()
        scores = (r.avg_logprob, r.no_speech_prob, r.compression_ratio, r.temperature)
        segment = Segment(0, keep[0].start, keep[-1].end, text, *scores, keep)
        head = WindowResult(
            (segment,), r.language, r.language_probability, r.no_speech_prob, r.avg_logprob, r.compression_ratio, r.temperature
        )
        assert decision.cut is not None
        events, new = self._settle(ph, decision.cut, head)
        if decision.rest is not None:
            new.last_partial_end = max(decision.cut, ph.last_partial_end)
            new.hypothesis = [word_key(w.word) for w in decision.rest]
            new.seed = "".join(w.word for w in decision.rest).strip()
        self._lead(new, keep, floor=ph.start - ph.lead)
        if decision.rest is not None or new.lead:  # its decodes may hear the last finalized words again
            new.before = [word_key(w.word) for w in keep][-MAX_REPEAT:]
        return events

    def _lead(self, ph: _Phrase, finalized: Sequence[Word], floor: int) -> None:
        """Let the windows of ``ph``, which goes on right after the ``finalized`` words, start at the gap
        before the last of them that began within ``lead_s`` of its start (at most ``MAX_REPEAT``, and
        not before ``floor``, the audio kept): those words are forced as the start of its output."""
        lead_s = self.config.lead_s
        if not lead_s:
            return
        n = 0
        while n < min(len(finalized), MAX_REPEAT) and finalized[-n - 1].start >= ph.start / _SR - lead_s:
            n += 1
        if not n:
            return
        first = finalized[-n]
        gap = finalized[-n - 1].end if n < len(finalized) else first.start - _LEAD_MARGIN_S
        # Mid-way into the gap before the first forced word, at most _LEAD_MARGIN_S before it: a window
        # that starts earlier hears words that are not forced and says them again (word timings can
        # leave a long gap: a Korean window that started seconds early said a clause twice).
        start = max(floor, round(max((gap + first.start) / 2, first.start - _LEAD_MARGIN_S) * _SR), self._buffer.base)
        if start >= ph.start:
            return
        ph.lead = ph.start - start
        ph.lead_text = "".join(w.word for w in finalized[-n:]).strip()

    def _settle(self, ph: _Phrase, cut: int, head: WindowResult) -> tuple[list[Event], _Phrase]:
        """Finalize the open phrase up to ``cut`` with ``head``; the speech after it continues."""
        self._open = None
        ph.end = cut
        self._last_end = cut
        events = self._finalize(ph, head)
        return events, self._continue(ph, cut)

    def _settle_candidate(self, ph: _Phrase) -> list[Event]:
        """A pause of ``pad_s`` got a speculative final decode of the speech before it: in a long phrase,
        that decode is the final of that speech, settled now (the pause still goes on, or speech resumed).
        Nothing with ``reuse_candidates`` off: the phrase's final waits for ``endpoint_s``."""
        if ph.candidate is None or self._pending or not self.config.advanced.reuse_candidates:
            return []
        cut, speech, result = ph.candidate
        if speech != ph.paused_at or cut - ph.begun < self.config.advanced.soft_after_s * _SR or not self._clean(result):
            return []  # asked at a gap shorter than pad_s, or too little speech before it
        ph.at_pause = True
        return self._settle(ph, cut, result)[0]

    def _clean(self, result: WindowResult) -> str:
        a = self.config.advanced
        text, _ = clean_text(
            result.text,
            no_speech_prob=result.no_speech_prob,
            avg_logprob=result.avg_logprob,
            no_speech_threshold=a.no_speech_threshold,
            log_prob_threshold=a.log_prob_threshold,
            compression_ratio_threshold=a.compression_ratio_threshold,
        )
        return text

    def _finalize(self, ph: _Phrase, result: WindowResult) -> list[Event]:
        """Emit the final of the oldest closed phrase (or of ``ph`` closing with a matching candidate)."""
        if self._pending and self._pending[0] is ph:
            self._pending.popleft()
        events: list[Event] = []
        text, repeated = ph.strip_repeats(self._clean(result))
        if text:
            if not self._language_announced:
                self._language = result.language
                self._language_announced = True
                events.append(Language(self._next_seq(), result.language, round(result.language_probability, 4)))
            lo, hi = ph.start / _SR, (ph.end or ph.start) / _SR
            starts = [s.start for s in result.segments] or [lo]
            spoken = max([s.end for s in result.segments] or [hi])
            if ph.at_pause:  # Whisper often ends the last word early: the speech went on to the pause
                spoken = max(spoken, ph.last_speech / _SR)
            start = round(min(max(min(starts), lo), hi), 3)
            end = round(max(min(spoken, hi), start), 3)
            words = None
            if self.config.word_timestamps or self._speakers is not None:
                words = tuple(
                    WordTiming(w.word.strip(), round(w.start, 3), round(w.end, 3), round(w.probability, 4))
                    for s in result.segments
                    for w in (s.words or ())
                    if w.word.strip()
                )[repeated:]
            label = None
            if self._speakers is not None:
                label = self._speaker_labelling(start, end, words or ())
            if not self.config.word_timestamps:
                words = None
            diarized = self._speakers is not None
            final = Final(0, text, start, end, result.language, words, diarized=diarized, label_speakers=label)
            events.extend(self._number([final] if self._sentences is None else self._sentences.push(final, ph.at_pause)))
            self.finals += 1
            prompt_chars = self.config.advanced.prompt_chars
            settled = (self._settled + " " + text).strip()
            if len(settled) > prompt_chars:
                settled = settled[-prompt_chars:]
                settled = settled.split(" ", 1)[1] if " " in settled else settled
            self._settled = settled if prompt_chars else ""
            self._utterance = "" if ph.hard else (self._utterance + " " + text).strip()[-_UTTERANCE_CHARS:]
        elif ph.hard:
            self._utterance = ""
        # A phrase closed while its predecessor waited may already hold a matching candidate.
        while self._pending and (ready := self._covering_candidate(self._pending[0])) is not None:
            events.extend(self._finalize(self._pending[0], ready))
        return events + self._flush_sentences()

    def _speaker_labelling(
        self, start: float, end: float, words: tuple[WordTiming, ...]
    ) -> Callable[[], tuple[str | None, tuple[WordTiming, ...] | None]]:
        """The work that finds the speaker of a final and of each of its words (online clustering,
        :mod:`malsori.speakers.online`), on a copy of its audio taken now: whoever runs it (the live
        runner, in a thread) must run a session's in the order of its finals."""
        speakers, keep_words = self._speakers, self.config.word_timestamps
        assert speakers is not None
        a, b = max(round(start * _SR), self._buffer.base), min(round(end * _SR), self._buffer.end)
        # With up to 10 s of what came before (the segmentation model's window) as context.
        c = max(min(a, b - _SPEAKER_CONTEXT), self._buffer.base)
        audio = self._buffer.slice(c, b).copy() if b > a else None

        def label() -> tuple[str | None, tuple[WordTiming, ...] | None]:
            if audio is None:
                return None, words if keep_words else None
            speaker, labels = speakers.label(audio, c / _SR, [(w.start, w.end) for w in words], start=a / _SR)
            labelled = tuple(replace(w, speaker=who) for w, who in zip(words, labels, strict=True))
            return speaker, labelled if keep_words else None

        return label

    # -- events ------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def error(self, code: str, message: str, *, fatal: bool = False) -> Error:
        """An error event numbered in this session's sequence (the transport reports with it)."""
        return Error(self._next_seq(), code, message, fatal)

    def end(self, reason: str = "stopped") -> End:
        """The last event of the session."""
        self._ended = True
        self._stopping = True
        return End(self._next_seq(), reason, round(self.audio_seconds, 3))
