"""``malsori transcribe`` and ``malsori models``: real output on real speech, one-line errors, exit codes.

In-process runs reuse the session's model (the command's own construction is checked through the
config it passes); one subprocess run proves the installed console script end to end.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import srt
import webvtt
from typer.testing import CliRunner

from malsori.cli import transcribe as transcribe_cli
from malsori.cli.app import app
from malsori.evaluation import normalize, wer

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)))


def _one_error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def shared_model(monkeypatch, transcriber):
    """The command builds its Transcriber through malsori.engine; hand it the session's model."""
    import malsori.engine

    calls: list = []

    def build(config):
        calls.append(config)
        return transcriber

    monkeypatch.setattr(malsori.engine, "Transcriber", build)
    return calls


@pytest.fixture
def jfk(manifest):
    return next(c for c in manifest if c.path.name == "jfk.flac")


# -- real output -----------------------------------------------------------------------------------
@pytest.mark.model
def test_console_script_prints_the_jfk_sentence(jfk):
    script = Path(sys.executable).parent / "malsori"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "malsori.cli.app"]
    done = subprocess.run([*command, "transcribe", str(jfk.path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and wer(jfk.reference, done.stdout) == 0.0, done.stdout


@pytest.mark.model
def test_srt_output_parses(shared_model, jfk):
    result = _cli("transcribe", jfk.path, "--format", "srt")
    assert result.exit_code == 0, result.output
    cues = list(srt.parse(result.stdout))
    assert cues and [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert wer(jfk.reference, " ".join(c.content for c in cues)) == 0.0
    assert cues[0].start.total_seconds() < 1.0 and cues[-1].end.total_seconds() <= 11.0
    (config,) = shared_model
    assert config.model == "base" and config.device == "auto"


@pytest.mark.model
def test_translate_gives_english(shared_model, manifest):
    clip = next(c for c in manifest if c.path.name == "test_es.wav")
    result = _cli("transcribe", clip.path, "--task", "translate")
    assert result.exit_code == 0, result.output
    words = set(normalize(result.stdout).split())
    # "The sand is white, with medium grain..." (see test_engine's translate test for why not exact).
    assert "white" in words and len(words & {"the", "is", "are", "and", "has", "have", "very", "with"}) >= 3, result.stdout
    assert not words & {"las", "arenas", "son", "blanquecinas", "grano", "tiene", "muy", "poca"}, result.stdout


@pytest.mark.model
def test_several_files_into_a_directory(shared_model, transcriber, manifest, jfk, tmp_path, monkeypatch):
    lj = next(c for c in manifest if c.path.name == "LJ001-0002.flac")
    batches = []
    real = transcriber.decode_windows
    monkeypatch.setattr(
        transcriber, "decode_windows", lambda windows, *a, **k: batches.append(len(windows)) or real(windows, *a, **k)
    )
    monkeypatch.setattr(transcribe_cli, "_LONG_AUDIO_S", 0.0)  # show the progress bar even off a terminal
    out = tmp_path / "out"
    result = _cli("transcribe", jfk.path, lj.path, "--format", "vtt", "--output-dir", out, "--beam-size", "3")
    assert result.exit_code == 0, result.output
    assert batches == [2]  # both files' windows decoded in one call
    assert sorted(p.name for p in out.iterdir()) == ["LJ001-0002.vtt", "jfk.vtt"]
    for clip, name in ((jfk, "jfk.vtt"), (lj, "LJ001-0002.vtt")):
        captions = webvtt.read(str(out / name)).captions
        assert wer(clip.reference, " ".join(c.text for c in captions)) <= 0.1
    assert f"wrote {out / 'jfk.vtt'}" in result.stderr
    assert "13/13 s of audio" in result.stderr  # the bar reached the end (11 s + 1.9 s)
    assert result.stdout == ""


@pytest.mark.model
def test_several_files_on_stdout_and_word_timestamps(shared_model, jfk, manifest):
    lj = next(c for c in manifest if c.path.name == "LJ001-0008.flac")
    result = _cli("transcribe", lj.path, jfk.path, "-f", "verbose_json", "--word-timestamps", "--no-vad")
    assert result.exit_code == 0, result.output
    parts = result.stdout.split("==> ")
    assert parts[0] == "" and parts[1].startswith(f"{lj.path} <==\n") and parts[2].startswith(f"{jfk.path} <==\n")
    data = json.loads(parts[2].split("\n", 1)[1])
    assert data["task"] == "transcribe" and data["language"] == "en" and data["duration"] == 11.0
    assert wer(jfk.reference, data["text"]) == 0.0 and len(data["words"]) == 22
    assert shared_model[0].model == "base"


# -- errors ------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    line = _one_error_line(_cli("transcribe", tmp_path / "nope.wav"))
    assert line == f"error: no such audio file: {tmp_path / 'nope.wav'}"


def test_corrupt_file(tmp_path):
    bad = tmp_path / "broken.mp3"
    # Seeded: some random bytes happen to parse as a container without an audio stream (another error).
    bad.write_bytes(random.Random(0).randbytes(4096))
    line = _one_error_line(_cli("transcribe", bad))
    assert "the input could not be decoded as audio" in line and str(bad) in line


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert _one_error_line(_cli("transcribe", empty)) == f"error: {empty}: the audio input is empty (0 bytes)"


def test_over_the_duration_limit_says_how_to_raise_it(jfk, monkeypatch):
    monkeypatch.setenv("MALSORI__LIMITS__MAX_AUDIO_SECONDS", "5")
    line = _one_error_line(_cli("transcribe", jfk.path))
    assert "longer than the limit of 5 s" in line and "MALSORI__LIMITS__MAX_AUDIO_SECONDS" in line


def test_hub_model_offline(jfk, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MALSORI__ENGINE__CACHE_DIR", str(tmp_path))
    line = _one_error_line(_cli("transcribe", "--model", "small", jfk.path))
    assert "model 'small' is not bundled" in line and "base, tiny.en" in line


def test_model_that_cannot_load(jfk):
    line = _one_error_line(_cli("transcribe", "--compute-type", "bogus", jfk.path))
    assert line == "error: model 'base' could not be loaded on cpu/bogus: Invalid compute type: bogus"


def test_bad_setting_in_the_environment(jfk, monkeypatch):
    monkeypatch.setenv("MALSORI__LIMITS__MAX_AUDIO_SECONDS", "an hour")
    line = _one_error_line(_cli("transcribe", jfk.path))
    assert line.startswith("error: invalid setting MALSORI__LIMITS__MAX_AUDIO_SECONDS: Input should be a valid number")


@pytest.mark.model
def test_unwritable_output_dir(jfk, tmp_path, shared_model):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _one_error_line(_cli("transcribe", jfk.path, "-o", blocker / "out"))
    assert line == f"error: cannot write {blocker / 'out' / 'jfk.txt'}: Not a directory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--format", "docx"), "unknown output format 'docx'"),
        (("--task", "summarize"), "use transcribe or translate"),
        (("--beam-size", "0"), "--beam-size"),
        (("--language", "xx"), "unknown language 'xx'"),
        (("--device", "tpu"), "device must be auto, cpu or cuda"),
    ],
)
def test_bad_usage_exits_2(jfk, args, message):
    result = _cli("transcribe", *args, jfk.path)
    assert result.exit_code == 2 and message in " ".join(result.stderr.split()).replace("│", "")
    assert result.stdout == ""


def test_no_file_is_bad_usage():
    assert _cli("transcribe").exit_code == 2


def test_two_inputs_for_one_output_file(testdata, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        (d / "talk.flac").write_bytes((testdata / "en" / "jfk.flac").read_bytes())
    result = _cli("transcribe", a / "talk.flac", b / "talk.flac", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "would both be written to" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_missing_engine_names_the_install_command():
    code = "import sys; sys.modules['faster_whisper'] = None; from malsori.cli.app import main; main()"
    for command in ("models", "transcribe"):
        args = [command] if command == "models" else [command, "x.wav"]
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == (
            "error: the transcription engine is not installed (faster_whisper is missing); run: pip install 'malsori[engine]'"
        )


# -- models --------------------------------------------------------------------------------------------
def test_models_lists_the_bundled_models():
    result = _cli("models")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") == 6}
    assert "base" in rows and "tiny.en" in rows
    assert [c.strip() for c in rows["base"].split("│")[3:5]] == ["yes", "yes"]  # multilingual, available
    assert [c.strip() for c in rows["tiny.en"].split("│")[3:5]] == ["no", "yes"]
