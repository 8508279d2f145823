"""Benchmark: a format-only change (qcow2 -> vmdk) costs the conversion alone; and compressed
qcow2 with zlib vs zstd (size and time).

    .venv/bin/python bench/formats.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import BIG_POST, Bench, demo_kickstart, show, timed

ROOT_LINE = "part / --fstype=ext4 --size=192 --grow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    bench = Bench(args.keep)
    bench.write("big.ks", demo_kickstart().replace(ROOT_LINE, "part / --size=600") + BIG_POST)
    bench.write("big.toml", 'formats = ["qcow2"]\nqcow2_compression = "none"\n')
    cold, events = bench.doit("appliance:big")
    print(f"cold build of the appliance (qcow2): {cold:.2f} s")
    show(events)

    bench.write("big.toml", 'formats = ["vmdk"]\n')
    wall, events = bench.doit("appliance:big")
    ran = [e["layer"] for e in events]
    convert = sum(e["seconds"] for e in events if e["layer"].startswith("convert"))
    key = json.loads((bench.root / "cache/build/big/bootloader.ref").read_text())["key"]
    raw = bench.store / "objects/bootloader" / key / "sda.raw"
    bare = timed(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            str(raw),
            str(bench.root / "bare.vmdk"),
        ]
    )
    print("format-only change qcow2 -> vmdk (streamOptimized):")
    print(f"  layers run: {', '.join(ran)}")
    print(
        f"  doit appliance:big wall {wall:.2f} s; convert layer {convert:.2f} s; "
        f"bare qemu-img convert of the same disk {bare:.2f} s"
    )
    print(
        f"  ratio wall / bare conversion {wall / bare:.2f}; "
        f"overhead beyond the conversion {wall - bare:.2f} s"
    )

    print(f"compressed qcow2 of the same disk ({raw.stat().st_size >> 20} MiB virtual):")
    results = {}
    for kind in ("zlib", "zstd"):
        dst = bench.root / f"{kind}.qcow2"
        seconds = timed(
            [
                "qemu-img",
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-c",
                "-o",
                f"compression_type={kind}",
                str(raw),
                str(dst),
            ]
        )
        results[kind] = (seconds, dst.stat().st_size)
        print(f"  {kind}: {seconds:6.2f} s, {dst.stat().st_size / 2**20:7.1f} MiB")
    (zt, zs), (st, ss) = results["zlib"], results["zstd"]
    print(f"  zstd/zlib: time {st / zt:.2f}x, size {ss / zs:.3f}x")
    bench.close()


if __name__ == "__main__":
    main()
