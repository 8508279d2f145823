"""Partition tables written onto the image file."""

from __future__ import annotations

import shlex
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError
from ksbake.layers.l5_disks.model import FAT, FAT32_MIN, Fs, Ids
from ksbake.layout import ALIGN, SECTOR, DiskPlan, PartitionPlan


def _assign_ids(fs: Fs, ids: Ids) -> None:
    p = fs.part
    if p.fstype in FAT:
        vol = ids.fat_volid(fs.disk.name, p.number)
        fs.uuid = f"{vol[:4]}-{vol[4:]}"
        fs.fat_bits = _fat_bits(p)
    elif p.fstype != "biosboot":
        fs.uuid = ids.fs_uuid(fs.disk.name, p.number)
    if fs.disk.label == "gpt":
        fs.partuuid = str(ids.gpt_part(fs.disk.name, p.number))
    else:
        fs.partuuid = f"{ids.msdos_id(fs.disk.name):08x}-{p.number:02x}"


def _fat_bits(part: PartitionPlan) -> int:
    user = shlex.split(part.mkfsoptions or "")
    for i, arg in enumerate(user):
        if arg == "-F" and i + 1 < len(user):
            return int(user[i + 1])
        if arg.startswith("-F") and arg[2:].isdigit():
            return int(arg[2:])
    return 32 if part.size >= FAT32_MIN else 16


def _parted_fstype(fs: Fs) -> str | None:
    t = fs.part.fstype
    if t in FAT:
        return "fat32" if fs.fat_bits == 32 else "fat16"
    return {"swap": "linux-swap(v1)", "biosboot": None}.get(t, t)


def _gpt_name(part: PartitionPlan) -> str:
    if part.fstype == "efi":
        return "EFI System Partition"
    if part.fstype == "biosboot":
        return "BIOS boot partition"
    if part.fstype == "swap":
        return "swap"
    if part.mountpoint == "/":
        return "root"
    return (part.mountpoint or part.fstype).strip("/").replace("/", "-")[:36]


