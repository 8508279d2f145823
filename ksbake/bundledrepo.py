"""Build ksbake's bundled offline RPM repository from Debian packages.

No Fedora mirror is reachable from the machines ksbake is developed and tested on, so the
demo appliances and the tests install from a small RPM distribution that the project builds
itself: the spec files in ``repo/specs`` turned into RPMs with rpmbuild, the userland taken
from Debian's ``busybox-static`` and the kernel from ``linux-image-amd64`` (only the modules
a disk boot needs, plus a busybox initramfs that also holds ``lvm`` from Debian's ``lvm2``
and the shared libraries it needs, taken from their Debian packages too), indexed with
createrepo_c and ``repo/comps.xml``.

Result (``build(out_dir, debs_dir)``)::

    out_dir/
        base/Packages/*.rpm       every package
        base/repodata/            primary/filelists/other + comps (groups core, docs, ovirt)
        updates/Packages/*.rpm    only rootfiles 1.0-2: a stand-in for a nightly update
        updates/repodata/

The build runs in ``.<name>.staging`` next to ``out_dir`` and is renamed into place only when
complete, so ``out_dir`` is never half-built; a killed build leaves the staging directory,
which the next build removes. One build per ``out_dir`` at a time (the caller serializes).

Same inputs give the same bytes: SOURCE_DATE_EPOCH comes from each spec's changelog, file
mtimes are clamped to it, the build host is fixed, the initramfs is written here with fixed
metadata, .rpm mtimes are pinned and the repodata revision and timestamps are fixed.

``debs_dir`` caches the downloaded .deb files (``apt-get download``), one per Debian version.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ksbake.errors import BuildError, KsbakeError, ToolError
from ksbake.paths import Paths
from ksbake.run import run, which

log = logging.getLogger("ksbake.bundledrepo")

REPO_SOURCE = Path(__file__).resolve().parent.parent / "repo"
SPECS_DIR = REPO_SOURCE / "specs"
FILES_DIR = REPO_SOURCE / "files"
COMPS_FILE = REPO_SOURCE / "comps.xml"

# 2024-01-01 00:00 UTC, the date of the specs' first changelog entries: the mtime of every
# initramfs entry and .rpm file and the repodata revision. (rpmbuild takes each package's
# SOURCE_DATE_EPOCH from its spec's newest changelog entry.)
SOURCE_DATE_EPOCH = 1704067200

BASE_PACKAGES = (
    "filesystem",
    "setup",
    "busybox",
    "kernel",
    "ksbake-init",
    "ksbake-release",
    "rootfiles",
    "ksbake-docs",
    "ksbake-extras",
    "ksbake-weak",
    "ovirt-wui",
)
# The updates repository: (spec name, extra rpmbuild arguments) for each newer package.
UPDATE_PACKAGES = (("rootfiles", ("--with", "update")),)

BUSYBOX_DEB = "busybox-static"
KERNEL_META_DEB = "linux-image-amd64"
# lvm (for an LVM root) comes from lvm2; Debian ships no static build of it, so the shared
# libraries it loads come from the library packages lvm2 depends on (directly or not).
LVM_DEB = "lvm2"
LVM_BINARY = "sbin/lvm"  # inside the .deb (bookworm has not moved it to /usr yet)
# Where the initramfs has them: ld.so searches /lib/x86_64-linux-gnu by default (no
# ld.so.cache needed) and lvm's ELF interpreter is /lib64/ld-linux-x86-64.so.2.
INITRAMFS_LVM = "bin/lvm"
INITRAMFS_LIBDIR = "lib/x86_64-linux-gnu"
# Directories of the extracted .debs where a soname is looked for (bookworm still ships
# libraries in /lib; some are in /usr/lib).
DEB_LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")

# Modules the initramfs loads, in this order. Their dependencies (libata, scsi_mod,
# virtio_ring, fat, ...) come along through modules.dep.
INITRAMFS_MODULES = (
    "crc32c_generic",  # ext4's and xfs's crc32c: a softdep, which busybox modprobe ignores
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ata_piix",
    "ahci",
    "ata_generic",
    "vfat",
    "nls_ascii",  # vfat's default iocharset in Debian's kernel config
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
)
# Root filesystems the initramfs tries in this order when the kernel command line has no
# rootfstype= (the one whose superblock magic /init recognizes first); only the module of
# the one that mounts is loaded (xfs.ko alone takes about a second to load under TCG).
# Their dependencies: jbd2, mbcache, crc16, libcrc32c; btrfs's: xor, raid6_pq,
# zstd_compress, libcrc32c.
ROOT_FILESYSTEMS = ("ext4", "xfs", "btrfs")
# In the initramfs and the module tree but loaded only when needed: dm_mod by /init for an
# LVM root; btrfs's checksum softdeps (busybox modprobe ignores softdeps; crc32c_generic is
# loaded anyway) by the kernel through modules.alias when a filesystem uses that checksum.
ON_DEMAND_MODULES = ("dm_mod", "blake2b_generic", "xxhash_generic")
# Parts of the kernel .deb that hold those modules and their dependencies; the rest (most
# of the 400 MB) is never written to disk; a dependency outside them is reported.
KERNEL_MEMBERS = (
    "./boot/vmlinuz-*",
    "./boot/System.map-*",
    "./boot/config-*",
    "./lib/modules/*/modules.builtin",
    "./lib/modules/*/modules.builtin.modinfo",
    "./lib/modules/*/modules.order",
    "./lib/modules/*/kernel/arch/x86/crypto",
    "./lib/modules/*/kernel/block",
    "./lib/modules/*/kernel/crypto",
    "./lib/modules/*/kernel/drivers/ata",
    "./lib/modules/*/kernel/drivers/block",
    "./lib/modules/*/kernel/drivers/md",
    "./lib/modules/*/kernel/drivers/scsi",
    "./lib/modules/*/kernel/drivers/virtio",
    "./lib/modules/*/kernel/fs",
    "./lib/modules/*/kernel/lib",
)

# Macros for every rpmbuild run: reproducible output, no post-install processing (Debian's
# rpm would strip and compress, and add /usr/lib/.build-id links for the ELF files).
RPM_MACROS = {
    "_buildhost": "ksbake",
    "source_date_epoch_from_changelog": "1",
    "clamp_mtime_to_source_date_epoch": "1",
    "use_source_date_epoch_as_buildtime": "1",
    "_build_id_links": "none",
    "debug_package": "%{nil}",
    "__os_install_post": "%{nil}",
    "_binary_payload": "w3.zstdio",
    "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
}


@dataclass(frozen=True)
class Deb:
    """A downloaded Debian package and its version mapped to RPM's epoch/version/release."""

    path: Path
    name: str
    version: str

    @property
    def evr(self) -> tuple[str, str, str]:
        return rpm_evr(self.version)


