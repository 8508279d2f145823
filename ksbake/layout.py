"""The disk layout plan: what the partition planner produces and the disk layers consume.

Pure data. The planner (``ksbake.layers.l1_kickstart.partitions``) turns a kickstart's
part/clearpart lines and the appliance's disk sizes into a ``Plan``; its canonical JSON is the
disks layer's input (so its key), which is why it holds no file:line locations (reformatting
must not change it).
All offsets and sizes are bytes, aligned to 1 MiB.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

SECTOR = 512
MiB = 1024 * 1024
ALIGN = MiB

LABEL_MAX = {
    "ext2": 16,
    "ext3": 16,
    "ext4": 16,
    "xfs": 12,
    "btrfs": 255,
    "vfat": 11,
    "efi": 11,
    "swap": 16,
}
"""The longest filesystem label each type holds, in bytes."""

FSTYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "efi", "swap", "biosboot", "lvmpv")
"""Types of a partition an image builder can make (``efi`` is a vfat ESP, ``biosboot`` a raw
1 MiB GPT partition for GRUB's core image, ``lvmpv`` an LVM physical volume)."""

LV_FSTYPES = ("ext2", "ext3", "ext4", "xfs", "swap")
"""What a logical volume can hold (btrfs and FAT on LVM are refused: nobody boots that)."""


@dataclass(frozen=True)
class PartitionPlan:
    number: int  # number in the partition table (msdos: 1-4 primary/extended, 5+ logical)
    mountpoint: str | None  # "/", "/boot", "/boot/efi", "/data"; None for swap and biosboot
    fstype: str  # one of FSTYPES
    start: int  # bytes from the start of the disk
    size: int  # bytes
    label: str | None = None  # filesystem label (--label)
    fsoptions: str | None = None  # fstab options (--fsoptions); None means "defaults"
    mkfsoptions: str | None = None  # extra mkfs arguments (--mkfsoptions), one string
    fsprofile: str | None = None  # mkfs.ext* usage type (--fsprofile)
    logical: bool = False  # msdos: a logical partition inside the extended one
    vg: str | None = None  # lvmpv: the volume group it belongs to


@dataclass(frozen=True)
class SegmentPlan:
    """A contiguous run of extents of a logical volume, on one physical volume."""

    pv: int  # index into the volume group's pvs
    first: int  # first physical extent
    count: int  # number of extents


@dataclass(frozen=True)
class PhysicalVolumePlan:
    disk: str
    number: int  # the partition holding it
    pe_count: int  # extents it holds (after pe_start)


@dataclass(frozen=True)
class LogicalVolumePlan:
    name: str
    mountpoint: str | None  # None for swap
    fstype: str  # one of LV_FSTYPES
    size: int  # bytes: whole extents
    segments: tuple[SegmentPlan, ...]
    label: str | None = None
    fsoptions: str | None = None
    mkfsoptions: str | None = None
    fsprofile: str | None = None


@dataclass(frozen=True)
class VolumeGroupPlan:
    name: str
    extent_size: int  # bytes (--pesize)
    pe_start: int  # bytes from the start of each PV to its first extent
    pvs: tuple[PhysicalVolumePlan, ...]
    lvs: tuple[LogicalVolumePlan, ...]


@dataclass(frozen=True)
class SubvolumePlan:
    name: str  # path below the volume's top level ("root", "home")
    mountpoint: str
    fsoptions: str | None = None  # fstab options besides subvol=


@dataclass(frozen=True)
class BtrfsPlan:
    """The subvolumes of the btrfs filesystem of one partition (``fstype`` btrfs)."""

    disk: str
    number: int
    subvolumes: tuple[SubvolumePlan, ...]


@dataclass(frozen=True)
class DiskPlan:
    name: str  # "sda", "sdb", "vda" ... (image files are NAME-<disk>.<format>)
    size: int  # bytes
    label: str  # partition table: "msdos" or "gpt"
    partitions: tuple[PartitionPlan, ...]


@dataclass(frozen=True)
class Plan:
    disks: tuple[DiskPlan, ...]
    volume_groups: tuple[VolumeGroupPlan, ...] = ()
    btrfs: tuple[BtrfsPlan, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            disks=tuple(
                DiskPlan(
                    name=d["name"],
                    size=d["size"],
                    label=d["label"],
                    partitions=tuple(PartitionPlan(**p) for p in d["partitions"]),
                )
                for d in data["disks"]
            ),
            volume_groups=tuple(
                VolumeGroupPlan(
                    name=vg["name"],
                    extent_size=vg["extent_size"],
                    pe_start=vg["pe_start"],
                    pvs=tuple(PhysicalVolumePlan(**pv) for pv in vg["pvs"]),
                    lvs=tuple(
                        LogicalVolumePlan(
                            **{
                                **lv,
                                "segments": tuple(SegmentPlan(**s) for s in lv["segments"]),
                            }
                        )
                        for lv in vg["lvs"]
                    ),
                )
                for vg in data.get("volume_groups", ())
            ),
            btrfs=tuple(
                BtrfsPlan(
                    disk=b["disk"],
                    number=b["number"],
                    subvolumes=tuple(SubvolumePlan(**sv) for sv in b["subvolumes"]),
                )
                for b in data.get("btrfs", ())
            ),
        )

    def partition(self, disk: str, number: int) -> PartitionPlan:
        (found,) = [
            p for d in self.disks if d.name == disk for p in d.partitions if p.number == number
        ]
        return found

    def lv_extents(self, vg: VolumeGroupPlan, lv: LogicalVolumePlan) -> list[tuple[str, int, int]]:
        """(disk, byte offset in its image, bytes) of each segment of ``lv``, in LV order."""
        out = []
        for seg in lv.segments:
            pv = vg.pvs[seg.pv]
            part = self.partition(pv.disk, pv.number)
            start = part.start + vg.pe_start + seg.first * vg.extent_size
            out.append((pv.disk, start, seg.count * vg.extent_size))
        return out

    def filesystem_bytes(self) -> int:
        """The room of every filesystem of the layout (what a tree can at most fill)."""
        parts = [
            p.size
            for d in self.disks
            for p in d.partitions
            if p.fstype not in ("swap", "biosboot", "lvmpv")
        ]
        lvs = [lv.size for vg in self.volume_groups for lv in vg.lvs if lv.mountpoint]
        return sum(parts) + sum(lvs)

    def mountpoints(self) -> list[str]:
        """Every mount point of the layout: partitions, logical volumes, subvolumes."""
        found = [p.mountpoint for d in self.disks for p in d.partitions if p.mountpoint]
        found += [lv.mountpoint for vg in self.volume_groups for lv in vg.lvs if lv.mountpoint]
        found += [sv.mountpoint for b in self.btrfs for sv in b.subvolumes]
        return found

    def mounts(self) -> list[tuple[str, DiskPlan, PartitionPlan]]:
        """(mountpoint, disk, partition) of every mounted filesystem, shallowest first."""
        found = [(p.mountpoint, d, p) for d in self.disks for p in d.partitions if p.mountpoint]
        return sorted(found, key=lambda m: (m[0].count("/") if m[0] != "/" else 0, m[0]))

    def boot_disk(self) -> DiskPlan:
        """The disk holding /boot (or / when there is no /boot): where GRUB goes."""
        mounts = {m: d for m, d, _ in self.mounts()}
        return mounts.get("/boot") or mounts["/"]
