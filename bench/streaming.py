"""Live streaming benchmark: malsori ``/v1/stream`` vs WhisperLive 0.10.0, same audio, same model, same run.

Real speech is sent at real-time pace (100 ms frames, paced against the clock) and every event is
stamped with the wall time it arrived:

- **first text**: wall time of the first event with text covering a phrase, minus the wall time the
  phrase's first speech sample was sent (speech onset: first 20 ms frame above an energy threshold).
- **final latency**: wall time when the first final covering a phrase arrives, minus the wall time
  the phrase's last speech sample was sent (its energy end, not the end of the clip with its trailing
  silence; measured from the clip's end until 2026-12-03). Phrases are the known clip boundaries of the concatenation; a
  final covers a phrase when its end time reaches the phrase's last speech (less 0.3 s of tolerance
  for timestamp jitter). A phrase no final covers counts as missed.
- **WER**: finals joined in order vs the references joined, scored as shared/testdata/README.md says;
  offline WER is malsori's ``Transcriber`` on the same concatenated audio.
- **memory**: VmRSS of the server process, sampled during the run; growth per session is
  (peak - RSS before the run) / streams.

Audio: ``en/ljspeech`` (32 clips) concatenated with 0.6 s pauses as one 4-minute talk, streamed by
1, 2, 4, 8, 16 clients at once; and each English test file on its own, one stream.

    bench/setup_whisperlive.sh            # once: WhisperLive in its own venv (/tmp/wl-venv)
    flock /tmp/malsori-bench.lock .venv/bin/python bench/streaming.py --write
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import REPO, TESTDATA, free_port, machine_line, replace_section, serve_command  # puts src/ on sys.path

from malsori.client import (
    AsyncStreamClient,
    EndEvent,
    ErrorEvent,
    FinalEvent,
    PartialEvent,
    ReconnectPolicy,
    StreamOptions,
)
from malsori.engine import SAMPLE_RATE, decode_audio, float32_to_pcm16, resolve_model
from malsori.evaluation import corpus_wer, load_manifest

CHUNK = SAMPLE_RATE // 10  # 100 ms frames
PAUSE_S = 0.6
COVER_TOLERANCE_S = 0.3
# Hard bounds on every loop: no run may hang the benchmark.
READY_TIMEOUT_S = 120.0
TAIL_TIMEOUT_S = 60.0  # after the last audio, how long to wait for the last finals
WL_SILENCE_TAIL_S = 10.0  # WhisperLive finalizes its last segment only when more audio follows


# -- audio --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrase:
    start: float  # clip boundaries in the stream (s)
    end: float
    speech_start: float  # first and last speech in it (energy), for onset and coverage
    speech_end: float
    reference: str


@dataclass(frozen=True)
class Audio:
    name: str
    samples: np.ndarray
    phrases: tuple[Phrase, ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def speech_bounds(samples: np.ndarray) -> tuple[float, float]:
    """First and last 20 ms frame whose RMS is over 10% of the loud frames' level."""
    frame = SAMPLE_RATE // 50
    n = max(1, len(samples) // frame)
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = rms > max(0.005, 0.1 * float(np.percentile(rms, 95)))
    idx = np.flatnonzero(loud)
    if idx.size == 0:
        return 0.0, len(samples) / SAMPLE_RATE
    return idx[0] * frame / SAMPLE_RATE, (idx[-1] + 1) * frame / SAMPLE_RATE


TALKS = {
    "ljspeech": lambda c: "/ljspeech/" in c.path.as_posix(),
    # Every other English clip with a reference, in manifest order: JFK, LibriVox readers, spoken card
    # names, a robot command, two read sentences, three speakers in turn, a telephone call of two speakers
    # who overlap. Many voices and recording conditions, where the LJ Speech talk has one reader.
    "mixed": lambda c: c.language == "en" and bool(c.reference) and "/ljspeech/" not in c.path.as_posix(),
}
"""Talks a live benchmark can send, by name: which manifest clips, joined in order."""


def load_talk(limit: int | None = None, rotate: int = 0, talk: str = "ljspeech") -> Audio:
    """The clips of ``talk`` (:data:`TALKS`; the LJ Speech clips by default) in order as one talk;
    ``rotate`` starts it at that clip (the ones before it come at the end), so several streams can say
    the same sentences at different moments."""
    clips = [c for c in load_manifest(TESTDATA) if TALKS[talk](c)][:limit]
    k = rotate % len(clips)
    return join_talk(f"{talk} talk", [(decode_audio(c.path), c.reference) for c in clips[k:] + clips[:k]], first=k)


def join_talk(label: str, clips: list[tuple[np.ndarray, str]], first: int = 0) -> Audio:
    """``clips`` (16 kHz samples, reference) joined with ``PAUSE_S`` of silence between them, each a
    phrase; ``first``: the index the clips were rotated to start at (named, not applied)."""
    pieces, phrases, t = [], [], 0.0
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    for i, (samples, reference) in enumerate(clips):
        s0, s1 = speech_bounds(samples)
        d = len(samples) / SAMPLE_RATE
        phrases.append(Phrase(t, t + d, t + s0, t + s1, reference))
        pieces.append(samples)
        t += d
        if i < len(clips) - 1:
            pieces.append(pause)
            t += PAUSE_S
    name = f"{label} ({len(clips)} clips)" + (f", from clip {first + 1}" if first else "")
    return Audio(name, np.concatenate(pieces), tuple(phrases))


def offline_talk_wer(talk: Audio) -> float:
    """WER of malsori's offline transcription (bundled base, language en) of the whole talk."""
    from malsori.engine import EngineConfig, Pipeline, TranscribeOptions, Transcriber

    transcriber = Transcriber(EngineConfig(model="base"))
    offline = Pipeline(transcriber).transcribe(talk.samples, TranscribeOptions(language="en"))
    return corpus_wer([" ".join(p.reference for p in talk.phrases)], [offline.text])


def load_files() -> list[Audio]:
    out = []
    for clip in load_manifest(TESTDATA):
        path = clip.path.as_posix()
        if "/ljspeech/" in path or "diarization/" in path or clip.language not in ("en", "none"):
            continue
        samples = decode_audio(clip.path)
        d = len(samples) / SAMPLE_RATE
        s0, s1 = speech_bounds(samples)
        phrases = (Phrase(0.0, d, s0, s1, clip.reference),) if clip.reference else ()
        out.append(Audio(clip.path.relative_to(TESTDATA).as_posix(), samples, phrases))
    return out


# -- one stream's record ------------------------------------------------------------------------------
@dataclass
class Record:
    t0: float = 0.0
    sent: list[float] = field(default_factory=list)  # wall time each 100 ms frame was sent
    events: list[tuple[float, bool, str, float, float]] = field(default_factory=list)  # (wall, final, text, start, end)
    error: str | None = None

    def sent_at(self, seconds: float) -> float:
        return self.sent[min(len(self.sent) - 1, max(0, int(seconds * SAMPLE_RATE) // CHUNK))]


async def paced_frames(samples: np.ndarray, record: Record, encode):
    """Yield encoded 100 ms frames at real-time pace, logging when each was handed to the socket."""
    record.t0 = time.monotonic()
    for offset in range(0, len(samples), CHUNK):
        await asyncio.sleep(max(0.0, record.t0 + offset / SAMPLE_RATE - time.monotonic()))
        yield encode(samples[offset : offset + CHUNK])
        record.sent.append(time.monotonic())


async def stream_malsori(url: str, audio: Audio, stats: bool = False, options: StreamOptions | None = None) -> Record:
    record = Record()
    options = options or StreamOptions(language="en", encoding="pcm_s16le", stats=stats)
    client = AsyncStreamClient(url, options, reconnect=ReconnectPolicy(max_attempts=0), open_timeout=READY_TIMEOUT_S)
    deadline = audio.duration + TAIL_TIMEOUT_S
    try:
        async with asyncio.timeout(deadline):
            async for event in client.stream(paced_frames(audio.samples, record, float32_to_pcm16)):
                now = time.monotonic()
                if isinstance(event, FinalEvent):
                    record.events.append((now, True, event.text, event.start, event.end))
                elif isinstance(event, PartialEvent) and event.text.strip():
                    record.events.append((now, False, event.text, event.start or 0.0, event.end or 0.0))
                elif isinstance(event, ErrorEvent):
                    record.error = record.error or f"error event {event.code}: {event.message}"
                elif isinstance(event, EndEvent) and event.extra.get("reason", "stopped") != "stopped":
                    record.error = record.error or f"session ended early: {event.extra.get('reason')}"
        if len(record.sent) * CHUNK < len(audio.samples):
            record.error = record.error or f"stream ended after {len(record.sent) / 10:.1f} s of {audio.duration:.1f} s"
    except Exception as exc:  # recorded and counted as an error of this stream, never hidden
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return record


async def stream_whisperlive(url: str, audio: Audio) -> Record:
    """WhisperLive's protocol: options JSON, SERVER_READY, float32 frames, segments, END_OF_AUDIO."""
    from websockets.asyncio.client import connect

    record = Record()
    seen: set[tuple[str, str, str]] = set()
    covered_until = [0.0]
    last_final_at = [time.monotonic()]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S + audio.duration + WL_SILENCE_TAIL_S + TAIL_TIMEOUT_S):
            async with connect(url, max_size=2**24, ping_interval=None) as ws:
                await ws.send(
                    json.dumps(
                        {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": "base", "use_vad": True}
                    )
                )
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), READY_TIMEOUT_S))
                    if message.get("message") == "SERVER_READY":
                        break
                    if message.get("status") in ("WAIT", "ERROR"):
                        raise RuntimeError(f"WhisperLive refused the stream: {message}")

                async def receive() -> None:
                    async for raw in ws:
                        message = json.loads(raw)
                        now = time.monotonic()
                        for seg in message.get("segments") or ():
                            text, start, end = seg["text"], float(seg["start"]), float(seg["end"])
                            if seg.get("completed"):
                                key = (seg["start"], seg["end"], text)
                                if key in seen:  # it re-sends its last completed segments every time
                                    continue
                                seen.add(key)
                                record.events.append((now, True, text, start, end))
                                covered_until[0] = max(covered_until[0], end)
                                last_final_at[0] = now
                            elif text.strip():
                                record.events.append((now, False, text, start, end))

                receiver = asyncio.create_task(receive())
                async for frame in paced_frames(audio.samples, record, lambda x: x.astype("<f4").tobytes()):
                    await ws.send(frame)
                # Its last segment is marked completed only when more audio follows: go on with
                # silence (real-time pace) until every phrase is covered or the tail bound is hit.
                last_speech = audio.phrases[-1].speech_end if audio.phrases else 0.0
                silence = np.zeros(CHUNK, "<f4").tobytes()
                tail_end = time.monotonic() + WL_SILENCE_TAIL_S
                while time.monotonic() < tail_end and covered_until[0] < last_speech - COVER_TOLERANCE_S:
                    await ws.send(silence)
                    await asyncio.sleep(CHUNK / SAMPLE_RATE)
                await ws.send(b"END_OF_AUDIO")
                try:
                    await asyncio.wait_for(receiver, 5.0)
                except asyncio.TimeoutError:
                    receiver.cancel()
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


# -- scoring ------------------------------------------------------------------------------------------
@dataclass
class Scores:
    first_text: list[float] = field(default_factory=list)
    final_latency: list[float] = field(default_factory=list)
    """From the wall time the phrase's last speech sample was sent (its energy end, not the clip's end)."""
    final_from_clip_end: list[float] = field(default_factory=list)
    """From the wall time the clip's last sample (trailing silence included) was sent: kinder, for comparison."""
    missed: int = 0
    errors: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    no_speech_words: int = 0

    def add(self, audio: Audio, record: Record) -> None:
        if record.error:
            self.errors.append(record.error)
        finals = [e for e in record.events if e[1]]
        text = " ".join(e[2].strip() for e in finals if e[2].strip())
        if not audio.phrases:
            self.no_speech_words += len(text.split())
            return
        self.references.append(" ".join(p.reference for p in audio.phrases))
        self.hypotheses.append(text)
        for phrase in audio.phrases:
            onset_wall = record.sent_at(phrase.speech_start) if record.sent else None
            end_wall = record.sent_at(phrase.speech_end - 1 / SAMPLE_RATE) if record.sent else None
            clip_end_wall = record.sent_at(phrase.end - 1 / SAMPLE_RATE) if record.sent else None
            text_at = next(
                (
                    w
                    for w, _f, t, _s, e in record.events
                    if onset_wall is not None and w >= onset_wall and e > phrase.speech_start
                ),
                None,
            )
            final_at = next((w for w, f, _t, _s, e in record.events if f and e >= phrase.speech_end - COVER_TOLERANCE_S), None)
            if text_at is not None:
                self.first_text.append(text_at - onset_wall)
            if final_at is None or end_wall is None:
                self.missed += 1
            else:
                self.final_latency.append(final_at - end_wall)
                self.final_from_clip_end.append(final_at - clip_end_wall)  # type: ignore[operator]

    @property
    def wer(self) -> float | None:
        return corpus_wer(self.references, self.hypotheses) if self.references else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


# -- servers ------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Peak VmRSS of a process while a block runs (sampled every 0.25 s on a thread)."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak, self.before = pid, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        if self.pid:
            self.before = self.peak = rss_mb(self.pid)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return

    def __exit__(self, *exc_info) -> None:
        self._stop.set()


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], ready, log_path: Path) -> None:
        self.name, self.ready, self.log_path = name, ready, log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until stop() closes it
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)  # polling a readiness probe

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_malsori(workdir: Path, env: dict[str, str] | None = None) -> tuple[Server, str]:
    import httpx

    port = free_port()

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/is_ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    command = serve_command(port, "--log-level", "warning", data_dir=workdir / "malsori-data")
    server = Server("malsori", command, {"PYTHONPATH": str(REPO / "src"), **(env or {})}, ready, workdir / "malsori.log")
    return server, f"ws://127.0.0.1:{port}/v1/stream"


