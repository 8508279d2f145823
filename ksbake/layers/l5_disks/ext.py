"""ext2/3/4: ``mkfs.extN -d VIEW -E offset=...`` builds each filesystem inside its partition."""

from __future__ import annotations

import os
import re
import shlex
import stat
import tempfile
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.layers.l5_disks.model import Content, Fs, Ids, _lstat_in, _too_big_error, host_full, log
from ksbake.layers.l5_disks.sparse import _sparse
from ksbake.layout import MiB, PartitionPlan
from ksbake.run import run


def _split_opts(part: PartitionPlan) -> list[str]:
    try:
        return shlex.split(part.mkfsoptions or "")
    except ValueError as exc:
        raise BuildError(f"--mkfsoptions {part.mkfsoptions!r}: {exc}") from None


def _take(args: list[str], flag: str) -> tuple[list[str], list[str]]:
    """Remove ``flag VALUE`` / ``flagVALUE`` from ``args``; return (rest, values)."""
    rest: list[str] = []
    values: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == flag:
            values.append(next(it, ""))
        elif arg.startswith(flag) and len(arg) > len(flag) and not arg.startswith("--"):
            values.append(arg[len(flag) :])
        else:
            rest.append(arg)
    return rest, values


def _forbid(fs: Fs, args: list[str], flags: tuple[str, ...], why: str) -> None:
    for arg in args:
        if any(arg == f or (arg.startswith(f) and not f.startswith("--")) for f in flags):
            raise BuildError(
                f"{fs.where}: --mkfsoptions may not contain {arg!r}: {why}",
                hint="remove it from the kickstart's part line",
            )


def _ext_argv(fs: Fs, ids: Ids, offset: int | None, source: Path | None) -> list[str]:
    p = fs.part
    user = _split_opts(p)
    _forbid(fs, user, ("-U", "-d"), "ksbake sets the UUID and the contents")
    user, user_e = _take(user, "-E")
    for value in user_e:
        if any(v.strip().startswith("offset") for v in value.split(",")):
            raise BuildError(f"{fs.where}: --mkfsoptions may not set the offset")
    ext = [
        *([f"offset={offset}"] if offset is not None else []),
        f"hash_seed={ids.hash_seed(fs.disk.name, p.number, fs.lv)}",
        "root_owner=0:0",
        "lazy_itable_init=1",
        "lazy_journal_init=1",
        "assume_storage_prezeroed=1",
        *user_e,
    ]
    argv = [f"mkfs.{p.fstype}", "-q", "-F", "-U", str(fs.uuid), "-E", ",".join(ext)]
    if p.label:
        argv += ["-L", p.label]
    if p.fsprofile:
        argv += ["-T", p.fsprofile]
    argv += user
    if source is not None:
        argv += ["-d", str(source)]
    return argv


def _ext_env(epoch: int) -> dict[str, str]:
    return {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}


def _prepare_ext(fs: Fs, ids: Ids, epoch: int, scratch: Path) -> None:
    """Dry run: the same mkfs, empty, on a sparse temp file; dumpe2fs tells the free room."""
    p = fs.part
    tmp = _sparse(scratch / f"ext-{fs.ident}", p.size)
    try:
        run(
            [*_ext_argv(fs, ids, None, None), str(tmp), f"{p.size // 1024}k"],
            env=_ext_env(epoch),
            what=f"making {p.fstype} on {fs.where}",
        )
        info = _dumpe2fs(str(tmp))
    finally:
        tmp.unlink()
    bs = int(info["Block size"])
    free_blocks = int(info["Free blocks"])
    free_inodes = int(info["Free inodes"])
    extents = "extent" in info.get("Filesystem features", "").split()
    c = fs.content
    need_blocks = ext_blocks(c, bs, extents)
    fs.capacity = free_blocks * bs
    fs.need = need_blocks * bs
    used = p.size - fs.capacity
    if c.inodes > free_inodes:
        raise BuildError(
            f"{fs.where}: the tree has {c.inodes} files and directories but a "
            f"{p.size // MiB} MiB {p.fstype} gets only {free_inodes} inodes",
            hint="give it more inodes with `--mkfsoptions='-N COUNT'` (or `-i BYTES`) "
            "or raise its --size",
        )
    log.debug(
        "%s: %d bytes used by metadata, %d free, %d needed", fs.where, used, fs.capacity, fs.need
    )


