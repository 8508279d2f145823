"""The kickstart layer: parse the kickstart, split it into per-layer input files.

Each stored layer with an ``inputs`` function (``ksbake.layers``) reads exactly one small file,
``build/NAME/inputs/<layer>.json``, holding the canonical text (pykickstart's ``str()``) of the
kickstart sections that layer reads, plus the settings it reads. Files are rewritten only when
their content changes, so reformatting the kickstart, or editing a section another layer owns,
leaves a layer's input untouched and doit skips it. Not a store object: its output is those
files, and the partition plan (``partitions.py``, the planner) among them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ksbake import report, settings
from ksbake.errors import ConfigError
from ksbake.hashing import canonical_json, layer_key, write_if_changed
from ksbake.paths import Paths, read_bounded

log = logging.getLogger("ksbake")
VERSION = 1


def input_layers() -> list[str]:
    """The layers that read a file of inputs written here."""
    from ksbake.layers import CHAIN

    return [layer.name for layer in CHAIN if layer.inputs is not None]


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
    from ksbake import kickstart
    from ksbake.layers import CHAIN
    from ksbake.layers.l1_kickstart import checks, partitions, pre, system
    from ksbake.runner import Source

    started = time.monotonic()
    conf = settings.load(name, paths.configs)
    ks_file = paths.kickstart(name)
    with _setting(paths, name, "syntax"):
        ks = kickstart.load(ks_file, version=conf.syntax, compat=conf.compat, before_pre=True)
    tables, pre_warnings = None, list[str]()
    if pre.pre_scripts(ks):  # anaconda's order: %pre, then the partitioning it wrote
        with _setting(paths, name, "disk_sizes"):
            tables, tmp = pre.run(
                ks, conf.disk_sizes, paths.build_dir(name), pre_warnings, conf.pre_timeout
            )
        ks = kickstart.load(ks_file, version=conf.syntax, compat=conf.compat, pre_tmp=tmp)
    elif ks.pending:  # again without skipping: an %include that nothing writes is an error
        ks = kickstart.load(ks_file, version=conf.syntax, compat=conf.compat)
    for warning in [*ks.warnings, *pre_warnings]:
        log.warning("%s", warning)
    system.check(ks)
    checks.check_sources(ks, conf, paths.settings(name))
    with _setting(paths, name, "disk_sizes"):
        plan, plan_warnings = partitions.plan_with_warnings(
            ks, conf.disk_sizes, conf.memory, conf.firmware, tables
        )
    checks.check_layout(ks, plan)
    for warning in plan_warnings:
        log.warning("%s", warning)
    build = paths.build_dir(name)
    source = Source(ks, conf, plan, str(paths.out / name))
    for layer in CHAIN:
        if layer.inputs is not None:
            text = canonical_json(layer.inputs(source)) + "\n"  # owner-only: hashes inside
            write_if_changed(build / "inputs" / f"{layer.name}.json", text, mode=0o600)
        if layer.unkeyed is not None:
            text = canonical_json(layer.unkeyed(source)) + "\n"
            write_if_changed(build / "inputs" / f"{layer.name}.unkeyed.json", text, mode=0o600)
    write_if_changed(files_file(paths, name), json.dumps([str(f) for f in ks.files]) + "\n")
    key = layer_key("kickstart", VERSION, {"sections": ks.sections, "syntax": conf.syntax})
    report.record(paths, name, "kickstart", key, True, time.monotonic() - started)


@contextlib.contextmanager
def _setting(paths: Paths, name: str, key: str) -> Iterator[None]:
    """A settings problem found while using a setting: name the settings file and the key."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{paths.settings(name)}: {key}: {exc.message}", exc.hint) from None


def bundled_repos_used(paths: Paths, name: str) -> list[str]:
    """Cheap text check (no parsing) used when doit loads: which bundled repositories
    (tasks ``repo``, ``distro``) does the build need?"""
    texts = []
    for f in [*recorded_files(paths, name), str(paths.settings(name)), str(paths.local_settings)]:
        with contextlib.suppress(OSError):  # the kickstart task says what is wrong with it
            texts.append(read_bounded(f).decode(errors="replace"))
    texts.append(os.environ.get("KSBAKE_MIRRORS", ""))
    return [task for task in ("repo", "distro") if any(f"ksbake_{task}" in t for t in texts)]
