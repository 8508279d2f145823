"""The lock layer: depsolve the kickstart's repositories and %packages into a lock file.

Input: the canonical ``repo``/``url`` and ``%packages`` text of the kickstart (a kickstart
fragment, re-parsed here) plus releasever/basearch/mirror settings. Output: a lock listing
every package's name, epoch, version, release, arch, repo and sha256, sorted, as canonical
JSON, and the install options (--excludedocs, --instLangs) the packages layer applies.

The lock's key also holds the checksums of the repositories' metadata, so a nightly rebuild
re-resolves against fresh metadata; if the resolved set is identical the lock's bytes are too,
and nothing downstream reruns (the packages layer is keyed by the lock's content).

Runs in a worker process (``ksbake.sandbox``): dnf keeps global state.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksbake.errors import PackageError
from ksbake.hashing import canonical_json, file_digest
from ksbake.paths import Paths
from ksbake.runner import Job, located

LOCK_FORMAT = 1
BUNDLED_VARS = ("ksbake_repo", "ksbake_distro")  # the bundled repositories' paths


@dataclass(frozen=True)
class RepoSpec:
    """One repository as dnf will see it (URLs with $ksbake_repo expanded, others left to dnf)."""

    name: str
    baseurl: tuple[str, ...]
    mirrorlist: str | None
    metalink: str | None
    includepkgs: tuple[str, ...]
    excludepkgs: tuple[str, ...]
    cost: int | None
    sslverify: bool
    proxy: str | None


def bundled(paths: Paths) -> dict[str, str]:
    """What ``$ksbake_repo`` (small test repository) and ``$ksbake_distro`` (the systemd
    distribution) expand to."""
    return {"ksbake_repo": str(paths.bundled_repo), "ksbake_distro": str(paths.bundled_distro)}


def expand(url: str | None, bundled_repos: dict[str, str]) -> str | None:
    """Expand the bundled repositories' variables; dnf expands $releasever/$basearch."""
    if url is None:
        return None
    for var, path in bundled_repos.items():
        url = url.replace("${" + var + "}", path).replace("$" + var, path)
    return url


def repo_specs(
    handler: Any, mirrors: dict[str, str], bundled_repos: dict[str, str]
) -> list[RepoSpec]:
    """Repositories from ``repo`` lines and the ``url`` command, with mirror overrides applied."""
    specs: list[RepoSpec] = []
    url = handler.url
    if (
        getattr(url, "url", None)
        or getattr(url, "mirrorlist", None)
        or getattr(url, "metalink", None)
    ):
        specs.append(
            RepoSpec(
                "ks-url",
                (url.url,) if url.url else (),
                url.mirrorlist,
                getattr(url, "metalink", None),
                (),
                (),
                None,
                not getattr(url, "noverifyssl", False),
                getattr(url, "proxy", None) or None,
            )
        )
    for repo in handler.repo.repoList:
        specs.append(
            RepoSpec(
                repo.name,
                (repo.baseurl,) if repo.baseurl else (),
                repo.mirrorlist or None,
                getattr(repo, "metalink", None) or None,
                tuple(getattr(repo, "includepkgs", []) or []),
                tuple(getattr(repo, "excludepkgs", []) or []),
                repo.cost,
                not getattr(repo, "noverifyssl", False),
                getattr(repo, "proxy", None) or None,
            )
        )
    unknown = set(mirrors) - {s.name for s in specs}
    if unknown:
        raise PackageError(
            "mirror override names repositories the kickstart does not have: "
            + ", ".join(sorted(unknown)),
            hint=f"kickstart repositories: {', '.join(s.name for s in specs) or 'none'}",
        )
    out = []
    for spec in specs:
        if spec.name in mirrors:
            spec = RepoSpec(
                spec.name,
                (mirrors[spec.name],),
                None,
                None,
                spec.includepkgs,
                spec.excludepkgs,
                spec.cost,
                spec.sslverify,
                spec.proxy,
            )
        out.append(
            RepoSpec(
                spec.name,
                tuple(expand(u, bundled_repos) or "" for u in spec.baseurl),
                expand(spec.mirrorlist, bundled_repos),
                expand(spec.metalink, bundled_repos),
                spec.includepkgs,
                spec.excludepkgs,
                spec.cost,
                spec.sslverify,
                spec.proxy,
            )
        )
    if not out:
        raise PackageError(
            "the kickstart names no package repository",
            hint="add a 'repo --name=NAME --baseurl=URL' line (the bundled one is "
            "'repo --name=ksbake --baseurl=file://$ksbake_repo/base')",
        )
    return out


