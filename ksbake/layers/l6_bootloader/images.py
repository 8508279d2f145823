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


IMAGE_FILES = {
    # what grub-mkimage reads from the module directory besides the modules (and boot.img,
    # which the BIOS install takes from the same directory as core.img's modules)
    "i386-pc": ("kernel.img", "lzma_decompress.img", "diskboot.img", "boot.img"),
    "x86_64-efi": ("kernel.img",),
}


@dataclass(frozen=True)
class Modules:
    """Where an image's GRUB modules come from: the tree's own, or the host's."""

    platform: str
    origin: str  # "tree" or "host"
    path: str  # the platform directory, in the tree or on the host
    version: str
    fallback: str | None = None  # why the tree's modules were not used, when it has some

    def describe(self) -> str:
        return f"{self.platform} from the {self.origin} ({self.path}, {self.version})"


@dataclass
class GrubImage:
    platform: str
    moddir: Path  # where boot.img and the modules were taken from (a copy of the tree's)
    image: bytes
    modules: Modules
    mkimage: str  # "grub-mkimage 2.06-13+deb12u2": always the host's


def _closure(moddep: str, modules: list[str]) -> set[str]:
    """``modules`` and every module they need, by ``moddep.lst`` (``name: dep dep``)."""
    deps: dict[str, list[str]] = {}
    for line in moddep.splitlines():
        name, _, needs = line.partition(":")
        deps[name.strip()] = needs.split()
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += deps.get(name, [])
    return seen


def tree_modules(tree: MergedTree, platform: str, modules: list[str]) -> str | None:
    """None when the tree's ``/usr/lib/grub/<platform>`` has everything grub-mkimage needs
    for ``modules``, else what it lacks (said when the host's are used instead)."""
    rel = f"/usr/lib/grub/{platform}"
    moddep = tree.read_text(f"{rel}/moddep.lst")
    if moddep is None:
        return f"no {rel}/moddep.lst"
    wanted = [f"{m}.mod" for m in sorted(_closure(moddep, modules))]
    lacking = [n for n in (*IMAGE_FILES[platform], *wanted) if not tree.is_file(f"{rel}/{n}")]
    if lacking:
        return f"{rel} lacks {', '.join(lacking[:5])}" + (" ..." if len(lacking) > 5 else "")
    return None


def _module_dir(
    tree: MergedTree, platform: str, tmp: Path, modules: list[str] | None = None
) -> tuple[Path, Modules]:
    """The tree's GRUB modules (copied out of the layers) if it has all ``modules`` (with
    their dependencies) and the images grub-mkimage builds on, else the host's."""
    rel = f"/usr/lib/grub/{platform}"
    lacking = tree_modules(tree, platform, modules or [])
    if lacking is None:
        dest = tmp / f"tree-{platform}"
        dest.mkdir()
        for name in tree.listdir(rel):
            src = tree.find(f"{rel}/{name}")
            if src is not None and src.is_file():
                shutil.copyfile(src, dest / name)
        return dest, Modules(platform, "tree", rel, _version_of(dest))
    # a tree without a GRUB of its own says nothing; one with an incomplete one is worth
    # a word (its GRUB package is probably split, e.g. a missing -modules package)
    fallback = None if tree.find(rel) is None else f"the tree's {lacking}"
    for host in (Path(d) / platform for d in HOST_GRUB_DIRS):
        if (host / "moddep.lst").is_file():
            return host, Modules(platform, "host", str(host), _version_of(host), fallback)
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
    fs_module = FS_MODULES.get(boot_fstype)
    if fs_module is None:
        raise BuildError(f"GRUB cannot read a /boot filesystem of type {boot_fstype}")
    modules = [*PLATFORM_MODULES[platform], *COMMON_MODULES, *extra_modules, fs_module]
    if password:
        modules += PASSWORD_MODULES
    moddir, source = _module_dir(tree, platform, tmp, modules)
    cfg = tmp / f"early-{platform}.cfg"
    cfg.write_text(early_cfg(boot_uuid, prefix))
    out = tmp / f"grub-{platform}.img"
    fmt = "i386-pc" if platform == "i386-pc" else "x86_64-efi"
    run(
        [mkimage, "-d", moddir, "-O", fmt, "-c", cfg, "-p", prefix, "-o", out, *modules],
        what=f"making the GRUB {platform} image with {source.describe()}",
    )
    version = run([mkimage, "--version"]).stdout.decode(errors="replace").split()[-1]
    return GrubImage(platform, moddir, out.read_bytes(), source, f"{Path(mkimage).name} {version}")
