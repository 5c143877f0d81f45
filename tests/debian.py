"""Debian programs the deployment tests run for real (nginx, prometheus, docker-compose).

A missing program is installed with apt-get, as tests/test_browser.py does for Chromium, so
`make test` works on a fresh Debian machine; without apt-get the test fails and names the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["ensure_program"]


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)


def ensure_program(program: str, package: str) -> Path:
    """The path of ``program`` (e.g. /usr/sbin/nginx), installing Debian's ``package`` when it is missing."""
    path = Path(program)
    if not path.exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{program} is missing and there is no apt-get to install it (Debian package {package!r})")
        result = _apt_get("install", "-y", "-q", "--no-install-recommends", package)
        if result.returncode != 0:  # a fresh machine has no package lists yet
            _apt_get("update", "-q")
            result = _apt_get("install", "-y", "-q", "--no-install-recommends", package)
        if result.returncode != 0 or not path.exists():
            pytest.fail(f"apt-get install {package} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return path
