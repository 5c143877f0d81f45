"""Small blocking client for malsori's file API: one-shot transcription and long-file jobs.

``transcribe`` posts to the OpenAI-compatible ``/v1/audio/transcriptions`` (or ``/translations``)
with ``response_format=verbose_json``; ``submit_job`` / ``get_job`` / ``wait_job`` / ``cancel_job``
use ``/v1/jobs``. Error bodies ``{"error": {"code", "message"}}`` become :mod:`malsori.errors`
classes by their code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from ..errors import InvalidOptionsError, MalsoriError, OverloadedError
from .errors import ConnectionFailedError, error_for_code

__all__ = ["Transcription", "TranscriptionSegment", "Job", "HttpClient", "FileInput"]

FileInput = str | os.PathLike | bytes | IO[bytes]

#: Job states after which a job never changes again (queued and running are the others).
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class TranscriptionSegment:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None = None
    duration: float | None = None
    segments: tuple[TranscriptionSegment, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Transcription:
        segments = tuple(
            TranscriptionSegment(float(s["start"]), float(s["end"]), str(s["text"])) for s in body.get("segments") or ()
        )
        duration = body.get("duration")
        return cls(
            str(body.get("text", body.get("transcript", ""))),
            body.get("language"),
            None if duration is None else float(duration),
            segments,
            dict(body),
        )


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    progress: float | None = None
    result: Transcription | None = None
    error: str | None = None
    error_code: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Job:
        result = body.get("result")
        error = body.get("error") or {}
        progress = body.get("progress")
        return cls(
            str(body["id"]),
            str(body["state"]),
            None if progress is None else float(progress),
            Transcription.from_json(result) if isinstance(result, Mapping) else None,
            error.get("message"),
            error.get("code"),
            dict(body),
        )


class HttpClient:
    """``HttpClient("http://127.0.0.1:8000")``; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 600.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=dict(headers or {}), transport=transport)

    def transcribe(
        self,
        file: FileInput,
        *,
        language: str | None = None,
        task: str = "transcribe",
        prompt: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
    ) -> Transcription:
        """Transcribe (or, with ``task="translate"``, translate to English) one audio file.

        ``model``: leave it out for the model the server serves (whatever its name); a name the
        server does not serve is refused (``model_not_found``)."""
        if task not in ("transcribe", "translate"):
            raise InvalidOptionsError(f"task must be transcribe or translate, not {task!r}")
        data: dict[str, Any] = {"response_format": "verbose_json"}
        if model:
            data["model"] = model
        if language and task == "transcribe":
            data["language"] = language
        if prompt:
            data["prompt"] = prompt
        if temperature is not None:
            data["temperature"] = str(temperature)
        path = "/v1/audio/transcriptions" if task == "transcribe" else "/v1/audio/translations"
        with _opened(file) as (name, handle):
            body = self._request("POST", path, data=data, files={"file": (name, handle)})
        return Transcription.from_json(body)

    def submit_job(
        self,
        file: FileInput | None = None,
        *,
        audio_url: str | None = None,
        language: str | None = None,
        task: str = "transcribe",
        **fields: str,
    ) -> Job:
        """Queue a long file (or an ``audio_url`` the server may fetch) as a job; returns at once.

        ``fields``: tenant_id, meeting_id, user_id, model, prompt, response_format, word_timestamps.
        """
        if (file is None) == (audio_url is None):
            raise InvalidOptionsError("give either a file or an audio_url")
        data = {k: v for k, v in {"language": language, "task": task, **fields}.items() if v is not None}
        if file is None:
            return Job.from_json(self._request("POST", "/v1/jobs", json={"audio_url": audio_url, **data}))
        with _opened(file) as (name, handle):
            body = self._request("POST", "/v1/jobs", data=data, files={"file": (name, handle)})
        return Job.from_json(body)

    def get_job(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        return Job.from_json(self._request("DELETE", f"/v1/jobs/{job_id}"))

    def wait_job(self, job_id: str, *, timeout: float = 3600.0, poll_interval: float = 0.5) -> Job:
        """Poll until the job finishes; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.finished:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"cannot reach {self._http.base_url}: {exc}") from exc
        if response.is_success:
            return response.json()
        raise _error_from(response)


def _error_from(response: httpx.Response) -> MalsoriError:
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}: {response.text[:200]}"
    if response.status_code == 429:
        retry_after = float(response.headers.get("retry-after", "1") or 1)
        return OverloadedError(message, retry_after=retry_after)
    return error_for_code(code, message)


class _opened:
    """(name, binary handle) for a path, bytes or an open file; closes only what it opened."""

    def __init__(self, file: FileInput) -> None:
        self._file = file
        self._own: IO[bytes] | None = None

    def __enter__(self) -> tuple[str, Any]:
        if isinstance(self._file, (bytes, bytearray)):
            return "audio", bytes(self._file)
        if isinstance(self._file, (str, os.PathLike)):
            path = Path(self._file)
            self._own = open(path, "rb")
            return path.name, self._own
        return Path(getattr(self._file, "name", "audio")).name, self._file

    def __exit__(self, *exc_info: object) -> None:
        if self._own is not None:
            self._own.close()