def write_table(image: Path, disk: DiskPlan, fss: list[Fs], ids: Ids) -> dict[str, Any]:
    """Partition the image file with pyparted, exactly as planned; ids from the seed."""
    import _ped
    import parted

    dev = parted.getDevice(str(image))
    if dev.sectorSize != SECTOR:
        raise BuildError(f"{image}: libparted sees {dev.sectorSize}-byte sectors, not {SECTOR}")
    pdisk = parted.freshDisk(dev, disk.label)
    boot_mp = "/boot" if any(fs.mountpoint == "/boot" for fs in fss) else "/"
    by_number: dict[int, Any] = {}
    extended: dict[str, int] | None = None

    def add(ptype: int, start: int, size: int, fstype: str | None, what: str) -> Any:
        geom = parted.Geometry(device=dev, start=start // SECTOR, length=size // SECTOR)
        fsobj = parted.FileSystem(type=fstype, geometry=geom) if fstype else None
        part = parted.Partition(disk=pdisk, type=ptype, fs=fsobj, geometry=geom)
        try:
            pdisk.addPartition(partition=part, constraint=parted.Constraint(exactGeom=geom))
        except Exception as exc:  # pyparted raises several unrelated exception classes
            raise BuildError(
                f"{disk.name}: cannot place {what} at {start} (+{size} bytes): {exc}"
            ) from None
        return part

    primaries = sorted((fs for fs in fss if not fs.part.logical), key=lambda f: f.part.number)
    logicals = sorted((fs for fs in fss if fs.part.logical), key=lambda f: f.part.number)
    ext_number = None
    if logicals:
        first = min(fs.part.start for fs in logicals)
        last = max(fs.part.start + fs.part.size for fs in logicals)
        before = [fs.part.start + fs.part.size for fs in primaries]
        prev_end = max((e for e in before if e <= first), default=SECTOR)
        ext_start = max(prev_end, first - ALIGN)
        if ext_start >= first:
            raise BuildError(
                f"{disk.name}: no room before logical partition {logicals[0].part.number} "
                "for the extended partition's boot record"
            )
        free = sorted(set(range(1, 5)) - {fs.part.number for fs in primaries})
        if not free:
            raise BuildError(f"{disk.name}: four primary partitions leave no extended one")
        ext_number = free[0]
        extended = {"number": ext_number, "start": ext_start, "size": last - ext_start}

    order: list[tuple[int, Fs | None]] = [(fs.part.number, fs) for fs in primaries]
    if ext_number is not None:
        order.append((ext_number, None))
    order.sort(key=lambda x: x[0])
    for number, fs in order:
        if fs is None:
            assert extended is not None
            add(
                parted.PARTITION_EXTENDED,
                extended["start"],
                extended["size"],
                None,
                "the extended partition",
            )
            continue
        by_number[number] = add(
            parted.PARTITION_NORMAL,
            fs.part.start,
            fs.part.size,
            _parted_fstype(fs),
            f"partition {number}",
        )
    for fs in logicals:
        by_number[fs.part.number] = add(
            parted.PARTITION_LOGICAL,
            fs.part.start,
            fs.part.size,
            _parted_fstype(fs),
            f"logical partition {fs.part.number}",
        )

    for fs in fss:
        part = by_number[fs.part.number]
        if part.number != fs.part.number:
            raise BuildError(
                f"{disk.name}: libparted numbered partition {fs.part.number} as {part.number}",
                hint="msdos: primaries 1-4 in disk order, logicals from 5",
            )
        if fs.part.fstype == "efi":
            part.setFlag(_ped.partition_flag_get_by_name("esp"))
        elif fs.part.fstype == "biosboot":
            part.setFlag(parted.PARTITION_BIOS_GRUB)
        elif disk.label == "msdos" and fs.mountpoint == boot_mp:
            part.setFlag(parted.PARTITION_BOOT)
        if disk.label == "gpt":
            part.set_name(_gpt_name(fs.part))
    pdisk.commitToDevice()

    if disk.label == "msdos":
        ident = ids.msdos_id(disk.name)
        with open(image, "r+b") as f:
            f.seek(440)
            f.write(struct.pack("<I", ident))
        return {"identifier": f"0x{ident:08x}", "extended": extended}
    guid = ids.gpt_disk(disk.name)
    set_gpt_guids(
        image, guid, {fs.part.number: ids.gpt_part(disk.name, fs.part.number) for fs in fss}
    )
    return {"identifier": str(guid), "extended": None}


def set_gpt_guids(image: Path, disk_guid: uuid.UUID, parts: dict[int, uuid.UUID]) -> None:
    """Overwrite the GPT disk GUID and partition GUIDs (both copies), fixing the CRCs."""
    with open(image, "r+b") as f:
        f.seek(SECTOR)
        primary = f.read(SECTOR)
        if primary[:8] != b"EFI PART":
            raise BuildError(f"{image}: no GPT header after writing the table")
        (backup_lba,) = struct.unpack_from("<Q", primary, 32)
        for lba in (1, backup_lba):
            f.seek(lba * SECTOR)
            hdr = bytearray(f.read(SECTOR))
            if hdr[:8] != b"EFI PART":
                raise BuildError(f"{image}: GPT header at LBA {lba} is missing")
            (hsize,) = struct.unpack_from("<I", hdr, 12)
            (entries_lba,) = struct.unpack_from("<Q", hdr, 72)
            count, esize = struct.unpack_from("<II", hdr, 80)
            f.seek(entries_lba * SECTOR)
            entries = bytearray(f.read(count * esize))
            for number, guid in parts.items():
                at = (number - 1) * esize
                if entries[at : at + 16] != bytes(16):
                    entries[at + 16 : at + 32] = guid.bytes_le
            hdr[56:72] = disk_guid.bytes_le
            struct.pack_into("<I", hdr, 88, zlib.crc32(entries))
            struct.pack_into("<I", hdr, 16, 0)
            struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[:hsize])))
            f.seek(entries_lba * SECTOR)
            f.write(entries)
            f.seek(lba * SECTOR)
            f.write(hdr)
