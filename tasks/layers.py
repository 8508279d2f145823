"""doit tasks of the layers, kickstart to publish: derived from the declarations of the chain
(``ksbake.layers.CHAIN``), one sub-task per appliance.

Each task's ``file_dep`` are the small files the layer reads (its inputs file, the files it
``reads``, its parents' refs) and its own code; its target is its ref file. Each action asks
the store first (``ksbake.runner.run_step``), so doit decides *when* to look and the store
*whether* to build.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from doit.tools import config_changed

from ksbake.layers import CHAIN
from ksbake.layers.l1_kickstart import bundled_repos_used, recorded_files
from ksbake.runner import Layer
from tasks.common import PATHS, action, objects_intact

ENV_INPUTS = ("KSBAKE_MIRRORS", "KSBAKE_ACCEL")  # environment overrides read by the settings


def _build(name: str, file: str) -> str:
    return str(PATHS.build_dir(name) / file)


def _code(layer: Layer) -> list[str]:
    """A layer's own code as a dependency: an edit reruns the step, which then rebuilds only
    if the layer's version (part of its key) was bumped, else reuses the stored object."""
    files: list[str] = []
    for entry in layer.code:
        path = PATHS.root / "ksbake" / entry
        if path.is_dir():
            files += sorted(str(p) for p in path.glob("*.py"))
        else:
            files.append(str(path if path.suffix else path.with_suffix(".py")))
    return files


def _kickstart(layer: Layer, name: str) -> dict[str, Any]:
    deps = recorded_files(PATHS, name)
    for settings in (PATHS.settings(name), PATHS.local_settings):
        if settings.exists():
            deps.append(str(settings))
    return {
        "file_dep": deps,
        "targets": [_build(name, f"inputs/{x.name}.json") for x in CHAIN if x.inputs]
        + [_build(name, f"inputs/{x.name}.unkeyed.json") for x in CHAIN if x.unkeyed],
        # an environment override is an input too: rerun when it changes
        "uptodate": [config_changed({v: os.environ.get(v, "") for v in ENV_INPUTS})],
        "clean": True,
    }


def _published_current(name: str) -> bool:
    from ksbake.layers import l9_publish

    return l9_publish.current(PATHS, name)


def _publish(layer: Layer, name: str) -> dict[str, Any]:
    reads = ("convert.ref", "descriptor.ref", "lock.json", "inputs/publish.json")
    return {
        "file_dep": [_build(name, f) for f in reads],
        "targets": [str(PATHS.out / name / "SHA256SUMS")],
        "uptodate": [(_published_current, [name])],
    }


def _lock_metadata_unchanged(name: str) -> bool:
    from ksbake.layers import l2_lock

    return l2_lock.metadata_unchanged(PATHS, name)


def _stored(layer: Layer, name: str) -> dict[str, Any]:
    deps = [_build(name, ref) for ref in layer.parent_refs()]
    deps += [_build(name, file) for file in layer.reads.values()]
    if layer.inputs is not None:
        deps.append(_build(name, f"inputs/{layer.name}.json"))
    ref = _build(name, f"{layer.name}.ref")
    task: dict[str, Any] = {
        "file_dep": deps,
        "targets": [ref, *(_build(name, f) for f in layer.exports)],
        "uptodate": [],
    }
    # the object still there (doit verify may have removed it), sealed files untouched
    task["uptodate"].append((objects_intact, [layer.name, ref]))
    if layer.discover is not None:  # repository metadata may have moved (nightly)
        task["uptodate"].append((_lock_metadata_unchanged, [name]))
        task["task_dep"] = bundled_repos_used(PATHS, name)
    return task


def _tasks(layer: Layer) -> Iterator[dict[str, Any]]:
    shape: Callable[[Layer, str], dict[str, Any]]
    if layer.name == "kickstart":
        shape = _kickstart
    elif layer.name == "publish":
        shape = _publish
    else:
        shape = _stored
    for name in PATHS.appliances():
        if layer.step is not None:
            act = action(layer.step, PATHS, name)
        else:
            act = action("ksbake.layers:step", PATHS, name, layer.name)
        task = shape(layer, name)
        task["file_dep"] = task["file_dep"] + _code(layer)
        yield {"name": name, "doc": f"{layer.doc} ({name})", "actions": [act], **task}


def _creator(layer: Layer) -> Callable[[], Iterator[dict[str, Any]]]:
    def create() -> Iterator[dict[str, Any]]:
        yield from _tasks(layer)

    create.__doc__ = layer.doc[:1].upper() + layer.doc[1:] + ", per appliance."
    return create


def creators() -> dict[str, Callable[[], Iterator[dict[str, Any]]]]:
    """``task_kickstart`` ... ``task_publish``: the names doit looks for in dodo.py."""
    return {f"task_{layer.name}": _creator(layer) for layer in CHAIN}
