"""Async client for the ``/v1/stream`` WebSocket: send PCM, read typed events, survive dropped links.

A dropped connection (no close frame, a reset, the server going away) is not the end of a session:
the server keeps it for a grace period. The client reconnects on its own with the session id, the
resume token and the last sequence number it received; the server replays the events after that
number, and the client drops anything at or below it, so no final is lost or yielded twice. Audio
sent since the drop is kept (bounded, ``ReconnectPolicy.buffer_s``) and sent again after the resume,
from the byte the server says it has, so no speech is lost either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..audio_limits import check_sample_rate
from ..errors import AuthError, InvalidOptionsError, MalsoriError, NotFoundError, OverloadedError, ProtocolError
from ..protocol import RESUMABLE_CLOSE_CODES, CloseCode, error_for_close_code
from .errors import ConnectionFailedError, error_for_code
from .events import EndEvent, ErrorEvent, ReadyEvent, StreamEvent, parse_event

__all__ = ["ENCODINGS", "StreamOptions", "ReconnectPolicy", "AsyncStreamClient"]

#: Sample formats of the protocol and their bytes per sample.
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4}
TASKS = ("transcribe", "translate")

# Errors on resume that no retry will fix.
_FATAL_ON_RESUME = (AuthError, NotFoundError, ProtocolError, InvalidOptionsError)


@dataclass(frozen=True)
class StreamOptions:
    """What the ``start`` message asks for (docs/protocol.md). ``options`` overrides single preset
    values (``{"endpoint_s": 0.5}``); the server refuses keys it does not know."""

    sample_rate: int = 16_000
    encoding: str = "pcm_s16le"
    language: str | None = None
    task: str = "transcribe"
    preset: str | None = None
    word_timestamps: bool = False
    sentiment: bool = False
    """Each final carries ``sentiment`` (``FinalEvent.extra["sentiment"]``: ``{"label", "score"}`` or None)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: bool = False
    """The server sends :class:`~malsori.client.events.StatsEvent` about every second."""
    meeting_id: str | None = None
    """The session joins this meeting (``GET /v1/meetings/{id}``)."""

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise InvalidOptionsError(f"encoding must be one of {', '.join(ENCODINGS)}, not {self.encoding!r}")
        check_sample_rate(self.sample_rate)  # the server's range: a rate it would refuse fails here
        if self.task not in TASKS:
            raise InvalidOptionsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")

    @property
    def bytes_per_second(self) -> int:
        return int(self.sample_rate) * ENCODINGS[self.encoding]

    def start_message(
        self, *, session_id: str | None = None, resume_token: str | None = None, last_seq: int | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "start",
            "sample_rate": int(self.sample_rate),
            "encoding": self.encoding,
            "task": self.task,
        }
        if self.language:
            message["language"] = self.language
        if self.preset:
            message["preset"] = self.preset
        if self.word_timestamps:
            message["word_timestamps"] = True
        if self.sentiment:
            message["sentiment"] = True
        if self.options:
            message["options"] = dict(self.options)
        if self.stats:
            message["stats"] = True
        if self.meeting_id:
            message["meeting_id"] = self.meeting_id
        if session_id is not None:
            message.update(session_id=session_id, resume_token=resume_token, last_seq=last_seq)
        return message


@dataclass(frozen=True)
class ReconnectPolicy:
    """How hard to try resuming after a drop. ``max_attempts=0`` turns resuming off."""

    max_attempts: int = 6
    initial_delay_s: float = 0.1
    max_delay_s: float = 2.0
    buffer_s: float = 30.0
    """Seconds of recent audio kept to send again after a resume (the server's default grace)."""


