"""GRUB installation into disk images (ksbake.bootloader).

Unit tests (settings, version order, layered tree reading, grub.cfg text, disk choice,
errors) run everywhere. The ``slow`` ones build real partitioned images by hand (pyparted,
``mkfs.ext4 -d``, ``mkfs.vfat --offset``) from an installed tree of the bundled repository
found in the shared test store, install GRUB and inspect the result; the ``boot`` ones also
boot them in QEMU (TCG) to the ``KSBAKE-BOOT-OK`` marker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import planned

from ksbake import qemu
from ksbake.errors import BuildError, ToolError
from ksbake.layers import l6_bootloader as bootloader
from ksbake.layers.l6_bootloader import fswrite, grubcfg, images, settings
from ksbake.layers.l6_bootloader import kernels as kernel_list
from ksbake.layers.l6_bootloader.grubcfg import grub_cfg
from ksbake.layers.l6_bootloader.kernels import Kernel, rpmvercmp
from ksbake.layout import DiskPlan, MiB, PartitionPlan, Plan
from ksbake.passwords import grub_password_hash
from ksbake.treefs import MergedTree

ROOT_UUID = "6f1b1c3e-0d6a-4c2e-9a51-3f0e2a7b9c01"
BOOT_UUID = "2c8d5e4f-7a1b-4e3c-8d2f-1a9b0c7d6e02"
ESP_VOLID = "ABCD1234"
ESP_UUID = "ABCD-1234"


# -- unit tests -----------------------------------------------------------------------------


def _settings(text: str, version: str | None = None) -> dict:
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    handler = makeVersion(version) if version else makeVersion()
    KickstartParser(handler).readKickstartFromString(text)
    return settings.bootloader_settings(handler)


def test_settings_from_kickstart() -> None:
    s = _settings(
        'bootloader --location=mbr --append="quiet  x=1" --timeout=3 --boot-drive=sdb '
        "--password=secret\n"
    )
    assert s["location"] == "mbr"
    assert s["append"] == "quiet x=1"
    assert s["timeout"] == 3
    assert s["boot_drive"] == "sdb"
    assert s["password"] == "secret" and not s["password_crypted"]
    assert not s["disabled"] and not s["nombr"] and not s["extlinux"]


def test_settings_defaults_and_flags() -> None:
    none = _settings("")  # no bootloader command: appliance-creator installed one anyway
    assert none["location"] == "mbr" and none["timeout"] is None and none["append"] == ""
    assert _settings("bootloader --location=none\n")["location"] == "none"
    assert _settings("bootloader --disabled\n")["disabled"]
    assert _settings("bootloader --extlinux\n")["extlinux"]
    md5 = _settings("bootloader --md5pass=$1$abc$def\n")
    assert md5["password"] == "$1$abc$def" and md5["password_crypted"]
    old = _settings("bootloader --location=mbr --timeout=1\n", "F8")
    assert old["location"] == "mbr" and old["boot_drive"] is None and not old["nombr"]


def test_rpmvercmp() -> None:
    assert rpmvercmp("6.1.0-56-amd64", "6.1.0-9-amd64") > 0
    assert rpmvercmp("6.10.0", "6.9.12") > 0
    assert rpmvercmp("1.0", "1.0") == 0
    assert rpmvercmp("1.0", "1_0") == 0
    assert rpmvercmp("1.0~rc1", "1.0") < 0
    assert rpmvercmp("1.0^git1", "1.0") > 0
    assert rpmvercmp("1.0^git1", "1.0.1") < 0
    assert rpmvercmp("1.0a", "1.0") > 0
    assert rpmvercmp("1.0", "1.0a") < 0
    assert rpmvercmp("2a", "2.0") < 0  # numbers beat letters
    assert rpmvercmp("0-rescue-abc", "6.1.0") < 0


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_merged_tree_kernels(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-1"):
        _touch(lower / f"boot/vmlinuz-{version}")
    _touch(lower / "boot/initramfs-6.1.0-56-amd64.img")
    _touch(lower / "boot/initrd.img-6.1.0-9-amd64")
    _touch(lower / "boot/.vmlinuz-6.1.0-56-amd64.hmac")
    _touch(lower / "usr/lib/os-release", b'NAME=x\nPRETTY_NAME="Lower OS 1"\n')
    (lower / "etc").mkdir()
    os.symlink("../usr/lib/os-release", lower / "etc/os-release")
    # the upper layer adds a newer kernel and deletes one (an overlayfs whiteout)
    _touch(upper / "boot/vmlinuz-6.2.0-1")
    if os.geteuid() == 0:
        os.mknod(upper / "boot/vmlinuz-5.10.0-1", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    tree = MergedTree([upper, lower])
    kernels = kernel_list.find_kernels(tree)
    versions = [k.version for k in kernels]
    expected = ["6.2.0-1", "6.1.0-56-amd64", "6.1.0-9-amd64"]
    if os.geteuid() != 0:
        expected.append("5.10.0-1")
    assert versions == expected
    assert kernels[1] == Kernel(
        "6.1.0-56-amd64", "vmlinuz-6.1.0-56-amd64", "initramfs-6.1.0-56-amd64.img"
    )
    assert kernels[2].initrd == "initrd.img-6.1.0-9-amd64"
    assert kernels[0].initrd is None
    assert kernel_list.os_name(tree) == "Lower OS 1"


def test_merged_tree_opaque_dir(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _touch(lower / "boot/vmlinuz-1.0")
    _touch(upper / "boot/vmlinuz-2.0")
    try:
        os.setxattr(upper / "boot", "trusted.overlay.opaque", b"y")
    except OSError:
        pytest.skip("cannot set trusted.* xattrs here (needs root)")
    tree = MergedTree([upper, lower])
    assert tree.listdir("/boot") == ["vmlinuz-2.0"]
    assert tree.find("/boot/vmlinuz-1.0") is None
    assert tree.find("/boot/vmlinuz-2.0") == upper / "boot/vmlinuz-2.0"


def test_merged_tree_symlinks_across_layers(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _touch(lower / "usr/lib/grub/i386-pc/moddep.lst")
    (upper).mkdir()
    os.symlink("usr/lib", upper / "lib")  # usrmerge symlink in another layer
    tree = MergedTree([upper, lower])
    assert tree.find("/lib/grub/i386-pc/moddep.lst") == lower / "usr/lib/grub/i386-pc/moddep.lst"
    assert tree.listdir("/lib/grub") == ["i386-pc"]
    assert tree.find("/nope/x") is None and tree.listdir("/nope") == []


def _cfg(**kw) -> str:
    args = {
        "title": "Ksbake 1",
        "boot_uuid": BOOT_UUID,
        "root_uuid": ROOT_UUID,
        "boot_prefix": "",
        "append": "",
        "timeout": None,
    }
    args.update(kw)
    kernels = [
        Kernel("6.2.0", "vmlinuz-6.2.0", "initramfs-6.2.0.img"),
        Kernel("6.1.0", "vmlinuz-6.1.0", None),
    ]
    return grub_cfg(kernels, **args)


def test_grub_cfg_separate_boot() -> None:
    text = _cfg(append="quiet loglevel=3", timeout=0)
    lines = text.splitlines()
    for line in (
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=0",
        f"search --no-floppy --fs-uuid --set=root {BOOT_UUID}",
        "menuentry 'Ksbake 1 (6.2.0)' --id ksbake-6.2.0 {",
        f"\tlinux /vmlinuz-6.2.0 root=UUID={ROOT_UUID} ro console=ttyS0,115200 quiet loglevel=3",
        "\tinitrd /initramfs-6.2.0.img",
    ):
        assert line in lines, line
    # newest first; an entry without initramfs has no initrd line
    assert text.index("(6.2.0)") < text.index("(6.1.0)")
    second = text[text.index("(6.1.0)") :]
    assert "initrd" not in second
    assert "password" not in text


def test_grub_cfg_root_only_default_timeout_and_quoting() -> None:
    text = _cfg(boot_prefix="/boot", append="x=$y a;b it's", title="It's OS")
    assert "set timeout=5" in text
    assert "\tlinux /boot/vmlinuz-6.2.0 " in text
    assert "\tinitrd /boot/initramfs-6.2.0.img" in text
    assert "'x=$y' 'a;b' 'it'\\''s'" in text  # GRUB would expand $ and split on ;
    assert "menuentry 'It'\\''s OS (6.2.0)'" in text


def test_grub_password() -> None:
    hashed = grub_password_hash("secret", "seed1")
    assert hashed == grub_password_hash("secret", "seed1")
    assert hashed != grub_password_hash("secret", "seed2")
    parts = hashed.split(".")
    assert parts[:4] == ["grub", "pbkdf2", "sha512", "10000"]
    salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    assert hashlib.pbkdf2_hmac("sha512", b"secret", salt, 10000, 64) == digest
    text = _cfg(password_hash=hashed)
    assert 'set superusers="root"' in text and f"password_pbkdf2 root {hashed}" in text
    assert "--id ksbake-6.2.0 --unrestricted {" in text
    assert "secret" not in text
    settings = {"password": "$1$md5$hash", "password_crypted": True}
    with pytest.raises(BuildError, match="grub.pbkdf2"):
        grubcfg._password_hash(settings, "seed")
    settings = {"password": hashed, "password_crypted": True}
    assert grubcfg._password_hash(settings, "seed") == hashed


def _disk(name: str, *mounts: str) -> dict:
    parts = [
        {
            "number": i,
            "start": i * MiB,
            "size": MiB,
            "fstype": "ext4",
            "mountpoint": m,
            "uuid": f"u-{name}-{i}",
            "label": None,
        }
        for i, m in enumerate(mounts, 1)
    ]
    return {"name": name, "file": f"/nonexistent/{name}.raw", "partitions": parts}


def test_choose_boot_disk() -> None:
    sda, sdb = _disk("sda", "/", "/data"), _disk("sdb", "/boot")
    assert bootloader.choose_boot_disk([sda, sdb], None) is sdb  # holds /boot
    assert bootloader.choose_boot_disk([sda, _disk("sdb", "/srv")], None) is sda  # holds /
    assert bootloader.choose_boot_disk([sda, sdb], "sda") is sda
    assert bootloader.choose_boot_disk([sda, sdb], "/dev/sda") is sda
    with pytest.raises(BuildError, match="no such disk.*sda, sdb"):
        bootloader.choose_boot_disk([sda, sdb], "vdc")
    with pytest.raises(BuildError, match="no / partition"):
        bootloader.choose_boot_disk([_disk("sda", "/data")], None)


def test_no_kernel_is_one_clear_error(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    disks = {"disks": [_disk("sda", "/")]}
    with pytest.raises(BuildError) as info:
        bootloader.install(
            disks,
            {"disks": []},
            {"location": "mbr"},
            [str(tree)],
            "bios",
            str(tmp_path / "out"),
            "seed",
        )
    assert str(info.value) == (
        "no kernel in the tree: neither /boot/vmlinuz-* nor a usable BLS entry in "
        "/boot/loader/entries; add 'kernel' to %packages"
    )


def test_unknown_firmware(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown firmware 'coreboot'"):
        bootloader.install(
            {"disks": []},
            {"disks": []},
            {},
            [str(tmp_path)],
            "coreboot",
            str(tmp_path / "out"),
            "seed",
        )


def test_missing_grub_modules_names_packages(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(images, "HOST_GRUB_DIRS", (str(tmp_path / "none"),))
    tree = MergedTree([tmp_path])
    for platform, deb, fed in (
        ("i386-pc", "grub-pc-bin", "grub2-pc-modules"),
        ("x86_64-efi", "grub-efi-amd64-bin", "grub2-efi-x64-modules"),
    ):
        with pytest.raises(ToolError) as info:
            images._module_dir(tree, platform, tmp_path)
        assert deb in str(info.value) and fed in str(info.value)


def _tree_grub(tree_dir: Path, platform: str, version: bytes = b"2.12-1.fc40") -> Path:
    """A copy of the host's GRUB modules as the tree's own (``modinfo.sh`` says ``version``)."""
    mods = tree_dir / "usr/lib/grub" / platform
    host = next(Path(d) / platform for d in images.HOST_GRUB_DIRS if Path(d, platform).is_dir())
    shutil.copytree(host, mods)
    (mods / "modinfo.sh").write_bytes(b'grub_package_version="' + version + b'"\n')
    return mods


def _image_modules(platform: str) -> list[str]:
    return [*images.PLATFORM_MODULES[platform], *images.COMMON_MODULES, "ext2"]


@pytest.mark.parametrize("platform", ["i386-pc", "x86_64-efi"])
def test_tree_modules_preferred(tmp_path: Path, platform: str) -> None:
    if not any(Path(d, platform).is_dir() for d in images.HOST_GRUB_DIRS):
        pytest.skip(f"the host has no GRUB {platform} modules to copy")
    tree_dir = tmp_path / "tree"
    _tree_grub(tree_dir, platform)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tree = MergedTree([tree_dir])
    moddir, source = images._module_dir(tree, platform, scratch, _image_modules(platform))
    assert moddir.parent == scratch and (moddir / "kernel.img").is_file()
    assert source == images.Modules(platform, "tree", f"/usr/lib/grub/{platform}", "2.12-1.fc40")
    assert source.describe() == (
        f"{platform} from the tree (/usr/lib/grub/{platform}, 2.12-1.fc40)"
    )


def test_incomplete_tree_modules_fall_back_to_the_host(tmp_path: Path) -> None:
    if not Path("/usr/lib/grub/i386-pc/moddep.lst").is_file():
        pytest.skip("the host has no GRUB i386-pc modules")
    tree_dir = tmp_path / "tree"
    mods = _tree_grub(tree_dir, "i386-pc")
    # search needs search_fs_uuid... (moddep.lst): a dependency missing is as bad as a module
    needs = images._closure((mods / "moddep.lst").read_text(), ["search"])
    assert "search_fs_uuid" in needs and "search" in needs
    (mods / "extcmd.mod").unlink()
    tree = MergedTree([tree_dir])
    moddir, source = images._module_dir(tree, "i386-pc", tmp_path, _image_modules("i386-pc"))
    assert moddir == Path("/usr/lib/grub/i386-pc") and source.origin == "host"
    assert source.fallback == "the tree's /usr/lib/grub/i386-pc lacks extcmd.mod"
    # BIOS needs the tree's boot.img too (it goes into the MBR with the tree's core.img)
    shutil.copy(Path("/usr/lib/grub/i386-pc/extcmd.mod"), mods)
    (mods / "boot.img").unlink()
    _, source = images._module_dir(tree, "i386-pc", tmp_path, _image_modules("i386-pc"))
    assert source.fallback == "the tree's /usr/lib/grub/i386-pc lacks boot.img"
    # a tree without GRUB at all: the host's, without a word
    _, source = images._module_dir(
        MergedTree([tmp_path / "empty"]), "i386-pc", tmp_path, _image_modules("i386-pc")
    )
    assert source.origin == "host" and source.fallback is None


# -- BLS entries --------------------------------------------------------------------------


MID = "0123456789abcdef0123456789abcdef"
FEDORA_ENTRY = f"""title Fedora Linux (6.5.6-300.fc39.x86_64) 39 (Server Edition)
version 6.5.6-300.fc39.x86_64
linux /vmlinuz-6.5.6-300.fc39.x86_64
initrd /initramfs-6.5.6-300.fc39.x86_64.img
options root=UUID=11111111-2222-3333-4444-555555555555 ro rd.lvm.lv=fedora/root rhgb quiet
options $tuned_params console=tty0 BOOT_IMAGE=/vmlinuz-host selinux=0
grub_users $grub_users
grub_arg --unrestricted
grub_class fedora
machine-id {MID}
sort-key fedora
"""


def bls_tree(root: Path) -> Path:
    """A tree as Fedora's and systemd's kernel-install leave it: BLS entries in
    /boot/loader/entries (paths relative to /boot, or with /boot/, or in an entry-token
    directory), plus one plain kernel that no entry boots and one entry gone wrong."""
    entries = root / "boot/loader/entries"
    _touch(root / "boot/vmlinuz-6.5.6-300.fc39.x86_64", b"fedora kernel")
    _touch(root / "boot/initramfs-6.5.6-300.fc39.x86_64.img", b"fedora initramfs")
    _touch(entries / f"{MID}-6.5.6-300.fc39.x86_64.conf", FEDORA_ENTRY.encode())
    # an older one: "$kernelopts" (Fedora <= 32), paths written for a /boot inside /,
    # two initrds (microcode first)
    _touch(root / "boot/vmlinuz-6.4.0-1", b"old kernel")
    _touch(root / "boot/initramfs-6.4.0-1.img", b"old initramfs")
    _touch(root / "boot/intel-ucode.img", b"microcode")
    _touch(
        entries / f"{MID}-6.4.0-1.conf",
        b"title Old Linux\nversion 6.4.0-1\nlinux /boot/vmlinuz-6.4.0-1\n"
        b"initrd /boot/intel-ucode.img\ninitrd /boot/initramfs-6.4.0-1.img\n"
        b"options $kernelopts\n",
    )
    # systemd's kernel-install layout=bls: an entry-token directory, no title
    _touch(root / f"boot/{MID}/6.6.0-1-amd64/linux", b"debian kernel")
    _touch(root / f"boot/{MID}/6.6.0-1-amd64/initrd.img-6.6.0-1-amd64", b"debian initrd")
    _touch(
        entries / f"{MID}-6.6.0-1-amd64.conf",
        f"# Boot Loader Specification type#1 entry\nversion 6.6.0-1-amd64\n"
        f"machine-id {MID}\nlinux /{MID}/6.6.0-1-amd64/linux\n"
        f"initrd /{MID}/6.6.0-1-amd64/initrd.img-6.6.0-1-amd64\n"
        "options   root=/dev/sda2  nomodeset\n".encode(),
    )
    # a rescue entry whose kernel dracut-config-rescue never made; one escaping /boot
    _touch(
        entries / f"{MID}-0-rescue.conf",
        f"title Rescue\nversion 0-rescue-{MID}\nlinux /vmlinuz-0-rescue-{MID}\n".encode(),
    )
    _touch(root / "etc/shadow", b"root:x:::::::\n")
    _touch(entries / "escape.conf", b"version 9.9\nlinux /../etc/shadow\n")
    # a plain kernel no entry boots (a package without kernel-install); one that an entry
    # boots from its entry-token directory (the same kernel: no second menu entry)
    _touch(root / "boot/vmlinuz-5.10.0-1", b"plain kernel")
    _touch(root / "boot/vmlinuz-6.6.0-1-amd64", b"debian kernel")
    return root


def test_bls_entries(tmp_path: Path) -> None:
    menu = kernel_list.boot_entries(MergedTree([bls_tree(tmp_path)]))
    assert [e.version for e in menu.entries] == [
        "6.6.0-1-amd64",
        "6.5.6-300.fc39.x86_64",
        "6.4.0-1",
        "5.10.0-1",
    ]
    debian, fedora, old, plain = menu.entries
    assert fedora.title == "Fedora Linux (6.5.6-300.fc39.x86_64) 39 (Server Edition)"
    assert fedora.linux == "vmlinuz-6.5.6-300.fc39.x86_64"
    assert fedora.initrds == ("initramfs-6.5.6-300.fc39.x86_64.img",)
    # the build host's root, volumes, console and GRUB variables go; the entry's own stay
    assert fedora.options == ("rhgb", "quiet", "selinux=0")
    assert fedora.ident == f"bls-{MID}-6.5.6-300.fc39.x86_64"
    assert fedora.source == f"/boot/loader/entries/{MID}-6.5.6-300.fc39.x86_64.conf"
    assert old.linux == "vmlinuz-6.4.0-1" and old.options == ()
    assert old.initrds == ("intel-ucode.img", "initramfs-6.4.0-1.img")
    assert debian.title is None and debian.linux == f"{MID}/6.6.0-1-amd64/linux"
    assert debian.options == ("nomodeset",)
    assert plain == kernel_list.BootEntry.from_kernel(Kernel("5.10.0-1", "vmlinuz-5.10.0-1", None))
    assert plain.ident == "ksbake-5.10.0-1"
    assert sorted(menu.skipped) == [
        f"BLS entry /boot/loader/entries/{MID}-0-rescue.conf: kernel "
        f"/vmlinuz-0-rescue-{MID} is not in /boot: left out of the menu",
        "BLS entry /boot/loader/entries/escape.conf: kernel /../etc/shadow is not in /boot: "
        "left out of the menu",
    ]


def test_bls_parse_and_options() -> None:
    fields = kernel_list.parse_bls("# c\n\ntitle  A  B \ninitrd /a\ninitrd /b\noptions\n")
    assert fields == {"title": ["A  B"], "initrd": ["/a", "/b"], "options": [""]}
    assert kernel_list.ksbake_options(
        ["root=/dev/x rootflags=subvol=root ro rw resume=UUID=1 rd.lvm.vg=v", "a=$b q initrd=/i"]
    ) == ("q",)


def test_grub_cfg_bls_entries(tmp_path: Path) -> None:
    menu = kernel_list.boot_entries(MergedTree([bls_tree(tmp_path)]))
    for prefix in ("", "/boot"):
        text = grub_cfg(
            menu.entries,
            title="Fallback OS",
            boot_uuid=BOOT_UUID,
            root_uuid=ROOT_UUID,
            boot_prefix=prefix,
            append="console=ttyS0 quiet",
            volumes=("rd.lvm.lv=vg/root",),
        )
        base = f"root=UUID={ROOT_UUID} rd.lvm.lv=vg/root ro console=ttyS0,115200"
        lines = text.splitlines()
        for line in (
            "menuentry 'Fedora Linux (6.5.6-300.fc39.x86_64) 39 (Server Edition)' "
            f"--id bls-{MID}-6.5.6-300.fc39.x86_64 {{",
            f"\tlinux {prefix}/vmlinuz-6.5.6-300.fc39.x86_64 {base} rhgb quiet selinux=0 "
            "console=ttyS0 quiet",
            f"\tinitrd {prefix}/initramfs-6.5.6-300.fc39.x86_64.img",
            f"\tinitrd {prefix}/intel-ucode.img {prefix}/initramfs-6.4.0-1.img",
            f"\tlinux {prefix}/vmlinuz-6.4.0-1 {base} console=ttyS0 quiet",
            f"menuentry 'Fallback OS (6.6.0-1-amd64)' --id bls-{MID}-6.6.0-1-amd64 {{",
            f"\tlinux {prefix}/{MID}/6.6.0-1-amd64/linux {base} nomodeset console=ttyS0 quiet",
            "menuentry 'Fallback OS (5.10.0-1)' --id ksbake-5.10.0-1 {",
        ):
            assert line in lines, (line, text)
        assert "$" not in text and "fedora/root" not in text and "tty0 " not in text
        assert text.index("6.6.0-1-amd64") < text.index("(6.5.6") < text.index("(5.10.0-1)")


def _synthetic_tree(root: Path, *, bls: bool, grub: str | None) -> Path:
    """A tree with what the bootloader layer reads: kernels (plain or BLS), os-release,
    fstab and, when ``grub`` names a platform, that platform's GRUB modules of its own."""
    if bls:
        bls_tree(root)
    else:
        _touch(root / "boot/vmlinuz-6.1.0-1", b"kernel")
        _touch(root / "boot/initramfs-6.1.0-1.img", b"initramfs")
    _touch(root / "etc/os-release", b'PRETTY_NAME="Synthetic 1"\n')
    _touch(root / "etc/fstab", b"")
    if grub:
        _tree_grub(root, grub)
    return root


