"""The bootloader layer: GRUB 2 installed into copies of the disks layer's images.

Why a layer of its own: the disks layer's images are cached objects shared by every
bootloader setting and firmware, so this layer never touches them; it writes sparse copies to
``out_dir`` and installs the boot code and ``grub.cfg`` into the copies, without loop devices
or device-mapper (the build machines have none): boot code by ``dd``-like writes, ``grub.cfg``
by ``debugfs`` (ext2/3/4), ``mtools`` (vfat, ESP) or, for xfs only, an offset loop mount.

Input ``disks`` (the disks layer's result; only these keys are read)::

    {"disks": [
        {"name": "sda",                        # as in the plan ("sda", "vdb", ...)
         "file": "/abs/path/sda.raw",           # raw image, read-only here
         "partitions": [
            {"number": 1,                       # number in the partition table
             "start": 1048576, "size": 536870912,   # bytes from the start of the disk
             "fstype": "ext4",                  # one of layout.FSTYPES
             "mountpoint": "/boot",             # None for swap and biosboot
             "uuid": "0b0c...",                 # filesystem UUID as blkid prints it (vfat/efi:
                                                # "ABCD-1234"); None for biosboot
             "label": "boot"}, ...]}, ...]}     # filesystem label or None

``plan`` is ``Plan.to_dict()``; only each disk's partition table type (``label``: "msdos" or
"gpt") is read from it (a disk missing from the plan is probed: GPT signature at LBA 1).

``bootloader`` is what ``bootloader_settings()`` extracts from the kickstart::

    {"location": "mbr" | "partition" | "none", "append": "quiet", "timeout": 5 | None,
     "boot_drive": "sdb" | None, "password": str | None, "password_crypted": bool,
     "disabled": bool, "nombr": bool, "extlinux": bool, "sdboot": bool}

Decisions:

* GRUB goes on the disk holding /boot (or / without a separate /boot); ``boot_drive``
  ("sdb" or "/dev/sdb") overrides. ``firmware`` is "bios", "uefi" or "bios+uefi" (both: a
  hybrid image, GPT with a biosboot partition and an ESP).
* BIOS: ``core.img`` (all needed modules built in, no module directory on disk) goes into the
  post-MBR gap (msdos) or the biosboot partition (GPT) and ``boot.img`` into the first 440 bytes
  of the MBR, patched like grub-bios-setup does (which does not work on plain files). UEFI: the
  image goes to ``EFI/BOOT/BOOTX64.EFI`` on the ESP (the removable-media path: no NVRAM entry
  needed). Secure Boot (shim) is not supported.
* Both images embed the same early config: find the /boot (or /) filesystem by UUID and set
  ``prefix`` to its ``/grub`` (``/boot/grub`` without a separate /boot). ``grub.cfg`` lives
  there, in the /boot filesystem of the copy, for BIOS and UEFI alike (the tree is not
  modified: the file is written into the filesystem image).
* ``location=none`` or ``--disabled``: the copies get no boot code and no ``grub.cfg`` (the
  image is booted some other way, e.g. a direct kernel); no kernel is required then.
  ``--nombr``: ``grub.cfg`` and the UEFI image but no BIOS boot code. ``location=partition``,
  ``--extlinux`` and ``--sdboot`` install GRUB in the MBR as for ``mbr`` (on an appliance image
  nothing else could chain-load a partition's boot sector) and say so in ``notes``.
* No ``bootloader`` command at all (``seen`` false) means ``mbr``: appliance-creator always
  installed a boot loader.
* A plain ``--password`` is hashed (PBKDF2-SHA512, GRUB's format) with a salt derived from
  ``seed``, so the plain text never reaches the image; entries are ``--unrestricted`` (they
  boot unattended, editing needs the password). An ``--iscrypted`` password must already be a
  ``grub.pbkdf2.sha512...`` hash; ``--md5pass`` hashes cannot be used by GRUB 2.
* Determinism: grub-mkimage output depends only on its inputs; debugfs runs with
  ``E2FSPROGS_FAKE_TIME`` and mtools with ``SOURCE_DATE_EPOCH`` (both the fixed ``EPOCH``, not
  the environment, which is no part of the layer key), so ext* and FAT results are
  byte-identical for the same inputs. An xfs /boot is written through a mount: its log and
  timestamps are not reproducible.
* GRUB modules: the tree's own (``/usr/lib/grub/<platform>`` inside the tree) when it has
  them, else the host's; always the host's ``grub-mkimage``. The result says which.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksbake import treefs
from ksbake.errors import BuildError, ToolError
from ksbake.run import run, which

SECTOR = 512
EPOCH = 1704067200  # 2024-01-01 00:00:00 UTC, the bundled repository's SOURCE_DATE_EPOCH
"""Timestamp of everything this layer writes into filesystems."""

FIRMWARES: dict[str, tuple[str, ...]] = {
    "bios": ("bios",),
    "uefi": ("uefi",),
    "bios+uefi": ("bios", "uefi"),
}

PLATFORMS: dict[str, tuple[str, str]] = {
    # GRUB platform: (Debian package, Fedora package) holding its modules
    "i386-pc": ("grub-pc-bin", "grub2-pc-modules"),
    "x86_64-efi": ("grub-efi-amd64-bin", "grub2-efi-x64-modules"),
}

# What the early config, grub.cfg and the kernel loader need; the partition maps of both
# table types because /boot may sit on another disk than GRUB.
COMMON_MODULES = (
    "part_msdos",
    "part_gpt",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "serial",
    "terminal",
    "echo",
    "test",
)
PLATFORM_MODULES = {"i386-pc": ("biosdisk",), "x86_64-efi": ("efi_gop",)}
FS_MODULES = {
    "ext2": "ext2",
    "ext3": "ext2",
    "ext4": "ext2",
    "xfs": "xfs",
    "vfat": "fat",
    "efi": "fat",
}
PASSWORD_MODULES = ("password_pbkdf2",)

HOST_GRUB_DIRS = ("/usr/lib/grub", "/usr/lib/grub2")
"""Where the host's GRUB platform directories (i386-pc, x86_64-efi) may be."""

