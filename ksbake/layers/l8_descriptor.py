"""Hypervisor descriptors for a built appliance: virt-image XML, libvirt domain XML, OVF/OVA.

The descriptor layer knows the appliance's settings and its converted disks; these pure
functions turn that (an ``Appliance``) into the bytes of each descriptor, so identical inputs
give identical files (no UUIDs, MAC addresses, timestamps or host facts: the arch is the
image's, never the build host's, which was one of appliance-creator's bugs).

- ``virt_image_xml``: the virt-image(5) descriptor appliance-creator wrote (its
  ``_write_image_xml``), read by virt-image(1) / virtinst's ``ImageParser``. The 2008 RelaxNG
  grammar (``image.rng``) is stricter than that parser; where they differ we follow the
  parser (the tool that consumed the files), see ``virt_image_xml``.
- ``libvirt_domain_xml``: a domain that imports the disks, for ``virsh define``.
- ``ovf_xml`` / ``ovf_manifest`` / ``write_ova``: an OVF 1.0 package that both VMware and
  VirtualBox import.

The XML writers are pure; the I/O is ``write_ova`` (packs files the caller already wrote) and
``build``, the layer's build, which reads the convert layer's records (sizes and digests are
probed by the layer that wrote the images, never here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lxml import etree

from ksbake.errors import ConfigError
from ksbake.formats import (
    FORMATS,
    LIBVIRT_FORMATS,
    OVF_FORMATS,
    VIRT_IMAGE_FORMATS,
    file_name,
    pick_format,
)
from ksbake.hashing import sha256_file
from ksbake.layers.l7_convert import records_of
from ksbake.run import OSINFO_DB
from ksbake.runner import Job
from ksbake.settings import NAME_RE, VERSION_RE

KiB = 1024
MiB = 1024 * 1024

ARCHES = ("x86_64", "i686", "aarch64")

VMDK_STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
GUEST_AGENT = ("usr/bin/qemu-ga", "usr/sbin/qemu-ga")

# libvirt machine type and whether the arch has x86 features (apic, rtc/pit timers).
_LIBVIRT_MACHINES = {"x86_64": ("q35", True), "i686": ("q35", True), "aarch64": ("virt", False)}

# CIM_OperatingSystem OsType (ovf:id) and VMware guest id per arch. 101 "Linux 64-Bit" /
# otherLinux64Guest is what ovftool writes for "Other Linux (64-bit)"; 36 is "LINUX".
_OVF_OS = {
    "x86_64": ("101", "otherLinux64Guest", "Linux (64-bit)"),
    "i686": ("36", "otherLinuxGuest", "Linux (32-bit)"),
    "aarch64": ("101", None, "Linux (64-bit)"),
}

_NAME_RE = NAME_RE
_VERSION_RE = VERSION_RE
_DISK_RE = re.compile(r"[A-Za-z0-9]+")
_FILE_RE = re.compile(r"[A-Za-z0-9_.+%-]+")  # image.rng relFilePath without "/"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_USTAR_MAX = 8**11 - 1  # a ustar size field holds 11 octal digits


@dataclass(frozen=True)
class DiskImage:
    """One converted disk file, as the descriptors reference it."""

    disk: str  # kickstart --ondisk name: sda, sdb, vda ...
    file: str  # basename, e.g. "demo-sda.qcow2" (descriptors sit next to their disks)
    format: str  # one of FORMATS
    virtual_size: int  # bytes the guest sees
    file_size: int  # bytes of the file (OVF References need it)
    sha256: str  # hex digest of the file
    populated_size: int | None = None  # bytes of data in the disk (OVF's populatedSize)

    def __post_init__(self) -> None:
        where = f"disk {self.disk!r}"
        if not _DISK_RE.fullmatch(self.disk):
            raise ConfigError(f"{where}: disk name must be letters and digits (sda, vdb)")
        if not _FILE_RE.fullmatch(self.file):
            raise ConfigError(
                f"{where}: file {self.file!r} must be a plain file name",
                hint="descriptors reference disks relative to themselves",
            )
        if self.format not in FORMATS:
            raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}")
        if self.virtual_size <= 0 or self.file_size < 0:
            raise ConfigError(f"{where}: sizes must be positive")
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ConfigError(f"{where}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Appliance:
    """Everything the descriptors say about an appliance, and nothing else.

    ``nics`` is one per kickstart ``network`` line, as appliance-creator counted them (it wrote
    one ``<interface/>`` per line of ``ks.handler.network.network``): no ``network`` line means
    no NIC. ``graphics`` defaults to True because appliance-creator always wrote
    ``<graphics/>``. ``boot_disk`` is the disk holding /boot (or /), where GRUB is installed;
    it defaults to the first disk.
    """

    name: str
    disks: tuple[DiskImage, ...]
    version: str = ""  # "" leaves the attribute out, as appliance-creator did
    release: str = ""
    arch: str = "x86_64"  # the IMAGE's architecture
    vcpus: int = 1
    memory_mib: int = 512
    firmware: str = "bios"  # "bios" | "uefi"
    nics: int = 1
    graphics: bool = True
    boot_disk: str | None = None
    adapter: str = "lsilogic"  # the OVF's disk controller: the vmdk's ddb.adapterType
    os_id: str | None = None  # libosinfo's id of the installed OS (the libvirt domain says it)
    guest_agent: bool = False  # the tree has qemu-guest-agent: give it its virtio channel
    xen_pv: bool = False  # the tree's kernel boots as a Xen PV guest (CONFIG_XEN_PV=y)
    vendor: str | None = None  # the OVF ProductSection's Vendor

    def __post_init__(self) -> None:
        object.__setattr__(self, "disks", tuple(self.disks))
        where = f"appliance {self.name!r}"
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"{where}: name must be letters, digits and . _ + - (it names files and domains)"
            )
        for label, value in (("version", self.version), ("release", self.release)):
            if not _VERSION_RE.fullmatch(value):
                raise ConfigError(f"{where}: {label} {value!r} must be letters, digits, . _ + ~")
        if self.arch not in ARCHES:
            raise ConfigError(f"{where}: arch must be one of {', '.join(ARCHES)}")
        if not 1 <= self.vcpus <= 65535:
            raise ConfigError(f"{where}: vcpus must be between 1 and 65535")
        if self.memory_mib < 4:
            raise ConfigError(f"{where}: memory must be at least 4 MiB")
        if self.firmware not in ("bios", "uefi"):
            raise ConfigError(f"{where}: firmware must be 'bios' or 'uefi'")
        if self.firmware == "bios" and self.arch == "aarch64":
            raise ConfigError(f"{where}: aarch64 has no BIOS", hint="set firmware = 'uefi'")
        if self.nics < 0:
            raise ConfigError(f"{where}: nics must be 0 or more")
        if not self.disks:
            raise ConfigError(f"{where}: an appliance needs at least one disk")
        if len(set(self.disk_names)) != len(self.disks):
            raise ConfigError(f"{where}: disk names repeat: {', '.join(self.disk_names)}")
        if len({d.file for d in self.disks}) != len(self.disks):
            raise ConfigError(f"{where}: disk file names repeat")
        if self.boot_disk is not None and self.boot_disk not in self.disk_names:
            raise ConfigError(f"{where}: boot disk {self.boot_disk!r} is not one of its disks")

    @property
    def disk_names(self) -> tuple[str, ...]:
        """The --ondisk names, in kickstart order."""
        return tuple(d.disk for d in self.disks)

    def ordered_disks(self) -> tuple[DiskImage, ...]:
        """Boot disk first, then the others in --ondisk order.

        Firmware boots the first disk (hda, vda, SCSI 0:0), so the disk with GRUB must come
        first whatever its kickstart name; fstab mounts by UUID, so target names do not matter
        to the guest.
        """
        boot = self.boot_disk or self.disks[0].disk
        return tuple(sorted(self.disks, key=lambda d: d.disk != boot))

    @property
    def full_version(self) -> str:
        """``VERSION-RELEASE`` (or whichever is set)."""
        return "-".join(v for v in (self.version, self.release) if v)


def device_name(prefix: str, index: int) -> str:
    """``hda``, ``hdb`` … ``hdz``, ``hdaa`` …, the way libvirt and Linux name disks."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def _serialize(root: etree._Element, *, declaration: bool) -> bytes:
    """Pretty, deterministic bytes (attribute order is insertion order)."""
    return etree.tostring(root, pretty_print=True, xml_declaration=declaration, encoding="UTF-8")