def _needs_image_tools() -> None:
    for tool in ("mkfs.ext4", "debugfs"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    if not (shutil.which("grub-mkimage") or shutil.which("grub2-mkimage")):
        pytest.skip("grub-mkimage not installed")
    if not Path("/usr/lib/grub/i386-pc/boot.img").is_file():
        pytest.skip("the host has no GRUB i386-pc modules")


@pytest.mark.parametrize("variant", ["msdos-bios", "root-only"])
def test_install_bls_with_the_tree_grub(tmp_path: Path, variant: str) -> None:
    """grub.cfg from BLS entries, prefixed as the layout needs; the tree's GRUB modules and
    its boot.img are used, and the result and note say so."""
    _needs_image_tools()
    tree = _synthetic_tree(tmp_path / "tree", bls=True, grub="i386-pc")
    boot_img = bytearray((tree / "usr/lib/grub/i386-pc/boot.img").read_bytes())
    boot_img[0x1B0] ^= 0xFF  # told apart from the host's (outside what the install patches)
    (tree / "usr/lib/grub/i386-pc/boot.img").write_bytes(boot_img)
    built, result = build_variant(tree, tmp_path / "w", variant)
    out = Path(result["disks"][0]["file"])
    data = out.read_bytes()
    assert data[0x1B0] == boot_img[0x1B0] and data[:0x5C] == bytes(boot_img[:0x5C])
    assert result["grub_modules"] == {
        "i386-pc": {"from": "tree", "dir": "/usr/lib/grub/i386-pc", "version": "2.12-1.fc40"}
    }
    assert result["grub"].startswith(
        "GRUB modules: i386-pc from the tree (/usr/lib/grub/i386-pc, 2.12-1.fc40); host grub"
    )
    assert len(result["warnings"]) == 2  # the rescue and the escaping entry
    assert result["kernels"] == ["6.6.0-1-amd64", "6.5.6-300.fc39.x86_64", "6.4.0-1", "5.10.0-1"]
    # the default entry's command line
    assert result["cmdline"] == (
        f"root=UUID={ROOT_UUID} ro console=ttyS0,115200 nomodeset ksbake.poweroff"
    )
    prefix = "" if variant == "msdos-bios" else "/boot"  # /boot a filesystem of its own, or not
    cfg = _debugfs_cat(str(out), MiB, f"{prefix}/grub/grub.cfg")
    assert f"\tlinux {prefix}/vmlinuz-6.5.6-300.fc39.x86_64 root=UUID={ROOT_UUID} " in cfg
    assert f"\tinitrd {prefix}/intel-ucode.img {prefix}/initramfs-6.4.0-1.img\n" in cfg
    assert f"\tlinux {prefix}/{MID}/6.6.0-1-amd64/linux " in cfg


def test_install_plain_kernel_with_host_grub(tmp_path: Path) -> None:
    _needs_image_tools()
    tree = _synthetic_tree(tmp_path / "tree", bls=False, grub=None)
    _, result = build_variant(tree, tmp_path / "w", "msdos-bios")
    assert result["grub_modules"]["i386-pc"]["from"] == "host"
    assert result["grub"].startswith("GRUB modules: i386-pc from the host (/usr/lib/grub")
    assert result["warnings"] == [] and result["kernels"] == ["6.1.0-1"]
    cfg = _debugfs_cat(result["disks"][0]["file"], MiB, "/grub/grub.cfg")
    assert "menuentry 'Synthetic 1 (6.1.0-1)' --id ksbake-6.1.0-1 {" in cfg
    assert "\tinitrd /initramfs-6.1.0-1.img\n" in cfg


def test_ext_write_is_reproducible(tmp_path: Path) -> None:
    """grub.cfg goes into an ext4 image without mounting; same input, same bytes."""
    if not shutil.which("mkfs.ext4") or not shutil.which("debugfs"):
        pytest.skip("e2fsprogs not installed")
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        f.truncate(40 * MiB)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-U",
            BOOT_UUID,
            "-E",
            f"offset={MiB},lazy_journal_init=1,root_owner=0:0",
            str(base),
            "32M",
        ],
        check=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": str(fswrite.EPOCH)},
    )
    part = {"start": MiB, "size": 32 * MiB, "fstype": "ext4"}
    digests = []
    for i in range(2):
        copy = tmp_path / f"copy{i}.raw"
        shutil.copyfile(base, copy)
        fswrite.write_into_fs(copy, part, "/boot/grub/grub.cfg", b"set x=1\n", tmp=tmp_path)
        fswrite.write_into_fs(copy, part, "/boot/grub/grub.cfg", b"set x=2\n", tmp=tmp_path)
        digests.append(hashlib.sha256(copy.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    out = subprocess.run(
        ["debugfs", "-R", "cat /boot/grub/grub.cfg", f"{tmp_path / 'copy0.raw'}?offset={MiB}"],
        capture_output=True,
        check=True,
    ).stdout
    assert out == b"set x=2\n"


def test_fat_write(tmp_path: Path) -> None:
    if not shutil.which("mkfs.vfat") or not shutil.which("mcopy"):
        pytest.skip("dosfstools/mtools not installed")
    image = tmp_path / "esp.raw"
    with open(image, "wb") as f:
        f.truncate(40 * MiB)
    subprocess.run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-s",
            "1",
            "-i",
            ESP_VOLID,
            "--offset",
            "2048",
            str(image),
            str(36 * 1024),
        ],
        check=True,
        capture_output=True,
    )
    part = {"start": MiB, "size": 36 * MiB, "fstype": "efi"}
    fswrite.write_into_fs(image, part, "/EFI/BOOT/BOOTX64.EFI", b"MZ-one", tmp=tmp_path)
    fswrite.write_into_fs(image, part, "/EFI/BOOT/BOOTX64.EFI", b"MZ-two", tmp=tmp_path)
    out = subprocess.run(
        ["mtype", "-i", f"{image}@@{MiB}", "::EFI/BOOT/BOOTX64.EFI"],
        capture_output=True,
        check=True,
        env=fswrite._mtools_env(),
    ).stdout
    assert out == b"MZ-two"


