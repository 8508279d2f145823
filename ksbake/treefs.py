"""Safe file access inside a root tree from the host.

ksbake runs as root and writes into trees whose symlinks were made by packages and %post
scripts. A plain ``open(tree / "etc/hostname", "w")`` follows an absolute symlink like
``etc/hostname -> /etc/hostname`` straight onto the HOST. Every path here is resolved as if
the tree were ``/`` (like the kernel does in a chroot), so nothing ever escapes the tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ksbake.errors import BuildError

MAX_SYMLINKS = 40


def walk(
    path: str, entry: Callable[[list[str]], Path | None], *, follow_last: bool = True
) -> list[str] | None:
    """Resolve ``path`` component by component as the kernel does in a chroot: ``..`` stops
    at the root, absolute symlinks restart from it. ``entry(parts)`` gives the host path of
    a component (None: it does not exist, and neither does ``path``). Returns the resolved
    components. Shared by plain trees and by overlay layers read without mounting them."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = entry([*done, part])
        if candidate is None:
            return None
        if candidate.is_symlink() and (todo or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise BuildError(f"too many levels of symbolic links resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return done


def resolve(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """Host path of ``path`` inside ``root``, following symlinks as a chroot would."""
    parts = walk(path, lambda parts: root.joinpath(*parts), follow_last=follow_last)
    return root.joinpath(*parts or [])


def makedirs(root: Path, path: str, mode: int = 0o755) -> Path:
    """``mkdir -p`` inside the tree; returns the host path."""
    target = resolve(root, path)
    if not target.is_dir():
        parent = makedirs(root, str(Path("/", path).parent), mode) if path.strip("/") else root
        target = resolve(root, path)
        if not target.exists():
            os.mkdir(parent / target.name, mode)
    return target


def write_file(
    root: Path,
    path: str,
    data: str | bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
) -> Path:
    """Write a file inside the tree (replacing it atomically) without following symlinks out."""
    target = resolve(root, path)
    parent = makedirs(root, str(Path("/", path).parent)) if "/" in path.strip("/") else root
    target = parent / target.name
    raw = data.encode() if isinstance(data, str) else data
    tmp = parent / f".{target.name}.ksbake-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, raw)
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return target


def read_text(root: Path, path: str) -> str | None:
    """Contents of a file in the tree, or None if it does not exist."""
    target = resolve(root, path)
    return target.read_text() if target.is_file() else None


def exists(root: Path, path: str) -> bool:
    return resolve(root, path).exists()


def symlink(root: Path, path: str, target: str) -> None:
    """Create (or replace) the symlink ``path -> target`` inside the tree."""
    parent = makedirs(root, str(Path("/", path).parent))
    link = parent / Path(path).name
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
