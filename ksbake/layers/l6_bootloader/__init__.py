"""The bootloader layer: GRUB 2 installed into copies of the disks layer's images.

This file decides where everything goes and installs it (``build``); beside it: the
kickstart's ``bootloader`` command as input (``settings``), kernel discovery and version order
(``kernels``), grub.cfg text (``grubcfg``), GRUB images (``images``), BIOS embedding
(``bios``), writing a file into a filesystem image (``fswrite``).

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
* GRUB modules: the tree's own (``/usr/lib/grub/<platform>`` inside the tree, where Debian's
  grub-pc-bin/grub-efi-amd64-bin and Fedora's grub2-pc-modules/grub2-efi-x64-modules put
  them) when it has every module the image needs (with their ``moddep.lst`` dependencies) and
  the images grub-mkimage builds on (``kernel.img``; for BIOS also ``boot.img``, which then
  goes into the MBR), else the host's (a warning says what the tree's lacked); always the
  host's ``grub-mkimage``. The result (``grub_modules``) and the build summary say which.
  Which ones are used is a function of the tree, whose key is in this layer's (disks ->
  config -> packages), so it needs no key input of its own.
* The menu (``kernels.boot_entries``): one plain ``menuentry`` per BLS entry of the tree
  (``/boot/loader/entries/*.conf``) and per ``/boot/vmlinuz-*`` no entry boots, newest
  version first. An entry keeps its title, kernel, initrds and the options of its own; ksbake's
  root, volume and console arguments replace the entry's (``$kernelopts``, a build host's
  ``root=``), ``--append`` comes last. An entry whose files are not in /boot is left out
  with a warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError
from ksbake.layers.l6_bootloader.bios import SECTOR, _bios_boot_partition, install_bios
from ksbake.layers.l6_bootloader.fswrite import write_into_fs
from ksbake.layers.l6_bootloader.grubcfg import _password_hash, grub_cfg, kernel_cmdline
from ksbake.layers.l6_bootloader.images import GrubImage, make_image
from ksbake.layers.l6_bootloader.kernels import boot_entries, os_name
from ksbake.run import run
from ksbake.runner import Job, located
from ksbake.treefs import MergedTree

FIRMWARES: dict[str, tuple[str, ...]] = {
    "bios": ("bios",),
    "uefi": ("uefi",),
    "bios+uefi": ("bios", "uefi"),
}


def _partition(
    disks: list[dict], mountpoint: str, filesystems: list[dict] | None = None
) -> tuple[dict, dict] | None:
    """(disk, filesystem) mounted at ``mountpoint``: a partition, or with ``filesystems``
    (the disks layer's list) also a logical volume or btrfs subvolume."""
    if filesystems is not None:
        by_name = {d["name"]: d for d in disks}
        for fs in filesystems:
            if fs.get("mountpoint") == mountpoint:
                return by_name[fs["disk"]], fs
        return None
    for disk in disks:
        for part in disk["partitions"]:
            if part.get("mountpoint") == mountpoint:
                return disk, part
    return None


def volume_args(root: dict, filesystems: list[dict]) -> tuple[str, ...]:
    """What the initramfs needs to find / (as anaconda writes them): ``rd.lvm.lv=VG/LV`` for
    a root and swap on LVM, ``rootflags=subvol=NAME`` for a root on a btrfs subvolume."""
    words = []
    for fs in filesystems:
        if fs.get("lv") and (fs.get("mountpoint") == "/" or fs.get("fstype") == "swap"):
            words.append(f"rd.lvm.lv={fs['lv']}")
    if root.get("subvol"):
        words.append(f"rootflags=subvol={root['subvol']}")
    return tuple(words)


def _device_name(disk: dict, part: dict) -> str:
    if part.get("lv"):
        return f"logical volume {part['lv']}"
    if part.get("subvol"):
        return f"{disk['name']}{part['number']} (subvolume {part['subvol']})"
    return f"{disk['name']}{part['number']}"


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
    def subvol_prefix(self) -> str:
        """The path of /boot's btrfs subvolume from the volume's top level GRUB sees."""
        return f"/{self.boot_part['subvol']}" if self.boot_part.get("subvol") else ""

    @property
    def grub_dir(self) -> str:
        return self.subvol_prefix + ("/grub" if self.separate_boot else "/boot/grub")

    @property
    def kernel_prefix(self) -> str:
        return self.subvol_prefix + ("" if self.separate_boot else "/boot")

    @property
    def modules(self) -> tuple[str, ...]:
        """GRUB modules /boot's device needs beyond the filesystem's."""
        return ("lvm",) if self.boot_part.get("lv") else ()


def plan_target(
    disk_list: list[dict],
    plan: dict,
    settings: dict,
    targets: tuple[str, ...],
    seed: str,
    filesystems: list[dict] | None = None,
) -> Target:
    """Check the layout against the settings; every error here comes before any copying."""
    root = _partition(disk_list, "/", filesystems)
    if root is None or not root[1].get("uuid"):
        raise BuildError("the disk layout has no / filesystem with a UUID")
    separate = _partition(disk_list, "/boot", filesystems)
    boot_disk, boot_part = separate or root
    if not boot_part.get("uuid"):
        raise BuildError(f"the {boot_part.get('mountpoint')} filesystem has no UUID")
    if boot_part.get("start") is None:
        raise BuildError(
            f"{boot_part['mountpoint']} is on logical volume {boot_part['lv']}, which spans "
            "physical volumes: GRUB's files could not be written into it here",
            hint="put /boot on a partition: part /boot --size=1024 --fstype=ext4",
        )
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


def build(job: Job) -> dict[str, Any]:
    """The layer's build: bootable copies of the disks object's images in the staging dir."""
    disks_dir = job.parent_dir("disks")
    disks = json.loads((disks_dir / "result.json").read_text())
    for disk in disks["disks"]:
        disk["file"] = str(disks_dir / disk["file"])
    plan = json.loads((disks_dir / "plan.json").read_text())
    config_key = json.loads((disks_dir / "meta.json").read_text())["parents"]["config"]
    config_dir = disks_dir.parent.parent / "config" / config_key
    try:
        result = _install(job, disks, plan, config_dir)
    except BuildError as exc:
        if not exc.message.startswith("no kernel in the tree"):
            raise
        raise located(exc, job.inputs.get("where", {}).get("packages")) from None
    for disk in result["disks"]:
        disk["file"] = Path(disk["file"]).name  # relative: the staging dir is renamed
    (job.stage / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return {
        "note": result.get("grub"),
        "seal": [d["file"] for d in result["disks"]],
        "warnings": result["warnings"],
    }


def _install(
    job: Job, disks: dict[str, Any], plan: dict[str, Any], config_dir: Path
) -> dict[str, Any]:
    from ksbake.layers.l4_config import tree_layers

    return install(
        disks,
        plan,
        job.inputs["bootloader"],
        [str(p) for p in tree_layers(config_dir)],
        job.inputs["firmware"],
        job.staging,
        job.key,
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
    menu = boot_entries(tree)
    kernels = menu.entries
    notes: list[str] = []
    warnings = list(menu.skipped)  # BLS entries left out of the menu
    skip = bootloader.get("location") == "none" or bootloader.get("disabled")
    target = None
    if not skip:
        if not kernels:
            raise BuildError(
                "no kernel in the tree: neither /boot/vmlinuz-* nor a usable BLS entry in "
                "/boot/loader/entries; add 'kernel' to %packages"
            )
        target = plan_target(disk_list, plan, bootloader, targets, seed, disks.get("filesystems"))

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
        "entries": [
            {"title": k.title, "version": k.version, "source": k.source, "id": k.ident}
            for k in kernels
        ],
        "cmdline": "",
        "grub_modules": {},
        "firmware": firmware,
        "boot_disk": None,
        "config": None,
        "installed": [],
        "notes": notes,
        "warnings": warnings,
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
    volumes = volume_args(target.root, disks.get("filesystems") or [])
    cfg = grub_cfg(
        kernels,
        title=os_name(tree),
        boot_uuid=target.boot_part["uuid"],
        root_uuid=target.root["uuid"],
        boot_prefix=target.kernel_prefix,
        append=append,
        volumes=volumes,
        timeout=bootloader.get("timeout"),
        password_hash=target.password_hash,
    )
    boot_part, grub_disk = target.boot_part, target.grub_disk
    made: list[GrubImage] = []  # the GRUB images, with where their modules came from
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
            "extra_modules": target.modules,
            "password": bool(target.password_hash),
            "tmp": tmp,
        }
        if target.table is not None:
            core = make_image(tree, "i386-pc", **common)
            result["installed"].append(
                install_bios(copies[grub_disk["name"]], target.table, grub_disk, core)
            )
            made.append(core)
        if target.esp is not None:
            esp_disk, esp = target.esp
            efi = make_image(tree, "x86_64-efi", **common)
            write_into_fs(
                copies[esp_disk["name"]], esp, "/EFI/BOOT/BOOTX64.EFI", efi.image, tmp=tmp
            )
            result["installed"].append(
                f"UEFI GRUB as EFI/BOOT/BOOTX64.EFI on {esp_disk['name']}{esp['number']}"
            )
            made.append(efi)

    for image in made:
        result["grub_modules"][image.platform] = {
            "from": image.modules.origin,
            "dir": image.modules.path,
            "version": image.modules.version,
        }
        if image.modules.fallback:
            warnings.append(f"{image.modules.fallback}: the host's GRUB modules used instead")
    result.update(
        grub=(
            "GRUB modules: "
            + ", ".join(image.modules.describe() for image in made)
            + f"; host {made[0].mkimage}"
        )
        if made
        else None,
        cmdline=kernel_cmdline(target.root["uuid"], append, volumes, kernels[0].options),
        boot_disk=grub_disk["name"],
        config=f"{target.grub_dir}/grub.cfg on {_device_name(target.boot_disk, boot_part)}",
        seconds=round(time.monotonic() - started, 3),
    )
    return result
