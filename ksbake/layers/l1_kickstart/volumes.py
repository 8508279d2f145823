"""LVM volume groups and btrfs volumes of a kickstart, planned down to the extent.

Why extents are planned here and not left to lvcreate: the disks layer builds each
filesystem straight into the image at its final byte offset, and the bootloader layer writes
grub.cfg into /boot there, so both need to know where every logical volume lies before any
tool runs. The disks layer then has lvm2 write exactly this allocation (``vgcfgrestore``) and
reads it back (``lvs -o seg_pe_ranges``) to prove that lvm2 agrees.

LVM rules (anaconda's where it has one):

* ``part pv.N`` is a physical volume; ``volgroup NAME pv.N ...`` its group, ``--pesize`` in
  KiB (default 4096: 4 MiB). Every PV starts its first extent 1 MiB into its partition
  (lvm2's default data alignment), and holds ``(partition size - 1 MiB) // extent size``
  extents.
* ``logvol MNT --vgname=VG --name=LV``: ``--size`` MiB (rounded up to whole extents),
  ``--percent`` of the space the fixed-size volumes leave in the group, ``--recommended``
  (swap: anaconda's suggestion from the appliance's ``memory``), ``--grow`` shares what is
  left in proportion to the size, capped by ``--maxsize`` (the partition rule). ``--fstype``
  (default ext4), ``--label``, ``--fsoptions``, ``--mkfsoptions``, ``--fsprofile`` as for part.
* Extents are handed out in kickstart order, each volume in one run on the first PV that has
  room, else across PVs in order (so a volume spans disks only when it has to).
* A PV partition with ``--grow`` on a disk without a size in the settings grows just enough
  for its group's volumes at their base sizes.
* Thin pools and thin volumes, caches, RAID levels, ``--useexisting``/``--noformat`` and
  encryption are refused with what to write instead.

btrfs rules: ``part btrfs.N`` is a member; ``btrfs MNT|none --label=L btrfs.N`` makes the
filesystem (one member only: a multi-device btrfs needs the kernel's device scan that an image
build does not have), mounted at MNT unless ``none``; ``btrfs MNT --subvol --name=NAME VOL``
(VOL: the label, ``LABEL=label``, or the volume's mount point) a subvolume mounted at MNT with
``subvol=NAME``. ``part MNT --fstype=btrfs`` is a btrfs filesystem without subvolumes.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from ksbake.errors import KickstartError
from ksbake.kickstart import Kickstart
from ksbake.layout import (
    LV_FSTYPES,
    BtrfsPlan,
    LogicalVolumePlan,
    MiB,
    PhysicalVolumePlan,
    SegmentPlan,
    SubvolumePlan,
    VolumeGroupPlan,
)

PE_START = MiB
"""Where lvm2 puts the first extent of a PV (its default 1 MiB data alignment)."""
DEFAULT_PESIZE_KIB = 4096
_LV_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-")


@dataclass
class PartRequest:
    """One validated part line, before it is placed on its disk."""

    where: Any  # the pykickstart PartData (for its lineno)
    lineno: int
    disk: str
    mountpoint: str | None
    fstype: str
    size: int  # MiB
    grow: bool
    maxsize: int | None  # MiB
    asprimary: bool = False
    label: str | None = None
    fsoptions: str | None = None
    mkfsoptions: str | None = None
    fsprofile: str | None = None
    logical: bool = False
    number: int = 0  # its number in the partition table, once placed
    member: str | None = None  # pv.N or btrfs.N: a member of a volume group or btrfs volume
    onpart: tuple[str, int] | None = None  # (disk, number) of a partition %pre made
    vg: str | None = None  # lvmpv: its volume group


@dataclass
class LvRequest:
    where: Any
    name: str
    mountpoint: str | None
    fstype: str
    size: int  # MiB before rounding to extents (0 with --percent)
    percent: int
    grow: bool
    maxsize: int | None
    label: str | None
    fsoptions: str | None
    mkfsoptions: str | None
    fsprofile: str | None


@dataclass
class VgRequest:
    where: Any
    name: str
    pesize: int  # bytes
    members: list[str]  # pv.N names, in the volgroup line's order
    lvs: list[LvRequest] = field(default_factory=list)

    def extents(self, mib: int) -> int:
        return -(-mib * MiB // self.pesize)

    def base_extents(self) -> int:
        """Extents the fixed-size volumes need (percent volumes count as one extent)."""
        return sum(self.extents(lv.size) if not lv.percent else 1 for lv in self.lvs)


@dataclass
class BtrfsRequest:
    where: Any
    member: str  # btrfs.N
    mountpoint: str | None
    label: str | None
    mkfsoptions: str | None
    fsoptions: str | None = None  # every subvolume's fstab options (autopart: compression)
    subvolumes: list[tuple[Any, str, str]] = field(default_factory=list)  # (line, name, mount)


def swap_suggestion(memory_mib: int, hibernation: bool = False) -> int:
    """anaconda's recommended swap in MiB for ``memory_mib`` of RAM (anaconda 45's
    ``suggest_swap_size``): 2x RAM below 2 GiB, RAM below 8 GiB, RAM/2 below 64 GiB, else
    32 GiB; with hibernation RAM more (1.5x RAM from 8 GiB), none extra from 64 GiB up."""
    gib = 1024
    if memory_mib < 2 * gib:
        return 3 * memory_mib if hibernation else 2 * memory_mib
    if memory_mib < 8 * gib:
        return 2 * memory_mib if hibernation else memory_mib
    if memory_mib < 64 * gib:
        return memory_mib * 3 // 2 if hibernation else memory_mib // 2
    return 32 * gib


def volume_groups(
    ks: Kickstart, members: dict[str, Any], memory_mib: int, warnings: list[str]
) -> list[VgRequest]:
    """The validated volgroup and logvol lines; ``members`` maps pv.N to its part line."""
    vgs: dict[str, VgRequest] = {}
    used: dict[str, str] = {}
    for vg in _datas(ks, "volgroup", "vgList"):
        name = vg.vgname
        if getattr(vg, "preexist", False) or not getattr(vg, "format", True):
            raise ks.error(
                vg,
                f"volgroup {name} --useexisting/--noformat: an image has no existing volume group",
                "drop the option: the image's volume group is made new",
            )
        if getattr(vg, "reserved_space", None) or getattr(vg, "reserved_percent", None):
            warnings.append(
                f"{ks.line_of(vg)}: volgroup --reserved-space/--reserved-percent "
                "is ignored (it only reserves room for thin pools)"
            )
        _check_lvm_name(ks, vg, name, "volume group")
        if name in vgs:
            raise ks.error(vg, f"volgroup {name} is defined twice", "drop one of the lines")
        pesize_kib = vg.pesize or DEFAULT_PESIZE_KIB
        if pesize_kib < 1024 or pesize_kib & (pesize_kib - 1):
            raise ks.error(
                vg,
                f"volgroup --pesize={pesize_kib}: an image's extent size must be a power of two "
                "of at least 1024 KiB (whole MiB, so every volume starts on a MiB boundary)",
                "write --pesize=4096 (the default)",
            )
        pvs = list(vg.physvols)
        if not pvs:
            raise ks.error(vg, f"volgroup {name} has no physical volumes", "add e.g. pv.01")
        for pv in pvs:
            if pv not in members:
                raise ks.error(
                    vg,
                    f"volgroup {name} names {pv}, and no part line makes it",
                    f"add e.g. 'part {pv} --size=1 --grow'",
                )
            if pv in used:
                raise ks.error(
                    vg, f"{pv} is in two volume groups ({used[pv]} and {name})", "use it once"
                )
            used[pv] = name
        vgs[name] = VgRequest(vg, name, pesize_kib * 1024, pvs)
    for pv, line in members.items():
        if pv not in used:
            warnings.append(f"{ks.line_of(line)}: {pv} is in no volume group; left unused")
    names: set[tuple[str, str]] = set()
    for lv in _datas(ks, "logvol", "lvList"):
        req = _lv_request(ks, lv, vgs, memory_mib, warnings)
        if (lv.vgname, req.name) in names:
            raise ks.error(
                lv, f"logvol --name={req.name} is used twice in {lv.vgname}", "rename one"
            )
        names.add((lv.vgname, req.name))
        vgs[lv.vgname].lvs.append(req)
    return list(vgs.values())


def _lv_request(
    ks: Kickstart, lv: Any, vgs: dict[str, VgRequest], memory_mib: int, warnings: list[str]
) -> LvRequest:
    def fail(message: str, hint: str) -> KickstartError:
        return ks.error(lv, message, hint)

    if lv.vgname not in vgs:
        known = ", ".join(vgs) or "none: add a volgroup line"
        raise fail(f"logvol --vgname={lv.vgname}: no such volume group", f"the groups: {known}")
    for attr, option in (("thin_pool", "--thinpool"), ("thin_volume", "--thin")):
        if getattr(lv, attr, False):
            raise fail(
                f"logvol {option}: thin provisioning is not supported in images",
                "drop --thinpool/--thin and give plain volumes sizes (--size, --grow)",
            )
    if getattr(lv, "cache_size", 0) or getattr(lv, "cache_pvs", None):
        raise fail("logvol --cachesize/--cachepvs: LVM caches are not supported", "drop them")
    if getattr(lv, "preexist", False) or not getattr(lv, "format", True):
        raise fail(
            "logvol --useexisting/--noformat: an image has no existing volumes",
            "drop the option",
        )
    if getattr(lv, "encrypted", False):
        raise fail(
            "logvol --encrypted needs a passphrase at every boot, which an unattended "
            "appliance cannot have",
            "drop --encrypted and --passphrase",
        )
    if getattr(lv, "resize", False):
        raise fail("logvol --resize: an image has no existing volume to resize", "drop it")
    raw = str(lv.mountpoint or "")
    fstype = (lv.fstype or "").strip().lower()
    if raw == "swap":
        mountpoint, fstype = None, "swap"
    elif raw.startswith("/") and ".." not in raw.split("/"):
        mountpoint = posixpath.normpath(raw)
        fstype = fstype or "ext4"
    elif raw.lower() == "none":
        raise fail(
            "logvol none: an unformatted volume is not supported",
            "give it a mount point or drop the line",
        )
    else:
        raise fail(
            f"logvol {raw}: the mount point must be an absolute path or swap",
            "write e.g. 'logvol / --vgname=VG --name=root --size=4096'",
        )
    if fstype not in LV_FSTYPES:
        raise fail(
            f"logvol --fstype={lv.fstype}: not supported on a logical volume",
            f"supported: {', '.join(LV_FSTYPES)}",
        )
    name = lv.name or (mountpoint or "swap").strip("/").replace("/", "_") or "root"
    _check_lvm_name(ks, lv, name, "logical volume")
    recommended = getattr(lv, "recommended", False) or getattr(lv, "hibernation", False)
    if recommended and fstype != "swap":
        raise fail("logvol --recommended is for swap volumes", "give the size with --size=MiB")
    size = lv.size or 0
    percent = getattr(lv, "percent", 0) or 0
    if recommended:
        size = swap_suggestion(memory_mib, getattr(lv, "hibernation", False))
    elif percent:
        if not 0 < percent <= 100:
            raise fail(f"logvol --percent={percent}: not a percentage", "use 1 to 100")
    elif not size:
        if not lv.grow:
            raise fail("logvol without --size", "give --size=MiB, --percent=N or --grow")
        size = 1
    maxsize = (getattr(lv, "maxSizeMB", 0) or None) if lv.grow else None
    if maxsize is not None and maxsize < size:
        raise fail(f"logvol --maxsize={maxsize} is smaller than --size={size}", "raise --maxsize")
    return LvRequest(
        where=lv,
        name=name,
        mountpoint=mountpoint,
        fstype=fstype,
        size=size,
        percent=percent,
        grow=bool(lv.grow),
        maxsize=maxsize,
        label=getattr(lv, "label", "") or None,
        fsoptions=getattr(lv, "fsopts", "") or None,
        mkfsoptions=getattr(lv, "mkfsopts", "") or None,
        fsprofile=getattr(lv, "fsprofile", "") or None,
    )


def _check_lvm_name(ks: Kickstart, line: Any, name: str, what: str) -> None:
    """lvm2's naming rules (lvm(8): VALID NAMES)."""
    if (
        not name
        or set(name) - _LV_NAME_OK
        or name.startswith("-")
        or name in (".", "..")
        or len(name) > 127
        or name.startswith(("snapshot", "pvmove"))
    ):
        raise ks.error(
            line,
            f"{what} name {name!r} is not valid for lvm2",
            "use letters, digits and + _ . - (not starting with '-')",
        )


