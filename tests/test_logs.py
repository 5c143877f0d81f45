"""Logs never show keys, tokens or transcript text, and every request line carries its request id.

A keyed server (fake decoder, real sockets under uvicorn) logs at DEBUG through ``malsori.logs``, as
``malsori serve`` does, uvicorn's access and WebSocket lines included; the test uses keys (header and
query string), a socket token, a wrong key and a live session with known text, then greps the log.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
from inprocess import running_app
from websockets.sync.client import connect

from malsori import logs
from malsori.config import Settings
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.server.app import create_app
from malsori.storage import open_engine
from malsori.streaming.vad import EnergyVad
from malsori.tenants import KeyStore, Scope

SPEECH = tone_speech([0.3, "alpha", "bravo", "charlie", 0.8])


def _settings(tmp_path) -> Settings:
    base = Settings()
    return base.model_copy(update={"server": base.server.model_copy(update={"data_dir": tmp_path})})


def test_mask_replaces_keys_tokens_and_bearer_values():
    key = "msk_0123456789ab_" + "S" * 43
    line = logs.mask(
        f'GET /v1/jobs?api_key={key}&x=1 "Authorization: Bearer {key}" {{"token": "mst_abc.def"}} ?token=mst_q.r and {key}'
    )
    assert "S" * 10 not in line and "mst_abc" not in line and "mst_q" not in line
    assert "msk_0123456789ab_***" in line  # the key's id stays: keys can be told apart


def test_json_lines_carry_the_request_id_and_mask():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure("INFO", "json", stream)
    token = logs.request_id.set("req-42")
    try:
        logging.getLogger("malsori.test").info("saw %s", "Bearer msk_0123456789ab_" + "S" * 43)
    finally:
        logs.request_id.reset(token)
        root.handlers[:], root.level = saved
    line = json.loads(stream.getvalue())
    assert line["request_id"] == "req-42" and line["level"] == "INFO" and line["message"] == "saw Bearer ***"


def test_logs_of_a_keyed_session_hold_no_key_token_or_text(tmp_path):
    import httpx

    settings = _settings(tmp_path)
    engine = open_engine(settings.database_url())
    key = KeyStore(engine).create("acme").secret
    admin = KeyStore(engine).create("ops", scopes=[Scope.ADMIN]).secret
    engine.dispose()
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure("DEBUG", "text", stream)
    try:
        app = create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)
        with running_app(app, log_config=None) as port:
            for name in ("uvicorn.error", "uvicorn.access"):
                logging.getLogger(name).setLevel(logging.DEBUG)
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            made = httpx.post(f"{base}/v1/admin/keys", headers={"X-API-Key": admin}, json={"tenant_id": "newco"}).json()
            listed = httpx.get(f"{base}/v1/jobs?api_key={key}", headers=auth)
            assert listed.status_code == 200
            request_id = listed.headers["x-request-id"]
            wrong = "msk_000000000000_" + "W" * 43
            assert httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
            token = httpx.post(f"{base}/v1/tokens", headers=auth).json()["token"]
            finals = []
            with connect(f"ws://127.0.0.1:{port}/v1/stream?token={token}") as ws:
                ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}))
                pcm = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()
                for i in range(0, len(pcm), 3200):
                    ws.send(pcm[i : i + 3200])
                ws.send(json.dumps({"type": "stop"}))
                for message in ws:
                    event = json.loads(message)
                    if event["type"] == "final":
                        finals.append(event["text"])
                    if event["type"] == "end":
                        break
        text = " ".join(finals).strip()
        assert "alpha" in text and "charlie" in text, text  # the session really spoke: its text must not leak
    finally:
        root.handlers[:], root.level = saved
    output = stream.getvalue()
    for secret in (key, key.split("_", 2)[2], admin.split("_", 2)[2], made["secret"].split("_", 2)[2], wrong.split("_", 2)[2]):
        assert secret not in output
    assert token[4:20] not in output
    assert "alpha bravo" not in output and "charlie" not in output
    # The lines are there, masked: the access line of the query-string key, the socket's token, request ids.
    assert "api_key=***" in output and "token=***" in output
    assert f"[{request_id}]" in output


def test_the_run_wide_scan_finds_keys_tokens_and_recorded_secrets(tmp_path):
    """tests/logscan.py greps every server log of the run at its end (conftest): it must see a leak."""
    import logscan

    key = KeyStore(open_engine(_settings(tmp_path).database_url())).create("acme").secret
    assert key in logscan.SECRETS and key.split("_", 2)[2] in logscan.SECRETS  # recorded by conftest
    clean, raw, bare, token = (tmp_path / f"{n}.log" for n in ("clean", "raw", "bare", "token"))
    clean.write_text(logs.mask(f"GET /v1/jobs?api_key={key} Bearer {key} {key}\n"))
    raw.write_text(f"GET /v1/jobs with {key}\n")
    bare.write_text(f"secret part {key.split('_', 2)[2]}\n")
    token.write_text("GET /v1/stream?t=mst_eyJ0ZW5hbnQ.c2lnbmF0dXJl\n")
    assert logscan.leaks([clean], logscan.SECRETS) == []
    assert len(logscan.leaks([raw], {key})) == 2  # the pattern and the recorded key
    assert logscan.leaks([bare], logscan.SECRETS) and logscan.leaks([token], set())
    assert any(p.name == "inprocess-servers.log" for p in logscan.LOGS)


def test_the_run_wide_scan_finds_transcript_text_of_the_test_data(tmp_path, manifest):
    """The same scan looks for the words the tests' speech says (every reference, in runs of five)."""
    import logscan

    said = next(c.reference for c in manifest if c.path.name == "LJ001-0001.flac")
    assert tuple(logscan._words(said)[:5]) in logscan.RUNS  # recorded by conftest
    leak, other = tmp_path / "leak.log", tmp_path / "other.log"
    # As a model would write it: other case and punctuation, one word misheard further on.
    leak.write_text("INFO malsori.live [r1]: final 'printing in the only sense with witch we are'\n")
    other.write_text("INFO malsori.live [r2]: final text of 12 words, 3.1 s (masked)\n")
    assert logscan.leaks([leak], set(), logscan.RUNS) and logscan.leaks([other], set(), logscan.RUNS) == []
