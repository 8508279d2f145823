"""``doit info appliance:NAME`` (or ``doit info NAME``): each layer of the appliance, up to
date or not, and why, in words. Registered as doit's ``info`` command in pyproject.toml
(``[tool.doit.plugins.command]``); any other task gets doit's own ``info``.

doit decides staleness from what is on disk now: after a kickstart edit only ``kickstart`` is
stale, and the later layers are checked again once it has rewritten their inputs (their key
then says whether the store already has them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from doit.cmd_info import Info as DoitInfo

from ksbake.layers import CHAIN
from tasks.common import PATHS

PROJECT = Path(__file__).resolve().parents[1]
UPTODATE_WORDS = {
    "objects_intact": "its store object is gone or was changed since it was built (doit verify)",
    "_lock_metadata_unchanged": "a repository's metadata changed (an upstream update)",
    "config_changed": "an environment override (KSBAKE_MIRRORS, KSBAKE_ACCEL, ...) changed",
    "_published_current": "out/NAME differs from what was published",
    "boot settings": "its boot settings (configs/NAME.toml) changed",
}


def explain(path: str, name: str) -> str:
    """One changed or missing file_dep, in words."""
    p = Path(path)
    if p.suffix == ".ref":
        return f"the {p.stem} layer it is built on has a new key"
    if p.parent.name == "inputs":
        layer = p.name.split(".")[0]
        return f"its part of the kickstart or settings changed (inputs/{layer}.json)"
    if p.is_relative_to(PATHS.configs):
        return f"{p.name} changed"
    if p.is_relative_to(PROJECT):
        return f"ksbake's code changed ({p.relative_to(PROJECT)})"
    return f"{p} changed"


def reasons_in_words(reasons: dict[str, Any], name: str, layer: str = "") -> list[str]:
    if reasons.get("missing_target"):
        return ["not built in this workspace yet"]
    words: list[str] = []
    for check, _args, _kwargs in reasons.get("uptodate_false") or []:
        label = getattr(check, "__name__", None) or type(check).__name__
        if layer == "boottest" and label == "config_changed":
            label = "boot settings"
        words.append(UPTODATE_WORDS.get(label, f"{label} says it must run").replace("NAME", name))
    for key in ("changed_file_dep", "missing_file_dep", "removed_file_dep", "added_file_dep"):
        words += [explain(p, name) for p in reasons.get(key) or []]
    if reasons.get("checker_changed"):
        words.append("doit's file checker changed")
    if reasons.get("has_no_dependencies") and not words:
        words.append("it runs every time")
    return list(dict.fromkeys(words))


class Info(DoitInfo):
    """doit info, with ``appliance:NAME`` explained layer by layer."""

    doc_purpose = "show why an appliance's layers would run (doit info appliance:NAME), or a task"

    def _execute(self, pos_args: list[str], hide_status: bool = False) -> int:
        target = pos_args[0] if len(pos_args) == 1 else ""
        name = target.removeprefix("appliance:")
        if name not in PATHS.appliances():
            return int(super()._execute(pos_args, hide_status=hide_status) or 0)
        tasks = {t.name: t for t in self.task_list}
        self.outstream.write(f"{name}: {PATHS.kickstart(name)}\n")
        stale = False
        for layer in [layer.name for layer in CHAIN] + ["boottest"]:
            if layer == "boottest" and not stale:
                self.outstream.write("the appliance is up to date\n")
            task = tasks.get(f"{layer}:{name}")
            if task is None:
                continue
            status = self.dep_manager.get_status(task, tasks, get_log=True)
            key = _ref_key(name, layer)
            if status.status == "up-to-date":
                line = "up to date" + (f" (key {key[:16]})" if key else "")
            elif stale:
                line = "checked again after the layers above"
                extra = reasons_in_words(status.reasons, name, layer)
                if extra:
                    line += ": " + "; ".join(extra)
            else:
                line = "will run: " + "; ".join(reasons_in_words(status.reasons, name, layer))
                stale = True
            self.outstream.write(f"  {layer:<11} {line}\n")
        return 0


def _ref_key(name: str, layer: str) -> str | None:
    try:
        data = json.loads((PATHS.build_dir(name) / f"{layer}.ref").read_text())
    except (OSError, ValueError):
        return None
    return data.get("key") if isinstance(data, dict) else None
