"""Key invariants of the chain, over the pure per-layer input functions (no doit, no build).

Every stored layer's key is ``layer_key(name, version, {keyed inputs, discovered, tools},
parents)`` (``ksbake.runner.key_of``); its keyed inputs come from ``layer.inputs(Source)``
(what the build reads but does not key comes from ``layer.unkeyed``, a file of its own). An
edit of the kickstart or the settings must change exactly the keyed inputs of the layers that
read it, and nothing else: every other object is reused (what changes below it follows
through the parents' keys, tested at the end).
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, demo_kickstart

from ksbake import kickstart, run, settings
from ksbake.hashing import canonical_json
from ksbake.layers import CHAIN, STORED
from ksbake.layers.l1_kickstart import partitions
from ksbake.layout import MiB
from ksbake.paths import Paths
from ksbake.runner import Source, current_key, key_of

LAYERS = {layer.name: layer for layer in CHAIN}
INPUT_LAYERS = [layer for layer in CHAIN if layer.inputs is not None]
DEMO = demo_kickstart()


def source(configs: Path, name: str = "demo", out_dir: str = "/srv/out/demo") -> Source:
    """The Source the kickstart step builds (``ksbake.layers.l1_kickstart.step``)."""
    conf = settings.load(name, configs, environ={})  # no KSBAKE_MIRRORS/KSBAKE_ACCEL here
    ks = kickstart.load(configs / f"{name}.ks", version=conf.syntax, compat=conf.compat)
    plan, _ = partitions.plan_with_warnings(ks, conf.disk_sizes, conf.memory, conf.firmware)
    return Source(ks, conf, plan, out_dir)


def all_inputs(
    configs: Path, ks_text: str, toml_text: str = "", *, unkeyed: bool = False
) -> dict[str, dict[str, Any]]:
    """Every layer's keyed inputs as written to ``inputs/<layer>.json`` (``unkeyed``: what
    ``inputs/<layer>.unkeyed.json`` holds instead)."""
    configs.mkdir(parents=True, exist_ok=True)
    (configs / "demo.ks").write_text(ks_text)
    if toml_text:
        (configs / "demo.toml").write_text(toml_text)
    src = source(configs)
    found = {}
    for layer in CHAIN:
        function = layer.unkeyed if unkeyed else layer.inputs
        if function is not None:  # as the file holds them
            found[layer.name] = json.loads(canonical_json(function(src)))
    return found


def keyed(inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return inputs


def inputs_of(ks_text: str, toml_text: str = "") -> dict[str, dict[str, Any]]:
    """Each input layer's keyed inputs for this kickstart (and NAME.toml) in a fresh dir."""
    with tempfile.TemporaryDirectory() as tmp:
        return keyed(all_inputs(Path(tmp) / "configs", ks_text, toml_text))


def changes(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, set[str]]:
    """layer -> the keyed entries that differ."""
    assert before.keys() == after.keys()
    out = {}
    for name in before:
        entries = before[name].keys() | after[name].keys()
        differ = {e for e in entries if before[name].get(e) != after[name].get(e)}
        if differ:
            out[name] = differ
    return out


def paths_in(root: Path) -> Paths:
    """A private workspace holding configs/demo.ks (for the kickstart step and the runner)."""
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "configs" / "demo.ks", configs / "demo.ks")
    cache = root / "cache"
    return Paths(root=PROJECT, configs=configs, cache=cache, store=cache, out=root / "out")


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    return inputs_of(DEMO)


def edited(old: str, new: str) -> str:
    assert DEMO.count(old) == 1, old
    return DEMO.replace(old, new)


# -- the chain's declaration -----------------------------------------------------------------


def test_chain_order() -> None:
    assert [layer.name for layer in CHAIN] == [
        "kickstart",
        "lock",
        "packages",
        "config",
        "disks",
        "bootloader",
        "convert",
        "descriptor",
        "publish",
    ]
    assert len(LAYERS) == len(CHAIN)
    # all but the first and the last are store objects
    assert [layer.name for layer in STORED] == [layer.name for layer in CHAIN[1:-1]]


def test_parents_come_earlier() -> None:
    seen: set[str] = set()
    for layer in CHAIN:
        assert set(layer.parents) <= seen, (layer.name, layer.parents)
        seen.add(layer.name)


