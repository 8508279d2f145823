"""Acceptance for disks and boot: kickstart `part` layouts → bootable disks, booted in QEMU.

Real builds from the bundled repository over the shared test store; boots use TCG here
(`accel` setting). Each boot takes 10-15 s, so there are only the few the issue asks for.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, fails, guest_mounts, ok

pytestmark = pytest.mark.slow

DEMO_PARTS = (
    "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
    "part / --fstype=ext4 --size=192 --grow --ondisk=sda\n"
)


def with_parts(parts: str, disklabel: str = "msdos") -> str:
    text = demo_kickstart().replace(DEMO_PARTS, parts)
    return text.replace("--disklabel=msdos", f"--disklabel={disklabel}")


@pytest.mark.boot
def test_demo_bios_msdos_boots(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    r = workspace.doit("appliance:demo", "boottest:demo")
    ok(r)
    assert "boottest:demo: 'login:' on the serial console after" in r.out
    # which GRUB, in the summary: the demo tree has no GRUB modules of its own
    assert "bootloader: GRUB modules: i386-pc from the host (/usr/lib/grub/i386-pc" in r.out
    seen = guest_mounts(workspace, "demo")
    assert seen["/"] == ("/dev/vda2", "ext4") and seen["/boot"] == ("/dev/vda1", "ext4")
    # a second run boots nothing and builds nothing
    again = workspace.doit("appliance:demo", "boottest:demo")
    ok(again)
    assert "boottest:demo" in again.uptodate and "bootloader:demo" in again.uptodate


@pytest.mark.boot
def test_gpt_biosboot_boots(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks",
        with_parts("part biosboot --fstype=biosboot --size=1\n" + DEMO_PARTS, disklabel="gpt"),
    )
    ok(workspace.doit("boottest:demo"))
    assert set(guest_mounts(workspace, "demo")) >= {"/", "/boot"}


@pytest.mark.boot
def test_ext4_boot_beside_an_xfs_root_boots(workspace: Workspace) -> None:
    parts = (
        "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
        "part / --fstype=xfs --size=320 --grow --ondisk=sda\n"
    )
    workspace.write("demo.ks", with_parts(parts))
    ok(workspace.doit("boottest:demo"))
    seen = guest_mounts(workspace, "demo")
    assert seen["/"] == ("/dev/vda2", "xfs") and seen["/boot"] == ("/dev/vda1", "ext4")


@pytest.mark.boot
def test_uefi_boots_with_ovmf(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks",
        with_parts("part /boot/efi --fstype=efi --size=64\n" + DEMO_PARTS, disklabel="gpt"),
    )
    workspace.write("demo.toml", 'firmware = "uefi"\n')
    r = workspace.doit("boottest:demo")
    ok(r)
    assert "(uefi, accel=tcg" in r.out
    assert guest_mounts(workspace, "demo")["/boot/efi"][1] == "vfat"


@pytest.mark.boot
def test_two_disks_like_ovirt_wui_mount_data(workspace: Workspace) -> None:
    workspace.write(
        "wui.ks",
        with_parts(
            "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
            "part / --fstype=ext4 --size=192 --ondisk=sda\n"
            "part swap --size=32 --ondisk=sda\n"
            "part /data --fstype=ext4 --size=64 --grow --ondisk=sdb\n"
        ),
    )
    workspace.write("wui.toml", '[disk_sizes]\nsdb = "128MiB"\n')
    r = workspace.doit("boottest:wui")
    ok(r)
    seen = guest_mounts(workspace, "wui")
    assert seen["/data"] == ("/dev/vdb1", "ext4")
    assert seen["/boot"][0].startswith("/dev/vda")
    key = json.loads((workspace.cache / "build/wui/bootloader.ref").read_text())["key"]
    result = json.loads((workspace.store / "objects/bootloader" / key / "result.json").read_text())
    assert [d["name"] for d in result["disks"]] == ["sda", "sdb"]
    assert (workspace.store / "objects/bootloader" / key / "sdb.raw").stat().st_size == 128 << 20


def test_layout_and_bootloader_edits_rerun_only_their_layers(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    ok(workspace.doit("appliance:demo"))
    # a part size: disks and bootloader rerun; lock, packages, config do not
    workspace.write("demo.ks", demo_kickstart().replace("--size=64", "--size=72"))
    r = workspace.doit("appliance:demo")
    ok(r)
    assert {"disks:demo", "bootloader:demo"} <= set(r.ran), r.out
    assert not {"lock:demo", "packages:demo", "config:demo"} & set(r.ran), r.out
    after = {"convert-qcow2", "descriptor", "publish"}  # what follows them reruns too
    assert r.layers_run() == {"kickstart", "disks", "bootloader"} | after
    # bootloader --append: only the bootloader layer
    edited = demo_kickstart().replace("--size=64", "--size=72")
    workspace.write(
        "demo.ks", edited.replace('--append="console=ttyS0"', '--append="console=ttyS0 quiet"')
    )
    r = workspace.doit("appliance:demo")
    ok(r)
    assert r.layers_run() == {"kickstart", "bootloader"} | after, r.out
    key = json.loads((workspace.cache / "build/demo/bootloader.ref").read_text())["key"]
    result = json.loads((workspace.store / "objects/bootloader" / key / "result.json").read_text())
    assert result["cmdline"].endswith("console=ttyS0 quiet")


# -- bad input: one clear error, nothing cached ---------------------------------------------


def test_partitions_that_do_not_fit_a_fixed_disk(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", '[disk_sizes]\nsda = "200MiB"\n')
    fails(workspace, "demo.ks:12", "need 257 MiB", "200 MiB")
    assert not (workspace.cache / "build/demo/inputs/disks.json").exists()


def test_tree_larger_than_its_partition(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks",
        demo_kickstart().replace(
            "part / --fstype=ext4 --size=192 --grow", "part / --fstype=ext4 --size=4"
        ),
    )
    r = fails(workspace, "/ (ext4", "does not fit", "MiB")
    assert "disks:demo" in r.ran and not (workspace.cache / "build/demo/disks.ref").exists()


def test_unknown_fstype_and_unsupported_construct(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks", demo_kickstart().replace("--fstype=ext4 --size=64", "--fstype=ntfs --size=64")
    )
    fails(workspace, "demo.ks:12", "ntfs")
    workspace.write("demo.ks", demo_kickstart().replace(DEMO_PARTS, "autopart --type=thinp\n"))
    fails(workspace, "demo.ks:12", "autopart --type=thinp is not supported", "--type=lvm")


def test_no_kernel_in_the_tree(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart().replace("@core\nkernel\n", "@core\n"))
    fails(workspace, "no kernel", "kernel")
    assert not (workspace.cache / "build/demo/bootloader.ref").exists()


def test_missing_host_tool_names_the_packages(workspace: Workspace, tmp_path: Path) -> None:
    # a PATH where everything but grub-mkimage is found
    fake = tmp_path / "bin"
    fake.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for tool in Path(d).iterdir() if Path(d).is_dir() else []:
            if tool.name != "grub-mkimage" and not (fake / tool.name).exists():
                (fake / tool.name).symlink_to(tool)
    workspace.write(
        "demo.ks",
        demo_kickstart().replace('--append="console=ttyS0"', '--append="console=ttyS0 notool"'),
    )
    workspace.env = {"PATH": str(fake)}
    fails(workspace, "grub-mkimage", "grub-common", "grub2-tools")


def test_killed_disk_build_commits_nothing(workspace: Workspace) -> None:
    from ksbake.layers import by_name
    from ksbake.paths import Paths
    from ksbake.runner import current_key
    from ksbake.store import remove_tree

    parts = DEMO_PARTS.replace("--size=192", f"--size={200 + os.getpid() % 50}")
    workspace.write("demo.ks", with_parts(parts))
    ok(workspace.doit("config:demo"))
    # the shared store may hold this layout from an earlier run: then nothing would build
    paths = Paths.from_env(environ=workspace.environ())
    remove_tree(workspace.store / "objects/disks" / current_key(paths, "demo", by_name("disks")))
    staging = workspace.store / "staging"
    before = set(staging.glob("disks-*")) if staging.exists() else set()
    proc = workspace.spawn("disks:demo")
    deadline = time.monotonic() + 60
    started = set()
    while time.monotonic() < deadline and not started:
        started = set(staging.glob("disks-*")) - before
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started, "the disk build never started"
    key = next(iter(started)).name.split("-", 1)[1].split(".")[0]
    time.sleep(0.3)
    assert not (workspace.store / "objects/disks" / key).exists()
    assert str(workspace.store) not in Path("/proc/mounts").read_text()
    r = workspace.doit("disks:demo")
    ok(r)
    assert (workspace.store / "objects/disks" / key / "meta.json").exists()
    assert not list(staging.glob(f"disks-{key}.*"))
