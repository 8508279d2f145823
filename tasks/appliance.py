"""doit task ``appliance:NAME``: the whole chain for one appliance, ending with a summary."""

from __future__ import annotations

from collections.abc import Iterator

from ksbake import report
from tasks.common import PATHS

LAYERS = ["kickstart", "lock", "packages", "config", "disks", "bootloader"]


def task_appliance() -> Iterator[dict]:
    """Build appliances: `doit appliance` builds all of them, `doit appliance:NAME` one."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"build the {name} appliance",
            "actions": [(lambda n=name: print(report.summary(PATHS, n, LAYERS)) or None)],
            "task_dep": [f"bootloader:{name}"],
            "uptodate": [False],
            "verbosity": 2,
        }
