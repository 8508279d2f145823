"""grub.cfg and the early config embedded in GRUB's images: text only, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ksbake.errors import BuildError
from ksbake.layers.l6_bootloader.kernels import BootEntry, Kernel
from ksbake.passwords import grub_password_hash


def grub_quote(word: str) -> str:
    """Quote one word for GRUB's script parser (it would expand ``$``, split on ``;``...)."""
    if word and re.fullmatch(r"[A-Za-z0-9_=,.:/+@%-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def kernel_cmdline(
    root_uuid: str, append: str, volumes: tuple[str, ...] = (), options: Sequence[str] = ()
) -> str:
    """An entry's kernel command line: ``root=UUID``, what the initramfs needs to assemble
    it, serial console, the options a BLS entry keeps (``kernels.ksbake_options``), then
    ``append`` (last: the kickstart's word wins over the entry's)."""
    words = (f"root=UUID={root_uuid}", *volumes, "ro", "console=ttyS0,115200", *options, append)
    return " ".join(w for w in words if w)


def grub_cfg(
    kernels: Sequence[BootEntry | Kernel],
    *,
    title: str,
    boot_uuid: str,
    root_uuid: str,
    boot_prefix: str,
    append: str = "",
    timeout: int | None = None,
    password_hash: str | None = None,
    volumes: tuple[str, ...] = (),
) -> str:
    """grub.cfg text: serial console, search /boot by UUID, one plain ``menuentry`` per
    BLS entry or kernel (``kernels.boot_entries``), in the order given.

    ``boot_prefix`` is "" when /boot is its own filesystem, "/boot" when it is part of /
    (either after the btrfs subvolume's path when /boot is on one); entries' paths are
    relative to /boot.
    """
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
    for item in kernels:
        entry = BootEntry.from_kernel(item) if isinstance(item, Kernel) else item
        cmdline = kernel_cmdline(root_uuid, append, volumes, entry.options)
        entry_title = grub_quote(entry.title or f"{title} ({entry.version})")
        lines += [
            "",
            f"menuentry {entry_title} --id {grub_quote(entry.ident)}{unrestricted} {{",
            f"\tlinux {grub_quote(f'{boot_prefix}/{entry.linux}')} "
            + " ".join(grub_quote(w) for w in cmdline.split()),
        ]
        if entry.initrds:
            initrds = " ".join(grub_quote(f"{boot_prefix}/{i}") for i in entry.initrds)
            lines.append(f"\tinitrd {initrds}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def early_cfg(boot_uuid: str, prefix: str) -> str:
    """Config embedded in core.img / BOOTX64.EFI: find the /boot filesystem, set prefix."""
    return f"search.fs_uuid {boot_uuid} root\nset prefix=($root){prefix}\n"


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
