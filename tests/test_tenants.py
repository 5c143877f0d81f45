"""Tenants and security (issue 14, docs/security.md), fast: the real app with a fake model.

The matrix: every HTTP route of the schema and every WebSocket endpoint, with no key (401 / close
4401), a key lacking the route's scope (403 / close 4403), another tenant's ids (404), one's own
(200); listings never show another tenant's jobs; the openai SDK works with a tenant key. Then
tokens for sockets, resume tokens that cannot cross tenants, the safe-default startup rule, rate
limits (in process and shared through a real Redis), usage, and the CLI.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FORM_ROUTES
from fastapi.testclient import TestClient
from inprocess import running_app

from malsori.config import Settings, TenantLimits
from malsori.engine.audio import SAMPLE_RATE, decode_audio, wav_bytes
from malsori.engine.decoder import DirectDecoder
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.engine.types import Segment
from malsori.engine.windows import WindowResult
from malsori.server.app import create_app
from malsori.storage import open_engine
from malsori.streaming.vad import EnergyVad
from malsori.tenants import KeyStore, Scope

PUBLIC = {("GET", "/health"), ("GET", "/is_ready"), ("GET", "/"), ("GET", "/panel"), ("GET", "/openapi.json"), ("GET", "/docs")}

# Every HTTP route and the scope it needs. A route missing here fails test_every_route_is_in_the_matrix.
ROUTES: dict[tuple[str, str], Scope] = {
    ("POST", "/v1/audio/transcriptions"): Scope.TRANSCRIBE,
    ("POST", "/v1/audio/translations"): Scope.TRANSCRIBE,
    ("GET", "/v1/models"): Scope.READ,
    ("GET", "/v1/models/{model_id}"): Scope.READ,
    ("POST", "/stt/upload"): Scope.TRANSCRIBE,
    ("POST", "/stt/process"): Scope.TRANSCRIBE,
    ("POST", "/detect"): Scope.TRANSCRIBE,
    ("POST", "/transcribe-chunk"): Scope.TRANSCRIBE,
    ("POST", "/transcribe"): Scope.TRANSCRIBE,
    ("GET", "/stt/status"): Scope.READ,
    ("GET", "/metrics"): Scope.READ,
    ("POST", "/v1/tokens"): Scope.TRANSCRIBE,
    ("GET", "/v1/usage"): Scope.READ,
    ("POST", "/v1/admin/keys"): Scope.ADMIN,
    ("GET", "/v1/admin/keys"): Scope.ADMIN,
    ("DELETE", "/v1/admin/keys/{key_id}"): Scope.ADMIN,
    ("POST", "/v1/jobs"): Scope.TRANSCRIBE,
    ("GET", "/v1/jobs"): Scope.READ,
    ("GET", "/v1/jobs/{job_id}"): Scope.READ,
    ("GET", "/v1/jobs/{job_id}/result"): Scope.READ,
    ("DELETE", "/v1/jobs/{job_id}"): Scope.TRANSCRIBE,
    ("GET", "/v1/admin/status"): Scope.READ,
    ("PUT", "/v1/admin/routing"): Scope.ADMIN,
    ("POST", "/v1/analysis/sentiment"): Scope.TRANSCRIBE,
    ("GET", "/v1/meetings"): Scope.READ,
    ("GET", "/v1/meetings/{meeting_id}"): Scope.READ,
}
SOCKETS = ("/v1/stream", "/stt/realtime", "/v1/stream/raw", "/v1/realtime?intent=transcription")
START = {"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "language": "en"}


SPEECH = tone_speech([0.3, "alpha", "bravo", 0.5])
WAV = wav_bytes(SPEECH)


@dataclass
class Keys:
    acme: str  # transcribe + read
    acme_read: str  # read only
    acme_transcribe: str  # transcribe only
    globex: str  # transcribe + read, another tenant
    admin: str  # admin only, tenant ops


def _settings(data_dir: Path, **auth: Any) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "server": base.server.model_copy(update={"data_dir": data_dir}),
            "streaming": base.streaming.model_copy(update={"max_sessions": 4}),
            "auth": base.auth.model_copy(update=auth),
        }
    )


def _make_keys(settings: Settings) -> Keys:
    engine = open_engine(settings.database_url())
    store = KeyStore(engine)
    t, r = Scope.TRANSCRIBE, Scope.READ
    keys = Keys(
        acme=store.create("acme", scopes=[t, r]).secret,
        acme_read=store.create("acme", scopes=[r]).secret,
        acme_transcribe=store.create("acme", scopes=[t]).secret,
        globex=store.create("globex", scopes=[t, r]).secret,
        admin=store.create("ops", scopes=[Scope.ADMIN]).secret,
    )
    engine.dispose()
    return keys


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[tuple[TestClient, Keys]]:
    settings = _settings(tmp_path_factory.mktemp("tenants"))
    keys = _make_keys(settings)
    app = create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)
    with TestClient(app) as client:
        yield client, keys


def _job(client: TestClient, key: str, **data: str) -> dict:
    r = client.post("/v1/jobs", headers=_auth(key), files={"file": ("a.wav", WAV, "audio/wav")}, data=data)
    assert r.status_code == 202, r.text
    job = r.json()
    final = client.app.state.services.jobs.wait(job["id"], timeout=30)
    assert final.state.value == "succeeded", final
    return job


def _call(client: TestClient, method: str, path: str, headers: dict[str, str], ids: dict[str, str]) -> Any:
    """One request to a route template, with a plausible body (the auth answer comes before the body's)."""
    url = path.format(
        model_id="whisper-1",
        job_id=ids.get("job", "0" * 32),
        key_id=ids.get("key", "0" * 12),
        meeting_id=ids.get("meeting", "m0"),
    )
    files = {"file": ("a.wav", WAV, "audio/wav")}
    if method == "POST" and path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/stt/upload", "/v1/jobs"):
        return client.post(url, headers=headers, files=files)
    if method == "POST" and path in ("/detect", "/transcribe-chunk", "/transcribe"):
        return client.post(url, headers=headers, files=files)
    if method == "POST" and path == "/stt/process":
        return client.post(url, headers=headers, json={"audio_url": "http://127.0.0.1:9/a.wav"})
    if method == "POST" and path == "/v1/analysis/sentiment":
        return client.post(url, headers=headers, json={"texts": ["a fine day"]})
    if method == "POST" and path == "/v1/admin/keys":
        return client.post(url, headers=headers, json={"tenant_id": "newco"})
    if method == "PUT":
        return client.put(url, headers=headers, json={"mode": "cpu"})
    return client.request(method, url, headers=headers)


# -- the matrix ------------------------------------------------------------------------------------
def test_every_route_is_in_the_matrix(keyed):
    client, _ = keyed
    schema = client.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    assert operations - set(ROUTES) - PUBLIC == set(), "a new route must say which scope it needs (and be added here)"


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_no_key_is_401_and_a_wrong_key_401(keyed, method, path):
    client, _ = keyed
    for headers in ({}, _auth("msk_000000000000_" + "x" * 43), {"X-API-Key": "not-a-key"}, _auth("sk-openai-style")):
        r = _call(client, method, path, headers, {})
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_a_key_without_the_scope_is_403(keyed, method, path):
    client, keys = keyed
    lacking = {Scope.TRANSCRIBE: keys.acme_read, Scope.READ: keys.acme_transcribe, Scope.ADMIN: keys.acme}[ROUTES[(method, path)]]
    r = _call(client, method, path, _auth(lacking), {})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("path", FORM_ROUTES)
def test_a_key_without_the_scope_is_403_before_an_unknown_form_field_is_422(keyed, path):
    client, keys = keyed
    lacking = {Scope.TRANSCRIBE: keys.acme_read, Scope.READ: keys.acme_transcribe}[ROUTES[("POST", path)]]
    files = {"file": ("a.wav", WAV, "audio/wav")}
    r = client.post(path, headers=_auth(lacking), files=files, data={"langauge": "en"})
    assert r.status_code == 403, r.text
    assert client.post(path, files=files, data={"langauge": "en"}).status_code == 401
    r = client.post(path, headers=_auth(keys.acme), files=files, data={"langauge": "en"})
    assert r.status_code == 422 and "langauge" in r.text, r.text


def test_public_paths_need_no_key(keyed):
    client, _ = keyed
    for _, path in PUBLIC:
        assert client.get(path).status_code == 200, path
    assert client.get("/static/app.js").status_code in (200, 404)  # served or absent, never 401


def test_own_is_200_and_another_tenants_is_404(keyed):
    client, keys = keyed
    job = _job(client, keys.acme, meeting_id="m-1")
    for key, status in ((keys.acme, 200), (keys.globex, 404)):
        for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result"):
            r = client.get(path, headers=_auth(key))
            assert r.status_code == status, (path, r.text)
        if status == 404:
            assert r.json()["error"]["code"] == "not_found"
            assert client.delete(f"/v1/jobs/{job['id']}", headers=_auth(key)).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=_auth(keys.acme)).json()["tenant_id"] == "acme"
    # Own: every other route answers (not 401/403/404) with its scope.
    ids = {"job": job["id"]}
    for (method, path), scope in ROUTES.items():
        if path in ("/stt/process", "/v1/admin/keys/{key_id}", "/v1/jobs/{job_id}", "/v1/meetings/{meeting_id}"):
            continue  # a URL it cannot fetch, a key to revoke, cancelling a finished job: below or elsewhere
        if path == "/v1/analysis/sentiment":
            continue  # its model is the analysis extra (tests/test_sentiment.py); 401 and 403 are checked above
        key = keys.admin if scope is Scope.ADMIN else keys.acme
        r = _call(client, method, path, _auth(key), ids)
        assert r.status_code in (200, 201, 202, 409), (method, path, r.status_code, r.text)
        if path != "/v1/admin/routing":  # no GPU here: a 409 with the reason is its 'own' answer
            assert r.status_code != 409, (method, path, r.text)


