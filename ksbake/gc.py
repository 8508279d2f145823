"""Garbage collection of the store: a size budget, least recently used objects first.

An object's last use is its ``meta.json`` mtime (``Store.obtain`` touches it on every reuse).
What the appliances of this workspace currently point at (their ``*.ref`` files, the
bundled repository and distribution) is never collected, nor anything those objects are
built on (their ``parents``). Removing an object removes the objects built on top of it
too (a config layer is only an overlay upper directory: it is useless without its packages
tree). Published files in ``out/`` are copies or hardlinks, so they survive the collection
of their objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ksbake.paths import Paths
from ksbake.report import human, tree_size
from ksbake.store import META, remove_tree


@dataclass
class Obj:
    layer: str
    key: str
    path: Path
    last_used: float
    parents: set[str]
    size: int = 0
    children: set[str] = field(default_factory=set)


def objects(store: Path) -> dict[str, Obj]:
    """Every committed object, by key."""
    found: dict[str, Obj] = {}
    for meta in sorted((store / "objects").glob(f"*/*/{META}")):
        info = json.loads(meta.read_text())
        parents: set[str] = set()
        for value in (info.get("parents") or {}).values():  # a key, or {item: key} (fan-out)
            parents.update(value.values() if isinstance(value, dict) else [value])
        obj = Obj(
            meta.parent.parent.name, meta.parent.name, meta.parent, meta.stat().st_mtime, parents
        )
        found[obj.key] = obj
    for obj in found.values():
        for parent in obj.parents:
            if parent in found:
                found[parent].children.add(obj.key)
    return found


def referenced(paths: Paths, appliance: str = "*") -> set[str]:
    """Keys the appliances of this workspace (or one of them) point at."""
    from ksbake.runner import ref_keys

    keys: set[str] = set()
    for ref in paths.cache.glob(f"build/{appliance}/*.ref"):
        found = ref_keys(json.loads(ref.read_text()))
        keys.update(found.values() if isinstance(found, dict) else [found])
    for link in (paths.bundled_repo, paths.bundled_distro):  # the bundled repositories
        if link.is_symlink() and appliance == "*":
            keys.add(link.resolve().parent.name)
    return keys


def closure(found: dict[str, Obj], keys: set[str]) -> set[str]:
    """``keys`` and everything they are built on."""
    keep: set[str] = set()
    todo = [k for k in keys if k in found]
    while todo:
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo.extend(p for p in found[key].parents if p in found)
    return keep


def collect(paths: Paths, budget: int, *, dry_run: bool = False) -> list[Obj]:
    """Remove least recently used objects until the store fits ``budget`` bytes."""
    found = objects(paths.store)
    keep = closure(found, referenced(paths))  # what is referenced, and what it is built on
    for obj in found.values():
        obj.size = tree_size(obj.path)
    total = sum(o.size for o in found.values())
    removed: list[Obj] = []
    gone: set[str] = set()
    for obj in sorted(found.values(), key=lambda o: o.last_used):
        if total <= budget:
            break
        if obj.key in keep or obj.key in gone:
            continue
        doomed, stack = [], [obj.key]
        while stack:  # the object and everything built on it (none of it is kept)
            key = stack.pop()
            if key not in gone:
                gone.add(key)
                doomed.append(found[key])
                stack.extend(found[key].children)
        for victim in reversed(doomed):
            if not dry_run:
                (victim.path / META).unlink()  # uncommit first: never a half object in use
                remove_tree(victim.path)
            total -= victim.size
            removed.append(victim)
    return removed


def step(paths: Paths, budget: int, dry_run: bool = False) -> None:
    removed = collect(paths, budget, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for obj in removed:
        print(f"gc: {verb} {obj.layer}/{obj.key[:16]} ({human(obj.size)})")
    print(
        f"gc: {verb} {len(removed)} objects, {human(sum(o.size for o in removed))}; "
        f"budget {human(budget)}"
    )
