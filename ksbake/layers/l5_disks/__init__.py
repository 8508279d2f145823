"""The disks layer: sparse raw disks, partitioned, with filesystems built from the tree.

``build()`` runs inside a sandbox worker (the layer's isolation is ``namespaces``): a private
mount namespace, so every mount made here also vanishes if the worker is killed; it still
unmounts what it mounted, in ``finally``. This file is the orchestration; beside it are the
partition table (``table``), the tree split by mount points (``split``), each filesystem's
preparation and population (``ext``, ``fat``, ``xfs``; ``sparse`` for spliced scratch images)
and what they share (``model``).

How, and why (see shared/ENVIRONMENT.md: no device-mapper, the kernel parses no partition
tables, vfat cannot be mounted):

- Partition tables are written by one declarative sfdisk script straight onto the sparse
  image file, no loop device: label, disk identifier, partition GUIDs, types, names and flags
  all in the script, every identifier derived from the layer key (``table.py``).
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
the GPT GUIDs derive from ``seed`` (the layer key); the filesystems' own times are the newest
mtime in the tree (E2FSPROGS_FAKE_TIME for mke2fs and debugfs, SOURCE_DATE_EPOCH for mtools,
``--invariant`` for mkfs.fat), and so are every ext inode's atime and ctime (mkfs -d would copy
them from the cached tree: when this store built it, when someone last read it).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError
from ksbake.layers.l5_disks.btrfs import _populate_btrfs, _prepare_btrfs
from ksbake.layers.l5_disks.ext import _forbid, _populate_ext, _prepare_ext, _split_opts
from ksbake.layers.l5_disks.fat import _populate_fat, _prepare_fat
from ksbake.layers.l5_disks.lvm import write_volume_group
from ksbake.layers.l5_disks.model import (
    ESTIMATE_SLACK,
    EXT,
    FAT,
    Content,
    Fs,
    Ids,
    _too_big_error,
    log,
)
from ksbake.layers.l5_disks.sparse import _sparse, splice
from ksbake.layers.l5_disks.split import (
    Mounts,
    _date_new_entries,
    _epoch,
    _is_below,
    _make_top,
    _mounted_below,
    fstab_text,
    measure,
    remove_scratch,
)
from ksbake.layers.l5_disks.table import _assign_ids, write_table
from ksbake.layers.l5_disks.xfs import _populate_xfs, _prepare_xfs
from ksbake.layout import FSTYPES, LABEL_MAX, SECTOR, DiskPlan, PartitionPlan, Plan
from ksbake.run import run
from ksbake.runner import Job, located


def build(job: Job) -> dict[str, Any]:
    """The layer's build: ``<disk>.raw`` files for the plan, from the configured tree."""
    from ksbake.layers.l4_config import tree_layers

    plan = job.inputs["plan"]
    layers = [str(p) for p in tree_layers(job.parent_dir("config"))]
    try:
        result = make_disks(plan, layers, job.staging, job.key)
    except BuildError as exc:  # "/ (ext4, sda partition 2) does not fit": at its part line
        where = job.inputs.get("where", {})
        raise located(
            exc, next((w for m, w in where.items() if exc.message.startswith(f"{m} (")), None)
        ) from None
    (job.stage / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    (job.stage / "plan.json").write_text(json.dumps(plan, indent=1, sort_keys=True))
    return {"seal": [d["file"] for d in result["disks"]]}


def make_disks(plan: dict[str, Any], layers: list[str], out_dir: str, seed: str) -> dict[str, Any]:
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
    images: dict[str, Path] = {}
    for disk in the_plan.disks:
        image = out / f"{disk.name}.raw"
        with open(image, "wb") as f:
            f.truncate(disk.size)
        images[disk.name] = image
        fss = [Fs(disk, p, image) for p in disk.partitions]
        for fs in fss:
            _assign_ids(fs, ids)
        table = write_table(image, disk, fss, ids)
        filesystems.extend(fss)
        disks_out.append({"disk": disk, "table": table, "fss": fss})

    scratch = Path(tempfile.mkdtemp(prefix=".ksbake-disks-", dir=out))
    filesystems += logical_volumes(the_plan, images, ids, scratch)
    filesystems += subvolumes(the_plan, filesystems)
    fstab = fstab_text(filesystems)
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
        # xfs and btrfs last: they are loop-mounted from the image file, and mke2fs refuses
        # to write into a file that is mounted (an ext /boot beside an xfs / on one disk)
        formatted = [fs for fs in filesystems if fs.formatted]
        formatted.sort(key=lambda fs: fs.part.fstype in ("xfs", "btrfs"))
        for fs in formatted:
            _prepare(fs, ids, epoch, scratch, mounts)
        for vg in the_plan.volume_groups:
            write_volume_group(the_plan, vg, images, ids, epoch)
        too_big = [fs for fs in formatted if fs.need * (1 - ESTIMATE_SLACK) > fs.capacity]
        too_big = [fs for fs in too_big if fs.mountpoint or fs.subvolumes]
        if too_big:
            raise _too_big_error(too_big)

        for fs in formatted:
            if fs.mountpoint or fs.subvolumes:
                _populate(fs, ids, epoch, full, scratch, mounts)
            at = 0
            for image, offset, length in fs.spans:  # a split LV: its segments into place
                splice(fs.image, image, offset, at, length)
                at += length
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
            if fs.mountpoint and not fs.lv and not fs.subvol
        },
        "filesystems": [_fs_result(fs) for fs in filesystems if fs.formatted or fs.subvol],
    }


