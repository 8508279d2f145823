"""Partition tables written by ONE declarative ``sfdisk`` run on the image file.

Why sfdisk: the whole table -- label, disk id, each partition's start/size/type/uuid/name and
boot flag, the GPT header geometry -- is one text script, so every identifier comes from the
seed (nothing is left for a tool to draw at random) and no byte is patched afterwards.

The script pins everything sfdisk would otherwise choose itself:

- ``label-id`` and, on GPT, ``uuid=`` on every line: sfdisk draws random ones without them.
- GPT ``first-lba: 34``, ``last-lba: N-34``, ``table-length: 128``: libparted's values (the
  UEFI minimum); sfdisk 2.38's own first usable LBA would be 2048.
- ``N :`` before each line: the number itself, not the line order, numbers the partition.
- msdos type ids are the ones libparted wrote for each filesystem (measured, libparted 3.5):
  ext*/xfs 83, swap 82, ESP ef, FAT32 0b, other FAT 06, extended 05 (never LBA variants).

With these, GPT tables are byte-identical to the ones pyparted wrote before (disks layer
version 2). msdos tables read back the same (sfdisk, partx, blkid) but differ in bytes no
current reader uses: the MBR boot code (libparted put its 75-byte chainloader stub there; the
bootloader layer overwrites it with GRUB's boot.img), the CHS fields (libparted used a
4-head/32-sector geometry for image files, sfdisk 255/63) and where each EBR after the first
sits in the 1 MiB gap before its logical partition (libparted: 128 sectors, sfdisk: 2048).

sfdisk runs on the plain image file: ``--no-reread --no-tell-kernel`` (no kernel involved),
``--wipe=never --wipe-partitions=never`` (the file is fresh; sfdisk writes the table sectors
and nothing else, so the bytes depend on the script alone). sfdisk refuses overlaps and
partitions outside the usable area itself (a BuildError in its words); the table is then read
back with ``sfdisk --json`` so that anything else not as planned (a silently moved partition,
a name it could not encode) is a BuildError too, as libparted's refusals were.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.model import FAT, FAT32_MIN, Fs, Ids
from ksbake.layout import ALIGN, SECTOR, DiskPlan, PartitionPlan
from ksbake.run import run

GPT_ENTRIES = 128
GPT_FIRST_LBA = 2 + GPT_ENTRIES * 128 // SECTOR  # 34: pMBR, header, 32 sectors of entries
GPT_TYPES = {
    "efi": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI System Partition
    "biosboot": "21686148-6449-6E6F-744E-656564454649",  # BIOS boot ("Hah!IdontNeedEFI")
    "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",  # Linux swap
    "vfat": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",  # Microsoft basic data (libparted: fat*)
    "lvmpv": "E6D6D379-F507-44C2-A23C-238F2A3DF928",  # Linux LVM
}
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # Linux filesystem data (ext*, xfs)
MBR_EXTENDED = "5"
SFDISK_WRITE = [
    "--no-reread",
    "--no-tell-kernel",
    "--wipe=never",
    "--wipe-partitions=never",
    "--quiet",
]


def _assign_ids(fs: Fs, ids: Ids) -> None:
    p = fs.part
    if p.fstype in FAT:
        vol = ids.fat_volid(fs.disk.name, p.number)
        fs.uuid = f"{vol[:4]}-{vol[4:]}"
        fs.fat_bits = _fat_bits(p)
    elif p.fstype not in ("biosboot", "lvmpv"):
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


def _gpt_name(part: PartitionPlan) -> str:
    if part.fstype == "efi":
        return "EFI System Partition"
    if part.fstype == "biosboot":
        return "BIOS boot partition"
    if part.fstype == "swap":
        return "swap"
    if part.fstype == "lvmpv":
        return "lvm"
    if part.mountpoint == "/":
        return "root"
    return (part.mountpoint or part.fstype).strip("/").replace("/", "-")[:36]


def _mbr_type(fs: Fs) -> str:
    """libparted's id: ESP ef, swap 82, FAT32 0b, any other FAT (-F 12/16) 06, else 83."""
    if fs.part.fstype == "vfat":
        return "b" if fs.fat_bits == 32 else "6"
    return {"efi": "ef", "swap": "82", "lvmpv": "8e"}.get(fs.part.fstype, "83")


def _extended(disk: DiskPlan, fss: list[Fs]) -> dict[str, int] | None:
    """The msdos extended partition around the logical ones (the pyparted-era rule): from
    1 MiB (at most) before the first logical partition -- room for its boot record -- to the
    end of the last one, numbered with the first free primary slot."""
    primaries = [fs.part for fs in fss if not fs.part.logical]
    logicals = sorted((fs.part for fs in fss if fs.part.logical), key=lambda p: p.number)
    if not logicals:
        return None
    first = min(p.start for p in logicals)
    last = max(p.start + p.size for p in logicals)
    ends = [p.start + p.size for p in primaries if p.start + p.size <= first]
    ext_start = max(max(ends, default=SECTOR), first - ALIGN)
    if ext_start >= first:
        raise BuildError(
            f"{disk.name}: no room before logical partition {logicals[0].number} "
            "for the extended partition's boot record"
        )
    free = sorted(set(range(1, 5)) - {p.number for p in primaries})
    if not free:
        raise BuildError(f"{disk.name}: four primary partitions leave no extended one")
    return {"number": free[0], "start": ext_start, "size": last - ext_start}


