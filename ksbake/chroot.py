"""Running code of the kickstart or the tree inside the tree: the sandbox, and the mounts a
chroot needs (/proc, a minimal /dev, read-only /sys, a private /run) where a tool chroots
itself (rpm).

Only ever used inside a worker's private mount namespace (``ksbake.sandbox``): even if this
process is killed, the kernel removes these mounts with the namespace.

``sandboxed()``: a chroot is no boundary for root (``/proc/1/root`` is the host's root, a
second chroot walks out, ``mknod`` reaches the host's disks). Commands of the kickstart and of
the tree (``%post``, ``systemctl``, firewall tools) run under bubblewrap instead: the tree is
``/`` after a ``pivot_root`` in new mount, PID, IPC and UTS namespaces, so every process
there lives in the tree; ``/proc`` is that PID namespace's own and read-only, ``/dev`` a
minimal tmpfs, ``/sys`` read-only; the capabilities that reach beyond the tree are dropped
(mount, mknod, chroot, raw I/O, modules, ptrace, reboot, clock...). When the command ends,
the PID namespace ends, and with it every process the command left behind.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ksbake.errors import BuildError
from ksbake.run import run, which

DROPPED_CAPS = (
    "CAP_SYS_ADMIN",  # mount, and most of what a namespace would let root do
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_SYS_RAWIO",
    "CAP_SYS_MODULE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYS_PACCT",
    "CAP_SYSLOG",
    "CAP_NET_ADMIN",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_AUDIT_CONTROL",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_BLOCK_SUSPEND",
    "CAP_WAKE_ALARM",
)

DEV_NODES = {  # name: (major, minor)
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}


def sandboxed(root: Path, argv: list[str]) -> list[str]:
    """``argv`` to run inside the tree ``root``, sandboxed (see the module docstring)."""
    caps = [arg for cap in DROPPED_CAPS for arg in ("--cap-drop", cap)]
    return [
        which("bwrap"),
        "--bind",
        str(root),
        "/",
        "--proc",
        "/proc",
        "--remount-ro",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind",
        "/sys",
        "/sys",
        "--unshare-pid",
        "--as-pid-1",  # the command is the namespace's init: when it ends, all of it ends
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--chdir",
        "/",
        *caps,
        "--",
        *argv,
    ]


def _mountpoint(root: Path, name: str) -> Path:
    path = root / name
    if path.is_symlink():
        raise BuildError(f"refusing to mount over /{name} in {root}: it is a symlink")
    path.mkdir(mode=0o755, exist_ok=True)
    return path


@contextmanager
def api_filesystems(root: Path) -> Iterator[None]:
    """Mount /proc, a private tmpfs /dev with the usual nodes, /sys read-only and a private
    tmpfs /run in ``root`` (real packages' scriptlets use /run: systemd-tmpfiles, dbus,
    ``systemctl`` asking whether systemd runs; what they leave there goes with the tmpfs).

    Only the mount point directories stay in the tree, empty. rpm sets the mode and owner of
    /dev and /run (filesystem's directories) through the mounts, on the tmpfs roots: those
    are given to the directories underneath when the tmpfs goes, so the tree has them as the
    packages made them."""
    mounted: list[Path] = []
    tmpfs: list[Path] = []
    try:
        proc = _mountpoint(root, "proc")
        run(["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", proc])
        mounted.append(proc)
        dev = _mountpoint(root, "dev")
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid", "ksbake-dev", dev])
        mounted.append(dev)
        tmpfs.append(dev)
        for name, (major, minor) in DEV_NODES.items():
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)
        for name in ("pts", "shm"):
            (dev / name).mkdir()
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            os.symlink(target, dev / name)
        sys_dir = _mountpoint(root, "sys")
        run(["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", sys_dir])
        mounted.append(sys_dir)
        run_dir = _mountpoint(root, "run")
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "ksbake-run", run_dir])
        mounted.append(run_dir)
        tmpfs.append(run_dir)
        yield
    finally:
        owners = {path: os.stat(path) for path in tmpfs}
        for path in reversed(mounted):
            run(["umount", "-l", path])
        for path, st in owners.items():
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))


def mount_overlay(lower: list[Path], upper: Path, work: Path, merged: Path) -> None:
    """Mount an overlay of ``lower`` (first is topmost) with writes going to ``upper``."""
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "-o", opts, "ksbake-overlay", merged], what="mounting overlay")


def mount_overlay_ro(lower: list[Path], merged: Path) -> None:
    """Mount a read-only merged view of several layers (first is topmost)."""
    merged.mkdir(parents=True, exist_ok=True)
    if len(lower) == 1:
        run(["mount", "--bind", "-o", "ro", lower[0], merged])
        return
    opts = f"ro,lowerdir={':'.join(str(p) for p in lower)}"
    run(["mount", "-t", "overlay", "-o", opts, "ksbake-overlay", merged], what="mounting overlay")
