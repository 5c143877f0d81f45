"""What every benchmark script shares: where things are, what machine this is, and how a script
replaces its own section of docs/benchmarks.md without touching the others."""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
TESTDATA = Path(os.environ.get("MALSORI_TESTDATA", REPO.parent / "shared" / "testdata"))
DOC = REPO / "docs" / "benchmarks.md"
_NEW_DOC = "# Benchmarks\n\nMeasured figures, each with the command that produced them.\n"


def cpu_name() -> str:
    """The CPU's model name and its widest vector instructions. Hosts that both say "AMD EPYC" differ:
    CTranslate2's int8 matrix products (oneDNN on AMD) run faster with AVX-512 VNNI, and a Korean live
    final came 0.85 s after the speech on one and 1.3 s on an AVX2-only one (docs/benchmarks.md). An
    Intel Xeon with AMX (int8 matrix tiles) decodes faster still and batches differently (engine.transcriber.AMX_BATCH)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    isa = next((label for flag, label in _VECTOR_ISA if flag in flags), None)
    return f"{name} ({isa})" if isa else name


# The widest vector instructions first: what cpu_name reports.
_VECTOR_ISA = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def machine_line() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def serve_command(port: int, *options: str, data_dir: Path | None = None) -> list[str]:
    """The command line that starts this tree's `malsori serve` on ``port`` (in ``data_dir`` when given),
    with ``options`` after it; a script runs it with ``src/`` on PYTHONPATH (a worktree's venv may hold
    another checkout's editable install)."""
    where = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return [sys.executable, "-m", "malsori.cli.app", "serve", "--port", str(port), *where, *options]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _section_span(text: str, title: str) -> tuple[int, int] | None:
    """Start and end of the ``title`` section (up to the next ``## `` heading or the end)."""
    match = re.search(rf"^{re.escape(title)}\n", text, re.M)
    if match is None:
        return None
    nxt = re.search(r"^## ", text[match.end() :], re.M)
    return match.start(), match.end() + nxt.start() if nxt else len(text)


def replace_section(title: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the whole ``title`` section of ``doc`` with ``body``."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else _NEW_DOC
    section = f"{title}\n\n{body.strip()}\n\n"
    span = _section_span(text, title)
    text = text[: span[0]] + section + text[span[1] :] if span else text.rstrip() + "\n\n" + section
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {doc}")


def replace_block(title: str, name: str, body: str, doc: Path = DOC) -> None:
    """Replace only the generated block ``name`` inside the ``title`` section (between two HTML
    comments), so notes written by hand in that section survive a rerun."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else _NEW_DOC
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif (span := _section_span(text, title)) is not None:
        text = text[: span[1]].rstrip() + "\n\n" + block + "\n\n" + text[span[1] :].lstrip()
    else:
        text = text.rstrip() + f"\n\n{title}\n\n{block}\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {doc}")