def _sub(
    parent: etree._Element,
    tag: str,
    text: str | None = None,
    attrs: Mapping[str, str] | None = None,
    **kw: str,
) -> etree._Element:
    """A child element; ``attrs`` for namespaced attribute names, keywords for plain ones."""
    child = etree.SubElement(parent, tag, {**(attrs or {}), **kw})
    if text is not None:
        child.text = text
    return child


# --------------------------------------------------------------------------- virt-image


def virt_image_xml(app: Appliance) -> bytes:
    """The virt-image(5) descriptor, shaped like appliance-creator's output.

    Kept from appliance-creator: ``<name version= release=>``, one hvm ``<boot>`` with
    ``<loader dev='hd'/>``, one ``<drive target='hdX'>`` per disk, ``<memory>`` in KiB, one
    ``<interface/>`` per NIC, ``<graphics/>``, ``use='system'`` disks with their format.
    Fixed: the arch is the image's; the one checksum is the sha256 of the very file listed
    (appliance-creator wrote sha1 and sha256, which image.rng rejects, and hashed the wrong
    file); the boot disk is hda.

    Where image.rng (2008) is stricter than virtinst's ImageParser, which read these files,
    the output follows the parser: ``format`` qcow2/vmdk/vdi (the grammar allows only
    raw/iso), no ``<graphics/>`` when graphics is off (the grammar requires it), arch
    aarch64 (not in the grammar's list), a version/release with letters (the grammar's
    verString is digits and dots). A raw x86 appliance with graphics and a numeric version
    validates against image.rng. virt-image(5) cannot say "UEFI": a uefi appliance gets an
    XML comment saying so, and should be imported with the libvirt domain XML instead.
    """
    bad = [d.file for d in app.disks if d.format not in VIRT_IMAGE_FORMATS]
    if bad:
        raise ConfigError(
            f"appliance {app.name!r}: virt-image(5) cannot describe {', '.join(bad)}",
            hint=f"virt-image reads {', '.join(VIRT_IMAGE_FORMATS)}; use the libvirt or OVF "
            "descriptor for this format",
        )
    image = etree.Element("image")
    name = _sub(image, "name", app.name)
    if app.version:
        name.set("version", app.version)
    if app.release:
        name.set("release", app.release)
    domain = _sub(image, "domain")
    if app.firmware == "uefi":
        domain.append(
            etree.Comment(
                " firmware: uefi. virt-image(5) cannot express it: import this appliance "
                "with its libvirt domain XML (os firmware='efi') "
            )
        )
    boot = _sub(domain, "boot", type="hvm")
    guest = _sub(boot, "guest")
    _sub(guest, "arch", app.arch)
    _sub(_sub(boot, "os"), "loader", dev="hd")
    ordered = app.ordered_disks()
    for index, disk in enumerate(ordered):
        _sub(boot, "drive", disk=disk.file, target=device_name("hd", index))
    if app.xen_pv and app.firmware == "bios" and app.arch in ("x86_64", "i686"):
        # paravirt Xen, as virt-image(5) allowed beside hvm: pygrub reads grub.cfg from the
        # first drive (the boot disk), the kernel needs no firmware
        xen = _sub(domain, "boot", type="xen")
        xen_guest = _sub(xen, "guest")
        _sub(xen_guest, "arch", app.arch)
        if app.arch == "i686":
            _sub(_sub(xen_guest, "features"), "pae")
        _sub(_sub(xen, "os"), "loader", "pygrub")
        for index, disk in enumerate(ordered):
            _sub(xen, "drive", disk=disk.file, target=device_name("xvd", index))
    devices = _sub(domain, "devices")
    _sub(devices, "vcpu", str(app.vcpus))
    _sub(devices, "memory", str(app.memory_mib * KiB))
    for _ in range(app.nics):
        _sub(devices, "interface")
    if app.graphics:
        _sub(devices, "graphics")
    storage = _sub(image, "storage")
    for disk in ordered:
        element = _sub(storage, "disk", file=disk.file, use="system", format=disk.format)
        _sub(element, "checksum", disk.sha256, type="sha256")
    return _serialize(image, declaration=False)


