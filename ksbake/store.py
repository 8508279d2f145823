"""The content-addressed store: the source of truth for what is built.

Layout under the cache root::

    cache/
      objects/<layer>/<key>/      committed objects: manifest.json (every entry's type, mode,
                                  owner and, for files, size and xxh3 digest), then meta.json
                                  (with the manifest's digest), the data synced to disk, then
                                  the staging directory renamed here: an object exists whole
                                  or not at all, and its bytes can be checked (``verify``)
      staging/<layer>-<key>.<pid>/ objects being built (removed on failure; a killed build's
                                  leftovers are removed by the next build of that key)
      locks/<layer>-<key>.lock    one flock per key: two builds never build one object twice

doit decides *when* to look; the store decides *whether* to build: ``obtain()`` first looks for
a committed object with the key (another appliance with the same inputs, or a run after
``doit forget``, reuses it).

What is checked when: reusing an object checks that it is committed and that its sealed files
(disks, published) keep their size and mtime (stat only); building an object from its parents
and publishing check the digests of what they read (``verify``); ``doit verify`` checks every
object. A corrupt object is uncommitted and removed (``evict``), so the next run rebuilds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ksbake.hashing import canonical_json, content_digest

META = "meta.json"
MANIFEST = "manifest.json"
log = logging.getLogger("ksbake")


@dataclass(frozen=True)
class Obtained:
    """A committed object, and whether this call built it (False: reused from the store)."""

    path: Path
    built: bool
    meta: dict[str, Any]


class Store:
    """Content-addressed objects with atomic commit and per-key locks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def object_dir(self, layer: str, key: str) -> Path:
        return self.root / "objects" / layer / key

    def lookup(self, layer: str, key: str) -> Path | None:
        """The committed object for ``key``, or None. Uncommitted leftovers never count, nor
        objects of a ksbake that wrote no manifest (they are built again, with one)."""
        path = self.object_dir(layer, key)
        return path if (path / META).is_file() and (path / MANIFEST).is_file() else None

    def read_meta(self, layer: str, key: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.object_dir(layer, key) / META).read_text())
        return meta

    @contextmanager
    def _locked(self, layer: str, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{layer}-{key}.lock", "w") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def obtain(
        self,
        layer: str,
        key: str,
        build: Callable[[Path], dict[str, Any] | None],
        meta: dict[str, Any] | None = None,
    ) -> Obtained:
        """Return the committed object for ``key``, building it with ``build(staging)`` if needed.

        ``build`` fills the staging directory and may return extra metadata; its ``seal`` entry
        lists files whose size and mtime are recorded, and an object whose sealed files changed
        is built again instead of reused. On any exception the staging directory is removed
        and nothing is committed.
        """
        found = self.lookup(layer, key)
        if found and self._intact(found):
            self._touch(found)
            return Obtained(found, False, self.read_meta(layer, key))
        with self._locked(layer, key):
            found = self.lookup(layer, key)  # built by a concurrent run while we waited
            if found and self._intact(found):
                self._touch(found)
                return Obtained(found, False, self.read_meta(layer, key))
            if found:
                log.warning(
                    "%s object %s was modified after it was built (a published disk booted "
                    "read-write?): building it again",
                    layer,
                    key[:16],
                )
                (found / META).unlink()  # uncommit first, then remove
                remove_tree(found)
            staging_root = self.root / "staging"
            staging_root.mkdir(parents=True, exist_ok=True)
            for stale in staging_root.glob(f"{layer}-{key}.*"):
                remove_tree(stale)  # left by a killed build of this key; we hold its lock
            final = self.object_dir(layer, key)
            if final.exists():  # an object dir without meta.json cannot come from rename
                remove_tree(final)
            staging = staging_root / f"{layer}-{key}.{os.getpid()}"
            staging.mkdir()
            started = time.monotonic()
            try:
                extra = build(staging) or {}
                sealed = {
                    name: [(staging / name).stat().st_size, (staging / name).stat().st_mtime_ns]
                    for name in extra.pop("seal", [])
                }
                manifest = canonical_json(manifest_of(staging)) + "\n"
                (staging / MANIFEST).write_text(manifest)
                info = {
                    "layer": layer,
                    "key": key,
                    "built_at": time.time(),
                    "build_seconds": round(time.monotonic() - started, 3),
                    **(meta or {}),
                    **extra,
                    **({"sealed": sealed} if sealed else {}),
                    "manifest": xxhash.xxh3_128_hexdigest(manifest.encode()),
                }
                (staging / META).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
                _sync(staging)  # data, manifest and meta on disk before the rename commits
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
                _fsync_dir(final.parent)
            except BaseException:
                remove_tree(staging)
                raise
            return Obtained(final, True, info)

    def intact(self, layer: str, key: str) -> bool:
        """The object exists, committed, with its sealed files untouched."""
        path = self.lookup(layer, key)
        return path is not None and self._intact(path)

    @staticmethod
    def _intact(path: Path) -> bool:
        """Sealed files (disks that get published as hardlinks) still have the size and mtime
        they were built with: nobody wrote into them through a published link."""
        sealed = json.loads((path / META).read_text()).get("sealed", {})
        for name, (size, mtime_ns) in sealed.items():
            try:
                st = os.stat(path / name)
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return False
        return True

    def verify(self, layer: str, key: str) -> list[str]:
        """What differs between a committed object and its manifest (empty: intact)."""
        path = self.lookup(layer, key)
        if path is None:
            return ["not committed"]
        return verify_dir(path)

    def evict(self, layer: str, key: str) -> None:
        """Uncommit (meta.json first) and remove an object found corrupt; under its lock."""
        with self._locked(layer, key):
            path = self.object_dir(layer, key)
            with contextlib.suppress(FileNotFoundError):
                (path / META).unlink()
            remove_tree(path)

    @staticmethod
    def _touch(path: Path) -> None:
        """Record use (for least-recently-used garbage collection)."""
        with contextlib.suppress(OSError):
            os.utime(path / META)


def manifest_of(top: Path) -> dict[str, list[Any]]:
    """Every entry below ``top`` (symlinks not followed): type and mode, owner, and for files
    size and xxh3 digest, for links their target, for devices their number."""
    found: dict[str, list[Any]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if rel in (META, MANIFEST):
                continue
            st = os.lstat(path)
            entry: list[Any] = [st.st_mode, st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                entry += [st.st_size, content_digest(path)]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry.append(st.st_rdev)
            found[rel] = entry
    return found


def verify_dir(path: Path) -> list[str]:
    """Entries of a committed object that differ from its manifest (first ones first)."""
    try:
        text = (path / MANIFEST).read_text()
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return ["no manifest"]
    if meta.get("manifest") != xxhash.xxh3_128_hexdigest(text.encode()):
        return ["manifest.json was modified"]
    want = json.loads(text)
    have = manifest_of(path)
    return sorted(
        f"{rel}: {'missing' if rel not in have else 'unexpected' if rel not in want else 'changed'}"
        for rel in want.keys() | have.keys()
        if want.get(rel) != have.get(rel)
    )


def _sync(path: Path) -> None:
    """Flush the filesystem holding ``path`` (every file just written, and the directories):
    one syncfs instead of an fsync per file of a tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a directory tree we own, even with read-only dirs (overlay work dirs, /root 0550)."""
    if not path.exists() and not path.is_symlink():
        return

    def fix(func: Callable[[str], object], p: str, _exc: object) -> None:
        parent = os.path.dirname(p)
        os.chmod(parent, 0o700)
        func(p)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=fix)
    else:
        path.unlink()
