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
            "clean": [(clean, [name])],
            "uptodate": [False],
            "verbosity": 2,
        }


def clean(name: str) -> None:
    """``doit clean appliance:NAME`` (``doit clean``: every appliance): the appliance's own
    state (cache/build/NAME: its refs, inputs, logs) and what it published (out/NAME), never
    store objects, which other appliances may share (``doit gc`` trims the store)."""
    import shutil

    for path in (PATHS.build_dir(name), PATHS.out / name):
        if path.exists() or path.is_symlink():
            shutil.rmtree(path)
            print(f"removed {path}")