def test_listing_never_leaks(keyed):
    client, keys = keyed
    mine = _job(client, keys.acme, meeting_id="shared-name")
    theirs = _job(client, keys.globex, meeting_id="shared-name")
    for key, own, other in ((keys.acme, mine, theirs), (keys.globex, theirs, mine)):
        for query in ("", "?meeting_id=shared-name", "?tenant_id=acme", "?tenant_id=globex", "?limit=500"):
            listing = client.get(f"/v1/jobs{query}", headers=_auth(key)).json()
            ids = {j["id"] for j in listing["data"]}
            assert other["id"] not in ids, query
            assert all(j["tenant_id"] == own_tenant for j in listing["data"] for own_tenant in [_tenant(key, keys)])
            assert listing["total"] == len(ids) or listing["total"] >= len(ids)
        assert own["id"] in {j["id"] for j in client.get("/v1/jobs", headers=_auth(key)).json()["data"]}


def _tenant(key: str, keys: Keys) -> str:
    return "globex" if key == keys.globex else "acme"


def test_a_key_cannot_act_for_another_tenant(keyed):
    client, keys = keyed
    r = client.post("/v1/jobs", headers=_auth(keys.acme), files={"file": ("a.wav", WAV)}, data={"tenant_id": "globex"})
    assert r.status_code == 403
    r = client.post("/stt/upload", headers=_auth(keys.acme), files={"file": ("a.wav", WAV)}, data={"tenant_id": "acme"})
    assert r.status_code == 200 and r.json()["tenant_id"] == "acme"


