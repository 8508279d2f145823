"""What each layer did: an event log (for tests and nightly reports) and the build summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ksbake.paths import Paths


def tree_size(path: Path) -> int:
    """Bytes used on disk (sparse-aware), measured once when an object is built."""
    from ksbake.run import probe  # not at doit's start: a no-op run needs none of run.py

    out = probe(["du", "-s", "--block-size=1", path])
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def record(
    paths: Paths,
    name: str,
    layer: str,
    key: str,
    built: bool,
    seconds: float,
    size: int | None = None,
    note: str | None = None,
) -> None:
    """Append an event and remember the layer's outcome for this appliance's summary."""
    event = {
        "run": run_id(),
        "time": round(time.time(), 3),
        "appliance": name,
        "layer": layer,
        "key": key,
        "built": built,
        "seconds": round(seconds, 3),
        "size": size,
        "pid": os.getpid(),
    }
    if note:
        event["note"] = note
    paths.events.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.events, "a") as f:
        f.write(json.dumps(event, sort_keys=True) + "\n")
    summary = paths.build_dir(name) / "summary" / f"{layer}.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(event, sort_keys=True))
    verb = "built" if built else "reused"
    print(
        f"{layer}:{name}: {verb} {key[:12]} in {seconds:.2f}s"
        + (f" ({human(size)})" if size else ""),
        flush=True,
    )
    if note:  # e.g. the bootloader's: which GRUB modules, the tree's or the host's
        print(f"  {note}", flush=True)


def run_id() -> str:
    """Identifies one doit invocation, also across its `-n N` worker processes (inherited)."""
    if "KSBAKE_RUN_ID" not in os.environ:
        os.environ["KSBAKE_RUN_ID"] = f"{os.getpid()}-{time.time_ns()}"
    return os.environ["KSBAKE_RUN_ID"]


def human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def summary(paths: Paths, name: str, layers: list[str]) -> str:
    """A table of the layers of one appliance: built, reused (store hit) or cached (doit
    found the task up to date), time, size, key."""
    rows = [f"{'layer':<14} {'result':<7} {'time':>8} {'size':>10}  key"]
    notes = []
    for layer in layers:
        path = paths.build_dir(name) / "summary" / f"{layer}.json"
        if not path.exists():
            rows.append(f"{layer:<14} {'-':<7}")
            continue
        ev = json.loads(path.read_text())
        # "cached": doit found the task up to date and did not run it at all
        result = "cached" if ev.get("run") != run_id() else "built" if ev["built"] else "reused"
        rows.append(
            f"{layer:<14} {result:<7} {ev['seconds']:>7.2f}s "
            f"{human(ev.get('size')):>10}  {ev['key'][:16]}"
        )
        if ev.get("note"):
            notes.append(f"{layer}: {ev['note']}")
    return "\n".join(rows + notes)
