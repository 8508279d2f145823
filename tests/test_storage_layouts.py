"""Acceptance for LVM, btrfs and autopart: real builds from the bundled repository, the
images read back with the real lvm2, blkid and btrfs tools (and booted, where marked).

No device-mapper on these machines: the volume group is read with ``--driverloaded n`` from a
loop device of the PV's partition, as the disks layer writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, fails, guest_mounts, ok

pytestmark = pytest.mark.slow

DEMO_PARTS = (
    "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
    "part / --fstype=ext4 --size=192 --grow --ondisk=sda\n"
)
CLASSIC_LVM = (  # anaconda's default of the appliance-creator era
    "part /boot --fstype=ext4 --size=64\n"
    "part pv.01 --size=1 --grow\n"
    "volgroup VolGroup00 --pesize=32768 pv.01\n"
    "logvol / --vgname=VolGroup00 --name=LogVol00 --size=256 --grow --fstype=ext4\n"
    "logvol swap --vgname=VolGroup00 --name=LogVol01 --size=64\n"
)
TWO_DISK_LVM = (
    "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
    "part pv.01 --size=160 --ondisk=sda\n"
    "part pv.02 --size=160 --ondisk=sdb\n"
    "volgroup vg0 pv.01 pv.02\n"
    "logvol / --vgname=vg0 --name=root --size=288 --fstype=ext4\n"
)
FEDORA_BTRFS = (
    "part /boot --fstype=ext4 --size=64\n"
    "part btrfs.01 --size=400 --grow\n"
    "btrfs none --label=fedora btrfs.01\n"
    "btrfs / --subvol --name=root fedora\n"
    "btrfs /home --subvol --name=home LABEL=fedora\n"
)
LVM_CONFIG = (
    'devices{filter=["a|^/dev/loop|","r|.*|"] obtain_device_list_from_udev=0 '
    "use_devicesfile=0} activation{udev_sync=0 udev_rules=0} backup{backup=0 archive=0}"
)


def with_parts(parts: str) -> str:
    text = demo_kickstart()
    assert DEMO_PARTS in text
    return text.replace(DEMO_PARTS, parts)


def disks_result(ws: Workspace, name: str = "demo") -> dict:
    ref = json.loads((ws.cache / "build" / name / "disks.ref").read_text())
    return json.loads((ws.store / "objects" / "disks" / ref["key"] / "result.json").read_text())


def disk_file(ws: Workspace, disk: str, name: str = "demo") -> Path:
    ref = json.loads((ws.cache / "build" / name / "disks.ref").read_text())
    return ws.store / "objects" / "disks" / ref["key"] / f"{disk}.raw"


def lvm_report(images: list[tuple[Path, int, int]]) -> dict:
    """lvs of the volume group on these PV regions (image, offset, size), read by lvm2."""
    loops = []
    try:
        for image, offset, size in images:
            loops.append(
                subprocess.run(
                    [
                        "losetup",
                        "-f",
                        "--show",
                        "-r",
                        "-o",
                        str(offset),
                        "--sizelimit",
                        str(size),
                        str(image),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
            )
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        with tempfile.TemporaryDirectory() as etc:
            env["LVM_SYSTEM_DIR"] = etc
            out = subprocess.run(
                [
                    "lvm",
                    "lvs",
                    "--driverloaded",
                    "n",
                    "--config",
                    LVM_CONFIG,
                    "--readonly",
                    "--reportformat",
                    "json",
                    "--units",
                    "b",
                    "-o",
                    "vg_name,lv_name,lv_size,seg_pe_ranges,lv_uuid,vg_uuid",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout
        return json.loads(out)["report"][0]
    finally:
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)


def blkid(image: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_classic_lvm_layout_is_read_back_by_lvm2(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(CLASSIC_LVM))
    workspace.write("demo.toml", "disk_sizes = { sda = 512 }\n")  # 512 MiB
    ok(workspace.doit("disks:demo"))
    result = disks_result(workspace)
    (disk,) = result["disks"]
    pv = next(p for p in disk["partitions"] if p["fstype"] == "lvmpv")
    image = disk_file(workspace, "sda")
    report = lvm_report([(image, pv["start"], pv["size"])])
    lvs = {lv["lv_name"]: lv for lv in report["lv"]}
    assert set(lvs) == {"LogVol00", "LogVol01"}
    assert {lv["vg_name"] for lv in lvs.values()} == {"VolGroup00"}
    # the root grows over everything swap leaves: 512 - 1 - 64 MiB of partition, 1 MiB of
    # PV metadata, in 32 MiB extents: 13 extents, 2 of them swap
    assert lvs["LogVol00"]["lv_size"] == f"{11 * 32 * 2**20}B"
    assert lvs["LogVol01"]["lv_size"] == f"{2 * 32 * 2**20}B"
    by_mount = {fs["mountpoint"]: fs for fs in result["filesystems"]}
    root = by_mount["/"]
    assert root["lv"] == "VolGroup00/LogVol00"
    probed = blkid(image, root["start"])
    assert (probed["TYPE"], probed["UUID"]) == ("ext4", root["uuid"])
    fstab = result["fstab"]
    assert f"UUID={root['uuid']} /" in fstab and " swap " in fstab
    # the partition type says LVM
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True).stdout
    )
    assert [p["type"] for p in table["partitiontable"]["partitions"]] == ["83", "8e"]


def test_a_volume_group_spans_two_disks(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(TWO_DISK_LVM))
    ok(workspace.doit("disks:demo"))
    result = disks_result(workspace)
    regions = []
    for disk in result["disks"]:
        for p in disk["partitions"]:
            if p["fstype"] == "lvmpv":
                regions.append((disk_file(workspace, disk["name"]), p["start"], p["size"]))
    report = lvm_report(regions)
    segments = report["lv"]  # one row per segment
    assert {row["lv_name"] for row in segments} == {"root"}
    assert segments[0]["lv_size"] == f"{288 * 2**20}B"
    # 39 extents on the first PV, the rest on the second: the filesystem is split across
    # the two disks and still one ext4 (its superblock on sda, its last extents on sdb)
    assert [row["seg_pe_ranges"].split(":")[1] for row in segments] == ["0-38", "0-32"]
    fs = next(f for f in result["filesystems"] if f["mountpoint"] == "/")
    assert fs["start"] is None and fs["lv"] == "vg0/root"


def test_nested_xfs_volumes_each_get_their_own_filesystem(workspace: Workspace) -> None:
    """The oVirt appliance's shape: /var and /var/log both xfs volumes of one group."""
    parts = (
        "part /boot --fstype=ext4 --size=64\npart pv.01 --size=1 --grow\nvolgroup vg pv.01\n"
        "logvol / --vgname=vg --name=root --size=256 --fstype=ext4\n"
        "logvol /var --vgname=vg --name=var --size=320 --fstype=xfs\n"
        "logvol /var/log --vgname=vg --name=log --size=320 --fstype=xfs\n"
    )
    workspace.write("demo.ks", with_parts(parts))
    ok(workspace.doit("disks:demo"))
    result = disks_result(workspace)
    image = disk_file(workspace, "sda")
    by_mount = {fs["mountpoint"]: fs for fs in result["filesystems"] if fs["mountpoint"]}
    for mp in ("/var", "/var/log"):
        probed = blkid(image, by_mount[mp]["start"])
        assert (probed["TYPE"], probed["UUID"]) == ("xfs", by_mount[mp]["uuid"])
    assert by_mount["/var"]["uuid"] != by_mount["/var/log"]["uuid"]


