"""Acceptance: real builds of the layers up to the configured tree, from the bundled repo.

Each test drives `doit` like a user, in its own workspace, over the shared test store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PROJECT, Workspace, demo_kickstart, fails, object_file, ok

pytestmark = pytest.mark.slow

LAYERS = ("kickstart", "lock", "packages", "config")


def config_layers(ws: Workspace, name: str) -> list[Path]:
    from ksbake.layers.l4_config import tree_layers

    ref = json.loads((ws.cache / "build" / name / "config.ref").read_text())
    return tree_layers(ws.store / "objects" / "config" / ref["key"])


def read(ws: Workspace, name: str, rel: str) -> str:
    found = object_file(ws.store, config_layers(ws, name), rel)
    assert found is not None, f"{rel} not in the configured tree of {name}"
    return found.read_text()


def test_demo_builds_then_noop(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    first = workspace.doit("appliance:demo")
    ok(first)
    assert set(first.ran) >= {f"{layer}:demo" for layer in LAYERS}
    # the configured tree: settings applied, %post ran in the chroot, packages installed
    assert read(workspace, "demo", "/etc/hostname") == "demo.ksbake.test\n"
    assert read(workspace, "demo", "/etc/motd").startswith("Welcome to the ksbake demo")
    shadow = read(workspace, "demo", "/etc/shadow")
    root_hash = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]
    assert root_hash.startswith("$6$") and "ksbake" not in root_hash
    assert "LANG=en_US.UTF-8" in read(workspace, "demo", "/etc/locale.conf")
    layers = config_layers(workspace, "demo")
    assert (layers[1] / "usr/lib/sysimage/rpm").is_dir()
    assert not (layers[1] / "root/.rpmdb").exists()
    assert list((layers[1] / "boot").glob("vmlinuz-*"))
    # the packages tree stays untouched and shareable
    assert not (layers[1] / "etc/motd").exists()
    # the lock: sorted canonical JSON naming every package with its sha256
    lock = json.loads((workspace.cache / "build/demo/lock.json").read_text())
    names = [p["name"] for p in lock["packages"]]
    assert names == sorted(names) and {"kernel", "busybox", "setup"} <= set(names)
    assert all(len(p["sha256"]) == 64 and p["repo"] == "ksbake" for p in lock["packages"])
    # second run: everything up to date, nothing rebuilt
    second = workspace.doit("appliance:demo")
    ok(second)
    assert not [t for t in second.ran if not t.startswith("appliance")], second.out
    assert {f"{layer}:demo" for layer in LAYERS} <= set(second.uptodate)
    assert "cached" in second.out


def _edit_and_rebuild(ws: Workspace, text: str):  # noqa: ANN202
    ws.write("demo.ks", text)
    result = ws.doit("appliance:demo")
    ok(result)
    return result


def test_edits_rerun_only_affected_layers(workspace: Workspace) -> None:
    base = demo_kickstart()
    ok(_edit_and_rebuild(workspace, base))

    # reformatting: whitespace, comments, option order, --opt=v vs --opt v
    reformatted = base.replace(
        "part /boot --fstype=ext4 --size=64 --ondisk=sda",
        "part   /boot  --ondisk sda --size 64   --fstype ext4  # boot",
    )
    reformatted = reformatted.replace(
        "network --hostname=demo.ksbake.test",
        "# a comment\nnetwork   --hostname demo.ksbake.test\n",
    )
    r = _edit_and_rebuild(workspace, reformatted)
    assert "kickstart:demo" in r.ran
    assert not {"lock:demo", "packages:demo", "config:demo"} & set(r.ran), r.out

    # %post edit: only the config layer reruns
    edited = base.replace("Welcome to the ksbake demo appliance.", "Welcome, edited.")
    r = _edit_and_rebuild(workspace, edited)
    assert "config:demo" in r.ran
    assert not {"lock:demo", "packages:demo"} & set(r.ran), r.out
    assert read(workspace, "demo", "/etc/motd") == "Welcome, edited.\n"

    # part edit: none of lock, packages, config rerun
    r = _edit_and_rebuild(workspace, edited.replace("--size=64", "--size=80"))
    assert not {"lock:demo", "packages:demo", "config:demo"} & set(r.ran), r.out

    # %packages edit: lock, packages and config rerun
    r = _edit_and_rebuild(workspace, edited.replace("kernel\n%end", "kernel\nksbake-extras\n%end"))
    assert {"lock:demo", "packages:demo", "config:demo"} <= set(r.ran), r.out
    lock = json.loads((workspace.cache / "build/demo/lock.json").read_text())
    assert "ksbake-extras" in [p["name"] for p in lock["packages"]]


def test_same_package_set_shares_one_tree(workspace: Workspace) -> None:
    # two appliances, different system settings, same packages: one packages tree
    text = demo_kickstart().replace("kernel\n%end", "kernel\nksbake-weak\n%end")
    workspace.write("one.ks", text)
    workspace.write(
        "two.ks",
        text.replace("demo.ksbake.test", "two.ksbake.test").replace(
            "%packages", "%packages\nbusybox\n"
        ),
    )
    r = workspace.doit("appliance")
    ok(r)
    keys = {e["appliance"]: e["key"] for e in r.events if e["layer"] == "packages"}
    assert keys["one"] == keys["two"]
    built = [e for e in r.events if e["layer"] == "packages" and e["built"]]
    assert len(built) <= 1  # 0 if an earlier test session already built this set
    assert config_layers(workspace, "one")[1] == config_layers(workspace, "two")[1]
    assert config_layers(workspace, "one")[0] != config_layers(workspace, "two")[0]


def test_updates_repo_relocks_and_names_what_moved(workspace: Workspace) -> None:
    base = demo_kickstart()
    ok(_edit_and_rebuild(workspace, base))
    before = json.loads((workspace.cache / "build/demo/lock.json").read_text())
    with_updates = base.replace(
        "repo --name=ksbake --baseurl=file://$ksbake_repo/base",
        "repo --name=ksbake --baseurl=file://$ksbake_repo/base\n"
        "repo --name=ksbake-updates --baseurl=file://$ksbake_repo/updates",
    )
    r = _edit_and_rebuild(workspace, with_updates)
    assert {"lock:demo", "packages:demo", "config:demo"} <= set(r.ran), r.out
    after = json.loads((workspace.cache / "build/demo/lock.json").read_text())
    moved = [(a, b) for a, b in zip(before["packages"], after["packages"], strict=True) if a != b]
    assert len(moved) == 1, moved
    old, new = moved[0]
    assert old["name"] == new["name"] and new["repo"] == "ksbake-updates"
    # the build output says exactly which package moved
    assert f"~ {new['name']} {old['version']}-{old['release']} (ksbake) -> " in r.out


# -- bad input: one clear error, nothing cached ---------------------------------------------


def _fails(ws: Workspace, text: str, *needles: str):  # noqa: ANN202
    ws.write("demo.ks", text)
    return fails(ws, *needles)


def test_kickstart_syntax_error_in_included_file(workspace: Workspace) -> None:
    workspace.write("parts/net.ks", "# network settings\nnetwork --bogus-option=1\n")
    text = demo_kickstart().replace(
        "selinux --disabled", "%include parts/net.ks\nselinux --disabled"
    )
    r = _fails(workspace, text, "net.ks:2")
    assert not (workspace.cache / "build/demo/inputs/lock.json").exists()
    assert "lock:demo" not in r.ran


def test_missing_include(workspace: Workspace) -> None:
    text = demo_kickstart().replace("selinux --disabled", "%include nowhere.ks\nselinux --disabled")
    _fails(workspace, text, "demo.ks:", "nowhere.ks")


def test_unknown_package_and_ignoremissing(workspace: Workspace) -> None:
    text = demo_kickstart().replace("kernel\n%end", "kernel\nno-such-package\n%end")
    _fails(workspace, text, "no-such-package")
    assert not (workspace.cache / "build/demo/lock.json").exists()
    r = workspace.doit("appliance:demo")  # same failure again: nothing was cached
    assert r.rc != 0
    ignoring = text.replace("%packages", "%packages --ignoremissing")
    workspace.write("demo.ks", ignoring)
    r = workspace.doit("appliance:demo")
    ok(r)
    assert "no-such-package" in r.err  # named in a warning


def test_unknown_group(workspace: Workspace) -> None:
    _fails(workspace, demo_kickstart().replace("@core", "@core\n@no-such-group"), "@no-such-group")


def test_unreachable_repository(workspace: Workspace) -> None:
    text = demo_kickstart().replace("file://$ksbake_repo/base", "file:///nonexistent/repo")
    _fails(workspace, text, "cannot load repository metadata", "ksbake")
    text = demo_kickstart().replace("file://$ksbake_repo/base", "http://127.0.0.1:9/repo")
    _fails(workspace, text, "cannot load repository metadata")


def test_unresolvable_dependency(workspace: Workspace) -> None:
    # busybox is required by the init package: excluding it leaves @core uninstallable
    _fails(
        workspace,
        demo_kickstart().replace("kernel\n%end", "kernel\n-busybox\n%end"),
        "dependencies cannot be resolved",
        "busybox",
    )


def test_failing_post_erroronfail_shows_output(workspace: Workspace) -> None:
    text = demo_kickstart().replace(
        "%post\n", "%post --erroronfail\necho 'about to fail: disk quota'\nexit 7\n%end\n%post\n"
    )
    _fails(workspace, text, "%post #1 failed with exit code 7", "about to fail: disk quota")
    assert not (workspace.cache / "build/demo/config.ref").exists()
    assert not list((workspace.store / "staging").glob("config-*"))
    # without --erroronfail the build goes on (anaconda semantics)
    workspace.write("demo.ks", text.replace("%post --erroronfail", "%post"))
    ok(workspace.doit("appliance:demo"))


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]


def test_killed_install_is_rebuilt_cleanly(workspace: Workspace) -> None:
    # a package set of its own, so that this test really installs
    text = demo_kickstart().replace("kernel\n%end", "kernel\nksbake-docs\nksbake-extras\n%end")
    text = text.replace("%packages", "%packages --excludedocs --instLangs=de")
    workspace.write("demo.ks", text)
    ok(workspace.doit("lock:demo"))
    from ksbake.layers import by_name
    from ksbake.paths import Paths
    from ksbake.runner import current_key

    paths = Paths.from_env(environ=workspace.environ())
    key = current_key(paths, "demo", by_name("packages"))
    if (workspace.store / "objects/packages" / key).exists():  # from an earlier local run
        subprocess.run(["rm", "-rf", str(workspace.store / "objects/packages" / key)], check=True)
    proc = workspace.spawn("packages:demo")
    staging = workspace.store / "staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trees = list(staging.glob(f"packages-{key}.*/tree/usr"))
        if trees:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("install never started")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not (workspace.store / "objects/packages" / key).exists()
    assert not _mounts_under(workspace.store), "a mount survived the killed build"
    r = workspace.doit("appliance:demo")
    ok(r)
    assert [e for e in r.built("packages") if e["key"] == key]
    tree = workspace.store / "objects/packages" / key / "tree"
    assert (tree / "usr/lib/sysimage/rpm").is_dir()
    # --excludedocs and --instLangs=de reached rpm
    docs = tree / "usr/share/doc/ksbake-docs"
    assert not docs.exists() or not any(docs.iterdir())
    assert not _mounts_under(workspace.store)


def test_ovirt_wui_builds_offline_through_mirror_override(workspace: Workspace) -> None:
    from conftest import copy_config

    copy_config(workspace, "ovirt-wui")
    mirrors = "fedora=file://$ksbake_repo/base,updates=file://$ksbake_repo/updates"
    r = workspace.doit("appliance:ovirt-wui", extra_env={"KSBAKE_MIRRORS": mirrors})
    ok(r)
    lock = json.loads((workspace.cache / "build/ovirt-wui/lock.json").read_text())
    by_name = {p["name"]: p for p in lock["packages"]}
    assert "ovirt-wui" in by_name and "kernel" in by_name
    # both repositories are used: rootfiles comes from the newer "updates" one
    assert by_name["rootfiles"]["repo"] == "updates"
    assert read(workspace, "ovirt-wui", "/etc/hostname") == "management.priv.ovirt.org\n"
    # without the override the Fedora mirrors are needed: offline, a clear error
    r = workspace.doit("appliance:ovirt-wui")
    assert r.rc != 0 and "cannot load repository metadata" in r.err


def createrepo(repo: Path) -> None:
    comps = PROJECT / "repo" / "comps.xml"
    subprocess.run(["createrepo_c", "-q", "--update", "-g", str(comps), str(repo)], check=True)


def test_nightly_mirror_change_rebuilds_only_what_changed(workspace: Workspace) -> None:
    """A local mirror updated in place: re-lock; identical set → nothing else reruns; a moved
    package → packages and what follows rebuild."""
    ok(workspace.doit("repo"))
    bundled = (workspace.store / "repo").resolve()
    mirror = workspace.root / "mirror"
    shutil.copytree(bundled / "base", mirror)
    text = demo_kickstart().replace("file://$ksbake_repo/base", f"file://{mirror}")
    workspace.write("demo.ks", text)
    ok(workspace.doit("config:demo"))
    lock_before = (workspace.cache / "build/demo/lock.json").read_text()

    # upstream adds a package nobody asked for: metadata changes, the set does not
    extra = next((bundled / "updates" / "Packages").glob("rootfiles-*.rpm"))
    renamed = mirror / "Packages" / "zz-unrelated" / extra.name
    renamed.parent.mkdir()
    shutil.copy(
        bundled
        / "base/Packages"
        / next(p.name for p in (bundled / "base/Packages").glob("ksbake-extras-*.rpm")),
        renamed.parent,
    )
    createrepo(mirror)
    r = workspace.doit("config:demo")
    ok(r)
    assert "lock:demo" in r.ran and "packages:demo" in r.uptodate, r.out
    assert (workspace.cache / "build/demo/lock.json").read_text() == lock_before

    # upstream ships a newer rootfiles: the lock moves, the tree is rebuilt
    shutil.copy(extra, mirror / "Packages")
    createrepo(mirror)
    r = workspace.doit("config:demo")
    ok(r)
    assert {"lock:demo", "packages:demo", "config:demo"} <= set(r.ran), r.out
    assert "~ rootfiles " in r.out
