"""The partition planner: a kickstart's part/clearpart lines become a disk layout ``Plan``.

Why a planner of our own instead of anaconda's blivet: an image is a set of blank files, so
the layout is pure arithmetic over the kickstart and the appliance's disk sizes, and it must
be canonical (the Plan's JSON keys the disks layer; reformatting the kickstart must not change
it). What appliance-creator did, minus its bugs:

* Sizes are MiB (1048576 bytes), never parted's MB. Every partition starts and ends on a
  1 MiB boundary, the first at 1 MiB.
* Each disk named by ``--ondisk``/``--ondrive`` (``sda``, ``/dev/sda``, ``vda``) is its own
  image. A line without ``--ondisk`` goes to the first disk any part line names, else ``sda``.
  ``/dev/disk/by-*`` and other paths mean nothing for an image file and are refused.
  ``Plan.disks`` is sorted by name (``sda`` before ``sdb``).
* Partition table: ``clearpart --disklabel`` (default msdos, like appliance-creator).
  ``clearpart``'s other options and ``zerombr`` are accepted and change nothing: an image
  starts blank.
* Order on a disk: biosboot and EFI partitions first (firmware and GRUB like them early),
  then kickstart order. GPT numbers partitions in that order. msdos with up to 4 partitions
  does the same; with more, the first three (biosboot/EFI, then ``--asprimary`` lines, then
  kickstart order) are primary 1-3, #4 is an extended partition spanning the rest of the disk
  and the others are logical 5, 6, ... in kickstart order, each after 1 MiB for its EBR.
  ``--asprimary`` is ignored on GPT, as in anaconda.
* Sizes: without a disk size from the settings a disk is exactly as big as its partitions
  plus 1 MiB lead, 1 MiB per EBR and (GPT) 1 MiB for the backup header, and ``--grow``
  partitions keep their ``--size``. With a disk size, the free space goes to the ``--grow``
  partitions in proportion to their ``--size`` (anaconda's rule), each capped by
  ``--maxsize``; what a cap leaves goes to the uncapped ones; whole MiB only, the odd MiBs
  one each in kickstart order. A disk size must be whole MiB and name a disk some part line
  uses (else ConfigError: it is a settings mistake).
* ``--grow`` without ``--size`` starts at 1 MiB (anaconda); biosboot defaults to 1 MiB; any
  other line without ``--size`` is an error (anaconda's defaults depend on the installer and
  the machine, an image should say what it means).
* A line without ``--fstype`` gets ext4 (anaconda's Fedora default); ``swap`` gets swap,
  ``biosboot`` biosboot and ``/boot/efi`` efi. ``/boot/efi`` must be efi or vfat (vfat stays
  vfat: U-Boot boards want a plain FAT partition); efi is only for ``/boot/efi``. Names are
  matched case-insensitively (``EXT4`` is ext4); anything else (FAT32, zfs...)
  is an error listing the supported types.
* A mount point defined twice: the last line wins, with a warning. Several ``swap`` lines
  are several swap partitions, as in anaconda.
* biosboot on an msdos disk is dropped with a warning (GRUB embeds itself after the MBR
  there), so one kickstart serves both labels; so is prepboot (PowerPC firmware only:
  multi-architecture kickstarts carry it for ppc64le builds).
* LVM, RAID, btrfs, autopart, reqpart, ignoredisk, mount, ``--onpart``/``--usepart``,
  ``--encrypted``, ``--resize``, ``--noformat`` and the like cannot be honoured by a blank
  image: the first such line (in kickstart order) fails with one KickstartError saying what
  to write instead.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import Any

from ksbake.errors import ConfigError, KickstartError
from ksbake.kickstart import Kickstart
from ksbake.layers.l1_kickstart.autopart import requests as generated_requests
from ksbake.layers.l1_kickstart.pre import Table, onpart
from ksbake.layers.l1_kickstart.volumes import (
    PE_START,
    PartRequest,
    allocate,
    btrfs_plan,
    btrfs_volumes,
    swap_suggestion,
    volume_groups,
)
from ksbake.layout import ALIGN, FSTYPES, DiskPlan, MiB, PartitionPlan, Plan

DEFAULT_DISK = "sda"
DEFAULT_DISKLABEL = "msdos"
DEFAULT_FSTYPE = "ext4"
DISKLABELS = ("msdos", "gpt")
GPT_MAX_PARTITIONS = 128
MSDOS_MAX_PRIMARY = 4
GROW_MIN_MIB = 1
MAX_DISK_MIB = 16 * 2**20  # 16 TiB: the largest file ext4 (with 4 KiB blocks) can hold
BIOSBOOT_DEFAULT_MIB = 1
DEFAULT_MEMORY_MIB = 512
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"

LEAD_MIB = 1
"""Space before the first partition (the MBR or the GPT header and table, then alignment)."""
GPT_TAIL_MIB = 1
"""Space kept after the last partition on GPT: the backup header needs 33 sectors."""
EBR_MIB = 1
"""Space before each logical partition for its extended boot record, keeping alignment."""

SUPPORTED = ", ".join(FSTYPES)
_DISK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_FAT_NAMES = frozenset({"fat", "fat16", "fat32", "msdos", "dos"})
_EXAMPLE_PARTS = "part /boot --size=1024 --fstype=ext4; part / --size=4096 --grow --fstype=ext4"


def plan(
    ks: Kickstart,
    disk_sizes: dict[str, int] | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    firmware: str = "bios",
    existing: dict[str, Table] | None = None,
) -> Plan:
    """The disk layout of ``ks``; ``disk_sizes`` (disk name -> bytes) fixes disk sizes,
    ``memory_mib`` sizes recommended swap, ``firmware`` decides what reqpart/autopart add.

    Raises KickstartError (file:line) for a layout an image cannot have, ConfigError for a
    disk size that does not fit the settings' rules. Warnings are dropped: use
    ``plan_with_warnings`` to show them.
    """
    return plan_with_warnings(ks, disk_sizes, memory_mib, firmware, existing)[0]


def plan_with_warnings(
    ks: Kickstart,
    disk_sizes: dict[str, int] | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    firmware: str = "bios",
    existing: dict[str, Table] | None = None,
) -> tuple[Plan, list[str]]:
    """``plan`` plus its warnings, each "file:line: message" (a duplicate mount point, a
    biosboot partition dropped on msdos, an option that does not apply)."""

    handler = ks.handler
    warnings: list[str] = []
    problems = _unsupported_commands(ks, warnings)
    label = _disklabel(ks, problems)

    datas = list(handler.partition.partitions)
    named = [_plain_disk(pd.disk) for pd in datas if getattr(pd, "disk", "")]
    default_disk = named[0] if named and named[0] else DEFAULT_DISK
    requests: list[PartRequest] = []
    for pd in datas:
        if str(pd.mountpoint) == "prepboot" or (pd.fstype or "").lower() == "prepboot":
            warnings.append(
                f"{ks.line_of(pd)}: a PReP boot partition is only for PowerPC firmware; "
                "dropped from this x86 image"
            )
            continue
        try:
            requests.append(_request(ks, pd, default_disk, warnings, memory_mib, existing))
        except KickstartError as err:
            problems.append((pd.lineno, err))
    if problems:
        raise min(problems, key=lambda p: p[0])[1]
    generated = generated_requests(ks, label, firmware, memory_mib, disk_sizes, warnings)
    if generated is not None:
        label = generated.label
        requests += generated.parts
    if not requests:
        raise KickstartError(
            str(ks.path),
            None,
            "no part lines: an image needs its partitions spelled out",
            f"add e.g. {_EXAMPLE_PARTS}, or autopart",
        )

    requests = _last_mount_wins(ks, requests, warnings)
    if label == "msdos":  # (a disk %pre partitioned has its own table)
        for r in [r for r in requests if r.fstype == "biosboot" and r.onpart is None]:
            warnings.append(
                f"{ks.line_of(r.where)}: a biosboot partition is only for GPT disks; "
                "dropped on this msdos disk (use clearpart --disklabel=gpt to keep it)"
            )
            requests.remove(r)

    members = {r.member: r for r in requests if r.member}
    pvs = {m: r.where for m, r in members.items() if r.fstype == "lvmpv"}
    vgs = (
        generated.vgs
        if generated is not None and generated.vgs
        else volume_groups(ks, pvs, memory_mib, warnings)
    )
    for vg in vgs:
        for m in vg.members:
            members[m].vg = vg.name
    btrfs_members = {m: r.where for m, r in members.items() if r.fstype == "btrfs"}
    vols = (
        generated.btrfs
        if generated is not None and generated.btrfs
        else btrfs_volumes(ks, btrfs_members, warnings)
    )
    for vol in vols:
        r = members[vol.member]
        r.mountpoint, r.label, r.mkfsoptions = vol.mountpoint, vol.label, vol.mkfsoptions
    _check_mounts(ks, requests, vgs, vols)

    by_disk: dict[str, list[PartRequest]] = {}
    for r in requests:
        by_disk.setdefault(r.disk, []).append(r)
    sizes = _disk_sizes(disk_sizes, by_disk)
    if generated is not None and generated.disk_mib:
        sizes.setdefault(*generated.disk_mib)
    for vg in vgs:  # a disk without a size: grow PVs just enough for the group
        _fit_pvs(vg, [members[m] for m in vg.members], sizes)
    disks = [
        _layout_existing(ks, name, (existing or {})[name], by_disk[name], warnings)
        if any(r.onpart for r in by_disk[name])
        else _layout(ks, name, label, by_disk[name], sizes.get(name))
        for name in sorted(by_disk, key=lambda n: (len(n), n))
    ]
    placed = {}
    for d in disks:
        by_number = {p.number: p for p in d.partitions}
        for r in by_disk[d.name]:
            if r.member:
                placed[r.member] = (d.name, r.number, by_number[r.number].size)
    vg_plans = [allocate(ks, vg, [placed[m] for m in vg.members]) for vg in vgs]
    btrfs_plans = [btrfs_plan(vol, *placed[vol.member][:2]) for vol in vols if vol.subvolumes]
    return Plan(
        disks=tuple(disks), volume_groups=tuple(vg_plans), btrfs=tuple(btrfs_plans)
    ), warnings


def _fit_pvs(vg: Any, pvs: list[PartRequest], fixed: dict[str, int]) -> None:
    """On disks without a size, grow the group's --grow PVs so that its volumes fit."""
    growable = [r for r in pvs if r.grow and r.disk not in fixed]
    if not growable:
        return
    have = sum(max(0, r.size * MiB - PE_START) // vg.pesize for r in pvs)
    short = vg.base_extents() - have
    if short > 0:
        growable[0].size += short * vg.pesize // MiB


def _lineno(where: Any) -> int:
    return where if isinstance(where, int) else getattr(where, "lineno", 0) or 0


def _check_mounts(
    ks: Kickstart, requests: list[PartRequest], vgs: list[Any], vols: list[Any]
) -> None:
    """One mount point, one filesystem (partitions, volumes, subvolumes); / must exist."""
    seen: dict[str, Any] = {}
    owners = [(r.mountpoint, r.where) for r in requests if r.mountpoint]
    owners += [(lv.mountpoint, lv.where) for vg in vgs for lv in vg.lvs if lv.mountpoint]
    owners += [(m, line) for vol in vols for line, _, m in vol.subvolumes]
    for mp, where in sorted(owners, key=lambda o: _lineno(o[1])):
        if mp in seen:
            raise ks.error(
                where,
                f"mount point {mp} is also used at {ks.line_of(seen[mp])}",
                "mount each filesystem, volume or subvolume at its own place",
            )
        seen[mp] = where
    if "/" not in seen:
        first = min((r.where for r in requests), key=_lineno)
        raise ks.error(
            first,
            "no part, logvol or btrfs line mounts / (the root filesystem)",
            "add e.g. 'part / --size=4096 --grow --fstype=ext4'",
        )


def extended_partition(disk: DiskPlan) -> tuple[int, int] | None:
    """(start, size) in bytes of the msdos extended partition #4 the disks layer must create
    around the logical partitions, or None: it starts at the first logical partition's EBR
    and spans the rest of the disk."""
    logical = [p for p in disk.partitions if p.logical]
    if not logical:
        return None
    start = min(p.start for p in logical) - EBR_MIB * MiB
    return start, disk.size - start


# --- commands an image cannot honour ---------------------------------------------------


def _unsupported_commands(ks: Kickstart, warnings: list[str]) -> list[tuple[int, KickstartError]]:
    """(line, error) for every partitioning command that needs a real machine or devices
    an image build does not have; the caller reports the earliest."""
    h = ks.handler
    found: list[tuple[int, KickstartError]] = []

    def add(lineno: int, message: str, hint: str) -> None:
        found.append((lineno, ks.error(lineno, message, hint)))

    ign = _command(h, "ignoredisk")
    if ign is not None and ign.seen and getattr(ign, "onlyuse", None) and not ign.ignoredisk:
        # --only-use=vda: "install onto these disks only" — what an image build does anyway
        warnings.append(
            f"{ks.line_of(ign.lineno)}: ignoredisk --only-use has no effect on an image "
            "(each disk the part lines name is its own image file)"
        )
    elif ign is not None and ign.seen:
        add(
            ign.lineno,
            "ignoredisk selects among the installing machine's disks; an image has "
            "only the disks its part lines name",
            "delete the line; part --ondisk=DISK puts a partition on a disk, and each disk "
            "is its own image file",
        )
    mount = _command(h, "mount")
    if mount is not None and mount.seen and getattr(mount, "mount_points", None):
        add(
            min(m.lineno for m in mount.mount_points),
            "mount assigns existing devices; an image has none",
            f"write part lines instead, e.g. {_EXAMPLE_PARTS}",
        )

    raid = [*_datas(h, "raid", "raidList")]
    raid += [pd for pd in h.partition.partitions if str(pd.mountpoint).startswith("raid.")]
    if raid:
        add(
            min(d.lineno for d in raid),
            "software RAID (raid, part raid.NN) is not supported in an image: its disks are "
            "files, and redundancy belongs to the host",
            f"replace them with plain part lines, e.g. {_raid_example(h)}",
        )
    return found


def _command(handler: Any, name: str) -> Any | None:
    """The handler's command object, or None when this syntax version has no such command."""
    return handler.commands.get(name)


def _datas(handler: Any, command: str, attr: str) -> list[Any]:
    cmd = _command(handler, command)
    return list(getattr(cmd, attr, None) or []) if cmd is not None else []


def _raid_example(handler: Any) -> str:
    """Part lines standing for the RAID devices' mount points."""
    lines = []
    for md in _datas(handler, "raid", "raidList"):
        mnt = str(md.mountpoint or "")
        if mnt.startswith("/") or mnt == "swap":
            fstype = f" --fstype={md.fstype}" if md.fstype and mnt != "swap" else ""
            lines.append(f"part {mnt} --size=N{fstype}")
    return "; ".join(lines) or _EXAMPLE_PARTS


def _disklabel(ks: Kickstart, problems: list[tuple[int, KickstartError]]) -> str:
    clear = _command(ks.handler, "clearpart")
    label = getattr(clear, "disklabel", "") if clear is not None else ""
    if not label:
        return DEFAULT_DISKLABEL
    if label not in DISKLABELS:
        assert clear is not None  # a label comes from the clearpart line
        problems.append(
            (
                clear.lineno,
                ks.error(
                    clear.lineno,
                    f"clearpart --disklabel={label} is not supported",
                    "use --disklabel=msdos or --disklabel=gpt",
                ),
            )
        )
        return DEFAULT_DISKLABEL
    return label


# --- one part line ---------------------------------------------------------------------


def _request(
    ks: Kickstart,
    pd: Any,
    default_disk: str,
    warnings: list[str],
    memory_mib: int,
    existing: dict[str, Table] | None,
) -> PartRequest:
    """Validate one part line and turn it into a request on its disk."""

    def fail(message: str, hint: str) -> KickstartError:
        return ks.error(pd, message, hint)

    raw_mount = str(pd.mountpoint or "")
    if getattr(pd, "resize", False):
        raise fail(
            "part --resize resizes an existing partition; an image starts blank",
            "drop --resize and --onpart and give the size with --size=MiB",
        )
    on = None
    if getattr(pd, "onPart", ""):
        on = _onpart(ks, pd, existing)
    if not getattr(pd, "format", True):
        raise fail(
            "part --noformat keeps an existing filesystem; an image starts blank",
            "drop --noformat: every partition of a new image is formatted",
        )
    if getattr(pd, "encrypted", False):
        raise fail(
            "part --encrypted needs a passphrase at every boot, which an unattended "
            "appliance cannot have",
            "drop --encrypted and --passphrase",
        )
    if getattr(pd, "onbiosdisk", ""):
        raise fail(
            "part --onbiosdisk names a disk by the installing machine's BIOS order",
            "use --ondisk=DISK (e.g. --ondisk=sda)",
        )
    recommended = getattr(pd, "recommended", False) or getattr(pd, "hibernation", False)
    if recommended and str(pd.mountpoint) != "swap":
        raise fail("part --recommended/--hibernation is for swap", "give --size=MiB")
    if getattr(pd, "start", 0) or getattr(pd, "end", 0):
        raise fail(
            "part --start/--end (cylinders) are not supported",
            "give the size with --size=MiB; partitions are placed in kickstart order",
        )

    mountpoint, fstype = _mount_and_fstype(pd, fail)
    disk = _disk_name(ks, pd, pd.disk) if getattr(pd, "disk", "") else default_disk
    size = pd.size
    if on is not None:
        disk, size = on[0], size or 1  # the partition %pre made decides its size

    grow = bool(pd.grow)
    if recommended:  # anaconda's suggestion, from the appliance's memory setting
        size = swap_suggestion(memory_mib, getattr(pd, "hibernation", False))
    if size is None:
        if fstype == "biosboot":
            size = BIOSBOOT_DEFAULT_MIB
        elif grow:
            size = GROW_MIN_MIB
        else:
            raise fail(
                "part without --size", "give the size with --size=MiB (or --grow to fill the disk)"
            )
    if size < 1:
        raise fail(
            f"part --size={size}: a partition needs at least 1 MiB",
            "give the size in MiB with --size=N, N >= 1",
        )
    maxsize = getattr(pd, "maxSizeMB", 0) or None
    if maxsize is not None and not grow:
        maxsize = None  # only relevant with --grow (pykickstart's documentation, anaconda)
    if maxsize is not None and maxsize < size:
        raise fail(
            f"part --maxsize={maxsize} is smaller than --size={size}",
            "make --maxsize at least --size, or drop it",
        )

    extras: dict[str, Any] = {
        "label": getattr(pd, "label", "") or None,
        "fsoptions": getattr(pd, "fsopts", "") or None,
        "mkfsoptions": getattr(pd, "mkfsopts", "") or None,
        "fsprofile": getattr(pd, "fsprofile", "") or None,
    }
    if extras["fsprofile"] and not fstype.startswith("ext"):
        warnings.append(
            f"{ks.line_of(pd)}: --fsprofile only applies to ext2/3/4; ignored for {fstype}"
        )
        extras["fsprofile"] = None
    if fstype == "biosboot" or fstype == "lvmpv":
        given = [k for k, v in extras.items() if v]
        if given:
            warnings.append(
                f"{ks.line_of(pd)}: a {fstype} partition has no filesystem; "
                f"{', '.join(given)} ignored"
            )
        extras = dict.fromkeys(extras)
    return PartRequest(
        where=pd,
        lineno=pd.lineno,
        disk=disk,
        mountpoint=mountpoint,
        fstype=fstype,
        size=size,
        grow=grow,
        maxsize=maxsize,
        asprimary=bool(getattr(pd, "primOnly", False)),
        member=raw_mount if mountpoint is None and fstype in ("lvmpv", "btrfs") else None,
        onpart=on,
        **extras,
    )


def _mount_and_fstype(pd: Any, fail: Any) -> tuple[str | None, str]:
    """(mountpoint or None, fstype) of a part line, with the defaults applied."""
    raw = str(pd.mountpoint or "")
    given = (pd.fstype or "").strip()
    fstype = given.lower()
    if fstype and fstype not in FSTYPES:
        hint = "write --fstype=vfat" if fstype in _FAT_NAMES else f"supported: {SUPPORTED}"
        raise fail(f"--fstype={given} is not supported; supported: {SUPPORTED}", hint)
    if raw.startswith(("pv.", "btrfs.")):
        kind = "lvmpv" if raw.startswith("pv.") else "btrfs"
        if fstype not in ("", kind):
            raise fail(f"part {raw} with --fstype={given}", f"drop --fstype from a {kind} member")
        return None, kind
    if fstype == "lvmpv":
        raise fail(
            f"part {raw} --fstype=lvmpv: a physical volume is not mounted",
            "write 'part pv.01 --size=MiB' and use pv.01 in a volgroup line",
        )
    if raw == "swap":
        if fstype not in ("", "swap"):
            raise fail(f"part swap with --fstype={given}", "drop --fstype or write --fstype=swap")
        return None, "swap"
    if raw == "biosboot":
        if fstype not in ("", "biosboot"):
            raise fail(
                f"part biosboot with --fstype={given}", "drop --fstype or write --fstype=biosboot"
            )
        return None, "biosboot"
    if not raw.startswith("/"):
        raise fail(
            f"part {raw or '(no mount point)'}: the mount point must be an absolute "
            "path, swap or biosboot",
            "write e.g. 'part /data --size=1024'",
        )
    if ".." in raw.split("/"):
        raise fail(f"part {raw}: a mount point cannot contain '..'", "write the plain path")
    mountpoint = posixpath.normpath(raw)
    if mountpoint.startswith("//"):
        mountpoint = "/" + mountpoint.lstrip("/")
    if fstype == "swap":
        raise fail(f"part {raw} --fstype=swap: swap is not mounted", "write 'part swap --size=MiB'")
    if fstype == "biosboot":
        raise fail(
            f"part {raw} --fstype=biosboot: a biosboot partition is not mounted",
            "write 'part biosboot --fstype=biosboot --size=1'",
        )
    if mountpoint == "/boot/efi":
        if fstype not in ("", "efi", "vfat"):
            raise fail(
                f"/boot/efi with --fstype={given}: the EFI system partition is FAT",
                "write --fstype=efi (or vfat)",
            )
        return mountpoint, fstype or "efi"
    if fstype == "efi":
        raise fail(
            f"part {raw} --fstype=efi: the EFI system partition is mounted at /boot/efi",
            "write 'part /boot/efi --fstype=efi', or --fstype=vfat for another FAT filesystem",
        )
    return mountpoint, fstype or DEFAULT_FSTYPE


def _plain_disk(value: str) -> str | None:
    """``sda``, ``/dev/sda`` -> ``sda``; None for anything that is not a plain disk name."""
    name = value[len("/dev/") :] if value.startswith("/dev/") else value
    return name if _DISK_NAME.fullmatch(name) else None


def _disk_name(ks: Kickstart, pd: Any, value: str) -> str:
    """The disk's image name; paths naming a disk by id, path or label mean nothing for an
    image file, so they are refused rather than guessed."""
    name = _plain_disk(value)
    if name is None:
        raise ks.error(
            pd,
            f"--ondisk={value}: a disk of an image is named like sda or vda",
            "write --ondisk=sda (or /dev/sda); each disk becomes an image file "
            "NAME-<disk>.<format>, so /dev/disk/by-* names mean nothing here",
        )
    return name


def _last_mount_wins(
    ks: Kickstart, requests: list[PartRequest], warnings: list[str]
) -> list[PartRequest]:
    """Drop earlier lines for a mount point defined again (the last one wins)."""
    last: dict[str, PartRequest] = {}
    for r in requests:
        if r.mountpoint is None:
            continue
        earlier = last.get(r.mountpoint)
        if earlier is not None:
            warnings.append(
                f"{ks.line_of(r.where)}: mount point {r.mountpoint} is also defined "
                f"at {ks.line_of(earlier.where)}; this later line wins"
            )
        last[r.mountpoint] = r
    return [r for r in requests if r.mountpoint is None or last[r.mountpoint] is r]


def _disk_sizes(
    given: dict[str, int] | None, by_disk: dict[str, list[PartRequest]]
) -> dict[str, int]:
    """Normalise the settings' disk sizes to MiB, refusing sizes a plan cannot use."""
    sizes: dict[str, int] = {}
    for key, value in (given or {}).items():
        name = key[len("/dev/") :] if key.startswith("/dev/") else key
        if name not in by_disk:
            raise ConfigError(
                f"the appliance settings give a size for disk {key}, which no part line uses",
                f"the part lines use {', '.join(sorted(by_disk))}",
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"disk size for {key} must be a positive number of bytes, not {value!r}"
            )
        if value % ALIGN:
            raise ConfigError(
                f"disk size for {key} ({value} bytes) is not a whole number of MiB",
                f"use {value // MiB} MiB or {value // MiB + 1} MiB",
            )
        if value // MiB > MAX_DISK_MIB:
            raise ConfigError(
                f"disk size for {key} is larger than the {MAX_DISK_MIB // 2**20} TiB a disk "
                "image file can be"
            )
        sizes[name] = value // MiB
    return sizes


# --- placing requests on a disk --------------------------------------------------------


def _layout(
    ks: Kickstart, name: str, label: str, requests: list[PartRequest], fixed_mib: int | None
) -> DiskPlan:
    """Order, number, size and place one disk's partitions."""
    ordered = [r for r in requests if _special(r)]
    ordered += [r for r in requests if not _special(r)]
    if label == "gpt":
        if len(ordered) > GPT_MAX_PARTITIONS:
            raise ks.error(
                ordered[GPT_MAX_PARTITIONS].where,
                f"disk {name} has more than {GPT_MAX_PARTITIONS} partitions",
                "a GPT table holds 128 entries",
            )
        numbers = list(range(1, len(ordered) + 1))
    else:
        ordered, numbers = _msdos_order(ks, name, ordered)

    logical = sum(r.logical for r in ordered)
    overhead = LEAD_MIB + EBR_MIB * logical + (GPT_TAIL_MIB if label == "gpt" else 0)
    base = sum(r.size for r in ordered)
    sizes = [r.size for r in ordered]
    if fixed_mib is None:
        disk_mib = base + overhead
        if disk_mib > MAX_DISK_MIB:
            raise ks.error(
                max(requests, key=lambda r: r.size).where,
                f"disk {name} would be {disk_mib // 2**20} TiB: larger than the "
                f"{MAX_DISK_MIB // 2**20} TiB a disk image file can be",
                "give the partitions sizes in MiB that fit an appliance",
            )
    else:
        disk_mib = fixed_mib
        if base + overhead > fixed_mib:
            raise _too_small(ks, name, requests, base, overhead, fixed_mib)
        extra = _grow(ordered, fixed_mib - overhead - base)
        sizes = [s + e for s, e in zip(sizes, extra, strict=True)]

    partitions = []
    offset = LEAD_MIB
    for r, number, size in zip(ordered, numbers, sizes, strict=True):
        r.number = number
        if r.logical:
            offset += EBR_MIB
        partitions.append(_placed(r, number, offset * MiB, size * MiB, r.logical))
        offset += size
    return DiskPlan(name=name, size=disk_mib * MiB, label=label, partitions=tuple(partitions))


def _onpart(ks: Kickstart, pd: Any, existing: dict[str, Table] | None) -> tuple[str, int]:
    """(disk, number) of ``--onpart``: a partition the kickstart's %pre made."""
    value = str(pd.onPart)
    target = onpart(value)
    if existing is None:
        raise ks.error(
            pd,
            f"part --onpart/--usepart={value} uses an existing partition, and no %pre "
            "script made one (an image starts blank)",
            f"write 'part {pd.mountpoint} --size=N' instead (N in MiB), or create the "
            "partition in %pre (e.g. parted /dev/vda mkpart ...)",
        )
    if target is None or target[1] not in getattr(existing.get(target[0]), "partitions", {}):
        made = ", ".join(f"{d}{n}" for d, t in existing.items() for n in sorted(t.partitions))
        raise ks.error(
            pd,
            f"part --onpart={value}: %pre made no such partition",
            f"%pre made: {made or 'no partition at all'}",
        )
    return target


def _layout_existing(
    ks: Kickstart, name: str, table: Table, requests: list[PartRequest], warnings: list[str]
) -> DiskPlan:
    """A disk %pre partitioned: a part line with --onpart keeps that partition's number, start
    and size, the others go into the free space after them; a BIOS boot partition no line
    names stays."""
    used = {r.onpart[1]: r for r in requests if r.onpart}
    ordered = sorted(used.items())
    partitions = []
    for number, r in ordered:
        start, size, _ = table.partitions[number]
        r.number = number
        logical = table.label == "msdos" and number > MSDOS_MAX_PRIMARY
        partitions.append(_placed(r, number, start, size, logical))
    new = [r for r in requests if r.onpart is None]
    if new:  # anaconda puts them in the free space after what %pre made
        partitions += _after_existing(ks, name, table, new)
    for number, (start, size, kind) in sorted(table.partitions.items()):
        if number in used:
            continue
        if kind.upper() == BIOS_BOOT_GUID:
            partitions.append(PartitionPlan(number, None, "biosboot", start, size))
        else:
            warnings.append(
                f"{ks.line_of(requests[0].where)}: %pre made {name}{number}, which no part "
                "line uses: left out of the image"
            )
    partitions.sort(key=lambda p: p.start)
    return DiskPlan(name=name, size=table.size, label=table.label, partitions=tuple(partitions))


def _after_existing(
    ks: Kickstart, name: str, table: Table, new: list[PartRequest]
) -> list[PartitionPlan]:
    """Partitions for part lines without --onpart, after the last one %pre made: the
    lowest free numbers, --grow sharing what is left (GPT keeps 1 MiB for its backup)."""
    end = max((s + n for s, n, _ in table.partitions.values()), default=LEAD_MIB * MiB)
    first = -(-end // MiB)  # MiB-aligned
    room = table.size // MiB - first - (GPT_TAIL_MIB if table.label == "gpt" else 0)
    base = sum(r.size for r in new)
    if base > room:
        raise ks.error(
            new[0].where,
            f"disk {name}: the part lines without --onpart need {base} MiB, and %pre left "
            f"{max(room, 0)} MiB free after its partitions",
            "shrink them, or give the disk more room in disk_sizes",
        )
    sizes = [r.size + e for r, e in zip(new, _grow(new, room - base), strict=True)]
    numbers = (n for n in range(1, 1000) if n not in table.partitions)
    out, at = [], first
    for r, size in zip(new, sizes, strict=True):
        r.number = next(numbers)
        out.append(_placed(r, r.number, at * MiB, size * MiB))
        at += size
    return out


def _placed(
    r: PartRequest, number: int, start: int, size: int, logical: bool = False
) -> PartitionPlan:
    """The plan of a request placed as partition ``number`` at ``start`` (bytes)."""
    return PartitionPlan(
        number=number,
        mountpoint=r.mountpoint,
        fstype=r.fstype,
        start=start,
        size=size,
        label=r.label,
        fsoptions=r.fsoptions,
        mkfsoptions=r.mkfsoptions,
        fsprofile=r.fsprofile,
        logical=logical,
        vg=r.vg,
    )


def _special(r: PartRequest) -> bool:
    """biosboot and the EFI system partition (/boot/efi, efi or vfat): placed first, and
    primary on msdos (UEFI firmware does not look into logical partitions)."""
    return r.fstype in ("biosboot", "efi") or r.mountpoint == "/boot/efi"


def _msdos_order(
    ks: Kickstart, name: str, ordered: list[PartRequest]
) -> tuple[list[PartRequest], list[int]]:
    """msdos: all primary up to 4; beyond, 3 primaries (special, --asprimary, then kickstart
    order), #4 extended, the rest logical 5+ in kickstart order."""
    asprimary = [r for r in ordered if r.asprimary]
    if len(asprimary) > MSDOS_MAX_PRIMARY:
        raise ks.error(
            asprimary[MSDOS_MAX_PRIMARY].where,
            f"more than {MSDOS_MAX_PRIMARY} --asprimary partitions on msdos disk {name}",
            "an msdos table has 4 primary slots; drop --asprimary from some lines or "
            "use clearpart --disklabel=gpt",
        )
    for r in ordered:
        r.logical = False
    if len(ordered) <= MSDOS_MAX_PRIMARY:
        return ordered, list(range(1, len(ordered) + 1))
    slots = MSDOS_MAX_PRIMARY - 1
    wanted = [r for r in ordered if _special(r)]
    wanted += [r for r in asprimary if r not in wanted]
    if len(wanted) > slots:
        raise ks.error(
            wanted[slots].where,
            f"msdos disk {name} has {len(ordered)} partitions, so "
            f"slot 4 holds the extended partition and only {slots} primary "
            f"partitions are left, but {len(wanted)} must be primary (--asprimary, "
            "EFI)",
            "drop --asprimary from some lines or use clearpart --disklabel=gpt",
        )
    primaries = wanted + [r for r in ordered if r not in wanted][: slots - len(wanted)]
    logicals = [r for r in ordered if r not in primaries]
    for r in logicals:
        r.logical = True
    numbers = list(range(1, len(primaries) + 1))
    numbers += list(range(MSDOS_MAX_PRIMARY + 1, MSDOS_MAX_PRIMARY + 1 + len(logicals)))
    return primaries + logicals, numbers


def _grow(ordered: list[PartRequest], free: int) -> list[int]:
    """Extra MiB per request: ``free`` shared by the --grow ones in proportion to their
    --size, each capped by --maxsize, what caps leave going to the others (water-filling)."""
    extra = [0] * len(ordered)
    room = {
        i: (r.maxsize - r.size if r.maxsize is not None else None)
        for i, r in enumerate(ordered)
        if r.grow
    }
    active = [i for i in room if room[i] != 0]
    while active and free > 0:
        total = sum(ordered[i].size for i in active)
        share = {i: free * ordered[i].size // total for i in active}
        caps = {i: cap for i in active if (cap := room[i]) is not None}
        capped = [i for i in active if i in caps and share[i] >= caps[i]]
        if capped:  # these reach --maxsize: fill them, share the rest among the others
            for i in capped:
                extra[i] += caps[i]
                free -= caps[i]
            active = [i for i in active if i not in capped]
            continue
        for i in active:  # nobody capped, so share + 1 still fits under every cap
            extra[i] += share[i]
            free -= share[i]
        for i in active[:free]:  # the MiBs rounding left (fewer than len(active)), in order
            extra[i] += 1
        break
    return extra


def _too_small(
    ks: Kickstart, name: str, requests: Iterable[PartRequest], base: int, overhead: int, given: int
) -> KickstartError:
    """Name every part line of the disk, what they need and what the settings give."""
    reqs = sorted(requests, key=lambda r: r.lineno)
    first = ks.line_of(reqs[0].where)
    lines = []
    for r in reqs:
        loc = ks.line_of(r.where)
        lines.append(str(loc.line) if loc.path == first.path else str(loc))
    needed = base + overhead
    return ks.error(
        reqs[0].where,
        f"disk {name} is too small: its part lines (lines {', '.join(lines)}) need {needed} MiB "
        f"({base} MiB of partitions + {overhead} MiB for the partition table and alignment) but "
        f"the appliance settings give it {given} MiB",
        f"make disk {name} at least {needed} MiB, or shrink --size on its part lines",
    )
