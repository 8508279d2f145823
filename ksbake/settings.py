"""Appliance settings: ``configs/NAME.toml`` next to ``configs/NAME.ks`` (optional).

One table (``FIELDS``) drives parsing, validation and the documentation; errors name the file
and the key. Environment variables documented in the README override a few settings for a
single run (``KSBAKE_MIRRORS``, ``KSBAKE_ACCEL``, ``KSBAKE_SSH_KEY``).
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


CHECK_WHERE = ("guest", "host")
PORT_PLACEHOLDER = re.compile(r"\{port:(\d+)\}")
"""``{port:80}`` in a host check: the host port that reaches the guest's port 80."""


@dataclass(frozen=True)
class BootCheck:
    """One command of the boot test and what its result must be (``[[boot_checks]]``)."""

    run: str  # a shell command line
    where: str = "guest"  # guest: over ssh as boot_ssh_user; host: sh -c on the build host
    expect: str | None = None  # a substring the output must contain
    match: str | None = None  # a regular expression (re.search, multiline) it must match
    status: int = 0  # the exit status it must end with
    timeout: int = 60  # seconds, then it is killed (a failure)
    name: str = ""  # how messages call it (default: the command)

    def as_dict(self) -> dict[str, Any]:
        """For the boot test's doit ``config_changed`` and its record."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


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
    boot_ssh_user: str | None = None
    boot_ssh_key: str | None = None  # absolute (resolved against configs/ by load)
    boot_forward: tuple[int, ...] = ()
    boot_checks: tuple[BootCheck, ...] = ()
    pre_timeout: int = 300
    formats: tuple[str, ...] = ("qcow2",)
    qcow2_compression: str = "zlib"
    raw_compression: str = "none"
    vmdk_subformat: str = "streamOptimized"
    vmdk_adapter: str = "lsilogic"
    ovf_digest: str = "sha256"
    libvirt_network: str = "default"
    vendor: str | None = None
    descriptors: tuple[str, ...] | None = None  # None: every descriptor the formats allow
    descriptor_format: str | None = None  # None: each descriptor's first runnable format
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
    "boot_timeout": Field(
        (int,),
        "seconds a boot test may take to the marker (and, with a login, to a working ssh login)",
        _positive,
    ),
}

SSH_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


def _ssh_user(value: str) -> str:
    if not SSH_USER_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a user name (letters, digits, _ . -, 32 at most)")
    return value


def _ssh_key(value: str) -> str:
    if not value.strip() or "\0" in value:
        raise ValueError("must be the path of a private key file")
    return value


def _tcp_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"entry {value!r} is not a TCP port (1-65535)")
    return value


def _forwards(value: list[Any]) -> tuple[int, ...]:
    return tuple(sorted({_tcp_port(v) for v in value}))


CHECK_KEYS: dict[str, tuple[type, ...]] = {
    "run": (str,),
    "where": (str,),
    "expect": (str,),
    "match": (str,),
    "status": (int,),
    "timeout": (int,),
    "name": (str,),
}


def _check(number: int, item: Any) -> BootCheck:
    where = f"check {number}"
    if not isinstance(item, dict):
        raise ValueError(
            f'{where} must be a table ([[boot_checks]] with run = "..."), got {item!r}'
        )
    for key, value in item.items():
        if key not in CHECK_KEYS:
            raise ValueError(f"{where}: unknown key '{key}' (known: {', '.join(CHECK_KEYS)})")
        if not isinstance(value, CHECK_KEYS[key]) or isinstance(value, bool):
            kind = "a string" if CHECK_KEYS[key] == (str,) else "an integer"
            raise ValueError(f"{where}: '{key}' must be {kind}, got {value!r}")
    if not str(item.get("run", "")).strip():
        raise ValueError(f'{where} needs run = "a command"')
    if item.get("where", "guest") not in CHECK_WHERE:
        raise ValueError(f"{where}: 'where' must be guest or host, got {item['where']!r}")
    if "match" in item:
        try:
            re.compile(item["match"], re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"{where}: 'match' is not a regular expression: {exc}") from None
    if not 0 <= item.get("status", 0) <= 255:
        raise ValueError(f"{where}: 'status' must be 0-255, got {item['status']!r}")
    if not 0 < item.get("timeout", 60) <= 3600:
        raise ValueError(f"{where}: 'timeout' must be 1-3600 seconds, got {item['timeout']!r}")
    check = BootCheck(**item)
    if check.where == "guest" and PORT_PLACEHOLDER.search(check.run):
        raise ValueError(
            f'{where}: {{port:N}} is a host port: use it in a check with where = "host"'
        )
    return check


def _checks(value: list[Any]) -> tuple[BootCheck, ...]:
    return tuple(_check(number, item) for number, item in enumerate(value, 1))


FIELDS.update(
    {
        "boot_ssh_user": Field(
            (str,),
            "log in as this user over ssh once the marker showed (the boot test then waits "
            "for sshd, logs in and runs boot_checks)",
            _ssh_user,
        ),
        "boot_ssh_key": Field(
            (str,),
            "private key for that login: a path relative to configs/ (KSBAKE_SSH_KEY)",
            _ssh_key,
        ),
        "boot_forward": Field(
            (list,),
            "guest TCP ports reachable from the host during the boot test (besides 22)",
            _forwards,
        ),
        "boot_checks": Field(
            (list,),
            "commands the boot test runs and what they must print ([[boot_checks]] tables)",
            _checks,
        ),
    }
)


def _vendor(value: str) -> str:
    if not value.strip() or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ValueError("must be one line of at most 200 characters")
    return value


def _network_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", value):
        raise ValueError(f"must be a libvirt network name or 'user', got {value!r}")
    return value


def _descriptors(value: list[Any]) -> tuple[str, ...]:
    from ksbake.formats import DESCRIPTORS

    for name in value:
        if name not in DESCRIPTORS:
            raise ValueError(f"names an unknown descriptor {name!r} (use {', '.join(DESCRIPTORS)})")
    return tuple(dict.fromkeys(value))


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
        "vmdk_adapter": Field(
            (str,),
            "the vmdk's adapter and the OVF's disk controller: lsilogic (VMware), buslogic, "
            "or ide (an IDE controller, for guests without SCSI drivers)",
            _one_of("lsilogic", "buslogic", "ide"),
        ),
        "vendor": Field((str,), "the vendor the OVF's ProductSection names", _vendor),
        "libvirt_network": Field(
            (str,),
            "the libvirt network the domain's NICs join, or user (QEMU user networking: no "
            "libvirt network needed)",
            _network_name,
        ),
        "ovf_digest": Field(
            (str,),
            "digest of the OVF manifest: sha256 (ovftool 4.2+, vSphere 6.5+, VirtualBox 5.1+) "
            "or sha1 (the OVF 1.0 specification; older VMware clients)",
            _one_of("sha256", "sha1"),
        ),
        "descriptors": Field(
            (list,), "descriptors to write: virt-image, libvirt, ovf (default: all)", _descriptors
        ),
        "descriptor_format": Field(
            (str,),
            "the disk format the virt-image and libvirt descriptors name (default: the first "
            "runnable one in formats)",
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


LOCAL_SETTINGS = "local.toml"  # in configs/, untracked: what differs per build host
LOCAL_KEYS = ("mirrors", "accel")


def parse_mirrors(text: str, source: str) -> dict[str, str]:
    """``name=url,name=url`` (the ``KSBAKE_MIRRORS`` format)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"{source}: expected name=url, got {item!r}")
        out[name.strip()] = url.strip()
    return out


