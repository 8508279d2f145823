"""The disks layer's worker: partition tables, filesystems split by mount point, fstab, ids.

The slow tests build real (small, sparse) images from fake trees through ``sandbox.call``, as
the layer does, then read them back WITHOUT mounting: pyparted for the table, debugfs/dumpe2fs
(``image?offset=N``) for ext, mtools for vfat, blkid for swap, xfs_db for xfs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import planned

from ksbake import sandbox
from ksbake.errors import BuildError
from ksbake.layers import l5_disks as disks
from ksbake.layers.l5_disks import ext, model, sparse, split, table
from ksbake.layout import DiskPlan, MiB, PartitionPlan, Plan

TOOLS = ("mkfs.ext4", "debugfs", "dumpe2fs", "mkfs.vfat", "mcopy", "mdir", "mkswap", "blkid")
XFS_TOOLS = ("mkfs.xfs", "xfs_db")
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
OLD = 978307200  # 2001-01-01


def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts, device nodes)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {missing}")


# -- fixtures: a fake two-layer tree ---------------------------------------------------------


def make_tree(base: Path) -> list[Path]:
    """A packages-like lower tree and a config-like upper layer; returns [upper, lower]."""
    lower = base / "packages"
    upper = base / "config"
    for d in ("etc", "boot/efi/EFI/BOOT", "usr/bin", "dev", "data", "var/log"):
        (lower / d).mkdir(parents=True, exist_ok=True)
    (lower / "etc/fstab").write_text("# fstab shipped by a package\n/dev/sda1 / ext4 rw 0 0\n")
    (lower / "etc/hostname").write_text("lower\n")
    (lower / "etc/removed").write_text("whited out by the upper layer\n")
    (lower / "boot/vmlinuz-6.1.0-test").write_bytes(os.urandom(3 * MiB))
    (lower / "boot/initramfs-6.1.0-test.img").write_bytes(os.urandom(1 * MiB))
    (lower / "boot/efi/EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + os.urandom(200_000))
    (lower / "boot/efi/EFI/BOOT/grub.cfg").write_text("set timeout=1\n")
    tool = lower / "usr/bin/tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    os.chmod(tool, 0o4755)
    os.link(tool, lower / "usr/bin/tool-hardlink")
    os.symlink("tool", lower / "usr/bin/tool-symlink")
    ping = lower / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF fake ping")
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.mknod(lower / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(lower / "dev/null", 0o666)
    (lower / "data/payload").write_text("data payload\n")
    (lower / "var/log/empty.log").write_text("")
    os.chmod(lower / "boot", 0o555)
    os.chmod(lower, 0o555)
    (upper / "etc").mkdir(parents=True)
    os.chmod(upper, 0o711)  # the merged root is the topmost layer's
    (upper / "etc/hostname").write_text("appliance\n")
    (upper / "etc/motd").write_text("configured\n")
    os.mknod(upper / "etc/removed", stat.S_IFCHR, os.makedev(0, 0))  # overlay whiteout
    set_old_atimes([upper, lower])
    return [upper, lower]


WATCHED = ("usr/bin/tool", "boot/vmlinuz-6.1.0-test", "etc/motd")


def set_old_atimes(layers: list[Path]) -> None:
    """What the build must not change: atimes (mkfs -d copies them into the image)."""
    for layer in layers:
        for rel in WATCHED:
            path = layer / rel
            if path.exists():
                os.utime(path, (OLD, path.stat().st_mtime))


@pytest.fixture
def layers(tmp_path: Path) -> list[Path]:
    return make_tree(tmp_path / "layers")


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree but atimes (checked apart); read without changing them."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            xattrs = sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
            )
            digest = None
            if stat.S_ISREG(st.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME)  # reading must not touch atime
                with os.fdopen(fd, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            found[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                st.st_rdev,
                xattrs,
                digest,
            )
    return found


def leftovers(tmp_path: Path) -> list[str]:
    """Mounts and loop devices that mention the test's directory."""
    text = Path("/proc/self/mountinfo").read_text()
    found = [line for line in text.splitlines() if str(tmp_path) in line]
    if shutil.which("losetup"):
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        found += [line for line in loops.splitlines() if str(tmp_path) in line]
    return found


def build(plan: Plan, layers: list[Path], out: Path, seed: str = "00ff" * 8) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return sandbox.call(
        "ksbake.layers.l5_disks:make_disks",
        {
            "plan": plan.to_dict(),
            "layers": [str(p) for p in layers],
            "out_dir": str(out),
            "seed": seed,
        },
    )


