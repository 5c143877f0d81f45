"""The shipped Prometheus config, alert rules and Grafana dashboard against running servers.

Debian's real ``prometheus`` runs the shipped deploy/prometheus/prometheus.yml with its targets
rewritten to this test's ports (and a 1 s scrape interval). It scrapes a real server (the app with the
real model, in this process) while real traffic flows (live streams, transcriptions, a job, bad
requests), and the scaled profile in small (a gateway and a real ``malsori worker`` process over real
Redis and PostgreSQL); then every PromQL expression of the dashboard and of the alert rules is
evaluated through Prometheus's HTTP API: each must return data, from metrics that exist.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
import yaml
from debian import ensure_program
from inprocess import running_app

# The module's traffic runs through the real model in this (nice 19) process: on a loaded 2-core
# machine its setup alone has taken minutes, so the limit is above the suite's default 600 s.
pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alert-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "malsori.json"
SR = 16000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    """Poll ``predicate`` (a query of Prometheus's state) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# -- what the shipped files hold ------------------------------------------------------------------
def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, Grafana's $__rate_interval made 1m."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"].replace("$__rate_interval", "1m")))
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def with_bool(expr: str) -> str:
    """``expr`` with every comparison made a ``bool`` one: ``a > 5`` filters (empty while the alert
    does not fire), ``a > bool 5`` gives 0 or 1 for every series, so "returns data" proves the
    expression's metrics and labels are there whether or not it fires."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c in "{[(":
            depth += c == "{"
        elif c == "}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(==|!=|>=|<=|>|<)(\s*bool\b)?", expr[i:])
            if m:
                out.append(m.group(1) + (m.group(2) or " bool"))
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def test_with_bool_rewrites_comparisons_outside_label_matchers():
    assert with_bool('up{job!="x"} == 0') == 'up{job!="x"} == bool 0'
    assert with_bool("a > 1 and b <= bool 2") == "a > bool 1 and b <= bool 2"
    assert with_bool('x{a=~"4..|5.."} > 0.5') == 'x{a=~"4..|5.."} > bool 0.5'


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    ensure_program("/usr/bin/promtool", "prometheus")
    return ensure_program("/usr/bin/prometheus", "prometheus")


@pytest.fixture(scope="module")
def server(transcriber, tmp_path_factory):
    """The real app with the session's real model, served in this process."""
    from malsori.config import ServerSettings, Settings
    from malsori.server.app import create_app

    data = tmp_path_factory.mktemp("prometheus-server-data")
    app = create_app(Settings(server=ServerSettings(data_dir=data)), transcriber=transcriber)
    with running_app(app) as port:
        yield port


class Prometheus:
    def __init__(self, binary: Path, root: Path, targets: dict[str, list[str]]) -> None:
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == set(targets), f"the shipped config scrapes {sorted(jobs)}"
        for name, job in jobs.items():
            # Service discovery by DNS (compose) replaced by this test's addresses; nothing else changes.
            for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
                del job[key]
            job["static_configs"] = [{"targets": targets[name]}]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        (root / "alert-rules.yml").write_text(ALERT_RULES.read_text())
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        command = [
            str(binary),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process = subprocess.Popen(command, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        _wait(self._ready, 120, f"prometheus to start:\n{self.log()}")

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log()
        try:
            return self.http.get("/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict]:
        answer = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return sum(float(r["value"][1]) for r in result)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(15)


@pytest.fixture(scope="module")
def scaled(redis_server, tmp_path_factory):
    """The scaled profile in small: a gateway (in this process) and one real ``malsori worker``
    process serving its metrics, over real Redis and PostgreSQL; both decode with the fake decoder
    (what is checked here is the metrics, not recognition). Yields (gateway port, worker metrics port)."""
    from scaled import WorkerProcess, pg_database, scaled_env

    from malsori.config import QueueSettings, ServerSettings, Settings, StorageSettings
    from malsori.engine.fake import FakeDecoder
    from malsori.server.app import create_app

    root = tmp_path_factory.mktemp("prometheus-scaled")
    with pg_database() as db:
        env = scaled_env(
            redis_server.url, db, root / "data", MALSORI__QUEUE__KEY_PREFIX="prom", MALSORI__QUEUE__WORKER_DECODER="fake"
        )
        metrics_port = _free_port()
        worker = WorkerProcess("prom1", "stt.cpu", {**env, "MALSORI__QUEUE__METRICS_PORT": str(metrics_port)}, root).start()
        settings = Settings(
            queue=QueueSettings(broker_url=redis_server.url, key_prefix="prom", heartbeat_s=0.5, worker_ttl_s=3),
            storage=StorageSettings(url=db),
            server=ServerSettings(data_dir=root / "data"),
        )
        try:
            with running_app(create_app(settings, transcriber=FakeDecoder())) as port:
                yield port, metrics_port
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def prometheus(prometheus_binary, server, scaled, tmp_path_factory):
    gateway, worker = scaled
    gone = _free_port()  # a worker target nobody answers on: a worker that went away (up == 0)
    prom = Prometheus(
        prometheus_binary,
        tmp_path_factory.mktemp("prometheus"),
        {
            "malsori": [f"127.0.0.1:{server}", f"127.0.0.1:{gateway}"],
            "malsori-worker": [f"127.0.0.1:{worker}", f"127.0.0.1:{gone}"],
        },
    )
    yield prom
    prom.stop()


# -- traffic --------------------------------------------------------------------------------------
async def _live_stream(port: int, audio: np.ndarray) -> int | None:
    from malsori.engine import float32_to_pcm16

    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        n = SR // 10
        for i in range(0, len(audio), n):
            await ws.send(float32_to_pcm16(audio[i : i + n]))
            await asyncio.sleep(0.025)  # 4x real time
        await ws.send(json.dumps({"type": "stop"}))
        finals = [event async for event in _events(ws) if event["type"] == "final"]
    assert finals
    return ws.close_code


async def _events(ws):
    async for raw in ws:
        yield json.loads(raw)


def _round(port: int, testdata: Path, audio: np.ndarray) -> None:
    """One round of every kind of work the dashboard shows: a live stream, a transcription, a job,
    and requests that fail (4xx)."""
    assert asyncio.run(_live_stream(port, audio)) == 1000
    jfk = (testdata / "en" / "jfk.flac").read_bytes()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        answer = client.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)}, data={"language": "en"})
        assert answer.status_code == 200 and "country" in answer.json()["text"], answer.text
        job = client.post("/v1/jobs", files={"file": ("jfk.flac", jfk)}, data={"language": "en"})
        assert job.status_code == 202, job.text
        assert client.delete(job.headers["location"]).status_code in (200, 202)  # its decode is not needed here
        assert client.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"not audio")}).status_code == 415
        assert client.get("/v1/jobs/no-such-job").status_code == 404


