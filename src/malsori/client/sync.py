"""Blocking face of :class:`AsyncStreamClient`, for scripts and threads without an event loop.

It runs the async client on a private event loop in a daemon thread, so reconnect and resume behave
exactly as in the async client (one implementation, not two).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .events import ReadyEvent, StreamEvent
from .stream import AsyncStreamClient, ReconnectPolicy, StreamOptions

__all__ = ["StreamClient"]

T = TypeVar("T")


class StreamClient:
    """One live session over ``/v1/stream``, blocking calls::

    with StreamClient("ws://127.0.0.1:8000/v1/stream", StreamOptions(language="en")) as s:
        for event in s.stream(chunks):
            print(event)
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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="malsori-stream-loop", daemon=True)
        self._thread.start()

        async def make() -> AsyncStreamClient:
            return AsyncStreamClient(url, options, reconnect=reconnect, headers=headers, open_timeout=open_timeout)

        self._client = self._run(make())
        self._events: Any = None

    @property
    def session_id(self) -> str | None:
        return self._client.session_id

    @property
    def last_seq(self) -> int | None:
        return self._client.last_seq

    @property
    def resumes(self) -> int:
        return self._client.resumes

    @property
    def async_client(self) -> AsyncStreamClient:
        """The async client underneath (its coroutines run on this client's loop only)."""
        return self._client

    def call_soon(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the client's loop thread (for work on the live connection)."""
        self._loop.call_soon_threadsafe(callback, *args)

    def connect(self) -> ReadyEvent:
        return self._run(self._client.connect())

    def send_audio(self, chunk: bytes | bytearray | memoryview) -> None:
        self._run(self._client.send_audio(chunk))

    def stop(self) -> None:
        self._run(self._client.stop())

    def events(self) -> Iterator[StreamEvent]:
        """Every event once, in order, until ``end``; raises the session's error if it fails."""
        if self._events is None:
            self._events = self._client.events()
        while True:
            try:
                yield self._run(self._events.__anext__())
            except StopAsyncIteration:
                return

    def __iter__(self) -> Iterator[StreamEvent]:
        return self.events()

    def stream(self, chunks: Iterable[bytes]) -> Iterator[StreamEvent]:
        """Send ``chunks`` (from a helper thread) then stop, yielding events until ``end``."""
        if self._client.session_id is None:
            self.connect()
        failure: list[BaseException] = []

        def send_all() -> None:
            try:
                for chunk in chunks:
                    self.send_audio(chunk)
                self.stop()
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)
                self._loop.call_soon_threadsafe(self._client.fail, exc)

        sender = threading.Thread(target=send_all, name="malsori-stream-sender", daemon=True)
        sender.start()
        for event in self.events():
            yield event
            if failure:
                raise failure[0]
        sender.join(timeout=5.0)
        if failure:
            raise failure[0]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> StreamClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
