"""The disk formats: one table for the convert layer (what to write), the descriptors (what
each can reference) and publishing (file names).

Probing a written image (virtual size, digest) belongs to the layer that writes it (convert);
descriptors only consume its records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ksbake.errors import ConfigError


@dataclass(frozen=True)
class Format:
    name: str  # qemu-img's name for it
    extension: str
    virt_image: bool  # virtinst's ImageParser read it (image.rng itself allows only raw)
    libvirt: bool  # libvirt 9's <driver type> accepts it (storagecommon.rng has no vhdx)
    ovf: bool  # VMware and VirtualBox both import it from an OVF (streamOptimized vmdk)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("raw", "raw", virt_image=True, libvirt=True, ovf=False),
        Format("qcow2", "qcow2", virt_image=True, libvirt=True, ovf=False),
        Format("vmdk", "vmdk", virt_image=True, libvirt=True, ovf=True),
        Format("vdi", "vdi", virt_image=True, libvirt=True, ovf=False),
        Format("vhdx", "vhdx", virt_image=False, libvirt=False, ovf=False),
    )
}
VIRT_IMAGE_FORMATS = tuple(f.name for f in FORMATS.values() if f.virt_image)
LIBVIRT_FORMATS = tuple(f.name for f in FORMATS.values() if f.libvirt)
OVF_FORMATS = tuple(f.name for f in FORMATS.values() if f.ovf)

QCOW2_COMPRESSION = ("none", "zlib", "zstd")
RAW_COMPRESSION = ("none", "xz")
VMDK_SUBFORMATS = ("streamOptimized", "monolithicSparse")


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


def file_name(appliance: str | None, disk: str, fmt: str, options: dict[str, str]) -> str:
    """``NAME-sda.qcow2`` as appliance-creator named them (``.raw.xz`` when compressed).

    The convert layer names its store files with ``appliance=None`` ("None-sda.vmdk"), and a
    vmdk records its own file name in its extent line: the outputs issue (#11) changes that
    to the published name, which changes those bytes, so this refactor leaves it alone."""
    suffix = FORMATS[fmt].extension + (
        ".xz" if fmt == "raw" and options.get("compression") == "xz" else ""
    )
    return f"{appliance}-{disk}.{suffix}"