def _fs_result(fs: Fs) -> dict[str, Any]:
    """Where a filesystem lies and how it is mounted: the bootloader layer reads these."""
    vol = fs.volume or fs
    return {
        "mountpoint": fs.mountpoint,
        "fstype": fs.part.fstype,
        "uuid": fs.uuid,
        "label": vol.part.label,
        "disk": vol.disk.name,
        "number": vol.part.number if not fs.lv else None,
        "start": vol.part.start if not fs.spans else None,
        "size": vol.part.size,
        "lv": fs.lv,
        "subvol": fs.subvol,
    }


def logical_volumes(plan: Plan, images: dict[str, Path], ids: Ids, scratch: Path) -> list[Fs]:
    """One Fs per logical volume: at its offset on its disk, or (spanning PVs) in a scratch
    image whose segments are spliced into place once it is built."""
    out = []
    disks = {d.name: d for d in plan.disks}
    for vg in plan.volume_groups:
        for lv in vg.lvs:
            extents = plan.lv_extents(vg, lv)
            disk, start, _ = extents[0]
            image = images[disk]
            if len(extents) > 1:
                image = _sparse(scratch / f"lv-{vg.name}-{lv.name}", lv.size)
                start = 0
            part = PartitionPlan(
                number=0,
                mountpoint=lv.mountpoint,
                fstype=lv.fstype,
                start=start,
                size=lv.size,
                label=lv.label,
                fsoptions=lv.fsoptions,
                mkfsoptions=lv.mkfsoptions,
                fsprofile=lv.fsprofile,
            )
            fs = Fs(disks[disk], part, image, lv=f"{vg.name}/{lv.name}")
            if len(extents) > 1:
                fs.spans = [(images[d], at, n) for d, at, n in extents]
            fs.uuid = str(ids.guid("lv-fs", vg.name, lv.name))
            out.append(fs)
    return out


def subvolumes(plan: Plan, filesystems: list[Fs]) -> list[Fs]:
    """One Fs per btrfs subvolume, tied to its volume's Fs (which formats and fills it)."""
    out = []
    for b in plan.btrfs:
        (vol,) = [
            fs
            for fs in filesystems
            if fs.disk.name == b.disk and fs.part.number == b.number and not fs.lv
        ]
        for sv in b.subvolumes:
            options = ",".join(o for o in (f"subvol={sv.name}", sv.fsoptions) if o)
            part = replace(vol.part, mountpoint=sv.mountpoint, fsoptions=options)
            sub = Fs(vol.disk, part, vol.image, uuid=vol.uuid, subvol=sv.name, volume=vol)
            vol.subvolumes.append(sub)
            out.append(sub)
    return out


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
            if p.fstype in ("swap", "biosboot", "lvmpv") or (p.fstype == "btrfs" and not mp):
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
    extra = [m for m in plan.mountpoints() if m not in seen]
    if len(set(extra)) != len(extra):
        raise BuildError("a mount point is used by two volumes or subvolumes")
    seen.update(extra)
    if "/" not in seen:
        raise BuildError("the layout has no / filesystem", hint="add `part / ...` to the kickstart")


def _prepare(fs: Fs, ids: Ids, epoch: int, scratch: Path, mounts: Mounts) -> None:
    """Format (or dry-run) one partition and learn how much room its contents will have."""
    p = fs.part
    t = p.fstype
    if t == "btrfs":
        _prepare_btrfs(fs, scratch, mounts)
    elif t in EXT:
        _prepare_ext(fs, ids, epoch, scratch)
    elif t in FAT:
        _prepare_fat(fs, ids, epoch)
    elif t == "xfs":
        _prepare_xfs(fs, scratch, mounts)
    elif t == "swap":
        tmp = _sparse(scratch / f"swap-{fs.ident}", p.size)
        user = _split_opts(p)
        _forbid(fs, user, ("-U",), "ksbake sets the UUID")
        argv = ["mkswap", "-U", str(fs.uuid), *(["-L", p.label] if p.label else []), *user]
        run([*argv, str(tmp)], what=f"making swap on {fs.where}")
        splice(tmp, fs.image, p.start)
        tmp.unlink()


def _populate(fs: Fs, ids: Ids, epoch: int, full: Path, scratch: Path, mounts: Mounts) -> None:
    t = fs.part.fstype
    if t == "btrfs":
        _populate_btrfs(fs, mounts)
    elif t in EXT:
        _populate_ext(fs, ids, epoch, full)
    elif t in FAT:
        _populate_fat(fs, epoch, scratch)
    elif t == "xfs":
        _populate_xfs(fs, mounts)
