"""Publishing: ``out/NAME/`` holds one complete appliance, never a mix of two builds.

The new directory is assembled next to the old one and swapped in with one atomic
``renameat2(RENAME_EXCHANGE)``; a failure at any point leaves the previous appliance intact.

By default published files are copies (a reflink where the filesystem can, holes kept), so a
deployed appliance never writes into the store. ``publish = "hardlink"`` links them instead
(no copy: for the edit-boot loop; boot those with ``snapshot=on``). Either way every published
file is checked against its object's manifest: ``out/`` only ever holds bytes the store
committed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ksbake import report
from ksbake.errors import BuildError
from ksbake.formats import file_name
from ksbake.hashing import canonical_json, content_digest, sha256_file
from ksbake.layers.l7_convert import records_of
from ksbake.paths import Paths
from ksbake.run import run
from ksbake.runner import read_ref
from ksbake.store import MANIFEST, Store, remove_tree

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (both must exist)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(b))


@dataclass(frozen=True)
class Source:
    """Where a published file comes from: a file of a store object (with its sha256 from the
    layer that wrote it), or a small per-workspace file (the lock), hashed when published."""

    path: Path
    sha256: str | None
    layer: str | None = None
    key: str | None = None

    @property
    def rel(self) -> str:
        return self.path.name


def files_to_publish(paths: Paths, name: str) -> dict[str, Source]:
    """published name -> its source."""
    store = Store(paths.store)
    files: dict[str, Source] = {}
    for fmt, item in read_ref(paths, name, "convert")["items"].items():
        directory = store.object_dir("convert", item["key"])
        for rec in records_of(directory):
            published = file_name(name, rec["disk"], fmt, item["inputs"]["options"])
            src = directory / rec["object_file"]
            files[published] = Source(src, rec["sha256"], "convert", item["key"])
    desc_key = read_ref(paths, name, "descriptor")["key"]
    desc_dir = store.object_dir("descriptor", desc_key)
    for file, digest in json.loads((desc_dir / "result.json").read_text()).items():
        files[file] = Source(desc_dir / file, digest, "descriptor", desc_key)
    files[f"{name}.lock.json"] = Source(paths.build_dir(name) / "lock.json", None)
    return files


def _mode(paths: Paths, name: str) -> str:
    mode: str = json.loads((paths.build_dir(name) / "inputs" / "publish.json").read_text())["mode"]
    return mode


def _state(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def current(paths: Paths, name: str) -> bool:
    """doit ``uptodate`` check (stat only): ``out/NAME`` holds what the last publish wrote,
    untouched (size, mtime, inode), from the objects the refs name now. A published copy
    edited in place, or an object rebuilt, is published again."""
    final = paths.out / name
    try:
        record = json.loads((paths.build_dir(name) / "published.json").read_text())
        files = files_to_publish(paths, name)
        if record.get("mode") != _mode(paths, name):
            return False
        if record["sources"] != {f: str(src.path) for f, src in files.items()}:
            return False
        return all(_state(final / f) == state for f, state in record["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def _place(src: Source, dst: Path, mode: str) -> None:
    """Copy (reflink where the filesystem can, holes kept) or hardlink ``src`` to ``dst``."""
    if src.layer is None:
        shutil.copyfile(src.path, dst)  # a per-workspace file, not an object
        return
    if mode == "hardlink":
        try:
            os.link(src.path, dst)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise  # out/ on another filesystem than the store: copy
    run(["cp", "--reflink=auto", "--sparse=always", src.path, dst], what=f"publishing {dst.name}")


def _check(store: Store, src: Source, dst: Path) -> None:
    """The published bytes are the object's, as its manifest says; else the object is
    corrupt: it is removed (the next run rebuilds it) and nothing is published."""
    if src.layer is None or src.key is None:
        return
    manifest = json.loads((store.object_dir(src.layer, src.key) / MANIFEST).read_text())
    want = manifest.get(src.rel, [None] * 5)
    size, digest = (want[3], want[4]) if len(want) == 5 else (None, None)
    if dst.stat().st_size != size or content_digest(dst) != digest:
        store.evict(src.layer, src.key)
        raise BuildError(
            f"{dst.name}: the bytes of the {src.layer} object {src.key[:16]} do not match its "
            "manifest (the store copy is corrupt): removed it, nothing published",
            hint="run the build again: it rebuilds what was removed",
        )


def step(paths: Paths, name: str) -> None:
    """Publish ``out/NAME/``: disks, descriptors, the package manifest, SHA256SUMS."""
    started = time.monotonic()
    store = Store(paths.store)
    mode = _mode(paths, name)
    files = files_to_publish(paths, name)
    final = paths.out / name
    staging = paths.out / f".{name}.new-{os.getpid()}"
    try:
        paths.out.mkdir(parents=True, exist_ok=True)
        remove_tree(staging)
        staging.mkdir()
        sums: dict[str, str] = {}
        for published, src in sorted(files.items()):
            _place(src, staging / published, mode)
            _check(store, src, staging / published)
            sums[published] = src.sha256 or sha256_file(staging / published)
        text = "".join(f"{digest}  {f}\n" for f, digest in sorted(sums.items()))
        (staging / "SHA256SUMS").write_text(text)
        if final.exists():
            _exchange(staging, final)
            remove_tree(staging)  # now the previous appliance
        else:
            os.rename(staging, final)
    except OSError as exc:
        if staging.exists():
            remove_tree(staging)
        raise BuildError(
            f"cannot publish {name} into {paths.out}: {exc.strerror or exc}",
            hint="check that the output directory is writable and has room (KSBAKE_OUT moves it)",
        ) from None
    except BaseException:
        remove_tree(staging)
        raise
    record = {
        "mode": mode,
        "sources": {f: str(src.path) for f, src in files.items()},
        "files": {f: _state(final / f) for f in [*files, "SHA256SUMS"]},
        "sha256": sums,
    }
    (paths.build_dir(name) / "published.json").write_text(canonical_json(record) + "\n")
    report.record(
        paths,
        name,
        "publish",
        "-",
        True,
        time.monotonic() - started,
        note=f"{final}: {len(files) + 1} files, {'hardlinked' if mode == 'hardlink' else 'copied'}",
    )
