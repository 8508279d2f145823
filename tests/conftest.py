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
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ksbake.layout import Plan

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT.parent / "shared" / "corpus"
KICKSTARTS = CORPUS / "kickstarts"


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


def ok(result: Result) -> None:
    assert result.rc == 0, f"doit failed:\nSTDOUT:\n{result.out}\nSTDERR:\n{result.err}"


def fails(ws: Workspace, *needles: str, target: str = "appliance:demo") -> Result:
    """Bad input: doit fails with ONE ``ksbake: error:`` line and no traceback; every needle
    is in the error's text (the line and what follows it: a tool's output, a hint)."""
    r = ws.doit(target)
    assert r.rc != 0, r.out
    errors = [ln for ln in r.err.splitlines() if ln.startswith("ksbake: error:")]
    assert len(errors) == 1, r.err
    message = r.err[r.err.index(errors[0]) :]
    for needle in needles:
        assert needle in message, r.err
    assert "Traceback" not in r.err, r.err
    return r


def guest_mounts(ws: Workspace, name: str = "demo") -> dict[str, tuple[str, str]]:
    """mountpoint -> (device, fstype) from the guest's KSBAKE-MOUNT lines."""
    log = (ws.cache / "build" / name / "boot.log").read_text(errors="replace")
    out = {}
    for line in log.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "KSBAKE-MOUNT" and fields[1].startswith("/dev/"):
            out[fields[2]] = (fields[1], fields[3])
    return out


def demo_kickstart() -> str:
    return (PROJECT / "configs" / "demo.ks").read_text()


def copy_config(ws: Workspace, name: str) -> None:
    ws.configs.mkdir(parents=True, exist_ok=True)
    for suffix in (".ks", ".toml"):
        src = PROJECT / "configs" / f"{name}{suffix}"
        if src.exists():
            shutil.copy(src, ws.configs / src.name)


def planned(text: str, **disk_sizes_mib: int) -> Plan:
    """The partition plan the kickstart layer makes of ``text`` (part/clearpart lines), with
    fixed disk sizes in MiB (``sda=200``): a realistic layout, not one written by hand."""
    import tempfile

    from ksbake.kickstart import load
    from ksbake.layers.l1_kickstart.partitions import plan
    from ksbake.layout import MiB

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layout.ks"
        path.write_text(text)
        return plan(load(path), {disk: mib * MiB for disk, mib in disk_sizes_mib.items()})


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


# Primary kickstarts of the corpus that fail to parse even in compat mode (an %include that
# is not in the corpus): local_path -> (file that is named, line, text on that line, words in
# the message).
MISSING_INCLUDES = {
    "kickstarts/srbala__fedora-kickstarts/fedora-modular-arm-server.ks": (
        "srbala__fedora-kickstarts/fedora-modular-arm-server.ks",
        1,
        "%include",
        "%include fedora-arm-base.ks",
    ),
    "kickstarts/weldr__lorax/docs/fedora-minimal.ks": (
        "weldr__lorax/docs/fedora-minimal.ks",
        79,
        "%include /tmp/arch-packages.ks",
        "does not exist (it is probably written by a %pre script",
    ),
}


def skip_without_corpus() -> None:
    """Skip the whole module (call it at module level) without ../shared/corpus."""
    corpus_file("PROVENANCE.tsv", module=True)


def corpus_file(*parts: str, module: bool = False) -> Path:
    """A file or directory of ../shared/corpus; without it the test skips, saying why."""
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} not found: the shared corpus is not checked out next to the repository "
            f"(expected at {CORPUS})",
            allow_module_level=module,
        )
    return path
