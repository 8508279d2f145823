"""doit task: the bundled offline package repository (built once, kept in the store)."""

from __future__ import annotations

from tasks.common import PATHS, action


def _sources() -> list[str]:
    files = sorted(
        str(p)
        for p in PATHS.repo_sources.rglob("*")
        if p.is_file() and PATHS.distro_sources not in p.parents
    )
    return [*files, str(PATHS.root / "ksbake" / "bundledrepo.py")]


def _distro_sources() -> list[str]:
    files = sorted(str(p) for p in PATHS.distro_sources.rglob("*") if p.is_file())
    return [*files, *(str(p) for p in sorted((PATHS.root / "ksbake" / "distro").glob("*.py")))]


def task_repo() -> dict:
    """Build the bundled RPM repository (base + updates) from Debian packages."""
    return {
        "doc": "build the bundled offline RPM repository (cache/repo/{base,updates})",
        "actions": [action("ksbake.bundledrepo:step", PATHS)],
        "file_dep": _sources(),
        "targets": [str(PATHS.bundled_repo / "base" / "repodata" / "repomd.xml")],
    }


def task_distro() -> dict:
    """Build the bundled systemd distribution (Debian packages converted to RPMs)."""
    return {
        "doc": "build the bundled systemd distribution (cache/distro/{base,updates})",
        "actions": [action("ksbake.distro.build:step", PATHS)],
        "file_dep": _distro_sources(),
        "targets": [str(PATHS.bundled_distro / "base" / "repodata" / "repomd.xml")],
    }
