"""The one seam between planning and decoding: "decode these windows with these options".

Everything that decodes implements :class:`WindowDecoder`: the model itself
(:class:`~malsori.engine.Transcriber`), the fake beside it (:class:`~malsori.engine.fake.FakeDecoder`),
a lane of the shared scheduler (:meth:`~malsori.engine.scheduler.DecodeScheduler.lane`: batched with
every other caller, by priority), and what runs windows elsewhere (a queue worker, a GPU box).
The pipeline (:mod:`malsori.engine.pipeline`) plans windows and hands them to any of them.

``submit`` returns one future per window, so one protocol serves both callers: blocking code waits on
the futures (:func:`decode_now`), asyncio code awaits them without holding a thread
(:func:`decode_async`). A decoder that works in the caller's thread (the model) decodes inside
``submit`` and returns futures that are already done (:class:`DirectDecoder`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from .options import TranscribeOptions
from .windows import Window, WindowResult

__all__ = ["WindowDecoder", "DirectDecoder", "decode_now", "decode_async", "decode_composed"]


class WindowDecoder(Protocol):
    """Decode windows; one future per window, in order. Errors that concern the whole call (a full
    queue, invalid options) may be raised by ``submit`` itself; errors of a decode are set on the
    futures."""

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]: ...


class DirectDecoder:
    """``submit`` for a decoder that decodes in the caller's thread: ``decode_windows`` does the work."""

    def decode_windows(self, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
        raise NotImplementedError

    def submit(self, windows: Sequence[Window], options: TranscribeOptions) -> list[Future[WindowResult]]:
        futures: list[Future[WindowResult]] = [Future() for _ in windows]
        try:
            results = self.decode_windows(windows, options)
        except BaseException as exc:
            for future in futures:
                future.set_exception(exc)
        else:
            for future, result in zip(futures, results, strict=True):
                future.set_result(result)
        return futures


def decode_now(decoder: WindowDecoder, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
    """Blocking: submit and wait for every window."""
    if not windows:
        return []
    return [future.result() for future in decoder.submit(windows, options)]


def decode_composed(decoder: WindowDecoder, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
    """Blocking, for a batch its caller composed (a scheduler, a live worker): a decoder that can take
    a batch as it is (``decode_batch``: the model, which otherwise spreads a lone caller's windows over
    its workers) gets it so; any other decoder as :func:`decode_now`."""
    whole = getattr(decoder, "decode_batch", None)
    if whole is None or not windows:
        return decode_now(decoder, windows, options)
    return list(whole(windows, options))


async def decode_async(decoder: WindowDecoder, windows: Sequence[Window], options: TranscribeOptions) -> list[WindowResult]:
    """Await every window without blocking the event loop. A cancelled caller cancels the windows it
    queued (a decoder skips cancelled windows that have not started)."""
    if not windows:
        return []
    futures = decoder.submit(windows, options)
    try:
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    except BaseException:
        for future in futures:
            future.cancel()
        raise
