"""doit task ``verify``: check the store and the published appliances (not part of a build)."""

from __future__ import annotations

from typing import Any

from tasks.common import PATHS, action


def task_verify() -> dict[str, Any]:
    """Check every store object's bytes against its manifest (removing corrupt ones) and the
    published files; `doit verify --appliance NAME` checks only what NAME uses."""
    return {
        "doc": "check store objects and out/ against what was committed (--appliance NAME)",
        "params": [{"name": "appliance", "long": "appliance", "default": "", "type": str}],
        "actions": [_verify],
        "uptodate": [False],
        "verbosity": 2,
    }


def _verify(appliance: str) -> Any:
    return action("ksbake.verify:step", PATHS, appliance)()
