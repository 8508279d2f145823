"""The content-addressed store: the source of truth for what is built.

Layout under the cache root::

    cache/
      objects/<layer>/<key>/      committed objects; meta.json is written last, then the
                                  staging directory is renamed here, so an object either
                                  exists whole or not at all
      staging/<layer>-<key>.<pid>/ objects being built (removed on failure; a killed build's
                                  leftovers are removed by the next build of that key)
      locks/<layer>-<key>.lock    one flock per key: two builds never build one object twice

doit decides *when* to look; the store decides *whether* to build: ``obtain()`` first looks for
a committed object with the key (another appliance with the same inputs, or a run after
``doit forget``, reuses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

META = "meta.json"
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
        """The committed object for ``key``, or None. Uncommitted leftovers never count."""
        path = self.object_dir(layer, key)
        return path if (path / META).is_file() else None

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
                info = {
                    "layer": layer,
                    "key": key,
                    "built_at": time.time(),
                    "build_seconds": round(time.monotonic() - started, 3),
                    **(meta or {}),
                    **extra,
                    **({"sealed": sealed} if sealed else {}),
                }
                (staging / META).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
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

    @staticmethod
    def _touch(path: Path) -> None:
        """Record use (for least-recently-used garbage collection)."""
        with contextlib.suppress(OSError):
            os.utime(path / META)


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
