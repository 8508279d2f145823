"""Appliance settings: ``configs/NAME.toml`` next to ``configs/NAME.ks`` (optional).

One table (``FIELDS``) drives parsing, validation and the documentation; errors name the file
and the key. Environment variables documented in the README override a few settings for a
single run (``KSBAKE_MIRRORS``).
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ksbake.errors import ConfigError

DEFAULT_SYNTAX = "F40"
DEFAULT_RELEASEVER = "40"


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
    # repo name -> URL replacing the kickstart's --baseurl/--mirrorlist/--metalink for it
    mirrors: dict[str, str] = field(default_factory=dict)

    def lock_inputs(self) -> dict[str, Any]:
        """The settings that the depsolve reads."""
        return {
            "releasever": self.releasever,
            "basearch": self.basearch,
            "mirrors": dict(sorted(self.mirrors.items())),
        }


_TYPES: dict[str, type | tuple[type, ...]] = {
    "syntax": str,
    "compat": bool,
    "releasever": (str, int),
    "basearch": str,
    "mirrors": dict,
}


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
    values: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        known = {f.name for f in fields(Settings)} - {"name"}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(sorted(known))}"
                )
            expected = _TYPES[key]
            if not isinstance(value, expected) or (
                expected is not bool and isinstance(value, bool)
            ):
                want = expected.__name__ if isinstance(expected, type) else "string"
                raise ConfigError(f"{path}: key '{key}' must be a {want}, got {value!r}")
            values[key] = value
        if "releasever" in values:
            values["releasever"] = str(values["releasever"])
        for repo, url in values.get("mirrors", {}).items():
            if not isinstance(url, str):
                raise ConfigError(f"{path}: key 'mirrors.{repo}' must be a string URL")
    if env.get("KSBAKE_MIRRORS"):
        mirrors = dict(values.get("mirrors", {}))
        mirrors.update(parse_mirrors(env["KSBAKE_MIRRORS"], "KSBAKE_MIRRORS"))
        values["mirrors"] = mirrors
    return Settings(name=name, **values)
