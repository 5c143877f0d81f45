"""Routing when scaled out: the decision table, the wire codec, and routing over real processes.

The GPU tests run a real redis-server, a gateway app and worker processes with the fake decoder
(``MALSORI__QUEUE__WORKER_DECODER=fake``), one of which announces a GPU (``WORKER_DEVICE=cuda``), and
one that fails every decode as a GPU out of memory would (``FAKE_ERROR``): the panel's mode really
moves work, ``gpu`` is refused while no GPU worker is alive, and a failed GPU task is finished on the
CPU queue and counted.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from inprocess import running_app
from scaled import WorkerProcess, free_port, pg_database, scaled_env

from malsori.engine.options import TranscribeOptions
from malsori.engine.types import Segment, Word
from malsori.engine.windows import Window, WindowResult
from malsori.scale.codec import AudioStore, options_from_dict, options_to_dict, result_from_dict, result_to_dict
from malsori.scale.registry import Registry, WorkerInfo
from malsori.scale.routing import NoWorkerError, Queues, choose_queue

QUEUES = Queues("stt.cpu", "stt.gpu")
CPU = WorkerInfo(name="c", queues=("stt.cpu",), device="cpu", model="base")
GPU = WorkerInfo(name="g", queues=("stt.gpu",), device="cuda", model="base")
CPU_ON_GPU_QUEUE = WorkerInfo(name="x", queues=("stt.gpu",), device="cpu", model="base")


# -- the decision table (pure) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "workers", "queue"),
    [
        ("auto", [CPU, GPU], "stt.gpu"),
        ("auto", [GPU], "stt.gpu"),
        ("auto", [CPU], "stt.cpu"),
        ("auto", [CPU, CPU_ON_GPU_QUEUE], "stt.cpu"),  # a CPU device on the GPU queue is not a GPU worker
        ("gpu", [CPU, GPU], "stt.gpu"),
        ("cpu", [CPU, GPU], "stt.cpu"),
        ("auto", [], None),
        ("gpu", [CPU], None),
        ("cpu", [GPU], None),
    ],
)
def test_choose_queue(mode, workers, queue):
    if queue is None:
        with pytest.raises(NoWorkerError) as caught:
            choose_queue(mode, workers, QUEUES)
        assert ("GPU worker" in caught.value.message) == (mode == "gpu")
    else:
        assert choose_queue(mode, workers, QUEUES) == queue


def test_codec_round_trips_options_and_results():
    options = TranscribeOptions(language="en", beam_size=3, temperatures=(0.0, 0.4), word_timestamps=True)
    assert options_from_dict(options_to_dict(options)) == options
    result = WindowResult(
        segments=(Segment(0, 1.0, 2.5, " hello", -0.2, 0.01, 1.1, 0.0, (Word(1.0, 1.5, " hello", 0.9),), (50, 51)),),
        language="en",
        language_probability=0.98,
        no_speech_prob=0.01,
        avg_logprob=-0.2,
        compression_ratio=1.1,
        temperature=0.0,
        tokens=(50, 51),
    )
    import json

    assert result_from_dict(json.loads(json.dumps(result_to_dict(result)))) == result


def test_window_audio_travels_by_reference_and_comes_back_exactly(redis_server):
    registry = Registry(redis_server.url, prefix="codec")
    store = AudioStore(registry.redis, "codec", ttl_s=30)
    audio = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    refs = store.put(
        [
            Window(
                audio,
                offset=4.0,
                prompt="before",
                prompt_tokens=(50364, 440),
                language="de",
                words=True,
                fallback=False,
                prefix="Und so",
            )
        ]
    )
    fields = {"key", "offset", "prompt", "prompt_tokens", "language", "words", "fallback", "prefix"}
    assert set(refs[0]) == fields  # no samples in the task
    (back,) = store.get(refs)
    assert back.prompt_tokens == (50364, 440) and back.prefix == "Und so"
    assert np.array_equal(back.audio, audio) and (back.offset, back.prompt, back.language, back.words, back.fallback) == (
        4.0,
        "before",
        "de",
        True,
        False,
    )
    store.delete(refs)
    with pytest.raises(LookupError, match="gone from Redis"):
        store.get(refs)


def test_a_worker_is_alive_until_its_heartbeat_expires(redis_server):
    registry = Registry(redis_server.url, prefix="reg", ttl_s=0.3)
    registry.announce(WorkerInfo(name="a", queues=("stt.cpu",), device="cpu", model="base", capacity=2))
    (alive,) = registry.alive()
    assert (alive.name, alive.queues, alive.capacity) == ("a", ("stt.cpu",), 2)
    deadline = time.monotonic() + 5
    while registry.alive():  # Redis expires the key; nothing to await
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not registry.redis.sismember("reg:workers", "a")  # forgotten once seen dead


# -- routing over real processes (fake decoder) -------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    from malsori.config import QueueSettings, ServerSettings, Settings, StorageSettings
    from malsori.engine.fake import FakeDecoder
    from malsori.server.app import create_app

    root = tmp_path_factory.mktemp("gpu")
    with pg_database() as db:
        env = scaled_env(
            redis_server.url, db, root / "data", MALSORI__QUEUE__KEY_PREFIX="gpu", MALSORI__QUEUE__WORKER_DECODER="fake"
        )
        settings = Settings(
            queue=QueueSettings(broker_url=redis_server.url, key_prefix="gpu", heartbeat_s=0.5, worker_ttl_s=8),
            storage=StorageSettings(url=db),
            server=ServerSettings(data_dir=root / "data"),
        )
        metrics_port = free_port()
        cpu = WorkerProcess("cpu1", "stt.cpu", {**env, "MALSORI__QUEUE__METRICS_PORT": str(metrics_port)}, root).start()
        cpu.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        workers = {"cpu1": cpu}
        gpu_env = {**env, "MALSORI__QUEUE__WORKER_DEVICE": "cuda"}
        failing_env = {**gpu_env, "MALSORI__QUEUE__FAKE_ERROR": "CUDA failed with error out of memory"}
        workers["gpu1"] = WorkerProcess("gpu1", "stt.gpu", gpu_env, root)
        workers["gpubad"] = WorkerProcess("gpubad", "stt.gpu", failing_env, root)
        try:
            with running_app(create_app(settings, transcriber=FakeDecoder())) as port:
                yield f"http://127.0.0.1:{port}", workers, settings
        finally:
            for worker in workers.values():
                worker.stop()


def _jfk(testdata) -> bytes:
    return (testdata / "en" / "jfk.flac").read_bytes()


def _job(base: str, testdata) -> dict:
    data = _jfk(testdata)
    response = httpx.post(f"{base}/v1/jobs", files={"file": ("jfk.flac", data)}, timeout=30)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while True:
        job = httpx.get(f"{base}/v1/jobs/{response.json()['id']}", timeout=10).json()
        if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)  # an HTTP client learns a job's state by asking


def _mode(base: str, mode: str) -> httpx.Response:
    return httpx.put(f"{base}/v1/admin/routing", json={"mode": mode}, timeout=10)


def _counters(base: str) -> dict:
    return httpx.get(f"{base}/stt/status", timeout=10).json()["scale"]["counters"]


@pytest.mark.e2e
def test_gpu_mode_is_refused_while_no_gpu_worker_is_alive(deployment, testdata):
    base, _, _ = deployment
    refused = _mode(base, "gpu")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "gpu_unavailable" and "no GPU worker is alive" in refused.json()["error"]["message"]
    assert _mode(base, "auto").status_code == 200
    job = _job(base, testdata)
    assert (job["state"], job["worker"]) == ("succeeded", "cpu1")


@pytest.mark.e2e
def test_the_mode_really_routes_between_gpu_and_cpu_workers(deployment, testdata):
    base, workers, _ = deployment
    workers["gpu1"].start()
    try:
        deadline = time.monotonic() + 10
        while not (status := httpx.get(f"{base}/v1/admin/status", timeout=10).json())["gpu_available"]:
            assert time.monotonic() < deadline, status  # the panel's view is refreshed every heartbeat
            time.sleep(0.1)
        assert "stt.gpu" in status["routing"] and [e.get("name") for e in status["engines"]] == [None, "cpu1", "gpu1"]
        assert [(j["state"], j["worker"]) for j in (_job(base, testdata), _job(base, testdata))] == [("succeeded", "gpu1")] * 2
        assert _mode(base, "cpu").status_code == 200
        assert (_job(base, testdata)["worker"]) == "cpu1"
        assert _mode(base, "gpu").status_code == 200
        assert (_job(base, testdata)["worker"]) == "gpu1"
        synchronous = httpx.post(
            f"{base}/v1/audio/transcriptions",
            files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
            timeout=60,
        )
        assert synchronous.status_code == 200, synchronous.text
    finally:
        workers["gpu1"].stop()  # a clean stop withdraws it from the registry at once
        assert _mode(base, "auto").status_code == 200


@pytest.mark.e2e
def test_work_that_fails_on_the_gpu_finishes_on_the_cpu_and_is_counted(deployment, testdata):
    base, workers, _ = deployment
    workers["gpubad"].start()
    try:
        before = _counters(base).get("gpu_fallbacks", 0)
        job = _job(base, testdata)
        assert (job["state"], job["worker"], job["attempts"]) == ("succeeded", "cpu1", 1)
        assert _counters(base)["gpu_fallbacks"] == before + 1
        synchronous = httpx.post(
            f"{base}/v1/audio/transcriptions",
            files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
            timeout=60,
        )
        assert synchronous.status_code == 200, synchronous.text
        assert _counters(base)["gpu_fallbacks"] >= before + 2
        assert "out of memory" in workers["gpubad"].log_tail()
    finally:
        workers["gpubad"].stop()


@pytest.mark.e2e
def test_a_worker_serves_its_prometheus_metrics(deployment):
    from prometheus_client.parser import text_string_to_metric_families

    _, workers, _ = deployment
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(workers["cpu1"].metrics_url, timeout=10).text)
        for s in family.samples
    }
    assert samples[("malsori_worker_tasks_total", (("outcome", "succeeded"), ("task", "job")))] >= 1
    assert samples[("malsori_worker_capacity", ())] == 2
    assert samples[("malsori_worker_info", (("device", "cpu"), ("model", "fake"), ("name", "cpu1"), ("queues", "stt.cpu")))] == 1
    assert ("malsori_worker_windows_total", ()) in samples and ("process_resident_memory_bytes", ()) in samples


@pytest.mark.e2e
def test_a_job_its_live_worker_no_longer_runs_goes_back_to_the_queue(deployment, testdata):
    """A row left running by a worker that is alive but does not run it (its task died with the
    database, say) is not left to wait forever: the sweep sees the job missing from the worker's
    heartbeat and sends it again."""
    from malsori.jobs import JobService

    base, _, settings = deployment
    before = _counters(base).get("jobs_recovered", 0)
    service = JobService.from_settings(settings)  # no runner and no dispatch: the row is only written
    try:
        with (testdata / "en" / "jfk.flac").open("rb") as audio:
            job_id = service.submit(audio, filename="jfk.flac").id
        assert service.repository.claim(job_id, worker="cpu1") is not None  # "cpu1 runs it" (it does not)
    finally:
        service.close()
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)  # an HTTP client learns a job's state by asking
    assert (job["state"], job["worker"], job["attempts"]) == ("succeeded", "cpu1", 2)
    assert _counters(base)["jobs_recovered"] == before + 1


@pytest.mark.e2e
def test_is_ready_follows_the_workers(deployment, testdata):
    base, workers, _ = deployment
    assert httpx.get(f"{base}/is_ready", timeout=10).status_code == 200
    workers["cpu1"].stop()
    try:
        answer = httpx.get(f"{base}/is_ready", timeout=10)
        assert answer.status_code == 503 and "no worker is alive" in answer.json()["reason"]
        refused = httpx.post(
            f"{base}/v1/audio/transcriptions",
            files={"file": ("jfk.flac", (testdata / "en" / "jfk.flac").read_bytes())},
            timeout=30,
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_worker"
    finally:
        workers["cpu1"].start()
    assert httpx.get(f"{base}/is_ready", timeout=10).status_code == 200


def test_processes_starting_together_on_a_fresh_database_all_open_it():
    """Gateways and workers started at once race to create the jobs table (PostgreSQL refused the
    loser's CREATE with a duplicate pg_type, and a worker or gateway failed to start)."""
    import threading

    from malsori.storage import open_engine

    with pg_database() as db:
        barrier, errors = threading.Barrier(6), []

        def start() -> None:
            barrier.wait()
            try:
                open_engine(db).dispose()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