@pytest.mark.slow
def test_xfs_write_through_loop_mount(tmp_path: Path) -> None:
    """xfs has no offline writer: an offset loop mount, unmounted and detached afterwards."""
    if not shutil.which("mkfs.xfs") or os.geteuid() != 0:
        pytest.skip("needs xfsprogs and root")
    fs = tmp_path / "fs.xfs"
    with open(fs, "wb") as f:
        f.truncate(320 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", f"uuid={BOOT_UUID}", str(fs)], check=True)
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(322 * MiB)
    subprocess.run(
        ["dd", f"if={fs}", f"of={image}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"],
        check=True,
    )
    part = {"start": MiB, "size": 320 * MiB, "fstype": "xfs"}
    fswrite.write_into_fs(image, part, "/grub/grub.cfg", b"set x=3\n", tmp=tmp_path)
    loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
    assert loops.stdout.strip() == "", "the loop device was not released"
    mnt = tmp_path / "check"
    with fswrite._loop_mount(image, part, "xfs", mnt):
        assert (mnt / "grub/grub.cfg").read_bytes() == b"set x=3\n"
        assert stat.S_IMODE((mnt / "grub/grub.cfg").stat().st_mode) == 0o644
    assert not os.path.ismount(mnt)


# -- real images from an installed tree of the bundled repository -------------------------


@pytest.fixture(scope="session")
def tree(demo_tree: Path) -> Path:
    """The demo appliance's installed tree (built once per session in the shared store)."""
    return demo_tree


UUIDS = {"/": ROOT_UUID, "/boot": BOOT_UUID, "/boot/efi": ESP_UUID}
"""The filesystem UUIDs the stand-in below gives each mount point."""


@dataclass
class Built:
    disks: dict
    plan: dict


def _mkfs(image: Path, part: PartitionPlan, content: Path | None) -> None:
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(fswrite.EPOCH)}
    start, size = part.start, part.size
    if part.fstype in ("ext2", "ext3", "ext4"):
        argv = [
            f"mkfs.{part.fstype}",
            "-q",
            "-F",
            "-U",
            UUIDS[part.mountpoint or ""],
            "-E",
            f"offset={start},lazy_journal_init=1",
        ]
        if content is not None:
            argv += ["-d", str(content)]
        subprocess.run([*argv, str(image), f"{size // 1024}k"], check=True, env=env)
    elif part.fstype == "efi":
        subprocess.run(
            [
                "mkfs.vfat",
                "-F",
                "32",
                "-s",
                "1",
                "-i",
                ESP_VOLID,
                "--offset",
                str(start // 512),
                str(image),
                str(size // 1024),
            ],
            check=True,
            capture_output=True,
        )


def make_disks(tree: Path, work: Path, plan: Plan) -> Built:
    """Sparse images partitioned as ``plan`` says, holding ``tree`` split by mountpoint, fstab
    by UUID. A stand-in for the disks layer (primary partitions only)."""
    import parted

    mounts = {p.mountpoint: p for d in plan.disks for p in d.partitions if p.mountpoint}
    staged = work / "staged"
    root_dir = staged / "root"
    staged.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(tree), str(root_dir)], check=True)
    contents = {"/": root_dir}
    if "/boot" in mounts:
        boot_dir = staged / "boot"
        boot_dir.mkdir()
        for item in (root_dir / "boot").iterdir():
            shutil.move(str(item), boot_dir / item.name)
        contents["/boot"] = boot_dir
    fstab = ["# written by the test's stand-in for the disks layer"]
    for mnt, part in sorted(mounts.items()):
        if mnt == "/":
            continue
        holder = "/boot" if mnt.startswith("/boot/") and "/boot" in mounts else "/"
        rel = mnt[len(holder) :] if holder != "/" else mnt
        (contents[holder] / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)
        fstype = "vfat" if part.fstype == "efi" else part.fstype
        fstab.append(f"UUID={UUIDS[mnt]} {mnt} {fstype} defaults 0 2")
    (root_dir / "etc/fstab").unlink()
    (root_dir / "etc/fstab").write_text("\n".join(fstab) + "\n")

    disks = []
    for planned_disk in plan.disks:
        image = work / f"{planned_disk.name}.raw"
        with open(image, "wb") as f:
            f.truncate(planned_disk.size)
        device = parted.getDevice(str(image))
        disk = parted.freshDisk(device, planned_disk.label)
        entries = []
        for part in planned_disk.partitions:
            assert not part.logical, "the stand-in makes primary partitions only"
            geometry = parted.Geometry(
                device=device, start=part.start // 512, length=part.size // 512
            )
            new = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, geometry=geometry)
            disk.addPartition(new, constraint=parted.Constraint(exactGeom=geometry))
            assert new.number == part.number
            if part.fstype == "biosboot":
                new.setFlag(parted.PARTITION_BIOS_GRUB)
            elif part.fstype == "efi":
                new.setFlag(getattr(parted, "PARTITION_ESP", parted.PARTITION_BOOT))
            entries.append(
                {
                    "number": part.number,
                    "start": part.start,
                    "size": part.size,
                    "fstype": part.fstype,
                    "mountpoint": part.mountpoint,
                    "uuid": UUIDS.get(part.mountpoint or ""),
                    "label": part.label,
                }
            )
        disk.commitToDevice()  # a plain file: no kernel to tell
        for part in planned_disk.partitions:
            _mkfs(image, part, contents.get(part.mountpoint or ""))
        disks.append({"name": planned_disk.name, "file": str(image), "partitions": entries})
    shutil.rmtree(staged)
    return Built({"disks": disks}, plan.to_dict())


