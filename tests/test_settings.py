"""Appliance settings: validation errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksbake import settings
from ksbake.errors import ConfigError


def test_defaults_without_file(tmp_path: Path) -> None:
    conf = settings.load("x", tmp_path, environ={})
    assert conf.syntax == settings.DEFAULT_SYNTAX and conf.mirrors == {}


def test_values_and_env_override(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text('releasever = 39\n[mirrors]\nfedora = "file:///a"\n')
    conf = settings.load("x", tmp_path, environ={"KSBAKE_MIRRORS": "updates=file:///b"})
    assert conf.releasever == "39"
    assert conf.mirrors == {"fedora": "file:///a", "updates": "file:///b"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ('compat = "yes"\n', "key 'compat' must be of type boolean"),
        ("syntax = [\n", "x.toml"),
        ("[mirrors]\nfedora = 3\n", "entry 'fedora' must be a string"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load("x", tmp_path, environ={})
    assert needle in str(info.value) and str(tmp_path / "x.toml") in str(info.value)


def test_bad_mirror_env() -> None:
    with pytest.raises(ConfigError, match="KSBAKE_MIRRORS"):
        settings.parse_mirrors("fedora", "KSBAKE_MIRRORS")


def test_sizes_and_enums(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'firmware = "uefi"\nboot_timeout = 60\n[disk_sizes]\nsda = "4GiB"\n"/dev/sdb" = 512\n'
    )
    conf = settings.load("x", tmp_path, environ={"KSBAKE_ACCEL": "kvm"})
    assert conf.disk_sizes == {"sda": 4 * 1024**3, "sdb": 512 * 1024**2}
    assert conf.firmware == "uefi" and conf.accel == "kvm" and conf.boot_timeout == 60


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('firmware = "coreboot"\n', "key 'firmware' must be one of bios, uefi"),
        ('[disk_sizes]\nsda = "lots"\n', "key 'disk_sizes' entry 'sda' must be a size"),
        ("boot_timeout = -1\n", "key 'boot_timeout' must be positive"),
        ("boot_timeout = true\n", "key 'boot_timeout' must be of type integer"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        settings.load("x", tmp_path, environ={})


def test_output_settings(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'formats = ["qcow2", "vmdk", "qcow2"]\nqcow2_compression = "zstd"\nvcpus = 2\n'
        "memory = 1024\nversion = 2.5\nrelease = 3\n"
    )
    conf = settings.load("x", tmp_path, environ={})
    assert conf.formats == ("qcow2", "vmdk")
    assert (conf.qcow2_compression, conf.vcpus, conf.memory) == ("zstd", 2, 1024)
    assert (conf.version, conf.release) == ("2.5", "3")


def test_appliance_creator_defaults(tmp_path: Path) -> None:
    conf = settings.load("x", tmp_path, environ={})
    assert (conf.formats, conf.vcpus, conf.memory) == (("qcow2",), 1, 512)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('formats = ["qcow3"]\n', "key 'formats' names an unknown format 'qcow3'"),
        ('vmdk_subformat = "flat"\n', "key 'vmdk_subformat' must be one of"),
        ('formats = "qcow2"\n', "key 'formats' must be of type array"),
    ],
)
def test_invalid_output_settings(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        settings.load("x", tmp_path, environ={})


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [key for key in settings.FIELDS if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"
