"""The kernels in the tree's /boot, newest first (rpm's version order), and the OS name."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ksbake.treefs import MergedTree

KERNEL_PREFIX = "vmlinuz-"


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