def test_x_api_key_header_works(keyed):
    client, keys = keyed
    assert client.get("/v1/models", headers={"X-API-Key": keys.acme}).status_code == 200


class Namer(DirectDecoder):
    """Each window's text is "spoken words" (the request runs Silero first, which hears no speech in tones)."""

    model_name = "fake"
    device = "cpu"
    compute_type = "int8"
    multilingual = True
    load_seconds = 0.0

    def __init__(self) -> None:
        pass

    def decode_windows(self, windows, options):
        seg = Segment(0, 0.0, 1.0, "spoken words", -0.1, 0.01)
        return [WindowResult((seg,), "en", 1.0, 0.01, -0.1, 1.0, 0.0) for _ in windows]

    def check_options(self, options) -> None:
        pass


def test_openai_sdk_with_a_tenant_key(tmp_path, manifest):
    from openai import AuthenticationError, OpenAI

    settings = _settings(tmp_path)
    keys = _make_keys(settings)
    speech = wav_bytes(decode_audio(next(r.path for r in manifest if r.path.parent.name == "ljspeech")))
    app = create_app(settings, transcriber=Namer(), live_vad=EnergyVad)
    with running_app(app) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=keys.acme, max_retries=0)
        text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", speech), response_format="text")
        assert "spoken words" in text
        assert [m.id for m in client.models.list()][-1] == "whisper-1"
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0).models.list()


# -- sockets ---------------------------------------------------------------------------------------
def _close(ws) -> tuple[list[dict], int]:
    """Messages until the server closes, and its close code."""
    seen = []
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            return seen, message["code"]
        if message.get("text"):
            seen.append(json.loads(message["text"]))


@pytest.mark.parametrize("path", SOCKETS)
def test_socket_without_credentials_closes_4401(keyed, path):
    client, _ = keyed
    with client.websocket_connect(path) as ws:
        ws.send_text(json.dumps(START))
        events, code = _close(ws)
    assert code == 4401
    assert any("unauthenticated" in json.dumps(e) for e in events)


