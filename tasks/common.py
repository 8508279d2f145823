"""Shared doit plumbing: the xxhash file checker, error handling, paths."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from doit.dependency import FileChangedChecker
from doit.exceptions import TaskFailed

from ksbake.errors import KsbakeError
from ksbake.hashing import file_digest
from ksbake.paths import Paths

PATHS = Paths.from_env()
SHOWN = "[shown above]"  # a TaskFailed whose message was printed as "ksbake: error: ..."


class XxhashChecker(FileChangedChecker):
    """Like doit's MD5Checker (mtime, then size, then content hash), with xxh3_128."""

    def check_modified(self, file_path: str, file_stat: os.stat_result, state: Any) -> bool:
        timestamp, size, digest = state
        if file_stat.st_mtime == timestamp:
            return False
        if file_stat.st_size != size:
            return True
        return digest != file_digest(file_path)

    def get_state(self, dep: str, current_state: Any) -> Any:
        timestamp = os.path.getmtime(dep)
        if current_state and current_state[0] == timestamp:
            return None
        return timestamp, os.path.getsize(dep), file_digest(dep)


def objects_intact(layer: str, ref: str) -> bool:
    """doit ``uptodate`` check: the store objects a ref file names are still as built (their
    disks are published as hardlinks; a read-write boot of one must not go unnoticed)."""
    import json

    from ksbake.store import Store

    try:
        with open(ref) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    keys = [data["key"]] if "key" in data else [v["key"] for v in data["items"].values()]
    store = Store(PATHS.store)
    return all(store.intact(layer, key) for key in keys)


def interrupt_in_one_line() -> None:
    """Ctrl-C ends the run with one line, not doit's traceback. The store removes what was
    being built (``Store.obtain`` cleans up on any exception); workers get the signal too."""

    def stop(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one line, even on a second Ctrl-C
        print("ksbake: interrupted: nothing half-built is kept", file=sys.stderr, flush=True)
        raise SystemExit(130)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, stop)


def action(step: str, *args: Any) -> Callable[[], Any]:
    """Wrap a layer step ("module:function") for doit: a KsbakeError becomes one clear line,
    not a traceback. The module is imported when the task runs, so that a no-op run does not
    pay for importing pykickstart, dnf, lxml and friends."""

    def run() -> Any:
        from ksbake.run import setup_logging  # once, when a step runs (not for a no-op)

        setup_logging()
        module, _, name = step.partition(":")
        try:
            getattr(importlib.import_module(module), name)(*args)
        except KsbakeError as exc:
            if os.environ.get("KSBAKE_DEBUG"):
                raise
            print(f"ksbake: error: {exc}", file=sys.stderr, flush=True)
            return TaskFailed(f"{SHOWN} {exc}")  # the reporter keeps it for its summary
        return None

    return run
