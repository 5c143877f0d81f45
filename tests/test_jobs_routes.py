"""The /v1/jobs routes in-process (FastAPI TestClient) with a fake model: status codes, shapes,
result formats, cancel, listing, errors. The real server and model are in ``test_jobs_server.py``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from test_jobs import GatedDecoder, fake_text

from malsori.config import Settings
from malsori.server.app import create_app


class FakeModel(GatedDecoder):
    """What the app needs of a model: a decoder with the model's facts (jobs plan with the VAD, so jfk.flac
    is one window whose seconds read "second N")."""

    model_name = "fake-model"
    device = "cpu"
    compute_type = "int8"
    multilingual = True
    load_seconds = 0.01

    def __init__(self) -> None:
        GatedDecoder.__init__(self)


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def client(tmp_path, model):
    settings = Settings()
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"data_dir": tmp_path / "data", "media_dir": tmp_path / "media"}),
            "limits": settings.limits.model_copy(update={"max_pending_jobs": 3}),
        }
    )
    (tmp_path / "media").mkdir()
    with TestClient(create_app(settings, transcriber=model)) as client:
        yield client
        model.open()  # let a held job reach its next progress report, where shutdown stops it


def _wait(client, job_id: str, model: FakeModel) -> dict:
    """The job once finished: the in-process service signals it, then the API is asked."""
    client.app.state.services.jobs.wait(job_id, timeout=30)
    return client.get(f"/v1/jobs/{job_id}").json()


def test_submit_poll_and_fetch_every_format(client, model, testdata):
    audio = (testdata / "en" / "jfk.flac").read_bytes()
    response = client.post(
        "/v1/jobs",
        files={"file": ("jfk.flac", audio, "audio/flac")},
        data={"tenant_id": "acme", "meeting_id": "m-1", "user_id": "u-7", "language": "en", "response_format": "srt"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert response.headers["location"] == job["links"]["self"]
    assert (job["tenant_id"], job["meeting_id"], job["user_id"], job["filename"]) == ("acme", "m-1", "u-7", "jfk.flac")
    assert job["options"]["language"] == "en"

    done = _wait(client, job["id"], model)
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    assert done["result"]["text"] == fake_text()
    assert done["audio_seconds"] == pytest.approx(11.0, abs=0.05)

    default = client.get(f"/v1/jobs/{job['id']}/result")  # the job's response_format: srt
    assert default.status_code == 200 and default.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nsecond 0\n")
    assert client.get(f"/v1/jobs/{job['id']}/result", params={"format": "json"}).json() == {"text": fake_text()}
    assert client.get(f"/v1/jobs/{job['id']}/result", params={"format": "text"}).text == fake_text() + "\n"
    vtt = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "vtt"})
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nsecond 0") and vtt.headers["content-type"].startswith(
        "text/vtt"
    )
    verbose = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "verbose_json"}).json()
    assert len(verbose["segments"]) == 11 and verbose["duration"] == pytest.approx(11.0, abs=0.05)
    tsv = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "tsv"}).text.splitlines()
    assert tsv[0] == "start\tend\ttext" and tsv[1] == "0\t1000\tsecond 0"
    assert client.get(f"/v1/jobs/{job['id']}/result", params={"format": "docx"}).status_code == 422

    # Finished: nothing to cancel.
    conflict = client.delete(f"/v1/jobs/{job['id']}")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"


def test_cancel_running_then_listing(client, model, testdata):
    audio = (testdata / "en" / "jfk.flac").read_bytes()
    model.gated = True
    first = client.post("/v1/jobs", files={"file": ("a.flac", audio)}, data={"tenant_id": "t", "meeting_id": "m1"}).json()
    assert model.entered.get(timeout=10) == 0.0  # running, held at its first window
    second = client.post("/v1/jobs", files={"file": ("b.flac", audio)}, data={"tenant_id": "t", "meeting_id": "m2"}).json()

    queued = client.delete(f"/v1/jobs/{second['id']}")
    assert queued.status_code == 200 and queued.json()["state"] == "cancelled"
    running = client.delete(f"/v1/jobs/{first['id']}")
    assert running.status_code == 202 and running.json()["state"] == "running" and running.json()["cancel_requested"]
    model.open()
    assert _wait(client, first["id"], model)["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{first['id']}/result").status_code == 409

    listing = client.get("/v1/jobs", params={"tenant_id": "t"}).json()
    assert listing["total"] == 2 and [j["id"] for j in listing["data"]] == [second["id"], first["id"]]
    assert all("result" not in j or j["result"] is None for j in listing["data"])
    only_m2 = client.get("/v1/jobs", params={"meeting_id": "m2", "state": "cancelled"}).json()
    assert [j["id"] for j in only_m2["data"]] == [second["id"]]
    assert client.get("/v1/jobs", params={"state": "running"}).json()["total"] == 0
    assert client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()["data"][0]["id"] == first["id"]
    assert client.get("/v1/jobs", params={"state": "exploded"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_json_body_with_a_media_path(client, model, testdata, tmp_path):
    (tmp_path / "media" / "talk.flac").write_bytes((testdata / "en" / "jfk.flac").read_bytes())
    response = client.post("/v1/jobs", json={"audio_url": "talk.flac", "tenant_id": "x", "response_format": "text"})
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == "talk.flac"
    assert _wait(client, response.json()["id"], model)["result"]["text"] == fake_text()
    escape = client.post("/v1/jobs", json={"audio_url": "../../etc/passwd"})
    assert escape.status_code == 422 and escape.json()["error"]["code"] == "path_not_allowed"
    assert client.post("/v1/jobs", json={"audio_url": ""}).status_code == 422
    assert client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.parametrize(
    "files, data, status, code",
    [
        ({}, {}, 400, "empty_audio"),
        ({"file": ("x.wav", b"")}, {}, 400, "empty_audio"),
        ({"file": ("x.txt", b"hello, this is text, not sound" * 20)}, {}, 415, "unsupported_audio"),
        ({"file": ("x.flac", b"fLaC" + bytes(100))}, {}, 415, "unsupported_audio"),
        ({"file": ("x.flac", b"RIFF")}, {"language": "klingon"}, 422, "invalid_options"),
        ({"file": ("x.flac", b"RIFF")}, {"model": "gpt-9"}, 422, "model_not_found"),
        ({"file": ("x.flac", b"RIFF")}, {"task": "summarize"}, 422, "invalid_request"),
    ],
    ids=["no-file", "empty", "text", "corrupt", "language", "model", "task"],
)
def test_bad_submissions_are_4xx_with_an_error_body(client, files, data, status, code):
    response = client.post("/v1/jobs", files=files or None, data=data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert client.get("/v1/jobs").json()["total"] == 0


def test_unknown_job_is_404(client):
    for response in (
        client.get("/v1/jobs/" + "0" * 32),
        client.get("/v1/jobs/nope/result"),
        client.delete("/v1/jobs/..%2F..%2Fetc"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_full_queue_is_429_with_retry_after(client, model, testdata):
    audio = (testdata / "en" / "jfk.flac").read_bytes()
    model.gated = True
    statuses = [client.post("/v1/jobs", files={"file": ("a.flac", audio)}).status_code for _ in range(5)]
    # One running (held) and three queued fill the limit of 3 queued jobs.
    assert statuses == [202, 202, 202, 202, 429]
    refused = client.post("/v1/jobs", files={"file": ("a.flac", audio)})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert client.get("/stt/status").status_code == 200
