"""A layer, declared once, and the one runner that does what every layer's step has in common.

A ``Layer`` says what goes into its key and how to build it; ``run_step`` does the rest:
read the inputs (``inputs/<layer>.json`` written by the kickstart layer, other build files),
read the parents' refs, add the tool versions, compute the key, let the store decide whether
to build (``Store.obtain``), write ``<layer>.ref``, record the event. The declarations
themselves are in ``ksbake.layers`` (the chain, in order); the doit tasks are derived from them
(``tasks/layers.py``).

The key of a layer object::

    layer_key(name, version, {**keyed inputs, **discovered, "tools": {tool: version}},
              {parent: key, fan-out parent: {item: key}})

Builds get one ``Job`` and return metadata for ``meta.json``: ``seal`` (files whose size and
mtime the store checks before reuse), ``warnings`` (shown on every run, also on reuse), ``note``
(a word for the summary) and anything the layer wants to keep.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksbake.errors import BuildError, KsbakeError
from ksbake.hashing import canonical_json, layer_key, write_if_changed
from ksbake.paths import Paths

if TYPE_CHECKING:
    from ksbake.kickstart import Kickstart
    from ksbake.layout import Plan
    from ksbake.settings import Settings
    from ksbake.store import Store

log = logging.getLogger("ksbake")

NAMESPACES = "namespaces"  # a worker in private mount and PID namespaces (mounts, chroots)
PROCESS = "process"  # a worker process (dnf keeps global state), no namespaces
IN_PROCESS = "none"  # in doit's process: only files written, nothing global touched


@dataclass(frozen=True)
class Source:
    """What a layer's inputs are taken from: the parsed kickstart, settings, partition plan."""

    ks: Kickstart
    conf: Settings
    plan: Plan
    out_dir: str  # out/NAME: published paths appear in descriptors


@dataclass(frozen=True)
class Layer:
    """One layer of the chain: everything that goes into its key, and how it is built."""

    name: str
    version: int  # bump when the bytes it writes change for the same inputs
    doc: str
    # keyed inputs ---------------------------------------------------------------------------
    inputs: Callable[[Source], dict[str, Any]] | None = None  # -> build/NAME/inputs/<name>.json
    reads: Mapping[str, str] = field(default_factory=dict)  # input -> build file (its text)
    parents: tuple[str, ...] = ()  # layers whose keys go in (a Merkle chain)
    tools: tuple[str, ...] = ()  # names in ksbake.run.VERSIONS
    discover: str | None = None  # "module:fn"(job) -> inputs learned at run time (repo metadata)
    # read by the build, not keyed (they do not shape its bytes) --------------------------------
    unkeyed: Callable[[Source], dict[str, Any]] | None = None  # -> inputs/<name>.unkeyed.json
    context: Mapping[str, str] = field(default_factory=dict)  # input -> build file (JSON)
    # how it is built --------------------------------------------------------------------------
    build: str | None = None  # "module:fn"(job) -> meta; None: a custom ``step`` instead
    isolation: str = NAMESPACES
    each: str | None = None  # fan-out: one object per entry of ``inputs[each]``
    checks: tuple[str, ...] = ()  # ancestor layers whose objects the build reads (verified)
    exports: tuple[str, ...] = ()  # object files copied to build/NAME/ (when changed)
    on_export: str | None = None  # "module:fn"(name, old_text, new_text): say what changed
    step: str | None = None  # "module:fn"(paths, name) for layers outside the store
    code: tuple[str, ...] = ()  # modules and packages under ksbake/ that are its code

    def parent_refs(self) -> list[str]:
        return [f"{p}.ref" for p in self.parents]


@dataclass(frozen=True)
class Job:
    """Everything one build reads; JSON round-trips it into a worker process."""

    layer: str
    key: str  # also the seed of every identifier the build derives (same key, same bytes)
    inputs: dict[str, Any]  # keyed and unkeyed inputs, and the files of ``reads``/``context``
    parents: dict[str, Any]  # name -> {"key", "dir"}; fan-out parent: name -> {item: {...}}
    staging: str  # the directory the object is built in (the store renames it)
    paths: dict[str, str]  # Paths fields (store, dnf cache, bundled repository ...)
    discovered: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> Path:
        return Path(self.staging)

    def workspace(self) -> Paths:
        return Paths(**{k: Path(v) for k, v in self.paths.items()})

    def parent_dir(self, name: str) -> Path:
        return Path(self.parents[name]["dir"])


def function(spec: str) -> Callable[..., Any]:
    """``"module:function"`` imported when needed (a no-op doit run imports no layer)."""
    module, _, name = spec.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


def ref_path(paths: Paths, name: str, layer_name: str) -> Path:
    return paths.build_dir(name) / f"{layer_name}.ref"


