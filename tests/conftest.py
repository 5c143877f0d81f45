"""Shared fixtures: the test data folder, one real model per test session, the scorer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from logscan import LOGS, RUNS, SECRETS, leaks, remember_log, remember_secret, remember_transcripts

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("MALSORI_TESTDATA", REPO.parent / "shared" / "testdata"))

FORM_ROUTES = [
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/jobs",
    "/transcribe",
    "/transcribe-chunk",
    "/detect",
    "/stt/upload",
]
"""The routes that take a form body (a file upload): each refuses a field it does not take."""


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path_factory, monkeypatch):
    """A test's ``Settings()`` keeps its database and uploads in a fresh folder, never the checkout's
    ``data/``: an API key one run created there turned the next run's open test apps into keyed ones
    (401 everywhere). Servers and workers started by tests are given their own folder anyway."""
    monkeypatch.setenv("MALSORI__SERVER__DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not (TESTDATA / "manifest.tsv").is_file():
        pytest.fail(f"test data not found at {TESTDATA}; set MALSORI_TESTDATA or put shared/ beside the repo")
    return TESTDATA


@pytest.fixture(scope="session")
def manifest(testdata):
    from malsori.evaluation import load_manifest

    return load_manifest(testdata)


@pytest.fixture(scope="session")
def transcriber():
    """The real bundled base model, loaded once for the whole test session."""
    from malsori.engine import EngineConfig, Transcriber

    return Transcriber(EngineConfig(model="base"))


# -- a real server process ---------------------------------------------------------------------------
class LiveServer:
    """``malsori serve`` in a subprocess on a free port, with its own data dir and log file.

    ``env`` adds MALSORI__... variables (small limits for error tests, a media dir, ...).
    ``restart()`` stops it and starts it again on the same port and data dir.
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.args = tuple(args)
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.process = None
        remember_log(self.log_path)

    def start(self, timeout: float = 180.0) -> LiveServer:
        import subprocess
        import sys
        import time

        import httpx

        env = {**os.environ, **self.env}
        command = [
            sys.executable,
            "-m",
            "malsori.cli.app",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "warning",
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it for its whole life
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/is_ready", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling a readiness probe, not waiting for an outcome
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def live_server(request, tmp_path_factory):
    """One real ``malsori serve`` process per test module, ready (model loaded) before the tests run.

    A module sets ``live_server_env = {"MALSORI__LIMITS__...": "..."}`` to configure it.
    """
    root = tmp_path_factory.mktemp("live-server")
    server = LiveServer(root / "data", env=getattr(request.module, "live_server_env", None))
    server.start()
    yield server
    server.stop()


# -- a real Redis ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One real ``redis-server`` per test module on a free port (installed with apt-get if missing):
    see ``tests/redisserver.py``. ``redis_server.url`` is what ``MALSORI__QUEUE__BROKER_URL`` takes."""
    from redisserver import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# -- no secrets in the run's logs (tests/logscan.py) --------------------------------------------------
@pytest.hookimpl(trylast=True)  # after the tmp_path plugin's own configure
def pytest_configure(config) -> None:
    import logging

    from malsori import logs
    from malsori.tenants import keys, tokens

    create, issue = keys.KeyStore.create, tokens.TokenIssuer.issue

    def recording_create(self, *args, **kwargs):
        made = create(self, *args, **kwargs)
        remember_secret(made.secret)
        return made

    def recording_issue(self, *args, **kwargs):
        token, expires = issue(self, *args, **kwargs)
        remember_secret(token)
        return token, expires

    keys.KeyStore.create = recording_create  # type: ignore[method-assign]
    tokens.TokenIssuer.issue = recording_issue  # type: ignore[method-assign]
    # In-process servers log through this process's logging: one file, formatted as `malsori serve` does.
    path = config._tmp_path_factory.getbasetemp() / "inprocess-servers.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.MaskingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    logging.getLogger().addHandler(handler)
    config._malsori_log_handler = handler
    remember_log(path)
    if (TESTDATA / "manifest.tsv").is_file():  # what the tests' speech says must not be logged either
        from malsori.evaluation import korean_clips, load_manifest

        korean = korean_clips(TESTDATA) if (TESTDATA / "ko" / "manifest.tsv").is_file() else []
        remember_transcripts(c.reference for c in [*load_manifest(TESTDATA), *korean])


def pytest_sessionfinish(session, exitstatus) -> None:
    import logging

    handler = getattr(session.config, "_malsori_log_handler", None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
    found = leaks(LOGS, SECRETS, RUNS)
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["secrets or transcript text in the logs of this run:", *found[:20]]
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
