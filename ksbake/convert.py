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

CODE_VERSION = 2  # 2: sealed output files
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
    disks: list[dict[str, str]], fmt: str, options: dict[str, str], out_dir: Path
) -> list[dict[str, Any]]:
    """Write every disk in ``fmt`` into ``out_dir`` as ``<disk>.<ext>``; one record per disk.

    Records carry what descriptors need (sizes, sha256 of the file actually written), so big
    files are hashed once, when built, never to decide whether something is up to date.
    """
    from ksbake.descriptors import describe_disk, sha256_file

    records = []
    for disk in disks:
        src = Path(disk["file"])
        dst = out_dir / file_name(None, disk["name"], fmt, options)
        if fmt == "raw" and options.get("compression") == "xz":
            print(f"Compressing {disk['name']} with xz", flush=True)
            with open(dst, "wb") as out:
                proc = subprocess.run(
                    [which("xz"), "--threads=0", f"--block-size={XZ_BLOCK}", "-6", "-c", src],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            if proc.returncode != 0:
                raise BuildError(f"xz {src.name}: {proc.stderr.decode().strip()}")
            record = {"virtual_size": src.stat().st_size, "sha256": sha256_file(dst)}
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
            info = describe_disk(disk["name"], dst, fmt)
            record = {"virtual_size": info.virtual_size, "sha256": info.sha256}
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


# -- the layer step, run in the build process ----------------------------------------------


def step(paths: Any, name: str) -> None:
    """Obtain one converted object per output format (each reused while its inputs hold)."""
    import time

    from ksbake import bootloader, report
    from ksbake.hashing import canonical_json, layer_key, write_if_changed
    from ksbake.store import Store

    build = paths.build_dir(name)
    inputs = json.loads((build / "inputs" / "convert.json").read_text())
    bl_key = json.loads((build / "bootloader.ref").read_text())["key"]
    directory, result = bootloader.result_of(paths, bl_key)
    disks = [{"name": d["name"], "file": str(directory / d["file"])} for d in result["disks"]]
    tool = tool_version()
    refs = {}
    for fmt, options in inputs["formats"].items():
        started = time.monotonic()
        key = layer_key(
            "convert",
            CODE_VERSION,
            {"format": fmt, "options": options, "tools": tool},
            {"bootloader": bl_key},
        )

        def build_format(staging: Path, fmt: str = fmt, options: dict = options) -> dict:
            records = convert(disks, fmt, options, staging)
            (staging / "result.json").write_text(json.dumps(records, indent=1, sort_keys=True))
            return {
                "size": report.tree_size(staging),
                "parents": {"bootloader": bl_key},
                "seal": [r["object_file"] for r in records],
            }

        obtained = Store(paths.store).obtain("convert", key, build_format)
        refs[fmt] = {"key": key, "options": options}
        report.record(
            paths,
            name,
            f"convert-{fmt}",
            key,
            obtained.built,
            time.monotonic() - started,
            obtained.meta.get("size"),
        )
    write_if_changed(build / "convert.ref", canonical_json(refs) + "\n")


def records_of(paths: Any, key: str) -> tuple[Path, list[dict[str, Any]]]:
    from ksbake.store import Store

    directory = Store(paths.store).object_dir("convert", key)
    return directory, json.loads((directory / "result.json").read_text())