SETTINGS = _settings("bootloader --location=mbr --append=ksbake.poweroff --timeout=0\n")
"""The bootloader layer's input for this kickstart line (every key it reads)."""

GPT = "clearpart --all --initlabel --disklabel=gpt\n"
BIOSBOOT = "part biosboot --fstype=biosboot --size=1\n"
ESP = "part /boot/efi --fstype=efi --size=40\n"
BOOT_AND_ROOT = "part /boot --fstype=ext4 --size=48\npart / --fstype=ext4 --size=64\n"

VARIANTS: dict[str, tuple[str, str | Plan]] = {
    # name: (firmware, the kickstart's partitioning or, where the planner cannot make it, a Plan)
    "msdos-bios": ("bios", BOOT_AND_ROOT),
    "gpt-bios": ("bios", GPT + BIOSBOOT + BOOT_AND_ROOT),
    "gpt-uefi": ("uefi", GPT + ESP + BOOT_AND_ROOT),
    "root-only": ("bios", "part / --fstype=ext4 --size=96\n"),
    # an msdos and a GPT disk: a kickstart has one disklabel for all its disks
    "boot-on-sdb": (
        "bios",
        Plan(
            disks=(
                DiskPlan("sda", 66 * MiB, "msdos", (PartitionPlan(1, "/", "ext4", MiB, 64 * MiB),)),
                DiskPlan(
                    "sdb",
                    51 * MiB,
                    "gpt",
                    (
                        PartitionPlan(1, None, "biosboot", MiB, MiB),
                        PartitionPlan(2, "/boot", "ext4", 2 * MiB, 48 * MiB),
                    ),
                ),
            )
        ),
    ),
    "hybrid": ("bios+uefi", GPT + BIOSBOOT + ESP + BOOT_AND_ROOT),
}


