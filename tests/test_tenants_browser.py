"""The page and the panel in real headless Chromium when the server has API keys (issue 14).

The server is in process with the fake decoder and the energy VAD, and Chromium's fake microphone
plays tone speech (``engine.fake.tone_speech``), so the words are known and no model is loaded. The
page must say why it cannot start without a key, then caption the microphone once the key is typed
in (a token from POST /v1/tokens sent as the socket's first message) and run an upload as a job;
the panel must ask for a key and then show the status.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inprocess import running_app

from malsori.config import Settings
from malsori.engine.audio import wav_bytes
from malsori.engine.fake import FakeDecoder, tone_speech
from malsori.server.app import create_app
from malsori.storage import open_engine
from malsori.streaming.vad import EnergyVad
from malsori.tenants import KeyStore, Scope

pytestmark = [pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]


def _wav(path: Path, audio: np.ndarray) -> Path:
    path.write_bytes(wav_bytes(audio))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_browser import chromium as _chromium  # noqa: F401  (same Debian Chromium, installed there if missing)

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run tests/test_browser.py once (it installs Debian's chromium)")
    root = tmp_path_factory.mktemp("tenants-browser")
    mic = _wav(root / "mic.wav", tone_speech([1.0, "alpha", "bravo", 1.0, "charlie", "delta", 3.0]))
    base = Settings()
    settings = base.model_copy(update={"server": base.server.model_copy(update={"data_dir": root / "data"})})
    engine = open_engine(settings.database_url())
    key = KeyStore(engine).create("acme", scopes=[Scope.TRANSCRIBE, Scope.READ]).secret
    engine.dispose()
    app = create_app(settings, transcriber=FakeDecoder(), live_vad=EnergyVad)
    from playwright.sync_api import sync_playwright

    fake_mic = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
    ]
    with running_app(app) as port, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS + fake_mic)
        try:
            yield f"http://127.0.0.1:{port}", key, browser, mic
        finally:
            browser.close()


def test_the_page_needs_a_key_then_captions_and_uploads_with_it(setup):
    from playwright.sync_api import expect

    url, key, browser, mic = setup
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/")
    page.click("#start")
    expect(page.locator("#live-error")).to_contain_text("API key", timeout=30_000)  # closed with 4401 and why
    expect(page.locator("#start")).to_be_enabled(timeout=30_000)

    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    page.click("#start")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live", timeout=30_000)
    page.wait_for_function("() => window.malsori.finals().length >= 2", timeout=60_000, polling=250)
    texts = [f["text"].strip() for f in page.evaluate("window.malsori.finals()")]
    assert texts[:2] == ["alpha bravo", "charlie delta"], texts
    page.click("#stop")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "stopped", timeout=60_000)

    page.set_input_files("#file", str(mic))  # an upload runs as a job, with the key on every request
    page.click("#upload-button")
    expect(page.locator("#upload-status")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#upload-error")).to_be_hidden()
    assert not errors, errors


def test_the_panel_asks_for_a_key_then_shows_the_status(setup):
    from playwright.sync_api import expect

    url, key, browser, _ = setup
    page = browser.new_context().new_page()
    page.goto(f"{url}/panel")
    expect(page.locator("#api-key-box")).to_be_visible(timeout=15_000)
    expect(page.locator("#poll-error")).to_contain_text("API key")
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#server-state")).to_have_text("Ready", timeout=15_000)
    expect(page.locator("#model")).to_have_text("fake")
    expect(page.locator("#poll-error")).to_be_hidden()
