"""``autopart`` and ``reqpart``: the layout anaconda would make, written out as requests.

Why follow anaconda instead of inventing a layout: a kickstart that says ``autopart`` was
written for anaconda, and its users expect the disk they know from an installed machine.
The rules are anaconda 45.21's defaults (``data/anaconda.conf``, ``platform.py``, blivet's
growth rules), with swap as its RHEL profile makes it (``swap_is_recommended``), since an
appliance has no zram set up; see the README, "autopart":

* Platform partitions first (``reqpart`` makes only these): BIOS on GPT a 1 MiB biosboot,
  UEFI an ESP at /boot/efi, ``bios+uefi`` both; on msdos BIOS needs none.
* ``/boot`` 2 GiB (unless ``--noboot``), then ``/`` (at least 1 GiB, grows up to 70 GiB),
  ``/home`` (at least 512 MiB, grows) only when the space for them is at least 50 GiB
  (anaconda's ``free 50 GiB``; always with btrfs, unless ``--nohome``), swap sized from the
  appliance's ``memory`` and at most a tenth of the disk (unless ``--noswap``). What / and
  /home cannot take stays free, as anaconda leaves it.
* ``--type=plain`` (or ``--nolvm``): all of them partitions. ``--type=lvm`` (the default):
  ``/``, ``/home`` and swap are logical volumes ``root``, ``home``, ``swap`` in VG ``fedora``
  (``fedora_HOST`` with ``network --hostname``) on one PV that fills the rest of the disk.
  ``--type=btrfs``: one btrfs volume (label as the VG name) with subvolumes ``root`` and
  ``home`` mounted with ``compress=zstd:1``, swap a partition. ``--type=thinp`` is refused
  (no thin pools in images).
* ``--fstype`` replaces the default filesystem (ext4) of ``/`` and ``/home`` (and ``/boot``
  unless btrfs, which GRUB's /boot does not get).
* The disk: the one ``ignoredisk --only-use`` names, else the only disk the settings size,
  else ``sda``; its size from ``disk_sizes``, else ``AUTOPART_DISK_MIB`` with a warning. The
  table: ``clearpart --disklabel``, else GPT (anaconda's default since Fedora 37).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ksbake.errors import ConfigError
from ksbake.kickstart import Kickstart
from ksbake.layers.l1_kickstart.volumes import (
    DEFAULT_PESIZE_KIB,
    BtrfsRequest,
    LvRequest,
    PartRequest,
    VgRequest,
    swap_suggestion,
)
from ksbake.layout import MiB

AUTOPART_DISK_MIB = 8192
"""The disk autopart plans for when the settings give no size (anaconda needs a disk)."""
VG_NAME = "fedora"
"""anaconda names the group (and the btrfs volume) after the product; ksbake's plan cannot
know the product before the packages are installed, so it uses Fedora's."""
BOOT_MIB = 2048
ESP_MIB = 600
BIOSBOOT_MIB = 1
ROOT_MIN_MIB, ROOT_MAX_MIB = 1024, 70 * 1024
HOME_MIN_MIB, HOME_FREE_MIB = 512, 50 * 1024
BTRFS_OPTIONS = "compress=zstd:1"
SWAP_MAX_FRACTION = 10
"""anaconda caps suggested swap at a tenth of the disk."""
DEFAULT_FSTYPE = "ext4"
TYPES = ("plain", "lvm", "btrfs")


@dataclass
class Generated:
    """What autopart/reqpart add: the partition table type and the requests."""

    label: str
    parts: list[PartRequest] = field(default_factory=list)
    vgs: list[VgRequest] = field(default_factory=list)
    btrfs: list[BtrfsRequest] = field(default_factory=list)
    disk_mib: tuple[str, int] | None = None  # autopart's disk and its size


def requests(
    ks: Kickstart,
    label: str,
    firmware: str,
    memory_mib: int,
    disk_sizes: dict[str, int] | None,
    warnings: list[str],
) -> Generated | None:
    """The generated requests, or None when the kickstart has neither command."""
    auto = ks.handler.commands.get("autopart")
    req = ks.handler.commands.get("reqpart")
    if auto is not None and getattr(auto, "autopart", False):
        return _autopart(ks, auto, label, firmware, memory_mib, disk_sizes, warnings)
    if req is not None and getattr(req, "reqpart", False):
        disk = _first_part_disk(ks)
        out = Generated(label=label)
        out.parts = _platform(req, disk, label, firmware)
        if getattr(req, "addBoot", False):
            out.parts.append(_part(req, disk, "/boot", DEFAULT_FSTYPE, BOOT_MIB))
        return out
    return None