def start_whisperlive(workdir: Path, venv: Path, model_dir: Path) -> tuple[Server, str]:
    port = free_port()
    code = (
        "from whisper_live.server import TranscriptionServer\n"
        f"TranscriptionServer().run('127.0.0.1', {port}, backend='faster_whisper', "
        f"faster_whisper_custom_model_path={str(model_dir)!r}, single_model=True)\n"
    )

    def ready() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    # OMP_NUM_THREADS=1: its own launcher's default (run_server.py).
    server = Server(
        "WhisperLive", [str(venv / "bin" / "python"), "-c", code], {"OMP_NUM_THREADS": "1"}, ready, workdir / "whisperlive.log"
    )
    return server, f"ws://127.0.0.1:{port}"


# -- runs ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    system: str
    streams: int
    scores: Scores
    rss_before: float
    rss_peak: float
    offline_wer: float | None = None
    mix: str = "lockstep"
    one_stream_peak: float | None = None
    """Peak RSS of the same system's one-stream row, for the growth per extra session."""

    def cells(self) -> list[str]:
        s = self.scores
        growth = (self.rss_peak - self.rss_before) / self.streams
        extra = "–"
        if self.one_stream_peak is not None and self.streams > 1:
            extra = f"{(self.rss_peak - self.one_stream_peak) / (self.streams - 1):.1f}"
        phrases = len(s.final_latency) + s.missed
        return [
            self.system,
            str(self.streams),
            self.mix if self.streams > 1 else "–",
            fmt(pct(s.first_text, 50)),
            fmt(pct(s.first_text, 95)),
            fmt(pct(s.final_latency, 50)),
            fmt(pct(s.final_latency, 95)),
            f"{s.missed}/{phrases}",
            fmt(None if s.wer is None else 100 * s.wer, 1),
            fmt(None if self.offline_wer is None else 100 * self.offline_wer, 1),
            f"{self.rss_before:.0f}",
            f"{growth:.1f}",
            extra,
            str(len(s.errors)),
        ]