class _AudioLog:
    """The audio sent so far, by absolute byte offset; only the last ``max_bytes`` are kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._start = 0  # offset of the first kept byte
        self.end = 0  # offset after the last byte

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.end += len(chunk)
        while self._chunks and self.end - self._start - len(self._chunks[0]) >= self.max_bytes:
            self._start += len(self._chunks.popleft())

    def since(self, offset: int) -> list[bytes]:
        if offset < self._start:
            raise ConnectionFailedError(
                f"cannot resume: the server has audio up to byte {offset}, but only bytes from "
                f"{self._start} are still kept (raise ReconnectPolicy.buffer_s)"
            )
        out, position = [], self._start
        for chunk in self._chunks:
            if position + len(chunk) > offset:
                out.append(chunk[max(0, offset - position) :])
            position += len(chunk)
        return out


_DONE = object()


class AsyncStreamClient:
    """One live transcription session over ``/v1/stream``.

    Use it as an async context manager, send audio with :meth:`send_audio`, call :meth:`stop` when
    the audio is over, and iterate the client for typed events until :class:`EndEvent`::

        async with AsyncStreamClient("ws://127.0.0.1:8000/v1/stream", StreamOptions(language="en")) as s:
            sender = asyncio.create_task(send_everything(s))
            async for event in s:
                ...

    or let :meth:`stream` do the sending. Errors raise :mod:`malsori.errors` classes
    (``OverloadedError`` when the server refuses new sessions, ``ProtocolError``, ...).
    """

    def __init__(
        self,
        url: str,
        options: StreamOptions | None = None,
        *,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        headers: Mapping[str, str] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.options = options or StreamOptions()
        self.reconnect = reconnect
        self.headers = dict(headers or {})
        self.open_timeout = open_timeout
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.last_seq: int | None = None
        self.resumes = 0
        """How many times this client has resumed its session after a dropped connection."""
        self._ws: ClientConnection | None = None
        self._audio = _AudioLog(int(reconnect.buffer_s * self.options.bytes_per_second))
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._pending_error: MalsoriError | None = None
        self._failure: BaseException | None = None
        self._stop_requested = False
        self._ended = False
        self._closing = False

    # -- public API ------------------------------------------------------------------------------

    @property
    def connection(self) -> ClientConnection | None:
        """The WebSocket connection in use right now (changes after a resume)."""
        return self._ws

    @property
    def ended(self) -> bool:
        return self._ended

    async def connect(self) -> ReadyEvent:
        """Open the session; returns its ``ready`` event (also yielded by iteration)."""
        if self._reader is not None:
            raise ProtocolError("this client is already connected; use a new client for a new session")
        ws = await self._open()
        try:
            ready = await self._handshake(ws, self.options.start_message())
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self._connected.set()
        self._reader = asyncio.create_task(self._read_loop(), name="malsori-stream-reader")
        return ready

    async def send_audio(self, chunk: bytes | bytearray | memoryview) -> None:
        """Send PCM in the session's encoding. While the link is down the audio is kept and sent on resume."""
        if self._failure is not None:
            raise self._failure
        if self._reader is None:
            raise ProtocolError("connect() before sending audio")
        if self._stop_requested:
            raise ProtocolError("audio after stop()")
        data = bytes(chunk)
        if len(data) % ENCODINGS[self.options.encoding]:
            raise InvalidOptionsError(
                f"{self.options.encoding} audio must come in whole samples of "
                f"{ENCODINGS[self.options.encoding]} bytes; got {len(data)} bytes"
            )
        if not data:
            return
        async with self._send_lock:
            self._audio.append(data)
            if self._connected.is_set():
                try:
                    await self._link.send(data)
                except ConnectionClosed:
                    self._connected.clear()  # the reader sees the same close and resumes

    async def stop(self) -> None:
        """Say the audio is over; the server sends the last finals, then ``end``."""
        if self._failure is not None:
            raise self._failure
        if self._stop_requested:
            return
        async with self._send_lock:
            self._stop_requested = True
            if self._connected.is_set():
                try:
                    await self._link.send(json.dumps({"type": "stop"}))
                except ConnectionClosed:
                    self._connected.clear()

    def fail(self, exc: BaseException) -> None:
        """End the event iteration with ``exc`` (for a failing audio source on the sending side)."""
        self._events.put_nowait(exc)

    async def close(self) -> None:
        """Close the connection now (without waiting for ``end``); the server may keep the session."""
        self._closing = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every event once, in order, until ``end``; raises the session's error if it fails."""
        while True:
            item = await self._events.get()
            if item is _DONE:
                self._events.put_nowait(_DONE)  # later iterations end at once too
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self.events()

    async def stream(self, chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[StreamEvent]:
        """Send ``chunks`` then stop, yielding events as they come until ``end``."""
        if self._reader is None:
            await self.connect()

        async def send_all() -> None:
            try:
                if isinstance(chunks, AsyncIterable):
                    async for chunk in chunks:
                        await self.send_audio(chunk)
                else:
                    for chunk in chunks:
                        await self.send_audio(chunk)
                await self.stop()
            except Exception as exc:  # the audio source failed: end the iteration with its error
                self.fail(exc)
                raise

        sender = asyncio.create_task(send_all(), name="malsori-stream-sender")
        try:
            async for event in self.events():
                yield event
                _raise_if_failed(sender)
            _raise_if_failed(sender)
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    async def __aenter__(self) -> AsyncStreamClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------------

    @property
    def _link(self) -> ClientConnection:
        """The connection in use; set by :meth:`connect` before anything sends or reads."""
        if self._ws is None:
            raise ProtocolError("connect() first")
        return self._ws

    async def _open(self) -> ClientConnection:
        try:
            return await connect(
                self.url,
                additional_headers=self.headers,
                open_timeout=self.open_timeout,
                max_size=2**24,
                # The server's events are small and the audio flows the other way; the default
                # keepalive would misread a busy single-core server as a dead link.
                ping_interval=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            if status in (429, 503):
                raise OverloadedError(f"the server refused the session ({status}): {body}".strip()) from exc
            if status in (401, 403):
                raise AuthError(f"the server refused the session ({status}): {body}".strip()) from exc
            raise ConnectionFailedError(f"{self.url} answered HTTP {status}, not a WebSocket: {body}".strip()) from exc
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            raise ConnectionFailedError(f"cannot connect to {self.url}: {exc}") from exc

    async def _handshake(self, ws: ClientConnection, start: dict[str, Any]) -> ReadyEvent:
        """Send ``start`` and wait for ``ready``; raise the server's error if it refuses."""
        await ws.send(json.dumps(start))
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
            except ConnectionClosed as exc:
                raise self._pending_error or error_for_close_code(_close_code(exc), _close_reason(exc)) from exc
            except asyncio.TimeoutError as exc:
                raise ConnectionFailedError(f"no ready event from {self.url} within {self.open_timeout} s") from exc
            event = self._parse(raw)
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                self._pending_error = error_for_code(event.code, event.message)
                self._events.put_nowait(event)
                continue
            if not isinstance(event, ReadyEvent):
                raise ProtocolError(f"expected a ready event first, got {event.type!r}")
            self.session_id, self.resume_token = event.session_id, event.resume_token
            self._pending_error = None
            self._accept(event)
            return event

    def _parse(self, raw: str | bytes) -> StreamEvent | None:
        """The typed event in ``raw``; None for a ``pong`` (connection-level, not a session event)."""
        if isinstance(raw, bytes):
            raise ProtocolError("the server sent a binary message; /v1/stream events are JSON text")
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"the server sent invalid JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise ProtocolError("the server sent JSON that is not an object")
        if message.get("type") == "pong":
            return None
        return parse_event(message)

    def _accept(self, event: StreamEvent) -> bool:
        """Queue ``event`` unless it was already received (a replay); True when it is new."""
        if event.seq is not None:
            if self.last_seq is not None and event.seq <= self.last_seq:
                return False
            self.last_seq = event.seq
        self._events.put_nowait(event)
        return True

    async def _read_loop(self) -> None:
        try:
            while True:
                ws = self._link
                try:
                    async for raw in ws:
                        event = self._parse(raw)
                        if event is None:
                            continue
                        if isinstance(event, ErrorEvent) and event.extra.get("fatal", True):
                            self._pending_error = error_for_code(event.code, event.message)
                        if self._accept(event) and isinstance(event, EndEvent):
                            self._ended = True
                            await ws.close()
                            if self._pending_error is not None:  # the session ended because it failed
                                raise self._pending_error
                            return
                    code, reason = ws.close_code, ws.close_reason or ""
                except ConnectionClosed as exc:
                    code, reason = _close_code(exc), _close_reason(exc)
                self._connected.clear()
                if self._closing:
                    return
                if code in RESUMABLE_CLOSE_CODES and self._pending_error is None and self.reconnect.max_attempts > 0:
                    await self._resume()
                    continue
                if code == CloseCode.NORMAL and self._pending_error is None:
                    raise ConnectionFailedError("the server closed the session before its end event")
                raise self._pending_error or error_for_close_code(code, reason)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            self._events.put_nowait(exc)
        finally:
            self._connected.clear()
            self._events.put_nowait(_DONE)

    async def _resume(self) -> None:
        delay = self.reconnect.initial_delay_s
        last_error: Exception | None = None
        for _attempt in range(self.reconnect.max_attempts):
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect.max_delay_s)
            try:
                ws = await self._open()
            except (ConnectionFailedError, OverloadedError) as exc:
                last_error = exc
                continue
            try:
                start = self.options.start_message(
                    session_id=self.session_id, resume_token=self.resume_token, last_seq=self.last_seq
                )
                async with self._send_lock:
                    ready = await self._handshake(ws, start)
                    self._ws = ws
                    self.resumes += 1
                    offset = _resume_offset(ready, self._audio.end, ENCODINGS[self.options.encoding])
                    try:
                        for chunk in self._audio.since(offset):
                            await ws.send(chunk)
                        if self._stop_requested:
                            await ws.send(json.dumps({"type": "stop"}))
                    except ConnectionClosed:
                        # Closed right after ready: the session had ended while we were away (the
                        # server replays its last events, then closes) or the link broke again. The
                        # reader reads what arrived and decides, as after any close.
                        return
                    self._connected.set()
                return
            except _FATAL_ON_RESUME:
                await ws.close()
                raise
            except (ConnectionClosed, ConnectionFailedError, OverloadedError, OSError) as exc:
                last_error = exc
                await ws.close()
        raise ConnectionFailedError(
            f"lost the connection to {self.url} and could not resume session {self.session_id} "
            f"after {self.reconnect.max_attempts} attempts: {last_error}"
        )


def _resume_offset(ready: ReadyEvent, sent: int, sample_bytes: int) -> int:
    """The byte of our audio the server wants next: ``ready.received_samples`` says what arrived."""
    received = ready.extra.get("received_samples")
    return sent if received is None else int(received) * sample_bytes


def _raise_if_failed(task: asyncio.Task) -> None:
    error = task.exception() if task.done() else None
    if error is not None:
        raise error


def _close_code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


def _close_reason(exc: ConnectionClosed) -> str:
    return exc.rcvd.reason if exc.rcvd is not None else ""
