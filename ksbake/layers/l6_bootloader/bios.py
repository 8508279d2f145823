"""BIOS boot code written without grub-bios-setup (which does not work on plain files):
boot.img into the MBR, core.img after it (msdos) or into the BIOS boot partition (GPT),
patched as grub-bios-setup would."""

from __future__ import annotations

import struct
from pathlib import Path

from ksbake.errors import BuildError
from ksbake.layers.l6_bootloader.images import GrubImage

SECTOR = 512


# boot.img / core.img offsets that grub-bios-setup patches (grub/include/grub/i386/pc/boot.h)
BOOT_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector


BOOT_DRIVE_CHECK = 0x66  # 2-byte jmp over the "buggy BIOS" drive check, NOPed for hard disks


CORE_BLOCKLIST_START = 0x1F4  # u64 in core.img's first sector: LBA of the rest of core.img


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
