"""doit task ``gc``: keep the store within its size budget (not part of a normal build)."""

from __future__ import annotations

import os

from tasks.common import PATHS, action

DEFAULT_BUDGET = "50GiB"


def task_gc() -> dict:
    """Remove least recently used store objects beyond KSBAKE_CACHE_BUDGET (default 50GiB)."""
    return {
        "doc": "remove least recently used cache objects beyond KSBAKE_CACHE_BUDGET",
        "actions": [action("tasks.gc:collect", PATHS)],
        "uptodate": [False],
        "verbosity": 2,
    }


def budget() -> int:
    """KSBAKE_CACHE_BUDGET in bytes: a size ("50GiB", or MiB as a number); 0 keeps only what
    the workspace uses (the store-wide clean). Read when the task runs: a bad value is one
    line, not a traceback while doit loads."""
    from ksbake.errors import ConfigError
    from ksbake.settings import parse_size

    text = os.environ.get("KSBAKE_CACHE_BUDGET", DEFAULT_BUDGET).strip()
    if text.isdigit():
        return int(text) * 2**20
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(
            f"KSBAKE_CACHE_BUDGET: {exc}", hint="e.g. KSBAKE_CACHE_BUDGET=20GiB, or 0"
        ) from None


def collect(paths: object) -> None:
    from ksbake import gc
    from ksbake.paths import Paths

    assert isinstance(paths, Paths)
    gc.step(paths, budget())
