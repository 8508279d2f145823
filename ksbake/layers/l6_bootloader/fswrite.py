"""Writing one file into a filesystem inside a disk image, without loop devices where possible:
debugfs (ext2/3/4), mtools (vfat, ESP), an offset loop mount for xfs only."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ksbake import treefs
from ksbake.errors import BuildError
from ksbake.run import probe, run, which

EPOCH = 1704067200  # 2024-01-01 00:00:00 UTC, the bundled repository's SOURCE_DATE_EPOCH
"""Timestamp of everything this layer writes into filesystems."""


EXT_FSTYPES = ("ext2", "ext3", "ext4")


FAT_FSTYPES = ("vfat", "efi")


def _parents(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p][:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _write_ext(disk_file: Path, part: dict, path: str, data: bytes, mode: int, tmp: Path) -> None:
    """debugfs on ``file?offset=``: no loop device, reproducible with E2FSPROGS_FAKE_TIME."""
    debugfs = which("debugfs")
    (tmp / "payload").write_bytes(data)
    directory, name = path.rsplit("/", 1)
    commands = [f"mkdir {d}" for d in _parents(path)]  # "exists" errors are harmless
    commands += [
        f"cd {directory or '/'}",
        f"rm {name}",
        "write payload " + name,
        f"sif {name} mode 0{stat.S_IFREG | mode:o}",
        f"sif {name} uid 0",
        f"sif {name} gid 0",
    ]
    (tmp / "debugfs.cmds").write_text("\n".join(commands) + "\n")
    spec = f"{disk_file}?offset={part['start']}"
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)}
    run([debugfs, "-w", "-f", "debugfs.cmds", spec], cwd=tmp, env=env, what="writing " + path)
    # debugfs exits 0 even when a command failed: read the file back.
    (tmp / "readback").unlink(missing_ok=True)
    run([debugfs, "-R", f"dump {path} readback", spec], cwd=tmp, env=env)
    back = tmp / "readback"
    if not back.is_file() or back.read_bytes() != data:
        raise BuildError(f"could not write {path} into the {part['fstype']} filesystem (debugfs)")


def _mtools_env() -> dict[str, str]:
    return {
        **os.environ,
        "MTOOLSRC": "/dev/null",  # no user configuration
        "MTOOLS_SKIP_CHECK": "1",
        "SOURCE_DATE_EPOCH": str(EPOCH),
        "TZ": "UTC",  # FAT stores local time
    }


def _write_fat(disk_file: Path, part: dict, path: str, data: bytes, tmp: Path) -> None:
    """mtools on ``file@@offset`` (vfat cannot be mounted on the build machines)."""
    image = f"{disk_file}@@{part['start']}"
    env = _mtools_env()
    mdir, mmd, mcopy = which("mdir"), which("mmd"), which("mcopy")
    for directory in _parents(path):
        if probe([mdir, "-b", "-i", image, f"::{directory}"], env=env).returncode != 0:
            run([mmd, "-i", image, f"::{directory}"], env=env, what=f"creating {directory}")
    src = tmp / "payload"
    src.write_bytes(data)
    os.utime(src, (EPOCH, EPOCH))
    run([mcopy, "-o", "-m", "-i", image, src, f"::{path}"], env=env, what=f"writing {path}")


@contextmanager
def _loop_mount(disk_file: Path, part: dict, fstype: str, mnt: Path) -> Iterator[Path]:
    """Offset loop mount (autocleared loop device), unmounted however the block ends."""
    mnt.mkdir(parents=True, exist_ok=True)
    opts = f"loop,offset={part['start']},sizelimit={part['size']}"
    if fstype == "xfs":
        opts += ",nouuid"
    run(["mount", "-t", fstype, "-o", opts, disk_file, mnt], what=f"mounting {fstype}")
    try:
        yield mnt
    finally:
        run(["umount", mnt], what="unmounting " + str(mnt))


def write_into_fs(
    disk_file: Path, part: dict, path: str, data: bytes, *, mode: int = 0o644, tmp: Path
) -> None:
    """Put a file into the filesystem of ``part`` inside the image ``disk_file``."""
    fstype = part["fstype"]
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        if fstype in EXT_FSTYPES:
            _write_ext(disk_file, part, path, data, mode, Path(scratch))
        elif fstype in FAT_FSTYPES:
            _write_fat(disk_file, part, path, data, Path(scratch))
        elif fstype in ("xfs", "btrfs"):  # btrfs: the top level, paths through subvolumes
            with _loop_mount(disk_file, part, fstype, Path(scratch) / "mnt") as mnt:
                treefs.write_file(mnt, path, data, mode=mode)
        else:
            raise BuildError(f"cannot write {path} into a {fstype} filesystem")