# --------------------------------------------------------------------------- libvirt


def libvirt_domain_xml(
    app: Appliance,
    disk_paths: Sequence[str | os.PathLike[str]],
    *,
    domain_type: str = "kvm",
    emulator: str | None = None,
    serial_log: str | None = None,
    network: str | None = "default",
    graphics: bool | None = None,
) -> bytes:
    """A libvirt domain that imports the appliance's disks (``virsh define FILE``).

    ``disk_paths[i]`` is where ``app.disks[i]`` lives on the host (absolute paths: libvirt
    does not resolve relative ones). Shape follows ``virt-install --import`` (virtio disks
    with ``<driver type>``, ``<boot order>`` on the boot disk, ``<os firmware='efi'>``) and the
    2008 oVirt WUI template (on_poweroff/on_reboot/on_crash, serial + console, VNC on
    127.0.0.1). No uuid and no MAC addresses: libvirt generates them at define time.

    ``domain_type``: "kvm", or "qemu" for TCG (where the CPU is ``mode='maximum'``, QEMU's
    ``-cpu max``; with KVM it is ``host-passthrough``). ``network``: the libvirt network each
    NIC joins (``default`` is what virt-install uses); None gives user-mode networking,
    which needs no libvirt network. ``serial_log``: write the serial console to this file
    instead of a pty. ``graphics``: None follows ``app.graphics``.
    """
    if len(disk_paths) != len(app.disks):
        raise ConfigError(
            f"appliance {app.name!r}: {len(app.disks)} disks but {len(disk_paths)} disk paths"
        )
    if domain_type not in ("kvm", "qemu"):
        raise ConfigError(f"libvirt domain type must be 'kvm' or 'qemu', got {domain_type!r}")
    bad = [d.file for d in app.disks if d.format not in LIBVIRT_FORMATS]
    if bad:
        raise ConfigError(
            f"appliance {app.name!r}: libvirt cannot attach {', '.join(bad)}",
            hint=f"libvirt reads {', '.join(LIBVIRT_FORMATS)} disks; convert to qcow2",
        )
    paths = {d.disk: os.fspath(p) for d, p in zip(app.disks, disk_paths, strict=True)}
    for path in paths.values():
        if not os.path.isabs(path):
            raise ConfigError(f"libvirt disk path must be absolute, got {path!r}")
    machine, x86 = _LIBVIRT_MACHINES[app.arch]

    domain = etree.Element("domain", type=domain_type)
    _sub(domain, "name", app.name)
    if app.full_version:
        _sub(domain, "description", f"{app.name} {app.full_version}")
    if app.os_id:  # as virt-install writes it: virt-manager and libvirt tools read it
        metadata = _sub(domain, "metadata")
        info = etree.SubElement(
            metadata, f"{{{LIBOSINFO_NS}}}libosinfo", nsmap={"libosinfo": LIBOSINFO_NS}
        )
        etree.SubElement(info, f"{{{LIBOSINFO_NS}}}os", id=app.os_id)
    _sub(domain, "memory", str(app.memory_mib * KiB), unit="KiB")
    _sub(domain, "currentMemory", str(app.memory_mib * KiB), unit="KiB")
    _sub(domain, "vcpu", str(app.vcpus))
    os_el = _sub(domain, "os")
    if app.firmware == "uefi":
        os_el.set("firmware", "efi")
    _sub(os_el, "type", "hvm", arch=app.arch, machine=machine)
    if app.firmware == "uefi":
        # ksbake's GRUB EFI binary is unsigned: keep autoselection off Secure Boot builds.
        _sub(_sub(os_el, "firmware"), "feature", enabled="no", name="secure-boot")
    features = _sub(domain, "features")
    _sub(features, "acpi")
    if x86:
        _sub(features, "apic")
    _sub(domain, "cpu", mode="host-passthrough" if domain_type == "kvm" else "maximum")
    clock = _sub(domain, "clock", offset="utc")
    if x86:
        _sub(clock, "timer", name="rtc", tickpolicy="catchup")
        _sub(clock, "timer", name="pit", tickpolicy="delay")
        _sub(clock, "timer", name="hpet", present="no")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if emulator:
        _sub(devices, "emulator", emulator)
    for index, disk in enumerate(app.ordered_disks()):
        element = _sub(devices, "disk", type="file", device="disk")
        _sub(element, "driver", name="qemu", type=disk.format)
        _sub(element, "source", file=paths[disk.disk])
        _sub(element, "target", dev=device_name("vd", index), bus="virtio")
        if index == 0:
            _sub(element, "boot", order="1")
    for _ in range(app.nics):
        if network is None:
            nic = _sub(devices, "interface", type="user")
        else:
            nic = _sub(devices, "interface", type="network")
            _sub(nic, "source", network=network)
        _sub(nic, "model", type="virtio")
    kind = "file" if serial_log else "pty"
    for tag in ("serial", "console"):
        chardev = _sub(devices, tag, type=kind)
        if serial_log:
            _sub(chardev, "source", path=serial_log)
        if tag == "serial":
            _sub(chardev, "target", port="0")
        else:
            _sub(chardev, "target", type="serial", port="0")
    if app.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if app.graphics if graphics is None else graphics:
        _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    return _serialize(domain, declaration=False)


