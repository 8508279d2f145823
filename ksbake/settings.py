"""Appliance settings: ``configs/NAME.toml`` next to ``configs/NAME.ks`` (optional).

One table (``FIELDS``) drives parsing, validation and the documentation; errors name the file
and the key. Environment variables documented in the README override a few settings for a
single run (``KSBAKE_MIRRORS``, ``KSBAKE_ACCEL``).
"""

from __future__ import annotations

import os
import platform
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksbake.errors import ConfigError
from ksbake.paths import read_bounded

DEFAULT_SYNTAX = "F40"
DEFAULT_RELEASEVER = "40"
MiB = 1024 * 1024


def _host_basearch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@dataclass(frozen=True)
class Settings:
    """Everything about an appliance that is not in its kickstart."""

    name: str
    syntax: str = DEFAULT_SYNTAX
    compat: bool = False
    releasever: str = DEFAULT_RELEASEVER
    basearch: str = field(default_factory=_host_basearch)
    mirrors: dict[str, str] = field(default_factory=dict)
    disk_sizes: dict[str, int] = field(default_factory=dict)
    firmware: str = "bios"
    accel: str = "tcg"
    boot_marker: str = "login:"
    boot_timeout: int = 180
    pre_timeout: int = 300
    formats: tuple[str, ...] = ("qcow2",)
    qcow2_compression: str = "zlib"
    raw_compression: str = "none"
    vmdk_subformat: str = "streamOptimized"
    version: str = "1.0"
    release: str = "1"
    vcpus: int = 1
    memory: int = 512
    ova: bool = False
    publish: str = "copy"

    def lock_inputs(self) -> dict[str, Any]:
        """The settings that the depsolve reads."""
        return {
            "releasever": self.releasever,
            "basearch": self.basearch,
            "mirrors": dict(sorted(self.mirrors.items())),
        }


def parse_size(value: Any) -> int:
    """Bytes from an integer (MiB) or a string such as "4GiB", "512M", "2048MiB" (binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be a positive size")
        return value * MiB
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([KMGT])(i?B)?\s*", value, re.IGNORECASE)
        if m:
            power = "KMGT".index(m.group(2).upper()) + 1
            return int(m.group(1)) * 1024**power
    raise ValueError(f'must be a size like 4096 (MiB) or "4GiB", got {value!r}')


def _one_of(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _positive(value: Any) -> Any:
    if value <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return value


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""An appliance name: file names (NAME-sda.qcow2), XML names, OVF ids all take it."""
VERSION_RE = re.compile(r"[A-Za-z0-9._+~]*")
"""A version or release as the descriptors can write it (virt-image's parser, OVF)."""


def _version(value: Any) -> str:
    text = str(value)
    if not VERSION_RE.fullmatch(text) or len(text) > 64:
        raise ValueError(
            f"{text!r} holds characters descriptors cannot carry (use letters, "
            "digits and . _ + ~, 64 at most)"
        )
    return text