def test_lvm_images_are_the_same_bytes_when_built_twice(workspace: Workspace) -> None:
    """Same inputs, same bytes: UUIDs from the key, lvm2's creation time and host fixed."""
    workspace.write("demo.ks", with_parts(CLASSIC_LVM))
    ok(workspace.doit("disks:demo"))
    image = disk_file(workspace, "sda")
    first = subprocess.run(["sha256sum", str(image)], check=True, capture_output=True).stdout
    key = image.parent.name
    subprocess.run(["rm", "-rf", str(image.parent)], check=True)
    (workspace.cache / "build" / "demo" / "disks.ref").unlink()
    ok(workspace.doit("disks:demo"))
    assert disk_file(workspace, "sda").parent.name == key
    again = subprocess.run(
        ["sha256sum", str(disk_file(workspace, "sda"))], check=True, capture_output=True
    ).stdout
    assert again.split()[0] == first.split()[0]


def test_editing_a_logvol_size_reruns_disks_not_the_tree(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(CLASSIC_LVM))
    ok(workspace.doit("disks:demo"))
    workspace.write("demo.ks", with_parts(CLASSIC_LVM.replace("--size=64\n", "--size=96\n")))
    r = workspace.doit("disks:demo")
    ok(r)
    assert "disks" in r.layers_run()
    assert not r.layers_run() & {"lock", "packages", "config"}, r.layers_run()


