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

DESCRIPTORS = ("virt-image", "libvirt", "ovf")
VMDK_ADAPTERS = ("lsilogic", "buslogic", "ide")  # qemu-img's adapter_type (no sata)
VMDK_HWVERSION = "7"  # ddb.virtualHWVersion: the OVF's VirtualSystemType vmx-07

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
    if fmt == "vmdk":  # the extent line names the file: the published name
        return {
            "subformat": settings.vmdk_subformat,
            "adapter_type": settings.vmdk_adapter,
            "hwversion": VMDK_HWVERSION,
            "name": settings.name,
        }
    return {}


def runnable(fmt: str, options: dict[str, str]) -> bool:
    """Whether a hypervisor can run the file as written (an xz-compressed raw disk must be
    unpacked first: appliance-creator's descriptors named it anyway, and the VM did not boot)."""
    return not (fmt == "raw" and options.get("compression") == "xz")


def describable(descriptor: str, fmt: str) -> bool:
    """Whether ``descriptor`` (virt-image, libvirt, ovf) can name a ``fmt`` disk."""
    spec = FORMATS[fmt]
    return {"virt-image": spec.virt_image, "libvirt": spec.libvirt, "ovf": spec.ovf}[descriptor]


def pick_format(
    descriptor: str, formats: list[str], options: dict[str, dict[str, str]], chosen: str | None
) -> str | None:
    """The format ``descriptor`` describes: ``chosen`` (descriptor_format) if it can, else the
    first runnable format in ``formats`` that it can; None if there is none."""
    for fmt in [chosen] if chosen else formats:
        if describable(descriptor, fmt) and runnable(fmt, options.get(fmt, {})):
            return fmt
    return None


def file_name(appliance: str | None, disk: str, fmt: str, options: dict[str, str]) -> str:
    """``NAME-sda.qcow2`` as appliance-creator named them (``.raw.xz`` when compressed);
    ``sda.qcow2`` without an appliance (the convert layer's store files, except vmdk's: a vmdk
    records its own file name in its extent line, so it is written under the published name)."""
    suffix = FORMATS[fmt].extension + (
        ".xz" if fmt == "raw" and options.get("compression") == "xz" else ""
    )
    return f"{appliance}-{disk}.{suffix}" if appliance else f"{disk}.{suffix}"