HEADER = [
    "system",
    "streams",
    "streams' audio",
    "first text p50 (s)",
    "first text p95 (s)",
    "final p50 (s)",
    "final p95 (s)",
    "missed phrases",
    "stream WER %",
    "offline WER %",
    "server RSS before (MB)",
    "RSS growth / stream (MB)",
    "RSS growth / extra session (MB)",
    "errors",
]


def stream_audios(talk: Audio, n: int, mix: str, clips: int | None, which: str = "ljspeech") -> list[Audio]:
    """What each of ``n`` simultaneous streams sends. ``lockstep``: the same talk, started together,
    so every phrase of every stream ends at the same moment (the worst case for a shared decoder).
    ``rotated``: stream k starts the talk at clip 1 + k * (clips / n), like n people each saying
    their own sentences: the same amount of speech, pauses at different moments."""
    if mix == "lockstep" or n == 1:
        return [talk] * n
    total = len(talk.phrases)
    return [load_talk(clips, rotate=k * total // n, talk=which) for k in range(n)]


async def run_concurrent(streamer, url: str, audios: list[Audio]) -> list[Record]:
    return list(await asyncio.gather(*(streamer(url, audio) for audio in audios)))


def run_system(
    name: str,
    streamer,
    url: str,
    pid: int,
    talk: Audio,
    counts: list[int],
    files: list[Audio],
    offline_wer: float | None,
    log,
    dump: dict,
    mix: str = "rotated",
    lockstep: tuple[int, ...] = (),
    clips: int | None = None,
) -> tuple[list[Row], Scores | None, dict[str, Record]]:
    # One unmeasured stream first, so neither system's first-request costs (a lazily loaded model,
    # first allocations) land in the figures.
    warm = Audio("warm-up", talk.samples[: int(talk.phrases[0].end * SAMPLE_RATE)], talk.phrases[:1])
    warm_record = asyncio.run(streamer(url, warm))
    log(f"  warm-up: {' '.join(e[2].strip() for e in warm_record.events if e[1])!r} {warm_record.error or ''}")
    file_scores, per_file = None, {}
    if files:
        file_scores = Scores()
        for audio in files:
            record = asyncio.run(streamer(url, audio))
            file_scores.add(audio, record)
            per_file[audio.name] = record
            log(
                f"  {name} {audio.name}: {' '.join(e[2].strip() for e in record.events if e[1])!r}"
                f"{' ERROR ' + record.error if record.error else ''}"
            )
    rows: list[Row] = []
    one_peak = None
    for n in counts:
        row_mixes = [mix] + (["lockstep"] if n in lockstep and mix != "lockstep" else []) if n > 1 else ["lockstep"]
        for row_mix in row_mixes:
            audios = stream_audios(talk, n, row_mix, clips)
            with RssSampler(pid) as rss:
                records = asyncio.run(run_concurrent(streamer, url, audios))
            scores = Scores()
            for audio, record in zip(audios, records, strict=True):
                scores.add(audio, record)
            dump[f"{name} x{n} {row_mix}"] = [{"t0": r.t0, "sent": r.sent, "events": r.events, "error": r.error} for r in records]
            row = Row(name, n, scores, rss.before, rss.peak, offline_wer, row_mix, one_peak)
            if n == 1:
                one_peak = rss.peak
            rows.append(row)
            log("  " + " | ".join(row.cells()) + ("  errors: " + "; ".join(scores.errors[:3]) if scores.errors else ""))
    return rows, file_scores, per_file


def markdown(
    rows: list[Row],
    files: list[Audio],
    file_results: dict[str, tuple[Scores | None, dict]],
    command: str,
    machine: str,
    talk: Audio,
) -> str:
    lines = [
        "## Live streaming",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Audio: {talk.name}, {talk.duration:.0f} s, {PAUSE_S} s pauses between clips, sent at real-time pace in "
        "100 ms frames; every stream of a row sends the whole talk at once with the others: *lockstep*, the "
        "same talk started together (every phrase of every stream ends at the same moment: the worst case), "
        "or *rotated*, stream k starting the talk k/N of the way in (N people saying their own sentences). "
        "Model: bundled `base` (the same directory for both), language en, each system's default settings.",
        "",
        "First text: first event with text for a phrase after its speech onset was sent. Final: the first final "
        "covering a phrase after the phrase's last speech sample was sent (energy end of speech, not the clip's "
        "end; p50/p95 over all phrases of all streams). "
        "Missed: phrases no final covered. WER: finals vs references (Whisper normalizer); offline: malsori "
        "`Transcriber` on the same concatenated audio. RSS growth: (peak during the run - before) / streams; "
        "per extra session: (peak of the row - peak of the one-stream row) / (streams - 1).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    if files:
        systems = list(file_results)
        lines += [
            "",
            "Each English test file on its own (one stream, real-time pace); `silence/empty.wav` counts "
            "words output on no speech. WhisperLive marks its last segment completed only after its output "
            f"repeats over newer audio; it gets {WL_SILENCE_TAIL_S:.0f} s of silence after each file before "
            "`END_OF_AUDIO`, and a phrase it has not completed by then counts as missed.",
            "",
        ]
        head = ["file", "s"] + [f"{s} {k}" for s in systems for k in ("first text (s)", "final (s)", "WER %")]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for audio in files:
            cells = [f"`{audio.name}`", f"{audio.duration:.1f}"]
            for system in systems:
                _scores, per_file = file_results[system]
                record = per_file.get(audio.name)
                one = Scores()
                if record is not None:
                    one.add(audio, record)
                if not audio.phrases:
                    cells += ["–", "–", f"{one.no_speech_words} words"]
                    continue
                cells += [
                    f"{one.first_text[0]:.2f}" if one.first_text else "–",
                    f"{one.final_latency[0]:.2f}" if one.final_latency else "missed",
                    f"{100 * one.wer:.1f}" if one.wer is not None else "–",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        for system in systems:
            scores = file_results[system][0]
            if scores is not None:
                lines.append(
                    f"\n{system}, all files: first text p50 {fmt(pct(scores.first_text, 50))} s, "
                    f"final p50 {fmt(pct(scores.final_latency, 50))} s / p95 "
                    f"{fmt(pct(scores.final_latency, 95))} s, WER {100 * (scores.wer or 0):.1f}%, "
                    f"missed {scores.missed}, errors {len(scores.errors)}."
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="stream to this running malsori /v1/stream instead of starting a server")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its memory")
    parser.add_argument("--streams", default="1,2,4,8,16", help="simultaneous malsori streams per row")
    parser.add_argument("--wl-streams", default="1,2", help="simultaneous WhisperLive streams per row ('' skips it)")
    parser.add_argument("--wl-venv", type=Path, default=Path(os.environ.get("WL_VENV", "/tmp/wl-venv")))
    parser.add_argument("--no-files", action="store_true", help="skip streaming each test file on its own")
    parser.add_argument("--clips", type=int, help="use only the first N LJ Speech clips (quick runs)")
    parser.add_argument("--mix", default="rotated", choices=("rotated", "lockstep"), help="what several streams send")
    parser.add_argument("--lockstep", default="8", help="stream counts that also get a lockstep row (the worst case)")
    parser.add_argument("--stats", action="store_true", help="malsori streams ask for stats events (issue 13's cost check)")
    parser.add_argument("--write", action="store_true", help="write the table to docs/benchmarks.md")
    args = parser.parse_args()

    log = lambda message: print(message, flush=True)  # noqa: E731
    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    lockstep = tuple(int(n) for n in args.lockstep.split(",") if n.strip())
    wl_counts = [int(n) for n in args.wl_streams.split(",") if n.strip()]
    talk = load_talk(args.clips)
    files = [] if args.no_files else load_files()
    model_dir = Path(resolve_model("base"))
    log(f"talk: {talk.duration:.1f} s, {len(talk.phrases)} phrases; {len(files)} files; model {model_dir}")

    offline_wer = offline_talk_wer(talk)
    log(f"offline WER {100 * offline_wer:.2f}%")

    rows: list[Row] = []
    dump: dict[str, list] = {"phrases": [p.__dict__ for p in talk.phrases]}
    file_results: dict[str, tuple[Scores | None, dict]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="malsori-bench-stream-"))
    log(f"logs in {workdir}")
    try:
        if counts:
            if args.url:
                url, pid, server = args.url, args.server_pid, None
            else:
                server, url = start_malsori(workdir)
                pid = server.pid
            try:
                log("malsori:")
                streamer = functools.partial(stream_malsori, stats=args.stats)
                got, file_scores, per_file = run_system(
                    "malsori", streamer, url, pid, talk, counts, files, offline_wer, log, dump, args.mix, lockstep, args.clips
                )
                rows += got
                file_results["malsori"] = (file_scores, per_file)
            finally:
                if server is not None:
                    server.stop()
        if wl_counts:
            if not (args.wl_venv / "bin" / "python").exists():
                sys.exit(f"WhisperLive venv not found at {args.wl_venv}: run bench/setup_whisperlive.sh first")
            server, url = start_whisperlive(workdir, args.wl_venv, model_dir)
            try:
                log("WhisperLive:")
                got, file_scores, per_file = run_system(
                    "WhisperLive 0.10.0",
                    stream_whisperlive,
                    url,
                    server.pid,
                    talk,
                    wl_counts,
                    files,
                    offline_wer,
                    log,
                    dump,
                    args.mix,
                    lockstep,
                    args.clips,
                )
                rows += got
                file_results["WhisperLive 0.10.0"] = (file_scores, per_file)
            finally:
                server.stop()
    finally:
        (workdir / "records.json").write_text(json.dumps(dump))
        if not args.url:
            shutil.rmtree(workdir / "malsori-data", ignore_errors=True)

    command = "flock /tmp/malsori-bench.lock .venv/bin/python bench/streaming.py " + " ".join(sys.argv[1:])
    section = markdown(rows, files, file_results, command.strip(), machine_line(), talk)
    print(section)
    if args.write:
        title, _, body = section.partition("\n")
        replace_section(title, body)


if __name__ == "__main__":
    main()
