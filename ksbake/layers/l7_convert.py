"""The convert layer: bootable raw disks → the appliance's disk formats, with qemu-img.

One object per (bootable disks, format, format options): changing only the output format
reruns only this layer and what follows. Raw output is not converted at all: the published
file is a hardlink to the bootloader layer's sparse image (or an xz stream with independent
blocks, which tools like ``xz -l``/``qemu-img`` via nbdkit can seek in).

Options reach qemu-img only when set (osbuild's habit): no empty-string argument.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ksbake.formats import file_name
from ksbake.hashing import sha256_file
from ksbake.run import run, which
from ksbake.runner import Job

XZ_BLOCK = "16MiB"


def qemu_img_argv(src: Path, dst: Path, fmt: str, options: dict[str, str]) -> list[str]:
    argv = [which("qemu-img"), "convert", "-f", "raw", "-O", fmt]
    opts: list[str] = []
    if fmt == "qcow2" and options.get("compression", "none") != "none":
        argv.append("-c")
        opts.append(f"compression_type={options['compression']}")
    if fmt == "vmdk":
        opts.append(f"subformat={options['subformat']}")
    if opts:
        argv += ["-o", ",".join(opts)]
    if sys.stdout.isatty():
        argv.append("-p")
    return [*argv, str(src), str(dst)]


def convert(
    disks: list[dict[str, str]], fmt: str, options: dict[str, str], out_dir: Path
) -> list[dict[str, Any]]:
    """Write every disk in ``fmt`` into ``out_dir`` as ``<disk>.<ext>``; one record per disk.

    Records carry what descriptors need (sizes, sha256 of the file actually written), so big
    files are hashed once, when built, never to decide whether something is up to date.
    """
    records = []
    for disk in disks:
        src = Path(disk["file"])
        dst = out_dir / file_name(None, disk["name"], fmt, options)
        if fmt == "raw" and options.get("compression") == "xz":
            print(f"Compressing {disk['name']} with xz", flush=True)
            with open(dst, "wb") as out:
                run(
                    ["xz", "--threads=0", f"--block-size={XZ_BLOCK}", "-6", "-c", src],
                    stdout=out,
                    what=f"compressing {src.name} with xz",
                )
            record: dict[str, Any] = {
                "virtual_size": src.stat().st_size,
                "sha256": sha256_file(dst),
            }
        else:
            if fmt == "raw":
                os.link(src, dst)  # the bootloader object's sparse file: no copy at all
            else:
                detail = ", ".join(f"{k}={v}" for k, v in options.items())
                print(
                    f"Converting {disk['name']} to {fmt}" + (f" ({detail})" if detail else ""),
                    flush=True,
                )
                run(
                    qemu_img_argv(src, dst, fmt, options),
                    capture=not sys.stdout.isatty(),
                    what=f"converting {src.name} to {fmt}",
                )
            record = describe(dst, fmt)
        records.append(
            {
                "disk": disk["name"],
                "object_file": dst.name,
                "format": fmt,
                "file_size": dst.stat().st_size,
                **record,
            }
        )
    return records


def describe(path: Path, fmt: str) -> dict[str, int | str]:
    """What the descriptors need of a written image: virtual size from qemu-img, sha256."""
    proc = run(
        ["qemu-img", "info", "--output=json", "-f", fmt, path],
        what=f"reading the size of {path}",
    )
    return {
        "virtual_size": int(json.loads(proc.stdout)["virtual-size"]),
        "sha256": sha256_file(path),
    }


def build(job: Job) -> dict[str, Any]:
    """The layer's build, for one format: convert every bootable disk, record each one."""
    directory = job.parent_dir("bootloader")
    result = json.loads((directory / "result.json").read_text())
    disks = [{"name": d["name"], "file": str(directory / d["file"])} for d in result["disks"]]
    records = convert(disks, job.inputs["format"], job.inputs["options"], job.stage)
    (job.stage / "result.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    return {"seal": [r["object_file"] for r in records]}


def records_of(directory: Path) -> list[dict[str, Any]]:
    """The records of a convert object (``directory``): one per disk."""
    records: list[dict[str, Any]] = json.loads((directory / "result.json").read_text())
    return records