EXT_FSTYPES = ("ext2", "ext3", "ext4")
FAT_FSTYPES = ("vfat", "efi")

KERNEL_PREFIX = "vmlinuz-"
INITRD_PATTERNS = ("initramfs-{v}.img", "initrd.img-{v}", "initrd-{v}.img", "initrd-{v}")

PBKDF2_ITERATIONS = 10000  # grub-mkpasswd-pbkdf2's default

# boot.img / core.img offsets that grub-bios-setup patches (grub/include/grub/i386/pc/boot.h)
BOOT_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
BOOT_DRIVE_CHECK = 0x66  # 2-byte jmp over the "buggy BIOS" drive check, NOPed for hard disks
CORE_BLOCKLIST_START = 0x1F4  # u64 in core.img's first sector: LBA of the rest of core.img


# -- kickstart ----------------------------------------------------------------------------


def bootloader_settings(handler: Any) -> dict[str, Any]:
    """The ``bootloader`` command of a pykickstart handler as this layer's input dict.

    Works for every syntax version (old handlers lack the newer attributes).
    """
    cmd = handler.bootloader
    seen = bool(getattr(cmd, "seen", False))
    location = (getattr(cmd, "location", None) or "mbr") if seen else "mbr"
    boot_drive = getattr(cmd, "bootDrive", "") or None
    password = getattr(cmd, "password", "") or None
    md5 = getattr(cmd, "md5pass", "") or None
    timeout = getattr(cmd, "timeout", None)
    return {
        "location": location,
        "append": " ".join((getattr(cmd, "appendLine", "") or "").split()),
        "timeout": int(timeout) if timeout is not None else None,
        "boot_drive": boot_drive,
        "password": password or md5,
        "password_crypted": bool(getattr(cmd, "isCrypted", False) or (md5 and not password)),
        "disabled": bool(getattr(cmd, "disabled", False)),
        "nombr": bool(getattr(cmd, "nombr", False)),
        "extlinux": bool(getattr(cmd, "extlinux", False)),
        "sdboot": bool(getattr(cmd, "sdboot", False)),
    }


# -- reading the tree through its layers --------------------------------------------------


