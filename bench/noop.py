"""Benchmark: cold build time of each layer of the demo appliance, then no-op `doit` runs.

Prints numbers, not pass/fail (the machines are shared and noisy). Target: a no-op run of
`doit appliance:demo` under 0.5 s wall.

    .venv/bin/python bench/noop.py [--runs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def doit(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "-d", str(PROJECT), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"doit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="workspace directory to use and keep")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ksbake-bench-"))
    (root / "configs").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "configs" / "demo.ks", root / "configs")
    env = {
        **os.environ,
        "KSBAKE_CONFIGS": str(root / "configs"),
        "KSBAKE_CACHE": str(root / "cache"),
        "KSBAKE_STORE": str(root / "store"),
        "KSBAKE_OUT": str(root / "out"),
    }
    # reuse downloaded .debs so the cold numbers measure building, not the network
    shared_debs = PROJECT / "cache" / "debs"
    if shared_debs.is_dir():
        (root / "store").mkdir(exist_ok=True)
        if not (root / "store" / "debs").exists():
            (root / "store" / "debs").symlink_to(shared_debs)

    cold = doit(env, "appliance:demo")
    events = [json.loads(x) for x in (root / "cache/log/events.jsonl").read_text().splitlines()]
    print(f"cold build of demo: {cold:.2f} s wall")
    for ev in events:
        print(
            f"  {ev['layer']:<10} {'built' if ev['built'] else 'reused':<7} {ev['seconds']:7.2f} s"
        )
    noop = [doit(env, "appliance:demo") for _ in range(args.runs)]
    median = statistics.median(noop)
    print(
        f"no-op run: median {median:.3f} s, min {min(noop):.3f} s, max {max(noop):.3f} s "
        f"over {args.runs} runs (target < 0.5 s: {'met' if median < 0.5 else 'NOT met'})"
    )
    print(f"ratio no-op / cold: {median / cold:.4f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
