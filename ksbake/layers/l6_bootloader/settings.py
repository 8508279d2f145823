"""The bootloader layer's input: the kickstart's ``bootloader`` command as a dict."""

from __future__ import annotations

from typing import Any


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
