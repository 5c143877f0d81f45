"""``malsori stream``: live transcription of a file, a raw PCM pipe or the microphone over ``/v1/stream``.

A remote command: it speaks only the public wire protocol through :mod:`malsori.client`, so it works
without the engine installed, except that decoding a FILE (MP3, FLAC, ...) uses the engine's
decoder; raw PCM on stdin needs nothing more.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

import typer

from ..audio_limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..client import ENCODINGS, AsyncStreamClient, ErrorEvent, FinalEvent, LanguageEvent, PartialEvent, StreamOptions
from ..errors import MalsoriError

__all__ = ["register", "stream"]

CHUNK_S = 0.1  # 100 ms frames: the protocol's typical 20-200 ms, and a tenth of a second of latency
_MIC_INSTALL = "pip install 'malsori[mic]'"
_ENGINE_INSTALL = "pip install 'malsori[engine]'"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _file_pcm(path: Path, encoding: str) -> bytes:
    """Decode ``path`` to 16 kHz mono PCM in ``encoding`` with the engine's decoder (PyAV)."""
    try:
        from ..engine.audio import decode_audio, float32_to_pcm16
    except ImportError as exc:
        raise _fail(
            f"decoding {path.name} needs the engine extra ({exc.name or 'a dependency'} is missing): "
            f"run {_ENGINE_INSTALL}, or pipe raw PCM: ffmpeg -i {path.name} -f s16le -ar 16000 -ac 1 - "
            "| malsori stream -"
        ) from None
    samples = decode_audio(path)
    return float32_to_pcm16(samples) if encoding == "pcm_s16le" else samples.astype("<f4").tobytes()


async def _chunks_of(pcm: bytes, chunk_bytes: int, bytes_per_second: int, realtime: bool) -> AsyncIterator[bytes]:
    started = time.monotonic()
    for offset in range(0, len(pcm), chunk_bytes):
        if realtime:  # pace against the clock, not by sleeping a fixed step, so delays do not add up
            due = started + offset / bytes_per_second
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield pcm[offset : offset + chunk_bytes]


async def _stdin_chunks(chunk_bytes: int, bytes_per_second: int, realtime: bool, sample_bytes: int) -> AsyncIterator[bytes]:
    reader = sys.stdin.buffer
    started, sent, carry = time.monotonic(), 0, b""
    while True:
        data = await asyncio.to_thread(reader.read, chunk_bytes)
        if not data:
            break
        data = carry + data
        whole = len(data) - len(data) % sample_bytes  # a pipe may split a sample between reads
        data, carry = data[:whole], data[whole:]
        if realtime:
            await asyncio.sleep(max(0.0, started + sent / bytes_per_second - time.monotonic()))
        sent += len(data)
        if data:
            yield data


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the package is there but PortAudio is not
        raise _fail(f"--mic needs the mic extra ({exc}): run {_MIC_INSTALL}") from None
    return sounddevice