def sh(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True)
    return proc.stdout


def debugfs(image: Path, offset: int, command: str) -> str:
    return sh("debugfs", "-R", command, f"{image}?offset={offset}")


def ext_ls(image: Path, offset: int, path: str) -> set[str]:
    out = debugfs(image, offset, f"ls -p {path}")
    names = {line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6}
    return names - {".", ".."}


def ext_stat(image: Path, offset: int, path: str) -> str:
    return debugfs(image, offset, f"stat {path}")


def ext_mode(image: Path, offset: int, path: str) -> int:
    match = re.search(r"Mode:\s+(\d+)", ext_stat(image, offset, path))
    assert match, path
    return int(match.group(1), 8)


def super_info(image: Path, offset: int) -> dict[str, str]:
    out = sh("dumpe2fs", "-h", f"{image}?offset={offset}")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def blkid(image: Path, offset: int) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", "-O", str(offset), image)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def part(result: dict[str, Any], disk: str, number: int) -> dict[str, Any]:
    d = next(d for d in result["disks"] if d["name"] == disk)
    return next(p for p in d["partitions"] if p["number"] == number)


def assert_sparse(image: Path) -> None:
    st = image.stat()
    assert st.st_blocks * 512 < st.st_size // 2, f"{image} is not sparse"


def gpt_header(image: Path, lba: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(lba * 512)
        return f.read(512)


# -- slow: real images ---------------------------------------------------------------------


@pytest.mark.slow
def test_msdos_boot_and_root(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    import parted

    before = {str(layer): snapshot(layer) for layer in layers}
    plan = planned(
        "part /boot --fstype=ext4 --size=64\n"
        "part / --fstype=ext4 --size=120 --label=root\n"
        "part swap --size=15\n"
    )
    out = tmp_path / "out"
    result = build(plan, layers, out)
    image = out / "sda.raw"
    assert sorted(os.listdir(out)) == ["sda.raw"]  # no scratch left behind
    assert leftovers(tmp_path) == []
    assert image.stat().st_size == 200 * MiB
    assert_sparse(image)

    # the table, read back with pyparted
    pdisk = parted.newDisk(parted.getDevice(str(image)))
    assert pdisk.type == "msdos"
    got = {p.number: p for p in pdisk.partitions}
    assert sorted(got) == [1, 2, 3]
    for pp in plan.disks[0].partitions:
        assert got[pp.number].geometry.start * 512 == pp.start
        assert got[pp.number].geometry.length * 512 == pp.size
        assert got[pp.number].type == parted.PARTITION_NORMAL
    assert got[1].getFlag(parted.PARTITION_BOOT)
    assert not got[2].getFlag(parted.PARTITION_BOOT)
    with open(image, "rb") as f:
        f.seek(440)
        ident = struct.unpack("<I", f.read(4))[0]
    assert result["disks"][0]["identifier"] == f"0x{ident:08x}"

    boot, root, swap = (part(result, "sda", n) for n in (1, 2, 3))
    assert super_info(image, boot["start"])["Filesystem UUID"] == boot["uuid"]
    assert super_info(image, root["start"])["Filesystem UUID"] == root["uuid"]
    assert super_info(image, root["start"])["Filesystem volume name"] == "root"
    assert blkid(image, swap["start"])["TYPE"] == "swap"
    assert blkid(image, swap["start"])["UUID"] == swap["uuid"]
    assert result["mounts"]["/"]["uuid"] == root["uuid"]

    # / holds an empty /boot; /boot holds the kernel
    r, b = root["start"], boot["start"]
    assert ext_ls(image, r, "/boot") == set()
    assert {"vmlinuz-6.1.0-test", "initramfs-6.1.0-test.img", "efi"} <= ext_ls(image, b, "/")
    assert ext_ls(image, b, "/efi") == {"EFI"}  # no separate ESP in this layout
    assert ext_ls(image, r, "/data") == {"payload"}
    # modes of the merged tree (the topmost layer's root), also on the fs roots
    assert ext_mode(image, r, "/") & 0o7777 == 0o711
    assert ext_mode(image, r, "/boot") & 0o7777 == 0o555
    assert ext_mode(image, b, "/") & 0o7777 == 0o555

    # the upper layer wins, its whiteout hides, fstab is ours (not the package's)
    assert debugfs(image, r, "cat /etc/hostname") == "appliance\n"
    assert debugfs(image, r, "cat /etc/motd") == "configured\n"
    assert "removed" not in ext_ls(image, r, "/etc")
    fstab = debugfs(image, r, "cat /etc/fstab")
    assert fstab == result["fstab"]
    assert "package" not in fstab
    lines = [line.split() for line in fstab.splitlines() if not line.startswith("#")]
    assert [f"UUID={root['uuid']}", "/", "ext4", "defaults", "0", "1"] in lines
    assert [f"UUID={boot['uuid']}", "/boot", "ext4", "defaults", "0", "2"] in lines
    assert [f"UUID={swap['uuid']}", "none", "swap", "defaults", "0", "0"] in lines

    # what mkfs -d keeps: setuid, hardlinks, symlinks, device nodes, capabilities
    assert ext_mode(image, r, "/usr/bin/tool") == 0o4755  # setuid kept
    ino = [
        re.search(r"Inode: (\d+)", ext_stat(image, r, f"/usr/bin/{n}"))
        for n in ("tool", "tool-hardlink")
    ]
    assert ino[0] and ino[1] and ino[0].group(1) == ino[1].group(1)
    assert 'Fast link dest: "tool"' in ext_stat(image, r, "/usr/bin/tool-symlink")
    assert "Device major/minor number: 01:03" in ext_stat(image, r, "/dev/null")
    assert "security.capability" in debugfs(image, r, "ea_list /usr/bin/ping")

    # the layers are untouched (atimes not bumped by the reads, nothing written)
    assert os.stat(layers[1] / "usr/bin/tool").st_atime == OLD
    assert os.stat(layers[1] / "boot/vmlinuz-6.1.0-test").st_atime == OLD
    assert os.stat(layers[0] / "etc/motd").st_atime == OLD
    assert {str(layer): snapshot(layer) for layer in layers} == before
    for start in (r, b):
        subprocess.run(
            ["e2fsck", "-fn", f"{image}?offset={start}"], check=True, capture_output=True
        )


@pytest.mark.slow
def test_gpt_efi_swap_and_xfs_on_a_second_disk(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS, *XFS_TOOLS)
    import parted

    plan = planned(
        "clearpart --all --initlabel --disklabel=gpt\n"
        "part biosboot --fstype=biosboot --size=1 --ondisk=sda\n"
        "part /boot/efi --fstype=efi --size=40 --ondisk=sda\n"
        "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
        "part swap --size=16 --label=swap0 --ondisk=sda\n"
        "part / --fstype=ext4 --size=133 --ondisk=sda\n"
        "part /data --fstype=xfs --size=398 --label=data --ondisk=sdb\n"
    )
    assert [(d.name, d.size) for d in plan.disks] == [("sda", 256 * MiB), ("sdb", 400 * MiB)]
    out = tmp_path / "out"
    result = build(plan, layers, out)
    sda, sdb = out / "sda.raw", out / "sdb.raw"
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(out)) == ["sda.raw", "sdb.raw"]
    assert_sparse(sda)
    assert_sparse(sdb)

    pdisk = parted.newDisk(parted.getDevice(str(sda)))
    assert pdisk.type == "gpt"
    got = {p.number: p for p in pdisk.partitions}
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert got[1].getFlag(parted.PARTITION_BIOS_GRUB)
    assert "esp" in got[2].getFlagsAsString()
    assert got[2].name == "EFI System Partition"
    assert got[5].name == "root" and got[3].name == "boot"
    for pp in plan.disks[0].partitions:
        assert got[pp.number].geometry.start * 512 == pp.start
        assert got[pp.number].geometry.length * 512 == pp.size

    # GUIDs are ours, in both headers, with valid CRCs
    sda_result = result["disks"][0]
    primary = gpt_header(sda, 1)
    backup_lba = struct.unpack_from("<Q", primary, 32)[0]
    for header in (primary, gpt_header(sda, backup_lba)):
        assert uuid.UUID(bytes_le=header[56:72]) == uuid.UUID(sda_result["identifier"])
        hdr = bytearray(header[:92])
        crc = struct.unpack_from("<I", hdr, 16)[0]
        struct.pack_into("<I", hdr, 16, 0)
        assert zlib.crc32(hdr) == crc
        entries_lba, count, size = struct.unpack_from("<QII", header, 72)
        with open(sda, "rb") as f:
            f.seek(entries_lba * 512)
            entries = f.read(count * size)
        assert zlib.crc32(entries) == struct.unpack_from("<I", header, 88)[0]
        for p in sda_result["partitions"]:
            at = (p["number"] - 1) * size
            assert str(uuid.UUID(bytes_le=entries[at + 16 : at + 32])) == p["partuuid"]

    # the ESP: FAT32, files copied with mtools, nothing else
    esp = part(result, "sda", 2)
    assert esp["fat"] == 32
    info = blkid(sda, esp["start"])
    assert (info["TYPE"], info["VERSION"], info["UUID"]) == ("vfat", "FAT32", esp["uuid"])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", f"{sda}@@{esp['start']}", "::/"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing.upper()
    cfg = subprocess.run(
        ["mtype", "-i", f"{sda}@@{esp['start']}", "::/EFI/BOOT/grub.cfg"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert cfg == "set timeout=1\n"
    boot = part(result, "sda", 3)
    assert ext_ls(sda, boot["start"], "/efi") == set()  # the ESP's files are not in /boot
    assert "vmlinuz-6.1.0-test" in ext_ls(sda, boot["start"], "/")

    swap = part(result, "sda", 4)
    info = blkid(sda, swap["start"])
    assert (info["TYPE"], info["UUID"], info["LABEL"]) == ("swap", swap["uuid"], "swap0")
    with open(sda, "rb") as f:
        f.seek(swap["start"] + 4096 - 10)
        assert f.read(10) == b"SWAPSPACE2"
    biosboot = part(result, "sda", 1)
    with open(sda, "rb") as f:
        f.seek(biosboot["start"])
        assert f.read(biosboot["size"]) == bytes(biosboot["size"])  # left for GRUB

    root = part(result, "sda", 5)
    fstab = debugfs(sda, root["start"], "cat /etc/fstab")
    data = part(result, "sdb", 1)
    assert f"UUID={data['uuid']} /data     xfs " in fstab
    assert f"UUID={esp['uuid']}" in fstab and "umask=0077,shortname=winnt 0 2" in fstab
    assert ext_ls(sda, root["start"], "/data") == set()
    assert ext_ls(sda, root["start"], "/boot") == set()

    # xfs on the second disk: extract the partition (sparse) and read it with xfs_db
    info = blkid(sdb, data["start"])
    assert (info["TYPE"], info["UUID"], info["LABEL"]) == ("xfs", data["uuid"], "data")
    region = tmp_path / "data.img"
    with open(sdb, "rb") as src, open(region, "wb") as dst:
        src.seek(data["start"])
        left = data["size"]
        while left:
            chunk = src.read(min(left, 4 * MiB))
            if chunk.count(0) != len(chunk):
                dst.write(chunk)
            else:
                dst.seek(len(chunk), os.SEEK_CUR)
            left -= len(chunk)
        dst.truncate(data["size"])
    listing = sh("xfs_db", "-r", "-c", "ls /", region)
    assert re.search(r"regular .* payload", listing)


@pytest.mark.slow
def test_msdos_six_partitions_uses_logical_ones(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    import parted

    plan = planned(
        "part /boot --fstype=ext4 --size=32\n"
        "part / --fstype=ext4 --size=48\n"
        "part /var --fstype=ext4 --size=16\n"
        "part /home --fstype=ext2 --size=16\n"
        "part swap --size=8\n"
        "part /data --fstype=ext3 --size=16\n"
    )
    parts = plan.disks[0].partitions
    assert [(p.number, p.logical) for p in parts] == [
        (1, False),
        (2, False),
        (3, False),
        (5, True),
        (6, True),
        (7, True),
    ]
    out = tmp_path / "out"
    result = build(plan, layers, out)
    image = out / "sda.raw"
    assert leftovers(tmp_path) == []
    assert_sparse(image)
    pdisk = parted.newDisk(parted.getDevice(str(image)))
    got = {p.number: p for p in pdisk.partitions}
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7]
    assert got[4].type == parted.PARTITION_EXTENDED
    ext = result["disks"][0]["extended"]
    assert ext == {"number": 4, "start": 97 * MiB, "size": 43 * MiB}
    assert got[4].geometry.start * 512 == ext["start"]
    for pp in parts:
        p = got[pp.number]
        assert p.type == (parted.PARTITION_LOGICAL if pp.logical else parted.PARTITION_NORMAL)
        assert (p.geometry.start * 512, p.geometry.length * 512) == (pp.start, pp.size)
    for number, fstype in ((1, "ext4"), (2, "ext4"), (3, "ext4"), (5, "ext2"), (7, "ext3")):
        p = part(result, "sda", number)
        info = blkid(image, p["start"])
        assert (info["TYPE"], info["UUID"]) == (fstype, p["uuid"]), number
        subprocess.run(
            ["e2fsck", "-fn", f"{image}?offset={p['start']}"], check=True, capture_output=True
        )
    assert blkid(image, part(result, "sda", 6)["start"])["TYPE"] == "swap"
    root = part(result, "sda", 2)["start"]
    assert ext_ls(image, root, "/var") == set()
    assert ext_ls(image, part(result, "sda", 3)["start"], "/") == {"lost+found", "log"}
    assert ext_ls(image, part(result, "sda", 7)["start"], "/") == {"lost+found", "payload"}
    assert ext_ls(image, part(result, "sda", 5)["start"], "/") == {"lost+found"}  # no /home


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    plan = Plan(
        disks=(
            DiskPlan(
                "sda",
                160 * MiB,
                "gpt",
                (
                    PartitionPlan(1, None, "biosboot", 1 * MiB, 1 * MiB),
                    PartitionPlan(2, "/boot/efi", "efi", 2 * MiB, 40 * MiB),
                    PartitionPlan(3, "/boot", "ext4", 42 * MiB, 40 * MiB),
                    PartitionPlan(4, None, "swap", 82 * MiB, 8 * MiB),
                    PartitionPlan(5, "/", "ext4", 90 * MiB, 69 * MiB),
                ),
            ),
            DiskPlan(
                "sdb",
                40 * MiB,
                "msdos",
                (PartitionPlan(1, "/srv", "ext3", 1 * MiB, 39 * MiB),),  # not in the tree
            ),
        )
    )

    def digests(out: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}

    first = build(plan, layers, tmp_path / "a", seed="1234")
    os.utime(tmp_path / "a", None)  # the wall clock moves on between the builds
    second = build(plan, layers, tmp_path / "b", seed="1234")
    assert first == second
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    other = build(plan, layers, tmp_path / "c", seed="5678")
    assert other["disks"][0]["identifier"] != first["disks"][0]["identifier"]
    assert digests(tmp_path / "c")["sda.raw"] != digests(tmp_path / "a")["sda.raw"]


@pytest.mark.slow
def test_too_big_is_one_clear_error(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    (layers[1] / "usr/big").write_bytes(os.urandom(30 * MiB))
    (layers[1] / "boot/efi/EFI/big.bin").write_bytes(os.urandom(40 * MiB))
    plan = planned(
        "clearpart --all --initlabel --disklabel=gpt\n"
        "part /boot/efi --fstype=efi --size=38\n"
        "part /boot --fstype=ext4 --size=40\n"
        "part / --fstype=ext4 --size=20\n",
        sda=120,  # free space at the end: no --grow
    )
    out = tmp_path / "out"
    with pytest.raises(BuildError) as caught:
        build(plan, layers, out)
    msg = str(caught.value)
    assert "/ (ext4, sda partition 3) does not fit" in msg
    assert "/boot/efi (efi, sda partition 1) does not fit" in msg
    assert "/boot (ext4" not in msg
    match = re.search(r"/ \(ext4.*? need about (\d+) MiB, the partition has 20 MiB", msg)
    assert match
    need = int(match.group(1))
    assert 30 < need < 40
    assert "--size" in msg and "disk size" in msg
    # the half-built image stays in the staging directory, which the store then discards;
    # the scratch directory and every mount are gone
    assert [p.name for p in out.iterdir()] == ["sda.raw"]
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_mkfsoptions_fsprofile_label_and_ext2(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    plan = Plan(
        disks=(
            DiskPlan(
                "vda",
                160 * MiB,
                "msdos",
                (
                    PartitionPlan(
                        1,
                        "/boot",
                        "ext2",
                        1 * MiB,
                        48 * MiB,
                        label="BOOT",
                        mkfsoptions="-m 0",
                    ),
                    PartitionPlan(
                        2,
                        "/",
                        "ext4",
                        49 * MiB,
                        110 * MiB,
                        label="rootfs",
                        fsoptions="noatime,errors=remount-ro",
                        fsprofile="small",
                        mkfsoptions="-I 128 -O ^metadata_csum -E stride=4",
                    ),
                ),
            ),
        )
    )
    out = tmp_path / "out"
    result = build(plan, layers, out)
    image = out / "vda.raw"
    assert leftovers(tmp_path) == []
    assert_sparse(image)
    root = part(result, "vda", 2)
    info = super_info(image, root["start"])
    assert info["Filesystem volume name"] == "rootfs"
    assert info["Inode size"] == "128"
    assert info["Block size"] == "1024"  # -T small
    assert "metadata_csum" not in info["Filesystem features"]
    assert info["RAID stride"] == "4"  # the user's -E merged with ksbake's offset=
    boot = part(result, "vda", 1)
    info = super_info(image, boot["start"])
    assert info["Filesystem volume name"] == "BOOT"
    assert "has_journal" not in info["Filesystem features"]
    assert info["Reserved block count"] == "0"
    fstab = debugfs(image, root["start"], "cat /etc/fstab")
    assert f"UUID={root['uuid']} /     ext4 noatime,errors=remount-ro 0 1" in fstab
    assert f"UUID={boot['uuid']} /boot ext2 defaults" in fstab
    assert "vmlinuz-6.1.0-test" in ext_ls(image, boot["start"], "/")


@pytest.mark.slow
def test_mkfsoptions_may_not_override_the_uuid(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    # the planner passes --mkfsoptions through: the disks layer owns the filesystem ids
    plan = planned('part / --fstype=ext4 --size=63 --mkfsoptions="-U random"\n')
    with pytest.raises(BuildError, match=r"may not contain '-U'"):
        build(plan, layers, tmp_path / "out")
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_esp_symlinks_resolve_inside_the_tree(tmp_path: Path, layers: list[Path]) -> None:
    _need(*TOOLS)
    esp_dir = layers[1] / "boot/efi/EFI/BOOT"
    os.symlink("/etc/hostname", esp_dir / "hostname.txt")  # absolute: must not reach the host
    plan = planned(
        "clearpart --all --initlabel --disklabel=gpt\n"
        "part /boot/efi --fstype=efi --size=20\n"
        "part / --fstype=ext4 --size=78\n"
    )
    result = build(plan, layers, tmp_path / "out")
    esp = part(result, "sda", 1)
    assert esp["fat"] == 16  # too small for FAT32 with 512-byte clusters
    text = subprocess.run(
        ["mtype", "-i", f"{tmp_path / 'out/sda.raw'}@@{esp['start']}", "::/EFI/BOOT/hostname.txt"],
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
    ).stdout
    assert text == "appliance\n"  # the tree's (upper layer's) file, not the host's
    assert leftovers(tmp_path) == []

    os.mkfifo(esp_dir / "fifo")
    with pytest.raises(BuildError, match=r"FAT cannot hold /boot/efi/EFI/BOOT/fifo"):
        build(plan, layers, tmp_path / "out2")
    (esp_dir / "fifo").unlink()
    (esp_dir / "Grub.cfg").write_text("differs from grub.cfg only in case\n")
    with pytest.raises(BuildError, match=r"both /boot/efi/EFI/BOOT/Grub.cfg and .*/grub.cfg"):
        build(plan, layers, tmp_path / "out3")
    assert leftovers(tmp_path) == []


# -- fast: pure functions ------------------------------------------------------------------


def _fs(disk: DiskPlan, number: int) -> model.Fs:
    fs = model.Fs(disk, next(p for p in disk.partitions if p.number == number), Path("x.raw"))
    table._assign_ids(fs, model.Ids("seed"))
    return fs


def test_fstab_lines() -> None:
    plan = planned(
        "clearpart --all --initlabel --disklabel=gpt\n"
        "part / --fstype=xfs --size=200 --fsoptions=noatime\n"
        "part swap --size=10\n"
        "part /boot --fstype=ext4 --size=30\n"
        "part /boot/efi --fstype=efi --size=50\n"  # the planner puts the ESP first
    )
    (disk,) = plan.disks
    assert [p.mountpoint for p in disk.partitions] == ["/boot/efi", "/", None, "/boot"]
    fss = [_fs(disk, n) for n in (1, 2, 3, 4)]
    text = split.fstab_text(fss)
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert [r[1] for r in rows] == ["/", "/boot", "/boot/efi", "none"]  # parents first
    assert rows[0][2:] == ["xfs", "noatime", "0", "0"]
    assert rows[1][2:] == ["ext4", "defaults", "0", "2"]
    assert rows[2][2:] == ["vfat", "umask=0077,shortname=winnt", "0", "2"]
    assert rows[3][1:] == ["none", "swap", "defaults", "0", "0"]
    assert re.fullmatch(r"UUID=[0-9A-F]{4}-[0-9A-F]{4}", rows[2][0])


def test_ids_are_derived_from_the_seed() -> None:
    a, b = model.Ids("k1"), model.Ids("k2")
    assert a.fs_uuid("sda", 1) == model.Ids("k1").fs_uuid("sda", 1)
    assert a.fs_uuid("sda", 1) != a.fs_uuid("sda", 2) != b.fs_uuid("sda", 2)
    assert uuid.UUID(a.fs_uuid("sda", 1)).version == 4
    assert a.msdos_id("sda") != a.msdos_id("sdb")
    assert re.fullmatch(r"[0-9A-F]{8}", a.fat_volid("sda", 1))


@pytest.mark.parametrize(
    ("parts", "label", "message"),
    [
        ((PartitionPlan(1, "/boot", "ext4", MiB, MiB),), "msdos", "no / filesystem"),
        (
            (
                PartitionPlan(1, None, "biosboot", MiB, MiB),
                PartitionPlan(2, "/", "ext4", 2 * MiB, MiB),
            ),
            "msdos",
            "biosboot partition only makes sense on a GPT disk",
        ),
        (
            (PartitionPlan(1, "/", "xfs", MiB, MiB, label="a-very-long-label"),),
            "gpt",
            "too long for xfs",
        ),
        ((PartitionPlan(1, "/", "ext4", MiB, 100 * MiB),), "gpt", "ends past the end"),
        ((PartitionPlan(1, "/my data", "ext4", MiB, MiB),), "gpt", "invalid mount point"),
        (
            (
                PartitionPlan(1, "/", "ext4", MiB, MiB),
                PartitionPlan(2, "/", "ext4", 2 * MiB, MiB),
            ),
            "gpt",
            "used by two partitions",
        ),
    ],
)
def test_plan_checks(
    tmp_path: Path, parts: tuple[PartitionPlan, ...], label: str, message: str
) -> None:
    plan = Plan(disks=(DiskPlan("sda", 10 * MiB, label, parts),))
    with pytest.raises(BuildError, match=re.escape(message)):
        disks._validate(plan, [str(tmp_path)], str(tmp_path))


def test_measure_counts_hardlinks_once_and_finds_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d/f").write_bytes(b"x" * 5000)
    os.link(root / "d/f", root / "d/g")
    os.symlink("f", root / "d/s")
    os.symlink("x" * 80, root / "long")
    c = split.measure(root)
    assert c.inodes == 4  # d, f(=g), s, long
    assert c.apparent == 5000
    assert c.long_symlinks == 1
    assert sorted(kind for _, kind in c.unusual) == ["symlink", "symlink"]
    assert ext.ext_blocks(c, 4096, True) == 2 + 2 + 1  # file, two dirs, long symlink


def test_splice_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"A" * 4096)
        f.seek(3 * MiB)
        f.write(bytes(2 * MiB))  # written zeros: must not become data in dst
        f.seek(7 * MiB)
        f.write(b"B" * 100)
    with open(dst, "wb") as f:
        f.truncate(16 * MiB)
    sparse.splice(src, dst, 4 * MiB)
    data = dst.read_bytes()
    assert data[5 * MiB : 5 * MiB + 4096] == b"A" * 4096
    assert data[11 * MiB : 11 * MiB + 100] == b"B" * 100
    assert data.count(0) == len(data) - 4096 - 100
    assert dst.stat().st_blocks * 512 <= 256 * 1024


def test_too_big_message_when_mkfs_runs_out() -> None:
    fs = _fs(planned("part / --fstype=ext4 --size=50\n").disks[0], 1)
    fs.capacity, fs.need = 45 * MiB, 44 * MiB
    fs.content.apparent = 40 * MiB
    err = model._too_big_error([fs], ran_out=True)
    assert "/ (ext4, sda partition 1) does not fit" in str(err)
    assert "need more than 50 MiB, the partition has 50 MiB" in str(err)
    assert err.hint and "--size" in err.hint
