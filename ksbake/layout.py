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

LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "vfat": 11, "efi": 11, "swap": 16}
"""The longest filesystem label each type holds, in bytes."""

FSTYPES = ("ext2", "ext3", "ext4", "xfs", "vfat", "efi", "swap", "biosboot")
"""Filesystem types an image builder can make (``efi`` is a vfat ESP, ``biosboot`` a raw
1 MiB GPT partition for GRUB's core image)."""


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


@dataclass(frozen=True)
class DiskPlan:
    name: str  # "sda", "sdb", "vda" ... (image files are NAME-<disk>.<format>)
    size: int  # bytes
    label: str  # partition table: "msdos" or "gpt"
    partitions: tuple[PartitionPlan, ...]


@dataclass(frozen=True)
class Plan:
    disks: tuple[DiskPlan, ...]

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
            )
        )

    def mounts(self) -> list[tuple[str, DiskPlan, PartitionPlan]]:
        """(mountpoint, disk, partition) of every mounted filesystem, shallowest first."""
        found = [(p.mountpoint, d, p) for d in self.disks for p in d.partitions if p.mountpoint]
        return sorted(found, key=lambda m: (m[0].count("/") if m[0] != "/" else 0, m[0]))

    def boot_disk(self) -> DiskPlan:
        """The disk holding /boot (or / when there is no /boot): where GRUB goes."""
        mounts = {m: d for m, d, _ in self.mounts()}
        return mounts.get("/boot") or mounts["/"]
