"""Ctrl-C: one line, exit status 130, nothing half-built kept, no process left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import Workspace, demo_kickstart

pytestmark = pytest.mark.slow


def test_ctrl_c_is_one_line(workspace: Workspace) -> None:
    mark = uuid.uuid4().hex  # a config object of its own: it is being built when Ctrl-C comes
    workspace.write("demo.ks", demo_kickstart() + f"\n%post\n# {mark}\nsleep 30\n%end\n")
    proc = workspace.spawn("appliance:demo")
    deadline = time.monotonic() + 120
    staging = workspace.store / "staging"
    while time.monotonic() < deadline and not list(staging.glob("config-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to its foreground job
    out, _ = proc.communicate(timeout=60)
    text = out.decode(errors="replace")
    assert proc.returncode == 130, text
    assert text.count("ksbake: interrupted") == 1 and "Traceback" not in text, text
    assert not list(staging.glob("config-*"))
    left = subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True, text=True)
    assert left.stdout == ""