async def _mic_chunks(sounddevice, sample_rate: int, encoding: str, chunk_frames: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def on_audio(data, frames, time_info, status) -> None:  # runs on PortAudio's thread
        loop.call_soon_threadsafe(queue.put_nowait, bytes(data))

    # Ctrl-C ends the audio, not the program: the server still sends the last finals, then end.
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    dtype = "int16" if encoding == "pcm_s16le" else "float32"
    try:
        with sounddevice.RawInputStream(
            samplerate=sample_rate, channels=1, dtype=dtype, blocksize=chunk_frames, callback=on_audio
        ):
            typer.echo("listening; Ctrl-C to stop", err=True)
            stop_wait = asyncio.ensure_future(stopped.wait())
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if stopped.is_set():
                    get.cancel()
                    return
                yield get.result()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


class _Printer:
    """Finals as lines; on a terminal, the open partial redrawn in place on the line below them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self._partial_shown = False

    def partial(self, text: str) -> None:
        if not self.live:
            return
        width = shutil.get_terminal_size().columns - 1
        shown = text.strip()
        if len(shown) > width:  # keep the end in view: wrapping would break the in-place redraw
            shown = "…" + shown[-(width - 1) :]
        self.out.write("\r\x1b[K\x1b[2m" + shown + "\x1b[0m")
        self.out.flush()
        self._partial_shown = True

    def end(self) -> None:
        if self._partial_shown:  # leave the last partial on screen, on its own line
            self.out.write("\n")
            self.out.flush()
            self._partial_shown = False

    def line(self, text: str) -> None:
        if self._partial_shown:
            self.out.write("\r\x1b[K")
            self._partial_shown = False
        self.out.write(text + "\n")
        self.out.flush()


def _label(event: FinalEvent) -> str:
    """`` [positive 0.93]`` when the final carries a sentiment, else nothing."""
    found = event.extra.get("sentiment")
    if not isinstance(found, dict) or "label" not in found:
        return ""
    return f"  [{found['label']} {float(found.get('score', 0.0)):.2f}]"


async def _run(
    url: str, options: StreamOptions, chunks: AsyncIterator[bytes], timestamps: bool, headers: dict[str, str] | None = None
) -> None:
    printer = _Printer(sys.stdout)
    client = AsyncStreamClient(url, options, headers=headers)
    try:
        async for event in client.stream(chunks):
            if isinstance(event, PartialEvent):
                printer.partial(event.text)
            elif isinstance(event, FinalEvent):
                text = event.text.strip()
                if text:
                    line = f"[{event.start:7.2f} → {event.end:7.2f}] {text}" if timestamps else text
                    printer.line(line + _label(event))
            elif isinstance(event, LanguageEvent):
                typer.echo(f"language: {event.language}", err=True)
            elif isinstance(event, ErrorEvent) and not event.extra.get("fatal", True):
                typer.echo(f"warning: {event.message} ({event.code})", err=True)
    finally:
        printer.end()
        await client.close()


def stream(
    source: str | None = typer.Argument(None, help="Audio file to stream, or - for raw PCM on stdin"),
    mic: bool = typer.Option(False, "--mic", help="Stream the microphone (needs the mic extra)"),
    url: str = typer.Option(
        "ws://127.0.0.1:8000/v1/stream", "--url", envvar="MALSORI_STREAM_URL", help="The server's /v1/stream WebSocket"
    ),
    language: str | None = typer.Option(None, "--language", "-l", help="Language code (default: detect)"),
    task: str = typer.Option("transcribe", "--task", help="transcribe or translate (to English)"),
    preset: str | None = typer.Option(None, "--preset", help="low-latency, balanced, accurate or korean"),
    realtime: bool = typer.Option(False, "--realtime", help="Send at real-time pace, as if spoken live"),
    encoding: str = typer.Option("pcm_s16le", "--encoding", help="pcm_s16le or pcm_f32le (stdin and mic)"),
    sample_rate: int = typer.Option(
        16000, "--sample-rate", min=MIN_SAMPLE_RATE, max=MAX_SAMPLE_RATE, help="Sample rate of stdin or mic audio (Hz)"
    ),
    timestamps: bool = typer.Option(False, "--timestamps", help="Print each final line with its times"),
    sentiment: bool = typer.Option(False, "--sentiment", help="Print each final's sentiment: [negative|neutral|positive score]"),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="MALSORI_API_KEY", help="API key, for a server that has keys (sent as Authorization: Bearer)"
    ),
) -> None:
    """Stream audio to a malsori server and print the words as they are recognized."""
    if mic == (source is not None):
        raise _fail("give one source: a FILE, - for raw PCM on stdin, or --mic")
    if encoding not in ENCODINGS:
        raise _fail(f"--encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    try:
        if source not in (None, "-"):
            path = Path(source)
            if not path.is_file():
                raise _fail(f"no such file: {source}")
            sample_rate = 16_000  # decoded files are always 16 kHz mono
        options = StreamOptions(
            sample_rate=sample_rate, encoding=encoding, language=language, task=task, preset=preset, sentiment=sentiment
        )
        bytes_per_second = options.bytes_per_second
        chunk_bytes = int(CHUNK_S * sample_rate) * ENCODINGS[encoding]
        if mic:
            chunks = _mic_chunks(_sounddevice(), sample_rate, encoding, int(CHUNK_S * sample_rate))
        elif source == "-":
            chunks = _stdin_chunks(chunk_bytes, bytes_per_second, realtime, ENCODINGS[encoding])
        else:
            chunks = _chunks_of(_file_pcm(path, encoding), chunk_bytes, bytes_per_second, realtime)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        asyncio.run(_run(url, options, chunks, timestamps, headers))
    except MalsoriError as exc:
        raise _fail(f"{exc} ({exc.code})") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
