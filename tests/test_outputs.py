"""Acceptance for outputs: `doit appliance:NAME` end to end — conversion, descriptors,
out/NAME/, boots of the published qcow2 and vmdk, and a libvirt domain on a real libvirtd."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Workspace, copy_config, demo_kickstart, fails, ok
from lxml import etree

from ksbake import qemu
from ksbake.hashing import sha256_file as sha256

pytestmark = pytest.mark.slow


def snapshot(out: Path) -> dict[str, tuple[int, str]]:
    """Every published file: inode and content hash (to prove nothing changed)."""
    return {p.name: (p.stat().st_ino, sha256(p)) for p in sorted(out.iterdir())}


@pytest.fixture
def demo(workspace: Workspace) -> Workspace:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", 'formats = ["qcow2", "vmdk"]\n')
    return workspace


@pytest.mark.boot
def test_demo_appliance_published_and_boots(demo: Workspace, tmp_path: Path) -> None:
    r = demo.doit("appliance:demo")
    ok(r)
    out = demo.root / "out" / "demo"
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "demo-sda.qcow2",
        "demo-sda.vmdk",
        "demo.libvirt.xml",
        "demo.lock.json",
        "demo.mf",
        "demo.ovf",
        "demo.xml",
    ]
    # disks are copies: nothing in out/ shares an inode with the store
    store_inodes = {p.stat().st_ino for p in demo.store.glob("objects/*/*/*") if p.is_file()}
    for disk in ("demo-sda.qcow2", "demo-sda.vmdk"):
        assert (out / disk).stat().st_nlink == 1
        assert (out / disk).stat().st_ino not in store_inodes
    sums = dict(
        reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines()
    )
    assert set(sums) == {p.name for p in out.iterdir()} - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert sha256(out / name) == digest, name
    # virt-image: appliance-creator's shape, checksum of the file actually written
    image = etree.parse(str(out / "demo.xml"))
    assert image.findtext("domain/boot/guest/arch") == "x86_64"
    assert image.find("domain/boot/drive").attrib == {"disk": "demo-sda.qcow2", "target": "hda"}
    assert image.findtext("domain/devices/memory") == str(512 * 1024)
    assert image.findtext("storage/disk/checksum") == sums["demo-sda.qcow2"]
    assert image.find("name").attrib == {"version": "1.0", "release": "1"}
    # libvirt XML is valid for libvirt's own schema
    subprocess.run(
        ["virt-xml-validate", str(out / "demo.libvirt.xml"), "domain"],
        check=True,
        capture_output=True,
    )
    assert (
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / "demo-sda.vmdk")],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.count("streamOptimized")
        == 1
    )
    # the published vmdk boots; the qcow2 boots read-write, as a deployed copy does: the
    # guest's writes (its ext4 mount) land in out/ only, the store stays as committed
    vmdk = qemu.boot([out / "demo-sda.vmdk"], log=tmp_path / "vmdk.log", timeout=240)
    assert vmdk.seconds > 0 and sha256(out / "demo-sda.vmdk") == sums["demo-sda.vmdk"]
    qcow2 = out / "demo-sda.qcow2"
    qemu.boot([qcow2], log=tmp_path / "qcow2.log", timeout=240, snapshot=False)
    assert sha256(qcow2) != sums["demo-sda.qcow2"]  # the guest wrote to its disk
    verified = demo.doit("verify", "--appliance", "demo")
    ok(verified)
    assert "0 corrupt, 1 published files changed" in verified.out
    again = demo.doit("appliance:demo")  # the edited copy is published again
    ok(again)
    assert again.layers_run() == {"publish"}
    assert sha256(qcow2) == sums["demo-sda.qcow2"]
    assert "summary" not in r.err
    assert "publish" in r.out and "convert-vmdk" in r.out


def test_format_and_descriptor_only_changes(demo: Workspace) -> None:
    demo.write("demo.toml", 'formats = ["qcow2"]\n')
    ok(demo.doit("appliance:demo"))
    # format only: conversion and descriptors, nothing before them
    demo.write("demo.toml", 'formats = ["vmdk"]\n')
    r = demo.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == {"kickstart", "convert-vmdk", "descriptor", "publish"}, r.out
    assert {"disks:demo", "bootloader:demo"} <= set(r.uptodate)
    out = demo.root / "out" / "demo"
    assert (out / "demo-sda.vmdk").exists() and not (out / "demo-sda.qcow2").exists()
    # vCPUs and memory: only the descriptors
    demo.write("demo.toml", 'formats = ["vmdk"]\nvcpus = 2\nmemory = 1024\n')
    r = demo.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == {"kickstart", "descriptor", "publish"}, r.out
    image = etree.parse(str(out / "demo.xml"))
    assert image.findtext("domain/devices/vcpu") == "2"
    assert image.findtext("domain/devices/memory") == str(1024 * 1024)
    # a no-op run does nothing
    r = demo.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == set() and r.ran == ["appliance:demo"], r.out


def test_ovirt_wui_two_disks_in_the_descriptor(workspace: Workspace) -> None:
    copy_config(workspace, "ovirt-wui")
    mirrors = "fedora=file://$ksbake_repo/base,updates=file://$ksbake_repo/updates"
    r = workspace.doit("appliance:ovirt-wui", extra_env={"KSBAKE_MIRRORS": mirrors})
    ok(r)
    out = workspace.root / "out" / "ovirt-wui"
    image = etree.parse(str(out / "ovirt-wui.xml"))
    drives = [
        (d.get("disk"), d.get("target")) for d in image.iterfind("domain/boot[@type='hvm']/drive")
    ]
    assert drives == [("ovirt-wui-sda.qcow2", "hda"), ("ovirt-wui-sdb.qcow2", "hdb")]
    # the bundled kernel boots as a Xen PV guest too: the paravirt boot names the same disks
    xen = [d.get("target") for d in image.iterfind("domain/boot[@type='xen']/drive")]
    assert xen == ["xvda", "xvdb"]
    assert [d.get("file") for d in image.iterfind("storage/disk")] == [
        "ovirt-wui-sda.qcow2",
        "ovirt-wui-sdb.qcow2",
    ]
    assert len(image.findall("domain/devices/interface")) == 1  # one network line
    domain = etree.parse(str(out / "ovirt-wui.libvirt.xml"))
    assert [t.get("dev") for t in domain.iterfind("devices/disk/target")] == ["vda", "vdb"]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        ('formats = ["qcow3"]\n', ("demo.toml", "formats", "qcow3")),
        ('vmdk_subformat = "twoGbMaxExtentFlat"\n', ("demo.toml", "vmdk_subformat")),
        ('vcpus = "two"\n', ("demo.toml", "vcpus", "integer")),
        ("colour = 1\n", ("demo.toml", "unknown key 'colour'")),
    ],
)
def test_invalid_settings(workspace: Workspace, toml: str, needles: tuple[str, ...]) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", toml)
    fails(workspace, *needles)


def test_failed_build_leaves_published_appliance_intact(demo: Workspace) -> None:
    ok(demo.doit("appliance:demo"))
    out = demo.root / "out" / "demo"
    before = snapshot(out)
    # fails in the middle of the chain (settings that cannot work fail at load now)
    demo.write("demo.ks", demo_kickstart() + "\n%post --erroronfail\nexit 3\n%end\n")
    fails(demo, "failed with exit code 3")
    assert snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".demo.")]


def test_output_directory_not_writable(demo: Workspace) -> None:
    ok(demo.doit("appliance:demo"))
    out_root = demo.root / "out"
    before = snapshot(out_root / "demo")
    demo.write("demo.toml", 'formats = ["qcow2", "vmdk"]\nmemory = 768\n')
    subprocess.run(["chattr", "+i", str(out_root)], check=True)  # even root cannot write
    try:
        fails(demo, "cannot publish demo into", str(out_root))
    finally:
        subprocess.run(["chattr", "-i", str(out_root)], check=True)
    assert snapshot(out_root / "demo") == before


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A store on a 600 MiB loop-mounted filesystem (auto-cleared loop device)."""
    image, mnt = tmp_path / "small.img", tmp_path / "small"
    subprocess.run(["truncate", "-s", "600M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        shared_debs = Path(__file__).resolve().parents[1] / "cache" / "test-store" / "debs"
        if shared_debs.is_dir():
            (mnt / "debs").symlink_to(shared_debs)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_during_conversion(workspace: Workspace, small_store: Path) -> None:
    ws = Workspace(workspace.root, small_store)
    ws.write("demo.ks", demo_kickstart())
    ws.write("demo.toml", 'formats = ["qcow2"]\n')
    ok(ws.doit("appliance:demo"))
    out = ws.root / "out" / "demo"
    before = snapshot(out)
    free = shutil.disk_usage(small_store).free
    subprocess.run(
        ["fallocate", "-l", str(free - 2 * 1024 * 1024), str(small_store / "filler")], check=True
    )
    ws.write("demo.toml", 'formats = ["qcow2", "vdi"]\nqcow2_compression = "none"\n')
    fails(ws, "no space left on device")
    assert snapshot(out) == before
    assert not list((small_store / "staging").iterdir())
    (small_store / "filler").unlink()


def test_full_store_while_building_disks_says_so(workspace: Workspace, small_store: Path) -> None:
    ws = Workspace(workspace.root, small_store)
    ws.write("demo.ks", demo_kickstart())
    ok(ws.doit("disks:demo"))
    filler = small_store / "filler"  # up to "no space left", reserved blocks included
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    ws.write("demo.ks", demo_kickstart().replace("--size=192", "--size=200"))  # layout only
    r = ws.doit("disks:demo")
    assert r.rc != 0
    assert "no space left on device" in r.err and "does not fit in its partition" not in r.err
    assert not list((small_store / "staging").iterdir())
    filler.unlink()


# -- libvirt --------------------------------------------------------------------------------


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


@pytest.fixture
def libvirtd() -> Iterator[None]:
    """virtlogd + libvirtd (no systemd here); the daemons this test started are stopped."""
    started = []
    for daemon in ("virtlogd", "libvirtd"):
        if not _running(daemon):
            subprocess.run([daemon, "-d"], check=True)
            started.append(daemon)
    for _ in range(100):
        if (
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "version"], capture_output=True
            ).returncode
            == 0
        ):
            break
        time.sleep(0.1)
    try:
        yield
    finally:
        for daemon in reversed(started):
            subprocess.run(["pkill", "-x", daemon], check=False)


