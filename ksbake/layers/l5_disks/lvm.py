"""LVM physical volumes and volume groups written by lvm2 itself, without device-mapper.

How (verified on machines without device-mapper, see shared/ENVIRONMENT.md):

- Each PV's partition is attached to a loop device at its offset with the kernel's
  auto-clear flag while this worker holds it open (``loop_attach``): however the worker
  ends, even SIGKILL, closing its last descriptor detaches the device. No kpartx, no dm.
- lvm2 runs in its own mount and UTS namespaces (``unshare``), on a private ``/dev`` that
  holds only ``/dev/ksbake-pvN`` nodes for those loop devices (so the device names written
  into the metadata do not depend on which loop device was free), a private ``/run`` (locks,
  hints), an empty ``LVM_SYSTEM_DIR`` (the host's lvm.conf is never read) and the host name
  ``ksbake``; ``--driverloaded n`` keeps it away from device-mapper.
- ``pvcreate --uuid --norestorefile --dataalignment 1m`` labels each PV; ``vgcfgrestore``
  then writes the volume group from metadata text generated from the plan (UUIDs from the
  layer key, creation time and host fixed), so lvm2 writes the on-disk format and ksbake only
  states the allocation. ``libfaketime`` pins the time lvm2 stamps into the metadata header.
- ``lvs -o seg_pe_ranges`` reads the result back: lvm2 must agree with the plan, extent by
  extent, or the build fails.

What still depends on the build host: the metadata header's comment records the kernel's
``uname`` (release and version); lvm2 has no option to leave it out. Two builds on hosts
with the same kernel give the same bytes.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ksbake.errors import BuildError
from ksbake.layers.l5_disks.model import Ids
from ksbake.layout import SECTOR, Plan, VolumeGroupPlan
from ksbake.loopdev import loop_attach
from ksbake.run import run, which

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
HOSTNAME = "ksbake"
_UUID_CHARS = string.ascii_letters + string.digits


def pv_uuid(ids: Ids, *what: str) -> str:
    """An LVM-style UUID (32 characters of [A-Za-z0-9] in groups 6-4-4-4-4-4-6)."""
    digest = ids.digest("lvm", *what)
    chars = "".join(_UUID_CHARS[b % len(_UUID_CHARS)] for b in digest[:32])
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, at = [], 0
    for n in cuts:
        out.append(chars[at : at + n])
        at += n
    return "-".join(out)


def metadata(plan: Plan, vg: VolumeGroupPlan, ids: Ids, epoch: int) -> str:
    """The volume group as lvm2's text format, for ``vgcfgrestore``."""
    pe = vg.extent_size // SECTOR
    lines = [
        'contents = "Text Format Volume Group"',
        "version = 1",
        'description = "ksbake"',
        f'creation_host = "{HOSTNAME}"',
        f"creation_time = {epoch}",
        "",
        f"{vg.name} {{",
        f'\tid = "{pv_uuid(ids, "vg", vg.name)}"',
        "\tseqno = 1",
        '\tformat = "lvm2"',
        '\tstatus = ["RESIZEABLE", "READ", "WRITE"]',
        "\tflags = []",
        f"\textent_size = {pe}",
        "\tmax_lv = 0",
        "\tmax_pv = 0",
        "\tmetadata_copies = 0",
        "\tphysical_volumes {",
    ]
    for i, pv in enumerate(vg.pvs):
        part = plan.partition(pv.disk, pv.number)
        lines += [
            f"\t\tpv{i} {{",
            f'\t\t\tid = "{pv_uuid(ids, "pv", vg.name, str(i))}"',
            f'\t\t\tdevice = "/dev/ksbake-pv{i}"',
            '\t\t\tstatus = ["ALLOCATABLE"]',
            "\t\t\tflags = []",
            f"\t\t\tdev_size = {part.size // SECTOR}",
            f"\t\t\tpe_start = {vg.pe_start // SECTOR}",
            f"\t\t\tpe_count = {pv.pe_count}",
            "\t\t}",
        ]
    lines += ["\t}", "\tlogical_volumes {"]
    for lv in vg.lvs:
        lines += [
            f"\t\t{lv.name} {{",
            f'\t\t\tid = "{pv_uuid(ids, "lv", vg.name, lv.name)}"',
            '\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]',
            "\t\t\tflags = []",
            f"\t\t\tcreation_time = {epoch}",
            f'\t\t\tcreation_host = "{HOSTNAME}"',
            f"\t\t\tsegment_count = {len(lv.segments)}",
        ]
        start = 0
        for n, seg in enumerate(lv.segments, 1):
            lines += [
                f"\t\t\tsegment{n} {{",
                f"\t\t\t\tstart_extent = {start}",
                f"\t\t\t\textent_count = {seg.count}",
                '\t\t\t\ttype = "striped"',
                "\t\t\t\tstripe_count = 1",
                f'\t\t\t\tstripes = ["pv{seg.pv}", {seg.first}]',
                "\t\t\t}",
            ]
            start += seg.count
        lines.append("\t\t}")
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