@pytest.mark.parametrize("path", SOCKETS)
def test_socket_with_a_read_only_token_closes_4403(keyed, path):
    client, keys = keyed
    sep = "&" if "?" in path else "?"
    with client.websocket_connect(f"{path}{sep}api_key={keys.acme_read}") as ws:
        _, code = _close(ws)
    assert code == 4403


def _token(client: TestClient, key: str) -> str:
    r = client.post("/v1/tokens", headers=_auth(key))
    assert r.status_code == 200, r.text
    return r.json()["token"]


def _ready(ws) -> dict:
    ws.send_text(json.dumps(START))
    event = ws.receive_json()
    assert event["type"] == "ready", event
    return event


def test_socket_token_in_query_or_first_message(keyed):
    client, keys = keyed
    token = _token(client, keys.acme)
    assert token.startswith("mst_") and keys.acme not in token
    with client.websocket_connect(f"/v1/stream?token={token}") as ws:
        ready = _ready(ws)
        ws.send_text(json.dumps({"type": "stop"}))
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": token}))
        assert _ready(ws)["session_id"] != ready["session_id"]
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": token[:-2] + "xx"}))
        assert _close(ws)[1] == 4401


def test_the_raw_socket_takes_its_credentials_in_the_query_beside_its_format(keyed):
    """``/v1/stream/raw`` reads its format from the query and refuses unknown parameters; ``token`` and
    ``api_key`` there are the credentials every socket takes, not unknown parameters."""
    client, keys = keyed
    for credential in (f"token={_token(client, keys.acme)}", f"api_key={keys.acme}"):
        with client.websocket_connect(f"/v1/stream/raw?sample_rate=16000&encoding=pcm_s16le&{credential}") as ws:
            ws.send_bytes(bytes(6400))  # 0.2 s of silence
            ws.send_text("stop")
            seen, code = _close(ws)
            assert code == 1000 and not [m for m in seen if "error" in m], (credential, seen)
    with client.websocket_connect(f"/v1/stream/raw?colour=red&api_key={keys.acme}") as ws:
        assert _close(ws)[1] == 1008


def test_resume_tokens_cannot_cross_tenants(keyed):
    client, keys = keyed
    with client.websocket_connect(f"/v1/stream?token={_token(client, keys.acme)}") as ws:
        ready = _ready(ws)
        resume = {**START, "session_id": ready["session_id"], "resume_token": ready["resume_token"], "last_seq": 0}
        with client.websocket_connect(f"/v1/stream?token={_token(client, keys.globex)}") as other:
            other.send_text(json.dumps(resume))
            events, code = _close(other)
        assert code == 1008 and events[-1]["code"] == "not_found", events
        ws.send_text(json.dumps({"type": "stop"}))
    # The admin panel's session list, for a tenant's key, shows only that tenant's sessions.
    status = client.get("/v1/admin/status", headers=_auth(keys.globex)).json()
    assert all(s.get("tenant_id") == "globex" for s in status["sessions"])


def test_revoked_key_stops_at_once(keyed):
    client, keys = keyed
    made = client.post("/v1/admin/keys", headers=_auth(keys.admin), json={"tenant_id": "temp", "name": "short"}).json()
    secret, key_id = made["secret"], made["key"]["id"]
    assert made["key"]["scopes"] == ["read", "transcribe"] and secret.startswith(f"msk_{key_id}_")
    token = _token(client, secret)
    listed = client.get("/v1/admin/keys?tenant_id=temp", headers=_auth(keys.admin)).json()["data"]
    assert [k["id"] for k in listed] == [key_id] and "secret" not in json.dumps(listed) and secret not in json.dumps(listed)
    assert client.get("/v1/usage", headers=_auth(secret)).status_code == 200
    assert client.delete(f"/v1/admin/keys/{key_id}", headers=_auth(keys.admin)).json()["active"] is False
    assert client.get("/v1/usage", headers=_auth(secret)).status_code == 401
    with client.websocket_connect(f"/v1/stream?token={token}") as ws:
        assert _close(ws)[1] == 4401  # the key's tokens die with it


# -- open service and the startup rule -------------------------------------------------------------
def test_open_on_loopback_without_keys(tmp_path):
    with TestClient(create_app(_settings(tmp_path), transcriber=FakeDecoder())) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/models", headers=_auth("sk-anything")).status_code == 200  # the SDK always sends one
        assert client.post("/v1/tokens").json() == {"token": None, "required": False, "expires_in": None}


