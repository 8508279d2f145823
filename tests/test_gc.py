"""Store garbage collection: LRU first, never what the workspace uses or what it is built on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ksbake import gc
from ksbake.paths import Paths


def make(store: Path, layer: str, key: str, used: float, size: int, parents=None) -> None:  # noqa: ANN001
    obj = store / "objects" / layer / key
    obj.mkdir(parents=True)
    (obj / "payload").write_bytes(os.urandom(size))
    (obj / "meta.json").write_text(json.dumps({"parents": parents or {}}))
    os.utime(obj / "meta.json", (used, used))


def test_lru_with_references_and_dependents(tmp_path: Path) -> None:
    paths = Paths.from_env(tmp_path, environ={})
    store = paths.store
    kib = 1024 * 64
    make(store, "packages", "p-old", 100, kib)
    make(store, "config", "c-on-old", 500, kib, {"packages": "p-old"})  # recent, but built on
    make(store, "packages", "p-used", 50, kib)  # oldest, but in use through c-used
    make(store, "config", "c-used", 60, kib, {"packages": "p-used"})
    make(store, "packages", "p-mid", 300, kib)
    build = paths.cache / "build" / "demo"
    build.mkdir(parents=True)
    (build / "config.ref").write_text(json.dumps({"key": "c-used"}))

    removed = gc.collect(paths, budget=3 * kib + 3 * 4096 * 3)
    names = [o.key for o in removed]
    # the oldest unused object goes first, with the config built on it
    assert names[:2] == ["c-on-old", "p-old"]
    assert not (store / "objects/packages/p-old").exists()
    assert not (store / "objects/config/c-on-old").exists()
    assert (store / "objects/packages/p-used/meta.json").exists()
    assert (store / "objects/config/c-used/meta.json").exists()


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    paths = Paths.from_env(tmp_path, environ={})
    make(paths.store, "packages", "p", 1, 4096)
    removed = gc.collect(paths, budget=0, dry_run=True)
    assert [o.key for o in removed] == ["p"]
    assert (paths.store / "objects/packages/p/meta.json").exists()


def test_fan_out_refs_and_parents_are_followed(tmp_path: Path) -> None:
    """convert.ref names one object per format; a descriptor's parents are {format: key}."""
    paths = Paths.from_env(tmp_path, environ={})
    store = paths.store
    make(store, "bootloader", "b", 1, 4096)
    make(store, "convert", "v-qcow2", 2, 4096, {"bootloader": "b"})
    make(store, "convert", "v-vmdk", 3, 4096, {"bootloader": "b"})
    make(store, "descriptor", "d", 4, 4096, {"convert": {"qcow2": "v-qcow2", "vmdk": "v-vmdk"}})
    make(store, "convert", "v-old", 5, 4096, {"bootloader": "b"})
    build = paths.cache / "build" / "demo"
    build.mkdir(parents=True)
    (build / "descriptor.ref").write_text(json.dumps({"key": "d"}))
    (build / "convert.ref").write_text(json.dumps({"items": {"vmdk": {"key": "v-vmdk"}}}))
    removed = gc.collect(paths, budget=0)
    assert [o.key for o in removed] == ["v-old"]


def test_the_bundled_repository_and_distribution_are_kept(tmp_path: Path) -> None:
    paths = Paths.from_env(tmp_path, environ={})
    for layer, key, link in (
        ("repo", "r", paths.bundled_repo),
        ("distro", "d", paths.bundled_distro),
    ):
        make(paths.store, layer, key, 1, 4096)
        (paths.store / "objects" / layer / key / layer).mkdir()
        link.symlink_to(paths.store / "objects" / layer / key / layer)
    make(paths.store, "packages", "p", 2, 4096)
    removed = gc.collect(paths, budget=0)
    assert [o.key for o in removed] == ["p"]
    assert (paths.store / "objects/distro/d/meta.json").exists()


def test_budget_from_the_environment(monkeypatch) -> None:  # noqa: ANN001
    import pytest

    from ksbake.errors import ConfigError
    from tasks.gc import budget

    for text, expected in (("0", 0), ("512", 512 * 2**20), ("20GiB", 20 * 2**30)):
        monkeypatch.setenv("KSBAKE_CACHE_BUDGET", text)
        assert budget() == expected
    monkeypatch.setenv("KSBAKE_CACHE_BUDGET", "lots")
    with pytest.raises(ConfigError, match="KSBAKE_CACHE_BUDGET: must be a size"):
        budget()
