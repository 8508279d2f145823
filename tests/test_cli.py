"""The command line as a new user meets it: doit list shows the per-appliance entry points, a
mistyped appliance or a missing configs directory gets one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksbake.paths import Paths
from tasks.cli import entry_points, positional, problem
from tests.conftest import Workspace, demo_kickstart, ok


def _paths(tmp_path: Path, *names: str) -> Paths:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    for name in names:
        (configs / f"{name}.ks").write_text("")
    return Paths.from_env(
        environ={"KSBAKE_CONFIGS": str(configs), "KSBAKE_CACHE": str(tmp_path / "c")}
    )


def test_positional_arguments_skip_options_and_their_values() -> None:
    argv = ["-f", "dodo.py", "-d", "/x", "-n", "2", "--continue", "info", "appliance:demo"]
    assert positional(argv) == ["info", "appliance:demo"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["appliance:dmeo"], "there is no appliance 'dmeo'"),
        (["appliance:dmeo"], "did you mean 'demo'?"),
        (["boottest:severs"], "did you mean 'server'?"),
        (["info", "disks:zzz"], "known: demo, server"),
    ],
)
def test_a_mistyped_appliance_is_named_with_the_nearest(
    tmp_path: Path, argv: list[str], words: str
) -> None:
    line = problem(argv, _paths(tmp_path, "demo", "server"))
    assert line is not None and line.startswith("ksbake: error: ") and words in line


@pytest.mark.parametrize(
    "argv", [["appliance:demo"], ["list"], ["repo"], ["distro", "gc"], ["help", "appliance"]]
)
def test_valid_command_lines_pass(tmp_path: Path, argv: list[str]) -> None:
    assert problem(argv, _paths(tmp_path, "demo")) is None


def test_a_missing_configs_directory_is_said_unless_no_appliance_is_wanted(tmp_path: Path) -> None:
    paths = Paths.from_env(environ={"KSBAKE_CONFIGS": str(tmp_path / "nowhere")})
    for argv in ([], ["appliance"], ["boottest:demo"]):
        line = problem(argv, paths)
        assert line is not None and f"{tmp_path / 'nowhere'} does not exist" in line
    for argv in (["list"], ["repo"], ["distro"]):
        assert problem(argv, paths) is None


def test_entry_points_line() -> None:
    assert entry_points("appliance", "build", ["a", "b"]) == "build: appliance:a, appliance:b"
    many = entry_points("boottest", "boot", [f"n{i}" for i in range(10)], limit=3)
    assert many.endswith("boottest:n2 and 7 more (doit list --all)")


def test_doit_says_it_in_one_line(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    r = workspace.doit("appliance:dmeo")
    assert r.rc == 2 and r.err.strip().splitlines() == [
        f"ksbake: error: appliance:dmeo: there is no appliance 'dmeo' ({workspace.configs}/dmeo.ks "
        "does not exist; did you mean 'demo'?)"
    ]
    listed = workspace.doit("list")
    assert "appliance    build (all, or one): appliance:demo" in listed.out
    assert "boottest:demo" in listed.out
    gone = workspace.doit("appliance", extra_env={"KSBAKE_CONFIGS": str(workspace.root / "nope")})
    assert gone.rc == 2 and "nope does not exist" in gone.err


@pytest.mark.slow
def test_doit_appliance_builds_every_appliance_it_can_and_ends_with_a_table(
    workspace: Workspace,
) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("other.ks", demo_kickstart().replace("demo.ksbake.test", "other.ksbake.test"))
    broken = demo_kickstart().replace("%packages\n", "%packages\nno-such-package\n")
    workspace.write("broken.ks", broken)
    r = workspace.doit("appliance")
    assert r.rc != 0, r.out
    assert (workspace.root / "out/demo/SHA256SUMS").is_file()
    assert (workspace.root / "out/other/SHA256SUMS").is_file()
    assert not (workspace.root / "out/broken").exists()
    table = r.out[r.out.index("appliance  result") :].splitlines()
    assert table[1].startswith("broken     failed") and "no-such-package" in table[1], table
    assert table[2].split()[:2] == ["demo", "built"]
    assert table[3].split()[:2] == ["other", "built"]
    assert table[4] == "3 appliances: 1 failed"
    errors = [ln for ln in r.err.splitlines() if ln.startswith("ksbake: error:")]
    assert len(errors) == 1 and "no-such-package" in errors[0]

    workspace.write("broken.ks", demo_kickstart().replace("demo.ksbake.test", "fixed.ksbake.test"))
    again = workspace.doit("appliance")
    assert again.rc == 0, again.out + again.err
    rows = again.out[again.out.index("appliance  result") :].splitlines()
    assert rows[1].split()[:2] == ["broken", "built"]
    assert rows[2].split()[:2] == ["demo", "unchanged"]
    assert rows[4] == "3 appliances: 0 failed"


@pytest.mark.slow
def test_doit_clean_removes_an_appliances_state_and_output_not_the_store(
    workspace: Workspace,
) -> None:
    workspace.write("demo.ks", demo_kickstart())
    ok(workspace.doit("appliance:demo"))
    objects = sorted(p.name for p in (workspace.store / "objects").glob("*/*"))
    r = workspace.doit("clean", "appliance:demo")
    assert r.rc == 0, r.err
    assert not (workspace.cache / "build" / "demo").exists()
    assert not (workspace.root / "out" / "demo").exists()
    assert set(objects) <= {p.name for p in (workspace.store / "objects").glob("*/*")}
    again = workspace.doit("appliance:demo")  # from the store: nothing is built again
    ok(again)
    assert not [
        e for e in again.events if e["built"] and e["layer"] not in ("kickstart", "publish")
    ]
    assert (workspace.root / "out" / "demo" / "SHA256SUMS").is_file()


@pytest.mark.slow
def test_doit_info_says_which_layers_run_and_why(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    ok(workspace.doit("appliance:demo"))
    r = workspace.doit("info", "appliance:demo")
    assert r.rc == 0, r.out + r.err
    for layer in ("lock", "packages", "config", "disks", "bootloader", "descriptor"):
        assert f"  {layer:<11} up to date (key " in r.out, r.out
    assert "the appliance is up to date\n  boottest    will run: not built in this" in r.out
    workspace.write("demo.ks", demo_kickstart() + "\n%post\necho edited\n%end\n")
    r = workspace.doit("info", "demo")
    assert r.rc == 0
    assert "  kickstart   will run: demo.ks changed" in r.out, r.out
    assert "  lock        up to date" in r.out
    other = workspace.doit("info", "disks:demo")  # any other task: doit's own info
    assert "file_dep" in other.out
