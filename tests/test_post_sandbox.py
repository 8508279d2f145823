"""%post cannot reach the build host: sandboxed in the tree, its writes bounded, its processes
ended with it; a failing one is named by file:line.

Real config builds of the demo tree (bubblewrap, a loop-mounted bound, the tree's busybox).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, ok

pytestmark = pytest.mark.slow


def with_post(body: str, options: str = "") -> str:
    return demo_kickstart() + f"\n%post{options}\n{body}\n%end\n"


def post_line(ws: Workspace) -> int:
    """Line of the last %post header in the kickstart."""
    lines = (ws.configs / "demo.ks").read_text().splitlines()
    return max(i for i, line in enumerate(lines, 1) if line.startswith("%post"))


def test_chrooted_post_cannot_reach_the_host(workspace: Workspace) -> None:
    mark = f"ksbake-escape-{uuid.uuid4().hex[:12]}"
    host_targets = [Path("/var/tmp") / mark, Path("/tmp") / mark, Path("/root") / mark]
    body = f"""
touch /proc/1/root/var/tmp/{mark} && echo "proc1-root: wrote into the tree's own /var/tmp"
for p in /proc/[0-9]*; do
  touch $p/root/tmp/{mark} 2>/dev/null; touch $p/cwd/{mark} 2>/dev/null
done
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "processes seen: $n"
mknod /dev/hostdisk b 8 0 2>/dev/null && echo MKNOD-ALLOWED
mount -t tmpfs escape /mnt 2>/dev/null && echo MOUNT-ALLOWED
mount --bind / /mnt 2>/dev/null && echo BIND-ALLOWED
mkdir -p /jail && chroot /jail /bin/true 2>/dev/null && echo CHROOT-ALLOWED
echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo PROCSYS-ALLOWED
hostname escaped 2>/dev/null && echo HOSTNAME-ALLOWED
cat /etc/shadow >/dev/null && echo "shadow: the tree's own"
ls /proc/1/root/work 2>/dev/null && echo HOST-FS-VISIBLE
true
"""
    workspace.write("demo.ks", with_post(body))
    r = workspace.doit("config:demo")
    ok(r)
    assert "proc1-root: wrote into the tree's own /var/tmp" in r.out
    assert "processes seen: 2" in r.out  # the script and its runner: no host process there
    for allowed in ("MKNOD", "MOUNT", "BIND", "CHROOT", "PROCSYS", "HOSTNAME", "HOST-FS"):
        assert f"{allowed}-ALLOWED" not in r.out and f"{allowed}-VISIBLE" not in r.out, r.out
    assert not [t for t in host_targets if t.exists()]
    key = json.loads((workspace.cache / "build/demo/config.ref").read_text())["key"]
    assert (workspace.store / "objects/config" / key / "upper/var/tmp" / mark).exists()


def test_zero_fill_is_bounded_and_costs_no_host_disk(workspace: Workspace) -> None:
    # Fedora's cloud kickstarts: fill the free space with zeros, then delete the file
    body = "dd if=/dev/zero of=/var/tmp/zeros bs=1M\nrm -f /var/tmp/zeros\necho zero-filled"
    body += f"  # {uuid.uuid4().hex}: built here, not reused from the shared store"
    workspace.write("demo.ks", with_post(body))
    before = shutil.disk_usage(workspace.store).free
    r = workspace.doit("config:demo")
    ok(r)
    assert "zero-filled" in r.out
    limit = json.loads((workspace.cache / "build/demo/inputs/config.unkeyed.json").read_text())[
        "write_limit"
    ]
    assert shutil.disk_usage(workspace.store).free > before - limit
    key = json.loads((workspace.cache / "build/demo/config.ref").read_text())["key"]
    upper = workspace.store / "objects/config" / key / "upper"
    assert not (upper / "var/tmp/zeros").exists()
    assert not list((workspace.store / "staging").glob("config-*"))  # no bound image left


def test_overflow_is_one_error_naming_the_post_and_the_limit(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_post("dd if=/dev/zero of=/big bs=1M", " --erroronfail"))
    r = workspace.doit("config:demo")
    assert r.rc != 0
    errors = [line for line in r.err.splitlines() if line.startswith("ksbake: error:")]
    assert len(errors) == 1, r.err
    where = f"{workspace.configs / 'demo.ks'}:{post_line(workspace)}: %post #2 failed"
    assert where in errors[0] and "may grow by at most" in errors[0] and "MiB" in errors[0]
    assert "Traceback" not in r.err
    assert not (workspace.cache / "build/demo/config.ref").exists()


def test_background_process_ends_with_its_script(workspace: Workspace) -> None:
    mark = f"ksbake-sleeper-{uuid.uuid4().hex[:8]}"
    loop = f"printf '#!/bin/sh\\nwhile :; do sleep 1; done\\n' > /{mark}; chmod +x /{mark}"
    workspace.write("demo.ks", with_post(f"{loop}\n/{mark} &\nsleep 1\necho started"))
    started = time.monotonic()
    r = workspace.doit("config:demo")
    ok(r)
    assert time.monotonic() - started < 60
    assert re.search(r"%post #2 left \d+ process\(es\) running: ended with the script", r.err)
    left = subprocess.run(["pgrep", "-f", mark], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


def test_failing_post_is_named_by_file_and_line(workspace: Workspace) -> None:
    workspace.write("demo.ks", with_post("echo about to fail\nexit 7", " --erroronfail"))
    r = workspace.doit("config:demo")
    assert r.rc != 0
    line = post_line(workspace)
    assert f"demo.ks:{line}: %post #2 failed with exit code 7" in r.err
    assert "about to fail" in r.err
