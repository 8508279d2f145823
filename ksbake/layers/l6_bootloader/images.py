"""GRUB images (core.img, BOOTX64.EFI) made by grub-mkimage, with the tree's own modules when
it has them, else the host's."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l6_bootloader.grubcfg import early_cfg
from ksbake.run import grub_mkimage_tool, run
from ksbake.treefs import MergedTree

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
    "btrfs": "btrfs",
    "vfat": "fat",
    "efi": "fat",
}


PASSWORD_MODULES = ("password_pbkdf2",)


HOST_GRUB_DIRS = ("/usr/lib/grub", "/usr/lib/grub2")
"""Where the host's GRUB platform directories (i386-pc, x86_64-efi) may be."""


def _missing(what: str, deb: str, fed: str) -> ToolError:
    return ToolError(
        f"{what} not found",
        hint=f"install it: Debian 'apt-get install {deb}', Fedora 'dnf install {fed}'",
    )


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
    extra_modules: tuple[str, ...] = (),
) -> GrubImage:
    """core.img (i386-pc) or BOOTX64.EFI (x86_64-efi) with every module it needs built in."""
    mkimage = grub_mkimage_tool()
    moddir, modules_from = _module_dir(tree, platform, tmp)
    fs_module = FS_MODULES.get(boot_fstype)
    if fs_module is None:
        raise BuildError(f"GRUB cannot read a /boot filesystem of type {boot_fstype}")
    modules = [*PLATFORM_MODULES[platform], *COMMON_MODULES, *extra_modules, fs_module]
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
