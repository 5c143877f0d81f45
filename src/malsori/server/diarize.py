"""Speakers on HTTP transcripts: ``diarize=true`` and the speaker-count options, shared by the routes.

The diarization runs in a worker thread *while* the transcription is decoded (the decoder leaves
part of the CPU idle between batches), then every word and segment gets its speaker
(:func:`malsori.speakers.attribute`). Word times are needed for that, so they are computed whenever
speakers are asked for; the response keeps them only where the request asked for words.
"""

from __future__ import annotations

import asyncio

import numpy as np
from starlette.concurrency import run_in_threadpool

from ..engine.options import TranscribeOptions
from ..engine.types import Transcript
from ..errors import InvalidOptionsError
from ..speakers import DiarizeOptions, attribute, shared_diarizer
from .inference import transcribe
from .services import Services

__all__ = ["diarize_options", "transcribe_maybe_diarized"]


def diarize_options(
    diarize: bool, num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
) -> DiarizeOptions | None:
    """The request's speaker options, or None when it did not ask for speakers (InvalidOptionsError when
    it gave a count without ``diarize=true``, or a count out of range)."""
    if not diarize:
        if num_speakers or min_speakers or max_speakers:
            raise InvalidOptionsError("num_speakers, min_speakers and max_speakers need diarize=true")
        return None
    return DiarizeOptions(num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers)


async def transcribe_maybe_diarized(
    services: Services, audio: np.ndarray, options: TranscribeOptions, speakers: DiarizeOptions | None, *, route: str
) -> Transcript:
    """:func:`~malsori.server.inference.transcribe`, with speakers when ``speakers`` is given."""
    if speakers is None:
        return await transcribe(services, audio, options, route=route)
    services.require_ready()
    keep_words = options.word_timestamps
    diarizer = await run_in_threadpool(shared_diarizer)
    transcript, diarization = await asyncio.gather(
        transcribe(services, audio, options.with_(word_timestamps=True), route=route),
        run_in_threadpool(diarizer.diarize, audio, speakers),
    )
    return attribute(transcript, diarization, keep_words=keep_words)
