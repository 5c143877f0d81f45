"""Jobs end to end: a real ``malsori serve`` process, the real model, real speech, over HTTP.

A job survives the server being killed (SIGKILL, no chance to clean up) while it is queued or
running: a new server on the same data directory finishes it with the right text.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from malsori.evaluation import wer

pytestmark = [pytest.mark.e2e, pytest.mark.model]

LJ_CLIPS = 10  # LJ001-0001..0010, about 67 s of speech: long enough to still be running when killed


def _poll(base: str, job_id: str, timeout: float = 240.0) -> dict:
    """GET the job until it has finished (an HTTP client has no other way to learn it)."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.25)


@pytest.fixture(scope="module")
def lj_talk(manifest) -> tuple[bytes, str]:
    """The first LJ Speech sentences as one WAV with short pauses, and its reference text."""
    from malsori.engine.audio import SAMPLE_RATE, decode_audio, wav_bytes

    clips = [c for c in manifest if "ljspeech" in str(c.path)][:LJ_CLIPS]
    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([part for c in clips for part in (decode_audio(c.path), pause)])
    return wav_bytes(audio), " ".join(c.reference for c in clips)


def test_jfk_as_a_job(live_server, testdata, manifest):
    jfk = testdata / "en" / "jfk.flac"
    response = httpx.post(
        f"{live_server.url}/v1/jobs",
        files={"file": ("jfk.flac", jfk.read_bytes(), "audio/flac")},
        data={"tenant_id": "acme", "meeting_id": "weekly", "language": "en"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    done = _poll(live_server.url, job_id)
    assert done["state"] == "succeeded", done
    reference = next(c.reference for c in manifest if c.path.name == "jfk.flac")
    assert wer(reference, done["result"]["text"]) < 0.05, done["result"]["text"]
    assert done["progress"] == 1.0 and done["tenant_id"] == "acme"

    srt = httpx.get(f"{live_server.url}/v1/jobs/{job_id}/result", params={"format": "srt"}, timeout=10)
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:00")
    listed = httpx.get(f"{live_server.url}/v1/jobs", params={"tenant_id": "acme", "meeting_id": "weekly"}, timeout=10).json()
    assert [j["id"] for j in listed["data"]] == [job_id]


def test_a_job_survives_a_killed_server(live_server, lj_talk):
    audio, reference = lj_talk
    response = httpx.post(
        f"{live_server.url}/v1/jobs",
        files={"file": ("talk.wav", audio, "audio/wav")},
        data={"language": "en", "tenant_id": "restart"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    before = httpx.get(f"{live_server.url}/v1/jobs/{job_id}", timeout=10).json()
    live_server.process.kill()  # SIGKILL: no shutdown hook runs
    live_server.process.wait(30)
    assert before["state"] in ("queued", "running"), before

    live_server.start()  # same port and data directory
    done = _poll(live_server.url, job_id)
    assert done["state"] == "succeeded", done
    assert done["attempts"] in (1, 2)  # 2 when the kill interrupted a running attempt
    error = wer(reference, done["result"]["text"])
    assert error < 0.10, (error, done["result"]["text"])
    assert done["audio_seconds"] == pytest.approx(len(audio) / 2 / 16000, abs=0.1)
