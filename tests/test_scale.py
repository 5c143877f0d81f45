"""Scaled out for real: redis-server, PostgreSQL, two gateway processes, two worker processes.

With the real model on real speech: jobs submitted to either gateway spread over both workers and
come back with the right text from the other gateway; a synchronous transcription through a gateway
is decoded by a worker; a worker killed with SIGKILL mid-job loses nothing (the job finishes on the
other, with the right text); a running job is cancelled through the other gateway; a gateway killed
right after accepting jobs loses none; Redis killed and restarted empty mid-run loses no job.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from conftest import LiveServer
from redisserver import RedisServer
from scaled import WorkerProcess, pg_database, scaled_env

from malsori.engine.audio import wav_bytes
from malsori.evaluation import wer

pytestmark = [pytest.mark.e2e, pytest.mark.model]

JFK = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


class Cluster:
    def __init__(self, redis: RedisServer, workers: list[WorkerProcess], gateways: list[LiveServer]) -> None:
        self.redis, self.workers, self.gateways = redis, workers, gateways

    def worker(self, name: str) -> WorkerProcess:
        return next(w for w in self.workers if w.name == name)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(2500)}" for w in self.workers) + "\n".join(
            f"--- gateway {g.port}\n{g.log_tail(2500)}" for g in self.gateways
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    # No persistence: a restart loses every queue, the registry and the results (the hard case).
    redis = RedisServer(root / "redis", appendonly=False).start()
    with pg_database() as db:
        # One thread per process: two workers decode side by side on the two cores. Batches of one
        # window, so a job's progress moves window by window (the SIGKILL test waits for it).
        env = scaled_env(redis.url, db, root / "data", MALSORI__ENGINE__CPU_THREADS="1", MALSORI__ENGINE__MAX_BATCH_SIZE="1")
        workers = [WorkerProcess(name, "stt.cpu", env, root) for name in ("w1", "w2")]
        gateways = [LiveServer(root / "data", env=env) for _ in range(2)]
        try:
            # Generous start limits: these tests run at nice 19, beside benchmarks, with four models to load.
            for worker in workers:
                worker.start()
            for gateway in gateways:
                gateway.start(timeout=600)
            yield Cluster(redis, workers, gateways)
        finally:
            for process in (*gateways, *workers):
                process.stop()
            redis.kill()


def _submit(gateway: LiveServer, name: str, data: bytes) -> str:
    response = httpx.post(f"{gateway.url}/v1/jobs", files={"file": (name, data)}, data={"language": "en"}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _poll(gateway: LiveServer, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{gateway.url}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.25)  # an HTTP client learns a job's state by asking


@pytest.fixture(scope="module")
def lj(manifest):
    return [c for c in manifest if "ljspeech" in str(c.path)]


def test_jobs_spread_over_both_workers_and_any_gateway_answers(cluster, lj):
    clips = lj[:8]
    ids = [_submit(cluster.gateways[n % 2], c.path.name, c.path.read_bytes()) for n, c in enumerate(clips)]
    # Read each job from the gateway that did not accept it.
    jobs = [_poll(cluster.gateways[(n + 1) % 2], job_id) for n, job_id in enumerate(ids)]
    assert [j["state"] for j in jobs] == ["succeeded"] * len(clips), cluster.logs()
    assert {j["worker"] for j in jobs} == {"w1", "w2"}, [j["worker"] for j in jobs]
    references = " ".join(c.reference.replace("(", " ").replace(")", " ") for c in clips)
    assert wer(references, " ".join(j["result"]["text"] for j in jobs)) < 0.08


def test_synchronous_transcription_is_decoded_by_a_worker(cluster, testdata):
    before = {w.name: w.log_path.read_text().count("malsori.windows[") for w in cluster.workers}
    for gateway in cluster.gateways:
        response = httpx.post(
            f"{gateway.url}/v1/audio/transcriptions",
            files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
            data={"model": "whisper-1"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert wer(JFK, response.json()["text"]) == 0.0
    after = {w.name: w.log_path.read_text().count("malsori.windows[") for w in cluster.workers}
    assert sum(after.values()) > sum(before.values())
    status = httpx.get(f"{cluster.gateways[0].url}/stt/status", timeout=10).json()
    assert sorted(w["name"] for w in status["scale"]["workers"]) == ["w1", "w2"]


def test_a_worker_killed_mid_job_loses_nothing(cluster, lj):
    clips = lj[:10]  # about 67 s: several windows, decoded one by one
    job_id = _submit(cluster.gateways[0], "talk.wav", _talk(clips))
    deadline = time.monotonic() + 120
    while True:  # progress is visible from either gateway while the job runs
        job = httpx.get(f"{cluster.gateways[1].url}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] == "running" and 0 < job["progress"] < 1:
            break
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, (job, cluster.logs())
        time.sleep(0.1)
    victim = cluster.worker(job["worker"])
    victim.kill()
    try:
        done = _poll(cluster.gateways[1], job_id)
        assert done["state"] == "succeeded", (done, cluster.logs())
        assert done["worker"] != victim.name
        assert done["attempts"] == 2
        counters = httpx.get(f"{cluster.gateways[0].url}/stt/status", timeout=10).json()["scale"]["counters"]
        assert counters.get("jobs_recovered", 0) >= 1  # the sweep saw the dead worker's heartbeat expire
        reference = " ".join(c.reference.replace("(", " ").replace(")", " ") for c in clips)
        assert wer(reference, done["result"]["text"]) < 0.08
    finally:
        victim.start()


def _talk(clips) -> bytes:
    from malsori.engine.audio import SAMPLE_RATE, decode_audio

    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    return wav_bytes(np.concatenate([part for c in clips for part in (decode_audio(c.path), pause)]))


def test_a_running_job_is_cancelled_through_the_other_gateway(cluster, lj):
    job_id = _submit(cluster.gateways[0], "talk.wav", _talk(lj[:6]))
    deadline = time.monotonic() + 120
    while httpx.get(f"{cluster.gateways[1].url}/v1/jobs/{job_id}", timeout=10).json()["state"] != "running":
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    response = httpx.delete(f"{cluster.gateways[1].url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    done = _poll(cluster.gateways[0], job_id, timeout=60)
    assert done["state"] == "cancelled" and done["progress"] < 1, done  # the worker saw it at a progress write


def test_a_gateway_killed_after_accepting_jobs_loses_none(cluster, lj):
    clips = lj[16:19]
    gone, other = cluster.gateways
    ids = [_submit(gone, c.path.name, c.path.read_bytes()) for c in clips]
    gone.process.kill()  # SIGKILL: the jobs are rows and uploads, their tasks are in Redis
    gone.process.wait()
    try:
        jobs = [_poll(other, job_id) for job_id in ids]
        assert [j["state"] for j in jobs] == ["succeeded"] * len(clips), cluster.logs()
        references = " ".join(c.reference for c in clips)
        assert wer(references, " ".join(j["result"]["text"] for j in jobs)) < 0.08
    finally:
        gone.start(timeout=600)


def test_redis_restarted_mid_run_loses_no_job(cluster, lj):
    clips = lj[10:16]
    ids = [_submit(cluster.gateways[n % 2], c.path.name, c.path.read_bytes()) for n, c in enumerate(clips)]
    deadline = time.monotonic() + 60
    while not any(httpx.get(f"{cluster.gateways[0].url}/v1/jobs/{i}", timeout=10).json()["state"] != "queued" for i in ids):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    cluster.redis.kill()  # a crash; it comes back empty: every queued task, the registry and the results are gone
    cluster.redis.start()
    jobs = [_poll(cluster.gateways[n % 2], job_id) for n, job_id in enumerate(ids)]
    assert [j["state"] for j in jobs] == ["succeeded"] * len(clips), cluster.logs()
    references = " ".join(c.reference.replace("(", " ").replace(")", " ") for c in clips)
    assert wer(references, " ".join(j["result"]["text"] for j in jobs)) < 0.08
    counters = httpx.get(f"{cluster.gateways[0].url}/stt/status", timeout=10).json()["scale"]["counters"]
    assert counters.get("redis_resyncs", 0) >= 1  # the sweep saw a new Redis and sent the queued jobs again
    # And the deployment works on after it: both gateways ready, a new job runs.
    for gateway in cluster.gateways:
        assert httpx.get(f"{gateway.url}/is_ready", timeout=10).status_code == 200
    job = _poll(cluster.gateways[1], _submit(cluster.gateways[0], lj[19].path.name, lj[19].path.read_bytes()))
    assert job["state"] == "succeeded", cluster.logs()
