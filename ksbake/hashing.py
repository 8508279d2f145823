"""Keys: xxh3_128 over canonical text, the Merkle chain that makes the cache correct."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import xxhash


def canonical_json(value: Any) -> str:
    """Stable text for hashing and for files other tools diff: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def layer_key(
    layer: str, code_version: int, inputs: Any, parents: dict[str, str] | None = None
) -> str:
    """Key of a layer object: hash(layer name, code version, canonical inputs, parent keys).

    Nothing else goes in; the caller must pass everything the layer reads.
    """
    doc = {"layer": layer, "v": code_version, "inputs": inputs, "parents": parents or {}}
    return xxhash.xxh3_128_hexdigest(canonical_json(doc).encode())


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """xxh3_128 of a file's bytes (for small files: manifests, metadata, stamps)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


BLOCK = 64 * 1024
_ZERO = bytes(BLOCK)


def content_digest(path: str | Path) -> str:
    """xxh3_128 of a file's content, fast on sparse files: holes are skipped (SEEK_DATA), and
    the digest does not depend on where the holes are. The content is taken as 64 KiB blocks
    on a fixed grid; a run of all-zero blocks (a hole, or zeros written out) is hashed as its
    length, any other block as its bytes. So a sparse copy (``cp --sparse=always``) of a file
    has the file's digest, and a 2 GiB disk image with 300 MB of data costs 300 MB of reading.
    """
    h = xxhash.xxh3_128()
    zeros = 0

    def flush() -> None:
        nonlocal zeros
        if zeros:
            h.update(b"\0zeros" + zeros.to_bytes(8, "little"))
            zeros = 0

    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data = size
            start = data - data % BLOCK
            if start > pos:  # whole blocks of hole
                zeros += start - pos
                pos = start
                continue
            try:
                hole = os.lseek(fd, data, os.SEEK_HOLE)
            except OSError:
                hole = size
            end = min(size, -(-hole // BLOCK) * BLOCK)  # the block holding the hole's start
            while pos < end:
                chunk = os.pread(fd, min(end - pos, 16 * BLOCK), pos)
                if not chunk:
                    break
                for i in range(0, len(chunk), BLOCK):
                    block = chunk[i : i + BLOCK]
                    if block == _ZERO[: len(block)]:
                        zeros += len(block)
                    else:
                        flush()
                        h.update(block)
                pos += len(chunk)
    flush()
    h.update(b"\0size" + size.to_bytes(8, "little"))
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed: what SHA256SUMS and OVF manifests publish."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write ``text`` unless the file already holds it; keeps mtimes stable for doit.

    The write goes to a temporary file renamed into place, so readers never see half a file.
    """
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # whatever the umask
    tmp.replace(path)
    return True