# --------------------------------------------------------------------------- OVF


def _ovf(name: str) -> str:
    return f"{{{OVF_NS}}}{name}"


def _rasd_item(parent: etree._Element, values: Mapping[str, str]) -> etree._Element:
    """An Item whose rasd: children come in alphabetical order, as the CIM schema requires."""
    item = _sub(parent, _ovf("Item"))
    for key in sorted(values):
        _sub(item, f"{{{RASD_NS}}}{key}", values[key])
    return item


def ovf_xml(app: Appliance) -> bytes:
    """An OVF 1.0 descriptor that VMware (ovftool, vSphere, Workstation) and VirtualBox import.

    Shape follows the VMware exports in the corpus (vmware-virtualcenter-*.ovf,
    vmware-ovftool-gzip.ovf), which VirtualBox's ovfreader also reads: hardware family
    ``vmx-07`` (VMware rejects VirtualBox's ``virtualbox-2.2``), an lsilogic SCSI controller
    (ResourceType 6) with the disks, E1000 NICs, memory in ``byte * 2^20`` (the DMTF unit;
    VirtualBox also accepts it), disk capacity in bytes (VirtualBox's form, which VMware
    reads too). Every disk must be a streamOptimized vmdk (the convert layer's
    ``subformat``). An .ova holds this same descriptor (the OVF spec changes nothing inside
    it), so there is no ova flag: packing is ``write_ova``'s job. No NIC, no NetworkSection.
    """
    bad = [d.file for d in app.disks if d.format not in OVF_FORMATS]
    if bad:
        raise ConfigError(
            f"appliance {app.name!r}: OVF needs vmdk disks, not {', '.join(bad)}",
            hint="set format = 'vmdk' (subformat streamOptimized) for VMware/VirtualBox",
        )
    os_id, vmw_os, os_text = _OVF_OS[app.arch]
    nsmap = {None: OVF_NS, "ovf": OVF_NS, "rasd": RASD_NS, "vssd": VSSD_NS}
    nsmap |= {"vmw": VMW_NS, "xsi": XSI_NS}
    envelope = etree.Element(_ovf("Envelope"), nsmap=nsmap)
    envelope.append(etree.Comment(" Generated by ksbake "))

    ordered = app.ordered_disks()
    references = _sub(envelope, _ovf("References"))
    for n, disk in enumerate(ordered, 1):
        attrs = {_ovf("href"): disk.file, _ovf("id"): f"file{n}", _ovf("size"): str(disk.file_size)}
        _sub(references, _ovf("File"), attrs=attrs)
    disk_section = _sub(envelope, _ovf("DiskSection"))
    _sub(disk_section, _ovf("Info"), "Virtual disk information")
    for n, disk in enumerate(ordered, 1):
        attrs = {
            _ovf("capacity"): str(disk.virtual_size),
            _ovf("diskId"): f"vmdisk{n}",
            _ovf("fileRef"): f"file{n}",
            _ovf("format"): VMDK_STREAM_OPTIMIZED,
        }
        if disk.populated_size is not None:  # what a thin-provisioned copy will take
            attrs[_ovf("populatedSize")] = str(disk.populated_size)
        _sub(disk_section, _ovf("Disk"), attrs=attrs)
    network_name = "VM Network"
    if app.nics:
        networks = _sub(envelope, _ovf("NetworkSection"))
        _sub(networks, _ovf("Info"), "The list of logical networks")
        network = _sub(networks, _ovf("Network"), attrs={_ovf("name"): network_name})
        _sub(network, _ovf("Description"), f"The {network_name} network")

    system = _sub(envelope, _ovf("VirtualSystem"), attrs={_ovf("id"): app.name})
    _sub(system, _ovf("Info"), "A virtual machine")
    _sub(system, _ovf("Name"), app.name)
    os_attrs = {_ovf("id"): os_id} | ({f"{{{VMW_NS}}}osType": vmw_os} if vmw_os else {})
    os_section = _sub(system, _ovf("OperatingSystemSection"), attrs=os_attrs)
    _sub(os_section, _ovf("Info"), "The kind of installed guest operating system")
    _sub(os_section, _ovf("Description"), os_text)

    hardware = _sub(system, _ovf("VirtualHardwareSection"))
    _sub(hardware, _ovf("Info"), "Virtual hardware requirements")
    vssd = _sub(hardware, _ovf("System"))
    for key, value in (
        ("ElementName", "Virtual Hardware Family"),
        ("InstanceID", "0"),
        ("VirtualSystemIdentifier", app.name),
        ("VirtualSystemType", "vmx-07"),
    ):
        _sub(vssd, f"{{{VSSD_NS}}}{key}", value)
    instance = iter(range(1, 1 << 16))
    _rasd_item(
        hardware,
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of Virtual CPUs",
            "ElementName": f"{app.vcpus} virtual CPU(s)",
            "InstanceID": str(next(instance)),
            "ResourceType": "3",
            "VirtualQuantity": str(app.vcpus),
        },
    )
    _rasd_item(
        hardware,
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory Size",
            "ElementName": f"{app.memory_mib}MB of memory",
            "InstanceID": str(next(instance)),
            "ResourceType": "4",
            "VirtualQuantity": str(app.memory_mib),
        },
    )
    controller = str(next(instance))
    if app.adapter == "ide":  # ResourceType 5: an IDE controller, two disks on it
        item = {"Description": "IDE Controller", "ElementName": "IDE controller 0"}
        item |= {"ResourceType": "5"}
        units = [0, 1]
    else:  # ResourceType 6: a parallel SCSI HBA; IDs 0-15 except 7, the controller's own
        item = {"Description": "SCSI Controller", "ElementName": "SCSI controller 0"}
        item |= {"ResourceSubType": app.adapter, "ResourceType": "6"}
        units = [u for u in range(16) if u != 7]
    _rasd_item(hardware, {"Address": "0", "InstanceID": controller, **item})
    if len(ordered) > len(units):
        raise ConfigError(
            f"appliance {app.name!r}: OVF: at most {len(units)} disks on one {app.adapter} "
            "controller"
        )
    for n, unit in enumerate(units[: len(ordered)], 1):
        _rasd_item(
            hardware,
            {
                "AddressOnParent": str(unit),
                "ElementName": f"Hard disk {n}",
                "HostResource": f"ovf:/disk/vmdisk{n}",
                "InstanceID": str(next(instance)),
                "Parent": controller,
                "ResourceType": "17",
            },
        )
    for n in range(1, app.nics + 1):
        _rasd_item(
            hardware,
            {
                "AutomaticAllocation": "true",
                "Connection": network_name,
                "Description": f'E1000 ethernet adapter on "{network_name}"',
                "ElementName": f"Network adapter {n}",
                "InstanceID": str(next(instance)),
                "ResourceSubType": "E1000",
                "ResourceType": "10",
            },
        )
    if app.firmware == "uefi":
        # VMware's extension (VirtualBox skips it: it only reads Item children here).
        attrs = {
            _ovf("required"): "false",
            f"{{{VMW_NS}}}key": "firmware",
            f"{{{VMW_NS}}}value": "efi",
        }
        _sub(hardware, f"{{{VMW_NS}}}Config", attrs=attrs)

    product = _sub(system, _ovf("ProductSection"))
    _sub(product, _ovf("Info"), "Information about the installed software")
    _sub(product, _ovf("Product"), app.name)
    if app.vendor:
        _sub(product, _ovf("Vendor"), app.vendor)
    if app.version:
        _sub(product, _ovf("Version"), app.version)
    if app.full_version:
        _sub(product, _ovf("FullVersion"), app.full_version)
    return _serialize(envelope, declaration=True)


