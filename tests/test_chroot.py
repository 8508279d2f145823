"""The mounts a self-chrooting tool (rpm's scriptlets) gets in the tree: ``api_filesystems``.

Run in a private mount namespace (``unshare``), as the packages layer's worker runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT

INSIDE = """
import json, os, stat, sys
from pathlib import Path
from ksbake.chroot import api_filesystems

root = Path(sys.argv[1])
seen = {}
with api_filesystems(root):
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    seen["mounted"] = sorted(m[len(str(root)):] for m in mounts if m.startswith(str(root) + "/"))
    seen["run_mode"] = oct(stat.S_IMODE(os.stat(root / "run").st_mode))
    # what scriptlets do there: a pid file, a socket directory; rpm sets /run's mode
    (root / "run/lock").mkdir()
    (root / "run/daemon.pid").write_text("42\\n")
    os.chmod(root / "run", 0o711)
    os.chown(root / "run", 0, 5)
    seen["dev_null"] = stat.S_ISCHR(os.stat(root / "dev/null").st_mode)
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
seen["left"] = [m for m in mounts if m.startswith(str(root) + "/")]
print(json.dumps(seen))
"""


def test_api_filesystems_private_run(tmp_path: Path) -> None:
    """/run is a tmpfs while rpm runs scriptlets; afterwards the tree holds only the empty
    directory, with the mode and owner the packages gave it."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (mounts)")
    root = tmp_path / "tree"
    root.mkdir()
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", INSIDE, root],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT,
    ).stdout
    seen = json.loads(out)
    assert seen["mounted"] == ["/dev", "/proc", "/run", "/sys"]
    assert seen["run_mode"] == "0o755" and seen["dev_null"]
    assert seen["left"] == []
    run = root / "run"
    assert run.is_dir() and not run.is_symlink() and list(run.iterdir()) == []
    st = run.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o711, 0, 5)
    assert list((root / "dev").iterdir()) == []