def test_exposed_without_keys_refuses_to_start(tmp_path):
    settings = _settings(tmp_path)
    exposed = settings.model_copy(update={"server": settings.server.model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(RuntimeError, match="malsori keys create"), TestClient(create_app(exposed, transcriber=FakeDecoder())):
        pass
    allowed = exposed.model_copy(update={"auth": exposed.auth.model_copy(update={"allow_open": True})})
    with TestClient(create_app(allowed, transcriber=FakeDecoder())) as client:
        assert client.get("/v1/jobs").status_code == 200
    _make_keys(exposed)
    with TestClient(create_app(exposed, transcriber=FakeDecoder())) as client:
        assert client.get("/v1/jobs").status_code == 401


def test_cli_keys_create_list_revoke_and_serve_refusal(tmp_path):
    from typer.testing import CliRunner

    from malsori.cli.app import app

    runner = CliRunner()
    data = str(tmp_path / "data")
    refused = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", data])
    assert refused.exit_code == 2 and "malsori keys create" in refused.output
    made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--admin", "--data-dir", data])
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert secret.startswith("msk_") and "admin" in made.output
    key_id = secret.split("_")[1]
    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme", "--data-dir", data]).output
    assert key_id in listed and secret not in listed and "admin,read,transcribe" in listed
    assert runner.invoke(app, ["keys", "revoke", key_id, "--tenant", "other", "--data-dir", data]).exit_code == 1
    assert runner.invoke(app, ["keys", "revoke", key_id, "--data-dir", data]).exit_code == 0
    assert "no keys" in runner.invoke(app, ["keys", "list", "--data-dir", data]).output
    # The secret is not in the database in any form a reader could use.
    raw = (tmp_path / "data" / "malsori.db").read_bytes()
    assert secret.encode() not in raw and secret.split("_", 2)[2].encode() not in raw


# -- limits and usage ------------------------------------------------------------------------------
def test_rate_limit_per_key_is_429_with_retry_after_and_the_limit(tmp_path):
    settings = _settings(tmp_path, limits=TenantLimits(key_requests_per_minute=3))
    keys = _make_keys(settings)
    with TestClient(create_app(settings, transcriber=FakeDecoder())) as client:
        # 3 a minute: one request every 20 s, a burst of 1. The clock is ours.
        now = [960_000.5]
        client.app.state.services.tenants.limiter.counter._clock = lambda: now[0]
        assert client.get("/v1/models", headers=_auth(keys.acme)).status_code == 200
        r = client.get("/v1/models", headers=_auth(keys.acme))
        assert r.status_code == 429
        assert r.json()["error"]["limit"] == "key_requests_per_minute" and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) == 20  # the next request is due 20 s after the first
        now[0] += 15.2
        r = client.get("/v1/models", headers=_auth(keys.acme))
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 5  # 4.8 s left: rounded up
        now[0] += 4.8
        assert client.get("/v1/models", headers=_auth(keys.acme)).status_code == 200  # due now
        assert client.get("/v1/models", headers=_auth(keys.acme)).status_code == 429  # and spaced again
        assert client.get("/v1/models", headers=_auth(keys.acme_read)).status_code == 200  # another key: its own count
        assert client.get("/health").status_code == 200


def test_rate_limit_spreads_a_tenant_over_the_minute():
    """A tenant sending at 150 % of its limit gets its limit, spaced evenly: never the whole minute's
    share in its first seconds (as fixed one-minute windows gave), and a burst of a tenth of it."""
    import asyncio

    from malsori.config import AuthSettings
    from malsori.tenants import MemoryCounter, RateLimiter
    from malsori.tenants.limits import burst_for

    limit = 30  # one every 2 s, a burst of 3
    assert burst_for(limit) == 3
    now = [1_800_000.0]
    limiter = RateLimiter(AuthSettings(limits=TenantLimits(requests_per_minute=limit)), MemoryCounter(clock=lambda: now[0]))

    async def run() -> list[float]:
        admitted = []
        for i in range(int(limit * 1.5 * 3)):  # three minutes, open loop at 45 a minute
            now[0] = 1_800_000.0 + i * 60 / (limit * 1.5)
            if (await _hits(limiter, 1)) == [200]:
                admitted.append(now[0] - 1_800_000.0)
        return admitted

    admitted = asyncio.run(run())
    assert limit * 3 <= len(admitted) <= limit * 3 + burst_for(limit)
    for start in range(0, 180, 5):  # in any 10 s: the burst plus one every 2 s, not 30
        assert sum(start <= t < start + 10 for t in admitted) <= 3 + 5, (start, admitted)
    assert sum(t < 20 for t in admitted) <= 3 + 10


def test_tenant_limits_audio_minutes_live_sessions_and_usage(tmp_path):
    limits = TenantLimits(requests_per_minute=1000, live_sessions=1, audio_minutes_per_day=0.01)
    settings = _settings(tmp_path, tenant_limits={"acme": limits})
    keys = _make_keys(settings)
    with TestClient(create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)) as client:
        token = _token(client, keys.acme)
        with client.websocket_connect(f"/v1/stream?token={token}") as first:
            _ready(first)
            with client.websocket_connect(f"/v1/stream?token={token}") as second:
                second.send_text(json.dumps(START))
                events, code = _close(second)
            assert code == 1013 and events[-1]["code"] == "rate_limited", events
            first.send_text(json.dumps({"type": "stop"}))
            assert _close(first)[1] == 1000
        with client.websocket_connect(f"/v1/stream?token={token}") as again:  # the slot came back with the end
            _ready(again)
            again.send_text(json.dumps({"type": "stop"}))
            _close(again)
        r = client.post("/v1/audio/transcriptions", headers=_auth(keys.acme), files={"file": ("a.wav", WAV)})
        assert r.status_code == 200
        r = client.post("/v1/audio/transcriptions", headers=_auth(keys.acme), files={"file": ("a.wav", WAV)})
        assert r.status_code == 429 and r.json()["error"]["limit"] == "audio_minutes_per_day"
        assert int(r.headers["retry-after"]) >= 1
        # Another tenant is not limited by acme's quota.
        assert (
            client.post("/v1/audio/transcriptions", headers=_auth(keys.globex), files={"file": ("a.wav", WAV)}).status_code == 200
        )
        usage = client.get("/v1/usage", headers=_auth(keys.acme)).json()
        day = usage["days"][0]
        assert usage["tenant_id"] == "acme" and usage["limits"]["audio_minutes_per_day"] == 0.01
        assert day["endpoints"]["/v1/audio/transcriptions"]["audio_seconds"] == pytest.approx(len(SPEECH) / SAMPLE_RATE, abs=0.01)
        assert usage["today"]["audio_seconds"] >= len(SPEECH) / SAMPLE_RATE
        assert client.get("/v1/usage?tenant_id=globex", headers=_auth(keys.acme)).status_code == 404
        operator = client.post(
            "/v1/admin/keys", headers=_auth(keys.admin), json={"tenant_id": "ops", "scopes": ["read", "admin"]}
        )
        theirs = client.get("/v1/usage?tenant_id=globex", headers=_auth(operator.json()["secret"])).json()
        assert theirs["tenant_id"] == "globex" and theirs["today"]["audio_seconds"] > 0


