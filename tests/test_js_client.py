"""The JavaScript client (``malsori/web/static/malsori-client.js``) under node's own test runner,
against a real server: the app under uvicorn on a free port with the fake decoder and the energy VAD
(as in tests/test_protocol_fast.py), so its "speech" is tone bursts whose finals are known exactly.

This test writes the speech and the close-code table of :mod:`malsori.protocol` to files and
environment variables, runs ``node --test clients/js/test/*.test.mjs`` and asserts it passed. Node
20 has its WebSocket behind ``--experimental-websocket`` (Node 22+ has it by default); the client
itself needs no package. A missing Node is installed with apt-get, as test_browser.py does Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_protocol_fast import s16, serve

from malsori.engine.fake import tone_speech
from malsori.protocol import RESUMABLE_CLOSE_CODES, error_for_close_code

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
JS_TESTS = REPO / "clients" / "js" / "test"
MAX_SESSIONS = 3
PHRASES = [["alpha", "bravo"], ["charlie", "delta", "echo"], ["foxtrot", "golf"], ["hotel", "india"], ["juliett", "kilo", "lima"]]


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def node() -> list[str]:
    """The node command, with the flag that gives Node 20 its WebSocket where needed."""
    if shutil.which("node") is None:
        if shutil.which("apt-get") is None:
            pytest.fail("Node.js is missing and there is no apt-get to install it (Debian package 'nodejs', Node >= 20)")
        result = _apt_get("install", "-y", "-q", "nodejs")
        if result.returncode != 0:  # a fresh machine has no package lists yet
            _apt_get("update", "-q")
            result = _apt_get("install", "-y", "-q", "nodejs")
        if result.returncode != 0 or shutil.which("node") is None:
            pytest.fail(f"apt-get install nodejs failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    node = shutil.which("node")
    assert node is not None
    for command in ([node], [node, "--experimental-websocket"]):
        probe = subprocess.run([*command, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], capture_output=True)
        if probe.returncode == 0:
            return command
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    pytest.fail(f"node {version} has no WebSocket: the client's tests need Node 20.10 or newer")


def _close_table() -> dict[int, dict]:
    """What each close code means to the server and the Python client: the JS client must agree."""
    codes = [*range(1000, 1016), 4000]
    return {code: {"error": error_for_close_code(code, "").code, "resumable": code in RESUMABLE_CLOSE_CODES} for code in codes}


def test_the_js_client_passes_its_node_tests_against_a_real_server(node, tmp_path):
    lead, pause = 0.3, 0.8
    script: list[str | float] = [lead]
    spans, at = [], lead  # where each phrase is in the audio, so a test can lose one whole
    for phrase in PHRASES:
        script += [*phrase, pause]
        length = len(tone_speech(phrase)) / 16000
        spans.append({"text": " ".join(phrase), "start": round(at, 3), "end": round(at + length, 3)})
        at += length + pause
    speech = tone_speech(script)
    assert abs(len(speech) / 16000 - at) < 0.01  # the spans are where the words are
    audio = tmp_path / "speech.s16"
    audio.write_bytes(s16(speech))
    tests = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert len(tests) >= 2, tests

    with serve(tmp_path / "data", max_sessions=MAX_SESSIONS) as server:
        env = {
            **os.environ,
            "MALSORI_WS_URL": server.url,
            "MALSORI_TEST_AUDIO": str(audio),
            "MALSORI_TEST_PHRASES": json.dumps(spans),
            "MALSORI_CLOSE_TABLE": json.dumps(_close_table()),
            "MALSORI_MAX_SESSIONS": str(MAX_SESSIONS),
            "NO_COLOR": "1",
        }
        # One file at a time: the session-limit test needs the server's slots to itself.
        command = [*node, "--test", "--test-concurrency=1", "--test-reporter=spec", "--test-timeout=60000", *tests]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output[-8000:]}"
    # node's summary: every test ran and passed (a file that fails to load counts as a failure too)
    summary = dict(re.findall(r"^\u2139 (tests|pass|fail|skipped|todo|cancelled) (\d+)$", output, re.MULTILINE))
    assert int(summary["tests"]) >= 11 and summary["pass"] == summary["tests"], output[-3000:]
