"""The one way ksbake runs external tools: argv lists, logged, failures as one clear error.

Also the one place that knows each tool's version (``tool_version``, cached per process: the
versions of tools that shape a layer's bytes are part of its key) and that configures logging
(``setup_logging``: warnings as ``warning: ...`` on stderr; with ``KSBAKE_DEBUG=1`` every
command line too).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

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
    "sfdisk": ("fdisk", "util-linux"),
    "setpriv": ("util-linux", "util-linux"),
    "bwrap": ("bubblewrap", "bubblewrap"),
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
    stdout: IO[bytes] | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; on failure raise ToolError with the command and its last output lines.

    ``what`` names the step for the error message ("building the busybox package");
    ``stdout`` takes the output (a file: xz streams), the error message then quotes stderr.
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
        stdout=stdout if stdout is not None else subprocess.PIPE if capture else None,
        stderr=(subprocess.PIPE if stdout is not None else subprocess.STDOUT) if capture else None,
        check=False,
    )
    if proc.returncode != 0:
        said = proc.stderr if stdout is not None else proc.stdout
        out = (said or b"").decode(errors="replace").strip().splitlines()
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


def probe(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose exit code is an answer, not an error (does this file exist? did
    the user's script succeed?); stdout and stderr together in ``stdout``."""
    args = [str(a) for a in argv]
    log.debug("probe: %s", shlex.join(args))
    return subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )


# -- tool versions ----------------------------------------------------------------------------


def _number_in(argv: list[str]) -> str | None:
    """The first dotted number a tool prints about itself (stdout or stderr)."""
    if shutil.which(argv[0]) is None:
        return None
    text = probe(argv).stdout.decode(errors="replace").strip()
    match = re.search(r"\d+\.\d+(\.\d+)?", text)
    return match.group(0) if match else text.splitlines()[0] if text else "?"


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    out = probe(argv).stdout.decode(errors="replace").strip()
    return out.splitlines()[0] if out else "unknown"


def _grub_mkimage() -> str | None:
    tool = grub_mkimage_tool()
    return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()


def _mke2fs_conf() -> str | None:
    conf = Path(os.environ.get("MKE2FS_CONFIG", "/etc/mke2fs.conf"))  # ext feature defaults
    return hashlib.sha256(conf.read_bytes()).hexdigest()[:16] if conf.is_file() else None


def _python_module(module: str, attr: str) -> Callable[[], str | None]:
    def version() -> str | None:
        import importlib

        return str(getattr(importlib.import_module(module), attr, ""))

    return version


OSINFO_DB = Path("/usr/share/osinfo")  # libosinfo's database (Debian/Fedora: osinfo-db)


def _file_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


VERSIONS: dict[str, Callable[[], str | None]] = {
    # name in a layer's ``tools``: how to read its version (None: the tool is absent)
    "dnf": _python_module("dnf.const", "VERSION"),
    "hawkey": _python_module("hawkey", "VERSION"),
    "rpm": _python_module("rpm", "__version__"),
    "sfdisk": lambda: _number_in(["sfdisk", "-v"]),
    "e2fsprogs": lambda: _number_in(["mke2fs", "-V"]),
    "xfsprogs": lambda: _number_in(["mkfs.xfs", "-V"]),
    "dosfstools": lambda: _number_in(["mkfs.fat", "--help"]),
    "mtools": lambda: _number_in(["mtools", "--version"]),
    "util-linux": lambda: _number_in(["mkswap", "-V"]),
    "mke2fs.conf": _mke2fs_conf,
    "grub-mkimage": _grub_mkimage,
    "qemu-img": lambda: _first_line(["qemu-img", "--version"]),
    "osinfo-db": lambda: _file_text(OSINFO_DB / "VERSION"),
}


@functools.cache
def tool_version(name: str) -> str | None:
    """The version of a tool whose output lands in a layer (None if it is not installed)."""
    return VERSIONS[name]()


def tool_versions(names: Sequence[str]) -> dict[str, str]:
    """``{name: version}`` of the installed ones among ``names`` (a layer's key input)."""
    found = {name: tool_version(name) for name in names}
    return {name: version for name, version in found.items() if version is not None}


def grub_mkimage_tool() -> str:
    """Debian names it grub-mkimage, Fedora grub2-mkimage."""
    for name in ("grub-mkimage", "grub2-mkimage"):
        found = shutil.which(name)
        if found:
            return found
    return which("grub-mkimage")  # raises, naming the packages


# -- logging ----------------------------------------------------------------------------------


class _Format(logging.Formatter):
    """``warning: message`` (the lines users and tests read); debug lines name their logger."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        if record.levelno <= logging.DEBUG:
            return f"debug: {record.name}: {text}"
        return text


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (pytest swaps it; a plain
    StreamHandler keeps the one it was made with)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging() -> None:
    """Configure the ``ksbake`` loggers once per process (doit's and each worker's)."""
    root = logging.getLogger("ksbake")
    if root.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(_Format())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if os.environ.get("KSBAKE_DEBUG") else logging.INFO)
    root.propagate = False