def allocate(ks: Kickstart, vg: VgRequest, pv_parts: list[tuple[str, int, int]]) -> VolumeGroupPlan:
    """Extents for every volume of ``vg``; ``pv_parts``: (disk, number, bytes) per member."""
    pvs = tuple(
        PhysicalVolumePlan(disk=d, number=n, pe_count=max(0, (size - PE_START) // vg.pesize))
        for d, n, size in pv_parts
    )
    total = sum(pv.pe_count for pv in pvs)
    fixed = [vg.extents(lv.size) if not lv.percent else 0 for lv in vg.lvs]
    left = total - sum(fixed)
    counts = [
        f if not lv.percent else max(1, left * lv.percent // 100)
        for f, lv in zip(fixed, vg.lvs, strict=True)
    ]
    need = sum(counts)
    if need > total:
        names = ", ".join(
            f"{lv.name} {c * vg.pesize // MiB} MiB" for lv, c in zip(vg.lvs, counts, strict=True)
        )
        raise ks.error(
            vg.where,
            f"volume group {vg.name} is too small: its volumes ({names}) need "
            f"{need * vg.pesize // MiB} MiB, its physical volumes hold "
            f"{total * vg.pesize // MiB} MiB",
            "grow the pv partitions (--size, or --grow with a larger disk in the settings) "
            "or shrink the logvol sizes",
        )
    counts = _grow_extents(vg, counts, total - need)
    free = [pv.pe_count for pv in pvs]
    used = [0] * len(pvs)
    lvs = []
    for lv, count in zip(vg.lvs, counts, strict=True):
        segments: list[SegmentPlan] = []
        whole = next((i for i, f in enumerate(free) if f >= count), None)
        order = [whole] if whole is not None else list(range(len(pvs)))
        want = count
        for i in order:
            take = min(want, free[i])
            if take:
                segments.append(SegmentPlan(pv=i, first=used[i], count=take))
                used[i] += take
                free[i] -= take
                want -= take
            if not want:
                break
        lvs.append(
            LogicalVolumePlan(
                name=lv.name,
                mountpoint=lv.mountpoint,
                fstype=lv.fstype,
                size=count * vg.pesize,
                segments=tuple(segments),
                label=lv.label,
                fsoptions=lv.fsoptions,
                mkfsoptions=lv.mkfsoptions,
                fsprofile=lv.fsprofile,
            )
        )
    return VolumeGroupPlan(
        name=vg.name, extent_size=vg.pesize, pe_start=PE_START, pvs=pvs, lvs=tuple(lvs)
    )


def _grow_extents(vg: VgRequest, counts: list[int], free: int) -> list[int]:
    """``free`` extents shared by the --grow volumes in proportion to their size, each capped
    by --maxsize; what caps leave goes to the others (the partition rule, in extents)."""
    out = list(counts)
    room: dict[int, int | None] = {
        i: (vg.extents(lv.maxsize) - counts[i] if lv.maxsize is not None else None)
        for i, lv in enumerate(vg.lvs)
        if lv.grow
    }
    active = [i for i, r in room.items() if r is None or r > 0]
    while active and free > 0:
        total = sum(counts[i] for i in active)
        share = {i: free * counts[i] // total for i in active}
        capped = [i for i in active if (r := room[i]) is not None and share[i] >= r]
        if capped:
            for i in capped:
                cap = room[i]
                assert cap is not None
                out[i] += cap
                free -= cap
            active = [i for i in active if i not in capped]
            continue
        for i in active:
            out[i] += share[i]
            free -= share[i]
        for i in active[:free]:
            out[i] += 1
        break
    return out


def btrfs_volumes(
    ks: Kickstart, members: dict[str, Any], warnings: list[str]
) -> list[BtrfsRequest]:
    """The validated btrfs lines; ``members`` maps btrfs.N to its part line."""
    volumes: list[BtrfsRequest] = []
    datas = _datas(ks, "btrfs", "btrfsList")
    for b in datas:
        if b.subvol:
            continue
        if getattr(b, "preexist", False) or not getattr(b, "format", True):
            raise ks.error(
                b,
                "btrfs --useexisting/--noformat: an image has no existing volume",
                "drop the option",
            )
        devices = list(b.devices)
        if len(devices) != 1:
            raise ks.error(
                b,
                f"btrfs volume with {len(devices)} members: a multi-device btrfs is not "
                "supported in images (it needs the kernel's device scan at build time)",
                "give the volume one member partition: 'btrfs none --label=NAME btrfs.01'",
            )
        for level in (b.dataLevel, b.metaDataLevel):
            if level and str(level).lower() not in ("single", "dup"):
                raise ks.error(
                    b,
                    f"btrfs --data/--metadata={level}: RAID needs several devices",
                    "drop the option (single device: single data, dup metadata)",
                )
        member = devices[0]
        if member not in members:
            raise ks.error(
                b,
                f"btrfs volume names {member}, and no part line makes it",
                f"add e.g. 'part {member} --size=1 --grow'",
            )
        if any(v.member == member for v in volumes):
            raise ks.error(b, f"{member} is in two btrfs volumes", "use each member once")
        mount = str(b.mountpoint or "none")
        volumes.append(
            BtrfsRequest(
                where=b,
                member=member,
                mountpoint=None if mount.lower() == "none" else _abs_mount(ks, b, mount),
                label=b.label or None,
                mkfsoptions=getattr(b, "mkfsopts", "") or None,
            )
        )
    for b in datas:
        if not b.subvol:
            continue
        parent = str(b.devices[0]) if b.devices else ""
        ref = parent.removeprefix("LABEL=")
        vol = next((v for v in volumes if ref in (v.label, v.mountpoint, v.member)), None)
        if vol is None:
            raise ks.error(
                b,
                f"btrfs --subvol names the volume {parent or '(nothing)'}, which no btrfs line "
                "makes",
                "name the volume by its --label, e.g. 'btrfs / --subvol --name=root fedora'",
            )
        name = (b.name or "").strip("/")
        if not name or ".." in name.split("/"):
            raise ks.error(b, "btrfs --subvol needs --name=NAME", "e.g. --name=root")
        if any(n == name for _, n, _ in vol.subvolumes):
            raise ks.error(
                b,
                f"two btrfs subvolumes are named {name} in one volume",
                "give each subvolume its own --name",
            )
        vol.subvolumes.append((b, name, _abs_mount(ks, b, str(b.mountpoint or ""))))
    for m, line in members.items():
        if not any(v.member == m for v in volumes):
            warnings.append(f"{ks.line_of(line)}: {m} is in no btrfs volume; left unused")
    return volumes


def btrfs_plan(vol: BtrfsRequest, disk: str, number: int) -> BtrfsPlan:
    return BtrfsPlan(
        disk=disk,
        number=number,
        subvolumes=tuple(
            SubvolumePlan(name=n, mountpoint=m, fsoptions=vol.fsoptions)
            for _, n, m in vol.subvolumes
        ),
    )


def _abs_mount(ks: Kickstart, line: Any, raw: str) -> str:
    if not raw.startswith("/") or ".." in raw.split("/"):
        raise ks.error(
            line,
            f"btrfs {raw or '(nothing)'}: the mount point must be an absolute "
            "path (or none for the volume)",
            "write e.g. 'btrfs / --subvol ...'",
        )
    return posixpath.normpath(raw)


def _datas(ks: Kickstart, command: str, attr: str) -> list[Any]:
    cmd = ks.handler.commands.get(command)
    return list(getattr(cmd, attr, None) or []) if cmd is not None else []
