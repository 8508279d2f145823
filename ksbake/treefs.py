"""Safe file access inside a root tree from the host, and reading a tree through its layers.

ksbake runs as root and writes into trees whose symlinks were made by packages and %post
scripts. A plain ``open(tree / "etc/hostname", "w")`` follows an absolute symlink like
``etc/hostname -> /etc/hostname`` straight onto the HOST. Every path here is resolved as if
the tree were ``/`` (like the kernel does in a chroot), so nothing ever escapes the tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ksbake.errors import BuildError

MAX_SYMLINKS = 40
MIN_EPOCH = 315532800  # 1980-01-01: FAT cannot store anything older


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


class MergedTree:
    """Read-only view of overlay layers (topmost first) without mounting them.

    Follows overlayfs rules: the topmost entry wins, a 0/0 character device is a whiteout,
    an opaque directory hides lower layers, and symlinks resolve inside the merged tree.
    """

    def __init__(self, layers: list[str] | list[Path]) -> None:
        self.layers = [Path(p) for p in layers]

    @staticmethod
    def _whiteout(st: os.stat_result) -> bool:
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    @staticmethod
    def _opaque(path: Path) -> bool:
        for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
            try:
                if os.getxattr(path, name, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                pass
        return False

    def _hides_lower(self, layer: Path, parts: list[str]) -> bool:
        """True when ``layer`` hides lower layers' ``parts`` (a non-directory or opaque dir)."""
        for i in range(1, len(parts) + 1):
            path = layer.joinpath(*parts[:i])
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if not stat.S_ISDIR(st.st_mode) or self._opaque(path):
                return True
        return False

    def _entry(self, parts: list[str]) -> Path | None:
        """Host path of the topmost entry for a path whose parents have no symlinks."""
        for layer in self.layers:
            path = layer.joinpath(*parts)
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None:
                return None if self._whiteout(st) else path
            if self._hides_lower(layer, parts[:-1]):
                return None
        return None

    def _resolve(self, path: str) -> list[str] | None:
        return walk(path, self._entry)

    def find(self, path: str) -> Path | None:
        """Host path of ``path`` in the merged tree (symlinks followed), or None."""
        parts = self._resolve(path)
        if parts is None:
            return None
        return self._entry(parts) if parts else self.layers[0]

    def is_file(self, path: str) -> bool:
        found = self.find(path)
        return found is not None and found.is_file()

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a merged directory (empty if it does not exist)."""
        parts = self._resolve(path)
        if parts is None:
            return []
        names: set[str] = set()
        hidden: set[str] = set()
        for layer in self.layers:
            directory = layer.joinpath(*parts)
            if directory.is_dir() and not directory.is_symlink():
                for entry in os.scandir(directory):
                    if entry.name in names or entry.name in hidden:
                        continue
                    if self._whiteout(entry.stat(follow_symlinks=False)):
                        hidden.add(entry.name)
                    else:
                        names.add(entry.name)
            if self._hides_lower(layer, parts):
                break
        return sorted(names)

    def read_text(self, path: str) -> str | None:
        found = self.find(path)
        return found.read_text(errors="replace") if found is not None and found.is_file() else None


def clamp_times(top: Path, epoch: int) -> None:
    """No entry newer than ``epoch`` (what scriptlets and %post write gets it), and atime =
    mtime: a tree's times then depend on its content, not on when it was built. mkfs -d copies
    them into the image; the disks layer sets the ctimes, which no one can set here."""
    for dirpath, dirnames, filenames in os.walk(top):
        for path in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(path)
            mtime = min(st.st_mtime_ns, epoch * 1_000_000_000)
            if (st.st_atime_ns, st.st_mtime_ns) != (mtime, mtime):
                os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
