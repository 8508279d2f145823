"""doit task ``appliance:NAME``: the whole chain for one appliance, ending with a summary."""

from __future__ import annotations

from collections.abc import Iterator

from ksbake import report
from tasks.cli import entry_points
from tasks.common import PATHS

LAYERS = ["kickstart", "lock", "packages", "config", "disks", "bootloader"]


def _layers(name: str) -> list[str]:
    """The layers of the summary, with one convert row per output format."""
    import json

    try:
        formats = json.loads((PATHS.build_dir(name) / "convert.ref").read_text())["items"]
    except (OSError, ValueError, KeyError):
        formats = {}
    return [*LAYERS, *(f"convert-{fmt}" for fmt in formats), "descriptor", "publish"]


def task_appliance() -> Iterator[dict]:
    """Build appliances: `doit appliance` builds all of them, `doit appliance:NAME` one."""
    names = PATHS.appliances()
    yield {"name": None, "doc": entry_points("appliance", "build (all, or one)", names)}
    for name in names:
        yield {
            "name": name,
            "doc": f"build the {name} appliance",
            "actions": [(lambda n=name: print(report.summary(PATHS, n, _layers(n))) or None)],
            "task_dep": [f"publish:{name}"],
            "uptodate": [False],
            "verbosity": 2,
        }
