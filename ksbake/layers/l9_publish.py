"""Publishing: ``out/NAME/`` holds one complete appliance, never a mix of two builds.

The new directory is assembled next to the old one (hardlinks to store objects: no copies;
a copy only when ``out/`` is on another filesystem) and swapped in with one atomic
``renameat2(RENAME_EXCHANGE)``; a failure at any point leaves the previous appliance intact.

Published disks are hardlinks to cached objects: boot them with ``snapshot=on``, or copy
them before running them read-write (a write would change the cached object too).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
from pathlib import Path

from ksbake import report
from ksbake.errors import BuildError
from ksbake.formats import file_name
from ksbake.hashing import canonical_json, sha256_file
from ksbake.layers.l7_convert import records_of
from ksbake.paths import Paths
from ksbake.runner import read_ref
from ksbake.store import Store, remove_tree

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (both must exist)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(b))


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dst)  # out/ on another filesystem than the store


def files_to_publish(paths: Paths, name: str) -> dict[str, tuple[Path, str | None]]:
    """published name -> (source file, sha256; None for the lock, a small per-workspace
    file hashed when published)."""
    build = paths.build_dir(name)
    store = Store(paths.store)
    files: dict[str, tuple[Path, str | None]] = {}
    for fmt, item in read_ref(paths, name, "convert")["items"].items():
        directory = store.object_dir("convert", item["key"])
        for rec in records_of(directory):
            published = file_name(name, rec["disk"], fmt, item["inputs"]["options"])
            files[published] = (directory / rec["object_file"], rec["sha256"])
    desc_key = read_ref(paths, name, "descriptor")["key"]
    desc_dir = store.object_dir("descriptor", desc_key)
    for file, digest in json.loads((desc_dir / "result.json").read_text()).items():
        files[file] = (desc_dir / file, digest)
    lock = build / "lock.json"
    files[f"{name}.lock.json"] = (lock, None)
    return files


def current(paths: Paths, name: str) -> bool:
    """doit ``uptodate`` check: every published disk and descriptor is still a hardlink of the
    current store object (an object rebuilt after a read-write boot gets published again)."""
    final = paths.out / name
    try:
        files = files_to_publish(paths, name)
        return all(
            os.path.samefile(final / published, src)
            for published, (src, _) in files.items()
            if not published.endswith(".lock.json")
        )
    except (OSError, ValueError, KeyError):
        return False


def step(paths: Paths, name: str) -> None:
    """Publish ``out/NAME/``: disks, descriptors, the package manifest, SHA256SUMS."""
    started = time.monotonic()
    files = {
        f: (src, digest or sha256_file(src))
        for f, (src, digest) in files_to_publish(paths, name).items()
    }
    final = paths.out / name
    staging = paths.out / f".{name}.new-{os.getpid()}"
    try:
        paths.out.mkdir(parents=True, exist_ok=True)
        remove_tree(staging)
        staging.mkdir()
        for published, (src, _digest) in sorted(files.items()):
            if published.endswith(".lock.json"):
                shutil.copyfile(src, staging / published)  # a per-workspace file, not an object
            else:
                _link(src, staging / published)
        sums = "".join(f"{digest}  {f}\n" for f, (_, digest) in sorted(files.items()))
        (staging / "SHA256SUMS").write_text(sums)
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
    record = {f: digest for f, (_, digest) in files.items()}
    (paths.build_dir(name) / "published.json").write_text(canonical_json(record) + "\n")
    report.record(
        paths,
        name,
        "publish",
        "-",
        True,
        time.monotonic() - started,
        note=f"{final}: {len(files) + 1} files",
    )
