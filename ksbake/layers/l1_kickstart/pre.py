"""``%pre``: the kickstart's own partitioning step, run before the plan, in a sandbox.

Why run it at all: real kickstarts partition their disk in %pre (``parted /dev/vda mkpart
...``, ``sgdisk --new=...``) and then point ``part ... --onpart=vda5`` at the result, or write
``/tmp/part-include`` for a later ``%include``. anaconda runs %pre before it reads the
partitioning; so does ksbake, then reads the tables the script wrote.

What a %pre script sees (it runs as root, so the sandbox is the boundary):

- the host's filesystem read-only (``bwrap --ro-bind / /``), a private ``/dev`` with only the
  usual character devices and the appliance's blank disk images as ``/dev/vda`` (the names
  the kickstart uses: ``--onpart``, ``--ondisk``, ``disk_sizes``, ``/dev/...`` in the script):
  loop devices of sparse files, so ``dd``, ``parted`` and ``sgdisk`` behave as on a disk
  (auto-cleared when the build ends); there are no partition nodes like ``/dev/vda1``;
- a private ``/tmp`` of at most 64 MiB, kept across the %pre scripts and read by ``%include
  /tmp/...`` afterwards; no network, its own PID, IPC and UTS namespaces;
- at most ``pre_timeout`` seconds (a setting, default 300), and no file larger than its
  /tmp (RLIMIT_FSIZE).

A script that fails with ``--erroronfail`` is one error at its ``%pre`` line, with the end
of its output; without it, a warning, and the build goes on, as in anaconda (tools that
tell the kernel about new partitions, like parted, fail to here: the sandbox has no
capabilities, so the kernel is never told). A script that runs too long is always an error.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksbake.errors import KickstartError
from ksbake.kickstart import Kickstart
from ksbake.layout import MiB
from ksbake.loopdev import loop_attach
from ksbake.run import which

PRE_TIMEOUT = 300
PRE_TMP_MIB = 64
OUTPUT_TAIL = 4096
DEFAULT_DISK_MIB = 8192
_DEVICE = re.compile(r"/dev/((?:sd|vd|xvd|hd)[a-z]+|nvme[0-9]+n[0-9]+)(?![a-z])")
_PART = re.compile(r"^(?:/dev/)?((?:sd|vd|xvd|hd)[a-z]+|nvme[0-9]+n[0-9]+p?)([0-9]+)$")

# Runs in private mount and PID namespaces (unshare): $1 the /tmp mount point (a tmpfs of
# bounded size, filled from and saved back to $2), $3 the output file (its last bytes),
# $4 the exit status file, then bwrap's argv.
_WRAPPER = r"""
tmp=$1 keep=$2 out=$3 status=$4; shift 4
mount -t tmpfs -o "size=$KSBAKE_PRE_TMP,mode=1777" ksbake-pre "$tmp" || exit 111
cp -a "$keep/." "$tmp/"
{ "$@" 2>&1; echo $? > "$status"; } | tail -c "$KSBAKE_PRE_TAIL" > "$out"
rm -rf "${keep:?}"/* "$keep"/.[!.]* 2>/dev/null
cp -a "$tmp/." "$keep/"
"""


@dataclass
class Table:
    """A partition table a %pre script wrote on a disk."""

    label: str  # "msdos" or "gpt"
    size: int  # bytes: the disk
    partitions: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    """number -> (start, size) in bytes and the type (GUID or msdos id)."""


def pre_scripts(ks: Kickstart) -> list[Any]:
    from pykickstart.constants import KS_SCRIPT_PRE

    return [s for s in ks.handler.scripts if s.type == KS_SCRIPT_PRE]


def disk_names(ks: Kickstart, disk_sizes: dict[str, int] | None) -> list[str]:
    """The disks %pre gets: the settings', those part lines name, those scripts name."""
    names = [k.removeprefix("/dev/") for k in disk_sizes or {}]
    for pd in ks.handler.partition.partitions:
        for value in (getattr(pd, "onPart", ""), getattr(pd, "disk", "")):
            m = _PART.match(value or "")
            if m:
                names.append(m.group(1).removesuffix("p") if "nvme" in value else m.group(1))
            elif value and re.fullmatch(r"(?:/dev/)?[a-z]+", value):
                names.append(value.removeprefix("/dev/"))
    for script in pre_scripts(ks):
        names += _DEVICE.findall(script.script)
    return list(dict.fromkeys(names))


def run(
    ks: Kickstart,
    disk_sizes: dict[str, int] | None,
    work: Path,
    warnings: list[str],
    timeout: int = PRE_TIMEOUT,
) -> tuple[dict[str, Table], Path]:
    """Run every %pre of ``ks`` in order; return the tables on its disks and its /tmp."""
    scripts = pre_scripts(ks)
    pre = work / "pre"
    shutil.rmtree(pre, ignore_errors=True)
    (pre / "tmp").mkdir(parents=True)
    (pre / "mnt").mkdir()
    (pre / "disks").mkdir()
    sizes = {k.removeprefix("/dev/"): v for k, v in (disk_sizes or {}).items()}
    images: dict[str, tuple[Path, int]] = {}
    for name in disk_names(ks, disk_sizes):
        size = sizes.get(name)
        if size is None:
            size = DEFAULT_DISK_MIB * MiB
            warnings.append(
                f"{ks.line_of(scripts[0])}: %pre gets a blank {DEFAULT_DISK_MIB // 1024} GiB "
                f"/dev/{name}: the appliance settings give it no size (disk_sizes)"
            )
        image = pre / "disks" / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(size)
        images[name] = (image, size)
    limit = PRE_TMP_MIB * MiB  # /tmp's size: the disks are block devices, not files
    with ExitStack() as stack:
        devices = {
            name: stack.enter_context(loop_attach(image)) for name, (image, _) in images.items()
        }
        for i, script in enumerate(scripts):
            _run_one(ks, script, i, pre, devices, limit, warnings, timeout)
    tables = {name: _read_table(image, size) for name, (image, size) in images.items()}
    shutil.rmtree(pre / "disks")  # sparse, but up to disk_sizes each: not kept
    return {n: t for n, t in tables.items() if t is not None}, pre / "tmp"


def _run_one(
    ks: Kickstart,
    script: Any,
    index: int,
    pre: Path,
    devices: dict[str, str],
    limit: int,
    warnings: list[str],
    timeout: int,
) -> None:
    body = pre / "tmp" / f"ks-script-{index}"
    body.write_text(script.script if script.script.endswith("\n") else script.script + "\n")
    interpreter = script.interp or "/bin/sh"
    bwrap = [
        which("bwrap"),
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--bind", str(pre / "mnt"), "/tmp",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--hostname", "ksbake-pre",
        "--clearenv",
        "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "HOME", "/tmp",
        "--setenv", "TMPDIR", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--chdir", "/tmp",
    ]  # fmt: skip
    for name, device in devices.items():
        bwrap += ["--dev-bind", device, f"/dev/{name}"]
    bwrap += ["--", interpreter, f"/tmp/ks-script-{index}"]
    out, status = pre / "output", pre / "status"
    status.unlink(missing_ok=True)
    argv = [
        which("unshare"), "--mount", "--propagation=private", "--pid", "--fork",
        "--kill-child", "--", "sh", "-c", _WRAPPER, "ksbake-pre",
        str(pre / "mnt"), str(pre / "tmp"), str(out), str(status), *bwrap,
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "KSBAKE_PRE_TMP": f"{PRE_TMP_MIB}m",
        "KSBAKE_PRE_TAIL": str(OUTPUT_TAIL),
    }

    def bound() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    where = ks.line_of(script)
    try:
        subprocess.run(
            argv, env=env, preexec_fn=bound, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise KickstartError(
            str(where.path),
            where.line,
            f"%pre did not finish within {timeout} s and was stopped",
            "make the script end (it runs before partitioning, without network), or raise "
            "pre_timeout in the appliance settings",
        ) from None
    text = out.read_text(errors="replace") if out.exists() else ""
    code = status.read_text().strip() if status.exists() else "?"
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-4:] if line.strip())
    if code != "0" and not getattr(script, "errorOnFail", False):
        warnings.append(  # anaconda goes on too; a partition it did not make fails later
            f"{where}: %pre ({interpreter}) ended with exit status {code}"
            + (f": {tail}" if tail else "")
        )
    elif code != "0":
        raise KickstartError(
            str(where.path),
            where.line,
            f"%pre ({interpreter}) failed with exit status {code}" + (f": {tail}" if tail else ""),
            "fix the script; it runs in a sandbox with the blank disks as /dev/<disk>, "
            "a private /tmp and no network (see README, %pre)",
        )


def _read_table(image: Path, size: int) -> Table | None:
    proc = subprocess.run(
        [which("sfdisk"), "--json", str(image)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None  # no partition table on this disk
    data = json.loads(proc.stdout)["partitiontable"]
    sector = int(data.get("sectorsize", 512))
    table = Table(label="gpt" if data["label"] == "gpt" else "msdos", size=size)
    for p in data.get("partitions", []):
        number = int(re.search(r"([0-9]+)$", p["node"]).group(1))  # type: ignore[union-attr]
        table.partitions[number] = (p["start"] * sector, p["size"] * sector, p["type"])
    return table


def onpart(value: str) -> tuple[str, int] | None:
    """``vda5``, ``/dev/vda5``, ``nvme0n1p2`` -> (disk, number); None for other names."""
    m = _PART.match(value)
    if m is None:
        return None
    return m.group(1).removesuffix("p") if "nvme" in m.group(1) else m.group(1), int(m.group(2))