def _autopart(
    ks: Kickstart,
    auto: Any,
    label: str,
    firmware: str,
    memory_mib: int,
    disk_sizes: dict[str, int] | None,
    warnings: list[str],
) -> Generated:
    if getattr(auto, "encrypted", False):
        raise ks.error(
            auto,
            "autopart --encrypted needs a passphrase at every boot, which an unattended "
            "appliance cannot have",
            "drop --encrypted and --passphrase",
        )
    kind = _type_name(auto)
    if kind not in TYPES:
        raise ks.error(
            auto,
            f"autopart --type={kind} is not supported in images",
            "use --type=lvm (the default), --type=plain or --type=btrfs",
        )
    fstype = (getattr(auto, "fstype", "") or DEFAULT_FSTYPE).lower()
    if fstype not in ("ext2", "ext3", "ext4", "xfs"):
        raise ks.error(
            auto,
            f"autopart --fstype={fstype} is not supported",
            "use ext4 or xfs (--type=btrfs for btrfs)",
        )
    disk = _autopart_disk(ks, disk_sizes)
    size_mib = _disk_mib(disk_sizes, disk)
    if size_mib is None:
        size_mib = AUTOPART_DISK_MIB
        warnings.append(
            f"{ks.line_of(auto)}: autopart plans for a {AUTOPART_DISK_MIB // 1024} GiB disk "
            f"{disk}: the appliance settings give no size (set disk_sizes = {{{disk} = ...}})"
        )
    if not label or label == "msdos" and not _label_given(ks):
        label = "gpt"
    out = Generated(label=label, disk_mib=(disk, size_mib))
    out.parts = _platform(auto, disk, label, firmware)
    used = sum(p.size for p in out.parts) + 2  # + lead and GPT backup header
    if not getattr(auto, "noboot", False):
        boot_fs = fstype if kind != "btrfs" else DEFAULT_FSTYPE
        out.parts.append(_part(auto, disk, "/boot", boot_fs, BOOT_MIB))
        used += BOOT_MIB
    swap = 0
    hibernation = getattr(auto, "hibernation", False)
    if not getattr(auto, "noswap", False) or hibernation:
        swap = swap_suggestion(memory_mib, hibernation)
        if not hibernation:
            swap = min(swap, (size_mib - used) // SWAP_MAX_FRACTION)
    free = size_mib - used - swap
    nohome = getattr(auto, "nohome", False)
    home = not nohome and (kind == "btrfs" or free >= HOME_FREE_MIB)
    name = _vg_name(ks)
    if free < ROOT_MIN_MIB + (HOME_MIN_MIB if home else 0) + 4:
        raise ks.error(
            auto,
            f"autopart: disk {disk} is too small for anaconda's minimum layout (/ needs at "
            f"least {ROOT_MIN_MIB} MiB after /boot, swap and the platform partitions, "
            f"{used + swap + ROOT_MIN_MIB} MiB in all) but the appliance settings give it "
            f"{size_mib} MiB",
            f"make disk {disk} larger in the appliance settings (disk_sizes)",
        )
    if kind == "plain":
        out.parts.append(
            _part(auto, disk, "/", fstype, ROOT_MIN_MIB, grow=True, maxsize=ROOT_MAX_MIB)
        )
        if home:
            out.parts.append(_part(auto, disk, "/home", fstype, HOME_MIN_MIB, grow=True))
        if swap:
            out.parts.append(_part(auto, disk, None, "swap", swap))
    elif kind == "lvm":
        out.parts.append(_part(auto, disk, None, "lvmpv", 1, grow=True, member="pv.autopart"))
        vg = VgRequest(auto, name, DEFAULT_PESIZE_KIB * 1024, ["pv.autopart"])
        vg.lvs.append(_lv(auto, "root", "/", fstype, ROOT_MIN_MIB, ROOT_MAX_MIB))
        if home:
            vg.lvs.append(_lv(auto, "home", "/home", fstype, HOME_MIN_MIB, None))
        if swap:
            vg.lvs.append(_lv(auto, "swap", None, "swap", swap, None, grow=False))
        out.vgs.append(vg)
    else:
        out.parts.append(
            _part(auto, disk, None, "btrfs", ROOT_MIN_MIB, grow=True, member="btrfs.autopart")
        )
        vol = BtrfsRequest(auto, "btrfs.autopart", None, name, None, BTRFS_OPTIONS)
        vol.subvolumes.append((auto, "root", "/"))
        if home:  # no free-space rule for btrfs subvolumes
            vol.subvolumes.append((auto, "home", "/home"))
        out.btrfs.append(vol)
        if swap:
            out.parts.append(_part(auto, disk, None, "swap", swap))
    return out


def _platform(line: Any, disk: str, label: str, firmware: str) -> list[Any]:
    """The partitions the firmware needs (what reqpart makes)."""
    parts = []
    if "bios" in firmware and label == "gpt":
        parts.append(_part(line, disk, None, "biosboot", BIOSBOOT_MIB))
    if "uefi" in firmware:
        parts.append(_part(line, disk, "/boot/efi", "efi", ESP_MIB))
    return parts


def _part(
    line: Any,
    disk: str,
    mountpoint: str | None,
    fstype: str,
    size: int,
    grow: bool = False,
    maxsize: int | None = None,
    member: str | None = None,
) -> Any:
    return PartRequest(
        where=line,
        lineno=line.lineno,
        disk=disk,
        mountpoint=mountpoint,
        fstype=fstype,
        size=size,
        grow=grow,
        maxsize=maxsize,
        member=member,
    )


def _lv(
    line: Any,
    name: str,
    mountpoint: str | None,
    fstype: str,
    size: int,
    maxsize: int | None,
    grow: bool = True,
) -> LvRequest:
    return LvRequest(
        where=line,
        name=name,
        mountpoint=mountpoint,
        fstype=fstype,
        size=size,
        percent=0,
        grow=grow,
        maxsize=maxsize,
        label=None,
        fsoptions=None,
        mkfsoptions=None,
        fsprofile=None,
    )


def _type_name(auto: Any) -> str:
    if not getattr(auto, "lvm", True):
        return "plain"
    value = getattr(auto, "type", None)
    if value is None:
        return "lvm"
    names = {v: k for k, v in getattr(auto, "typeMap", {}).items() if k != "partition"}
    return names.get(value, str(value))


def _vg_name(ks: Kickstart) -> str:
    """``fedora``, or ``fedora_HOST`` for ``network --hostname=HOST.domain`` (anaconda)."""
    for net in getattr(ks.handler.network, "network", []) or []:
        host = (getattr(net, "hostname", "") or "").split(".")[0]
        if host and host not in ("localhost", "localhost-live"):
            return f"{VG_NAME}_{host}"
    return VG_NAME


def _label_given(ks: Kickstart) -> bool:
    clear = ks.handler.commands.get("clearpart")
    return bool(getattr(clear, "disklabel", "")) if clear is not None else False


def _autopart_disk(ks: Kickstart, disk_sizes: dict[str, int] | None) -> str:
    ign = ks.handler.commands.get("ignoredisk")
    only = list(getattr(ign, "onlyuse", None) or []) if ign is not None else []
    if len(only) == 1:
        return only[0].removeprefix("/dev/")
    names = [k.removeprefix("/dev/") for k in disk_sizes or {}]
    return names[0] if len(names) == 1 else "sda"


def _first_part_disk(ks: Kickstart) -> str:
    for pd in ks.handler.partition.partitions:
        if getattr(pd, "disk", ""):
            return str(pd.disk).removeprefix("/dev/")
    return "sda"


def _disk_mib(disk_sizes: dict[str, int] | None, disk: str) -> int | None:
    for key, value in (disk_sizes or {}).items():
        if key.removeprefix("/dev/") == disk:
            if not isinstance(value, int) or value <= 0 or value % MiB:
                raise ConfigError(f"disk size for {key} must be a positive number of whole MiB")
            return value // MiB
    return None