def _is_local(spec: RepoSpec) -> bool:
    return bool(spec.baseurl) and all(u.startswith("file://") for u in spec.baseurl)


def make_base(
    *,
    installroot: Path,
    cachedir: Path,
    persistdir: Path,
    logdir: Path,
    releasever: str,
    basearch: str,
    repos: list[RepoSpec],
    excludepkgs: list[str] | None = None,
    install_weak_deps: bool = True,
):  # noqa: ANN201 - dnf.Base
    """A dnf.Base that reads nothing from and writes nothing to the host's dnf/rpm state."""
    import dnf
    import rpm

    base = dnf.Base()
    conf = base.conf
    conf.installroot = str(installroot)
    if all(_is_local(spec) for spec in repos):
        # nothing to download: a private cache, so metadata rewritten in place (a local
        # mirror updated, the bundled repository rebuilt) is never read from a stale copy,
        # and parallel builds never share one
        cachedir = Path(tempfile.mkdtemp(prefix="ksbake-dnf-"))
    conf.cachedir = str(cachedir)
    conf.persistdir = str(persistdir)
    conf.logdir = str(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    conf.releasever = releasever
    conf.substitutions["releasever"] = releasever
    conf.substitutions["basearch"] = basearch
    conf.substitutions["arch"] = basearch
    conf.keepcache = True
    conf.gpgcheck = False
    conf.skip_if_unavailable = False
    conf.install_weak_deps = install_weak_deps
    conf.reposdir = []
    conf.varsdir = []
    conf.excludepkgs = list(excludepkgs or [])
    conf.ignorearch = basearch != conf.substitutions.get("basearch")
    rpm.addMacro("_dbpath", "/usr/lib/sysimage/rpm")  # after Base(): it resets macros
    for spec in repos:
        kwargs: dict[str, Any] = {"skip_if_unavailable": False, "sslverify": spec.sslverify}
        if _is_local(spec) or os.environ.get("KSBAKE_REFRESH"):
            # local repositories are re-read every time (cheap); remote ones when a refresh
            # is asked for (nightly), else dnf's cache is good until its metadata_expire
            kwargs["metadata_expire"] = 0
        if spec.mirrorlist:
            kwargs["mirrorlist"] = spec.mirrorlist
        if spec.metalink:
            kwargs["metalink"] = spec.metalink
        if spec.includepkgs:
            kwargs["includepkgs"] = list(spec.includepkgs)
        if spec.excludepkgs:
            kwargs["excludepkgs"] = list(spec.excludepkgs)
        if spec.cost is not None:
            kwargs["cost"] = spec.cost
        if spec.proxy:
            kwargs["proxy"] = spec.proxy
        repo = base.repos.add_new_repo(spec.name, conf, baseurl=list(spec.baseurl), **kwargs)
        if _is_local(spec):  # (a shared cache, with remote repos): drop the local copy
            shutil.rmtree(repo._repo.getCachedir(), ignore_errors=True)
    return base


def load_metadata(base: Any) -> None:
    """Download/read every repository's metadata; one clear error per unreachable repo."""
    import dnf.exceptions

    try:
        base.fill_sack(load_system_repo=False, load_available_repos=True)
    except dnf.exceptions.RepoError as exc:
        raise PackageError(
            f"cannot load repository metadata: {exc}",
            hint="check the repo URL, the mirror override and the network",
        ) from None


def metadata_digests(base: Any) -> dict[str, dict[str, str | None]]:
    """A checksum of each repository's repomd.xml (what changes when the repo is updated).

    ``repomd`` is the path of a local repository's repomd.xml (None for remote ones), which the
    doit up-to-date check re-hashes cheaply; the spec is kept so the packages layer can
    download from the same places.
    """
    out: dict[str, dict[str, str | None]] = {}
    for repo in sorted(base.repos.iter_enabled(), key=lambda r: r.id):
        local = [
            Path(u[len("file://") :]) / "repodata" / "repomd.xml"
            for u in repo.baseurl
            if u.startswith("file://")
        ]
        cached = Path(repo._repo.getCachedir()) / "repodata" / "repomd.xml"
        found = next((c for c in [*local, cached] if c.is_file()), None)
        out[repo.id] = {
            "digest": file_digest(found)
            if found
            else f"rev:{repo._repo.getRevision()}:{repo._repo.getMaxTimestamp()}",
            "repomd": str(local[0]) if local and local[0].is_file() else None,
        }
    return out


def _select_groups(base: Any, ksdata: Any, ignoremissing: bool, warn: list[str]) -> set[str]:
    """Package names that the kickstart's groups and environment ask for (comps semantics)."""
    from pykickstart.constants import GROUP_ALL, GROUP_REQUIRED

    comps = base.comps
    names: set[str] = set()
    missing: list[str] = []

    def group_names(group: Any, include: int) -> set[str]:
        out = {p.name for p in group.mandatory_packages}
        if include != GROUP_REQUIRED:
            out |= {p.name for p in group.default_packages}
        if include == GROUP_ALL:
            out |= {p.name for p in group.optional_packages}
        return out

    if ksdata.environment:
        env = comps.environment_by_pattern(ksdata.environment)
        if env is None:
            missing.append(f"@^{ksdata.environment}")
        else:
            for gid in env.group_ids:
                grp = comps.group_by_pattern(gid.name)
                if grp is not None:
                    names |= group_names(grp, 0)
    groups = list(ksdata.groupList)
    if not ksdata.nocore and not any(g.name == "core" for g in groups):
        from pykickstart.parser import Group

        groups.insert(0, Group(name="core"))
    for group in groups:
        grp = comps.group_by_pattern(group.name)
        if grp is None:
            missing.append(f"@{group.name}")
            continue
        names |= group_names(grp, group.include)
    excluded_from_groups: set[str] = set()
    for group in ksdata.excludedGroupList:
        grp = comps.group_by_pattern(group.name)
        if grp is None:
            warn.append(f"excluded group @{group.name} does not exist")
            continue
        excluded_from_groups |= group_names(grp, 2)
    names -= excluded_from_groups
    if missing:
        if ignoremissing:
            warn.extend(f"ignoring missing group {m} (--ignoremissing)" for m in missing)
        else:
            raise PackageError(
                f"group not found in the repositories: {', '.join(missing)}",
                hint="check the name in comps, or use %packages --ignoremissing",
            )
    return names


@dataclass
class _Session:
    """The dnf state of one lock worker: ``metadata`` loads it, ``resolve`` uses it."""

    base: Any
    tmp: tempfile.TemporaryDirectory[str]
    handler: Any


_SESSION: dict[str, _Session] = {}


def _session(job: Job) -> _Session:
    from ksbake.kickstart import parse_fragment

    if job.layer in _SESSION:
        return _SESSION[job.layer]
    inputs = job.inputs
    handler = parse_fragment(inputs["ks"], inputs["syntax"])
    ksdata = handler.packages
    settings = inputs["settings"]
    paths = job.workspace()
    tmp = tempfile.TemporaryDirectory(prefix="ksbake-lock-")
    root = Path(tmp.name) / "root"
    root.mkdir()
    base = make_base(
        installroot=root,
        cachedir=paths.dnf_cache,
        persistdir=Path(tmp.name) / "persist",
        logdir=Path(tmp.name) / "log",
        releasever=settings["releasever"],
        basearch=settings["basearch"],
        repos=repo_specs(handler, settings.get("mirrors", {}), bundled(paths)),
        excludepkgs=list(ksdata.excludedList),
        install_weak_deps=not ksdata.excludeWeakdeps,
    )
    _SESSION[job.layer] = _Session(base, tmp, handler)
    return _SESSION[job.layer]


def metadata(job: Job) -> dict[str, Any]:
    """The layer's ``discover``: load every repository's metadata (once, in this worker) and
    return what goes into the key besides the kickstart: the repositories as dnf sees them and
    a checksum of each one's metadata, so that a nightly re-lock notices an updated repo."""
    session = _session(job)
    settings = job.inputs["settings"]
    repos = repo_specs(session.handler, settings.get("mirrors", {}), bundled(job.workspace()))
    print(f"Loading metadata of {len(repos)} repositories", flush=True)
    load_metadata(session.base)
    return {
        "repos": [
            spec.__dict__
            | {
                "baseurl": list(spec.baseurl),
                "includepkgs": list(spec.includepkgs),
                "excludepkgs": list(spec.excludepkgs),
            }
            for spec in repos
        ],
        "metadata": metadata_digests(session.base),
    }


def resolve(job: Job) -> dict[str, Any]:
    """The layer's build (in the worker that ran ``metadata``): depsolve, write lock.json."""
    import dnf.exceptions

    session = _session(job)
    ksdata = session.handler.packages
    settings = job.inputs["settings"]
    warnings: list[str] = []
    where = job.inputs.get("where", {}).get("packages")
    try:
        lock = _depsolve(session.base, ksdata, list(ksdata.excludedList), warnings)
    except dnf.exceptions.Error as exc:
        raise located(PackageError(f"dnf: {exc}"), where) from None
    except PackageError as exc:  # a package or group of %packages: say where it is asked for
        raise located(exc, where) from None
    lock |= {
        "format": LOCK_FORMAT,
        "releasever": settings["releasever"],
        "basearch": settings["basearch"],
    }
    (job.stage / "lock.json").write_text(canonical_json(lock) + "\n")
    return {"warnings": warnings}


def _depsolve(base: Any, ksdata: Any, excluded: list[str], warnings: list[str]) -> dict[str, Any]:
    """Mark the requested packages, resolve, and describe the transaction as a lock."""
    import dnf.exceptions

    base.read_comps(arch_filter=True)
    from pykickstart.constants import KS_MISSING_IGNORE

    ignoremissing = ksdata.handleMissing == KS_MISSING_IGNORE
    names = _select_groups(base, ksdata, ignoremissing, warnings)
    names = {n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in excluded)}
    explicit = list(ksdata.packageList)
    missing: list[str] = []
    for spec in sorted(names) + explicit:
        try:
            base.install(spec, strict=True)
        except dnf.exceptions.MarkingError:
            if spec in names and spec not in explicit:
                warnings.append(f"group member '{spec}' is not available; skipped")
            else:
                missing.append(spec)
    if missing:
        if ignoremissing:
            warnings.extend(f"ignoring missing package '{m}' (--ignoremissing)" for m in missing)
        else:
            raise PackageError(
                f"package not found in the repositories: {', '.join(missing)}",
                hint="check the name and the repositories, or use %packages --ignoremissing",
            )
    try:
        base.resolve(allow_erasing=False)
    except dnf.exceptions.DepsolveError as exc:
        raise PackageError(f"dependencies cannot be resolved: {exc}") from None
    packages = []
    for pkg in base.transaction.install_set:
        kind, digest = pkg.returnIdSum()
        if kind != "sha256":
            raise PackageError(f"{pkg}: repository gives a {kind} checksum; ksbake needs sha256")
        packages.append(
            {
                "name": pkg.name,
                "epoch": pkg.epoch,
                "version": pkg.version,
                "release": pkg.release,
                "arch": pkg.arch,
                "repo": pkg.reponame,
                "sha256": digest,
            }
        )
    packages.sort(key=lambda p: (p["name"], p["arch"], p["epoch"], p["version"], p["release"]))
    return {
        "install": {
            "excludedocs": bool(ksdata.excludeDocs),
            "instlangs": ksdata.instLangs if ksdata.instLangs is not None else None,
        },
        "packages": packages,
    }


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable changes between two locks ("rootfiles 9.0-1 -> 9.0-2")."""

    def evr(p: dict[str, Any]) -> str:
        return (f"{p['epoch']}:" if p["epoch"] else "") + f"{p['version']}-{p['release']}"

    before = {(p["name"], p["arch"]): p for p in old.get("packages", [])}
    after = {(p["name"], p["arch"]): p for p in new.get("packages", [])}
    lines = []
    for k in sorted(before.keys() | after.keys()):
        a, b = before.get(k), after.get(k)
        if b is None:
            assert a is not None
            lines.append(f"- {k[0]} {evr(a)}")
        elif a is None:
            lines.append(f"+ {k[0]} {evr(b)} ({b['repo']})")
        elif a != b:
            lines.append(f"~ {k[0]} {evr(a)} ({a['repo']}) -> {evr(b)} ({b['repo']})")
    return lines


def print_changes(name: str, old_text: str, new_text: str) -> None:
    """Say which packages moved when a re-lock changed the set (the layer's ``on_export``)."""
    print(f"lock:{name}: the package set changed:", flush=True)
    for line in diff(json.loads(old_text), json.loads(new_text)):
        print(f"  {line}", flush=True)


def metadata_unchanged(paths: Paths, name: str) -> bool:
    """doit ``uptodate`` check: False when a repository's metadata may have changed.

    Local (file://) repositories are checked by hashing their repomd.xml (cheap). Remote
    repositories are re-read only when asked (``KSBAKE_REFRESH=1``, e.g. nightly), so that a
    kickstart edit-build loop never waits on the network.
    """
    ref_file = paths.build_dir(name) / "lock.ref"
    if not ref_file.exists():
        return False
    ref = json.loads(ref_file.read_text())
    if os.environ.get("KSBAKE_REFRESH"):
        return False
    for info in ref.get("discovered", {}).get("metadata", {}).values():
        local = info.get("repomd")
        if local:
            try:
                if file_digest(local) != info["digest"]:
                    return False
            except OSError:
                return False
    return True
