"""The disks layer's worker: sparse raw disks, partitioned, with filesystems built from the tree.

``build()`` runs inside a sandbox worker (``ksbake.sandbox.call("ksbake.disks:build", ...)``):
a private mount namespace, so every mount made here also vanishes if the worker is killed;
``build()`` still unmounts what it mounted, in ``finally``.

How, and why (see shared/ENVIRONMENT.md: no device-mapper, the kernel parses no partition
tables, vfat cannot be mounted):

- Partition tables are written with pyparted straight onto the sparse image file, no loop
  device. libparted picks the msdos disk identifier and the GPT GUIDs at random, so they are
  overwritten afterwards with values derived from the layer key (the GPT CRCs recomputed).
- The tree is split by mount points with read-only overlays: each filesystem gets its own
  overlay of the layers under a small extra top layer holding, for each mount point nested
  below it, an empty OPAQUE directory (``trusted.overlay.opaque=y``), and for ``/`` the image's
  ``etc/fstab``. So ``/`` holds an empty ``/boot`` while ``/boot`` holds the kernels, and the
  cached layers are never written. The top layer's directories copy owner, mode, times and
  xattrs from the real tree. Overlays read their lower layers with noatime, so building never
  changes the cached trees' atimes (which mkfs -d copies into the image).
- ext2/3/4: ``mkfs.extN -d VIEW -E offset=...`` builds each filesystem directly inside its
  partition (one pass over the data, nothing mounted); a few inode fields mkfs cannot take from
  the tree (the root directory's mode/owner/times, the ctimes of the top layer's entries) are
  then set with ``debugfs -w``, so that identical inputs give identical bytes. mke2fs writes
  zeroed inode tables and journals for ext2/ext3 (not ext4): ``fallocate --dig-holes`` on the
  partition's range makes those holes again.
- vfat/efi: ``mkfs.vfat --offset`` + ``mcopy -i disk.raw@@OFFSET`` (mtools). FAT32 with one
  sector per cluster from 36 MiB up (fewer clusters than 65525 make mtools treat it as FAT16);
  smaller ones are left to mkfs.fat (FAT12/16).
- xfs: mkfs.xfs has no offset option, so it formats a sparse temporary file that is spliced
  (holes and zero blocks skipped) into the partition, which is then loop-mounted at its offset
  (``mount -o loop,offset=``: the loop device is auto-cleared with the mount, also when the
  namespace dies) and filled with ``cp -a``. XFS images are not byte-reproducible (inode
  generations, log, ctimes).
- swap: ``mkswap -U`` on a sparse temporary file (util-linux 2.38 has no offset), spliced.
- biosboot: left empty; the bootloader layer writes GRUB's core image there.

Determinism: every UUID, the ext hash seed, the FAT volume id, the msdos disk identifier and
the GPT GUIDs derive from ``seed`` (the layer key); timestamps come from SOURCE_DATE_EPOCH, or
else the newest mtime in the tree (E2FSPROGS_FAKE_TIME for mke2fs, SOURCE_DATE_EPOCH for mtools,
``--invariant`` for mkfs.fat).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksbake import treefs
from ksbake.errors import BuildError, ToolError
from ksbake.layout import ALIGN, FSTYPES, SECTOR, DiskPlan, MiB, PartitionPlan, Plan
from ksbake.run import run

log = logging.getLogger("ksbake.disks")

EXT = ("ext2", "ext3", "ext4")
FAT = ("vfat", "efi")
FAT32_MIN = 36 * MiB
"""From this size up, FAT32 with 512-byte clusters has enough clusters (65525) to be FAT32."""
LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "vfat": 11, "efi": 11, "swap": 16}
OPAQUE = "trusted.overlay.opaque"
MIN_EPOCH = 315532800  # 1980-01-01: FAT cannot store anything older
SPLICE_CHUNK = 1024 * 1024
ZERO_GRAIN = 64 * 1024
_ZERO = bytes(ZERO_GRAIN)
ESP_OPTIONS = "umask=0077,shortname=winnt"
ESTIMATE_SLACK = 0.03
"""The size estimate may exceed the truth by this much (mkfs -d leaves all-zero blocks
unallocated); in that band mkfs itself decides, and its "no space" becomes the same error."""


# -- identifiers derived from the layer key ---------------------------------------------------


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

    def hash_seed(self, disk: str, number: int) -> str:
        return str(self.guid("hash-seed", disk, str(number)))

    def fat_volid(self, disk: str, number: int) -> str:
        return self.digest("volid", disk, str(number))[:4].hex().upper()

    def msdos_id(self, disk: str) -> int:
        return int.from_bytes(self.digest("msdos-id", disk)[:4], "little") or 1

    def gpt_disk(self, disk: str) -> uuid.UUID:
        return self.guid("gpt-disk", disk)

    def gpt_part(self, disk: str, number: int) -> uuid.UUID:
        return self.guid("gpt-part", disk, str(number))


# -- what one filesystem is ----------------------------------------------------------------


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

    @property
    def mountpoint(self) -> str | None:
        return self.part.mountpoint

    @property
    def where(self) -> str:
        what = self.part.mountpoint or self.part.fstype
        return f"{what} ({self.part.fstype}, {self.disk.name} partition {self.part.number})"

    @property
    def source(self) -> Path | None:
        """The subtree this filesystem holds, inside its view (None if the tree has none)."""
        assert self.view is not None and self.mountpoint
        rel = self.mountpoint.strip("/")
        path = self.view / rel if rel else self.view
        st = _lstat_in(self.view, rel)
        return path if st is not None and stat.S_ISDIR(st.st_mode) else None


# -- the entry point ---------------------------------------------------------------------


def build(plan: dict[str, Any], layers: list[str], out_dir: str, seed: str) -> dict[str, Any]:
    """Write ``out_dir/<disk>.raw`` for every disk of ``plan`` from the tree ``layers``.

    ``layers``: directories whose overlay is the configured root tree, topmost first.
    Returns per disk the file, size, identifier and partitions (uuid, offsets) that the
    bootloader layer needs, the fstab written into the image and the epoch used.

    Sizes are checked before any content is written: one BuildError names every filesystem
    that cannot hold its part of the tree. On any failure the half-written images stay in
    ``out_dir``: that is the store's staging directory, which it removes on failure.
    """
    the_plan = Plan.from_dict(plan)
    _validate(the_plan, layers, out_dir)
    ids = Ids(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    filesystems: list[Fs] = []
    disks_out: list[dict[str, Any]] = []
    for disk in the_plan.disks:
        image = out / f"{disk.name}.raw"
        with open(image, "wb") as f:
            f.truncate(disk.size)
        fss = [Fs(disk, p, image) for p in disk.partitions]
        for fs in fss:
            _assign_ids(fs, ids)
        table = write_table(image, disk, fss, ids)
        filesystems.extend(fss)
        disks_out.append({"disk": disk, "table": table, "fss": fss})

    fstab = fstab_text(the_plan, filesystems)
    scratch = Path(tempfile.mkdtemp(prefix=".ksbake-disks-", dir=out))
    mounts = Mounts()
    try:
        mounted = [fs for fs in filesystems if fs.mountpoint]
        mountpoints = [fs.mountpoint for fs in mounted]
        full = scratch / "full"
        (scratch / "empty").mkdir()
        mounts.overlay([*map(Path, layers), scratch / "empty"], full)
        for i, fs in enumerate(mounted):
            below = [m for m in mountpoints if m and _is_below(m, fs.mountpoint or "/")]
            # only the outermost: /boot/efi lives in /boot's filesystem, not in /'s
            nested = [m for m in below if not any(_is_below(m, o) for o in below)]
            fs.top = scratch / f"top{i}"
            fs.top_paths = _make_top(fs.top, full, nested, fstab if fs.mountpoint == "/" else None)
            fs.view = scratch / f"view{i}"
            mounts.overlay([fs.top, *map(Path, layers)], fs.view)
            src = fs.source
            fs.content = measure(src) if src is not None else Content()
        epoch = _epoch(mounted)
        for fs in mounted:
            _date_new_entries(fs, full, epoch)

        # format what can be formatted empty, measure the room, and check it all first
        for fs in filesystems:
            _prepare(fs, ids, epoch, scratch, mounts)
        too_big = [fs for fs in mounted if fs.need * (1 - ESTIMATE_SLACK) > fs.capacity]
        if too_big:
            raise _too_big_error(too_big)

        for fs in mounted:
            _populate(fs, ids, epoch, full, scratch, mounts)
    finally:
        # never remove a directory tree that may still have a mount below it
        if mounts.close() and not _mounted_below(scratch):
            remove_scratch(scratch)
        else:
            log.warning("leaving %s: something is still mounted below it", scratch)

    return {
        "epoch": epoch,
        "fstab": fstab,
        "disks": [_disk_result(d["disk"], d["table"], d["fss"]) for d in disks_out],
        "mounts": {
            fs.mountpoint: {"disk": fs.disk.name, "number": fs.part.number, "uuid": fs.uuid}
            for fs in filesystems
            if fs.mountpoint
        },
    }


def _disk_result(disk: DiskPlan, table: dict[str, Any], fss: list[Fs]) -> dict[str, Any]:
    return {
        "name": disk.name,
        "file": f"{disk.name}.raw",
        "size": disk.size,
        "label": disk.label,
        "identifier": table["identifier"],
        "extended": table.get("extended"),
        "partitions": [
            {
                "number": fs.part.number,
                "start": fs.part.start,
                "size": fs.part.size,
                "fstype": fs.part.fstype,
                "mountpoint": fs.part.mountpoint,
                "uuid": fs.uuid,
                "partuuid": fs.partuuid,
                "label": fs.part.label,
                "fat": fs.fat_bits,
            }
            for fs in fss
        ],
    }


def tool_versions() -> dict[str, str]:
    """Versions of the tools whose output lands in the image (inputs of the layer's key)."""
    import parted

    found: dict[str, str] = {"libparted": str(parted.version().get("libparted"))}
    for name, argv in (
        ("e2fsprogs", ["mke2fs", "-V"]),
        ("xfsprogs", ["mkfs.xfs", "-V"]),
        ("dosfstools", ["mkfs.fat", "--help"]),
        ("mtools", ["mtools", "--version"]),
        ("util-linux", ["mkswap", "-V"]),
    ):
        if shutil.which(argv[0]) is None:
            continue
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        text = (proc.stdout + proc.stderr).strip()
        match = re.search(r"\d+\.\d+(\.\d+)?", text)
        found[name] = match.group(0) if match else text.splitlines()[0] if text else "?"
    conf = Path(os.environ.get("MKE2FS_CONFIG", "/etc/mke2fs.conf"))  # ext feature defaults
    if conf.is_file():
        found["mke2fs.conf"] = hashlib.sha256(conf.read_bytes()).hexdigest()[:16]
    return found


# -- plan checks ---------------------------------------------------------------------------


def _validate(plan: Plan, layers: list[str], out_dir: str) -> None:
    """Reject what the tools would turn into confusing failures (or silent damage)."""
    if not layers:
        raise BuildError("disks: no tree layers given")
    if any(c in out_dir for c in ":,\\"):
        raise BuildError(f"disks: output directory {out_dir} cannot hold overlay mounts")
    for layer in layers:
        if not Path(layer).is_dir():
            raise BuildError(f"disks: tree layer {layer} is not a directory")
        if any(c in layer for c in ":,\\"):
            raise BuildError(f"disks: tree layer path {layer} cannot be used in an overlay mount")
    seen: set[str] = set()
    names: set[str] = set()
    for disk in plan.disks:
        if disk.name in names or not re.fullmatch(r"[A-Za-z0-9_.-]+", disk.name):
            raise BuildError(f"disk name {disk.name!r} is invalid or used twice")
        names.add(disk.name)
        if disk.label not in ("msdos", "gpt"):
            raise BuildError(f"{disk.name}: unknown partition table type {disk.label!r}")
        if disk.size % SECTOR:
            raise BuildError(f"{disk.name}: size {disk.size} is not a multiple of {SECTOR}")
        for p in disk.partitions:
            where = f"{disk.name} partition {p.number}"
            if p.fstype not in FSTYPES:
                raise BuildError(f"{where}: unknown filesystem type {p.fstype!r}")
            if p.start % SECTOR or p.size % SECTOR or p.size <= 0:
                raise BuildError(f"{where}: start/size not whole sectors")
            if p.start + p.size > disk.size:
                raise BuildError(f"{where}: ends past the end of the {disk.size} byte disk")
            if p.fstype == "biosboot" and disk.label != "gpt":
                raise BuildError(
                    f"{where}: a biosboot partition only makes sense on a GPT disk",
                    hint="drop `part biosboot` or use a GPT disk label",
                )
            if p.logical and disk.label != "msdos":
                raise BuildError(f"{where}: logical partitions exist only on msdos disks")
            label = p.label
            if label and len(label.encode()) > LABEL_MAX.get(p.fstype, 16):
                raise BuildError(
                    f"{where}: label {label!r} is too long for {p.fstype} "
                    f"(at most {LABEL_MAX.get(p.fstype, 16)} bytes)"
                )
            mp = p.mountpoint
            if p.fstype in ("swap", "biosboot"):
                continue
            if not mp:
                raise BuildError(f"{where}: a {p.fstype} filesystem needs a mount point")
            if (
                not mp.startswith("/")
                or (mp != "/" and mp.endswith("/"))
                or "//" in mp
                or any(part in (".", "..") for part in mp.split("/"))
                or re.search(r"[\s\"'\\]", mp)
            ):
                raise BuildError(f"{where}: invalid mount point {mp!r}")
            if mp in seen:
                raise BuildError(f"mount point {mp} is used by two partitions")
            seen.add(mp)
    if "/" not in seen:
        raise BuildError("the layout has no / filesystem", hint="add `part / ...` to the kickstart")


def _is_below(path: str, parent: str) -> bool:
    if path == parent:
        return False
    return parent == "/" or path.startswith(parent + "/")


# -- partition tables ----------------------------------------------------------------------


def _assign_ids(fs: Fs, ids: Ids) -> None:
    p = fs.part
    if p.fstype in FAT:
        vol = ids.fat_volid(fs.disk.name, p.number)
        fs.uuid = f"{vol[:4]}-{vol[4:]}"
        fs.fat_bits = _fat_bits(p)
    elif p.fstype != "biosboot":
        fs.uuid = ids.fs_uuid(fs.disk.name, p.number)
    if fs.disk.label == "gpt":
        fs.partuuid = str(ids.gpt_part(fs.disk.name, p.number))
    else:
        fs.partuuid = f"{ids.msdos_id(fs.disk.name):08x}-{p.number:02x}"


def _fat_bits(part: PartitionPlan) -> int:
    user = shlex.split(part.mkfsoptions or "")
    for i, arg in enumerate(user):
        if arg == "-F" and i + 1 < len(user):
            return int(user[i + 1])
        if arg.startswith("-F") and arg[2:].isdigit():
            return int(arg[2:])
    return 32 if part.size >= FAT32_MIN else 16


def _parted_fstype(fs: Fs) -> str | None:
    t = fs.part.fstype
    if t in FAT:
        return "fat32" if fs.fat_bits == 32 else "fat16"
    return {"swap": "linux-swap(v1)", "biosboot": None}.get(t, t)


def _gpt_name(part: PartitionPlan) -> str:
    if part.fstype == "efi":
        return "EFI System Partition"
    if part.fstype == "biosboot":
        return "BIOS boot partition"
    if part.fstype == "swap":
        return "swap"
    if part.mountpoint == "/":
        return "root"
    return (part.mountpoint or part.fstype).strip("/").replace("/", "-")[:36]


def write_table(image: Path, disk: DiskPlan, fss: list[Fs], ids: Ids) -> dict[str, Any]:
    """Partition the image file with pyparted, exactly as planned; ids from the seed."""
    import _ped
    import parted

    dev = parted.getDevice(str(image))
    if dev.sectorSize != SECTOR:
        raise BuildError(f"{image}: libparted sees {dev.sectorSize}-byte sectors, not {SECTOR}")
    pdisk = parted.freshDisk(dev, disk.label)
    boot_mp = "/boot" if any(fs.mountpoint == "/boot" for fs in fss) else "/"
    by_number: dict[int, Any] = {}
    extended: dict[str, int] | None = None

    def add(ptype: int, start: int, size: int, fstype: str | None, what: str) -> Any:
        geom = parted.Geometry(device=dev, start=start // SECTOR, length=size // SECTOR)
        fsobj = parted.FileSystem(type=fstype, geometry=geom) if fstype else None
        part = parted.Partition(disk=pdisk, type=ptype, fs=fsobj, geometry=geom)
        try:
            pdisk.addPartition(partition=part, constraint=parted.Constraint(exactGeom=geom))
        except Exception as exc:  # pyparted raises several unrelated exception classes
            raise BuildError(
                f"{disk.name}: cannot place {what} at {start} (+{size} bytes): {exc}"
            ) from None
        return part

    primaries = sorted((fs for fs in fss if not fs.part.logical), key=lambda f: f.part.number)
    logicals = sorted((fs for fs in fss if fs.part.logical), key=lambda f: f.part.number)
    ext_number = None
    if logicals:
        first = min(fs.part.start for fs in logicals)
        last = max(fs.part.start + fs.part.size for fs in logicals)
        before = [fs.part.start + fs.part.size for fs in primaries]
        prev_end = max((e for e in before if e <= first), default=SECTOR)
        ext_start = max(prev_end, first - ALIGN)
        if ext_start >= first:
            raise BuildError(
                f"{disk.name}: no room before logical partition {logicals[0].part.number} "
                "for the extended partition's boot record"
            )
        free = sorted(set(range(1, 5)) - {fs.part.number for fs in primaries})
        if not free:
            raise BuildError(f"{disk.name}: four primary partitions leave no extended one")
        ext_number = free[0]
        extended = {"number": ext_number, "start": ext_start, "size": last - ext_start}

    order: list[tuple[int, Fs | None]] = [(fs.part.number, fs) for fs in primaries]
    if ext_number is not None:
        order.append((ext_number, None))
    order.sort(key=lambda x: x[0])
    for number, fs in order:
        if fs is None:
            assert extended is not None
            add(
                parted.PARTITION_EXTENDED,
                extended["start"],
                extended["size"],
                None,
                "the extended partition",
            )
            continue
        by_number[number] = add(
            parted.PARTITION_NORMAL,
            fs.part.start,
            fs.part.size,
            _parted_fstype(fs),
            f"partition {number}",
        )
    for fs in logicals:
        by_number[fs.part.number] = add(
            parted.PARTITION_LOGICAL,
            fs.part.start,
            fs.part.size,
            _parted_fstype(fs),
            f"logical partition {fs.part.number}",
        )

    for fs in fss:
        part = by_number[fs.part.number]
        if part.number != fs.part.number:
            raise BuildError(
                f"{disk.name}: libparted numbered partition {fs.part.number} as {part.number}",
                hint="msdos: primaries 1-4 in disk order, logicals from 5",
            )
        if fs.part.fstype == "efi":
            part.setFlag(_ped.partition_flag_get_by_name("esp"))
        elif fs.part.fstype == "biosboot":
            part.setFlag(parted.PARTITION_BIOS_GRUB)
        elif disk.label == "msdos" and fs.mountpoint == boot_mp:
            part.setFlag(parted.PARTITION_BOOT)
        if disk.label == "gpt":
            part.set_name(_gpt_name(fs.part))
    pdisk.commitToDevice()

    if disk.label == "msdos":
        ident = ids.msdos_id(disk.name)
        with open(image, "r+b") as f:
            f.seek(440)
            f.write(struct.pack("<I", ident))
        return {"identifier": f"0x{ident:08x}", "extended": extended}
    guid = ids.gpt_disk(disk.name)
    set_gpt_guids(
        image, guid, {fs.part.number: ids.gpt_part(disk.name, fs.part.number) for fs in fss}
    )
    return {"identifier": str(guid), "extended": None}


def set_gpt_guids(image: Path, disk_guid: uuid.UUID, parts: dict[int, uuid.UUID]) -> None:
    """Overwrite the GPT disk GUID and partition GUIDs (both copies), fixing the CRCs."""
    with open(image, "r+b") as f:
        f.seek(SECTOR)
        primary = f.read(SECTOR)
        if primary[:8] != b"EFI PART":
            raise BuildError(f"{image}: no GPT header after writing the table")
        (backup_lba,) = struct.unpack_from("<Q", primary, 32)
        for lba in (1, backup_lba):
            f.seek(lba * SECTOR)
            hdr = bytearray(f.read(SECTOR))
            if hdr[:8] != b"EFI PART":
                raise BuildError(f"{image}: GPT header at LBA {lba} is missing")
            (hsize,) = struct.unpack_from("<I", hdr, 12)
            (entries_lba,) = struct.unpack_from("<Q", hdr, 72)
            count, esize = struct.unpack_from("<II", hdr, 80)
            f.seek(entries_lba * SECTOR)
            entries = bytearray(f.read(count * esize))
            for number, guid in parts.items():
                at = (number - 1) * esize
                if entries[at : at + 16] != bytes(16):
                    entries[at + 16 : at + 32] = guid.bytes_le
            hdr[56:72] = disk_guid.bytes_le
            struct.pack_into("<I", hdr, 88, zlib.crc32(entries))
            struct.pack_into("<I", hdr, 16, 0)
            struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[:hsize])))
            f.seek(entries_lba * SECTOR)
            f.write(entries)
            f.seek(lba * SECTOR)
            f.write(hdr)


