"""The bundled kernel's initramfs boots an LVM root and a btrfs root on a subvolume, for real.

The disk images are made by hand here, on a host without device-mapper: lvm2 writes the
PV/VG/LV metadata to a loop device of the partition (``--driverloaded n``), mkfs.ext4 ``-d``
builds the root at its LV's offset, mkswap and mkfs.btrfs write the other LVs through loop
devices at their offsets; the btrfs disk gets its subvolumes through a loop mount. The root
tree is the demo appliance's installed packages (``demo_tree``: the session's bundled
repository, so this kernel package's initramfs and modules) with an fstab and a boot hook
that reports swap and /home.

QEMU boots the kernel package's vmlinuz and initramfs directly (``-kernel``/``-initrd``, the
command line as anaconda writes it) under TCG, until ksbake-init's markers and power-off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ksbake import qemu
from ksbake.qemu import BootResult

pytestmark = [pytest.mark.slow, pytest.mark.boot]

MiB = 1 << 20
TOOLS = ("lvm", "mkfs.btrfs", "btrfs", "sfdisk", "losetup", "mkswap", "mkfs.ext4", qemu.QEMU)
BOOT_TIMEOUT = 90  # seconds; a boot takes 10-15 s under TCG here
VG = "ksbt"

# Reports what ksbake-init set up from /etc/fstab (it runs before the boot markers).
REPORT_HOOK = """#!/bin/sh
sed 's/^/KSBAKE-SWAP /' /proc/swaps
for node in /dev/mapper/*; do echo "KSBAKE-DEV $node"; done
sed 's/^/KSBAKE-HOME /' /home/marker
"""


def _need_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"missing tools {missing}: install lvm2, btrfs-progs, fdisk, util-linux, "
            "e2fsprogs and qemu-system-x86"
        )


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, env=env
    )
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@contextmanager
def loop_device(image: Path, offset: int, size: int) -> Iterator[str]:
    """A loop device over ``size`` bytes of ``image`` at ``offset``, detached afterwards."""
    device = sh("losetup", "-f", "--show", "-o", offset, "--sizelimit", size, image).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@contextmanager
def mounted(device: str, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    sh("mount", device, mountpoint)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=False)


def partitioned_disk(path: Path, size: int, type_: str) -> tuple[int, int]:
    """A sparse disk image with one msdos partition from 1 MiB to the end: (offset, size)."""
    with open(path, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(
        ["sfdisk", "-q", str(path)],
        input=f"label: dos\nstart=2048, type={type_}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return MiB, size - MiB


def root_tree(demo_tree: Path, dest: Path, fstab: str) -> Path:
    """The demo appliance's tree without /boot's files (QEMU loads the kernel), with
    ``fstab`` and the report hook."""
    sh("cp", "-a", f"{demo_tree}/.", dest)
    for entry in (dest / "boot").iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (dest / "etc/fstab").write_text(fstab)
    hook = dest / "etc/ksbake-init.d/50-report-volumes"
    hook.write_text(REPORT_HOOK)
    hook.chmod(0o755)
    return dest


def boot(demo_tree: Path, disk: Path, cmdline: str, log: Path) -> BootResult:
    """Boot the kernel package's vmlinuz + initramfs on ``disk`` until ksbake-init powers
    off (ksbake.poweroff), with ksbake.qemu's argv and watcher."""
    (kernel,) = demo_tree.glob("boot/vmlinuz-*")
    (initramfs,) = demo_tree.glob("boot/initramfs-*.img")
    # -kernel takes boot index 0: the disk gets none
    argv = [a.replace(",bootindex=0", "") for a in qemu.build_argv([(disk, "raw")], log=log)]
    argv += ["-kernel", str(kernel), "-initrd", str(initramfs)]
    argv += ["-append", f"{cmdline} console=ttyS0 ksbake.poweroff"]
    log.write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="ksbake-qemu-") as tmp:
        result = qemu._watch(
            argv, log, Path(tmp) / "qemu.stderr", "KSBAKE-BOOT-OK", BOOT_TIMEOUT, True
        )
    print(f"{disk.name}: KSBAKE-BOOT-OK after {result.seconds:.1f} s ({cmdline})")
    assert "ksbake initramfs:" not in result.log_text, result.log_text[-3000:]
    assert "reboot: Power down" in result.log_text, result.log_text[-3000:]
    return result


def lines(result: BootResult, prefix: str) -> list[str]:
    return [
        line.split(" ", 1)[1].strip()
        for line in result.log_text.splitlines()
        if line.startswith(f"{prefix} ")
    ]


def mounts(result: BootResult) -> dict[str, tuple[str, str, str]]:
    """mountpoint -> (device, fstype, options) of the guest's KSBAKE-MOUNT lines."""
    return {point: (dev, fstype, opts) for dev, point, fstype, opts in result.mounts()}


# -- LVM ------------------------------------------------------------------------------------


def lvm(command: str, *, etc: Path, device: str, driverloaded: bool = False) -> str:
    """``lvm COMMAND`` (split on spaces) of the host's lvm2, seeing only ``device``, keeping
    nothing in /etc/lvm; without device-mapper (``--driverloaded n``) unless asked for."""
    config = (
        f'devices{{filter=["a|^{device}$|","r|.*|"] obtain_device_list_from_udev=0 '
        "use_devicesfile=0} activation{udev_sync=0 udev_rules=0} backup{backup=0 archive=0}"
    )
    name, *args = command.split()
    dm = [] if driverloaded else ["--driverloaded", "n"]
    env = {**os.environ, "LVM_SYSTEM_DIR": str(etc), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    return sh("lvm", name, *dm, "--config", config, *args, env=env)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied afterwards but for the serial logs (disks, trees: ~100 MB)."""
    yield tmp_path
    for entry in tmp_path.iterdir():
        if os.path.ismount(entry):  # a failed umount: leave it for a person to look at
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif not entry.name.endswith(".log"):
            entry.unlink()


def test_lvm_root_with_swap_and_btrfs_home_on_lvs_boots(demo_tree: Path, scratch: Path) -> None:
    """root=UUID= of an ext4 LV with anaconda's rd.lvm.lv= for root and swap; /home is a
    btrfs LV that the command line does not name (autoactivated), mounted by UUID after
    switch_root with the btrfs module loaded on demand from the root's module tree."""
    _need_tools()
    disk = scratch / "lvm.raw"
    part_offset, part_size = partitioned_disk(disk, 300 * MiB, "8e")
    root_uuid, swap_uuid, home_uuid = (str(uuid.uuid4()) for _ in range(3))
    fstab = (
        f"UUID={root_uuid} / ext4 defaults 1 1\n"
        f"/dev/mapper/{VG}-swap swap swap defaults 0 0\n"
        f"UUID={home_uuid} /home btrfs defaults 0 0\n"
    )
    tree = root_tree(demo_tree, scratch / "root", fstab)
    home = scratch / "home"
    home.mkdir()
    (home / "marker").write_text("home on an LV\n")
    etc = scratch / "lvm-etc"
    etc.mkdir()

    with loop_device(disk, part_offset, part_size) as pv:
        try:
            lvm(f"pvcreate -q {pv}", etc=etc, device=pv)
            lvm(f"vgcreate -q {VG} {pv}", etc=etc, device=pv)
            for name, size in (("root", 64), ("swap", 16), ("home", 128)):
                lvm(f"lvcreate -q -an -Zn -L {size}M -n {name} {VG}", etc=etc, device=pv)
            units = "--noheadings --units b --nosuffix -o"
            pe_start = int(lvm(f"pvs {units} pe_start {pv}", etc=etc, device=pv))
            extent = int(lvm(f"vgs {units} vg_extent_size {VG}", etc=etc, device=pv))
            report = lvm(f"lvs --noheadings -o lv_name,seg_pe_ranges {VG}", etc=etc, device=pv)
        finally:  # never active here (no device-mapper); on a host with it, make sure
            with contextlib.suppress(AssertionError):
                lvm(f"vgchange -an {VG}", etc=etc, device=pv, driverloaded=True)
    # "root /dev/loop3:0-15": linear LVs, one contiguous range each
    offsets = {}
    for row in report.splitlines():
        name, ranges = row.split()
        first = int(ranges.rsplit(":", 1)[1].split("-")[0])
        offsets[name] = part_offset + pe_start + first * extent

    sh(
        "mkfs.ext4", "-q", "-F", "-U", root_uuid, "-d", tree,
        "-E", f"offset={offsets['root']},lazy_journal_init=1", disk, f"{64 * 1024}k",
    )  # fmt: skip
    with loop_device(disk, offsets["swap"], 16 * MiB) as swap:
        sh("mkswap", "-U", swap_uuid, swap)
    with loop_device(disk, offsets["home"], 128 * MiB) as dev:
        sh("mkfs.btrfs", "-q", "-U", home_uuid, "--rootdir", home, dev)

    result = boot(
        demo_tree,
        disk,
        f"root=UUID={root_uuid} ro rd.lvm.lv={VG}/root rd.lvm.lv={VG}/swap",
        scratch / "lvm-boot.log",
    )
    seen = mounts(result)
    assert seen["/"][:2] == (f"/dev/mapper/{VG}-root", "ext4"), seen
    home_dev, home_type, _ = seen["/home"]
    assert home_type == "btrfs" and home_dev.startswith(("/dev/dm-", "/dev/mapper/")), seen
    assert lines(result, "KSBAKE-HOME") == ["home on an LV"]
    swaps = [row.split()[0] for row in lines(result, "KSBAKE-SWAP")[1:]]
    assert swaps == [f"/dev/mapper/{VG}-swap"], lines(result, "KSBAKE-SWAP")
    devs = set(lines(result, "KSBAKE-DEV"))
    assert {f"/dev/mapper/{VG}-{lv}" for lv in ("root", "swap", "home")} <= devs, devs
    assert result.seconds < 60


# -- btrfs ----------------------------------------------------------------------------------


def test_btrfs_root_on_a_subvolume_boots(demo_tree: Path, scratch: Path) -> None:
    """rootflags=subvol=root without rootfstype= (the initramfs finds btrfs itself, loads
    only its module); /home is the "home" subvolume of the same filesystem, from fstab."""
    _need_tools()
    disk = scratch / "btrfs.raw"
    part_offset, part_size = partitioned_disk(disk, 300 * MiB, "83")
    fs_uuid = str(uuid.uuid4())
    fstab = f"UUID={fs_uuid} / btrfs subvol=root 0 0\nUUID={fs_uuid} /home btrfs subvol=home 0 0\n"
    tree = root_tree(demo_tree, scratch / "root", fstab)
    with loop_device(disk, part_offset, part_size) as dev:
        sh("mkfs.btrfs", "-q", "-U", fs_uuid, "-L", "ksbt", dev)
        with mounted(dev, scratch / "mnt") as mnt:
            sh("btrfs", "-q", "subvolume", "create", mnt / "root")
            sh("btrfs", "-q", "subvolume", "create", mnt / "home")
            sh("cp", "-a", f"{tree}/.", mnt / "root")
            (mnt / "home" / "marker").write_text("home on a btrfs subvolume\n")

    result = boot(
        demo_tree, disk, f"root=UUID={fs_uuid} ro rootflags=subvol=root", scratch / "btrfs.log"
    )
    seen = mounts(result)
    assert seen["/"][:2] == ("/dev/vda1", "btrfs"), seen
    assert "subvol=/root" in seen["/"][2].split(","), seen
    assert seen["/home"][:2] == ("/dev/vda1", "btrfs"), seen
    assert "subvol=/home" in seen["/home"][2].split(","), seen
    assert lines(result, "KSBAKE-HOME") == ["home on a btrfs subvolume"]
    # /init read the type from the superblock: xfs (tried before btrfs) was never loaded
    assert "SGI XFS" not in result.log_text
    assert result.seconds < 60
