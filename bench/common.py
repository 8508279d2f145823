"""Shared bench helpers: a private workspace over its own store, doit runs, layer events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

# A demo appliance with a realistic amount of data: %post writes ~200 MB in ~4000 files, half
# random (incompressible) and half slices of the busybox binary (compressible like programs).
BIG_POST = """
%post
mkdir -p /opt/data
i=0
while [ $i -lt 40 ]; do
  mkdir -p /opt/data/d$i
  j=0
  while [ $j -lt 100 ]; do
    if [ $((j % 2)) -eq 0 ]; then
      dd if=/dev/urandom of=/opt/data/d$i/f$j bs=50k count=1 2>/dev/null
    else
      dd if=/usr/bin/busybox of=/opt/data/d$i/f$j bs=50k count=1 skip=$((j % 20)) 2>/dev/null
    fi
    j=$((j+1))
  done
  i=$((i+1))
done
%end
"""


class Bench:
    def __init__(self, keep: Path | None = None) -> None:
        self.root = keep or Path(tempfile.mkdtemp(prefix="ksbake-bench-"))
        self.keep = keep is not None
        self.configs = self.root / "configs"
        self.configs.mkdir(parents=True, exist_ok=True)
        store = self.root / "store"
        store.mkdir(exist_ok=True)
        shared_debs = PROJECT / "cache" / "debs"  # reuse downloaded .debs: measure building
        if shared_debs.is_dir() and not (store / "debs").exists():
            (store / "debs").symlink_to(shared_debs)
        self.env = {
            **os.environ,
            "KSBAKE_CONFIGS": str(self.configs),
            "KSBAKE_CACHE": str(self.root / "cache"),
            "KSBAKE_STORE": str(store),
            "KSBAKE_OUT": str(self.root / "out"),
        }
        self.store = store

    def write(self, name: str, text: str) -> None:
        (self.configs / name).write_text(text)

    def events(self) -> list[dict]:
        log = self.root / "cache" / "log" / "events.jsonl"
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    def doit(self, *args: str) -> tuple[float, list[dict]]:
        """Run doit; returns (wall seconds, the layer events of this run)."""
        before = len(self.events())
        started = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "doit",
                "-f",
                str(PROJECT / "dodo.py"),
                "-d",
                str(PROJECT),
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"doit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return elapsed, self.events()[before:]

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def demo_kickstart() -> str:
    return (PROJECT / "configs" / "demo.ks").read_text()


def show(events: list[dict]) -> None:
    for ev in events:
        what = "built" if ev["built"] else "reused"
        print(f"    {ev['layer']:<14} {what:<7} {ev['seconds']:7.2f} s")


def timed(argv: list[str], **kwargs) -> float:  # noqa: ANN003
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - started
