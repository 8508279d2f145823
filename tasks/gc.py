"""doit task ``gc``: keep the store within its size budget (not part of a normal build)."""

from __future__ import annotations

import os

from ksbake.settings import parse_size
from tasks.common import PATHS, action

DEFAULT_BUDGET = "50GiB"


def task_gc() -> dict:
    """Remove least recently used store objects beyond KSBAKE_CACHE_BUDGET (default 50GiB)."""
    budget = parse_size(os.environ.get("KSBAKE_CACHE_BUDGET", DEFAULT_BUDGET))
    return {
        "doc": "remove least recently used cache objects beyond KSBAKE_CACHE_BUDGET",
        "actions": [action("ksbake.gc:step", PATHS, budget)],
        "uptodate": [False],
        "verbosity": 2,
    }