def _dumpe2fs(target: str) -> dict[str, str]:
    out = run(["dumpe2fs", "-h", target], what="reading the new filesystem").stdout.decode()
    info: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def ext_blocks(c: Content, bs: int, extents: bool) -> int:
    """Blocks an ext filesystem of block size ``bs`` needs for ``c`` (data + directories)."""
    blocks = 0
    per_extent = 32768
    per_index = (bs - 12) // 12
    ptrs = bs // 4
    for size, allocated in c.files:
        n = -(-min(size, allocated) // bs)
        if extents:
            count = -(-n // per_extent)
            if count > 4:
                n += -(-count // per_index)
        elif n > 12:
            n += -(-(n - 12) // ptrs) + (1 if n - 12 > ptrs else 0)
        blocks += n
    for entries, names in c.dirs:
        nbytes = 24 + entries * 12 + names
        n = -(-nbytes // bs)
        blocks += n + (1 if n > 1 else 0)
    return blocks + c.long_symlinks


_NO_SPACE = re.compile(r"Could not allocate block|No space left|Disk full|Could not allocate inode")


def _populate_ext(fs: Fs, ids: Ids, epoch: int, full: Path) -> None:
    """mkfs.extN -d: the filesystem is built straight into its partition, in one pass."""
    p = fs.part
    src = fs.source
    argv = [*_ext_argv(fs, ids, p.start, src), str(fs.image), f"{p.size // 1024}k"]
    try:
        run(argv, env=_ext_env(epoch), what=f"making {p.fstype} on {fs.where}")
    except ToolError as exc:
        if _NO_SPACE.search(str(exc)):
            raise host_full(fs.image.parent) or _too_big_error([fs], ran_out=True) from None
        raise
    _fix_ext_inodes(fs, epoch, full)
    if p.fstype != "ext4":  # mke2fs zeroes ext2/3 inode tables and journals: punch them out
        run(
            ["fallocate", "--dig-holes", "-o", str(p.start), "-l", str(p.size), str(fs.image)],
            what="making the image sparse",
        )


def _epoch_times(fs: Fs, epoch: int) -> list[str]:
    """Every entry's atime and ctime become the epoch: mkfs -d copies them from the cached
    tree, where they say when that store built it (ctime) or last read it (atime), so two
    stores would give two images for one key. (mtimes come from the packages, clamped.)"""
    src = fs.source
    if src is None:
        return []
    cmds = []
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            if "\n" in rel:
                log.warning(
                    "%s: %r has a newline in its name: its times stay as cached", fs.where, rel
                )
                continue
            quoted = '"/' + rel.replace('"', '""') + '"'
            cmds += [
                f"set_inode_field {quoted} atime @{epoch}",
                f"set_inode_field {quoted} ctime @{epoch}",
            ]
    return cmds


def _fix_ext_inodes(fs: Fs, epoch: int, full: Path) -> None:
    """Set with debugfs what mkfs -d cannot take from the tree.

    The root directory (mkfs gives it its own mode, owner and the fake time), and every
    entry's atime and ctime (the epoch; ``_epoch_times``).
    """
    mp = fs.mountpoint or "/"
    base = mp.strip("/")
    cmds: list[str] = []

    def set_times(path: str, st: os.stat_result | None) -> None:
        a, m, c = (epoch, st.st_mtime, epoch) if st else (epoch, epoch, epoch)
        for name, value in (("atime", a), ("mtime", m), ("ctime", c)):
            cmds.append(f'set_inode_field "{path}" {name} @{int(value)}')

    st = _lstat_in(full, base)
    st = st if st is not None and stat.S_ISDIR(st.st_mode) else None
    mode = stat.S_IMODE(st.st_mode) if st else 0o755
    cmds.append(f"set_inode_field / mode 0{stat.S_IFDIR | mode:o}")
    cmds.append(f"set_inode_field / uid {st.st_uid if st else 0}")
    cmds.append(f"set_inode_field / gid {st.st_gid if st else 0}")
    set_times("/", st)
    for rel in fs.top_paths:
        if base:
            if not rel.startswith(base + "/"):
                continue
            inner = "/" + rel[len(base) + 1 :]
        elif rel:
            inner = "/" + rel
        else:
            continue
        if rel == "etc/fstab":
            set_times(inner, None)
            continue
        sub = _lstat_in(full, rel)
        set_times(inner, sub if sub is not None and stat.S_ISDIR(sub.st_mode) else None)
    cmds += _epoch_times(fs, epoch)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", dir=fs.image.parent) as f:
        f.write("\n".join(cmds) + "\n")
        f.flush()
        out = run(
            ["debugfs", "-w", "-f", f.name, f"{fs.image}?offset={fs.part.start}"],
            env=_ext_env(epoch),  # the superblock's write time too
            what=f"setting inode fields on {fs.where}",
        ).stdout.decode(errors="replace")
    bad = [line for line in out.splitlines() if "set_inode_field:" in line]
    if bad:
        raise BuildError(f"{fs.where}: debugfs: {bad[0]}")
