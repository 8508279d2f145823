"""Benchmark: layout-only rebuild (one `part` size changed) against the floor.

The floor is the bare work any tool must do: build the same filesystems with `mkfs.ext4 -d`
from the same tree and place them at their offsets in a disk image, measured in the same run.
Target: the rebuild within 1.5x of the floor, and no dnf work at all (no lock, packages or
config layer runs). Also reports the boot time to the login prompt (QEMU, accel setting).

    .venv/bin/python bench/layout.py [--runs N] [--keep DIR] [--no-boot]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import BIG_POST, Bench, demo_kickstart, show

ROOT_LINE = "part / --fstype=ext4 --size=192 --grow"

FLOOR = r"""
import json, os, subprocess, sys, time
upper, lower, disk, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
view = os.path.join(os.path.dirname(disk), "view")
os.makedirs(view, exist_ok=True)
subprocess.run(["mount", "-t", "overlay", "-o", f"ro,lowerdir={upper}:{lower}", "x", view],
               check=True)
with open(disk, "wb") as f:
    f.truncate(plan["size"])
started = time.perf_counter()
for part in plan["partitions"]:
    src = view if part["mountpoint"] == "/" else view + part["mountpoint"]
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, "-E",
                    f"offset={part['start']}", disk, f"{part['size'] // 1024}k"], check=True)
print(time.perf_counter() - started)
"""


def floor(bench: Bench, name: str) -> float:
    """mkfs -d of the same filesystems from the same tree, placed at their offsets."""
    build = bench.root / "cache" / "build" / name
    config_key = json.loads((build / "config.ref").read_text())["key"]
    meta = json.loads((bench.store / "objects/config" / config_key / "meta.json").read_text())
    upper = bench.store / "objects/config" / config_key / "upper"
    lower = bench.store / "objects/packages" / meta["parents"]["packages"] / "tree"
    plan = json.loads((build / "inputs" / "disks.json").read_text())["plan"]["disks"][0]
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
            json.dumps(plan),
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
    args = parser.parse_args()
    bench = Bench(args.keep)
    text = demo_kickstart().replace(ROOT_LINE, "part / --fstype=ext4 --size=600") + BIG_POST
    bench.write("big.ks", text)
    cold, events = bench.doit("bootloader:big")
    print(f"cold build up to the bootloader layer (~200 MB of files in %post): {cold:.2f} s")
    show(events)
    walls, layer_times, floors = [], [], []
    for i in range(args.runs):
        bench.write("big.ks", text.replace("--size=600", f"--size={610 + i}"))
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
    print(f"layout-only rebuild (part / --size changed), median of {args.runs}:")
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
