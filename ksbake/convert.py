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
import subprocess
import sys
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError, ConfigError
from ksbake.run import run, which

CODE_VERSION = 1
FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhdx")
EXTENSIONS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhdx": "vhdx"}
QCOW2_COMPRESSION = ("none", "zlib", "zstd")
RAW_COMPRESSION = ("none", "xz")
VMDK_SUBFORMATS = ("streamOptimized", "monolithicSparse")
XZ_BLOCK = "16MiB"


def format_options(fmt: str, settings: Any) -> dict[str, str]:
    """The settings that shape one format's bytes (part of that format's key)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown disk format '{fmt}'", hint=f"use one of {', '.join(FORMATS)}")
    if fmt == "qcow2":
        return {"compression": settings.qcow2_compression}
    if fmt == "raw":
        return {"compression": settings.raw_compression}
    if fmt == "vmdk":
        return {"subformat": settings.vmdk_subformat}
    return {}


def file_name(appliance: str, disk: str, fmt: str, options: dict[str, str]) -> str:
    """``NAME-sda.qcow2`` as appliance-creator named them (``.raw.xz`` when compressed)."""
    suffix = EXTENSIONS[fmt] + (
        ".xz" if fmt == "raw" and options.get("compression") == "xz" else ""
    )
    return f"{appliance}-{disk}.{suffix}"


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


def tool_version() -> str:
    out = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def convert(
    disks: list[dict[str, str]], appliance: str, fmt: str, options: dict[str, str], out_dir: Path
) -> list[dict[str, Any]]:
    """Write every disk in ``fmt`` into ``out_dir``; returns one record per disk."""
    records = []
    for disk in disks:
        src = Path(disk["file"])
        dst = out_dir / file_name(appliance, disk["name"], fmt, options)
        if fmt == "raw" and options.get("compression") == "xz":
            with open(dst, "wb") as out:
                proc = subprocess.run(
                    [which("xz"), "--threads=0", f"--block-size={XZ_BLOCK}", "-6", "-c", src],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            if proc.returncode != 0:
                raise BuildError(f"xz {src.name}: {proc.stderr.decode().strip()}")
        elif fmt == "raw":
            os.link(src, dst)  # the bootloader object's sparse file: no copy at all
        else:
            print(
                f"Converting {disk['name']} to {fmt}"
                + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""),
                flush=True,
            )
            run(
                qemu_img_argv(src, dst, fmt, options),
                capture=not sys.stdout.isatty(),
                what=f"converting {src.name} to {fmt}",
            )
        info = (
            json.loads(run(["qemu-img", "info", "--output=json", dst]).stdout)
            if not (fmt == "raw" and options.get("compression") == "xz")
            else {"virtual-size": src.stat().st_size}
        )
        records.append(
            {
                "disk": disk["name"],
                "file": dst.name,
                "format": fmt,
                "virtual_size": int(info["virtual-size"]),
                "file_size": dst.stat().st_size,
            }
        )
    return records
