"""What GRUB's menu offers: the tree's Boot Loader Specification entries
(``/boot/loader/entries/*.conf``, as systemd's ``kernel-install`` and Fedora write them) and
its plain ``/boot/vmlinuz-*`` kernels, newest first (rpm's version order); and the OS name.

BLS paths are relative to the filesystem holding the entries (``$BOOT``, /boot here). Entries
written in an image build are unreliable about that: ``kernel-install`` ran in a chroot where
/boot was a plain directory, so one tool writes ``/vmlinuz-X`` and another ``/boot/vmlinuz-X``.
So every path is looked up in the tree's /boot and kept relative to it; the bootloader layer
prefixes it as the disk layout needs (``Target.kernel_prefix``). Not GRUB's ``blscfg``
module (Debian's GRUB has none): each entry becomes a plain ``menuentry``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ksbake.treefs import MergedTree

KERNEL_PREFIX = "vmlinuz-"
BLS_DIR = "/boot/loader/entries"


INITRD_PATTERNS = ("initramfs-{v}.img", "initrd.img-{v}", "initrd-{v}.img", "initrd-{v}")


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

    def newest_first(k1: Kernel, k2: Kernel) -> int:
        return rpmvercmp(k2.version, k1.version)

    return sorted(kernels, key=functools.cmp_to_key(newest_first))


@dataclass(frozen=True)
class BootEntry:
    """One menu entry: a BLS entry of the tree, or a plain kernel (``from_kernel``)."""

    version: str
    linux: str  # path relative to /boot
    initrds: tuple[str, ...] = ()  # relative to /boot, in the order GRUB loads them
    title: str | None = None  # the BLS title; None: "<OS name> (<version>)"
    options: tuple[str, ...] = ()  # the entry's own kernel arguments (``ksbake_options``)
    ident: str = ""  # GRUB's menuentry --id
    source: str = ""  # where it came from: the .conf file, or the kernel file

    @classmethod
    def from_kernel(cls, kernel: Kernel) -> BootEntry:
        return cls(
            version=kernel.version,
            linux=kernel.vmlinuz,
            initrds=(kernel.initrd,) if kernel.initrd else (),
            ident=f"ksbake-{kernel.version}",
            source=f"/boot/{kernel.vmlinuz}",
        )


@dataclass
class Entries:
    """What the menu will hold, and what was left out of it (warnings for the user)."""

    entries: list[BootEntry]
    skipped: list[str] = field(default_factory=list)


def parse_bls(text: str) -> dict[str, list[str]]:
    """A BLS entry's ``key value`` lines; keys may repeat (``initrd``, ``options``)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *value = line.split(None, 1)
        fields.setdefault(key, []).append(value[0].strip() if value else "")
    return fields


def _in_boot(tree: MergedTree, path: str) -> str | None:
    """``path`` of a BLS entry as a file relative to the tree's /boot, or None. Tried as
    relative to /boot (``$BOOT`` is the /boot partition) and, when it starts with /boot/, as
    relative to / (written for a /boot inside the root filesystem)."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return None
    candidates = ["/".join(parts)]
    if parts[0] == "boot" and len(parts) > 1:
        candidates.insert(0, "/".join(parts[1:]))
    return next((c for c in candidates if tree.is_file(f"/boot/{c}")), None)


# Kernel arguments ksbake computes (or that point at the build host: kernel-install in a
# chroot reads the host's /proc/cmdline); an entry's own are replaced by ksbake's.
REPLACED_ARGS = (
    "root",
    "rootflags",
    "rootfstype",
    "rd.lvm.lv",
    "rd.lvm.vg",
    "resume",
    "console",
    "BOOT_IMAGE",
    "initrd",
)


def ksbake_options(options: Sequence[str]) -> tuple[str, ...]:
    """The words of an entry's ``options`` lines that ksbake keeps: not GRUB variables
    (``$kernelopts``, from a grubenv the image does not have), not ``ro``/``rw``, not the
    arguments of ``REPLACED_ARGS`` (ksbake's root, volumes and console win)."""
    kept = []
    for word in " ".join(options).split():
        key = word.split("=", 1)[0]
        if "$" in word or word in ("ro", "rw") or key in REPLACED_ARGS:
            continue
        kept.append(word)
    return tuple(kept)


def _bls_entry(tree: MergedTree, name: str, skipped: list[str]) -> BootEntry | None:
    source = f"{BLS_DIR}/{name}"
    text = tree.read_text(source)
    if text is None:
        return None
    fields = parse_bls(text)
    linux = (fields.get("linux") or [""])[-1]
    if not linux:
        skipped.append(f"BLS entry {source} has no 'linux' line: left out of the menu")
        return None
    found = _in_boot(tree, linux)
    if found is None:
        skipped.append(f"BLS entry {source}: kernel {linux} is not in /boot: left out of the menu")
        return None
    initrds = []
    for value in fields.get("initrd", []):
        for path in value.split():
            rel = _in_boot(tree, path)
            if rel is None:
                skipped.append(
                    f"BLS entry {source}: initrd {path} is not in /boot: left out of the menu"
                )
                return None
            initrds.append(rel)
    stem = name.removesuffix(".conf")
    return BootEntry(
        version=(fields.get("version") or [""])[-1] or stem,
        linux=found,
        initrds=tuple(initrds),
        title=(fields.get("title") or [""])[-1] or None,
        options=ksbake_options(fields.get("options", [])),
        ident=f"bls-{stem}",
        source=source,
    )


def _newest_first(a: BootEntry, b: BootEntry) -> int:
    return rpmvercmp(b.version, a.version) or (a.source > b.source) - (a.source < b.source)


def boot_entries(tree: MergedTree) -> Entries:
    """The menu: the tree's BLS entries and the plain kernels no entry boots, newest first."""
    skipped: list[str] = []
    entries = []
    for name in tree.listdir(BLS_DIR):
        if name.endswith(".conf") and not name.startswith("."):
            entry = _bls_entry(tree, name, skipped)
            if entry is not None:
                entries.append(entry)
    # a kernel an entry boots (its file, or its version: kernel-install's copy in an
    # entry-token directory of the same /boot/vmlinuz-X) gets no second menu entry
    covered = {e.linux for e in entries} | {e.version for e in entries}
    for kernel in find_kernels(tree):
        if kernel.vmlinuz not in covered and kernel.version not in covered:
            entries.append(BootEntry.from_kernel(kernel))
    return Entries(sorted(entries, key=functools.cmp_to_key(_newest_first)), skipped)


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