def test_fedora_btrfs_subvolumes_hold_their_trees(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(FEDORA_BTRFS))
    ok(workspace.doit("disks:demo"))
    result = disks_result(workspace)
    subs = {fs["mountpoint"]: fs for fs in result["filesystems"] if fs["subvol"]}
    assert {m: s["subvol"] for m, s in subs.items()} == {"/": "root", "/home": "home"}
    root = subs["/"]
    rows = [line.split() for line in result["fstab"].splitlines() if not line.startswith("#")]
    by_mount = {row[1]: row for row in rows}
    assert by_mount["/"][:4] == [f"UUID={root['uuid']}", "/", "btrfs", "subvol=root"]
    assert by_mount["/home"][:4] == [f"UUID={root['uuid']}", "/home", "btrfs", "subvol=home"]
    image = disk_file(workspace, "sda")
    assert blkid(image, root["start"])["LABEL"] == "fedora"
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(
            [
                "mount",
                "-t",
                "btrfs",
                "-o",
                f"ro,loop,offset={root['start']},sizelimit={root['size']}",
                str(image),
                mnt,
            ],
            check=True,
        )
        try:
            listing = subprocess.run(
                ["btrfs", "subvolume", "list", mnt], check=True, capture_output=True, text=True
            ).stdout
            assert sorted(line.split()[-1] for line in listing.splitlines()) == ["home", "root"]
            assert (Path(mnt) / "root" / "etc" / "fstab").is_file()
            assert (Path(mnt) / "root" / "usr" / "sbin" / "init").exists()
            assert not any((Path(mnt) / "root" / "boot").iterdir())  # /boot is its own
        finally:
            subprocess.run(["umount", mnt], check=True)


