"""Benchmark: layout-only rebuild (one size changed) against the floor.

The floor is the bare work any tool must do: build the same filesystems with `mkfs.ext4 -d`
from the same tree and place them at their offsets in a disk image (for btrfs: mkfs.btrfs,
one loop mount, the subvolumes made and filled with cp -a), measured in the same run.
Target: the rebuild within 1.5x of the floor, and no dnf work at all (no lock, packages or
config layer runs). Also reports the boot time to the login prompt (QEMU, accel setting).
``--layout lvm`` puts / on a logical volume (the LVM metadata written by lvm2 is ksbake's
extra work), ``--layout btrfs`` on a root subvolume of a btrfs volume, as Fedora does.

    .venv/bin/python bench/layout.py [--layout plain|lvm|btrfs] [--runs N] [--keep DIR]
        [--no-boot]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import BIG_POST, Bench, demo_kickstart, show

ROOT_LINE = "part / --fstype=ext4 --size=192 --grow --ondisk=sda"
LAYOUTS = {  # the root line, with SIZE for the size that changes
    "plain": "part / --fstype=ext4 --size=SIZE",
    "lvm": (
        "part pv.01 --size=1 --grow\nvolgroup vg pv.01\n"
        "logvol / --vgname=vg --name=root --size=SIZE --fstype=ext4"
    ),
    "btrfs": (
        "part btrfs.01 --size=SIZE\nbtrfs none --label=fedora btrfs.01\n"
        "btrfs / --subvol --name=root fedora"
    ),
}

FLOOR = r"""
import json, os, subprocess, sys, time
upper, lower, disk, result = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
view = os.path.join(os.path.dirname(disk), "view")
os.makedirs(view, exist_ok=True)
subprocess.run(["mount", "-t", "overlay", "-o", f"ro,lowerdir={upper}:{lower}", "x", view],
               check=True)
with open(disk, "wb") as f:
    f.truncate(result["disks"][0]["size"])
started = time.perf_counter()
for fs in result["filesystems"]:
    if not fs["mountpoint"]:
        continue
    src = view if fs["mountpoint"] == "/" else view + fs["mountpoint"]
    if fs["fstype"] == "btrfs":  # mkfs in a scratch file, one mount, subvolume, cp -a, dd in
        tmp, mnt = disk + ".btrfs", disk + ".mnt"
        with open(tmp, "wb") as f:
            f.truncate(fs["size"])
        subprocess.run(["mkfs.btrfs", "-q", "-f", tmp], check=True, stdout=subprocess.DEVNULL)
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", tmp, mnt], check=True)
        subprocess.run(["btrfs", "-q", "subvolume", "create", mnt + "/" + fs["subvol"]],
                       check=True)
        subprocess.run(["cp", "-a", src + "/.", mnt + "/" + fs["subvol"] + "/"], check=True)
        subprocess.run(["umount", mnt], check=True)
        subprocess.run(["dd", f"if={tmp}", f"of={disk}", "bs=1M", "conv=sparse,notrunc",
                        f"seek={fs['start']}", "oflag=seek_bytes", "status=none"], check=True)
        os.unlink(tmp)
        continue
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, "-E",
                    f"offset={fs['start']}", disk, f"{fs['size'] // 1024}k"], check=True)
print(time.perf_counter() - started)
"""


def floor(bench: Bench, name: str) -> float:
    """mkfs -d of the same filesystems from the same tree, placed at their offsets."""
    build = bench.root / "cache" / "build" / name
    config_key = json.loads((build / "config.ref").read_text())["key"]
    meta = json.loads((bench.store / "objects/config" / config_key / "meta.json").read_text())
    upper = bench.store / "objects/config" / config_key / "upper"
    lower = bench.store / "objects/packages" / meta["parents"]["packages"] / "tree"
    disks_key = json.loads((build / "disks.ref").read_text())["key"]
    result = (bench.store / "objects/disks" / disks_key / "result.json").read_text()
    disk = bench.root / "floor" / "disk.raw"
    disk.parent.mkdir(exist_ok=True)
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation=private",
            sys.executable,
            "-c",
            FLOOR,
            str(upper),
            str(lower),
            str(disk),
            result,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    disk.unlink()
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--no-boot", action="store_true")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="plain")
    args = parser.parse_args()
    bench = Bench(args.keep)
    root = LAYOUTS[args.layout]
    text = demo_kickstart().replace(ROOT_LINE, root.replace("SIZE", "600")) + BIG_POST
    if args.layout == "lvm":
        bench.write("big.toml", "disk_sizes = { sda = 1024 }\n")
    bench.write("big.ks", text)
    cold, events = bench.doit("bootloader:big")
    print(f"cold build up to the bootloader layer (~200 MB of files in %post): {cold:.2f} s")
    show(events)
    walls, layer_times, floors = [], [], []
    for i in range(args.runs):
        bench.write("big.ks", text.replace("--size=600", f"--size={610 - 4 * i}"))
        wall, events = bench.doit("bootloader:big")
        layers = {e["layer"] for e in events}
        if layers & {"lock", "packages", "config"}:
            sys.exit(f"a layout-only change ran {layers}: the cache is wrong")
        walls.append(wall)
        layer_times.append(
            sum(e["seconds"] for e in events if e["layer"] in ("disks", "bootloader"))
        )
        floors.append(floor(bench, "big"))
    wall, layer, fl = (statistics.median(x) for x in (walls, layer_times, floors))
    print(f"layout-only rebuild ({args.layout}: the / size changed), median of {args.runs}:")
    print(
        f"  doit bootloader:big wall      {wall:6.2f} s (layers run: kickstart, disks, bootloader)"
    )
    print(f"  disks + bootloader layers     {layer:6.2f} s")
    print(f"  floor: mkfs -d of the same filesystems at their offsets  {fl:6.2f} s")
    print(f"  ratio wall / floor {wall / fl:.2f}, layers / floor {layer / fl:.2f} (target <= 1.5)")
    print("  dnf work: none (no lock, packages or config layer ran)")
    if not args.no_boot:
        bench.doit("boottest:big")
        boot = json.loads((bench.root / "cache/build/big/boottest.json").read_text())
        print(f"boot to {boot['marker']!r}: {boot['seconds']:.1f} s (accel={boot['accel']})")
    bench.close()


if __name__ == "__main__":
    main()