def rpm_evr(debian_version: str) -> tuple[str, str, str]:
    """Map a Debian version ``[epoch:]upstream[-revision]`` to RPM (epoch, version, release).

    RPM versions cannot contain '-', Debian upstream versions may: it becomes '_'.
    """
    epoch, _, rest = debian_version.rpartition(":")
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, "0"
    version = upstream.replace("-", "_")
    for part in (version, revision):
        if not re.fullmatch(r"[A-Za-z0-9._+~^]+", part):
            raise BuildError(f"cannot map Debian version '{debian_version}' to an RPM version")
    return epoch or "0", version, revision


# ---------------------------------------------------------------------------------------
# Debian packages


def _apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """The candidate version's control fields of each package, from apt's local lists."""
    out = run(
        ["apt-cache", "show", "--no-all-versions", *packages],
        what=f"looking up {', '.join(packages)} with apt-cache",
    ).stdout.decode()
    stanzas = {}
    for stanza in out.strip().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        stanzas[fields.get("Package", "")] = fields
    missing = [p for p in packages if p not in stanzas]
    if missing:
        raise ToolError(
            f"apt knows no package {', '.join(missing)}",
            hint="run 'apt-get update' once on this host",
        )
    return stanzas


def _wanted_debs(info: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """(package, version) of busybox-static and of the kernel that linux-image-amd64 names,
    from ``info`` (``_apt_show`` of at least those two).

    The meta package depends on exactly one linux-image-VER-amd64 (= version): that real
    package is what gets downloaded.
    """
    depends = info[KERNEL_META_DEB].get("Depends", "")
    match = re.search(r"(linux-image-[0-9][^\s,]*-amd64)(?: \(= ([^)\s]+)\))?", depends)
    if not match:
        raise BuildError(f"cannot find the kernel package in {KERNEL_META_DEB}'s '{depends}'")
    kernel, kernel_version = match.groups()
    if kernel_version is None:
        kernel_version = _apt_show(kernel)[kernel]["Version"]
    return [(BUSYBOX_DEB, info[BUSYBOX_DEB]["Version"]), (kernel, kernel_version)]


def _lvm_packages() -> list[str]:
    """lvm2 and every library package it depends on, transitively (one apt-cache run).

    Only ``lib*`` packages are followed (not dmsetup, dmeventd, lsb-base, gcc-12-base): what
    lvm loads is in those; of ``a | b`` only ``a``. Which of their files are needed is
    decided later from the ELF headers, so a library package too many costs a download,
    never initramfs space.
    """
    out = run(
        ["apt-cache", "depends", "--recurse", "--important", LVM_DEB],
        what=f"looking up the dependencies of {LVM_DEB} with apt-cache",
    ).stdout.decode()
    graph: dict[str, list[str]] = {}
    current: list[str] = []
    alternative = False
    for line in out.splitlines():
        if not line.startswith(" "):
            current = graph.setdefault(line.strip(), [])
            alternative = False
            continue
        match = re.fullmatch(r" ( |\|)(?:Pre)?Depends: (\S+)", line)
        if match is None:  # a provider of a virtual package
            continue
        if not alternative:
            current.append(match.group(2))
        alternative = match.group(1) == "|"
    if LVM_DEB not in graph:
        raise ToolError(f"apt knows no package {LVM_DEB}", hint="run 'apt-get update' once")
    found = {LVM_DEB}
    todo = [LVM_DEB]
    while todo:
        for dep in graph.get(todo.pop(), []):
            if dep.startswith("lib") and dep not in found:
                found.add(dep)
                todo.append(dep)
    return sorted(found)


def _deb_file(debs_dir: Path, package: str, version: str) -> Path:
    return debs_dir / f"{package}_{version.replace(':', '%3a')}_amd64.deb"


def _fetch_debs(wanted: list[tuple[str, str]], debs_dir: Path) -> list[Deb]:
    """The cached .debs of ``wanted`` (package, version), downloading the absent ones.

    The downloads (one apt-get run) go to a temporary directory and are renamed into the
    cache only when complete, so an interrupted download is never taken for a cached .deb.
    """
    missing = [(p, v) for p, v in wanted if not _deb_file(debs_dir, p, v).exists()]
    if missing:
        log.info("downloading %s", ", ".join(f"{p} {v}" for p, v in missing))
        tmp = debs_dir / f".download-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            run(
                ["apt-get", "download", "-q", *(f"{p}={v}" for p, v in missing)],
                cwd=tmp,
                what=f"downloading {', '.join(p for p, _ in missing)} "
                "(needs the Debian package mirror)",
            )
            for downloaded in tmp.glob("*.deb"):
                fields = run(
                    ["dpkg-deb", "-f", downloaded, "Package", "Version"],
                    what=f"reading {downloaded.name}",
                ).stdout.decode()
                got = dict(re.findall(r"^(Package|Version): (\S+)$", fields, re.MULTILINE))
                downloaded.rename(_deb_file(debs_dir, got["Package"], got["Version"]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    debs = []
    for package, version in wanted:
        deb = _deb_file(debs_dir, package, version)
        if not deb.exists():
            raise BuildError(f"apt-get download did not fetch {package} {version}")
        control = run(["dpkg-deb", "-f", deb, "Package", "Version"], what=f"reading {deb}")
        if f"Package: {package}\nVersion: {version}\n" != control.stdout.decode():
            raise BuildError(f"{deb} is not {package} {version}: remove it and build again")
        debs.append(Deb(deb, package, version))
    return debs


@dataclass(frozen=True)
class Debs:
    """The .debs the repository is made of."""

    busybox: Deb
    kernel: Deb
    lvm: tuple[Deb, ...]  # lvm2 and its library packages


def fetch_debs(debs_dir: Path) -> Debs:
    """The busybox-static, kernel and lvm2 (+ libraries) .debs, cached in ``debs_dir``."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    lvm_names = _lvm_packages()
    info = _apt_show(BUSYBOX_DEB, KERNEL_META_DEB, *lvm_names)
    main = _wanted_debs(info)
    lvm = [(name, info[name]["Version"]) for name in lvm_names]
    fetched = _fetch_debs(main + lvm, debs_dir)
    busybox, kernel = fetched[: len(main)]
    return Debs(busybox, kernel, tuple(fetched[len(main) :]))


def _dying_with_build(tool: str) -> list[str]:
    """The start of an argv that runs ``tool`` so that it dies if the build is killed.

    Otherwise a long-running child of a killed build (tar, rpmbuild) would go on writing
    into the staging directory that the next build is removing.
    """
    return [which("setpriv"), "--pdeathsig", "KILL", which(tool)]


def _extract_deb_members(deb: Path, dest: Path, patterns: tuple[str, ...]) -> None:
    """Extract only the data members matching ``patterns``: ``dpkg-deb --fsys-tarfile | tar``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as producer_err:
        producer = subprocess.Popen(
            [*_dying_with_build("dpkg-deb"), "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=producer_err,
        )
        assert producer.stdout is not None
        consumer = subprocess.run(
            [*_dying_with_build("tar"), "-x", "-C", str(dest), "--wildcards", *patterns],
            stdin=producer.stdout,
            capture_output=True,
            check=False,
        )
        producer.stdout.close()
        if producer.wait() != 0 or consumer.returncode != 0:
            producer_err.seek(0)
            err = (producer_err.read() + consumer.stderr).decode(errors="replace").strip()
            raise ToolError(f"extracting {deb.name} failed: {err}")


# ---------------------------------------------------------------------------------------
# busybox


def prepare_busybox(deb: Deb, src: Path, work: Path) -> None:
    """Put the busybox binary, its applet list and Debian's copyright into ``src``.

    Applets go to /usr/bin or /usr/sbin (usrmerge). busybox's init is left out because
    ksbake-init owns /usr/sbin/init, and linuxrc because it lives outside /usr.
    """
    run(["dpkg-deb", "-x", deb.path, work], what=f"extracting {deb.path.name}")
    binary = work / "bin" / "busybox"
    listing = run([binary, "--list-full"], what="listing busybox applets").stdout.decode()
    applets = set()
    for entry in listing.split():
        directory, _, name = entry.rpartition("/")
        if name in ("busybox", "init", "linuxrc"):
            continue
        if directory in ("bin", "usr/bin"):
            applets.add(f"/usr/bin/{name}")
        elif directory in ("sbin", "usr/sbin"):
            applets.add(f"/usr/sbin/{name}")
        else:
            raise BuildError(f"busybox applet in an unexpected place: {entry}")
    shutil.copy2(binary, src / "busybox")
    (src / "applets").write_text("".join(f"{a}\n" for a in sorted(applets)))
    shutil.copy2(work / "usr/share/doc/busybox-static/copyright", src / "copyright")


# ---------------------------------------------------------------------------------------
# lvm and its shared libraries


def _elf_dynamic(path: Path) -> tuple[str | None, list[str]]:
    """(ELF interpreter, DT_NEEDED sonames) of a 64-bit little-endian ELF file.

    Read here rather than with readelf (binutils) so the build needs no other host tool.
    """
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise BuildError(f"{path.name} is not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interp = None
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, size) of PT_LOAD segments
    dynamic = (0, 0)
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            interp = data[offset : offset + filesz].rstrip(b"\0").decode()
        elif p_type == 1:  # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
    needed: list[int] = []
    strtab = -1
    for entry in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, entry)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            needed.append(value)
        elif tag == 5:  # DT_STRTAB: its address
            strtab = value
    if not needed:
        return interp, []
    base = next(
        (
            strtab - vaddr + offset
            for vaddr, offset, size in loads
            if vaddr <= strtab < vaddr + size
        ),
        None,
    )
    if base is None:
        raise BuildError(f"{path.name}: cannot locate the dynamic string table")
    names = [data[base + n : data.index(b"\0", base + n)].decode() for n in needed]
    return interp, names


def _inside(root: Path, path: Path) -> Path:
    """``path`` (under ``root``) with its symlinks resolved as if ``root`` were /."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
        path = Path(os.path.normpath(path))
    raise BuildError(f"too many levels of symbolic links at {path}")


def prepare_lvm(debs: tuple[Deb, ...], work: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The files that run lvm in the initramfs, from the lvm2 and library .debs.

    Returns ({initramfs path: file}, {Debian package: its copyright file}) for lvm, its ELF
    interpreter and every shared library it loads (the DT_NEEDED closure), each found in the
    extracted .debs, never on the host: a soname that none of them ships is an error.
    """
    unpacked = {}
    for deb in debs:
        unpacked[deb.name] = work / deb.name
        unpacked[deb.name].mkdir(parents=True)
        run(["dpkg-deb", "-x", deb.path, unpacked[deb.name]], what=f"extracting {deb.path.name}")

    def find(*candidates: str) -> tuple[str, Path] | None:
        """(package, regular file) of the first candidate path that a .deb ships."""
        for name, tree in unpacked.items():
            for rel in candidates:
                path = tree / rel
                if (path.exists() or path.is_symlink()) and _inside(tree, path).is_file():
                    return name, _inside(tree, path)
        return None

    files: dict[str, Path] = {}
    used: set[str] = set()

    def add(dest: str, what: str, *candidates: str) -> Path:
        found = find(*candidates)
        if found is None:
            shipped = ", ".join(d.name for d in debs)
            raise BuildError(f"{what} is in none of the .debs of {shipped}")
        used.add(found[0])
        files[dest] = found[1]
        return found[1]

    todo = [add(INITRAMFS_LVM, "lvm", LVM_BINARY)]
    seen: set[str] = set()
    while todo:
        interp, needed = _elf_dynamic(todo.pop())
        if interp is not None and interp.lstrip("/") not in files:
            add(interp.lstrip("/"), f"lvm's interpreter {interp}", interp.lstrip("/"))
        for soname in sorted(set(needed) - seen):
            seen.add(soname)
            dest = f"{INITRAMFS_LIBDIR}/{soname}"
            todo.append(
                add(dest, f"{soname} (needed by lvm)", *(f"{d}/{soname}" for d in DEB_LIBDIRS))
            )
    copyrights = {
        name: unpacked[name] / "usr/share/doc" / name / "copyright" for name in sorted(used)
    }
    for name, path in copyrights.items():
        if not path.is_file():
            raise BuildError(f"{name}'s .deb has no /usr/share/doc/{name}/copyright")
    return files, copyrights


# ---------------------------------------------------------------------------------------
# kernel


def _modname(path: str) -> str:
    """modprobe's name of a module file: the basename without .ko, '-' read as '_'."""
    return Path(path).name.removesuffix(".ko").replace("-", "_")


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to ``moddir``) of the ``wanted`` modules and all they depend on.

    Follows the ``depends`` field that the kernel build recorded in each module, so a
    dependency outside the extracted parts of the .deb is an error, never a silent gap.
    """
    index = {_modname(p.name): p for p in moddir.rglob("*.ko")}
    found: set[str] = set()
    todo = set(wanted)
    while todo:
        missing = sorted(todo - index.keys())
        if missing:
            raise BuildError(
                f"kernel modules not found in the extracted kernel package: {', '.join(missing)}"
            )
        found |= todo
        files = [index[name] for name in sorted(todo)]
        out = run(["modinfo", "-F", "depends", *files], what="reading module dependencies")
        lines = out.stdout.decode().split("\n")[: len(files)]
        needed = {_modname(dep) for line in lines for dep in line.split(",") if dep}
        todo = needed - found
    return sorted(index[name].relative_to(moddir).as_posix() for name in found)


def _depmod(base: Path, kver: str) -> None:
    """Write modules.dep and the other indexes for ``base/lib/modules/kver`` (host depmod)."""
    run(["depmod", "-b", base, kver], what="running depmod")


def prepare_kernel(
    deb: Deb, src: Path, work: Path, busybox: Path, lvm_debs: tuple[Deb, ...]
) -> str:
    """Build the kernel package's tree in ``src/root`` and return the kernel version (uname -r).

    The tree: /boot/{vmlinuz,System.map,config,initramfs}-VER, /usr/lib/modules/VER with
    only the modules of INITRAMFS_MODULES, ROOT_FILESYSTEMS and ON_DEMAND_MODULES, their
    dependencies and depmod's indexes (the same set is in the initramfs), and the Debian
    copyright files of what the initramfs holds besides the kernel's modules in
    /usr/share/licenses/kernel/initramfs/PACKAGE/copyright.
    """
    with ThreadPoolExecutor(1) as pool:  # lvm's .debs are unpacked alongside the kernel's
        lvm_job = pool.submit(prepare_lvm, lvm_debs, work / "lvm")
        unpacked = work / "unpacked"
        _extract_deb_members(deb.path, unpacked, KERNEL_MEMBERS)
        (kver,) = (p.name for p in (unpacked / "lib/modules").iterdir())
        full = unpacked / "lib/modules" / kver
        wanted = INITRAMFS_MODULES + ROOT_FILESYSTEMS + ON_DEMAND_MODULES
        modules = _module_closure(full, wanted)

        # The cut-down module tree, with depmod's indexes made for exactly these modules.
        modbase = work / "modtree"
        moddir = modbase / "lib/modules" / kver
        for rel in [*modules, "modules.builtin", "modules.builtin.modinfo", "modules.order"]:
            (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(full / rel, moddir / rel)
        _depmod(modbase, kver)
        lvm_files, copyrights = lvm_job.result()
    # prepare_busybox put Debian's copyright file next to the binary
    copyrights = {BUSYBOX_DEB: busybox.parent / "copyright", **copyrights}

    root = src / "root"
    (root / "boot").mkdir(parents=True)
    for kind in ("vmlinuz", "System.map", "config"):
        shutil.copy2(unpacked / "boot" / f"{kind}-{kver}", root / "boot" / f"{kind}-{kver}")
    initramfs = make_initramfs(busybox, modbase, modules, lvm_files)
    (root / "boot" / f"initramfs-{kver}.img").write_bytes(initramfs)
    (root / "usr/lib/modules").mkdir(parents=True)
    moddir.rename(root / "usr/lib/modules" / kver)
    licenses = root / "usr/share/licenses/kernel/initramfs"
    for name, path in sorted(copyrights.items()):
        (licenses / name).mkdir(parents=True)
        shutil.copyfile(path, licenses / name / "copyright")
    return kver


class _Cpio:
    """A minimal writer of the cpio "newc" format that the kernel unpacks as initramfs.

    Written here rather than with cpio(1) so every entry has fixed metadata (root-owned,
    mtime SOURCE_DATE_EPOCH, sequential inodes) and /dev/console can be added without root.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ino = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        self.ino += 1
        nlink = 2 if (mode & 0o170000) == 0o040000 else 1
        fields = (self.ino, mode, 0, 0, nlink, SOURCE_DATE_EPOCH, len(data), 0, 0, *rdev)
        encoded = name.encode() + b"\0"
        header = b"070701" + b"".join(b"%08X" % f for f in (*fields, len(encoded), 0))
        self.chunks += [header, encoded, b"\0" * (-(len(header) + len(encoded)) % 4)]
        self.chunks += [data, b"\0" * (-len(data) % 4)]

    def dir(self, name: str) -> None:
        self.add(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self.add(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self.add(name, 0o120777, target.encode())

    def close(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.chunks)


def make_initramfs(
    busybox: Path, modbase: Path, modules: list[str], lvm_files: dict[str, Path]
) -> bytes:
    """The gzip-compressed initramfs: busybox, /init, the modules and what to load when,
    lvm with its ELF interpreter and shared libraries (``lvm_files``: path -> file)."""
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "newroot", "proc", "run", "sys", "tmp"):
        cpio.dir(d)
    cpio.symlink("sbin", "bin")  # the kernel calls /sbin/modprobe for request_module()
    cpio.add("dev/console", 0o020600, rdev=(5, 1))
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.file("init", (FILES_DIR / "kernel" / "initramfs-init").read_bytes(), 0o755)
    # busybox modprobe accepts the file names ("nls_iso8859-1"), not always the '_' form.
    names = {_modname(path): Path(path).name.removesuffix(".ko") for path in modules}
    load_order = "".join(f"{names[m]}\n" for m in INITRAMFS_MODULES)
    cpio.file("etc/initramfs-modules", load_order.encode())
    cpio.file("etc/initramfs-rootfs", " ".join(ROOT_FILESYSTEMS).encode() + b"\n")
    for path in sorted(modbase.rglob("*")):  # lib/, lib/modules/VER/...
        name = path.relative_to(modbase).as_posix()
        if path.is_dir():
            cpio.dir(name)
        else:
            cpio.file(name, path.read_bytes())
    # lvm: bin/lvm, lib64/ld-linux-x86-64.so.2, lib/x86_64-linux-gnu/*.so.* (parents first;
    # "lib" came with the modules)
    # the same file twice (ld.so: lvm's interpreter and libc's DT_NEEDED) is a symlink.
    made = {"bin", "lib"}
    written: dict[Path, str] = {}
    for name in sorted(lvm_files):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in made:
                cpio.dir(parent)
                made.add(parent)
        source = lvm_files[name]
        if source in written:
            cpio.symlink(name, os.path.relpath(written[source], os.path.dirname(name)))
        else:
            cpio.file(name, source.read_bytes(), 0o755)
            written[source] = name
    return gzip.compress(cpio.close(), compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------------------
# rpmbuild and createrepo_c


def _rpmbuild(
    spec: str, src: Path, rpmdir: Path, work: Path, defines: dict[str, str], extra: tuple
) -> None:
    """Build one binary RPM from repo/specs/SPEC.spec with sources from ``src``."""
    topdir = work / "rpmbuild" / rpmdir.parent.name / spec
    topdir.mkdir(parents=True)
    macros = {
        **RPM_MACROS,
        "_topdir": str(topdir),
        "_sourcedir": str(src),
        "_rpmdir": str(rpmdir),
        **defines,
    }
    argv: list[str | Path] = [*_dying_with_build("rpmbuild"), "-bb", "--quiet", *extra]
    for name, value in macros.items():
        argv += ["--define", f"{name} {value}"]
    argv.append(SPECS_DIR / f"{spec}.spec")
    # HOME: keep the user's ~/.rpmmacros out. No SOURCE_DATE_EPOCH in the environment: it
    # would override the one rpmbuild takes from the spec's changelog.
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(topdir),
        "LC_ALL": "C",
        "TZ": "UTC",
    }
    run(argv, env=env, what=f"building the {spec} package")


def _createrepo(repo: Path, comps: Path | None) -> None:
    """Index ``repo`` with fixed timestamps (pinned .rpm mtimes, revision) for equal bytes."""
    for rpm in repo.glob("Packages/*.rpm"):
        os.utime(rpm, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    argv: list[str | Path] = [
        "createrepo_c",
        "--quiet",
        "--no-database",
        "--revision",
        str(SOURCE_DATE_EPOCH),
        "--set-timestamp-to-revision",
        "--workers",
        "1",
    ]
    if comps is not None:
        argv += ["--groupfile", comps]
    run([*argv, repo], what=f"indexing {repo.name} with createrepo_c")


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Log how long a step took."""
    start = time.monotonic()
    yield
    log.info("%s: %.1f s", what, time.monotonic() - start)


def _build_into(result: Path, work: Path, debs_dir: Path) -> None:
    """Build the base and updates repositories under ``result`` (scratch space in ``work``)."""
    with _step("fetching .debs"):
        debs = fetch_debs(debs_dir)
    busybox_deb, kernel_deb = debs.busybox, debs.kernel

    srcs = {}
    for spec in BASE_PACKAGES:
        srcs[spec] = work / "SOURCES" / spec
        if (FILES_DIR / spec).is_dir():
            shutil.copytree(FILES_DIR / spec, srcs[spec])
        else:
            srcs[spec].mkdir(parents=True)

    with _step("preparing busybox"):
        prepare_busybox(busybox_deb, srcs["busybox"], work / "busybox-deb")
    bb_epoch, bb_version, bb_release = busybox_deb.evr
    defines = {
        "busybox": {
            "bb_epoch": bb_epoch,
            "bb_version": bb_version,
            "bb_release": bb_release,
            "bb_debian_version": busybox_deb.version,
        },
    }
    jobs: list[tuple[str, Path, tuple[str, ...]]]
    jobs = [(spec, result / "base" / "Packages", ()) for spec in BASE_PACKAGES]
    jobs += [(spec, result / "updates" / "Packages", extra) for spec, extra in UPDATE_PACKAGES]
    for _, rpmdir, _ in jobs:
        rpmdir.mkdir(parents=True, exist_ok=True)  # parallel rpmbuilds race to create it

    def kernel_package() -> None:
        with _step("preparing the kernel and initramfs"):
            kver = prepare_kernel(
                kernel_deb,
                srcs["kernel"],
                work / "kernel-deb",
                srcs["busybox"] / "busybox",
                debs.lvm,
            )
        _, k_version, k_release = kernel_deb.evr
        kernel_defines = {
            "kver": kver,
            "k_version": k_version,
            "k_release": k_release,
            "k_debian_version": kernel_deb.version,
        }
        _rpmbuild("kernel", srcs["kernel"], result / "base" / "Packages", work, kernel_defines, ())

    # The kernel (mostly unpacking the .deb, one core) is built alongside the other packages.
    with _step("building the packages"), ThreadPoolExecutor(os.cpu_count()) as pool:
        futures = [pool.submit(kernel_package)]
        futures += [
            pool.submit(_rpmbuild, spec, srcs[spec], rpmdir, work, defines.get(spec, {}), extra)
            for spec, rpmdir, extra in jobs
            if spec != "kernel"
        ]
        for future in futures:
            future.result()

    with _step("createrepo_c"):
        _createrepo(result / "base", COMPS_FILE)
        _createrepo(result / "updates", None)


def build(out_dir: Path, debs_dir: Path) -> None:
    """Build the bundled repository into ``out_dir/base`` and ``out_dir/updates``.

    Replaces an existing ``out_dir`` only once the new one is complete; a failed build
    leaves ``out_dir`` as it was and removes its staging directory.
    """
    out_dir = Path(out_dir).absolute()
    debs_dir = Path(debs_dir).absolute()
    staging = out_dir.parent / f".{out_dir.name}.staging"
    if staging.exists():
        log.info("removing %s left by an interrupted build", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    start = time.monotonic()
    try:
        _build_into(staging / "result", staging / "work", debs_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rename(staging / "previous")
    (staging / "result").rename(out_dir)
    shutil.rmtree(staging)
    log.info("bundled repository built in %s in %.1f s", out_dir, time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    """``python -m ksbake.bundledrepo OUT_DIR [--debs DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ksbake.bundledrepo",
        description="Build ksbake's bundled offline RPM repository: OUT_DIR/base, OUT_DIR/updates.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument(
        "--debs",
        type=Path,
        metavar="DIR",
        help="cache of downloaded .deb files (default: OUT_DIR/../debs)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s"
    )
    debs = args.debs or args.out_dir.absolute().parent / "debs"
    try:
        build(args.out_dir, debs)
    except KsbakeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the doit step: the repository as a store object ---------------------------------------

CODE_VERSION = 2


def sources_key(paths: Paths) -> str:
    """Key of the repository: every file under repo/ and the builder's CODE_VERSION (bump it
    when a change to this module changes the repository's bytes)."""
    from ksbake.hashing import file_digest, layer_key

    files = [p for p in paths.repo_sources.rglob("*") if p.is_file()]
    files = sorted(p for p in files if paths.distro_sources not in p.parents)
    digests = {str(p.relative_to(paths.root)): file_digest(p) for p in files}
    return layer_key("repo", CODE_VERSION, digests)


def step(paths: Paths) -> None:
    """Obtain the repository from the store (build it if absent) and point
    ``paths.bundled_repo`` (what ``$ksbake_repo`` expands to) at it, atomically."""
    from ksbake import report
    from ksbake.store import Store

    started = time.monotonic()
    key = sources_key(paths)
    obtained = Store(paths.store).obtain(
        "repo", key, lambda staging: build(staging / "repo", paths.debs)
    )
    point_link(paths.bundled_repo, obtained.path / "repo")
    report.record(paths, "-", "repo", key, obtained.built, time.monotonic() - started)


def point_link(link: Path, target: Path) -> None:
    """Point the stable path ``link`` at a store object's ``target``, atomically."""
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
