"""The whole test run's logs hold no API key or socket token (issue 14).

``tests/conftest.py`` records, while the run goes on, every key and token the tests create in this
process (:func:`remember_secret`, hooked into ``KeyStore.create`` and ``TokenIssuer.issue``) and
every server log the tests start (:func:`remember_log`: ``LiveServer``, scaled workers, and one file
that the in-process servers' log records go to, formatted as ``malsori serve`` formats them). At the
end of the session :func:`leaks` greps those logs for the recorded secrets (whole, and a key's secret
part alone) and for anything shaped like an unmasked key or token (keys made in a server process, by
the CLI or the admin API, are caught so); one hit fails the run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from malsori.tenants.keys import KEY_PATTERN
from malsori.tenants.tokens import TOKEN_PATTERN

_lock = threading.Lock()
SECRETS: set[str] = set()
LOGS: set[Path] = set()


def remember_secret(secret: str) -> None:
    with _lock:
        SECRETS.add(secret)
        if secret.startswith("msk_"):
            SECRETS.add(secret.split("_", 2)[2])  # the secret part alone


def remember_log(path: Path) -> None:
    with _lock:
        LOGS.add(Path(path))


def leaks(paths: Iterable[Path], secrets: Iterable[str]) -> list[str]:
    """``path: what`` for each recorded secret or unmasked key/token found in the files."""
    found = []
    wanted = sorted(set(secrets))
    for path in sorted(set(paths)):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue  # a server that never started
        for pattern in (KEY_PATTERN, TOKEN_PATTERN):
            found += [f"{path}: {m.group(0)[:16]}... (an unmasked {pattern.pattern[:4]})" for m in pattern.finditer(text)]
        found += [f"{path}: a secret made by the tests ({s[:8]}...)" for s in wanted if s in text]
    return found