def _check_numbers(disk: DiskPlan, fss: list[Fs], extended: dict[str, int] | None) -> None:
    """libparted's numbering rule, kept: primaries (with the extended one) are 1..n, logical
    ones 5, 6... in disk order (the EBR chain's order is what numbers them when read)."""
    primaries = sorted(
        [fs.part.number for fs in fss if not fs.part.logical]
        + ([extended["number"]] if extended else [])
    )
    logicals = [
        p.number for p in sorted((fs.part for fs in fss if fs.part.logical), key=lambda p: p.start)
    ]
    expected = list(range(1, len(primaries) + 1)), list(range(5, 5 + len(logicals)))
    if (primaries, logicals) != expected:
        raise BuildError(
            f"{disk.name}: partitions numbered {primaries + logicals}",
            hint="msdos: primaries 1-4, logicals from 5 in disk order; GPT: 1, 2, 3...",
        )


Row = tuple[int, dict[str, str]]


def _row(number: int, start: int, size: int, **fields: str) -> Row:
    return number, {"start": str(start // SECTOR), "size": str(size // SECTOR), **fields}


def _field(key: str, value: str) -> str:
    """One ``key=value`` of a script line: names quoted, the boot flag bare."""
    if key == "bootable":
        return key
    return f'{key}="{value}"' if key == "name" else f"{key}={value}"


def table_script(disk: DiskPlan, fss: list[Fs], ids: Ids) -> tuple[str, dict[str, Any], list[Row]]:
    """(sfdisk script, write_table's result, the rows ``sfdisk --json`` must read back)."""
    extended = None
    if disk.label == "gpt":
        ident = str(ids.gpt_disk(disk.name))
        head = [
            "label: gpt",
            f"label-id: {ident.upper()}",
            f"first-lba: {GPT_FIRST_LBA}",
            f"last-lba: {disk.size // SECTOR - GPT_FIRST_LBA}",
            f"table-length: {GPT_ENTRIES}",
        ]
        _check_numbers(disk, fss, None)
        rows = [
            _row(
                p.number,
                p.start,
                p.size,
                type=GPT_TYPES.get(p.fstype, GPT_LINUX),
                uuid=str(ids.gpt_part(disk.name, p.number)).upper(),
                name=_gpt_name(p),
            )
            for p in (fs.part for fs in fss)
        ]
    else:
        ident = f"0x{ids.msdos_id(disk.name):08x}"
        head = ["label: dos", f"label-id: {ident}"]
        extended = _extended(disk, fss)
        _check_numbers(disk, fss, extended)
        boot_mp = "/boot" if any(fs.mountpoint == "/boot" for fs in fss) else "/"
        boot = {"bootable": "true"}
        rows = [
            _row(
                fs.part.number,
                fs.part.start,
                fs.part.size,
                type=_mbr_type(fs),
                **(boot if fs.mountpoint == boot_mp and fs.part.fstype != "efi" else {}),
            )
            for fs in fss
        ]
        if extended:
            rows.append(
                _row(extended["number"], extended["start"], extended["size"], type=MBR_EXTENDED)
            )
    rows.sort(key=lambda r: r[0])
    lines = [f"{n} : " + ", ".join(_field(k, v) for k, v in f.items()) for n, f in rows]
    script = "\n".join([*head, "unit: sectors", f"sector-size: {SECTOR}", "", *lines]) + "\n"
    return script, {"identifier": ident, "extended": extended}, rows


def sfdisk(*args: str, stdin: str | None = None) -> str:
    """Run sfdisk (C locale: stable messages); a refusal is a BuildError in its own words."""
    try:
        proc = run(
            ["sfdisk", *args],
            input=stdin.encode() if stdin is not None else None,
            env={**os.environ, "LC_ALL": "C"},
            what=f"{'writing' if stdin else 'reading'} the table of {Path(args[-1]).name}",
        )
    except ToolError as exc:
        if "not found" in exc.message:
            raise
        raise BuildError(
            exc.message,
            hint="partitions overlap, leave the usable area, or a logical partition has "
            "less than 1 MiB before it for its boot record"
            if stdin
            else None,
        ) from None
    return proc.stdout.decode()


def write_table(image: Path, disk: DiskPlan, fss: list[Fs], ids: Ids) -> dict[str, Any]:
    """Partition the image file exactly as planned with one sfdisk script; ids from the seed.

    Returns ``{"identifier": "0x%08x" | GUID, "extended": {number, start, size} | None}``
    (bytes); a layout the table cannot hold is a BuildError.
    """
    script, result, want = table_script(disk, fss, ids)
    sfdisk(*SFDISK_WRITE, str(image), stdin=script)
    table = json.loads(sfdisk("--json", str(image)))["partitiontable"]
    got = {
        int(m.group(1)): p for p in table["partitions"] if (m := re.search(r"(\d+)$", p["node"]))
    }
    for number, fields in want:
        have = {k: str(got.get(number, {}).get(k)) for k in fields}
        if {k: v.lower() for k, v in have.items()} != {k: v.lower() for k, v in fields.items()}:
            raise BuildError(
                f"{disk.name}: sfdisk wrote partition {number} as {have}, not as planned: {fields}",
                hint="overlapping partitions, or a name sfdisk cannot encode (UTF-16 BMP only)?",
            )
    return result
