"""``%pre`` before partitioning: real scripts (parted, a file for ``%include``) run in their
sandbox with the blank disks; what they may not do, they cannot do to the host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, fails, ok

pytestmark = pytest.mark.slow

DEMO_PARTS = (
    "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
    "part / --fstype=ext4 --size=192 --grow --ondisk=sda\n"
)
ROCKY_STYLE = """\
part biosboot --fstype=biosboot --onpart=vda1
part /boot --fstype=ext4 --label=boot --onpart=vda2
part / --fstype=ext4 --onpart=vda3

%pre
# as Rocky's cloud images do: clear the MBR, then partition with parted
dd if=/dev/zero of=/dev/vda bs=512 count=1
parted -s /dev/vda mklabel gpt
parted -s /dev/vda mkpart biosboot 1MiB 2MiB
parted -s /dev/vda set 1 bios_grub on
parted -s /dev/vda mkpart boot ext4 2MiB 66MiB
parted -s /dev/vda mkpart root ext4 66MiB 100%
%end
"""
INCLUDE_WRITER = """\
%include /tmp/part-include

%pre --erroronfail
cat > /tmp/part-include <<EOF
part /boot --fstype=ext4 --size=64
part / --fstype=ext4 --size=200 --grow
EOF
%end
"""


def with_parts(parts: str) -> str:
    text = demo_kickstart()
    assert DEMO_PARTS in text
    return text.replace("zerombr\nclearpart --all --initlabel --disklabel=msdos\n", "").replace(
        DEMO_PARTS, parts
    )


def plan(ws: Workspace) -> dict:
    return json.loads((ws.cache / "build" / "demo" / "inputs" / "disks.json").read_text())["plan"]


@pytest.mark.boot
def test_a_rocky_style_pre_partitions_vda_and_the_onpart_layout_boots(
    workspace: Workspace,
) -> None:
    workspace.write("demo.ks", with_parts(ROCKY_STYLE))
    workspace.write("demo.toml", "disk_sizes = { vda = 512 }\n")
    r = workspace.doit("boottest:demo")
    ok(r)
    (disk,) = plan(workspace)["disks"]
    assert (disk["name"], disk["label"], disk["size"]) == ("vda", "gpt", 512 * 2**20)
    parts = [
        (p["number"], p["mountpoint"], p["fstype"], p["start"] // 2**20) for p in disk["partitions"]
    ]
    assert parts == [(1, None, "biosboot", 1), (2, "/boot", "ext4", 2), (3, "/", "ext4", 66)]
    log = (workspace.cache / "build" / "demo" / "boot.log").read_text(errors="replace")
    assert "KSBAKE-MOUNT /dev/vda3 / ext4" in log and "KSBAKE-MOUNT /dev/vda2 /boot ext4" in log
    # parted cannot tell the kernel in the sandbox (no capabilities): a warning, as anaconda
    assert "%pre (/bin/sh) ended with exit status 1" in r.err
    assert not list((workspace.cache / "build" / "demo" / "pre").glob("disks/*"))


def test_a_pre_writes_the_file_a_later_include_reads(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_parts(INCLUDE_WRITER))
    ok(workspace.doit("disks:demo"))
    (disk,) = plan(workspace)["disks"]
    assert [p["mountpoint"] for p in disk["partitions"]] == ["/boot", "/"]


def test_a_pre_cannot_write_to_the_host(workspace: Workspace) -> None:
    marker = Path("/etc/pre-was-here")
    assert not marker.exists()
    script = "%pre --erroronfail\ntouch /etc/pre-was-here\n%end\n"
    workspace.write("demo.ks", demo_kickstart() + script)
    fails(workspace, "demo.ks:", "%pre (/bin/sh) failed", "Read-only file system")
    assert not marker.exists()
    # without --erroronfail the build goes on (anaconda's rule), the host still untouched
    workspace.write("demo.ks", demo_kickstart() + script.replace(" --erroronfail", ""))
    r = workspace.doit("kickstart:demo")
    ok(r)
    assert "Read-only file system" in r.err and not marker.exists()


def test_a_pre_that_fails_is_one_line_with_its_output(workspace: Workspace) -> None:
    workspace.write(
        "demo.ks", demo_kickstart() + "%pre --erroronfail\necho cannot-partition\nexit 3\n%end\n"
    )
    r = fails(workspace, "%pre (/bin/sh) failed with exit status 3: cannot-partition")
    line = demo_kickstart().count("\n") + 1
    assert f"demo.ks:{line}:" in r.err
    assert not (workspace.cache / "build" / "demo" / "inputs" / "disks.json").exists()


def test_a_pre_that_never_ends_is_stopped(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart() + "%pre\nwhile :; do :; done\n%end\n")
    workspace.write("demo.toml", "pre_timeout = 2\n")
    fails(workspace, "%pre did not finish within 2 s and was stopped", "pre_timeout")
    left = subprocess.run(["pgrep", "-f", "ks-script-0"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # nothing of it is left running


def test_a_pre_that_writes_gigabytes_is_bounded(workspace: Workspace) -> None:
    text = "%pre --erroronfail\ndd if=/dev/zero of=/tmp/big bs=1M count=4096\n%end\n"
    workspace.write("demo.ks", demo_kickstart() + text)
    fails(workspace, "%pre (/bin/sh) failed", "No space left on device")
    kept = workspace.cache / "build" / "demo" / "pre" / "tmp"
    assert sum(f.stat().st_size for f in kept.rglob("*") if f.is_file()) <= 64 * 2**20


def test_onpart_naming_a_partition_pre_did_not_make(workspace: Workspace) -> None:
    text = with_parts(ROCKY_STYLE.replace("--onpart=vda3", "--onpart=vda7"))
    workspace.write("demo.ks", text)
    workspace.write("demo.toml", "disk_sizes = { vda = 512 }\n")
    fails(workspace, "part --onpart=vda7: %pre made no such partition", "vda1, vda2, vda3")