@pytest.mark.boot
def test_libvirt_domain_boots(demo: Workspace, libvirtd: None) -> None:
    demo.write("demo.toml", 'formats = ["qcow2"]\n')
    ok(demo.doit("appliance:demo"))
    out = demo.root / "out" / "demo"
    # libvirt runs QEMU as its own user and writes to the disk: give it a private copy in a
    # directory it can reach, so the published (hardlinked) file stays untouched
    images = Path(tempfile.mkdtemp(prefix="ksbake-test-", dir="/var/lib/libvirt/images"))
    os.chmod(images, 0o755)
    disk = images / "demo-sda.qcow2"
    shutil.copy(out / "demo-sda.qcow2", disk)
    log = images / "serial.log"
    domain = etree.parse(str(out / "demo.libvirt.xml"))
    name = f"ksbake-test-{os.getpid()}"
    domain.find("name").text = name
    domain.find("devices/disk/source").set("file", str(disk))
    for iface in domain.findall("devices/interface"):  # no libvirt 'default' network needed
        iface.getparent().remove(iface)
    serial = domain.find("devices/serial")
    serial.set("type", "file")
    etree.SubElement(serial, "source", path=str(log))
    domain.find("devices/console").set("type", "file")
    etree.SubElement(domain.find("devices/console"), "source", path=str(log))
    xml = images / "domain.xml"
    domain.write(str(xml))
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    subprocess.run([*virsh, "define", str(xml)], check=True, capture_output=True)
    try:
        subprocess.run([*virsh, "start", name], check=True, capture_output=True)
        deadline = time.monotonic() + 240
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "login:" in text:
                break
            time.sleep(1)
        assert "KSBAKE-BOOT-OK" in text and "login:" in text, text[-2000:]
    finally:
        subprocess.run([*virsh, "destroy", name], capture_output=True)
        subprocess.run([*virsh, "undefine", "--nvram", name], capture_output=True)
        shutil.rmtree(images, ignore_errors=True)
    assert (
        sha256(out / "demo-sda.qcow2")
        == dict(
            reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines()
        )["demo-sda.qcow2"]
    )


def test_published_hardlink_written_to_is_rebuilt_and_republished(demo: Workspace) -> None:
    demo.write("demo.toml", 'formats = ["qcow2"]\npublish = "hardlink"\n')
    ok(demo.doit("appliance:demo"))
    out = demo.root / "out" / "demo"
    assert (out / "demo-sda.qcow2").stat().st_nlink >= 2  # linked, not copied
    before = snapshot(out)
    # what a read-write boot of the published hardlink does to the cached object
    with open(out / "demo-sda.qcow2", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"guest wrote here")
    r = demo.doit("appliance:demo")
    ok(r)
    assert "was modified after it was built" in r.err
    assert "convert-qcow2" in r.layers_run() and "publish" in r.layers_run(), r.out
    assert {"lock:demo", "packages:demo", "disks:demo"} <= set(r.uptodate)
    after = snapshot(out)
    assert after["demo-sda.qcow2"][1] == before["demo-sda.qcow2"][1]  # pristine bytes again
    assert after["demo-sda.qcow2"][0] != before["demo-sda.qcow2"][0]  # a new object
    ok(demo.doit("appliance:demo"))
    assert demo.doit("appliance:demo").layers_run() == set()
