"""Where a job's audio waits for its turn: one file per job under ``data_dir/uploads``.

A file is written to a hidden temporary name, flushed to disk and renamed into place, so a crash at
any moment leaves either no upload or a whole one, never a torn one. The job service saves the upload
before it commits the job row: a job the API accepted always has its audio.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import AudioTooLargeError, EmptyAudioError, InvalidOptionsError

__all__ = ["UploadStore", "UploadSource"]

UploadSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO
_BLOCK = 1 << 20


class UploadStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        if not job_id.isalnum():  # ids are uuid4 hex; anything else must never become a path
            raise InvalidOptionsError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def save(self, job_id: str, source: UploadSource, *, max_bytes: int) -> Path:
        """Write ``source`` (bytes, a path, or a binary file) atomically as the upload of ``job_id``."""
        target = self.path(job_id)
        with contextlib.ExitStack() as stack:
            reader = _open_source(source, stack)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{job_id}.", suffix=".part", dir=self.root)
            try:
                written = 0
                with os.fdopen(fd, "wb") as out:
                    while block := reader.read(_BLOCK):
                        written += len(block)
                        if written > max_bytes:
                            raise AudioTooLargeError(f"the audio input is over the limit of {max_bytes / 1e6:.1f} MB")
                        out.write(block)
                    if written == 0:
                        raise EmptyAudioError("the audio input is empty (0 bytes)")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp_name, target)
                _fsync_dir(self.root)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return target

    def delete(self, path: str | os.PathLike | None) -> None:
        if path:
            Path(path).unlink(missing_ok=True)

    def sweep_partials(self) -> int:
        """Remove temporary files a crash left half-written (they belong to no job)."""
        removed = 0
        for leftover in self.root.glob(".*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed


def _open_source(source: UploadSource, stack: contextlib.ExitStack) -> BinaryIO:
    """A binary reader over ``source``; a file opened here is closed when ``stack`` unwinds, a caller's is not."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        try:
            return stack.enter_context(open(source, "rb"))
        except OSError as exc:
            raise InvalidOptionsError(f"cannot read the audio file {os.fspath(source)!r}: {exc.strerror}") from None
    return source


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX); Windows has no such call.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
