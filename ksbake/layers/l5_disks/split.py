"""Splitting the configured tree by mount points, without copying it.

Each filesystem gets a read-only overlay of the tree's layers under a small top layer that
holds, for each mount point nested below it, an empty opaque directory (and for ``/`` the
image's ``etc/fstab``): ``/`` then holds an empty ``/boot`` while ``/boot`` holds the kernels,
and the cached layers are never written.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.model import (
    ESP_OPTIONS,
    FAT,
    OPAQUE,
    Content,
    Fs,
    _lstat_in,
    log,
)
from ksbake.run import run
from ksbake.treefs import MIN_EPOCH


def _is_below(path: str, parent: str) -> bool:
    if path == parent:
        return False
    return parent == "/" or path.startswith(parent + "/")


def fstab_text(filesystems: list[Fs]) -> str:
    """/etc/fstab of the image: every filesystem by UUID (logical volumes too, and btrfs
    subvolumes with ``subvol=``), shallowest first, then swap."""
    rows: list[tuple[str, str, str, str, str]] = []
    mounted = [fs for fs in filesystems if fs.mountpoint and (fs.formatted or fs.subvol)]
    mounted.sort(key=lambda fs: (_depth(fs.mountpoint or "/"), fs.mountpoint))
    for fs in mounted:
        part, mp = fs.part, fs.mountpoint or "/"
        fstype = "vfat" if part.fstype in FAT else part.fstype
        default = ESP_OPTIONS if part.fstype == "efi" else "defaults"
        passno = "0" if part.fstype in ("xfs", "btrfs") else "1" if mp == "/" else "2"
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


def _depth(mountpoint: str) -> int:
    return 0 if mountpoint == "/" else mountpoint.count("/")


class Mounts:
    """What this worker mounted, to unmount in reverse order whatever happens."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, args: list[str], target: Path, what: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", *args, str(target)], what=what)
        self.points.append(target)

    def partition(self, fs: Fs, fstype: str, *options: str) -> None:
        """An offset loop mount of ``fs``'s partition at ``fs.mnt`` (xfs, btrfs): the loop
        device is cleared with the mount, also when the namespace dies."""
        assert fs.mnt is not None
        p = fs.part
        opts = ",".join(["loop", *options, f"offset={p.start}", f"sizelimit={p.size}"])
        self.mount(
            ["-t", fstype, "-o", opts, str(fs.image)],
            fs.mnt,
            f"mounting the {fstype} of {fs.where}",
        )

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
    """The newest mtime in the tree (the trees are clamped to their packages' newest build
    time): never the wall clock, nor the environment, which is no part of the key."""
    return max([MIN_EPOCH, *(fs.content.max_mtime for fs in mounted)])
