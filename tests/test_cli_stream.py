"""``malsori stream`` against a real server process: a file, raw PCM on stdin, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from malsori.evaluation import wer

MALSORI = [sys.executable, "-m", "malsori.cli.app", "stream"]


def _ws_url(live_server) -> str:
    return live_server.url.replace("http://", "ws://") + "/v1/stream"


def _jfk(manifest):
    return next(c for c in manifest if c.path.name == "jfk.flac")


@pytest.mark.model
@pytest.mark.e2e
def test_stream_file_prints_final_text(live_server, manifest):
    clip = _jfk(manifest)
    done = subprocess.run(
        [*MALSORI, str(clip.path), "--url", _ws_url(live_server), "--language", "en"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert wer(clip.reference, done.stdout) <= 0.1, done.stdout


@pytest.mark.model
@pytest.mark.e2e
def test_stream_raw_pcm_from_stdin(live_server, manifest):
    from malsori.engine import decode_audio

    clip = _jfk(manifest)
    pcm_f32 = decode_audio(clip.path).astype("<f4").tobytes()  # what `ffmpeg -f f32le -ar 16000 -ac 1 -` gives
    done = subprocess.run(
        [*MALSORI, "-", "--url", _ws_url(live_server), "--language", "en", "--encoding", "pcm_f32le", "--timestamps"],
        input=pcm_f32,
        capture_output=True,
        timeout=180,
    )
    stdout = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert all(line.startswith("[") and "→" in line for line in lines), stdout
    text = " ".join(line.split("]", 1)[1] for line in lines)
    assert wer(clip.reference, text) <= 0.1, stdout


def test_unreachable_server_is_one_clear_line():
    from malsori.client.http import HttpClient  # noqa: F401  (the client imports without a server)

    done = subprocess.run(
        [*MALSORI, "-", "--url", "ws://127.0.0.1:9/v1/stream"], input=b"\0\0" * 1600, capture_output=True, timeout=60
    )
    err = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1
    assert len(err) == 1 and err[0].startswith("error: cannot connect to ws://127.0.0.1:9/v1/stream"), err


def test_source_is_required_and_single(tmp_path):
    done = subprocess.run(MALSORI, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "give one source" in done.stderr
    done = subprocess.run([*MALSORI, str(tmp_path / "missing.wav")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no such file" in done.stderr
    done = subprocess.run([*MALSORI, "-", "--encoding", "mp3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--encoding must be one of" in done.stderr


def test_mic_without_sounddevice_names_the_extra():
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice is installed here; the missing-extra message cannot be shown")
    done = subprocess.run([*MALSORI, "--mic", "--url", "ws://127.0.0.1:9/v1/stream"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'malsori[mic]'" in done.stderr
    assert "cannot connect" not in done.stderr  # refused before touching the network


FAKE_SOUNDDEVICE = '''
"""A stand-in for sounddevice: plays FAKE_MIC_PCM (16 kHz int16) as the microphone, then presses Ctrl-C."""
import os, signal, threading, time

class RawInputStream:
    def __init__(self, samplerate, channels, dtype, blocksize, callback):
        assert (samplerate, channels, dtype) == (16000, 1, "int16")
        self.callback, self.blocksize = callback, blocksize
        self.pcm = open(os.environ["FAKE_MIC_PCM"], "rb").read()

    def __enter__(self):
        def play():
            step = self.blocksize * 2
            for i in range(0, len(self.pcm), step):
                self.callback(self.pcm[i:i + step], self.blocksize, None, None)
                time.sleep(0.02)  # five times real time
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=play, daemon=True).start()
        return self

    def __exit__(self, *exc):
        return False
'''


@pytest.mark.model
@pytest.mark.e2e
def test_mic_streams_until_ctrl_c_and_prints_the_last_finals(live_server, manifest, tmp_path):
    """--mic with a stand-in device playing real speech: Ctrl-C ends the audio and still gets every final."""
    from malsori.engine import decode_audio, float32_to_pcm16

    clip = _jfk(manifest)
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    (tmp_path / "mic.pcm").write_bytes(float32_to_pcm16(decode_audio(clip.path)))
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "FAKE_MIC_PCM": str(tmp_path / "mic.pcm"),
    }
    done = subprocess.run(
        [*MALSORI, "--mic", "--url", _ws_url(live_server), "--language", "en"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert wer(clip.reference, done.stdout) <= 0.1, done.stdout
