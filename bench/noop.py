"""Benchmark: cold build time of each layer of the demo appliance, then no-op `doit` runs.

Prints numbers, not pass/fail (the machines are shared and noisy). Target: a no-op run of
`doit appliance:demo` under 0.5 s wall.

    .venv/bin/python bench/noop.py [--runs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import Bench, demo_kickstart, show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="workspace directory to use and keep")
    args = parser.parse_args()
    bench = Bench(args.keep)
    bench.write("demo.ks", demo_kickstart())
    cold, events = bench.doit("appliance:demo")
    print(f"cold build of demo (every layer built): {cold:.2f} s wall")
    show(events)
    noop = [bench.doit("appliance:demo")[0] for _ in range(args.runs)]
    median = statistics.median(noop)
    print(
        f"no-op run: median {median:.3f} s, min {min(noop):.3f} s, max {max(noop):.3f} s "
        f"over {args.runs} runs (target < 0.5 s: {'met' if median < 0.5 else 'NOT met'})"
    )
    print(f"ratio no-op / cold: {median / cold:.4f}")
    bench.close()


if __name__ == "__main__":
    main()
