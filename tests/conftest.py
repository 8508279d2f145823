"""Shared test fixtures.

Real builds run `doit` as users do, in private workspaces (own configs/, doit state and
out/) over ONE store shared by the whole test session, so the bundled repository and the
common package trees are built once per run and reused by every test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT.parent / "shared" / "corpus"


def shared_store() -> Path:
    """The store reused across the test session (and across local runs, for speed)."""
    return Path(os.environ.get("KSBAKE_TEST_STORE", PROJECT / "cache" / "test-store"))


@dataclass
class Result:
    rc: int
    out: str
    err: str
    ran: list[str]
    uptodate: list[str]
    events: list[dict]

    def built(self, layer: str) -> list[dict]:
        return [e for e in self.events if e["layer"] == layer and e["built"]]

    def layers_run(self) -> set[str]:
        return {e["layer"] for e in self.events}


@dataclass
class Workspace:
    root: Path
    store: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def write(self, name: str, text: str) -> Path:
        path = self.configs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def events(self) -> list[dict]:
        log = self.cache / "log" / "events.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def environ(self, extra_env: dict | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "KSBAKE_CONFIGS": str(self.configs),
            "KSBAKE_CACHE": str(self.cache),
            "KSBAKE_STORE": str(self.store),
            "KSBAKE_OUT": str(self.root / "out"),
            **self.env,
            **(extra_env or {}),
        }

    @staticmethod
    def argv(*args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(PROJECT / "dodo.py"),
            "-d",
            str(PROJECT),
            *args,
        ]

    def spawn(self, *args: str) -> subprocess.Popen:
        """Start doit in its own process group (for tests that kill a build)."""
        return subprocess.Popen(
            self.argv(*args),
            env=self.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def doit(self, *args: str, timeout: int = 900, extra_env: dict | None = None) -> Result:
        before = len(self.events())
        proc = subprocess.run(
            self.argv(*args),
            env=self.environ(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        ran = re.findall(r"^\.\s+(\S+)$", proc.stdout, re.M)
        uptodate = re.findall(r"^--\s+(\S+)$", proc.stdout, re.M)
        return Result(
            proc.returncode, proc.stdout, proc.stderr, ran, uptodate, self.events()[before:]
        )


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, shared_store())


def demo_kickstart() -> str:
    return (PROJECT / "configs" / "demo.ks").read_text()


def copy_config(ws: Workspace, name: str) -> None:
    ws.configs.mkdir(parents=True, exist_ok=True)
    for suffix in (".ks", ".toml"):
        src = PROJECT / "configs" / f"{name}{suffix}"
        if src.exists():
            shutil.copy(src, ws.configs / src.name)


def object_file(store: Path, layers: list[Path], rel: str) -> Path | None:
    """A file as the merged (overlay) view would show it: topmost layer first."""
    for layer in layers:
        candidate = layer / rel.lstrip("/")
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo appliance's installed packages tree, built (or reused) in the shared store."""
    ws = Workspace(tmp_path_factory.mktemp("demo-tree"), shared_store())
    ws.write("demo.ks", demo_kickstart())
    result = ws.doit("packages:demo")
    assert result.rc == 0, result.out + result.err
    key = json.loads((ws.cache / "build" / "demo" / "packages.ref").read_text())["key"]
    tree = ws.store / "objects" / "packages" / key / "tree"
    assert list(tree.glob("boot/vmlinuz-*")), f"no kernel in {tree}"
    return tree


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """In CI (CI=true) a skipped test fails: the setup must install everything the tests
    need, and a silent skip would hide that it did not."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (the setup should provide this): {report.longrepr}"


def corpus_primaries() -> list[tuple[str, str]]:
    """(local_path, syntax version named in the PROVENANCE notes, else the default) of every
    primary kickstart of ../shared/corpus."""
    import csv

    from ksbake.kickstart import DEFAULT_SYNTAX

    rows = []
    with open(CORPUS / "PROVENANCE.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["role"] != "primary":
                continue
            match = re.search(r"pykickstart[\d.]+ -v (\S+):", row["notes"])
            rows.append((row["local_path"], match.group(1) if match else DEFAULT_SYNTAX))
    return rows


def skip_without_corpus() -> None:
    if not (CORPUS / "PROVENANCE.tsv").is_file():
        pytest.skip(
            f"shared corpus not found at {CORPUS} (the repository is checked out next to shared/)",
            allow_module_level=True,
        )
