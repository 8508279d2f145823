"""Where everything lives. Every path is built here, from one project root.

Environment overrides (used by the tests to get private workspaces over a shared store):
``KSBAKE_CONFIGS`` (kickstarts and settings), ``KSBAKE_CACHE`` (doit state, per-appliance
refs, logs), ``KSBAKE_STORE`` (content-addressed objects, bundled repository, package
downloads; defaults to the cache directory), ``KSBAKE_OUT`` (published appliances).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    root: Path
    configs: Path
    cache: Path
    store: Path
    out: Path

    @classmethod
    def from_env(cls, root: Path = PROJECT_ROOT, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ

        def pick(var: str, default: Path) -> Path:
            return Path(env[var]).resolve() if env.get(var) else default

        cache = pick("KSBAKE_CACHE", root / "cache")
        return cls(
            root=root,
            configs=pick("KSBAKE_CONFIGS", root / "configs"),
            cache=cache,
            store=pick("KSBAKE_STORE", cache),
            out=pick("KSBAKE_OUT", root / "out"),
        )

    # -- shared, in the store -------------------------------------------------------------
    @property
    def repo_sources(self) -> Path:
        return self.root / "repo"

    @property
    def bundled_repo(self) -> Path:
        """Stable path of the current bundled repository (a symlink to a store object)."""
        return self.store / "repo"

    @property
    def debs(self) -> Path:
        return self.store / "debs"

    @property
    def dnf_cache(self) -> Path:
        return self.store / "dnf"

    # -- per workspace ----------------------------------------------------------------------
    @property
    def doit_db(self) -> Path:
        return self.cache / "doit.sqlite3"

    @property
    def events(self) -> Path:
        return self.cache / "log" / "events.jsonl"

    def build_dir(self, name: str) -> Path:
        """Small per-appliance files that doit tracks: section inputs, refs to store objects."""
        return self.cache / "build" / name

    def kickstart(self, name: str) -> Path:
        return self.configs / f"{name}.ks"

    def settings(self, name: str) -> Path:
        return self.configs / f"{name}.toml"

    def appliances(self) -> list[str]:
        return sorted(p.stem for p in self.configs.glob("*.ks"))