def variant_plan(name: str) -> Plan:
    layout = VARIANTS[name][1]
    return planned(layout) if isinstance(layout, str) else layout


def build_variant(tree: Path, work: Path, name: str, **settings) -> tuple[Built, dict]:
    firmware = VARIANTS[name][0]
    built = make_disks(tree, work / "in", variant_plan(name))
    result = bootloader.install(
        built.disks,
        built.plan,
        {**SETTINGS, **settings},
        [str(tree)],
        firmware,
        str(work / "out"),
        "test-seed",
    )
    return built, result


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _debugfs_cat(image: str, offset: int, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
        capture_output=True,
        check=True,
    ).stdout.decode()


@pytest.mark.slow
def test_install_msdos_inspected(tree: Path, tmp_path: Path) -> None:
    built, _ = build_variant(tree, tmp_path / "a", "msdos-bios")
    source = built.disks["disks"][0]
    before = _sha(source["file"])
    result = bootloader.install(
        built.disks,
        built.plan,
        {**SETTINGS, "append": "quiet", "timeout": 7},
        [str(tree)],
        "bios",
        str(tmp_path / "b"),
        "test-seed",
    )
    assert _sha(source["file"]) == before  # the cached input is never modified
    out = Path(result["disks"][0]["file"])
    assert out == tmp_path / "b" / "sda.raw"
    assert out.stat().st_size == Path(source["file"]).stat().st_size
    assert out.stat().st_blocks * 512 < out.stat().st_size  # still sparse
    data = out.read_bytes()
    boot_img = (Path("/usr/lib/grub/i386-pc/boot.img")).read_bytes()
    assert data[0x5C:0x64] == (1).to_bytes(8, "little")
    assert data[:0x5C] == boot_img[:0x5C]
    assert data[0x1BE:0x200] == Path(source["file"]).read_bytes()[0x1BE:0x200]  # table kept
    assert data[510:512] == b"\x55\xaa"
    version = next(tree.glob("boot/vmlinuz-*")).name.removeprefix("vmlinuz-")
    assert result["kernels"] == [version]
    assert result["cmdline"] == f"root=UUID={ROOT_UUID} ro console=ttyS0,115200 quiet"
    assert result["boot_disk"] == "sda" and result["firmware"] == "bios"
    assert result["grub"].startswith("GRUB modules: i386-pc from the host (/usr/lib/grub/")
    assert "; host grub-mkimage " in result["grub"]
    assert result["config"] == "/grub/grub.cfg on sda1"
    cfg = _debugfs_cat(str(out), MiB, "/grub/grub.cfg")
    assert "set timeout=7" in cfg
    assert f"\tlinux /vmlinuz-{version} root=UUID={ROOT_UUID} ro console=ttyS0,115200 quiet" in cfg
    assert f"\tinitrd /initramfs-{version}.img" in cfg
    assert f"search --no-floppy --fs-uuid --set=root {BOOT_UUID}" in cfg


