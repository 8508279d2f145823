"""``doit verify``: check store objects and published appliances against what was committed.

Every object carries a manifest (``ksbake.store``): each entry's type, mode, owner and, for
files, size and xxh3 digest. Verifying re-reads every byte, so it runs on request (and where a
build reads objects, see ``ksbake.runner.verify_inputs``), never on a no-op run. A corrupt
object is uncommitted and removed, so the next build rebuilds it (and the exit status is 1); a
published appliance whose files no longer match what was published (a deployed copy that ran,
or damage) is reported and marked stale, so the next build publishes it again.
"""

from __future__ import annotations

import json
import logging
import time

from ksbake.errors import BuildError
from ksbake.gc import closure, objects, referenced
from ksbake.hashing import sha256_file
from ksbake.paths import Paths
from ksbake.report import human
from ksbake.store import MANIFEST, Store, verify_dir

log = logging.getLogger("ksbake")


def check_published(paths: Paths, name: str) -> list[str]:
    """Files of ``out/NAME`` whose sha256 is not the one published (empty: intact)."""
    record_file = paths.build_dir(name) / "published.json"
    try:
        sums: dict[str, str] = json.loads(record_file.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return []  # never published from this workspace
    final = paths.out / name
    bad = []
    for file, digest in sorted(sums.items()):
        try:
            if sha256_file(final / file) != digest:
                bad.append(file)
        except OSError:
            bad.append(file)
    if bad:
        record_file.unlink()  # the publish task is stale now: the next build publishes again
    return bad


def step(paths: Paths, appliance: str = "") -> None:
    """Verify the whole store (or the objects ``appliance`` uses) and the published files."""
    started = time.monotonic()
    if appliance and appliance not in paths.appliances():
        raise BuildError(f"no appliance {appliance!r} in {paths.configs}")
    store = Store(paths.store)
    found = objects(paths.store)
    keys = closure(found, referenced(paths, appliance)) if appliance else set(found)
    corrupt = []
    legacy = 0
    size = 0
    for key in sorted(keys, key=lambda k: (found[k].layer, k)):
        obj = found[key]
        if not (obj.path / MANIFEST).exists():  # an older ksbake's: never reused, clear it
            legacy += 1
            store.evict(obj.layer, key)
            continue
        problems = verify_dir(obj.path)
        size += sum(f.stat().st_size for f in obj.path.rglob("*") if f.is_file())
        if problems:
            corrupt.append(f"{obj.layer}/{key[:16]} ({'; '.join(problems[:3])})")
            store.evict(obj.layer, key)
    stale = []
    for name in [appliance] if appliance else paths.appliances():
        stale += [f"out/{name}/{f}" for f in check_published(paths, name)]
    seconds = time.monotonic() - started
    print(
        f"verify: {len(keys) - legacy} objects ({human(size)} in files) checked in "
        f"{seconds:.1f} s: {len(corrupt)} corrupt, {len(stale)} published files changed"
        + (f"; {legacy} objects of an older ksbake (no manifest) removed" if legacy else ""),
        flush=True,
    )
    for what in stale:  # a deployed copy may run on them: a warning, the store is fine
        log.warning("published file differs from what was published: %s", what)
    for what in corrupt:
        log.warning("corrupt store object removed: %s", what)
    if corrupt:
        raise BuildError(
            f"{len(corrupt)} corrupt store objects removed",
            hint="run `doit appliance` (or appliance:NAME): it rebuilds and republishes them",
        )