MANIFEST_DIGESTS = {"sha256": ("SHA256", 64), "sha1": ("SHA1", 40)}


def ovf_manifest(files: Mapping[str, str], algorithm: str = "sha256") -> str:
    """The .mf text: ``SHA256(name)= hex`` (or ``SHA1(...)``) per file, in the order given.

    The OVF 1.0 specification (DSP0243) names SHA-1, and vSphere before 6.5 and ovftool before
    4.2 accept nothing else; ovftool 4.2+, vSphere 6.5+ and VirtualBox 5.1+ read (and write)
    SHA-256 lines. The ``ovf_digest`` setting chooses. List the descriptor first, then the disks.
    """
    tag, width = MANIFEST_DIGESTS[algorithm]
    lines = []
    for name, digest in files.items():
        if "/" in name or not name:
            raise ConfigError(f"manifest entry {name!r} must be a plain file name")
        if not re.fullmatch(f"[0-9a-f]{{{width}}}", digest):
            raise ConfigError(
                f"manifest entry {name!r}: {algorithm} must be {width} lowercase hex digits"
            )
        lines.append(f"{tag}({name})= {digest}\n")
    return "".join(lines)


def file_digest(path: Path, algorithm: str) -> str:
    """hex digest of a file (sha256 is already known for disks: only sha1 reads them again)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def ovf_references(ovf: bytes) -> list[str]:
    """The ``ovf:href`` of every References/File, in order (the order an .ova must follow)."""
    root = etree.fromstring(ovf)
    return [f.get(_ovf("href")) for f in root.iterfind(f"{_ovf('References')}/{_ovf('File')}")]


class _Progress:
    """A file being read, its progress shown on a terminal (one line rewritten in place:
    percent, rate, time left); a plain read when the output is a log."""

    def __init__(self, stream: Any, label: str, size: int) -> None:
        import sys
        import time

        self.stream, self.label, self.size = stream, label, size
        self.tty = sys.stdout.isatty() and size > 64 * 2**20  # small members: no bar
        self.done, self.started, self.shown = 0, time.monotonic(), 0.0

    def read(self, n: int = -1) -> bytes:
        import time

        data: bytes = self.stream.read(n)
        self.done += len(data)
        now = time.monotonic()
        if self.tty and (now - self.shown > 0.5 or self.done == self.size):
            self.shown = now
            rate = self.done / max(now - self.started, 1e-3)
            left = (self.size - self.done) / max(rate, 1)
            print(
                f"\r  packing {self.label}: {100 * self.done // max(self.size, 1):3d}% "
                f"{rate / 2**20:6.1f} MiB/s {left:4.0f} s left",
                end="\n" if self.done == self.size else "",
                flush=True,
            )
        return data


def write_ova(
    ovf_path: str | os.PathLike[str],
    disk_paths: Sequence[str | os.PathLike[str]],
    mf_path: str | os.PathLike[str] | None,
    out_path: str | os.PathLike[str],
    *,
    mtime: int | None = None,
) -> Path:
    """Pack an .ova: a ustar archive of the descriptor, then the manifest, then the disks.

    That order is the OVF specification's (descriptor first, manifest next, then files in
    References order), so an importer can stream it. Members carry only their basename,
    owner 0/0, mode 0644 and ``mtime`` (default SOURCE_DATE_EPOCH, else 0): the same inputs
    give the same archive. A member of 8 GiB or more does not fit a ustar size field; the
    archive then uses the GNU format (base-256 sizes), which VMware and VirtualBox read.
    Written to a temporary name and renamed, so a failure leaves no partial .ova.
    """
    ovf_file = Path(ovf_path)
    disks = [Path(p) for p in disk_paths]
    hrefs = ovf_references(ovf_file.read_bytes())
    by_name = {p.name: p for p in disks}
    if sorted(by_name) != sorted(hrefs) or len(by_name) != len(disks):
        raise ConfigError(
            f"{ovf_file}: References list {', '.join(hrefs)}, "
            f"but the disks given are {', '.join(p.name for p in disks)}"
        )
    members = [ovf_file, *([Path(mf_path)] if mf_path else []), *(by_name[h] for h in hrefs)]
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    sizes = [m.stat().st_size for m in members]
    fmt = tarfile.USTAR_FORMAT if max(sizes) <= _USTAR_MAX else tarfile.GNU_FORMAT
    out = Path(out_path)
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w", format=fmt) as tar:
            for member, size in zip(members, sizes, strict=True):
                info = tarfile.TarInfo(member.name)
                info.size = size
                info.mtime = mtime
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with member.open("rb") as stream:
                    tar.addfile(info, _Progress(stream, f"{out.name}: {member.name}", size))
        partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


# -- the layer's build --------------------------------------------------------------------


def appliance_for(
    inputs: dict[str, Any], fmt: str, item: dict[str, Any], boot_disk: str | None
) -> Appliance:
    """The ``Appliance`` describing the published ``fmt`` disks (``item``: the convert
    object of that format, as the job's parent)."""
    disks = tuple(
        DiskImage(
            disk=r["disk"],
            file=file_name(inputs["name"], r["disk"], fmt, item["inputs"]["options"]),
            format=fmt,
            virtual_size=r["virtual_size"],
            file_size=r["file_size"],
            sha256=r["sha256"],
            populated_size=r.get("populated_size"),
        )
        for r in records_of(Path(item["dir"]))
    )
    return Appliance(
        name=inputs["name"],
        disks=disks,
        version=inputs["version"],
        release=inputs["release"],
        arch=inputs["arch"],
        vcpus=inputs["vcpus"],
        memory_mib=inputs["memory"],
        firmware="uefi" if inputs["firmware"] == "uefi" else "bios",
        nics=inputs["nics"],
        boot_disk=boot_disk,
        vendor=inputs.get("vendor"),
    )


def _tree_layers(convert_dir: Path) -> list[Path]:
    """The configured tree the converted disks were made of (topmost layer first), found
    through the objects' parents: convert -> bootloader -> disks -> config (-> packages)."""
    from ksbake.layers.l4_config import tree_layers

    objects = convert_dir.parent.parent
    key = json.loads((convert_dir / "meta.json").read_text())["parents"]["bootloader"]
    for layer, parent in (("bootloader", "disks"), ("disks", "config")):
        key = json.loads((objects / layer / key / "meta.json").read_text())["parents"][parent]
    return tree_layers(objects / "config" / key)


def _in_tree(layers: list[Path], rel: str) -> Path | None:
    """A regular file of the tree (the topmost layer's), never through a symlink."""
    for layer in layers:
        path = layer / rel
        if path.is_symlink() or path.exists():
            return path if path.is_file() and not path.is_symlink() else None
    return None


def os_release(layers: list[Path]) -> dict[str, str]:
    """The tree's os-release fields (/etc/os-release, else /usr/lib/os-release)."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = _in_tree(layers, rel)
        if path is not None:
            fields = {}
            for line in path.read_text(errors="replace").splitlines():
                key, eq, value = line.partition("=")
                if eq and key.strip().isidentifier():
                    fields[key.strip()] = value.strip().strip("\"'")
            return fields
    return {}


def osinfo_id(release: Mapping[str, str], db: Path) -> str | None:
    """libosinfo's id for an os-release: the OS whose short-id is ID+VERSION_ID (fedora40,
    debian12, rhel9.4, rocky9), else the family's ``-unknown`` entry (newer than the
    database), else None."""
    ident, version = release.get("ID", ""), release.get("VERSION_ID", "")
    if not ident or not (db / "os").is_dir():
        return None
    wanted = {f"{ident}{version}", f"{ident}-unknown"}
    found: dict[str, str] = {}
    for path in sorted((db / "os").glob("*/*.xml")):
        text = path.read_text(errors="replace")
        os_id = re.search(r'<os id="([^"]+)"', text)
        for short in re.findall(r"<short-id>([^<]+)</short-id>", text):
            if short in wanted and os_id:
                found.setdefault(short, os_id.group(1))
    return found.get(f"{ident}{version}") or found.get(f"{ident}-unknown")


def xen_pv_kernel(layers: list[Path]) -> bool:
    """Whether a kernel of the tree can boot as a Xen PV guest (its /boot/config-VER says
    CONFIG_XEN_PV=y, as Debian's and Fedora's x86_64 kernels do)."""
    for layer in layers:
        for config in sorted((layer / "boot").glob("config-*")):
            plain = config.is_file() and not config.is_symlink()
            if plain and "\nCONFIG_XEN_PV=y\n" in config.read_text(errors="replace"):
                return True
    return False


def _boot_disk(convert_dir: Path) -> str | None:
    """The disk GRUB went on, from the bootloader object the converted disks came from."""
    meta = json.loads((convert_dir / "meta.json").read_text())
    bootloader = convert_dir.parent.parent / "bootloader" / meta["parents"]["bootloader"]
    disk: str | None = json.loads((bootloader / "result.json").read_text()).get("boot_disk")
    return disk


def build(job: Job) -> dict[str, Any]:
    """The layer's build: NAME.xml (virt-image) and NAME.libvirt.xml naming the first runnable
    format each can describe (or ``descriptor_format``), and for streamOptimized vmdk disks
    NAME.ovf + NAME.mf (+ NAME.ova when asked). What could not be written is noted."""
    inputs, converted, staging = job.inputs, job.parents["convert"], job.stage
    name, out_dir = inputs["name"], Path(inputs["out_dir"])
    formats = [f for f in inputs["formats"] if f in converted]
    options = {f: converted[f]["inputs"]["options"] for f in formats}
    first = Path(converted[formats[0]]["dir"])
    boot_disk = _boot_disk(first)
    layers = _tree_layers(first)
    release = os_release(layers)
    os_id = osinfo_id(release, OSINFO_DB)
    agent = any(_in_tree(layers, p) for p in GUEST_AGENT)
    xen_pv = xen_pv_kernel(layers)
    notes = []
    if release.get("ID") and not os_id and "libvirt" in inputs["descriptors"]:
        notes.append(
            f"libvirt: no libosinfo id for {release['ID']} {release.get('VERSION_ID', '')} "
            "in this host's osinfo-db".replace("  ", " ")
        )
    for descriptor in ("virt-image", "libvirt"):
        if descriptor not in inputs["descriptors"]:
            continue
        fmt = pick_format(descriptor, formats, options, inputs["descriptor_format"])
        if fmt is None:
            notes.append(f"{descriptor}: skipped, it cannot run {', '.join(formats)}")
            continue
        app = appliance_for(inputs, fmt, converted[fmt], boot_disk)
        app = replace(app, os_id=os_id, guest_agent=agent, xen_pv=xen_pv)
        if descriptor == "virt-image":
            (staging / f"{name}.xml").write_bytes(virt_image_xml(app))
        else:
            domain = libvirt_domain_xml(
                app,
                [out_dir / d.file for d in app.disks],
                domain_type="kvm" if inputs["accel"] == "kvm" else "qemu",
                network=None if inputs["libvirt_network"] == "user" else inputs["libvirt_network"],
            )
            (staging / f"{name}.libvirt.xml").write_bytes(domain)
        notes.append(f"{descriptor}: {fmt}")
    vmdk = converted.get("vmdk")
    stream = vmdk is not None and vmdk["inputs"]["options"].get("subformat") == "streamOptimized"
    if "ovf" in inputs["descriptors"] and not stream and inputs["descriptors_asked"]:
        notes.append("ovf: skipped, it needs streamOptimized vmdk among the formats")
    if vmdk and stream and "ovf" in inputs["descriptors"]:
        ovf_app = appliance_for(inputs, "vmdk", vmdk, boot_disk)
        ovf_app = replace(ovf_app, adapter=inputs["vmdk_adapter"])
        ovf = staging / f"{name}.ovf"
        ovf.write_bytes(ovf_xml(ovf_app))
        algorithm = inputs["ovf_digest"]
        if algorithm == "sha256":
            sums = {ovf.name: sha256_file(ovf)} | {d.file: d.sha256 for d in ovf_app.disks}
        else:
            disk_files = [
                Path(vmdk["dir"]) / r["object_file"] for r in records_of(Path(vmdk["dir"]))
            ]
            sums = {ovf.name: file_digest(ovf, algorithm)} | {
                d.file: file_digest(f, algorithm)
                for d, f in zip(ovf_app.disks, disk_files, strict=True)
            }
        mf = staging / f"{name}.mf"
        mf.write_text(ovf_manifest(sums, algorithm))
        notes.append("ovf: vmdk" + (" (and the OVA)" if inputs["ova"] else ""))
        if inputs["ova"]:
            records = records_of(Path(vmdk["dir"]))
            with tempfile.TemporaryDirectory(dir=staging) as tmp:
                for d, r in zip(ovf_app.disks, records, strict=True):
                    os.link(Path(vmdk["dir"]) / r["object_file"], Path(tmp) / d.file)
                order = ovf_references(ovf.read_bytes())  # disks go in References order
                links = [Path(tmp) / f for f in order if f != mf.name]
                write_ova(ovf, links, mf, staging / f"{name}.ova")
    files = {p.name: sha256_file(p) for p in staging.iterdir() if p.is_file()}
    (staging / "result.json").write_text(json.dumps(files, indent=1, sort_keys=True))
    return {
        "files": sorted(files),
        "seal": sorted(files),
        "note": "descriptors: " + "; ".join(notes),
    }
