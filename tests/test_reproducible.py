"""Same key, same bytes, in any store: two stores build the same appliances independently
(bundled repository, package trees, disks, every output) and publish identical files.

What it takes (see README, "Same inputs, same bytes"): rpm's install times from the packages'
newest build time, sqlite's transient files folded away, no dnf history in the tree, every
tree time clamped to that epoch, every inode's atime and ctime set in the image, the
filesystem's own times faked, the vmdk's content id derived from the key. Run on one machine,
so a tool version that differs between machines is not covered here (it is in every key).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PROJECT, Workspace, demo_kickstart, ok, shared_store

from ksbake.hashing import sha256_file as digest

pytestmark = pytest.mark.slow

DEMO_PARTS = "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
UEFI = (
    demo_kickstart()
    .replace(DEMO_PARTS, "part /boot/efi --fstype=efi --size=64\n" + DEMO_PARTS)
    .replace("--disklabel=msdos", "--disklabel=gpt")
)
MIRRORS = (
    '[mirrors]\nfedora = "file://$ksbake_repo/base"\nupdates = "file://$ksbake_repo/updates"\n'
)
APPLIANCES = {
    "demo.ks": demo_kickstart(),
    "uefi.ks": UEFI,
    "uefi.toml": 'firmware = "uefi"\nformats = ["qcow2", "vmdk", "raw", "vdi"]\nova = true\n',
    "wui.ks": (PROJECT / "configs" / "ovirt-wui.ks").read_text(),  # two disks, swap
    "wui.toml": MIRRORS,
}
NAMES = ("demo", "uefi", "wui")


def build_in_a_store_of_its_own(root: Path, out: Path) -> dict[str, dict[str, str]]:
    store = root / "store"
    store.mkdir(parents=True)
    debs = shared_store() / "debs"  # downloads only: everything else is built here
    if debs.is_dir():
        (store / "debs").symlink_to(debs)
    ws = Workspace(root, store, {"KSBAKE_OUT": str(out)})  # one out/: the libvirt XML names it
    for name, text in APPLIANCES.items():
        ws.write(name, text)
    ok(ws.doit("appliance"))
    found: dict[str, dict[str, str]] = {}
    for name in NAMES:
        files = {f"out/{p.name}": digest(p) for p in sorted((out / name).iterdir())}
        refs = ws.cache / "build" / name
        for layer in ("packages", "config", "disks", "bootloader"):
            key = json.loads((refs / f"{layer}.ref").read_text())["key"]
            files[f"{layer}-key"] = key
            for raw in sorted((store / "objects" / layer / key).glob("*.raw")):
                files[f"{layer}/{raw.name}"] = digest(raw)
        found[name] = files
    shutil.copytree(out, root / "published")
    shutil.rmtree(out)
    return found


def test_two_stores_build_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build_in_a_store_of_its_own(tmp_path / "a", out)
    second = build_in_a_store_of_its_own(tmp_path / "b", out)
    for name in NAMES:
        differ = sorted(k for k in first[name] if first[name][k] != second[name].get(k))
        assert differ == [], f"{name}: {differ}"
        assert set(first[name]) == set(second[name])
    # the outputs cover what the appliances publish: raw, qcow2, vmdk, OVA, descriptors
    assert {"out/uefi-sda.raw", "out/uefi-sda.vmdk", "out/uefi-sda.vdi", "out/uefi.ova"} <= set(
        first["uefi"]
    )
    assert {"disks/sda.raw", "disks/sdb.raw"} <= set(first["wui"])
