"""Append-only spill of fixed-size records to an unlinked temporary file.

A long collection produces data whose size grows with time: the event stream
(up to --max-events records) and the per-interval rows. Kept in Python they
made lockprof's memory grow for the whole run (docs/reliability.md); spilled
here they cost page cache, which the kernel can reclaim, and lockprof's own
memory stays flat. Everything is read back once, when the recording is built
(the events a chunk at a time, see chunks()).

If the disk cannot take a write (full, or the temporary directory is not
writable), the spool keeps that and later records in memory instead, with one
warning: data is never dropped for lack of disk.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from profiler.errors import LockprofError


class RecordSpool:
    """Records of one numpy dtype, appended in batches, read back as one array."""

    def __init__(self, dtype: np.dtype, what: str, directory: str | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.what = what  # named in the warning when the disk fails
        self._directory = directory
        self._file: io.FileIO | None = None
        self._bytes_on_disk = 0  # of whole batches: a failed write's part is ignored
        self._in_memory: list[np.ndarray] = []
        self._disk_failed = False
        self.records = 0

    def append(self, batch: np.ndarray) -> None:
        if len(batch) == 0:
            return
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if not self._disk_failed:
            try:
                self._spill(batch)
            except OSError as exc:
                self._fall_back_to_memory(exc)
        if self._disk_failed:
            self._in_memory.append(batch.copy())
        self.records += len(batch)

    def _spill(self, batch: np.ndarray) -> None:
        if self._file is None:
            # Unlinked at once: nothing is left behind whatever ends lockprof.
            # Unbuffered, so that a write error belongs to this batch.
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="lockprof-", dir=self._directory, buffering=0
            )  # kept for the run, closed by close()
        data = memoryview(batch.view(np.uint8).data)  # the batch's bytes, not a copy
        while data:
            written = self._file.write(data) or 0
            data = data[written:]
        self._bytes_on_disk += batch.nbytes

    def _fall_back_to_memory(self, exc: OSError) -> None:
        self._disk_failed = True
        sys.stderr.write(
            f"lockprof: cannot spill {self.what} to a temporary file ({exc.strerror or exc}); "
            "keeping them in memory\n"
        )
        # What the file already holds stays there and is read back with the rest.

    def read(self) -> np.ndarray:
        """Every record appended so far, in order."""
        parts = []
        if self._file is not None and self._bytes_on_disk:
            parts.append(np.frombuffer(self._read_disk(), dtype=self.dtype))
        parts += self._in_memory
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        if len(parts) > 1:
            return np.concatenate(parts)
        if not self._in_memory:
            return parts[0]  # a fresh buffer read from disk, writable and ours: no copy
        return parts[0].copy()

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Every record appended so far, in order, at most rows at a time:
        a fresh array each, so that memory holds one chunk, not the spool."""
        if self._file is not None and self._bytes_on_disk:
            chunk_bytes = rows * self.dtype.itemsize
            for start in range(0, self._bytes_on_disk, chunk_bytes):
                size = min(chunk_bytes, self._bytes_on_disk - start)
                yield np.frombuffer(self._read_disk(start, size), dtype=self.dtype)
        for part in self._in_memory:
            for start in range(0, len(part), rows):
                yield part[start : start + rows].copy()

    def _read_disk(self, start: int = 0, size: int | None = None) -> bytearray:
        assert self._file is not None
        data = bytearray(self._bytes_on_disk - start if size is None else size)
        view, done = memoryview(data), 0
        # A failure here is not the disk refusing a write (which falls back to
        # memory, see spill_or_in_memory): what was spilled cannot be read
        # back, and building again in memory would read the same file.
        try:
            self._file.seek(start)
            while done < len(data):
                got = self._file.readinto(view[done:])
                if not got:
                    raise LockprofError(
                        f"the {self.what} spill file is shorter than written "
                        f"({start + done:,} of {start + len(data):,} bytes)"
                    )
                done += got
            self._file.seek(0, 2)
        except OSError as exc:
            raise LockprofError(
                f"cannot read back the {self.what} spilled to a temporary file "
                f"({exc.strerror or exc})"
            ) from None
        return data

    def clear(self) -> None:
        self.close()
        self._in_memory = []
        self._bytes_on_disk = 0
        self._disk_failed = False
        self.records = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.records
