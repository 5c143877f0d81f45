"""The public API is exactly what ``__all__`` says (as httpx checks its own)."""

from __future__ import annotations
import __future__

import inspect
import subprocess
import sys

import pytest

import malsori
import malsori.audio_limits
import malsori.engine
import malsori.errors
import malsori.formats


def _public(module) -> set[str]:
    """Names a module defines or re-exports for users: not private, not submodules, not __future__ flags."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and not isinstance(value, __future__._Feature)
    }


def test_malsori_all():
    assert len(malsori.__all__) == len(set(malsori.__all__))
    for name in malsori.__all__:
        assert getattr(malsori, name) is not None, name
    assert sorted(dir(malsori)) == sorted(malsori.__all__)
    assert _public(malsori) <= set(malsori.__all__)
    # The lazy names are the engine's own objects, not copies.
    assert malsori.Transcriber is malsori.engine.Transcriber
    assert malsori.MalsoriError is malsori.errors.MalsoriError
    assert malsori.decode_audio is malsori.engine.decode_audio


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from malsori import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(malsori.__all__)


def test_engine_all():
    assert len(malsori.engine.__all__) == len(set(malsori.engine.__all__))
    assert _public(malsori.engine) == set(malsori.engine.__all__)


def test_errors_all():
    classes = {n for n, v in vars(malsori.errors).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert classes == set(malsori.errors.__all__)
    for name in malsori.errors.__all__:
        assert issubclass(getattr(malsori.errors, name), malsori.errors.MalsoriError)


def test_formats_all():
    for name in malsori.formats.__all__:
        assert hasattr(malsori.formats, name), name
    assert malsori.formats.InvalidOptionsError is malsori.errors.InvalidOptionsError


def test_audio_limits_all():
    assert _public(malsori.audio_limits) - {"InvalidOptionsError"} == set(malsori.audio_limits.__all__)


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000])
def test_accepted_sample_rates(rate):
    assert malsori.audio_limits.check_sample_rate(rate) == rate


@pytest.mark.parametrize("rate", [7_999, 48_001, 96_000, 192_000, 0, -16_000, 16_000.0, "16000", True, None])
def test_refused_sample_rates_say_the_range(rate):
    with pytest.raises(malsori.errors.InvalidOptionsError, match="from 8000 to 48000 Hz"):
        malsori.audio_limits.check_sample_rate(rate)


def test_import_malsori_stays_light():
    """The client and remote commands install without the engine: ``import malsori`` must not load it."""
    code = (
        "import sys, malsori, malsori.errors, malsori.formats, malsori.audio_limits; "
        "heavy = [m for m in ('malsori.engine', 'faster_whisper', 'ctranslate2', 'av', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
