"""The page and the panel in real headless Chromium (Debian's package) against a real server.

Chromium's fake microphone plays real speech (jfk.flac turned into a WAV, which is what Chromium's
fake capture reads; it loops the file), the page streams it through its AudioWorklet to /v1/stream,
and the tests read the captions the page shows. Screenshots land in artifacts/ (gitignored).

Playwright drives the browser with ``executable_path`` pointing at Debian's Chromium: Playwright's
own browser download is never used. A missing Chromium is installed with apt-get (what a fresh CI
machine hits).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from malsori.evaluation import wer

pytestmark = [pytest.mark.e2e, pytest.mark.model]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# As root, without a display and on a closed network: no sandbox, no GPU, no background traffic.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
JFK_REFERENCE = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LEAD_S = 1.0  # silence before the speech in the fake microphone's file
TAIL_S = 4.0  # silence after it, so the last phrase ends (a pause finalizes it) before the file loops


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when the machine does not have it yet."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.fail("Chromium is missing and there is no apt-get to install it (Debian package 'chromium')")
        result = _apt_get("install", "-y", "-q", "chromium")
        if result.returncode != 0:  # a fresh machine has no package lists yet
            _apt_get("update", "-q")
            result = _apt_get("install", "-y", "-q", "chromium")
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(f"apt-get install chromium failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def speech_wav(testdata, tmp_path_factory) -> tuple[Path, float]:
    """jfk.flac (decoded by PyAV) as 16-bit WAV with silence around it; returns (path, loop length s)."""
    from malsori.engine.audio import SAMPLE_RATE, decode_audio

    speech = decode_audio(testdata / "en" / "jfk.flac")
    audio = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE)), speech, np.zeros(int(TAIL_S * SAMPLE_RATE))])
    path = tmp_path_factory.mktemp("fake-mic") / "jfk-padded.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path, len(audio) / SAMPLE_RATE


@pytest.fixture(scope="module")
def browser(chromium, speech_wav):
    from playwright.sync_api import sync_playwright

    wav, _ = speech_wav
    fake_mic = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=LAUNCH_ARGS + fake_mic)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request, artifacts):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# -- file upload ----------------------------------------------------------------------------------
def _parse_srt(text: str):
    import srt

    return list(srt.parse(text))


def test_upload_shows_the_transcript_and_downloads_valid_srt(page, live_server, testdata, artifacts):
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/")
    page.set_input_files("#file", str(testdata / "en" / "jfk.flac"))
    page.click("#upload-button")
    result = page.locator("#upload-result")
    expect(result).to_be_visible(timeout=120_000)
    shown = " ".join(page.locator("#upload-segments .text").all_inner_texts())
    assert wer(JFK_REFERENCE, shown) <= 0.1, shown
    # the progress bar went away and the status line says what was done
    expect(page.locator("#upload-progress-box")).to_be_hidden()
    expect(page.locator("#upload-status")).to_contain_text("segments")

    with page.expect_download(timeout=120_000) as download_info:
        page.click('.downloads button[data-format="srt"]')
    download = download_info.value
    assert download.suggested_filename == "jfk.srt"
    text = Path(download.path()).read_text(encoding="utf-8")
    cues = _parse_srt(text)
    assert [cue.index for cue in cues] == list(range(1, len(cues) + 1))
    assert all(cue.start < cue.end for cue in cues)
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))
    assert cues[-1].end.total_seconds() <= 11.5  # within the 11 s file
    assert wer(JFK_REFERENCE, " ".join(cue.content for cue in cues)) <= 0.1, text

    with page.expect_download(timeout=120_000) as download_info:
        page.click('.downloads button[data-format="vtt"]')
    vtt = Path(download_info.value.path()).read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT")
    assert "-->" in vtt
    page.screenshot(path=str(artifacts / "browser-upload.png"), full_page=True)

    # The page ran the file as a job, once, whatever was downloaded afterwards.
    import httpx

    jobs = httpx.get(f"{live_server.url}/v1/jobs", timeout=30).json()["data"]
    mine = [job for job in jobs if job["filename"] == "jfk.flac"]
    assert len(mine) == 1 and mine[0]["state"] == "succeeded"


def test_upload_of_a_non_audio_file_shows_the_servers_reason(page, live_server, tmp_path):
    from playwright.sync_api import expect

    bogus = tmp_path / "notes.wav"
    bogus.write_bytes(b"this is not audio at all" * 50)
    page.goto(f"{live_server.url}/")
    page.set_input_files("#file", str(bogus))
    page.click("#upload-button")
    error = page.locator("#upload-error")
    expect(error).to_be_visible(timeout=60_000)
    expect(error).to_contain_text("notes.wav")
    expect(page.locator("#upload-result")).to_be_hidden()


# -- the control panel ----------------------------------------------------------------------------
def test_panel_shows_the_model_and_refuses_gpu_without_one(page, live_server, artifacts):
    from playwright.sync_api import expect

    from malsori.server.web_routes import cuda_device_count

    page.goto(f"{live_server.url}/panel")
    expect(page.locator("#model")).to_have_text("base", timeout=15_000)
    expect(page.locator("#device")).to_have_text("cpu" if cuda_device_count() == 0 else "cuda")
    expect(page.locator("#compute-type")).not_to_have_text("–")
    expect(page.locator("#mode-auto")).to_be_checked()

    page.click('label[for="mode-cpu"]')
    expect(page.locator("#routing-message")).to_contain_text("CPU")
    expect(page.locator("#mode-cpu")).to_be_checked()

    page.keyboard.press("ArrowRight")  # keyboard use: the focused radio group moves to GPU
    message = page.locator("#routing-message")
    if cuda_device_count() == 0:
        expect(message).to_contain_text("no CUDA device")
        expect(page.locator("#mode-cpu")).to_be_checked()  # the toggle shows what is really in force
    else:
        expect(message).to_contain_text("GPU")
    page.screenshot(path=str(artifacts / "browser-panel.png"), full_page=True)

    page.click('label[for="mode-auto"]')
    expect(page.locator("#mode-auto")).to_be_checked()
