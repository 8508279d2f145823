"""The convert layer: bootable raw disks → the appliance's disk formats, with qemu-img.

One object per (bootable disks, format, format options): changing only the output format
reruns only this layer and what follows. Raw output is not converted at all: the published
file is a hardlink to the bootloader layer's sparse image (or an xz stream with independent
blocks, which tools like ``xz -l``/``qemu-img`` via nbdkit can seek in).

Options reach qemu-img only when set (osbuild's habit): no empty-string argument.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError
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
        for key in ("adapter_type", "hwversion"):
            if options.get(key):
                opts.append(f"{key}={options[key]}")
    if opts:
        argv += ["-o", ",".join(opts)]
    if sys.stdout.isatty():
        argv.append("-p")
    return [*argv, str(src), str(dst)]


def convert(
    disks: list[dict[str, str]], fmt: str, options: dict[str, str], out_dir: Path, seed: str = ""
) -> list[dict[str, Any]]:
    """Write every disk in ``fmt`` into ``out_dir`` as ``<disk>.<ext>``; one record per disk.

    Records carry what descriptors need (sizes, sha256 of the file actually written), so big
    files are hashed once, when built, never to decide whether something is up to date.
    """
    records = []
    for disk in disks:
        src = Path(disk["file"])
        dst = out_dir / file_name(options.get("name"), disk["name"], fmt, options)
        if fmt == "raw" and options.get("compression") == "xz":
            print(f"Compressing {disk['name']} with xz", flush=True)
            tty = sys.stdout.isatty()  # xz -v: progress with rate and time left, on a terminal
            with open(dst, "wb") as out:
                run(
                    ["xz", "--threads=0", f"--block-size={XZ_BLOCK}", "-6", "-c"]
                    + (["-v"] if tty else [])
                    + [str(src)],
                    stdout=out,
                    capture=not tty,
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
                if fmt == "vmdk":
                    settle_vmdk_cid(dst, f"{seed}:{disk['name']}")
                elif fmt == "vdi":
                    settle_vdi_uuids(dst, f"{seed}:{disk['name']}")
            record = describe(dst, fmt)
        records.append(
            {
                "populated_size": src.stat().st_blocks * 512,  # the data, not the holes
                "disk": disk["name"],
                "object_file": dst.name,
                "format": fmt,
                "file_size": dst.stat().st_size,
                **record,
            }
        )
    return records


VMDK_CID = re.compile(rb"\nCID=[0-9a-f]{1,8}\n")  # printf %x: no leading zeros


def settle_vmdk_cid(path: Path, seed: str) -> None:
    """qemu-img draws a vmdk's content id (``CID=`` in its embedded descriptor) at random;
    VMware uses it only to match a child disk to its parent. Same key, same bytes: it becomes
    eight hex digits derived from the key, and the descriptor is rewritten in its own
    zero-padded region (the header's descOffset and descSize, in sectors)."""
    with open(path, "r+b") as f:
        header = f.read(512)
        if header[:4] != b"KDMV":
            raise BuildError(f"{path.name}: not a vmdk with an embedded descriptor")
        offset, size = struct.unpack_from("<QQ", header, 28)
        f.seek(offset * 512)
        region = f.read(size * 512)
        text = region.split(b"\0", 1)[0]
        cid = hashlib.sha256(f"ksbake-vmdk-cid:{seed}".encode()).hexdigest()[:8]
        new, found = VMDK_CID.subn(f"\nCID={cid}\n".encode(), text, count=1)
        if found != 1 or len(new) >= len(region):
            raise BuildError(f"{path.name}: no CID line in the vmdk descriptor qemu-img wrote")
        f.seek(offset * 512)
        f.write(new.ljust(len(region), b"\0"))


VDI_SIGNATURE = 0xBEDA107F
VDI_UUIDS = 0x188  # uuid_image, then uuid_last_snap (qemu block/vdi.c VdiHeader)


def settle_vdi_uuids(path: Path, seed: str) -> None:
    """qemu-img draws a vdi's image and snapshot UUIDs at random (VirtualBox registers disks
    by them): derived from the key instead, in place (the header has no checksum)."""
    with open(path, "r+b") as f:
        header = f.read(512)
        if struct.unpack_from("<I", header, 0x40)[0] != VDI_SIGNATURE:
            raise BuildError(f"{path.name}: not a vdi image")
        f.seek(VDI_UUIDS)
        for which in ("image", "last-snap"):
            digest = hashlib.sha256(f"ksbake-vdi-{which}:{seed}".encode()).digest()
            f.write(uuid.UUID(bytes=digest[:16], version=4).bytes_le)


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
    records = convert(disks, job.inputs["format"], job.inputs["options"], job.stage, job.key)
    (job.stage / "result.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    return {"seal": [r["object_file"] for r in records]}


def records_of(directory: Path) -> list[dict[str, Any]]:
    """The records of a convert object (``directory``): one per disk."""
    records: list[dict[str, Any]] = json.loads((directory / "result.json").read_text())
    return records
