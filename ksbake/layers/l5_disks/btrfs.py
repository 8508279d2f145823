"""btrfs: a volume and its subvolumes, filled through one offset loop mount.

mkfs.btrfs has no offset option, so (as for xfs) it formats a sparse scratch file that is
spliced into the partition, which is then loop-mounted at its offset (the loop device is
auto-cleared with the mount). btrfs-progs 6.2 (Debian 12) cannot make subvolumes offline
(``mkfs.btrfs --subvol`` came later), so each subvolume is made with ``btrfs subvolume
create`` in that mount and filled with ``cp -a`` from its part of the tree. Not
byte-reproducible: the kernel stamps generations and the current time into every tree block.
"""

from __future__ import annotations

import os
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.ext import _forbid, _split_opts
from ksbake.layers.l5_disks.model import Fs, _too_big_error, host_full
from ksbake.layers.l5_disks.sparse import _sparse, splice
from ksbake.layers.l5_disks.split import Mounts
from ksbake.layout import MiB
from ksbake.run import run

MIN_BTRFS = 114 * MiB
"""mkfs.btrfs refuses smaller filesystems (btrfs-progs 6.2, default single-device profiles)."""


def _prepare_btrfs(fs: Fs, scratch: Path, mounts: Mounts) -> None:
    p = fs.part
    if p.size < MIN_BTRFS:
        raise BuildError(
            f"{fs.where}: {p.size // MiB} MiB is too small for btrfs (mkfs.btrfs needs "
            f"{MIN_BTRFS // MiB} MiB)",
            hint="raise its --size",
        )
    user = _split_opts(p)
    _forbid(fs, user, ("-U", "--uuid"), "ksbake sets the UUID")
    tmp = _sparse(scratch / f"btrfs-{fs.ident}", p.size)
    argv = ["mkfs.btrfs", "-q", "-f", "-U", str(fs.uuid), *(["-L", p.label] if p.label else [])]
    run([*argv, *user, str(tmp)], what=f"making btrfs on {fs.where}")
    splice(tmp, fs.image, p.start)
    tmp.unlink()
    fs.mnt = scratch / f"mnt-{fs.ident}"
    mounts.partition(fs, "btrfs")
    vfs = os.statvfs(fs.mnt)
    mounts.umount(fs.mnt)
    fs.capacity = vfs.f_bavail * vfs.f_frsize
    bs = vfs.f_frsize
    fs.need = 0
    for part in [fs, *fs.subvolumes]:
        c = part.content
        blocks = sum(-(-min(size, allocated) // bs) for size, allocated in c.files)
        # metadata is DUP on one device: inline extents, inodes and names twice
        fs.need += blocks * bs + c.inodes * 2 * 512


def _populate_btrfs(fs: Fs, mounts: Mounts) -> None:
    """The volume's own files at its top level, then each subvolume's."""
    assert fs.mnt is not None
    mounts.partition(fs, "btrfs")
    try:
        if fs.mountpoint and (src := fs.source) is not None:
            _copy(fs, src, fs.mnt)
        for sub in fs.subvolumes:
            assert sub.subvol
            target = fs.mnt / sub.subvol
            target.parent.mkdir(parents=True, exist_ok=True)
            run(["btrfs", "subvolume", "create", str(target)], what=f"making {sub.where}")
            if (src := sub.source) is not None:
                _copy(sub, src, target)
                st = os.lstat(src)
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, st.st_mode & 0o7777)
    finally:
        mounts.umount(fs.mnt)


def _copy(fs: Fs, src: Path, dst: Path) -> None:
    try:
        run(["cp", "-a", f"{src}/.", f"{dst}/"], what=f"copying files into {fs.where}")
    except ToolError as exc:
        if "No space left" in str(exc):
            vol = fs.volume or fs
            raise host_full(vol.image.parent) or _too_big_error([vol], ran_out=True) from None
        raise