async def _hits(limiter, n: int) -> list[int]:
    from malsori.errors import RateLimitedError

    outcomes = []
    for _ in range(n):
        try:
            await limiter.check_request("acme", "k1", None)
            outcomes.append(200)
        except RateLimitedError:
            outcomes.append(429)
    return outcomes


def test_rate_limits_are_shared_through_redis(redis_server):
    import asyncio

    from malsori.config import AuthSettings
    from malsori.errors import RateLimitedError
    from malsori.tenants import RateLimiter
    from malsori.tenants.limits import RedisCounter

    settings = AuthSettings(limits=TenantLimits(requests_per_minute=50))  # one every 1.2 s, a burst of 5

    async def run() -> list[int | float]:
        # Two gateways, one Redis: the tenant's requests are counted once across both.
        now = [1_200_000.0]
        a = RateLimiter(settings, RedisCounter(redis_server.url, "malsori-test", clock=lambda: now[0]))
        b = RateLimiter(settings, RedisCounter(redis_server.url, "malsori-test", clock=lambda: now[0]))
        try:
            outcomes: list[int | float] = [*await _hits(a, 3), *await _hits(b, 3)]
            now[0] += 0.1
            try:
                await b.check_request("acme", "k1", None)
            except RateLimitedError as exc:  # the next is due 1.2 s after the burst: 1.1 s from now
                outcomes.append(round(exc.retry_after, 3))
            now[0] += 1.1
            return [*outcomes, *await _hits(a, 2)]
        finally:
            await a.counter.close()
            await b.counter.close()

    assert asyncio.run(run()) == [200, 200, 200, 200, 200, 429, 1.1, 200, 429]