@pytest.mark.slow
def test_install_is_reproducible(tree: Path, tmp_path: Path) -> None:
    built, first = build_variant(tree, tmp_path, "hybrid")
    second = bootloader.install(
        built.disks,
        built.plan,
        SETTINGS,
        [str(tree)],
        "bios+uefi",
        str(tmp_path / "again"),
        "test-seed",
    )
    assert _sha(first["disks"][0]["file"]) == _sha(second["disks"][0]["file"])


@pytest.mark.slow
def test_location_none_and_nombr(tree: Path, tmp_path: Path) -> None:
    built, result = build_variant(tree, tmp_path / "none", "msdos-bios", location="none")
    assert result["grub"] is None and result["notes"]
    assert _sha(result["disks"][0]["file"]) == _sha(built.disks["disks"][0]["file"])
    result = bootloader.install(
        built.disks,
        built.plan,
        {**SETTINGS, "nombr": True},
        [str(tree)],
        "bios",
        str(tmp_path / "nombr"),
        "seed",
    )
    out = Path(result["disks"][0]["file"]).read_bytes()
    assert out[:440] == Path(built.disks["disks"][0]["file"]).read_bytes()[:440]
    assert "set timeout=0" in _debugfs_cat(result["disks"][0]["file"], MiB, "/grub/grub.cfg")
    result = bootloader.install(
        built.disks,
        built.plan,
        {**SETTINGS, "location": "partition", "extlinux": True},
        [str(tree)],
        "bios",
        str(tmp_path / "partition"),
        "seed",
    )
    assert result["notes"] == [
        "bootloader --extlinux is not supported: GRUB 2 installed instead",
        "bootloader --location=partition: GRUB installed in the MBR instead",
    ]
    boot_img = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()
    assert Path(result["disks"][0]["file"]).read_bytes()[:0x5C] == boot_img[:0x5C]