# The private /dev, /run and configuration lvm2 runs with (see the module docstring). The
# argv after the script: VG name, then "major:minor:uuid" of each PV's loop device in order.
# The metadata text comes on stdin.
_SCRIPT = r"""
set -eu
vg=$1; shift
meta=$(cat)
mount -t tmpfs -o mode=0755 ksbake-lvm /dev
mount -t tmpfs -o mode=0755 ksbake-lvm /run
mkdir -p /dev/lvm-etc /run/lock /run/lvm
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 444 /dev/urandom c 1 9
i=0
for pv in "$@"; do
  mm=${pv%:*}
  mknod -m 600 "/dev/ksbake-pv$i" b "${mm%%:*}" "${mm#*:}"
  i=$((i + 1))
done
hostname ksbake
printf '%s\n' "$meta" > /dev/ksbake.vg
export LVM_SYSTEM_DIR=/dev/lvm-etc LVM_SUPPRESS_FD_WARNINGS=1
cfg='devices{filter=["a|^/dev/ksbake-pv[0-9]+$|","r|.*|"] obtain_device_list_from_udev=0
 use_devicesfile=0 scan=["/dev"] sysfs_scan=0 write_cache_state=0}
 activation{udev_sync=0 udev_rules=0 monitoring=0} backup{backup=0 archive=0}
 global{use_lvmetad=0} log{verbose=0}'
i=0
for pv in "$@"; do
  lvm pvcreate --driverloaded n --config "$cfg" -qq -y -ff --norestorefile \
    --uuid "${pv##*:}" --dataalignment 1m --metadatacopies 1 "/dev/ksbake-pv$i" >/dev/null
  i=$((i + 1))
done
LD_PRELOAD="$KSBAKE_FAKETIME" lvm vgcfgrestore --driverloaded n --config "$cfg" -q \
  -f /dev/ksbake.vg "$vg" 2>&1 >/dev/null | grep -v -e device-mapper -e mapper/control \
  -e 'active volumes' -e 'Activation disabled' -e 'kernel driver' >&2 || true
echo @@report@@
lvm lvs --driverloaded n --config "$cfg" --reportformat json --units b \
  -o lv_name,seg_pe_ranges,seg_start_pe "$vg" 2>/dev/null
lvm pvs --driverloaded n --config "$cfg" --reportformat json --units b -o pv_name,pe_start \
  2>/dev/null
"""


def write_volume_group(
    plan: Plan, vg: VolumeGroupPlan, images: dict[str, Path], ids: Ids, epoch: int
) -> None:
    """Label the group's PVs and write its metadata with lvm2; check what lvm2 wrote."""
    text = metadata(plan, vg, ids, epoch)
    faketime = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
    if faketime is None:
        raise BuildError(
            "libfaketime is missing: it pins the time lvm2 writes into LVM metadata",
            hint="install the faketime package (the setup command does)",
        )
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "KSBAKE_FAKETIME": faketime,
        "FAKETIME": f"@{_faketime_stamp(epoch)}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "LC_ALL": "C",
        "TZ": "UTC",
    }
    with _attached(plan, vg, images, ids) as devices:
        argv = [
            which("unshare"),
            "--mount",
            "--uts",
            "--propagation=private",
            "--",
            "sh",
            "-c",
            _SCRIPT,
            "ksbake-lvm",
            vg.name,
            *devices,
        ]
        out = run(argv, env=env, input=text.encode(), what=f"writing LVM volume group {vg.name}")
    _check(vg, out.stdout.decode(errors="replace"))


@contextmanager
def _attached(
    plan: Plan, vg: VolumeGroupPlan, images: dict[str, Path], ids: Ids
) -> Iterator[list[str]]:
    """Loop devices for the group's PVs, as "major:minor:pv-uuid" strings."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        numbers: list[str] = []
        for pv in vg.pvs:
            part = plan.partition(pv.disk, pv.number)
            dev = stack.enter_context(loop_attach(images[pv.disk], part.start, part.size))
            st = os.stat(dev)
            uuid = pv_uuid(ids, "pv", vg.name, str(len(numbers)))
            numbers.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}:{uuid}")
        yield numbers


def _faketime_stamp(epoch: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _check(vg: VolumeGroupPlan, output: str) -> None:
    """lvm2's view of the written group must be the plan's, extent for extent."""
    decoder = json.JSONDecoder()
    reports, at = [], 0
    text = output.partition("@@report@@")[2].strip()
    while at < len(text):
        obj, end = decoder.raw_decode(text, at)
        reports.append(obj)
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    if len(reports) != 2:
        raise BuildError(f"LVM volume group {vg.name}: lvm2 gave no report of what it wrote")
    lvs = reports[0]["report"][0]["lv"]
    pvs = reports[1]["report"][0]["pv"]
    for pv in pvs:
        if pv["pe_start"] != f"{vg.pe_start}B":
            raise BuildError(
                f"LVM volume group {vg.name}: lvm2 put the first extent of {pv['pv_name']} at "
                f"{pv['pe_start']}, the plan at {vg.pe_start}B"
            )
    got: dict[str, list[str]] = {}
    for row in lvs:
        got.setdefault(row["lv_name"], []).append(row["seg_pe_ranges"])
    for lv in vg.lvs:
        want = [f"/dev/ksbake-pv{s.pv}:{s.first}-{s.first + s.count - 1}" for s in lv.segments]
        if got.get(lv.name) != want:
            raise BuildError(
                f"LVM volume {vg.name}/{lv.name}: lvm2 placed it at {got.get(lv.name)}, "
                f"the plan at {want}"
            )
