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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed: what SHA256SUMS and OVF manifests publish."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_if_changed(path: Path, text: str) -> bool:
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
    tmp.write_text(text)
    tmp.replace(path)
    return True