def test_meetings_belong_to_their_tenant(keyed):
    client, keys = keyed
    with client.websocket_connect(f"/v1/stream?token={_token(client, keys.acme)}") as ws:
        ws.send_text(json.dumps({**START, "meeting_id": "standup"}))
        assert ws.receive_json()["type"] == "ready"
        assert client.get("/v1/meetings/standup", headers=_auth(keys.acme)).status_code == 200
        assert client.get("/v1/meetings/standup", headers=_auth(keys.globex)).status_code == 404
        # The same id named by another tenant is that tenant's own meeting: nothing tells it acme's exists.
        with client.websocket_connect(f"/v1/stream?token={_token(client, keys.globex)}") as theirs:
            theirs.send_text(json.dumps({**START, "meeting_id": "standup"}))
            assert theirs.receive_json()["type"] == "ready"
            got = client.get("/v1/meetings/standup", headers=_auth(keys.globex)).json()
            assert got["tenant_id"] == "globex" and len(got["sessions"]) == 1
            theirs.send_text(json.dumps({"type": "stop"}))
            _close(theirs)
        mine = client.get("/v1/meetings/standup", headers=_auth(keys.acme)).json()
        assert mine["tenant_id"] == "acme" and len(mine["sessions"]) == 1
        ws.send_text(json.dumps({"type": "stop"}))
        _close(ws)
    assert client.get("/v1/meetings/standup", headers=_auth(keys.globex)).json()["tenant_id"] == "globex"
    assert client.get("/v1/meetings/standup", headers=_auth(keys.acme)).json()["tenant_id"] == "acme"
    for query in ("", "?tenant_id=acme"):
        listing = client.get(f"/v1/meetings{query}", headers=_auth(keys.globex)).json()["meetings"]
        assert all(m.get("tenant_id") == "globex" for m in listing), listing
    for query in ("", "?tenant_id=acme", "?tenant_id=globex"):  # a keyed caller cannot pick a tenant
        assert client.get(f"/v1/meetings/standup{query}", headers=_auth(keys.globex)).json()["tenant_id"] == "globex"
    for _ in range(200):  # the ended meeting is written in the background: poll, bounded
        mine = client.get("/v1/meetings", headers=_auth(keys.acme)).json()["meetings"]
        if "standup" in {m["meeting_id"] for m in mine}:
            break
        time.sleep(0.05)
    assert "standup" in {m["meeting_id"] for m in mine}


def test_session_ids_chosen_by_clients_are_the_tenants_own(keyed):
    """/stt/realtime lets the caller name its session: two tenants naming the same id at once both get
    their session (neither is refused as "already live", which would tell it the other's exists),
    each echoed as it was sent; the same tenant naming it twice is refused."""
    client, keys = keyed
    start = {"type": "start_session", "session_id": "call-1", "meeting_id": "sid-m", "language": "en"}
    with client.websocket_connect(f"/stt/realtime?token={_token(client, keys.acme)}") as mine:
        mine.send_text(json.dumps(start))
        assert mine.receive_json() == {
            "type": "session_started",
            "session_id": "call-1",
            "tenant_id": "acme",
            "meeting_id": "sid-m",
            "seq": 0,
        }
        with client.websocket_connect(f"/stt/realtime?token={_token(client, keys.globex)}") as theirs:
            theirs.send_text(json.dumps(start))
            got = theirs.receive_json()
            assert got["type"] == "session_started" and (got["session_id"], got["tenant_id"]) == ("call-1", "globex"), got
            theirs.send_text(json.dumps({"type": "end_session"}))
            _close(theirs)
        with client.websocket_connect(f"/stt/realtime?token={_token(client, keys.acme)}") as again:
            again.send_text(json.dumps(start))
            events, code = _close(again)
            assert code == 1008 and "already live" in events[-1]["message"], events
        mine.send_text(json.dumps({"type": "end_session"}))
        _close(mine)


def test_metrics_need_a_read_key_unless_public(tmp_path):
    settings = _settings(tmp_path)
    keys = _make_keys(settings)
    with TestClient(create_app(settings, transcriber=FakeDecoder())) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_auth(keys.acme)).status_code == 200
    public = _settings(tmp_path, public_metrics=True)
    with TestClient(create_app(public, transcriber=FakeDecoder())) as client:
        body = client.get("/metrics")
        assert body.status_code == 200 and "malsori_http_requests" in body.text
        assert "acme" not in body.text and "globex" not in body.text  # counts, never tenants
        assert client.get("/v1/jobs").status_code == 401