def read_ref(paths: Paths, name: str, layer_name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ref_path(paths, name, layer_name).read_text())
    return data


def ref_keys(ref: dict[str, Any]) -> dict[str, str] | str:
    """A ref's key, or ``{item: key}`` for a fan-out layer."""
    if "items" in ref:
        return {item: v["key"] for item, v in ref["items"].items()}
    key: str = ref["key"]
    return key


def _inputs(paths: Paths, name: str, spec: Layer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all inputs the build reads, the keyed ones)."""
    build = paths.build_dir(name)
    given: dict[str, Any] = {}
    if spec.inputs is not None:
        given = json.loads((build / "inputs" / f"{spec.name}.json").read_text())
    keyed = dict(given)
    if spec.unkeyed is not None:  # read by the build, never keyed, not a doit dependency
        given = {
            **given,
            **json.loads((build / "inputs" / f"{spec.name}.unkeyed.json").read_text()),
        }
    for entry, file in spec.reads.items():
        keyed[entry] = given[entry] = (build / file).read_text()
    for entry, file in spec.context.items():
        given[entry] = json.loads((build / file).read_text())
    return given, keyed


def _parents(paths: Paths, name: str, spec: Layer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parent objects for the build, parent keys for the key)."""
    from ksbake.store import Store

    store = Store(paths.store)
    objects: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    for parent in spec.parents:
        ref = read_ref(paths, name, parent)
        keys[parent] = ref_keys(ref)
        if "items" in ref:
            objects[parent] = {
                item: {**v, "dir": str(store.object_dir(parent, v["key"]))}
                for item, v in ref["items"].items()
            }
        else:
            objects[parent] = {"key": ref["key"], "dir": str(store.object_dir(parent, ref["key"]))}
    return objects, keys


def key_of(
    spec: Layer, keyed: dict[str, Any], discovered: dict[str, Any], parents: dict[str, Any]
) -> str:
    """The one formula for every layer's key (see the module docstring)."""
    from ksbake.run import tool_versions

    doc = {**keyed, **discovered}
    if spec.tools:
        doc["tools"] = tool_versions(spec.tools)
    return layer_key(spec.name, spec.version, doc, parents)


def current_key(paths: Paths, name: str, spec: Layer) -> str:
    """The key the layer's object would have now (not for ``discover`` or fan-out layers):
    what the store is asked for, computed without building anything."""
    if spec.discover is not None or spec.each is not None:
        raise ValueError(f"{spec.name}: its key needs a build step")
    _, keyed = _inputs(paths, name, spec)
    _, parent_keys = _parents(paths, name, spec)
    return key_of(spec, keyed, {}, parent_keys)


@dataclass(frozen=True)
class Outcome:
    key: str
    built: bool
    meta: dict[str, Any]


def obtain(
    spec: Layer,
    paths: Paths,
    inputs: dict[str, Any],
    keyed: dict[str, Any],
    parents: dict[str, Any],
    parent_keys: dict[str, Any],
) -> Outcome:
    """Key, then the store: reuse the object or build it (in the declared isolation)."""
    from ksbake import report, sandbox
    from ksbake.store import Store

    discovered: dict[str, Any] = {}
    before_key = Job(spec.name, "", inputs, parents, "", _paths_dict(paths))  # no key yet
    if spec.discover is not None:
        discovered = function(spec.discover)(before_key)
    key = key_of(spec, keyed, discovered, parent_keys)

    def build(staging: Path) -> dict[str, Any]:
        verify_inputs(Store(paths.store), spec, parents)
        job = Job(spec.name, key, inputs, parents, str(staging), before_key.paths, discovered)
        if spec.isolation == IN_PROCESS or spec.discover is not None:
            # a layer with ``discover`` runs wholly in its worker (the caller): one dnf start
            meta = function(spec.build or "")(job)
        else:
            meta = sandbox.call(
                "ksbake.runner:build_in_worker",
                {"build": spec.build, "job": asdict(job)},
                isolate=spec.isolation == NAMESPACES,
                workdir=staging,
            )
        return {
            **(meta or {}),
            "size": report.tree_size(staging),
            "parents": parent_keys,
        }

    obtained = Store(paths.store).obtain(spec.name, key, build)
    return Outcome(key, obtained.built, {**obtained.meta, "discovered": discovered})


_VERIFIED: set[tuple[str, str]] = set()
"""Objects this process has verified: the formats of one convert step read one bootloader
object, which is hashed once, not once per format."""