def test_autopart_plans_anacondas_layout_from_the_settings(workspace: Workspace) -> None:
    text = with_parts("autopart --type=lvm --nohome\n").replace(
        "clearpart --all --initlabel --disklabel=msdos\n", "clearpart --all --initlabel\n"
    )
    workspace.write("demo.ks", text)
    workspace.write("demo.toml", 'disk_sizes = { sda = "16GiB" }\nmemory = 256\n')
    ok(workspace.doit("kickstart:demo"))
    plan = json.loads((workspace.cache / "build" / "demo" / "inputs" / "disks.json").read_text())
    (disk,) = plan["plan"]["disks"]
    assert disk["label"] == "gpt"
    assert [p["fstype"] for p in disk["partitions"]] == ["biosboot", "ext4", "lvmpv"]
    (vg,) = plan["plan"]["volume_groups"]
    assert vg["name"] == "fedora_demo"  # anaconda: the product, then the host name
    assert {lv["name"]: lv["size"] // 2**20 for lv in vg["lvs"]}["swap"] == 512  # 2 x RAM


def test_bad_storage_input_is_one_line_at_its_kickstart_line(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks",
        with_parts(
            CLASSIC_LVM.replace(
                "--vgname=VolGroup00 --name=LogVol01", "--vgname=nosuch --name=LogVol01"
            )
        ),
    )
    fails(workspace, "demo.ks:", "logvol --vgname=nosuch: no such volume group")
    tight = (
        "part /boot --fstype=ext4 --size=64\npart pv.01 --size=100\nvolgroup vg pv.01\n"
        "logvol / --vgname=vg --name=root --size=200\n"
    )
    workspace.write("demo.ks", with_parts(tight))
    fails(workspace, "demo.ks:", "volume group vg is too small")
    small = (
        "part /boot --fstype=ext4 --size=64\npart pv.01 --size=20\nvolgroup vg pv.01\n"
        "logvol / --vgname=vg --name=root --size=16\n"
    )
    workspace.write("demo.ks", with_parts(small))
    fails(workspace, "logical volume vg/root", "does not fit", "demo.ks:")
    assert not (workspace.cache / "build" / "demo" / "disks.ref").exists()  # nothing cached


@pytest.mark.boot
def test_classic_lvm_appliance_boots_with_its_root_on_the_logical_volume(
    workspace: Workspace,
) -> None:
    workspace.write("demo.ks", with_parts(CLASSIC_LVM))
    workspace.write("demo.toml", "disk_sizes = { sda = 512 }\n")
    ok(workspace.doit("boottest:demo"))
    seen = guest_mounts(workspace)
    assert seen["/"] == ("/dev/mapper/VolGroup00-LogVol00", "ext4"), seen
    assert seen["/boot"] == ("/dev/vda1", "ext4")


@pytest.mark.boot
def test_fedora_btrfs_appliance_boots_with_root_and_home_subvolumes(
    workspace: Workspace,
) -> None:
    workspace.write("demo.ks", with_parts(FEDORA_BTRFS))
    ok(workspace.doit("boottest:demo"))
    seen = guest_mounts(workspace)
    assert seen["/"] == ("/dev/vda2", "btrfs") and seen["/home"] == ("/dev/vda2", "btrfs")
    log = (workspace.cache / "build" / "demo" / "boot.log").read_text(errors="replace")
    assert "subvol=/root" in log and "subvol=/home" in log


@pytest.mark.boot
def test_a_root_volume_spanning_two_disks_boots(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(TWO_DISK_LVM))
    ok(workspace.doit("boottest:demo"))
    assert guest_mounts(workspace)["/"] == ("/dev/mapper/vg0-root", "ext4")


AUTOPART = pytest.mark.parametrize(
    ("options", "firmware", "root"),
    [
        ("--type=plain", "bios", ("/dev/vda3", "ext4")),  # biosboot, /boot, /
        ("--type=lvm", "bios", ("/dev/mapper/fedora_demo-root", "ext4")),
        ("--type=lvm", "uefi", ("/dev/mapper/fedora_demo-root", "ext4")),
        ("--type=btrfs", "bios", ("/dev/vda3", "btrfs")),
    ],
)


@pytest.mark.boot
@AUTOPART
def test_autopart_appliances_boot(
    workspace: Workspace, options: str, firmware: str, root: tuple[str, str]
) -> None:
    text = with_parts(f"autopart {options}\n").replace(
        "clearpart --all --initlabel --disklabel=msdos\n", "clearpart --all --initlabel\n"
    )
    workspace.write("demo.ks", text)
    workspace.write("demo.toml", f'firmware = "{firmware}"\ndisk_sizes = {{ sda = "4GiB" }}\n')
    ok(workspace.doit("boottest:demo"))
    seen = guest_mounts(workspace)
    assert seen["/"] == root, seen
    assert seen["/boot"][1] == "ext4"
    if options == "--type=btrfs":
        assert seen["/home"] == ("/dev/vda3", "btrfs")
