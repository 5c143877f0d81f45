"""The whole test run's logs hold no API key, socket token or transcript text (issue 14).

``tests/conftest.py`` records, while the run goes on, every key and token the tests create in this
process (:func:`remember_secret`, hooked into ``KeyStore.create`` and ``TokenIssuer.issue``) and
every server log the tests start (:func:`remember_log`: ``LiveServer``, scaled workers, and one file
that the in-process servers' log records go to, formatted as ``malsori serve`` formats them). At the
end of the session :func:`leaks` greps those logs for the recorded secrets (whole, and a key's secret
part alone) and for anything shaped like an unmasked key or token (keys made in a server process, by
the CLI or the admin API, are caught so); one hit fails the run.

Transcript text: the reference transcripts of the test data (:func:`remember_transcripts`, every
clip the tests decode) as runs of :data:`RUN` words; a log line that holds one, compared without case
or punctuation, logged a transcript (the model's text differs from a reference in a few words, never
in most of a run of five).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from pathlib import Path

from malsori.tenants.keys import KEY_PATTERN
from malsori.tenants.tokens import TOKEN_PATTERN

_lock = threading.Lock()
SECRETS: set[str] = set()
LOGS: set[Path] = set()
RUNS: set[tuple[str, ...]] = set()
RUN = 5
"""Words in a row of a reference transcript that make a log line a transcript leak."""
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def remember_transcripts(texts: Iterable[str]) -> None:
    """Texts the tests' audio says: their runs of :data:`RUN` words must not reach a log."""
    with _lock:
        for text in texts:
            words = _words(text)
            RUNS.update(tuple(words[i : i + RUN]) for i in range(len(words) - RUN + 1))


def transcript_runs(text: str, runs: set[tuple[str, ...]]) -> list[str]:
    """The runs of ``runs`` found in ``text``, each once."""
    words = _words(text)
    found = {tuple(words[i : i + RUN]) for i in range(len(words) - RUN + 1)} & runs
    return [" ".join(r) for r in sorted(found)]


def remember_secret(secret: str) -> None:
    with _lock:
        SECRETS.add(secret)
        if secret.startswith("msk_"):
            SECRETS.add(secret.split("_", 2)[2])  # the secret part alone


def remember_log(path: Path) -> None:
    with _lock:
        LOGS.add(Path(path))


def leaks(paths: Iterable[Path], secrets: Iterable[str], runs: set[tuple[str, ...]] | None = None) -> list[str]:
    """``path: what`` for each recorded secret, unmasked key/token or transcript run found in the files."""
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
        found += [f"{path}: transcript text ({run!r})" for run in transcript_runs(text, runs or set())[:3]]
    return found