def _read(path: Path, fields: dict[str, Field]) -> dict[str, Any]:
    """The validated values of one settings file (only ``fields`` allowed)."""
    values: dict[str, Any] = {}
    try:
        raw = tomllib.loads(read_bounded(path).decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    for key, value in raw.items():
        spec = fields.get(key)
        if spec is None:
            raise ConfigError(
                f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(fields)}"
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
    return values


def load(name: str, configs_dir: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read ``configs_dir/NAME.toml`` if it exists, then ``configs_dir/local.toml`` (this
    host's mirrors and accel, untracked), validate them and apply the environment's overrides."""
    env = os.environ if environ is None else environ
    path = configs_dir / f"{name}.toml"
    if name == LOCAL_SETTINGS.removesuffix(".toml"):
        raise ConfigError(
            f"{configs_dir / name}.ks: 'local' cannot be an appliance name: configs/local.toml "
            "holds this host's settings",
            hint="rename the kickstart",
        )
    if not NAME_RE.fullmatch(name) or len(name) > 64:
        raise ConfigError(
            f"{configs_dir / name}.ks: {name!r} cannot be an appliance name",
            hint="name the kickstart with letters, digits and . _ + - (64 at most), "
            "starting with a letter or digit",
        )
    values = _read(path, FIELDS) if path.exists() else {}
    local = configs_dir / LOCAL_SETTINGS
    if local.exists():  # this host's mirrors and accelerator, for every appliance
        here = _read(local, {k: FIELDS[k] for k in LOCAL_KEYS})
        values["mirrors"] = {**values.get("mirrors", {}), **here.pop("mirrors", {})}
        values.update(here)
    if env.get("KSBAKE_MIRRORS"):
        mirrors = dict(values.get("mirrors", {}))
        mirrors.update(parse_mirrors(env["KSBAKE_MIRRORS"], "KSBAKE_MIRRORS"))
        values["mirrors"] = mirrors
    if env.get("KSBAKE_ACCEL"):
        values["accel"] = env["KSBAKE_ACCEL"]
    if values.get("boot_ssh_key"):  # relative to configs/, as the kickstart's %include
        values["boot_ssh_key"] = str(
            configs_dir.resolve() / Path(values["boot_ssh_key"]).expanduser()
        )
    if env.get("KSBAKE_SSH_KEY"):  # a test's generated key
        values["boot_ssh_key"] = str(Path(env["KSBAKE_SSH_KEY"]).expanduser().resolve())
    conf = Settings(name=name, **values)
    _check_login(conf, path)
    _check_descriptors(conf, path)
    if conf.ova and ("vmdk" not in conf.formats or conf.vmdk_subformat != "streamOptimized"):
        raise ConfigError(
            f"{path}: ova: an OVA needs streamOptimized vmdk disks",
            hint='add "vmdk" to formats and keep vmdk_subformat = "streamOptimized"',
        )
    return conf


def _check_descriptors(conf: Settings, path: Path) -> None:
    """descriptor_format must be one of formats and runnable; ova needs the ovf descriptor."""
    from ksbake.formats import format_options, runnable

    chosen = conf.descriptor_format
    if chosen is not None:
        if chosen not in conf.formats:
            raise ConfigError(
                f"{path}: descriptor_format: {chosen!r} is not among formats "
                f"({', '.join(conf.formats)})",
                hint="add it to formats or choose one of them",
            )
        if not runnable(chosen, format_options(chosen, conf)):
            raise ConfigError(
                f"{path}: descriptor_format: {chosen} compressed with xz cannot be run by a "
                "hypervisor",
                hint='choose another format, or set raw_compression = "none"',
            )
    if conf.ova and conf.descriptors is not None and "ovf" not in conf.descriptors:
        raise ConfigError(
            f"{path}: ova: an OVA packs the OVF descriptor, and descriptors leaves out ovf",
            hint='add "ovf" to descriptors',
        )


def forwarded_ports(conf: Settings) -> tuple[int, ...]:
    """Guest ports the boot test forwards: 22 with a login, and boot_forward."""
    return tuple(sorted(set(conf.boot_forward) | ({22} if conf.boot_ssh_user else set())))


def _check_login(conf: Settings, path: Path) -> None:
    """What only the settings together can say: guest checks need a login, placeholders a
    forwarded port. (A missing key file is the boot test's error: building needs no key.)"""
    ports = forwarded_ports(conf)
    for number, check in enumerate(conf.boot_checks, 1):
        if check.where == "guest" and not conf.boot_ssh_user:
            raise ConfigError(
                f"{path}: key 'boot_checks' check {number} runs in the guest, which needs a login",
                hint='set boot_ssh_user and boot_ssh_key, or where = "host"',
            )
        for port in PORT_PLACEHOLDER.findall(check.run):
            if int(port) not in ports:
                raise ConfigError(
                    f"{path}: key 'boot_checks' check {number} uses {{port:{port}}}, but guest "
                    f"port {port} is not forwarded",
                    hint=f"add it: boot_forward = [{port}]",
                )
