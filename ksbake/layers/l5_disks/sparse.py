"""Sparse scratch images (xfs, swap) spliced into their partitions, holes kept."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

SPLICE_CHUNK = 1024 * 1024


ZERO_GRAIN = 64 * 1024


_ZERO = bytes(ZERO_GRAIN)


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def splice(src: Path, dst: Path, offset: int, start: int = 0, length: int | None = None) -> None:
    """Copy ``src`` (from ``start``, ``length`` bytes: to its end) into ``dst`` at ``offset``,
    skipping holes and all-zero blocks.

    ``dst``'s region must read as zeros already (a fresh sparse image): it stays sparse.
    """
    with open(src, "rb") as s, open(dst, "r+b") as d:
        sfd, dfd = s.fileno(), d.fileno()
        size = os.fstat(sfd).st_size
        end = size if length is None else min(size, start + length)
        offset -= start
        pos = start
        while pos < end:
            try:
                data = os.lseek(sfd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(sfd, data, os.SEEK_HOLE), end)
            for at, chunk in _chunks(sfd, data, hole):
                os.pwrite(dfd, chunk, offset + at)
            pos = hole


def _chunks(fd: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Non-zero pieces (ZERO_GRAIN granular) of the data range [start, end) of ``fd``."""
    pos = start
    while pos < end:
        buf = os.pread(fd, min(SPLICE_CHUNK, end - pos), pos)
        if not buf:
            return
        view = memoryview(buf)
        run_start = None
        for i in range(0, len(buf), ZERO_GRAIN):
            piece = view[i : i + ZERO_GRAIN]
            zero = piece == _ZERO[: len(piece)]
            if not zero and run_start is None:
                run_start = i
            elif zero and run_start is not None:
                yield pos + run_start, bytes(view[run_start:i])
                run_start = None
        if run_start is not None:
            yield pos + run_start, bytes(view[run_start:])
        pos += len(buf)