class MergedTree:
    """Read-only view of overlay layers (topmost first) without mounting them.

    Follows overlayfs rules: the topmost entry wins, a 0/0 character device is a whiteout,
    an opaque directory hides lower layers, and symlinks resolve inside the merged tree.
    """

    def __init__(self, layers: list[str] | list[Path]) -> None:
        self.layers = [Path(p) for p in layers]

    @staticmethod
    def _whiteout(st: os.stat_result) -> bool:
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    @staticmethod
    def _opaque(path: Path) -> bool:
        for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
            try:
                if os.getxattr(path, name, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                pass
        return False

    def _hides_lower(self, layer: Path, parts: list[str]) -> bool:
        """True when ``layer`` hides lower layers' ``parts`` (a non-directory or opaque dir)."""
        for i in range(1, len(parts) + 1):
            path = layer.joinpath(*parts[:i])
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if not stat.S_ISDIR(st.st_mode) or self._opaque(path):
                return True
        return False

    def _entry(self, parts: list[str]) -> Path | None:
        """Host path of the topmost entry for a path whose parents have no symlinks."""
        for layer in self.layers:
            path = layer.joinpath(*parts)
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None:
                return None if self._whiteout(st) else path
            if self._hides_lower(layer, parts[:-1]):
                return None
        return None

    def _resolve(self, path: str) -> list[str] | None:
        return treefs.walk(path, self._entry)

    def find(self, path: str) -> Path | None:
        """Host path of ``path`` in the merged tree (symlinks followed), or None."""
        parts = self._resolve(path)
        if parts is None:
            return None
        return self._entry(parts) if parts else self.layers[0]

    def is_file(self, path: str) -> bool:
        found = self.find(path)
        return found is not None and found.is_file()

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a merged directory (empty if it does not exist)."""
        parts = self._resolve(path)
        if parts is None:
            return []
        names: set[str] = set()
        hidden: set[str] = set()
        for layer in self.layers:
            directory = layer.joinpath(*parts)
            if directory.is_dir() and not directory.is_symlink():
                for entry in os.scandir(directory):
                    if entry.name in names or entry.name in hidden:
                        continue
                    if self._whiteout(entry.stat(follow_symlinks=False)):
                        hidden.add(entry.name)
                    else:
                        names.add(entry.name)
            if self._hides_lower(layer, parts):
                break
        return sorted(names)

    def read_text(self, path: str) -> str | None:
        found = self.find(path)
        return found.read_text(errors="replace") if found is not None and found.is_file() else None


# -- kernels ------------------------------------------------------------------------------


def rpmvercmp(a: str, b: str) -> int:
    """rpm's version comparison (alnum segments, numbers beat letters, ``~`` and ``^``)."""
    if a == b:
        return 0
    xs = re.findall(r"~|\^|[0-9]+|[A-Za-z]+", a)
    ys = re.findall(r"~|\^|[0-9]+|[A-Za-z]+", b)
    i = 0
    while True:
        x = xs[i] if i < len(xs) else None
        y = ys[i] if i < len(ys) else None
        if x == "~" or y == "~":
            if x != y:
                return -1 if x == "~" else 1
        elif x == "^" or y == "^":
            if x is None:
                return -1
            if y is None:
                return 1
            if x != y:
                return 1 if y == "^" else -1
        elif x is None or y is None:
            break
        elif x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1
        elif x.isdigit():
            if int(x) != int(y):
                return 1 if int(x) > int(y) else -1
        elif x != y:
            return 1 if x > y else -1
        i += 1
    if x is None and y is None:
        return 0
    return -1 if x is None else 1


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: str  # file name in /boot
    initrd: str | None  # file name in /boot


def find_kernels(tree: MergedTree) -> list[Kernel]:
    """Kernels in the tree's /boot, newest first (rpm version order)."""
    names = tree.listdir("/boot")
    kernels = []
    for name in names:
        if not name.startswith(KERNEL_PREFIX) or name.endswith(".hmac"):
            continue
        version = name[len(KERNEL_PREFIX) :]
        if not version or not tree.is_file(f"/boot/{name}"):
            continue
        initrd = next(
            (
                p.format(v=version)
                for p in INITRD_PATTERNS
                if p.format(v=version) in names and tree.is_file(f"/boot/{p.format(v=version)}")
            ),
            None,
        )
        kernels.append(Kernel(version, name, initrd))
    return sorted(
        kernels, key=functools.cmp_to_key(lambda k1, k2: rpmvercmp(k2.version, k1.version))
    )


def os_name(tree: MergedTree) -> str:
    """PRETTY_NAME of the tree's os-release (menu entry titles), or "Linux"."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = tree.read_text(path)
        if text is None:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PRETTY_NAME":
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                if value:
                    return value
    return "Linux"


# -- grub.cfg -----------------------------------------------------------------------------


def grub_quote(word: str) -> str:
    """Quote one word for GRUB's script parser (it would expand ``$``, split on ``;``...)."""
    if word and re.fullmatch(r"[A-Za-z0-9_=,.:/+@%-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def kernel_cmdline(root_uuid: str, append: str) -> str:
    """The kernel command line of every entry (``root=UUID``, serial console, ``append``)."""
    return " ".join(
        w for w in (f"root=UUID={root_uuid}", "ro", "console=ttyS0,115200", append) if w
    )


def grub_password_hash(password: str, seed: str) -> str:
    """``grub-mkpasswd-pbkdf2`` output for ``password``, salted from ``seed`` (reproducible)."""
    salt = hashlib.sha512(f"{seed}:grub-password".encode()).digest()
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"grub.pbkdf2.sha512.{PBKDF2_ITERATIONS}.{salt.hex().upper()}.{digest.hex().upper()}"


def grub_cfg(
    kernels: list[Kernel],
    *,
    title: str,
    boot_uuid: str,
    root_uuid: str,
    boot_prefix: str,
    append: str = "",
    timeout: int | None = None,
    password_hash: str | None = None,
) -> str:
    """grub.cfg text: serial console, search /boot by UUID, one entry per kernel.

    ``boot_prefix`` is "" when /boot is its own filesystem, "/boot" when it is part of /.
    """
    cmdline = " ".join(grub_quote(w) for w in kernel_cmdline(root_uuid, append).split())
    lines = [
        "# Written by ksbake: one entry per kernel in the image, newest first.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        f"set timeout={5 if timeout is None else int(timeout)}",
        "set default=0",
        f"search --no-floppy --fs-uuid --set=root {grub_quote(boot_uuid)}",
    ]
    unrestricted = ""
    if password_hash:
        lines += ['set superusers="root"', f"password_pbkdf2 root {password_hash}"]
        unrestricted = " --unrestricted"
    for kernel in kernels:
        entry_title = grub_quote(f"{title} ({kernel.version})")
        entry_id = grub_quote(f"ksbake-{kernel.version}")
        lines += [
            "",
            f"menuentry {entry_title} --id {entry_id}{unrestricted} {{",
            f"\tlinux {grub_quote(f'{boot_prefix}/{kernel.vmlinuz}')} {cmdline}",
        ]
        if kernel.initrd:
            lines.append(f"\tinitrd {grub_quote(f'{boot_prefix}/{kernel.initrd}')}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def early_cfg(boot_uuid: str, prefix: str) -> str:
    """Config embedded in core.img / BOOTX64.EFI: find the /boot filesystem, set prefix."""
    return f"search.fs_uuid {boot_uuid} root\nset prefix=($root){prefix}\n"


# -- disks --------------------------------------------------------------------------------


def _partition(disks: list[dict], mountpoint: str) -> tuple[dict, dict] | None:
    for disk in disks:
        for part in disk["partitions"]:
            if part.get("mountpoint") == mountpoint:
                return disk, part
    return None


def choose_boot_disk(disks: list[dict], boot_drive: str | None) -> dict:
    """The disk GRUB goes on: ``boot_drive`` if given, else the one holding /boot (or /)."""
    if boot_drive:
        name = boot_drive.removeprefix("/dev/")
        for disk in disks:
            if disk["name"] == name:
                return disk
        names = ", ".join(d["name"] for d in disks)
        raise BuildError(
            f"bootloader --boot-drive={boot_drive}: no such disk in the layout (disks: {names})"
        )
    found = _partition(disks, "/boot") or _partition(disks, "/")
    if found is None:
        raise BuildError("the disk layout has no / partition: nowhere to boot from")
    return found[0]


def _table_type(disk: dict, plan: dict) -> str:
    for planned in plan.get("disks", []):
        if planned["name"] == disk["name"]:
            return planned["label"]
    with open(disk["file"], "rb") as f:
        f.seek(SECTOR)
        return "gpt" if f.read(8) == b"EFI PART" else "msdos"


def _copy_sparse(src: str, dst: Path) -> None:
    """Copy a disk image keeping its holes (the input is a cached object: never modified).

    A reflink where the store's filesystem has them (XFS, btrfs): then the copy is free."""
    dst.unlink(missing_ok=True)
    run(["cp", "--reflink=auto", "--sparse=auto", src, dst], what=f"copying {src}")


# -- GRUB images --------------------------------------------------------------------------


def _missing(what: str, deb: str, fed: str) -> ToolError:
    return ToolError(
        f"{what} not found",
        hint=f"install it: Debian 'apt-get install {deb}', Fedora 'dnf install {fed}'",
    )


def _mkimage_tool() -> str:
    """Debian names it grub-mkimage, Fedora grub2-mkimage."""
    for name in ("grub-mkimage", "grub2-mkimage"):
        if shutil.which(name):
            return shutil.which(name) or name
    return which("grub-mkimage")  # raises, naming the packages


def _version_of(moddir: Path) -> str:
    info = moddir / "modinfo.sh"
    text = info.read_text(errors="replace") if info.is_file() else ""
    for key in ("grub_package_version", "grub_version"):
        m = re.search(rf"^{key}=['\"]?([^'\"\n]+)", text, re.M)
        if m:
            return m.group(1)
    return "unknown version"


@dataclass
class GrubImage:
    platform: str
    moddir: Path  # where boot.img and the modules were taken from
    image: bytes
    description: str


def _module_dir(tree: MergedTree, platform: str, tmp: Path) -> tuple[Path, str]:
    """The tree's GRUB modules (copied out of the layers) if it has them, else the host's."""
    rel = f"/usr/lib/grub/{platform}"
    if tree.is_file(f"{rel}/moddep.lst") and tree.is_file(f"{rel}/kernel.img"):
        dest = tmp / f"tree-{platform}"
        dest.mkdir()
        for name in tree.listdir(rel):
            src = tree.find(f"{rel}/{name}")
            if src is not None and src.is_file():
                shutil.copyfile(src, dest / name)
        return dest, f"the tree's modules ({rel}, {_version_of(dest)})"
    for host in (Path(d) / platform for d in HOST_GRUB_DIRS):
        if (host / "moddep.lst").is_file():
            return host, f"host modules ({host}, {_version_of(host)})"
    deb, fed = PLATFORMS[platform]
    raise _missing(f"GRUB modules for {platform} (/usr/lib/grub/{platform})", deb, fed)


def make_image(
    tree: MergedTree,
    platform: str,
    *,
    boot_uuid: str,
    prefix: str,
    boot_fstype: str,
    password: bool,
    tmp: Path,
) -> GrubImage:
    """core.img (i386-pc) or BOOTX64.EFI (x86_64-efi) with every module it needs built in."""
    mkimage = _mkimage_tool()
    moddir, modules_from = _module_dir(tree, platform, tmp)
    fs_module = FS_MODULES.get(boot_fstype)
    if fs_module is None:
        raise BuildError(f"GRUB cannot read a /boot filesystem of type {boot_fstype}")
    modules = [*PLATFORM_MODULES[platform], *COMMON_MODULES, fs_module]
    if password:
        modules += PASSWORD_MODULES
    cfg = tmp / f"early-{platform}.cfg"
    cfg.write_text(early_cfg(boot_uuid, prefix))
    out = tmp / f"grub-{platform}.img"
    fmt = "i386-pc" if platform == "i386-pc" else "x86_64-efi"
    run(
        [mkimage, "-d", moddir, "-O", fmt, "-c", cfg, "-p", prefix, "-o", out, *modules],
        what=f"making the GRUB {platform} image",
    )
    version = run([mkimage, "--version"]).stdout.decode(errors="replace").split()[-1]
    return GrubImage(
        platform,
        moddir,
        out.read_bytes(),
        f"host {Path(mkimage).name} {version} with {modules_from}",
    )


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bios_boot_partition(disk: dict) -> dict:
    """GPT disks keep BIOS GRUB's core image in a partition of its own."""
    for part in disk["partitions"]:
        if part["fstype"] == "biosboot":
            return part
    raise BuildError(
        f"disk {disk['name']} has a GPT label but no BIOS boot partition for GRUB",
        hint="add 'part biosboot --fstype=biosboot --size=1' (or use firmware uefi)",
    )


def install_bios(disk_file: Path, table: str, disk: dict, core: GrubImage) -> str:
    """boot.img into the MBR and core.img after it (msdos) or into the biosboot partition."""
    boot = bytearray((core.moddir / "boot.img").read_bytes())
    image = bytearray(core.image)
    if len(image) % SECTOR:
        image += bytes(SECTOR - len(image) % SECTOR)
    sectors = len(image) // SECTOR
    if table == "gpt":
        bios = _bios_boot_partition(disk)
        lba, room, where = bios["start"] // SECTOR, bios["size"], "BIOS boot partition"
    else:
        first = min((p["start"] for p in disk["partitions"]), default=disk_file.stat().st_size)
        lba, room, where = 1, first - SECTOR, "gap before the first partition"
    if len(image) > room:
        raise BuildError(
            f"GRUB's core image ({len(image)} bytes) does not fit the {where} of disk "
            f"{disk['name']} ({room} bytes)",
            hint="start the first partition at 1 MiB or more",
        )
    struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, lba)
    boot[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    struct.pack_into("<Q", image, CORE_BLOCKLIST_START, lba + 1)
    _write_at(disk_file, lba * SECTOR, bytes(image))
    _write_at(disk_file, 0, bytes(boot[:440]))
    return (
        f"BIOS boot code in the MBR of {disk['name']}, "
        f"core image ({sectors} sectors) in the {where}"
    )


# -- writing files into filesystem images -------------------------------------------------


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
        probe = subprocess.run(
            [mdir, "-b", "-i", image, f"::{directory}"], env=env, capture_output=True, check=False
        )
        if probe.returncode != 0:
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
        elif fstype == "xfs":
            with _loop_mount(disk_file, part, "xfs", Path(scratch) / "mnt") as mnt:
                treefs.write_file(mnt, path, data, mode=mode)
        else:
            raise BuildError(f"cannot write {path} into a {fstype} filesystem")


# -- the worker function ------------------------------------------------------------------


def _password_hash(settings: dict, seed: str) -> str | None:
    password = settings.get("password")
    if not password:
        return None
    if not settings.get("password_crypted"):
        return grub_password_hash(password, seed)
    if password.startswith("grub.pbkdf2.sha512."):
        return password
    raise BuildError(
        "bootloader --iscrypted/--md5pass: GRUB 2 needs a 'grub.pbkdf2.sha512...' hash",
        hint="make one with grub2-mkpasswd-pbkdf2 (grub-mkpasswd-pbkdf2), or give --password "
        "in plain text (ksbake hashes it)",
    )


def _esp(disks: list[dict], grub_disk: dict) -> tuple[dict, dict]:
    """The ESP: on GRUB's disk, else the one mounted at /boot/efi, else the first one."""
    candidates = [
        (d, p)
        for d in disks
        for p in d["partitions"]
        if p["fstype"] == "efi" or (p["fstype"] == "vfat" and p.get("mountpoint") == "/boot/efi")
    ]
    for pick in (
        lambda d, p: d is grub_disk and p["fstype"] == "efi",
        lambda d, p: p.get("mountpoint") == "/boot/efi",
        lambda d, p: True,
    ):
        for disk, part in candidates:
            if pick(disk, part):
                return disk, part
    raise BuildError(
        "firmware 'uefi' needs an EFI system partition and the layout has none",
        hint="add 'part /boot/efi --fstype=efi --size=200'",
    )


@dataclass
class Target:
    """Where everything goes, checked before any disk is copied."""

    root: dict  # the / partition
    boot_disk: dict  # the disk holding the /boot (or /) filesystem
    boot_part: dict  # that filesystem's partition
    separate_boot: bool
    grub_disk: dict  # where the BIOS boot code goes
    table: str | None  # its partition table type, when BIOS boot code is written
    esp: tuple[dict, dict] | None  # (disk, partition) for UEFI
    password_hash: str | None

    @property
    def grub_dir(self) -> str:
        return "/grub" if self.separate_boot else "/boot/grub"


def plan_target(
    disk_list: list[dict], plan: dict, settings: dict, targets: tuple[str, ...], seed: str
) -> Target:
    """Check the layout against the settings; every error here comes before any copying."""
    root = _partition(disk_list, "/")
    if root is None or not root[1].get("uuid"):
        raise BuildError("the disk layout has no / filesystem with a UUID")
    separate = _partition(disk_list, "/boot")
    boot_disk, boot_part = separate or root
    if not boot_part.get("uuid"):
        raise BuildError(f"the {boot_part.get('mountpoint')} filesystem has no UUID")
    grub_disk = choose_boot_disk(disk_list, settings.get("boot_drive"))
    table = None
    if "bios" in targets and not settings.get("nombr"):
        table = _table_type(grub_disk, plan)
        if table == "gpt":
            _bios_boot_partition(grub_disk)
    return Target(
        root=root[1],
        boot_disk=boot_disk,
        boot_part=boot_part,
        separate_boot=separate is not None,
        grub_disk=grub_disk,
        table=table,
        esp=_esp(disk_list, grub_disk) if "uefi" in targets else None,
        password_hash=_password_hash(settings, seed),
    )


def install(
    disks: dict,
    plan: dict,
    bootloader: dict,
    tree_layers: list[str],
    firmware: str,
    out_dir: str,
    seed: str,
) -> dict[str, Any]:
    """Worker entry point: bootable copies of ``disks`` in ``out_dir`` (see the module doc).

    ``out_dir`` is the layer's staging directory: after an error its content is garbage.
    """
    started = time.monotonic()
    if firmware not in FIRMWARES:
        raise BuildError(
            f"unknown firmware '{firmware}'", hint=f"use one of {', '.join(FIRMWARES)}"
        )
    targets = FIRMWARES[firmware]
    disk_list = disks["disks"]
    tree = MergedTree(tree_layers)
    kernels = find_kernels(tree)
    notes: list[str] = []
    skip = bootloader.get("location") == "none" or bootloader.get("disabled")
    target = None
    if not skip:
        if not kernels:
            raise BuildError(
                "no kernel in the tree: /boot/vmlinuz-* not found; add 'kernel' to %packages"
            )
        target = plan_target(disk_list, plan, bootloader, targets, seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copies = {d["name"]: out / f"{d['name']}.raw" for d in disk_list}
    written = set()  # the disks this layer writes to: copied; the others are hardlinked
    if target is not None:
        written.add(target.boot_disk["name"])
        if target.table is not None:
            written.add(target.grub_disk["name"])
        if target.esp is not None:
            written.add(target.esp[0]["name"])
    for disk in disk_list:
        if disk["name"] in written:
            _copy_sparse(disk["file"], copies[disk["name"]])
        else:
            os.link(disk["file"], copies[disk["name"]])  # unchanged: no copy at all
    result: dict[str, Any] = {
        "disks": [{"name": d["name"], "file": str(copies[d["name"]])} for d in disk_list],
        "grub": None,
        "kernels": [k.version for k in kernels],
        "cmdline": "",
        "firmware": firmware,
        "boot_disk": None,
        "config": None,
        "installed": [],
        "notes": notes,
    }
    if target is None:
        why = "--disabled" if bootloader.get("disabled") else "--location=none"
        notes.append(f"bootloader {why}: no boot code and no grub.cfg written")
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    for flag, what in (("extlinux", "--extlinux"), ("sdboot", "--sdboot")):
        if bootloader.get(flag):
            notes.append(f"bootloader {what} is not supported: GRUB 2 installed instead")
    if bootloader.get("location") == "partition":
        notes.append("bootloader --location=partition: GRUB installed in the MBR instead")
    if "bios" in targets and target.table is None:
        notes.append("bootloader --nombr: no BIOS boot code written")
    append = bootloader.get("append") or ""
    cfg = grub_cfg(
        kernels,
        title=os_name(tree),
        boot_uuid=target.boot_part["uuid"],
        root_uuid=target.root["uuid"],
        boot_prefix="" if target.separate_boot else "/boot",
        append=append,
        timeout=bootloader.get("timeout"),
        password_hash=target.password_hash,
    )
    boot_part, grub_disk = target.boot_part, target.grub_disk
    descriptions: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ksbake-grub-") as tmp_name:
        tmp = Path(tmp_name)
        write_into_fs(
            copies[target.boot_disk["name"]],
            boot_part,
            f"{target.grub_dir}/grub.cfg",
            cfg.encode(),
            mode=0o600 if target.password_hash else 0o644,
            tmp=tmp,
        )
        common = {
            "boot_uuid": boot_part["uuid"],
            "prefix": target.grub_dir,
            "boot_fstype": boot_part["fstype"],
            "password": bool(target.password_hash),
            "tmp": tmp,
        }
        if target.table is not None:
            core = make_image(tree, "i386-pc", **common)
            result["installed"].append(
                install_bios(copies[grub_disk["name"]], target.table, grub_disk, core)
            )
            descriptions.append(f"i386-pc: {core.description}")
        if target.esp is not None:
            esp_disk, esp = target.esp
            efi = make_image(tree, "x86_64-efi", **common)
            write_into_fs(
                copies[esp_disk["name"]], esp, "/EFI/BOOT/BOOTX64.EFI", efi.image, tmp=tmp
            )
            result["installed"].append(
                f"UEFI GRUB as EFI/BOOT/BOOTX64.EFI on {esp_disk['name']}{esp['number']}"
            )
            descriptions.append(f"x86_64-efi: {efi.description}")

    result.update(
        grub="; ".join(descriptions) or None,
        cmdline=kernel_cmdline(target.root["uuid"], append),
        boot_disk=grub_disk["name"],
        config=f"{target.grub_dir}/grub.cfg on {target.boot_disk['name']}{boot_part['number']}",
        seconds=round(time.monotonic() - started, 3),
    )
    return result


# -- the layer step, run in the build process ----------------------------------------------

CODE_VERSION = 2  # 2: sealed output files


def grub_tool_version() -> str:
    """The host grub-mkimage's version: it writes the boot code (part of the key)."""
    argv = [_mkimage_tool(), "--version"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()


def step(paths: Any, name: str) -> None:
    """Obtain bootable copies of this appliance's disks: GRUB and grub.cfg installed."""
    import json

    from ksbake import config, report, sandbox
    from ksbake.hashing import canonical_json, layer_key, write_if_changed
    from ksbake.store import Store

    started = time.monotonic()
    store = Store(paths.store)
    build_dir = paths.build_dir(name)
    inputs = json.loads((build_dir / "inputs" / "bootloader.json").read_text())
    disks_key = json.loads((build_dir / "disks.ref").read_text())["key"]
    disks_dir = store.object_dir("disks", disks_key)
    disks = json.loads((disks_dir / "result.json").read_text())
    for disk in disks["disks"]:
        disk["file"] = str(disks_dir / disk["file"])
    plan = json.loads((disks_dir / "plan.json").read_text())
    config_key = store.read_meta("disks", disks_key)["parents"]["config"]
    key = layer_key(
        "bootloader",
        CODE_VERSION,
        {
            "bootloader": inputs["bootloader"],
            "firmware": inputs["firmware"],
            "tools": grub_tool_version(),
        },
        {"disks": disks_key},
    )

    def build_bootable(staging: Path) -> dict[str, Any]:
        result = sandbox.call(
            "ksbake.bootloader:install",
            {
                "disks": disks,
                "plan": plan,
                "bootloader": inputs["bootloader"],
                "tree_layers": [str(p) for p in config.layers(paths, config_key)],
                "firmware": inputs["firmware"],
                "out_dir": str(staging),
                "seed": key,
            },
            workdir=staging,
        )
        for disk in result["disks"]:
            disk["file"] = Path(disk["file"]).name  # relative: the staging dir is renamed
        (staging / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return {
            "size": report.tree_size(staging),
            "grub": result.get("grub"),
            "parents": {"disks": disks_key},
            "seal": [d["file"] for d in result["disks"]],
        }

    obtained = store.obtain("bootloader", key, build_bootable)
    write_if_changed(build_dir / "bootloader.ref", canonical_json({"key": key}) + "\n")
    report.record(
        paths,
        name,
        "bootloader",
        key,
        obtained.built,
        time.monotonic() - started,
        obtained.meta.get("size"),
        note=obtained.meta.get("grub"),
    )


def result_of(paths: Any, key: str) -> tuple[Path, dict[str, Any]]:
    """The bootloader object's directory and its result (disk files relative to it)."""
    import json

    from ksbake.store import Store

    directory = Store(paths.store).object_dir("bootloader", key)
    return directory, json.loads((directory / "result.json").read_text())
