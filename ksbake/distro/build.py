"""Build the bundled systemd distribution: Debian's packages converted to an RPM repository.

Inputs, all in ``repo/distro/``: ``distro.toml`` (the Debian suites, the groups and the
environment of the comps file, the packages of the updates repository, preferred providers),
``packages.list`` (the top-level packages), ``fixups.toml`` (what a package needs beyond its
files: see ``ksbake.distro.convert``) and ``files/`` (content fixups refer to).

Result (``build(out_dir, debs_dir)``)::

    out_dir/base/Packages/*.rpm, base/repodata/        the closure + comps (groups, environment)
    out_dir/updates/Packages/*.rpm, updates/repodata/  newer builds from the update suites

Same inputs give the same bytes (fixed epoch, clamped mtimes, build host, pinned .rpm mtimes,
fixed repodata revision). The build runs in a staging directory renamed into place when
complete; the .debs are cached in ``debs_dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ksbake.distro import convert as conv
from ksbake.distro.debian import Index, closure, load_suite
from ksbake.errors import BuildError, KsbakeError
from ksbake.paths import Paths

log = logging.getLogger("ksbake.distro")

SOURCE = Path(__file__).resolve().parents[2] / "repo" / "distro"
EPOCH = 1704067200  # 2024-01-01: every converted package's build time and clamped mtimes
CODE_VERSION = 1


@dataclass
class Config:
    suite: str
    update_suites: list[str]
    packages: list[str]
    updates: list[str]
    prefer: dict[str, str]
    groups: dict[str, dict[str, Any]]
    environment: dict[str, Any]
    fixups: dict[str, conv.Fixup]

    def fixup(self, name: str) -> conv.Fixup:
        """The fixup of ``name``: its own table, else the first whose pattern matches."""
        if name in self.fixups:
            return self.fixups[name]
        for pattern, fixup in self.fixups.items():
            if fnmatchcase(name, pattern):
                return fixup
        return conv.Fixup()


def load_config(source: Path = SOURCE) -> Config:
    """The distribution's sources; a file that is missing, not TOML, or lacks a key is one
    line naming it."""
    where = source / "distro.toml"
    try:
        distro = tomllib.loads(where.read_text())
        where = source / "fixups.toml"
        raw = tomllib.loads(where.read_text())
        fixups = {}
        for name, table in raw.items():
            for key, value in table.get("files", {}).items():
                if isinstance(value, dict):  # {from = "files/..."}: kept in repo/distro/files
                    where = source / value["from"]
                    table["files"][key] = where.read_text()
            fixups[name] = conv.Fixup.from_table(table, f"{source / 'fixups.toml'} [{name}]")
        where = source / "packages.list"
        packages = [
            line.split("#")[0].strip()
            for line in where.read_text().splitlines()
            if line.split("#")[0].strip()
        ]
        where = source / "distro.toml"
        return Config(
            suite=distro["suite"],
            update_suites=distro["update_suites"],
            packages=packages,
            updates=distro.get("updates", []),
            prefer=distro.get("prefer", {}),
            groups=distro["groups"],
            environment=distro["environment"],
            fixups=fixups,
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{where}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{where}: {exc}") from None
    except KeyError as exc:
        raise BuildError(f"{where}: the key {exc} is missing") from None


def _newer(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def _macros() -> dict[str, str]:
    from ksbake.bundledrepo import RPM_MACROS

    macros = {k: v for k, v in RPM_MACROS.items() if k != "source_date_epoch_from_changelog"}
    return {**macros, "ksbake_epoch": str(EPOCH), "_buildhost": "ksbake"}


def comps(config: Config, index: Index, names: list[str]) -> str:
    """comps.xml: the groups of distro.toml (``core`` also takes every Essential and required
    package, which Debian never lists as dependencies) and the environment."""
    required = sorted(
        n
        for n in names
        if index.packages[n].fields.get("Essential") == "yes"
        or index.packages[n].fields.get("Priority") == "required"
    )
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<comps>"]
    for gid, group in config.groups.items():
        members = [(p, "mandatory") for p in group.get("mandatory", [])]
        if group.get("essential"):
            members += [(p, "mandatory") for p in required if p not in group.get("mandatory", [])]
        members += [(p, "default") for p in group.get("default", [])]
        members += [(p, "optional") for p in group.get("optional", [])]
        out += [
            "  <group>",
            f"    <id>{gid}</id>",
            f"    <name>{escape(group['name'])}</name>",
            f"    <description>{escape(group.get('description', ''))}</description>",
            "    <default>false</default>",
            "    <uservisible>true</uservisible>",
            "    <packagelist>",
            *(f'      <packagereq type="{t}">{p}</packagereq>' for p, t in members),
            "    </packagelist>",
            "  </group>",
        ]
    env = config.environment
    out += [
        "  <environment>",
        f"    <id>{env['id']}</id>",
        f"    <name>{escape(env['name'])}</name>",
        f"    <description>{escape(env.get('description', ''))}</description>",
        "    <grouplist>",
        *(f"      <groupid>{g}</groupid>" for g in env["groups"]),
        "    </grouplist>",
        "    <optionlist>",
        *(f"      <groupid>{g}</groupid>" for g in env.get("options", [])),
        "    </optionlist>",
        "  </environment>",
        "</comps>",
        "",
    ]
    return "\n".join(out)


def _build_into(result: Path, work: Path, debs_dir: Path, config: Config) -> dict[str, Any]:
    from ksbake.bundledrepo import _createrepo, _fetch_debs

    index = Index(load_suite(config.suite))
    names = closure(index, config.packages, config.prefer)
    wanted = [(n, index.packages[n].version) for n in names]
    newer: dict[str, str] = {}
    for suite in config.update_suites:
        for name, stanza in load_suite(suite).items():
            if name in config.updates and _newer(
                stanza.version, newer.get(name, index.packages[name].version)
            ):
                newer[name] = stanza.version
    lacking = [n for n in config.updates if n not in newer]
    if lacking:
        raise BuildError(
            f"repo/distro/distro.toml: updates names {', '.join(lacking)}, but no update suite "
            "has a newer build of it",
            hint="name packages that bookworm-security or bookworm-updates updated",
        )
    start = time.monotonic()
    debs_dir.mkdir(parents=True, exist_ok=True)
    base_debs = _fetch_debs(wanted, debs_dir)
    update_debs = _fetch_debs(sorted(newer.items()), debs_dir)
    log.info("%d .debs in %.1f s", len(base_debs) + len(update_debs), time.monotonic() - start)

    def survey(deb: Any) -> tuple[str, str, list[str]]:
        stanza, control = conv.read_control(deb.path)
        return (
            stanza.name,
            control.get("postinst", b"").decode(errors="replace"),
            conv.declared_users(deb.path),
        )

    workers = os.cpu_count() or 2
    with ThreadPoolExecutor(workers) as pool:
        surveyed = list(pool.map(survey, base_debs))
    postinsts = {name: text for name, text, _ in surveyed}
    users: dict[str, str] = {}  # static accounts first: base-passwd owns them, not systemd
    for name, _, declared in sorted(surveyed, key=lambda s: s[0] != conv.ACCOUNTS):
        for u in declared:
            users.setdefault(u, name)
    for name in names:
        for u in conv.fixup_users(config.fixup(name)):
            users.setdefault(u, name)
    winners = conv.resolve_alternatives(postinsts)
    macros = _macros()

    def one(deb: Any, repo: str) -> conv.Converted:
        scratch = work / repo / deb.name
        scratch.mkdir(parents=True)
        try:
            return conv.convert(
                deb.path,
                scratch,
                result / repo / "Packages",
                config.fixup(deb.name),
                winners,
                users,
                macros,
            )
        except KsbakeError as exc:
            raise BuildError(f"converting {deb.name} {deb.version}: {exc}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    for repo in ("base", "updates"):
        (result / repo / "Packages").mkdir(parents=True)
    start = time.monotonic()
    jobs = [(d, "base") for d in sorted(base_debs, key=lambda d: -d.path.stat().st_size)]
    jobs += [(d, "updates") for d in update_debs]
    with ThreadPoolExecutor(workers) as pool:
        converted = list(pool.map(lambda job: one(*job), jobs))
    log.info("%d packages converted in %.1f s", len(converted), time.monotonic() - start)
    (work / "comps.xml").write_text(comps(config, index, names))
    _createrepo(result / "base", work / "comps.xml")
    _createrepo(result / "updates", None)
    return {"packages": len(base_debs), "updates": sorted(newer.items())}


def build(out_dir: Path, debs_dir: Path, source: Path = SOURCE) -> None:
    """Build the distribution into ``out_dir`` (replaced only when the new one is complete)."""
    out_dir, debs_dir = Path(out_dir).absolute(), Path(debs_dir).absolute()
    config = load_config(source)
    staging = out_dir.parent / f".{out_dir.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    start = time.monotonic()
    try:
        info = _build_into(staging / "result", staging / "work", debs_dir, config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rename(staging / "previous")
    (staging / "result").rename(out_dir)
    shutil.rmtree(staging)
    log.info(
        "distribution built in %s in %.1f s: %d packages, updates %s",
        out_dir,
        time.monotonic() - start,
        info["packages"],
        ", ".join(f"{n} {v}" for n, v in info["updates"]),
    )


def sources_key(paths: Paths) -> str:
    from ksbake.hashing import file_digest, layer_key

    files = sorted(p for p in paths.distro_sources.rglob("*") if p.is_file())
    code = [Path(__file__), Path(conv.__file__), Path(conv.__file__).with_name("debian.py")]
    digests = {str(p.relative_to(paths.root)): file_digest(p) for p in [*files, *code]}
    return layer_key("distro", CODE_VERSION, digests)


def step(paths: Paths) -> None:
    """Obtain the distribution from the store (build it if absent) and point
    ``paths.bundled_distro`` (what ``$ksbake_distro`` expands to) at it."""
    from ksbake import report
    from ksbake.bundledrepo import point_link
    from ksbake.store import Store

    started = time.monotonic()
    key = sources_key(paths)
    obtained = Store(paths.store).obtain(
        "distro", key, lambda staging: build(staging / "distro", paths.debs, paths.distro_sources)
    )
    point_link(paths.bundled_distro, obtained.path / "distro")
    report.record(paths, "-", "distro", key, obtained.built, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    """``python -m ksbake.distro.build OUT_DIR [--debs DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ksbake.distro.build",
        description="Build ksbake's bundled systemd distribution: OUT_DIR/base, OUT_DIR/updates.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument(
        "--debs", type=Path, metavar="DIR", help="cache of .deb files (default: OUT_DIR/../debs)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s"
    )
    try:
        build(args.out_dir, args.debs or args.out_dir.absolute().parent / "debs")
    except KsbakeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
