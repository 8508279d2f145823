"""The kickstart layer's step: parse the kickstart, split it into per-layer input files.

Each downstream layer depends on exactly one small file, ``build/NAME/inputs/<layer>.json``,
holding the canonical text (pykickstart's ``str()``) of the kickstart sections that layer
reads, plus the settings it reads. Files are rewritten only when their content changes, so
reformatting the kickstart, or editing a section another layer owns, leaves a layer's input
untouched and doit skips it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksbake import report, settings
from ksbake.hashing import canonical_json, layer_key, write_if_changed
from ksbake.paths import Paths

if TYPE_CHECKING:  # the parser and planner are imported when the step runs, not at doit load
    from ksbake.kickstart import Kickstart
    from ksbake.layout import Plan

CODE_VERSION = 1
LAYERS = ("lock", "config", "disks", "bootloader", "convert", "descriptor")


def layer_inputs(ks: Kickstart, conf: settings.Settings, plan: Plan) -> dict[str, dict[str, Any]]:
    """What each layer reads, as JSON-able dicts (``ks`` is a re-parsable kickstart fragment;
    the disks layer reads the partition plan, which holds no file:line, so reformatting the
    kickstart leaves it unchanged)."""
    from ksbake import convert
    from ksbake.bootloader import bootloader_settings

    s = ks.sections
    return {
        "lock": {
            "ks": s["repos"] + s["packages"],
            "syntax": conf.syntax,
            "settings": conf.lock_inputs(),
        },
        "config": {
            "ks": s["system"] + s["post"],
            "syntax": conf.syntax,
            "ks_dir": str(ks.path.parent),
        },
        "disks": {"plan": plan.to_dict()},
        "bootloader": {
            "bootloader": bootloader_settings(ks.handler),
            "firmware": conf.firmware,
        },
        "convert": {
            "formats": {fmt: convert.format_options(fmt, conf) for fmt in conf.formats},
        },
        "descriptor": {
            "name": conf.name,
            "version": conf.version,
            "release": conf.release,
            "arch": conf.basearch,
            "vcpus": conf.vcpus,
            "memory": conf.memory,
            "firmware": conf.firmware,
            "accel": conf.accel,
            # one NIC per kickstart network line, as appliance-creator counted them
            "nics": len(ks.handler.network.network),
            "ova": conf.ova,
            "primary": conf.formats[0],
        },
    }


def files_file(paths: Paths, name: str) -> Path:
    return paths.build_dir(name) / "kickstart-files.json"


def recorded_files(paths: Paths, name: str) -> list[str]:
    """The kickstart's files (with %includes) as read by the last successful parse."""
    main = str(paths.kickstart(name))
    try:
        files = json.loads(files_file(paths, name).read_text())
    except (OSError, ValueError):
        return [main]
    return [main, *[f for f in files if f != main]]


def step(paths: Paths, name: str) -> None:
    from ksbake import kickstart, partitions

    started = time.monotonic()
    conf = settings.load(name, paths.configs)
    ks = kickstart.load(paths.kickstart(name), version=conf.syntax, compat=conf.compat)
    for warning in ks.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    plan, plan_warnings = partitions.plan_with_warnings(ks, conf.disk_sizes)
    for warning in plan_warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    build = paths.build_dir(name)
    for layer, value in layer_inputs(ks, conf, plan).items():
        write_if_changed(build / "inputs" / f"{layer}.json", canonical_json(value) + "\n")
    write_if_changed(files_file(paths, name), json.dumps([str(f) for f in ks.files]) + "\n")
    key = layer_key("kickstart", CODE_VERSION, {"sections": ks.sections, "syntax": conf.syntax})
    report.record(paths, name, "kickstart", key, True, time.monotonic() - started)


def uses_bundled_repo(paths: Paths, name: str) -> bool:
    """Cheap text check (no parsing) used when doit loads: does the build need ``repo``?"""
    import os

    texts = []
    for f in [*recorded_files(paths, name), str(paths.settings(name))]:
        with contextlib.suppress(OSError):
            texts.append(Path(f).read_text(errors="replace"))
    texts.append(os.environ.get("KSBAKE_MIRRORS", ""))
    return any("ksbake_repo" in t for t in texts)