# -- data: delete and retention --------------------------------------------------------------------
def test_purge_deletes_a_job_with_its_transcript_only_for_its_tenant(keyed):
    client, keys = keyed
    job = _job(client, keys.acme)
    assert client.delete(f"/v1/jobs/{job['id']}?purge=true", headers=_auth(keys.globex)).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}?purge=true", headers=_auth(keys.acme_read)).status_code == 403
    r = client.delete(f"/v1/jobs/{job['id']}?purge=true", headers=_auth(keys.acme))
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/v1/jobs/{job['id']}", headers=_auth(keys.acme)).status_code == 404
    assert client.app.state.services.jobs.repository.get(job["id"]) is None
    assert job["id"] not in {j["id"] for j in client.get("/v1/jobs?limit=500", headers=_auth(keys.acme)).json()["data"]}


def test_retention_deletes_finished_jobs_older_than_the_setting(tmp_path):
    from datetime import timedelta

    from sqlalchemy import update

    from malsori.storage import JobRow, utcnow

    settings = _settings(tmp_path)
    with TestClient(create_app(settings, transcriber=FakeDecoder())) as client:
        ids = []
        for _ in range(2):
            r = client.post("/v1/jobs", files={"file": ("a.wav", WAV)})
            ids.append(r.json()["id"])
            client.app.state.services.jobs.wait(ids[-1], timeout=30)
        repo = client.app.state.services.jobs.repository
        with repo.engine.begin() as conn:
            conn.execute(update(JobRow).where(JobRow.id == ids[0]).values(finished_at=utcnow() - timedelta(days=3)))
        assert client.app.state.services.jobs.expire(2) == 1
        assert repo.get(ids[0]) is None and repo.get(ids[1]) is not None
        with repo.engine.begin() as conn:
            conn.execute(update(JobRow).where(JobRow.id == ids[1]).values(finished_at=utcnow() - timedelta(days=3)))
    # A server started with the setting deletes what is older at once.
    kept = settings.model_copy(update={"storage": settings.storage.model_copy(update={"retention_days": 2.0})})
    with TestClient(create_app(kept, transcriber=FakeDecoder())) as client:
        jobs = client.app.state.services.jobs
        for _ in range(200):  # the sweep runs in the background at start: poll, bounded
            if jobs.repository.get(ids[1]) is None:
                break
            time.sleep(0.05)  # polling the database, not waiting for an outcome
        assert jobs.repository.get(ids[1]) is None


def test_live_session_slots_are_shared_through_redis_and_leases_run_out(redis_server):
    import asyncio

    from malsori.tenants import SessionSlots

    now = [1000.0]

    async def run() -> list[bool]:
        # Two gateways, one Redis, a limit of 2 sessions for acme.
        a = SessionSlots(redis_server.url, "malsori-test-slots", clock=lambda: now[0])
        b = SessionSlots(redis_server.url, "malsori-test-slots", clock=lambda: now[0])
        try:
            seen = [await a.acquire("acme", "s1", 2), await b.acquire("acme", "s2", 2), await b.acquire("acme", "s3", 2)]
            seen.append(await b.acquire("globex", "s4", 2))  # another tenant has its own slots
            await a.release("acme", "s1")
            seen.append(await b.acquire("acme", "s3", 2))
            now[0] += 20
            await b.refresh([("acme", "s3")])  # b is alive and renews; s2's gateway went quiet
            now[0] += 20
            seen.append(await a.acquire("acme", "s5", 2))  # s2's lease ran out: room for one
            seen.append(await a.acquire("acme", "s6", 2))
            return seen
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(run()) == [True, True, False, True, True, True, False]


def test_malsori_stream_with_an_api_key(tmp_path):
    import subprocess
    import sys

    settings = _settings(tmp_path)
    keys = _make_keys(settings)
    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes(tone_speech([0.3, "alpha", "bravo", 0.8])))
    app = create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)
    command = [sys.executable, "-m", "malsori.cli.app", "stream", str(wav)]
    env = {k: v for k, v in os.environ.items() if k != "MALSORI_API_KEY"}
    with running_app(app) as port:
        url = ["--url", f"ws://127.0.0.1:{port}/v1/stream"]
        refused = subprocess.run([*command, *url], capture_output=True, text=True, timeout=60, env=env)
        done = subprocess.run(
            [*command, *url], capture_output=True, text=True, timeout=60, env={**env, "MALSORI_API_KEY": keys.acme}
        )
    assert refused.returncode != 0 and "API key" in refused.stderr, refused.stderr
    assert done.returncode == 0 and done.stdout.strip() == "alpha bravo", (done.stdout, done.stderr)