def test_stored_layers_have_a_version_and_a_build_function() -> None:
    assert STORED
    for layer in STORED:
        assert isinstance(layer.version, int) and layer.version >= 1, layer.name
        assert layer.step is None, layer.name  # the runner does the step of a stored layer
        module, sep, function = (layer.build or "").partition(":")
        assert sep and module and function, layer.build
        assert callable(getattr(importlib.import_module(module), function)), layer.build


def test_every_other_function_named_resolves() -> None:
    for layer in CHAIN:
        for spec in (layer.step, layer.discover, layer.on_export):
            if spec is not None:
                module, _, function = spec.partition(":")
                assert callable(getattr(importlib.import_module(module), function)), spec
        if layer.build is None:
            assert layer.step is not None, layer.name  # kickstart, publish


def test_code_entries_exist() -> None:
    for layer in CHAIN:
        assert layer.code, layer.name
        for entry in layer.code:
            path = PROJECT / "ksbake" / entry
            found = (
                path.is_file()
                if path.suffix == ".py"
                else (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()
            )
            assert found, f"{layer.name}: code entry {entry!r} is not under ksbake/"


def test_tools_are_known_versions() -> None:
    for layer in CHAIN:
        for tool in layer.tools:
            assert tool in run.VERSIONS, (layer.name, tool)


def test_unkeyed_inputs_are_apart(base: dict[str, dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        unkeyed = all_inputs(Path(tmp) / "configs", DEMO, unkeyed=True)
    with_unkeyed = {layer.name for layer in CHAIN if layer.unkeyed}
    assert with_unkeyed == {"lock", "config", "disks", "bootloader"} == set(unkeyed)
    assert set(unkeyed["config"]) == {"ks_dir", "where", "write_limit"}
    for name in with_unkeyed:  # file:line for errors, paths, bounds: never keyed as well
        assert "where" in unkeyed[name] and not set(unkeyed[name]) & set(base[name]), name


# -- which edit changes which layer's keyed inputs ----------------------------------------------

REFORMATTED = """\
# the demo appliance, reformatted: other spacing, comments, option order, --opt v
lang    en_US.UTF-8

keyboard us
# a comment between two commands
rootpw   --plaintext    ksbake
network --hostname demo.ksbake.test
firewall --disabled
selinux --disabled

zerombr
clearpart --initlabel --disklabel msdos --all
part /boot --ondisk sda --size 64 --fstype ext4  # a trailing comment
part  /  --grow --ondisk=sda --fstype ext4 --size=192
bootloader --timeout 1 --append "console=ttyS0" --location mbr

repo --baseurl=file://$ksbake_repo/base   --name ksbake

%packages
@core
kernel

%end

%post
echo "Welcome to the ksbake demo appliance." > /etc/motd
%end
"""

EDITS = [
    pytest.param(edited("--size=64", "--size=96"), "", {"disks": {"plan"}}, id="part-size"),
    pytest.param(edited("Welcome", "Hello"), "", {"config": {"ks"}}, id="post"),
    pytest.param(
        edited("kernel\n%end", "kernel\nvim-minimal\n%end"), "", {"lock": {"ks"}}, id="packages"
    ),
    pytest.param(
        edited('--append="console=ttyS0"', '--append="console=ttyS0 quiet"'),
        "",
        {"bootloader": {"bootloader"}},
        id="bootloader-append",
    ),
    pytest.param(
        edited("keyboard us\n", "keyboard us\ntimezone Europe/Paris --utc\n"),
        "",
        {"config": {"ks"}},
        id="timezone",
    ),
    pytest.param(REFORMATTED, "", {}, id="reformatted"),
    pytest.param(DEMO, "memory = 1024\n", {"descriptor": {"memory"}}, id="memory"),
    # the descriptor picks among the formats in their order (the first runnable one)
    pytest.param(
        DEMO,
        'formats = ["qcow2", "vmdk"]\n',
        {"convert": {"formats"}, "descriptor": {"formats"}},
        id="formats-add-vmdk",
    ),
    pytest.param(
        DEMO,
        'formats = ["vmdk", "qcow2"]\n',
        {"convert": {"formats"}, "descriptor": {"formats"}},
        id="formats-vmdk-first",
    ),
    pytest.param(
        DEMO,
        'formats = ["qcow2", "raw"]\ndescriptor_format = "raw"\n',
        {"convert": {"formats"}, "descriptor": {"formats", "descriptor_format"}},
        id="descriptor-format",
    ),
    pytest.param(
        DEMO, 'vmdk_adapter = "ide"\n', {"descriptor": {"vmdk_adapter"}}, id="vmdk-adapter"
    ),
    # more of the matrix: what each of these reaches, and no further
    pytest.param(
        edited(
            "network --hostname=demo.ksbake.test\n",
            "network --hostname=demo.ksbake.test\nnetwork --device=eth1 --bootproto=dhcp\n",
        ),
        "",
        {"config": {"ks"}, "descriptor": {"nics"}},  # one NIC per network line
        id="network-line",
    ),
    pytest.param(
        DEMO,
        'firmware = "uefi"\n',
        {"bootloader": {"firmware"}, "descriptor": {"firmware"}},
        id="firmware",
    ),
    pytest.param(DEMO, 'accel = "kvm"\n', {"descriptor": {"accel"}}, id="accel"),  # domain type
    pytest.param(DEMO, 'releasever = "39"\n', {"lock": {"settings"}}, id="releasever"),
    pytest.param(DEMO, '[disk_sizes]\nsda = "1GiB"\n', {"disks": {"plan"}}, id="disk-size"),
    pytest.param(DEMO, "boot_timeout = 60\n", {}, id="boot-timeout"),  # boot tests only
    pytest.param(DEMO, 'publish = "hardlink"\n', {"publish": {"mode"}}, id="publish-mode"),
]


@pytest.mark.parametrize(("ks_text", "toml_text", "expected"), EDITS)
def test_an_edit_changes_exactly_its_layers_inputs(
    base: dict[str, dict[str, Any]], ks_text: str, toml_text: str, expected: dict[str, set[str]]
) -> None:
    assert changes(base, inputs_of(ks_text, toml_text)) == expected


def test_the_edits_change_what_they_say(base: dict[str, dict[str, Any]]) -> None:
    """The entries the edits above change hold what the edit says (not some side effect)."""
    disks = inputs_of(edited("--size=64", "--size=96"))["disks"]["plan"]["disks"][0]
    assert [p["size"] // MiB for p in disks["partitions"]] == [96, 192]
    timezone = edited("keyboard us\n", "keyboard us\ntimezone Europe/Paris --utc\n")
    assert "timezone Europe/Paris" in inputs_of(timezone)["config"]["ks"]
    formats = inputs_of(DEMO, 'formats = ["qcow2", "vmdk"]\n')["convert"]["formats"]
    assert formats["qcow2"] == base["convert"]["formats"]["qcow2"]  # its object is reused
    assert set(formats) == {"qcow2", "vmdk"}
    assert base["descriptor"]["formats"] == ["qcow2"]


def test_a_format_option_changes_only_that_formats_entry(base: dict[str, dict[str, Any]]) -> None:
    toml = 'formats = ["qcow2", "vmdk"]\n'
    two = inputs_of(DEMO, toml)
    other = inputs_of(DEMO, toml + 'vmdk_subformat = "monolithicSparse"\n')
    assert changes(two, other) == {"convert": {"formats"}}
    assert two["convert"]["formats"]["qcow2"] == other["convert"]["formats"]["qcow2"]
    assert two["convert"]["formats"]["vmdk"] != other["convert"]["formats"]["vmdk"]


def test_moving_the_kickstart_changes_no_keyed_input(tmp_path: Path) -> None:
    here = all_inputs(tmp_path / "a" / "configs", DEMO)
    there = all_inputs(tmp_path / "elsewhere" / "b" / "configs", DEMO)
    assert changes(here, there) == {}
    ks_dirs = [
        all_inputs(tmp_path / d / "configs", DEMO, unkeyed=True)["config"]["ks_dir"]
        for d in ("a", "elsewhere/b")
    ]
    assert ks_dirs[0] != ks_dirs[1]  # it did move


def test_inputs_of_is_what_the_kickstart_step_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: dict[str, dict[str, Any]]
) -> None:
    """The helper above builds the Source as ``l1_kickstart.step`` does: same files."""
    from ksbake.layers import l1_kickstart

    for var in ("KSBAKE_MIRRORS", "KSBAKE_ACCEL"):
        monkeypatch.delenv(var, raising=False)
    paths = paths_in(tmp_path)
    l1_kickstart.step(paths, "demo")
    written = {
        layer.name: json.loads(
            (paths.build_dir("demo") / "inputs" / f"{layer.name}.json").read_text()
        )
        for layer in INPUT_LAYERS
    }
    assert written["descriptor"]["out_dir"] == str(paths.out / "demo")
    written["descriptor"]["out_dir"] = base["descriptor"]["out_dir"]
    assert keyed(written) == base


# -- the key formula: tools, parents, unkeyed inputs -------------------------------------------


def test_key_of_changes_with_a_tool_version(monkeypatch: pytest.MonkeyPatch) -> None:
    disks = LAYERS["disks"]
    assert disks.tools
    versions = {tool: "1.0" for tool in disks.tools}
    monkeypatch.setattr(run, "tool_versions", lambda names: {n: versions[n] for n in names})
    keyed_inputs, parents = {"plan": {"disks": []}}, {"config": "c0"}
    before = key_of(disks, keyed_inputs, {}, parents)
    assert key_of(disks, keyed_inputs, {}, parents) == before  # deterministic
    versions[disks.tools[0]] = "1.1"
    assert key_of(disks, keyed_inputs, {}, parents) != before
    # a layer without tools does not ask for their versions
    monkeypatch.setattr(run, "tool_versions", lambda names: pytest.fail(f"asked for {names}"))
    key_of(LAYERS["publish"], {"mode": "copy"}, {}, {"descriptor": "d"})


def test_tool_version_cache_is_what_keys_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tool_version`` is cached per process: a patched VERSIONS entry shows after a clear."""
    layer = LAYERS["convert"]
    run.tool_version.cache_clear()
    monkeypatch.setitem(run.VERSIONS, "qemu-img", lambda: "qemu-img version 8.0.0")
    try:
        before = key_of(layer, {"format": "qcow2"}, {}, {"bootloader": "b0"})
        monkeypatch.setitem(run.VERSIONS, "qemu-img", lambda: "qemu-img version 9.0.0")
        assert key_of(layer, {"format": "qcow2"}, {}, {"bootloader": "b0"}) == before  # cached
        run.tool_version.cache_clear()
        assert key_of(layer, {"format": "qcow2"}, {}, {"bootloader": "b0"}) != before
    finally:
        run.tool_version.cache_clear()


def test_key_of_changes_with_a_parent_key() -> None:
    descriptor = LAYERS["descriptor"]
    one = key_of(descriptor, {"memory": 512}, {}, {"convert": {"qcow2": "k1"}})
    assert key_of(descriptor, {"memory": 512}, {}, {"convert": {"qcow2": "k2"}}) != one
    assert key_of(descriptor, {"memory": 1024}, {}, {"convert": {"qcow2": "k1"}}) != one


def test_fan_out_parent_item_changes_the_key() -> None:
    """formats += vmdk: the descriptor's inputs stay, its convert parent gains an item."""
    descriptor = LAYERS["descriptor"]
    one = key_of(descriptor, {"primary": "qcow2"}, {}, {"convert": {"qcow2": "q"}})
    two = key_of(descriptor, {"primary": "qcow2"}, {}, {"convert": {"qcow2": "q", "vmdk": "v"}})
    assert one != two


def test_current_key_reads_parents_and_ignores_unkeyed_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config key, as the runner computes it from the build files: the parent's ref
    counts, the kickstart's directory (``ks_dir``, unkeyed) does not."""
    from ksbake.layers import l1_kickstart

    for var in ("KSBAKE_MIRRORS", "KSBAKE_ACCEL"):
        monkeypatch.delenv(var, raising=False)
    config = LAYERS["config"]
    assert config.parents == ("packages",) and config.unkeyed is not None
    paths = paths_in(tmp_path / "one")
    l1_kickstart.step(paths, "demo")
    ref = paths.build_dir("demo") / "packages.ref"
    ref.write_text(json.dumps({"key": "p" * 32}))
    key = current_key(paths, "demo", config)

    # another checkout of the same kickstart, same build directory: same key
    moved = Paths(**{**vars(paths), "configs": tmp_path / "two" / "configs"})
    moved.configs.mkdir(parents=True)
    shutil.copy(paths.kickstart("demo"), moved.kickstart("demo"))
    l1_kickstart.step(moved, "demo")
    written = paths.build_dir("demo") / "inputs" / "config.unkeyed.json"
    assert json.loads(written.read_text())["ks_dir"] == str(moved.configs.resolve())
    assert current_key(moved, "demo", config) == key

    ref.write_text(json.dumps({"key": "q" * 32}))
    assert current_key(moved, "demo", config) != key
