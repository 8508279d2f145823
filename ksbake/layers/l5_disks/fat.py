"""vfat and the ESP: ``mkfs.vfat --offset`` + mtools (vfat cannot be mounted here)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from ksbake import treefs
from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.ext import _NO_SPACE, _forbid, _split_opts
from ksbake.layers.l5_disks.model import Content, Fs, Ids, _too_big_error, host_full
from ksbake.layout import SECTOR
from ksbake.run import run


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
            raise host_full(fs.image.parent) or _too_big_error([fs], ran_out=True) from None
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
