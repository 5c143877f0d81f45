"""Keeping a long-running process's resident memory flat (glibc malloc tuning).

A server that decodes in many threads (uvicorn's thread pool, the scheduler, job runners) makes glibc
give each thread that contends for the allocator an arena of its own, up to eight per core, and free
memory inside an arena mostly stays resident. Over an hour of mixed live and job load that shows as
resident memory climbing in steps until every arena has grown (docs/benchmarks.md, "Endurance soak").
Two remedies, both no-ops where the C library is not glibc:

- :func:`limit_arenas` caps the number of arenas (``mallopt(M_ARENA_MAX)``), before threads start;
- :func:`fix_mmap_threshold` sends every block from a given size up to ``mmap`` of its own, which is
  unmapped when it is freed (``mallopt(M_MMAP_THRESHOLD)``). glibc's default threshold moves: each
  time a mapped block is freed, the threshold rises to its size, so from then on the model's
  per-batch workspaces (tens of MB for a batch of long windows) come from the heap, and a heap
  fragmented by them stays resident. Fixing the threshold keeps them out of the heap;
- :func:`trim` hands free memory back to the system (``malloc_trim(0)``), which the server calls
  periodically (``server.memory_trim_interval_s``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

__all__ = ["fix_mmap_threshold", "limit_arenas", "trim"]

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 (glibc only: musl and macOS have no mallopt/malloc_trim)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(param: int, name: str, value: int) -> bool:
    """``mallopt(param, value)`` for a positive value (0 or less: glibc's default stays). True when applied."""
    libc = _libc()
    if value <= 0 or libc is None:
        return False
    applied = bool(libc.mallopt(param, value))
    if not applied:
        log.warning("mallopt(%s, %d) was refused", name, value)
    return applied


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave glibc's default). True when applied."""
    return _mallopt(_M_ARENA_MAX, "M_ARENA_MAX", count)


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve blocks of ``nbytes`` and more with mmap, always (0: leave glibc's moving threshold). True when applied."""
    return _mallopt(_M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD", nbytes)


def trim() -> bool:
    """Return free heap memory to the system. True when some was released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