@pytest.mark.slow
def test_gpt_without_biosboot_is_explained(tree: Path, tmp_path: Path) -> None:
    layout = planned(GPT + "part / --fstype=ext4 --size=64\n")
    built = make_disks(tree, tmp_path / "in", layout)
    with pytest.raises(BuildError, match="no BIOS boot partition.*part biosboot"):
        bootloader.install(
            built.disks, built.plan, SETTINGS, [str(tree)], "bios", str(tmp_path / "out"), "seed"
        )
    assert not (tmp_path / "out").exists()  # checked before copying anything
    with pytest.raises(BuildError, match="EFI system partition"):
        bootloader.install(
            built.disks, built.plan, SETTINGS, [str(tree)], "uefi", str(tmp_path / "out"), "seed"
        )


@pytest.mark.slow
@pytest.mark.boot
def test_boot_bls_entry_with_the_trees_grub(tree: Path, tmp_path: Path) -> None:
    """The bundled kernel moved where systemd's kernel-install puts it (an entry-token
    directory) with a BLS entry carrying a build host's options, and GRUB modules of the
    tree's own: the image boots that entry, with ksbake's root and console."""
    work_tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(tree), str(work_tree)], check=True)
    (kernel,) = kernel_list.find_kernels(MergedTree([work_tree]))
    token = work_tree / "boot" / MID / kernel.version
    token.mkdir(parents=True)
    (work_tree / "boot" / kernel.vmlinuz).rename(token / "linux")
    assert kernel.initrd
    (work_tree / "boot" / kernel.initrd).rename(token / "initrd")
    _touch(
        work_tree / f"boot/loader/entries/{MID}-{kernel.version}.conf",
        f"title BLS Linux ({kernel.version})\nversion {kernel.version}\n"
        f"linux /boot/{MID}/{kernel.version}/linux\ninitrd /{MID}/{kernel.version}/initrd\n"
        "options $kernelopts root=UUID=00000000-dead-beef-0000-000000000000 ro console=tty0\n"
        f"machine-id {MID}\n".encode(),
    )
    _tree_grub(work_tree, "i386-pc", b"copied-from-the-host")
    built, result = build_variant(work_tree, tmp_path / "w", "msdos-bios")
    assert result["grub_modules"]["i386-pc"]["from"] == "tree"
    assert result["entries"] == [
        {
            "title": f"BLS Linux ({kernel.version})",
            "version": kernel.version,
            "source": f"/boot/loader/entries/{MID}-{kernel.version}.conf",
            "id": f"bls-{MID}-{kernel.version}",
        }
    ]
    booted = qemu.boot(
        [Path(d["file"]) for d in result["disks"]],
        firmware="bios",
        marker="KSBAKE-BOOT-OK",
        timeout=180,
        log=tmp_path / "serial.log",
        boot_disk=0,
        wait_exit=True,
    )
    print(f"\nBOOT BLS entry (tree's GRUB): KSBAKE-BOOT-OK after {booted.seconds:.1f} s")
    mounts = {mnt: fstype for _, mnt, fstype, _ in booted.mounts()}
    assert mounts.get("/") == "ext4" and mounts.get("/boot") == "ext4", booted.log_text[-3000:]