def _scaled_round(port: int, testdata: Path) -> None:
    """Work for the worker: a job and a synchronous request through the scaled gateway."""
    jfk = (testdata / "en" / "jfk.flac").read_bytes()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        job = client.post("/v1/jobs", files={"file": ("jfk.flac", jfk)})
        assert job.status_code == 202, job.text
        assert client.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)}).status_code == 200
        _wait(lambda: client.get(job.headers["location"]).json()["state"] == "succeeded", 180, "the scaled job")


@pytest.fixture(scope="module")
def scraped(prometheus, server, scaled, testdata):
    """Two rounds of traffic, each seen by Prometheus before the next, so every rate has two samples."""
    from malsori.engine import decode_audio

    _wait(lambda: prometheus.value('up{job="malsori"}') == 2, 120, "the first scrape of the gateways")
    audio = np.concatenate([decode_audio(testdata / "en" / "jfk.flac"), np.zeros(SR, dtype=np.float32)])
    for round_no in (1, 2):
        _round(server, testdata, audio)
        _scaled_round(scaled[0], testdata)
        _wait(
            lambda round_no=round_no: (
                prometheus.value('sum(malsori_http_requests_total{route="/v1/jobs"})') >= 2 * round_no
                and prometheus.value("sum(malsori_live_final_latency_seconds_count)") >= round_no
                and prometheus.value('sum(malsori_worker_tasks_total{task="job"})') >= round_no
            ),
            120,
            f"Prometheus to scrape round {round_no}",
        )
    return prometheus


# -- tests ----------------------------------------------------------------------------------------
def test_promtool_checks_the_shipped_config_and_rules(prometheus_binary):
    for args in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(ALERT_RULES)]):
        result = subprocess.run(["/usr/bin/promtool", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def test_every_metric_the_dashboard_and_the_alerts_name_exists(scraped):
    names = set(scraped.http.get("/api/v1/label/__name__/values").json()["data"])
    expressions = [expr for _, expr in dashboard_expressions()] + [rule["expr"] for rule in alert_rules()]
    wanted = {name for expr in expressions for name in re.findall(r"\b(malsori_[a-z0-9_]+)", expr)}
    assert wanted and not wanted - names, sorted(wanted - names)


def test_every_dashboard_expression_returns_data(scraped):
    empty, not_a_number = [], []
    for title, expr in dashboard_expressions():
        result = scraped.query(expr)
        if not result:
            empty.append((title, expr))
        elif not any(math.isfinite(float(r["value"][1])) for r in result):
            not_a_number.append((title, expr))
    assert not empty, empty
    assert not not_a_number, not_a_number


def test_every_alert_expression_returns_data_and_every_rule_evaluates(scraped):
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "MalsoriWorkerDown",
        "MalsoriNoWorker",
        "MalsoriWorkerGone",
        "MalsoriQueueGrowing",
        "MalsoriFinalLatencyHigh",
        "MalsoriErrorRate",
    }
    empty = [(rule["alert"], with_bool(rule["expr"])) for rule in rules if not scraped.query(with_bool(rule["expr"]))]
    assert not empty, empty

    def evaluated() -> list[dict] | None:
        groups = scraped.http.get("/api/v1/rules").json()["data"]["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        done = all(not rule["lastEvaluation"].startswith("0001") for rule in loaded)
        return loaded if done and loaded else None

    loaded = _wait(evaluated, 120, "every rule to be evaluated once")
    assert len(loaded) == len(rules)
    assert all(rule["health"] == "ok" for rule in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    # The one alert that must be firing here: one worker target of this test is a closed port.
    firing = {rule["name"]: rule["state"] for rule in loaded}
    assert firing["MalsoriWorkerDown"] in ("pending", "firing")
    assert firing["MalsoriDown"] == firing["MalsoriErrorRate"] == firing["MalsoriNoWorker"] == "inactive"