# -- fstab ---------------------------------------------------------------------------------


def fstab_text(plan: Plan, filesystems: list[Fs]) -> str:
    """/etc/fstab of the image: every filesystem by UUID, shallowest first, then swap."""
    by_part = {(fs.disk.name, fs.part.number): fs for fs in filesystems}
    rows: list[tuple[str, str, str, str, str]] = []
    for mp, disk, part in plan.mounts():
        fs = by_part[(disk.name, part.number)]
        fstype = "vfat" if part.fstype in FAT else part.fstype
        default = ESP_OPTIONS if part.fstype == "efi" else "defaults"
        passno = "0" if part.fstype == "xfs" else "1" if mp == "/" else "2"
        rows.append((f"UUID={fs.uuid}", mp, fstype, part.fsoptions or default, f"0 {passno}"))
    for fs in filesystems:
        if fs.part.fstype == "swap":
            rows.append((f"UUID={fs.uuid}", "none", "swap", fs.part.fsoptions or "defaults", "0 0"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["# /etc/fstab: written by ksbake; filesystems by UUID, see fstab(5)"]
    for row in rows:
        lines.append(
            " ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + " " + row[4]
        )
    return "\n".join(lines) + "\n"


# -- mounts and the split tree -------------------------------------------------------------


class Mounts:
    """What this worker mounted, to unmount in reverse order whatever happens."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, args: list[str], target: Path, what: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", *args, str(target)], what=what)
        self.points.append(target)

    def overlay(self, lower: list[Path], target: Path) -> None:
        """A read-only overlay of ``lower`` (topmost first; at least two)."""
        opts = "ro,lowerdir=" + ":".join(str(p) for p in lower)
        self.mount(["-t", "overlay", "-o", opts, "ksbake-disks"], target, "mounting the tree")

    def umount(self, target: Path) -> None:
        run(["umount", str(target)], what=f"unmounting {target}")
        self.points.remove(target)

    def close(self) -> bool:
        """Unmount everything left; True when nothing is left mounted."""
        ok = True
        for target in reversed(list(self.points)):
            try:
                run(["umount", str(target)])
            except ToolError:
                try:
                    run(["umount", "-l", str(target)])
                except ToolError as exc:
                    log.warning("cannot unmount %s: %s", target, exc)
                    ok = False
                    continue
            self.points.remove(target)
        return ok


def _mounted_below(path: Path) -> bool:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                return True
    return False


def remove_scratch(path: Path) -> None:
    """Remove the scratch directory (top layers, temp files, empty mount points)."""
    from ksbake.store import remove_tree

    remove_tree(path)


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


def _copy_meta(src_root: Path, rel: str, dst: Path) -> None:
    """Give ``dst`` (a directory in a top layer) the owner, mode, times, xattrs of the tree's.

    A directory the tree lacks gets root 0755 and time 0 (left out of the epoch, set to it
    by ``_date_new_entries``).
    """
    st = _lstat_in(src_root, rel)
    if st is None or not stat.S_ISDIR(st.st_mode):
        os.chown(dst, 0, 0)
        os.chmod(dst, 0o755)
        os.utime(dst, (0, 0))
        return
    src = src_root / rel if rel else src_root
    for name in os.listxattr(src, follow_symlinks=False):
        if name.startswith("trusted.overlay."):
            continue
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False))
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _make_top(top: Path, full: Path, nested: list[str], fstab: str | None) -> list[str]:
    """Fill an overlay top layer: opaque empty dirs at ``nested`` mount points, fstab for /.

    Returns the tree paths ("", "boot", "boot/efi", "etc", "etc/fstab") the layer provides,
    parents before children.
    """
    top.mkdir()
    dirs: list[str] = [""]
    for mp in sorted(nested):
        parts = mp.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel not in dirs:
                (top / rel).mkdir()
                dirs.append(rel)
        os.setxattr(top / mp.strip("/"), OPAQUE, b"y")
    paths = list(dirs)
    if fstab is not None:
        st = _lstat_in(full, "etc")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise BuildError("/etc in the tree is not a directory: cannot write /etc/fstab")
        if "etc" not in dirs:
            (top / "etc").mkdir()
            dirs.append("etc")
            paths.append("etc")
        target = top / "etc" / "fstab"
        target.write_text(fstab)
        os.chown(target, 0, 0)
        os.chmod(target, 0o644)
        os.utime(target, (0, 0))  # left out of the epoch; set to it later
        paths.append("etc/fstab")
    for rel in sorted(dirs, key=lambda r: -r.count("/") - (1 if r else 0)):
        _copy_meta(full, rel, top / rel if rel else top)
    return paths


def _date_new_entries(fs: Fs, full: Path, epoch: int) -> None:
    """Entries of the top layer that the tree lacks (fstab, missing mount points) get the
    epoch as their times, now that it is known."""
    assert fs.top is not None
    for rel in fs.top_paths:
        st = _lstat_in(full, rel) if rel != "etc/fstab" else None
        if st is None or not stat.S_ISDIR(st.st_mode):
            os.utime(fs.top / rel if rel else fs.top, (epoch, epoch))


def measure(root: Path) -> Content:
    """Walk a subtree (lstat only, no reads) to learn what its filesystem must hold."""
    c = Content()
    seen: set[tuple[int, int]] = set()
    st = os.lstat(root)
    c.max_mtime = int(st.st_mtime)
    stack = [root]
    while stack:
        d = stack.pop()
        entries = names = 0
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                entries += 1
                names += len(os.fsencode(e.name))
                c.max_mtime = max(c.max_mtime, int(st.st_mtime))
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    c.inodes += 1
                    stack.append(Path(e.path))
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                c.inodes += 1
                if stat.S_ISREG(mode):
                    c.files.append((st.st_size, st.st_blocks * 512))  # mkfs -d keeps holes
                    c.apparent += st.st_size
                    continue
                rel = os.path.relpath(e.path, root)
                if stat.S_ISLNK(mode):
                    if st.st_size >= 60:
                        c.long_symlinks += 1
                    c.unusual.append((rel, "symlink"))
                else:
                    c.unusual.append((rel, "special file"))
        c.dirs.append((entries, names))
    return c


def _epoch(mounted: list[Fs]) -> int:
    """SOURCE_DATE_EPOCH, or the newest mtime in the tree: never the wall clock."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env and env.strip().isdigit():
        return max(int(env), MIN_EPOCH)
    return max([MIN_EPOCH, *(fs.content.max_mtime for fs in mounted)])


# -- formatting and measuring the room -----------------------------------------------------


def _split_opts(part: PartitionPlan) -> list[str]:
    try:
        return shlex.split(part.mkfsoptions or "")
    except ValueError as exc:
        raise BuildError(f"--mkfsoptions {part.mkfsoptions!r}: {exc}") from None


def _take(args: list[str], flag: str) -> tuple[list[str], list[str]]:
    """Remove ``flag VALUE`` / ``flagVALUE`` from ``args``; return (rest, values)."""
    rest: list[str] = []
    values: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == flag:
            values.append(next(it, ""))
        elif arg.startswith(flag) and len(arg) > len(flag) and not arg.startswith("--"):
            values.append(arg[len(flag) :])
        else:
            rest.append(arg)
    return rest, values


def _forbid(fs: Fs, args: list[str], flags: tuple[str, ...], why: str) -> None:
    for arg in args:
        if any(arg == f or (arg.startswith(f) and not f.startswith("--")) for f in flags):
            raise BuildError(
                f"{fs.where}: --mkfsoptions may not contain {arg!r}: {why}",
                hint="remove it from the kickstart's part line",
            )


def _ext_argv(fs: Fs, ids: Ids, offset: int | None, source: Path | None) -> list[str]:
    p = fs.part
    user = _split_opts(p)
    _forbid(fs, user, ("-U", "-d"), "ksbake sets the UUID and the contents")
    user, user_e = _take(user, "-E")
    for value in user_e:
        if any(v.strip().startswith("offset") for v in value.split(",")):
            raise BuildError(f"{fs.where}: --mkfsoptions may not set the offset")
    ext = [
        *([f"offset={offset}"] if offset is not None else []),
        f"hash_seed={ids.hash_seed(fs.disk.name, p.number)}",
        "root_owner=0:0",
        "lazy_itable_init=1",
        "lazy_journal_init=1",
        "assume_storage_prezeroed=1",
        *user_e,
    ]
    argv = [f"mkfs.{p.fstype}", "-q", "-F", "-U", str(fs.uuid), "-E", ",".join(ext)]
    if p.label:
        argv += ["-L", p.label]
    if p.fsprofile:
        argv += ["-T", p.fsprofile]
    argv += user
    if source is not None:
        argv += ["-d", str(source)]
    return argv


def _prepare(fs: Fs, ids: Ids, epoch: int, scratch: Path, mounts: Mounts) -> None:
    """Format (or dry-run) one partition and learn how much room its contents will have."""
    p = fs.part
    t = p.fstype
    if t in EXT:
        _prepare_ext(fs, ids, epoch, scratch)
    elif t in FAT:
        _prepare_fat(fs, ids, epoch)
    elif t == "xfs":
        _prepare_xfs(fs, scratch, mounts)
    elif t == "swap":
        tmp = _sparse(scratch / f"swap-{fs.disk.name}-{p.number}", p.size)
        user = _split_opts(p)
        _forbid(fs, user, ("-U",), "ksbake sets the UUID")
        argv = ["mkswap", "-U", str(fs.uuid), *(["-L", p.label] if p.label else []), *user]
        run([*argv, str(tmp)], what=f"making swap on {fs.where}")
        splice(tmp, fs.image, p.start)
        tmp.unlink()


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _ext_env(epoch: int) -> dict[str, str]:
    return {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}


def _prepare_ext(fs: Fs, ids: Ids, epoch: int, scratch: Path) -> None:
    """Dry run: the same mkfs, empty, on a sparse temp file; dumpe2fs tells the free room."""
    p = fs.part
    tmp = _sparse(scratch / f"ext-{fs.disk.name}-{p.number}", p.size)
    try:
        run(
            [*_ext_argv(fs, ids, None, None), str(tmp), f"{p.size // 1024}k"],
            env=_ext_env(epoch),
            what=f"making {p.fstype} on {fs.where}",
        )
        info = _dumpe2fs(str(tmp))
    finally:
        tmp.unlink()
    bs = int(info["Block size"])
    free_blocks = int(info["Free blocks"])
    free_inodes = int(info["Free inodes"])
    extents = "extent" in info.get("Filesystem features", "").split()
    c = fs.content
    need_blocks = ext_blocks(c, bs, extents)
    fs.capacity = free_blocks * bs
    fs.need = need_blocks * bs
    used = p.size - fs.capacity
    if c.inodes > free_inodes:
        raise BuildError(
            f"{fs.where}: the tree has {c.inodes} files and directories but a "
            f"{p.size // MiB} MiB {p.fstype} gets only {free_inodes} inodes",
            hint="give it more inodes with `--mkfsoptions='-N COUNT'` (or `-i BYTES`) "
            "or raise its --size",
        )
    log.debug(
        "%s: %d bytes used by metadata, %d free, %d needed", fs.where, used, fs.capacity, fs.need
    )


def _dumpe2fs(target: str) -> dict[str, str]:
    out = run(["dumpe2fs", "-h", target], what="reading the new filesystem").stdout.decode()
    info: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def ext_blocks(c: Content, bs: int, extents: bool) -> int:
    """Blocks an ext filesystem of block size ``bs`` needs for ``c`` (data + directories)."""
    blocks = 0
    per_extent = 32768
    per_index = (bs - 12) // 12
    ptrs = bs // 4
    for size, allocated in c.files:
        n = -(-min(size, allocated) // bs)
        if extents:
            count = -(-n // per_extent)
            if count > 4:
                n += -(-count // per_index)
        elif n > 12:
            n += -(-(n - 12) // ptrs) + (1 if n - 12 > ptrs else 0)
        blocks += n
    for entries, names in c.dirs:
        nbytes = 24 + entries * 12 + names
        n = -(-nbytes // bs)
        blocks += n + (1 if n > 1 else 0)
    return blocks + c.long_symlinks


def _fat_argv(fs: Fs, ids: Ids) -> list[str]:
    p = fs.part
    user = _split_opts(p)
    _forbid(fs, user, ("-i", "--offset", "-h", "-C"), "ksbake sets the volume id and the offset")
    argv = ["mkfs.vfat", "--invariant", "--mbr=n", "-i", ids.fat_volid(fs.disk.name, p.number)]
    if fs.fat_bits == 32 and not any(a.startswith("-F") for a in user):
        argv += ["-F", "32", "-s", "1"]
    if p.label:
        argv += ["-n", p.label]
    argv += ["-h", str(p.start // SECTOR), "--offset", str(p.start // SECTOR), *user]
    return [*argv, str(fs.image), str(p.size // 1024)]


def _mtools_env(epoch: int) -> dict[str, str]:
    return {
        **os.environ,
        "MTOOLS_SKIP_CHECK": "1",
        "MTOOLSRC": "/dev/null",
        "SOURCE_DATE_EPOCH": str(epoch),
        "TZ": "UTC",
    }


def _prepare_fat(fs: Fs, ids: Ids, epoch: int) -> None:
    """mkfs.vfat straight into the partition; the boot sector tells the free room."""
    p = fs.part
    run(_fat_argv(fs, ids), env=_mtools_env(epoch), what=f"making vfat on {fs.where}")
    clusters, cluster_size, bits = fat_geometry(fs.image, p.start)
    fs.fat_bits = bits
    free = clusters - (1 if bits == 32 else 0)  # FAT32's root directory takes a cluster
    fs.capacity = free * cluster_size
    fs.need = fat_bytes(fs.content, cluster_size)


def fat_geometry(image: Path, offset: int) -> tuple[int, int, int]:
    """(data clusters, cluster size, FAT bits) from the boot sector at ``offset``."""
    with open(image, "rb") as f:
        f.seek(offset)
        bs = f.read(SECTOR)
    sector, spc, reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHBHH", bs, 11)
    (fat16,) = struct.unpack_from("<H", bs, 22)
    (total32,) = struct.unpack_from("<I", bs, 32)
    (fat32,) = struct.unpack_from("<I", bs, 36)
    total = total16 or total32
    fatsz = fat16 or fat32
    root_sectors = -(-(root_entries * 32) // sector)
    data = total - reserved - nfats * fatsz - root_sectors
    clusters = data // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    return clusters, spc * sector, bits


def fat_bytes(c: Content, cluster: int) -> int:
    """Bytes (whole clusters) a FAT filesystem needs for ``c``; long names take extra slots."""
    n = sum(-(-size // cluster) for size, _ in c.files)  # FAT has no holes
    for entries, names in c.dirs[1:] if c.dirs else []:
        slots = 2 + entries * 2 + -(-names // 13)
        n += max(1, -(-(slots * 32) // cluster))
    return n * cluster


def _prepare_xfs(fs: Fs, scratch: Path, mounts: Mounts) -> None:
    """mkfs.xfs on a sparse temp file, spliced in, then mounted at its offset: statvfs."""
    p = fs.part
    user = _split_opts(p)
    if any("uuid=" in arg for arg in user):
        raise BuildError(
            f"{fs.where}: --mkfsoptions may not set the UUID: ksbake derives it from the build",
            hint="remove -m uuid=... from the kickstart's part line",
        )
    tmp = _sparse(scratch / f"xfs-{fs.disk.name}-{p.number}", p.size)
    argv = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={fs.uuid}"]
    if p.label:
        argv += ["-L", p.label]
    try:
        run([*argv, *user, str(tmp)], what=f"making xfs on {fs.where}")
    except ToolError as exc:
        if "must be larger than" in str(exc):
            raise BuildError(
                f"{fs.where}: {p.size // MiB} MiB is too small for xfs "
                "(mkfs.xfs wants more than 300 MB)",
                hint="raise its --size or use ext4",
            ) from None
        raise
    splice(tmp, fs.image, p.start)
    tmp.unlink()
    fs.mnt = scratch / f"mnt-{fs.disk.name}-{p.number}"
    mounts.mount(
        ["-t", "xfs", "-o", f"loop,nouuid,offset={p.start},sizelimit={p.size}", str(fs.image)],
        fs.mnt,
        f"mounting the new xfs of {fs.where}",
    )
    vfs = os.statvfs(fs.mnt)
    fs.capacity = vfs.f_bavail * vfs.f_frsize
    bs = vfs.f_frsize
    c = fs.content
    blocks = sum(-(-min(size, allocated) // bs) for size, allocated in c.files)
    blocks += sum(-(-(entries * 16 + names) // bs) for entries, names in c.dirs if entries > 8)
    fs.need = blocks * bs + c.inodes * 512


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


# -- filling the filesystems ---------------------------------------------------------------


def _populate(fs: Fs, ids: Ids, epoch: int, full: Path, scratch: Path, mounts: Mounts) -> None:
    t = fs.part.fstype
    if t in EXT:
        _populate_ext(fs, ids, epoch, full)
    elif t in FAT:
        _populate_fat(fs, epoch, scratch)
    elif t == "xfs":
        _populate_xfs(fs, mounts)


_NO_SPACE = re.compile(r"Could not allocate block|No space left|Disk full|Could not allocate inode")


def _populate_ext(fs: Fs, ids: Ids, epoch: int, full: Path) -> None:
    """mkfs.extN -d: the filesystem is built straight into its partition, in one pass."""
    p = fs.part
    src = fs.source
    argv = [*_ext_argv(fs, ids, p.start, src), str(fs.image), f"{p.size // 1024}k"]
    try:
        run(argv, env=_ext_env(epoch), what=f"making {p.fstype} on {fs.where}")
    except ToolError as exc:
        if _NO_SPACE.search(str(exc)):
            raise _too_big_error([fs], ran_out=True) from None
        raise
    _fix_ext_inodes(fs, epoch, full)
    if p.fstype != "ext4":  # mke2fs zeroes ext2/3 inode tables and journals: punch them out
        run(
            ["fallocate", "--dig-holes", "-o", str(p.start), "-l", str(p.size), str(fs.image)],
            what="making the image sparse",
        )


def _fix_ext_inodes(fs: Fs, epoch: int, full: Path) -> None:
    """Set with debugfs what mkfs -d cannot take from the tree.

    The root directory (mkfs gives it its own mode, owner and the fake time) and the ctimes of
    the entries of the top layer (made just now: ctime cannot be set, so it would differ on
    every build).
    """
    mp = fs.mountpoint or "/"
    base = mp.strip("/")
    cmds: list[str] = []

    def set_times(path: str, st: os.stat_result | None) -> None:
        a, m, c = (st.st_atime, st.st_mtime, st.st_ctime) if st else (epoch, epoch, epoch)
        for name, value in (("atime", a), ("mtime", m), ("ctime", c)):
            cmds.append(f'set_inode_field "{path}" {name} @{int(value)}')

    st = _lstat_in(full, base)
    st = st if st is not None and stat.S_ISDIR(st.st_mode) else None
    mode = stat.S_IMODE(st.st_mode) if st else 0o755
    cmds.append(f"set_inode_field / mode 0{stat.S_IFDIR | mode:o}")
    cmds.append(f"set_inode_field / uid {st.st_uid if st else 0}")
    cmds.append(f"set_inode_field / gid {st.st_gid if st else 0}")
    set_times("/", st)
    for rel in fs.top_paths:
        if base:
            if not rel.startswith(base + "/"):
                continue
            inner = "/" + rel[len(base) + 1 :]
        elif rel:
            inner = "/" + rel
        else:
            continue
        if rel == "etc/fstab":
            set_times(inner, None)
            continue
        sub = _lstat_in(full, rel)
        set_times(inner, sub if sub is not None and stat.S_ISDIR(sub.st_mode) else None)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", dir=fs.image.parent) as f:
        f.write("\n".join(cmds) + "\n")
        f.flush()
        out = run(
            ["debugfs", "-w", "-f", f.name, f"{fs.image}?offset={fs.part.start}"],
            what=f"setting inode fields on {fs.where}",
        ).stdout.decode(errors="replace")
    bad = [line for line in out.splitlines() if "set_inode_field:" in line]
    if bad:
        raise BuildError(f"{fs.where}: debugfs: {bad[0]}")


def _populate_fat(fs: Fs, epoch: int, scratch: Path) -> None:
    """mcopy the subtree; FAT has no symlinks: those pointing at files inside the tree are
    copied as files (resolved as in a chroot, never on the host), anything else is an error."""
    src = fs.source
    if src is None:
        return
    c = fs.content
    if c.unusual:
        src = _stage_for_fat(fs, src, scratch / f"fat-{fs.disk.name}-{fs.part.number}")
    _check_fat_names(fs, src)
    entries = sorted(os.listdir(src))
    if not entries:
        return
    target = f"{fs.image}@@{fs.part.start}"
    try:
        run(
            [
                "mcopy",
                "-s",
                "-p",
                "-m",
                "-Q",
                "-i",
                target,
                *(str(src / e) for e in entries),
                "::/",
            ],
            env=_mtools_env(epoch),
            input=b"",  # mtools asks on a name clash: never wait for an answer
            what=f"copying files into {fs.where}",
        )
    except ToolError as exc:
        if _NO_SPACE.search(str(exc)):
            raise _too_big_error([fs], ran_out=True) from None
        raise


def _check_fat_names(fs: Fs, src: Path) -> None:
    """FAT names ignore case: two names that differ only in case cannot both be stored
    (mcopy then fails without a word)."""
    for dirpath, dirnames, filenames in os.walk(src):
        seen: dict[str, str] = {}
        for name in sorted(dirnames + filenames):
            other = seen.setdefault(name.lower(), name)
            if other != name:
                rel = os.path.relpath(dirpath, src)
                where = (fs.mountpoint or "").rstrip("/") + ("" if rel == "." else f"/{rel}")
                raise BuildError(
                    f"{fs.where}: FAT cannot hold both {where}/{other} and {where}/{name} "
                    "(names differ only in letter case)",
                    hint="rename or remove one of them in %post",
                )


def _stage_for_fat(fs: Fs, src: Path, stage: Path) -> Path:
    assert fs.view is not None
    for rel, kind in fs.content.unusual:
        path = src / rel
        if kind == "symlink":
            tree_path = "/" + os.path.relpath(path, fs.view)
            target = treefs.resolve(fs.view, tree_path)
            if target.is_file() and not target.is_symlink():
                continue
        raise BuildError(
            f"{fs.where}: FAT cannot hold {fs.mountpoint}/{rel} ({kind})",
            hint="remove it in %post, or use another filesystem for this mount point",
        )
    shutil.copytree(src, stage, symlinks=True)
    for rel, _kind in fs.content.unusual:
        link = stage / rel
        tree_path = "/" + os.path.relpath(src / rel, fs.view)
        resolved = treefs.resolve(fs.view, tree_path)
        link.unlink()
        shutil.copy2(resolved, link)
    return stage


def _populate_xfs(fs: Fs, mounts: Mounts) -> None:
    assert fs.mnt is not None
    src = fs.source
    try:
        if src is not None:
            run(["cp", "-a", f"{src}/.", f"{fs.mnt}/"], what=f"copying files into {fs.where}")
    except ToolError as exc:
        if _NO_SPACE.search(str(exc)):
            raise _too_big_error([fs], ran_out=True) from None
        raise
    finally:
        mounts.umount(fs.mnt)


# -- sparse copies -------------------------------------------------------------------------


def splice(src: Path, dst: Path, offset: int) -> None:
    """Copy ``src`` into ``dst`` at ``offset``, skipping holes and all-zero blocks.

    ``dst``'s region must read as zeros already (a fresh sparse image): it stays sparse.
    """
    with open(src, "rb") as s, open(dst, "r+b") as d:
        sfd, dfd = s.fileno(), d.fileno()
        end = os.fstat(sfd).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(sfd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            hole = os.lseek(sfd, data, os.SEEK_HOLE)
            for at, chunk in _chunks(sfd, data, hole):
                os.pwrite(dfd, chunk, offset + at)
            pos = hole


def _chunks(fd: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Non-zero pieces (ZERO_GRAIN granular) of the data range [start, end) of ``fd``."""
    pos = start
    while pos < end:
        buf = os.pread(fd, min(SPLICE_CHUNK, end - pos), pos)
        if not buf:
            return
        view = memoryview(buf)
        run_start = None
        for i in range(0, len(buf), ZERO_GRAIN):
            piece = view[i : i + ZERO_GRAIN]
            zero = piece == _ZERO[: len(piece)]
            if not zero and run_start is None:
                run_start = i
            elif zero and run_start is not None:
                yield pos + run_start, bytes(view[run_start:i])
                run_start = None
        if run_start is not None:
            yield pos + run_start, bytes(view[run_start:])
        pos += len(buf)


# -- the layer step, run in the build process ----------------------------------------------

CODE_VERSION = 2  # 2: sealed output files


def step(paths: Any, name: str) -> None:
    """Obtain the partitioned disks for this appliance's plan and configured tree."""
    import json
    import time

    from ksbake import config, report, sandbox
    from ksbake.hashing import canonical_json, layer_key, write_if_changed
    from ksbake.store import Store

    started = time.monotonic()
    build_dir = paths.build_dir(name)
    plan_dict = json.loads((build_dir / "inputs" / "disks.json").read_text())["plan"]
    config_key = json.loads((build_dir / "config.ref").read_text())["key"]
    key = layer_key(
        "disks", CODE_VERSION, {"plan": plan_dict, "tools": tool_versions()}, {"config": config_key}
    )

    def build_disks(staging: Path) -> dict[str, Any]:
        result = sandbox.call(
            "ksbake.disks:build",
            {
                "plan": plan_dict,
                "layers": [str(p) for p in config.layers(paths, config_key)],
                "out_dir": str(staging),
                "seed": key,
            },
            workdir=staging,
        )
        (staging / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        (staging / "plan.json").write_text(json.dumps(plan_dict, indent=1, sort_keys=True))
        return {
            "size": report.tree_size(staging),
            "parents": {"config": config_key},
            "seal": [d["file"] for d in result["disks"]],
        }

    obtained = Store(paths.store).obtain("disks", key, build_disks)
    write_if_changed(build_dir / "disks.ref", canonical_json({"key": key}) + "\n")
    report.record(
        paths,
        name,
        "disks",
        key,
        obtained.built,
        time.monotonic() - started,
        obtained.meta.get("size"),
    )
