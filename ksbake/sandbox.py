"""Run a layer's build in a child process with its own mount and PID namespaces.

Why: dnf is not thread-safe and leaks global state (rpm macros, logging), and layers that
mount things (overlay trees, /proc and /dev for chrooted scriptlets) must never leave a mount
behind. In a private mount namespace whose PID 1 is the worker, the kernel tears every mount
and every process down when the worker ends, however it ends (error, Ctrl-C, SIGKILL of the
build): no cleanup code has to run for the host to be clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ksbake import errors
from ksbake.run import which


def call(
    function: str, args: dict[str, Any], *, isolate: bool = True, workdir: Path | None = None
) -> dict[str, Any]:
    """Run ``function`` ("module:name") in a worker process with JSON ``args``; return its dict.

    A ``KsbakeError`` raised in the worker is raised again here, same class and message.
    ``workdir`` (a layer's staging directory) holds the worker's temporary files (TMPDIR),
    so a killed build leaves them only where the store cleans up.
    """
    with tempfile.TemporaryDirectory(prefix=".call-", dir=workdir) as tmp:
        args_file = Path(tmp) / "args.json"
        result_file = Path(tmp) / "result.json"
        args_file.write_text(json.dumps(args))
        argv = [sys.executable, "-m", "ksbake.worker", function, str(args_file), str(result_file)]
        if isolate:
            argv = [
                which("unshare"),
                "--mount",
                "--propagation=private",
                "--pid",
                "--fork",
                "--mount-proc",  # /proc of the new PID namespace: tools that look up their
                # children there (bubblewrap reads /proc/PID/ns) must see its numbers
                "--kill-child",
                "--",
                *argv,
            ]
        env = {**os.environ, "TMPDIR": tmp}
        proc = subprocess.run(argv, check=False, env=env)
        result = json.loads(result_file.read_text()) if result_file.exists() else None
    if proc.returncode == 0 and result and "ok" in result:
        ok: dict[str, Any] = result["ok"]
        return ok
    if result and "error" in result:
        cls = getattr(errors, result["error"]["class"], errors.BuildError)
        if not (isinstance(cls, type) and issubclass(cls, errors.KsbakeError)):
            cls = errors.BuildError
        exc = cls.__new__(cls)
        errors.KsbakeError.__init__(exc, result["error"]["message"], result["error"].get("hint"))
        raise exc
    raise errors.BuildError(
        f"{function}: worker process ended with exit code {proc.returncode} and no result"
        + (" (killed)" if proc.returncode < 0 or proc.returncode >= 128 else "")
    )
