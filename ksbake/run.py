"""The one way ksbake runs external tools: argv lists, logged, failures as one clear error."""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ksbake.errors import ToolError

log = logging.getLogger("ksbake.run")

# Which distribution package provides each host tool, for "not found" errors.
TOOL_PACKAGES: dict[str, tuple[str, str]] = {
    # tool: (Debian package, Fedora package)
    "rpm": ("rpm", "rpm"),
    "rpmbuild": ("rpm", "rpm-build"),
    "createrepo_c": ("createrepo-c", "createrepo_c"),
    "dpkg-deb": ("dpkg", "dpkg"),
    "apt-get": ("apt", "(not available: use a Debian host to build the bundled repository)"),
    "apt-cache": ("apt", "(not available: use a Debian host to build the bundled repository)"),
    "depmod": ("kmod", "kmod"),
    "modinfo": ("kmod", "kmod"),
    "cpio": ("cpio", "cpio"),
    "unshare": ("util-linux", "util-linux"),
    "setpriv": ("util-linux", "util-linux"),
    "mount": ("mount", "util-linux"),
    "mkfs.ext4": ("e2fsprogs", "e2fsprogs"),
    "mkfs.ext3": ("e2fsprogs", "e2fsprogs"),
    "mkfs.ext2": ("e2fsprogs", "e2fsprogs"),
    "mke2fs": ("e2fsprogs", "e2fsprogs"),
    "dumpe2fs": ("e2fsprogs", "e2fsprogs"),
    "fallocate": ("util-linux", "util-linux"),
    "xfs_db": ("xfsprogs", "xfsprogs"),
    "mkfs.xfs": ("xfsprogs", "xfsprogs"),
    "mkfs.vfat": ("dosfstools", "dosfstools"),
    "mcopy": ("mtools", "mtools"),
    "mkswap": ("util-linux", "util-linux"),
    "grub-mkimage": ("grub-common", "grub2-tools"),
    "grub2-mkimage": ("grub-common", "grub2-tools"),
    "debugfs": ("e2fsprogs", "e2fsprogs"),
    "mmd": ("mtools", "mtools"),
    "mdir": ("mtools", "mtools"),
    "cp": ("coreutils", "coreutils"),
    "umount": ("mount", "util-linux"),
    "qemu-img": ("qemu-utils", "qemu-img"),
    "qemu-system-x86_64": ("qemu-system-x86", "qemu-system-x86-core"),
    "virt-xml-validate": ("libvirt-clients", "libvirt-client"),
    "xmllint": ("libxml2-utils", "libxml2"),
    "virsh": ("libvirt-clients", "libvirt-client"),
}


def which(tool: str) -> str:
    """Return the path of ``tool`` or raise a ToolError naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        deb, fed = TOOL_PACKAGES.get(tool, (tool, tool))
        raise ToolError(
            f"required tool '{tool}' not found",
            hint=f"install it: Debian 'apt-get install {deb}', Fedora 'dnf install {fed}'",
        )
    return path


def run(
    argv: Sequence[str | Path],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; on failure raise ToolError with the command and its last output lines.

    ``what`` names the step for the error message ("building the busybox package").
    """
    args = [str(a) for a in argv]
    if "/" not in args[0]:
        which(args[0])  # a missing tool: one error naming the package to install
    log.debug("run: %s", shlex.join(args))
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        check=False,
    )
    if proc.returncode != 0:
        out = (proc.stdout or b"").decode(errors="replace").strip().splitlines()
        tail = "\n".join(out[-15:])
        label = what or shlex.join(args[:3])
        full = "No space left on device" in tail or "Disk full" in tail
        raise ToolError(
            f"{label}: '{shlex.join(args)}' failed with exit code {proc.returncode}"
            + (f"\n{tail}" if tail else ""),
            hint="no space left on device: free some space, or move the store with KSBAKE_STORE"
            if full
            else None,
        )
    return proc