def verify_inputs(store: Store, spec: Layer, parents: dict[str, Any]) -> None:
    """Before building from them: the objects the build reads (``parents`` and ``checks``)
    still match their manifests. A corrupt one is removed, so the next run rebuilds it; its
    bytes never reach a new object."""
    todo = [
        (name, item["key"])
        for name, obj in parents.items()
        for item in (obj.values() if "key" not in obj else [obj])
    ]
    seen: set[tuple[str, str]] = set()
    while todo:
        layer_name, key = todo.pop()
        if (layer_name, key) in seen:
            continue
        seen.add((layer_name, key))
        wanted = layer_name in spec.parents or layer_name in spec.checks
        if wanted and (layer_name, key) not in _VERIFIED:
            problems = store.verify(layer_name, key)
            if problems:
                store.evict(layer_name, key)
                raise BuildError(
                    f"the {layer_name} object {key[:16]} in the store is corrupt "
                    f"({'; '.join(problems[:3])}): removed it",
                    hint="run the build again: it rebuilds what was removed",
                )
            _VERIFIED.add((layer_name, key))
        meta = store.read_meta(layer_name, key)
        for parent, value in (meta.get("parents") or {}).items():
            keys = value.values() if isinstance(value, dict) else [value]
            todo += [(parent, k) for k in keys if parent in spec.checks]


def located(exc: KsbakeError, where: str | None) -> KsbakeError:
    """The same error, said at ``where`` (a kickstart's file:line) when it names no place."""
    if not where or exc.message.startswith(where):
        return exc
    located_exc = type(exc).__new__(type(exc))
    KsbakeError.__init__(located_exc, f"{where}: {exc.message}", exc.hint)
    return located_exc


def build_in_worker(build: str, job: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: one layer build."""
    result: dict[str, Any] = function(build)(Job(**job)) or {}
    return result


def obtain_in_worker(spec: Layer, paths: dict[str, str], name: str) -> dict[str, Any]:
    """In the worker of a layer with ``discover``: key and build in one process."""
    workspace = Paths(**{k: Path(v) for k, v in paths.items()})
    inputs, keyed = _inputs(workspace, name, spec)
    parents, parent_keys = _parents(workspace, name, spec)
    return asdict(obtain(spec, workspace, inputs, keyed, parents, parent_keys))


def _paths_dict(paths: Paths) -> dict[str, str]:
    return {k: str(v) for k, v in asdict(paths).items()}


def run_step(paths: Paths, name: str, spec: Layer) -> None:
    """The step of a stored layer for appliance ``name``: obtain its object(s), write its ref."""
    from ksbake import sandbox

    started = time.monotonic()
    if spec.discover is not None:
        result = sandbox.call(
            "ksbake.layers:obtain_in_worker",  # the worker finds the layer by its name
            {"layer_name": spec.name, "paths": _paths_dict(paths), "name": name},
            isolate=False,
        )
        outcomes = {None: Outcome(**result)}
    else:
        inputs, keyed = _inputs(paths, name, spec)
        parents, parent_keys = _parents(paths, name, spec)
        if spec.each is None:
            outcomes = {None: obtain(spec, paths, inputs, keyed, parents, parent_keys)}
        else:
            outcomes = {}
            for item, one in inputs[spec.each].items():  # each item's inputs are its key's
                outcomes[item] = obtain(spec, paths, one, one, parents, parent_keys)
                _record(paths, name, f"{spec.name}-{item}", outcomes[item], started)
                started = time.monotonic()

    build = paths.build_dir(name)
    if spec.each is None:
        outcome = outcomes[None]
        for file in spec.exports:
            _export(spec, name, paths, outcome.key, file)
        ref: dict[str, Any] = {"key": outcome.key}
        if outcome.meta.get("discovered"):
            ref["discovered"] = outcome.meta["discovered"]
        write_if_changed(build / f"{spec.name}.ref", canonical_json(ref) + "\n")
        _record(paths, name, spec.name, outcome, started)
    else:
        items = {
            item: {"key": o.key, "inputs": inputs[spec.each][item]} for item, o in outcomes.items()
        }
        write_if_changed(build / f"{spec.name}.ref", canonical_json({"items": items}) + "\n")


def _export(spec: Layer, name: str, paths: Paths, key: str, file: str) -> None:
    from ksbake.store import Store

    new_text = (Store(paths.store).object_dir(spec.name, key) / file).read_text()
    target = paths.build_dir(name) / file
    old_text = target.read_text() if target.exists() else None
    if old_text is not None and old_text != new_text and spec.on_export:
        function(spec.on_export)(name, old_text, new_text)
    write_if_changed(target, new_text)


def _record(paths: Paths, name: str, row: str, outcome: Outcome, started: float) -> None:
    from ksbake import report

    for warning in outcome.meta.get("warnings", []):  # also when the object was reused
        log.warning("%s:%s: %s", row, name, warning)
    report.record(
        paths,
        name,
        row,
        outcome.key,
        outcome.built,
        time.monotonic() - started,
        outcome.meta.get("size"),
        note=outcome.meta.get("note"),
    )
