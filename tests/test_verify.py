"""Verified objects: corrupt bytes in the store are found before they are reused or published.

Real builds in a store of this module's own (the tests damage objects on purpose; the shared
test store stays clean). Bytes are changed the way a failing disk or a careless hand would:
size and mtime kept, so only the digests in the manifest can tell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, ok, shared_store

from ksbake.hashing import sha256_file as sha256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    store = tmp_path_factory.mktemp("verify-store")
    debs = shared_store() / "debs"  # downloaded .debs: reuse them, build everything else
    if debs.is_dir():
        (store / "debs").symlink_to(debs)
    yield store


@pytest.fixture
def ws(tmp_path: Path, own_store: Path) -> Workspace:
    workspace = Workspace(tmp_path, own_store)
    workspace.write("demo.ks", demo_kickstart())
    return workspace


def key(ws: Workspace, layer: str) -> str:
    data = json.loads((ws.cache / "build" / "demo" / f"{layer}.ref").read_text())
    return data["key"] if "key" in data else next(iter(data["items"].values()))["key"]


def damage(path: Path, offset: int, data: bytes = b"\xde\xad\xbe\xef") -> None:
    """Overwrite bytes in place, keeping size and mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def published(ws: Workspace) -> dict[str, str]:
    out = ws.root / "out" / "demo"
    return {p.name: sha256(p) for p in sorted(out.iterdir())}


def test_flipped_disk_bytes_are_not_reused(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    before = published(ws)
    disks = ws.store / "objects" / "disks" / key(ws, "disks")
    damage(disks / "sda.raw", 100 * 1024 * 1024)  # inside / (its files' blocks)
    # a bootloader-only edit would copy the disks object
    ws.write("demo.ks", demo_kickstart().replace("--timeout=1", "--timeout=2"))
    r = ws.doit("appliance:demo")
    assert r.rc != 0
    lines = [line for line in r.err.splitlines() if line.startswith("ksbake: error:")]
    assert len(lines) == 1 and "disks object" in lines[0] and "corrupt" in lines[0], r.err
    assert "Traceback" not in r.err
    assert not disks.exists()  # removed, never reused
    assert published(ws) == before  # nothing published from it
    again = ws.doit("appliance:demo")
    ok(again)
    assert again.built("disks") and again.built("bootloader")
    assert ws.doit("verify").rc == 0


def test_truncated_tree_file_is_not_reused(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    tree = ws.store / "objects" / "packages" / key(ws, "packages") / "tree"
    busybox = tree / "usr" / "bin" / "busybox"
    os.truncate(busybox, 4096)
    ws.write("demo.ks", demo_kickstart().replace("--size=192", "--size=200"))  # layout only
    r = ws.doit("appliance:demo")
    assert r.rc != 0 and "packages object" in r.err and "usr/bin/busybox" in r.err, r.err
    again = ws.doit("appliance:demo")
    ok(again)
    assert again.built("packages") and busybox.stat().st_size > 4096


def test_published_copy_edited_in_place_is_published_again(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    before = published(ws)
    qcow2 = ws.root / "out" / "demo" / "demo-sda.qcow2"
    converted = ws.store / "objects" / "convert" / key(ws, "convert")
    assert not any(os.path.samefile(qcow2, f) for f in converted.iterdir())  # a copy
    damage(qcow2, 65536)
    os.utime(qcow2)  # an edit moves the mtime: the no-op check sees it
    r = ws.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == {"publish"}  # the store object was never touched
    assert published(ws) == before


def test_verify_task_removes_corrupt_objects_and_fails(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    assert "0 corrupt" in ws.doit("verify", "--appliance", "demo").out
    converted = ws.store / "objects" / "convert" / key(ws, "convert")
    qcow2 = next(converted.glob("*.qcow2"))
    damage(qcow2, qcow2.stat().st_size // 2)
    assert ws.doit("appliance:demo").layers_run() == set()  # stat-only checks: unnoticed
    r = ws.doit("verify", "--appliance", "demo")
    assert r.rc != 0
    assert "1 corrupt" in r.out and f"convert/{converted.name[:16]}" in r.err
    assert not converted.exists()
    again = ws.doit("appliance:demo")
    ok(again)
    assert again.built("convert-qcow2") and not again.built("disks")
    assert ws.doit("verify").rc == 0


def test_published_file_changed_with_mtime_kept_is_found_by_verify(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    before = published(ws)
    damage(ws.root / "out" / "demo" / "demo.xml", 1, b"X")  # <image> becomes <Xmage>
    r = ws.doit("verify", "--appliance", "demo")
    assert r.rc == 0 and "1 published files changed" in r.out and "out/demo/demo.xml" in r.err
    again = ws.doit("appliance:demo")
    ok(again)
    assert again.layers_run() == {"publish"}
    assert published(ws) == before


def test_hardlink_publishing(ws: Workspace) -> None:
    ws.write("demo.toml", 'publish = "hardlink"\n')
    ok(ws.doit("appliance:demo"))
    qcow2 = ws.root / "out" / "demo" / "demo-sda.qcow2"
    converted = ws.store / "objects" / "convert" / key(ws, "convert")
    assert any(os.path.samefile(qcow2, f) for f in converted.iterdir())
    ws.write("demo.toml", 'publish = "copy"\n')
    r = ws.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == {"kickstart", "publish"}
    assert not any(os.path.samefile(qcow2, f) for f in converted.iterdir())


def test_objects_carry_a_manifest_of_every_file(ws: Workspace) -> None:
    ok(ws.doit("appliance:demo"))
    for layer in ("packages", "config", "disks", "bootloader", "convert", "descriptor"):
        obj = ws.store / "objects" / layer / key(ws, layer)
        manifest = json.loads((obj / "manifest.json").read_text())
        files = {
            str(p.relative_to(obj))
            for p in obj.rglob("*")
            if p.name not in ("manifest.json", "meta.json")
        }
        assert files == set(manifest), layer
