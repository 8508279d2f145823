"""doit task ``boottest:NAME``: boot the appliance in QEMU until its success marker (then,
with a login in its settings, log in over ssh and run its checks)."""

from __future__ import annotations

from collections.abc import Iterator

from doit.tools import config_changed

from ksbake import boottest
from ksbake.errors import KsbakeError
from tasks.cli import entry_points
from tasks.common import PATHS, action


def task_boottest() -> Iterator[dict]:
    """Boot each appliance in QEMU (TCG unless `accel` says otherwise) and wait for its marker."""
    names = PATHS.appliances()
    yield {"name": None, "doc": entry_points("boottest", "boot in QEMU, log in, check", names)}
    for name in names:
        try:
            boot = boottest.boot_settings(PATHS, name)
        except KsbakeError:
            boot = {}  # invalid settings: the kickstart task reports them
        yield {
            "name": name,
            "doc": f"boot {name} in QEMU, wait for its marker, run its login checks",
            "actions": [action("ksbake.boottest:step", PATHS, name)],
            "file_dep": [str(PATHS.build_dir(name) / "bootloader.ref")],
            "targets": [str(PATHS.build_dir(name) / "boottest.json")],
            "uptodate": [config_changed(boot)],
        }