def _at_most(limit: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        _positive(value)
        if value > limit:
            raise ValueError(f"must be at most {limit}, got {value!r}")
        return value

    return check


def _str_table(value: dict[str, Any]) -> dict[str, str]:
    for k, v in value.items():
        if not isinstance(v, str):
            raise ValueError(f"entry '{k}' must be a string, got {v!r}")
    return dict(value)


def _size_table(value: dict[str, Any]) -> dict[str, int]:
    out = {}
    for k, v in value.items():
        try:
            out[k.removeprefix("/dev/")] = parse_size(v)
        except ValueError as exc:
            raise ValueError(f"entry '{k}' {exc}") from None
    return out


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    doc: str
    check: Callable[[Any], Any] | None = None


FIELDS: dict[str, Field] = {
    "syntax": Field((str,), "pykickstart syntax version of the kickstart"),
    "compat": Field((bool,), "accept legacy kickstart syntax, rewriting it with warnings"),
    "releasever": Field((str, int), "$releasever for repository URLs", str),
    "basearch": Field((str,), "$basearch for repository URLs (default: the host's)"),
    "mirrors": Field((dict,), "repo name = URL: replaces that repo's URLs", _str_table),
    "disk_sizes": Field(
        (dict,),
        'disk = size ("sda" = "4GiB" or MiB): fixed disk sizes; --grow fills them',
        _size_table,
    ),
    "firmware": Field(
        (str,),
        "bios, uefi, or bios+uefi (one image that boots both ways)",
        _one_of("bios", "uefi", "bios+uefi"),
    ),
    "accel": Field((str,), "QEMU accelerator for boot tests: tcg, kvm, ... (KSBAKE_ACCEL)"),
    "boot_marker": Field((str,), "text on the serial console that means the boot succeeded"),
    "pre_timeout": Field(
        (int,), "seconds a %pre script may run before it is stopped", _at_most(86400)
    ),
    "boot_timeout": Field((int,), "seconds a boot test may take", _positive),
}


def _formats(value: list[Any]) -> tuple[str, ...]:
    from ksbake.formats import FORMATS

    if not value:
        raise ValueError("must name at least one format")
    for fmt in value:
        if fmt not in FORMATS:
            raise ValueError(f"names an unknown format {fmt!r} (use {', '.join(FORMATS)})")
    return tuple(dict.fromkeys(value))


FIELDS.update(
    {
        "formats": Field((list,), "disk formats to publish: raw, qcow2, vmdk, vdi, vhdx", _formats),
        "qcow2_compression": Field(
            (str,),
            "none, zlib (readable everywhere) or zstd (faster)",
            _one_of("none", "zlib", "zstd"),
        ),
        "raw_compression": Field(
            (str,), "none or xz (independent 16 MiB blocks)", _one_of("none", "xz")
        ),
        "vmdk_subformat": Field(
            (str,),
            "streamOptimized (VMware/OVF import) or monolithicSparse",
            _one_of("streamOptimized", "monolithicSparse"),
        ),
        "version": Field((str, int, float), "appliance version (descriptor)", _version),
        "release": Field((str, int), "appliance release (descriptor)", _version),
        "vcpus": Field((int,), "virtual CPUs (descriptor)", _at_most(4096)),
        "memory": Field((int,), "memory in MiB (descriptor)", _at_most(16 * 2**20)),
        "ova": Field((bool,), "also package the OVF descriptor and vmdk disks as NAME.ova"),
        "publish": Field(
            (str,),
            "copy (out/ never shares blocks with the store) or hardlink (no copy; boot them "
            "with snapshot=on)",
            _one_of("copy", "hardlink"),
        ),
    }
)


def parse_mirrors(text: str, source: str) -> dict[str, str]:
    """``name=url,name=url`` (the ``KSBAKE_MIRRORS`` format)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"{source}: expected name=url, got {item!r}")
        out[name.strip()] = url.strip()
    return out


def load(name: str, configs_dir: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read ``configs_dir/NAME.toml`` if it exists, validate it and apply env overrides."""
    env = os.environ if environ is None else environ
    path = configs_dir / f"{name}.toml"
    if not NAME_RE.fullmatch(name) or len(name) > 64:
        raise ConfigError(
            f"{configs_dir / name}.ks: {name!r} cannot be an appliance name",
            hint="name the kickstart with letters, digits and . _ + - (64 at most), "
            "starting with a letter or digit",
        )
    values: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(read_bounded(path).decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        for key, value in raw.items():
            spec = FIELDS.get(key)
            if spec is None:
                raise ConfigError(
                    f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(FIELDS)}"
                )
            if not isinstance(value, spec.types) or (
                bool not in spec.types and isinstance(value, bool)
            ):
                want = " or ".join(
                    {
                        "str": "string",
                        "dict": "table",
                        "int": "integer",
                        "bool": "boolean",
                        "list": "array",
                        "float": "number",
                    }[t.__name__]
                    for t in spec.types
                )
                raise ConfigError(f"{path}: key '{key}' must be of type {want}, got {value!r}")
            try:
                values[key] = spec.check(value) if spec.check else value
            except ValueError as exc:
                raise ConfigError(f"{path}: key '{key}' {exc}") from None
    if env.get("KSBAKE_MIRRORS"):
        mirrors = dict(values.get("mirrors", {}))
        mirrors.update(parse_mirrors(env["KSBAKE_MIRRORS"], "KSBAKE_MIRRORS"))
        values["mirrors"] = mirrors
    if env.get("KSBAKE_ACCEL"):
        values["accel"] = env["KSBAKE_ACCEL"]
    conf = Settings(name=name, **values)
    if conf.ova and ("vmdk" not in conf.formats or conf.vmdk_subformat != "streamOptimized"):
        raise ConfigError(
            f"{path}: ova: an OVA needs streamOptimized vmdk disks",
            hint='add "vmdk" to formats and keep vmdk_subformat = "streamOptimized"',
        )
    return conf
