"""What the disks layer works with: identifiers derived from the key, a filesystem's plan and
what the build learns about it, the content a subtree needs."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ksbake.errors import BuildError
from ksbake.layout import DiskPlan, MiB, PartitionPlan

log = logging.getLogger("ksbake.disks")


EXT = ("ext2", "ext3", "ext4")


FAT = ("vfat", "efi")


FAT32_MIN = 36 * MiB
"""From this size up, FAT32 with 512-byte clusters has enough clusters (65525) to be FAT32."""


OPAQUE = "trusted.overlay.opaque"


ESP_OPTIONS = "umask=0077,shortname=winnt"


ESTIMATE_SLACK = 0.03
"""The size estimate may exceed the truth by this much (mkfs -d leaves all-zero blocks
unallocated); in that band mkfs itself decides, and its "no space" becomes the same error."""


class Ids:
    """Every identifier of the image, derived from the layer key: same key, same bytes."""

    def __init__(self, seed: str) -> None:
        self.seed = seed

    def digest(self, *what: str) -> bytes:
        return hashlib.sha256("\0".join(("ksbake-disks", self.seed, *what)).encode()).digest()

    def guid(self, *what: str) -> uuid.UUID:
        return uuid.UUID(bytes=self.digest(*what)[:16], version=4)

    def fs_uuid(self, disk: str, number: int) -> str:
        return str(self.guid("fs", disk, str(number)))

    def hash_seed(self, disk: str, number: int, lv: str | None = None) -> str:
        """A partition's by disk and number; a logical volume's by its VG/LV name."""
        return str(self.guid("hash-seed", lv) if lv else self.guid("hash-seed", disk, str(number)))

    def fat_volid(self, disk: str, number: int) -> str:
        return self.digest("volid", disk, str(number))[:4].hex().upper()

    def msdos_id(self, disk: str) -> int:
        return int.from_bytes(self.digest("msdos-id", disk)[:4], "little") or 1

    def gpt_disk(self, disk: str) -> uuid.UUID:
        return self.guid("gpt-disk", disk)

    def gpt_part(self, disk: str, number: int) -> uuid.UUID:
        return self.guid("gpt-part", disk, str(number))


@dataclass
class Content:
    """What a subtree needs: measured once, before anything is written."""

    inodes: int = 0  # entries below the root (hardlinked files once)
    apparent: int = 0  # sum of regular file sizes
    files: list[tuple[int, int]] = field(default_factory=list)  # regular files: (size, allocated)
    dirs: list[tuple[int, int]] = field(default_factory=list)  # (entries, bytes of names)
    long_symlinks: int = 0  # symlinks too long to live in the inode (ext: >= 60 bytes)
    unusual: list[tuple[str, str]] = field(default_factory=list)  # (path, kind): not regular/dir
    max_mtime: int = 0


@dataclass
class Fs:
    """One partition of the plan, with what the build learns about it."""

    disk: DiskPlan
    part: PartitionPlan
    image: Path
    uuid: str | None = None
    partuuid: str | None = None
    fat_bits: int | None = None
    top: Path | None = None  # its overlay's extra top layer
    view: Path | None = None  # its overlay's mount point (the whole tree, split)
    top_paths: list[str] = field(default_factory=list)  # tree paths the top layer provides
    content: Content = field(default_factory=Content)
    mnt: Path | None = None  # xfs: where the partition is mounted for population
    capacity: int = 0  # bytes free after formatting (0: not measured)
    need: int = 0  # bytes the content needs
    lv: str | None = None  # "VG/LV": a logical volume (``part`` then says where it lies)
    spans: list[tuple[Path, int, int]] = field(default_factory=list)  # a split LV built in a
    # scratch image: (disk image, offset there, bytes) of each segment, in LV order
    subvol: str | None = None  # a btrfs subvolume of ``volume``: nothing to format
    volume: Fs | None = None
    subvolumes: list[Fs] = field(default_factory=list)  # a btrfs volume's subvolumes

    @property
    def mountpoint(self) -> str | None:
        return self.part.mountpoint

    @property
    def where(self) -> str:
        what = self.part.mountpoint or self.part.fstype
        if self.lv:
            return f"{what} ({self.part.fstype}, logical volume {self.lv})"
        if self.subvol and self.volume is not None:
            vol = f"{self.volume.disk.name} partition {self.volume.part.number}"
            return f"{what} (btrfs subvolume {self.subvol}, {vol})"
        return f"{what} ({self.part.fstype}, {self.disk.name} partition {self.part.number})"

    @property
    def ident(self) -> str:
        """Names this filesystem's scratch files: ``sda-2``, or ``VG-LV`` for a volume."""
        return self.lv.replace("/", "-") if self.lv else f"{self.disk.name}-{self.part.number}"

    @property
    def formatted(self) -> bool:
        """Whether this entry makes a filesystem of its own (not a subvolume, not a PV)."""
        return self.subvol is None and self.part.fstype not in ("lvmpv", "biosboot")

    @property
    def source(self) -> Path | None:
        """The subtree this filesystem holds, inside its view (None if the tree has none)."""
        assert self.view is not None and self.mountpoint
        rel = self.mountpoint.strip("/")
        path = self.view / rel if rel else self.view
        st = _lstat_in(self.view, rel)
        return path if st is not None and stat.S_ISDIR(st.st_mode) else None


def _lstat_in(root: Path, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` under ``root`` without following any symlink on the way (or None)."""
    path = root
    st = os.lstat(root)
    for part in [p for p in rel.split("/") if p]:
        if not stat.S_ISDIR(st.st_mode):
            return None
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
    return st


def host_full(path: Path) -> BuildError | None:
    """The error to give when the store's own filesystem is (nearly) full: then a failing
    mkfs ran out of host disk, not of partition (which would be the wrong thing to say)."""
    st = os.statvfs(path)
    if st.f_bfree * st.f_frsize >= 16 * MiB:  # root writes into the reserved blocks too
        return None
    return BuildError(
        f"no space left on device: the store's filesystem ({path}) is full",
        hint="free some space, or move the store with KSBAKE_STORE",
    )


def _too_big_error(too_big: list[Fs], ran_out: bool = False) -> BuildError:
    """One error for every filesystem that cannot hold its part of the tree."""
    parts = []
    for fs in too_big:
        given = fs.part.size // MiB
        need = math.ceil((fs.part.size - fs.capacity + fs.need) / MiB)
        what = f"more than {given}" if ran_out or need <= given else f"about {need}"
        files = math.ceil(fs.content.apparent / MiB)
        parts.append(
            f"{fs.where} does not fit in its partition: {files} MiB of files in "
            f"{fs.content.inodes} inodes need {what} MiB, the partition has {given} MiB"
        )
    mp = too_big[0].mountpoint
    return BuildError(
        "; ".join(parts),
        hint=f"raise `part {mp} --size=MiB` in the kickstart, or give the disk more room "
        "(the disk size in the appliance settings, with --grow)",
    )
