"""xfs: formatted in a sparse file spliced into the partition, filled through an offset loop
mount (XFS images are not byte-reproducible: inode generations, log, ctimes)."""

from __future__ import annotations

import os
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.ext import _NO_SPACE, _split_opts
from ksbake.layers.l5_disks.model import Fs, _too_big_error, host_full
from ksbake.layers.l5_disks.sparse import _sparse, splice
from ksbake.layers.l5_disks.split import Mounts
from ksbake.layout import MiB
from ksbake.run import run


def _prepare_xfs(fs: Fs, scratch: Path, mounts: Mounts) -> None:
    """mkfs.xfs on a sparse temp file, spliced in, then mounted at its offset: statvfs."""
    p = fs.part
    user = _split_opts(p)
    if any("uuid=" in arg for arg in user):
        raise BuildError(
            f"{fs.where}: --mkfsoptions may not set the UUID: ksbake derives it from the build",
            hint="remove -m uuid=... from the kickstart's part line",
        )
    tmp = _sparse(scratch / f"xfs-{fs.ident}", p.size)
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
    fs.mnt = scratch / f"mnt-{fs.ident}"
    mounts.partition(fs, "xfs", "nouuid")
    vfs = os.statvfs(fs.mnt)
    mounts.umount(fs.mnt)  # until it is filled: mke2fs refuses an image file that is mounted
    fs.capacity = vfs.f_bavail * vfs.f_frsize
    bs = vfs.f_frsize
    c = fs.content
    blocks = sum(-(-min(size, allocated) // bs) for size, allocated in c.files)
    blocks += sum(-(-(entries * 16 + names) // bs) for entries, names in c.dirs if entries > 8)
    fs.need = blocks * bs + c.inodes * 512


def _populate_xfs(fs: Fs, mounts: Mounts) -> None:
    assert fs.mnt is not None
    src = fs.source
    mounts.partition(fs, "xfs", "nouuid")
    try:
        if src is not None:
            run(["cp", "-a", f"{src}/.", f"{fs.mnt}/"], what=f"copying files into {fs.where}")
    except ToolError as exc:
        if _NO_SPACE.search(str(exc)):
            raise host_full(fs.image.parent) or _too_big_error([fs], ran_out=True) from None
        raise
    finally:
        mounts.umount(fs.mnt)
