"""Where everything lives. Every path is built here, from one project root.

Environment overrides (used by the tests to get private workspaces over a shared store):
``KSBAKE_CONFIGS`` (kickstarts and settings), ``KSBAKE_CACHE`` (doit state, per-appliance
refs, logs), ``KSBAKE_STORE`` (content-addressed objects, bundled repository, package
downloads; defaults to the cache directory), ``KSBAKE_OUT`` (published appliances).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_INPUT_BYTES = 4 * 2**20
"""A kickstart, an included file or a settings file is text of this size at most: a link to
/dev/zero or a huge file must not hang every doit command that reads it."""


def read_bounded(path: str | Path) -> bytes:
    """The bytes of a regular file of at most MAX_INPUT_BYTES; OSError (with a reason) if it
    is something else (a device, a FIFO, a directory) or bigger."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_INPUT_BYTES // 2**20} MiB")
    return data


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
    def distro_sources(self) -> Path:
        return self.root / "repo" / "distro"

    @property
    def bundled_distro(self) -> Path:
        """Stable path of the current bundled distribution (a symlink to a store object)."""
        return self.store / "distro"

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

    @property
    def local_settings(self) -> Path:
        """This host's settings for every appliance (mirrors, accel): untracked."""
        return self.configs / "local.toml"

    def appliances(self) -> list[str]:
        return sorted(p.stem for p in self.configs.glob("*.ks"))
