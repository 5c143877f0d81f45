"""malsori.memory: glibc malloc tuning that keeps a long-running server's resident memory flat."""

from __future__ import annotations

import ctypes
import platform

import pytest

from malsori import memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_trim_hands_freed_heap_back():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(100_000)]  # 100 MB of small blocks on the heap
    for block in blocks:
        ctypes.memset(block, 1, 1024)
    for block in blocks[:-1]:  # the last block pins the top of the heap: free() alone cannot shrink it
        libc.free(block)
    before = _rss_mb()
    assert memory.trim() is True
    after = _rss_mb()
    libc.free(blocks[-1])
    assert before - after > 50, f"RSS {before:.0f} MB -> {after:.0f} MB"


def test_arena_limit():
    assert memory.limit_arenas(0) is False  # 0 leaves glibc's default alone
    assert memory.limit_arenas(2) is True


_BIG_BLOCKS = """
import ctypes, sys
from malsori import memory
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold(4 << 20) is True
kept = []
for _ in range(3):  # with glibc's moving threshold, the second block comes from the heap
    block = libc.malloc(16 << 20)  # under glibc's 32 MB cap on the moving threshold
    ctypes.memset(block, 1, 16 << 20)
    peak = rss_mb()
    libc.free(block)
    kept.append(rss_mb() - peak > -12)
print(sum(kept))
"""


def _blocks_kept(mode: str) -> int:
    import subprocess
    import sys

    # A fresh process: the threshold decides only where the heap grows, and a long test session's heap
    # may already hold free room for a 16 MB block.
    done = subprocess.run([sys.executable, "-c", _BIG_BLOCKS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_fixed_mmap_threshold_returns_big_blocks_on_free():
    """Above a fixed threshold a freed block leaves the process at once, even after glibc's moving
    threshold would have risen past it (it rises to the size of every mapped block freed)."""
    assert memory.fix_mmap_threshold(0) is False  # 0 leaves glibc's default alone
    assert _blocks_kept("default") >= 1  # the moving threshold: a freed block stays resident
    assert _blocks_kept("fixed") == 0