BOOTS = [
    # (variant, firmware to boot with, index of the disk to boot, extra settings)
    ("msdos-bios", "bios", 0, {}),
    ("gpt-bios", "bios", 0, {}),
    ("gpt-uefi", "uefi", 0, {}),
    ("root-only", "bios", 0, {"password": "secret", "timeout": 1}),
    ("boot-on-sdb", "bios", 1, {}),
    ("hybrid", "bios", 0, {}),
    ("hybrid", "uefi", 0, {}),
]


@pytest.mark.slow
@pytest.mark.boot
@pytest.mark.parametrize(
    ("variant", "firmware", "boot_disk", "extra"),
    BOOTS,
    ids=[f"{v}-{f}" for v, f, _, _ in BOOTS],
)
def test_boot(
    tree: Path, tmp_path: Path, variant: str, firmware: str, boot_disk: int, extra: dict
) -> None:
    built, result = build_variant(tree, tmp_path, variant, **extra)
    expected_disk = "sdb" if variant == "boot-on-sdb" else "sda"
    assert result["boot_disk"] == expected_disk
    for source, copy in zip(built.disks["disks"], result["disks"], strict=True):
        if source["name"] != expected_disk:  # no boot code on the other disks
            with open(source["file"], "rb") as a, open(copy["file"], "rb") as b:
                assert a.read(440) == b.read(440)
    booted = qemu.boot(
        [Path(d["file"]) for d in result["disks"]],
        firmware=firmware,
        marker="KSBAKE-BOOT-OK",
        timeout=180,
        log=tmp_path / "serial.log",
        boot_disk=boot_disk,
        wait_exit=True,
    )
    print(f"\nBOOT {variant} ({firmware}): KSBAKE-BOOT-OK after {booted.seconds:.1f} s")
    mounts = {mnt: fstype for _, mnt, fstype, _ in booted.mounts()}
    assert mounts.get("/") == "ext4", booted.log_text[-3000:]
    for part in (p for disk in variant_plan(variant).disks for p in disk.partitions):
        if part.mountpoint:
            want = "vfat" if part.fstype == "efi" else part.fstype
            assert mounts.get(part.mountpoint) == want, booted.log_text[-3000:]
    assert f"root=UUID={ROOT_UUID}" in result["cmdline"]
