"""The packages layer: install exactly the locked package set into a fresh root tree.

Key: the lock's content and the versions of the tools that write the tree (dnf, rpm) — not
the kickstart text, not the repository URLs. Two appliances that resolve to the same lock
share one installed tree; a nightly re-lock that resolves to the same set rebuilds nothing.

The rpm database goes to /usr/lib/sysimage/rpm, scriptlets run chrooted in the tree (rpm does
the chroot) with /proc and a minimal /dev mounted inside the worker's private mount
namespace, and downloaded packages are kept in the store's dnf cache, shared by appliances.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ksbake.errors import BuildError, PackageError
from ksbake.paths import Paths
from ksbake.runner import Job
from ksbake.treefs import MIN_EPOCH, clamp_times

log = logging.getLogger("ksbake")


class _Progress:
    """The rpm transaction's progress: on a terminal one line rewritten in place (count,
    rate, time left, package); in a log nothing per package (the layer's own lines say it)."""

    def __init__(self, total: int) -> None:
        import sys
        import time

        self.total = total
        self.done: set[str] = set()
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()

    def installing(self, name: str) -> None:
        import time

        if name in self.done:
            return
        self.done.add(name)
        if not self.tty:
            return
        n = len(self.done)
        rate = n / max(time.monotonic() - self.started, 1e-3)
        left = (self.total - n) / rate
        line = f"  [{n}/{self.total}] {rate:4.1f} pkg/s, {left:4.0f} s left  {name}"
        end = "\n" if n == self.total else ""
        print("\r" + line[:100].ljust(100), end=end, flush=True)


def install(job: Job) -> dict[str, Any]:
    """The layer's build (a worker in private namespaces): install the lock into ``tree``,
    downloading from the repositories the lock was resolved against."""
    import dnf
    import dnf.callback
    import dnf.exceptions
    import rpm

    from ksbake.chroot import api_filesystems
    from ksbake.layers.l2_lock import RepoSpec, load_metadata, make_base

    lock = json.loads(job.inputs["lock"])
    repos = job.inputs["lock_ref"]["discovered"]["repos"]
    root = job.stage / "tree"
    root.mkdir(parents=True, exist_ok=True)
    specs = [
        RepoSpec(
            **{
                **r,
                "baseurl": tuple(r["baseurl"]),
                "includepkgs": tuple(r["includepkgs"]),
                "excludepkgs": tuple(r["excludepkgs"]),
            }
        )
        for r in repos
    ]
    with tempfile.TemporaryDirectory(prefix="ksbake-pkgs-") as tmp:
        base = make_base(
            installroot=root,
            cachedir=job.workspace().dnf_cache,
            persistdir=Path(tmp) / "persist",  # dnf's history: per transaction, not content
            logdir=Path(tmp) / "log",
            releasever=lock["releasever"],
            basearch=lock["basearch"],
            repos=specs,
            install_weak_deps=False,
        )
        opts = lock["install"]
        if opts.get("excludedocs"):
            base.conf.tsflags = [*base.conf.tsflags, "nodocs"]
        if opts.get("instlangs") is not None:
            rpm.addMacro("_install_langs", opts["instlangs"] or "none")
        try:
            load_metadata(base)
            wanted = _mark_exact(base, lock["packages"])
            base.resolve(allow_erasing=False)
            got = {_nevra_of(p) for p in base.transaction.install_set}
            if got != wanted:
                extra = sorted(got - wanted)
                lacking = sorted(wanted - got)
                raise PackageError(
                    "the locked package set is not self-consistent: "
                    f"extra {extra[:5]}, missing {lacking[:5]}",
                    hint="re-lock: delete the lock object or change the kickstart",
                )
            pkgs = sorted(base.transaction.install_set, key=lambda p: p.name)
            size = sum(p.downloadsize for p in pkgs)
            print(
                f"Downloading {len(pkgs)} packages ({size / 2**20:.1f} MiB, cached ones reused)",
                flush=True,
            )
            base.download_packages(pkgs)
            progress = _Progress(len(pkgs))

            failures: list[str] = []
            output: list[str] = []

            class Display(dnf.callback.TransactionProgress):
                def progress(self, package, action, ti_done, ti_total, ts_done, ts_total):  # noqa: ANN001
                    if package is not None and action in (dnf.callback.PKG_INSTALL,):
                        progress.installing(str(package))

                def scriptout(self, msgs):  # noqa: ANN001
                    text = msgs.decode(errors="replace") if isinstance(msgs, bytes) else msgs
                    for line in (text or "").splitlines():
                        output.append(line)
                        print(f"    | {line}", flush=True)

                def error(self, message):  # noqa: ANN001
                    failures.append(str(message) + "".join(f"; {x.strip()}" for x in output[-2:]))
                    log.warning("rpm: %s", message)

            # rpm (>= 4.18) records INSTALLTIME/INSTALLTID from SOURCE_DATE_EPOCH when set:
            # the newest build time of the locked packages, so the rpmdb is the lock's too
            epoch = max([MIN_EPOCH, *(int(p.buildtime) for p in pkgs)])
            os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
            # scriptlets inherit this process' environment: nothing of the host's paths
            os.environ.update(TMPDIR="/tmp", HOME="/root", LANG="C.UTF-8")
            print(f"Installing {len(pkgs)} packages into the tree", flush=True)
            with api_filesystems(root):
                base.do_transaction(display=Display())
            if failures:
                raise PackageError(_failure_line(failures))
        except dnf.exceptions.DownloadError as exc:
            raise PackageError(f"package download failed: {exc}") from None
        except dnf.exceptions.TransactionCheckError as exc:
            raise PackageError(f"rpm transaction check failed: {exc}") from None
        except dnf.exceptions.Error as exc:
            if "Disk Requirements" in str(exc) or "No space left" in str(exc):
                raise PackageError(
                    f"no space left on device: installing into the store ({job.stage}) needs "
                    "more room than its filesystem has",
                    hint="free some space, or move the store with KSBAKE_STORE",
                ) from None
            raise PackageError(f"dnf: {exc}") from None
        finally:
            base.close()
    rpmdb = root / "usr/lib/sysimage/rpm"
    if not rpmdb.is_dir():
        raise BuildError(f"rpm database missing after install (expected {rpmdb})")
    settle_sqlite(rpmdb / "rpmdb.sqlite")
    clamp_times(root, epoch)
    return {"packages": len(lock["packages"]), "epoch": epoch}


def _failure_line(failures: list[str]) -> str:
    """One line for a transaction whose scriptlets or unpacking failed: rpm's own words
    ("Error in POSTIN scriptlet in rpm package NAME") with what the script printed last.
    A tree with a half-run scriptlet is not cached."""
    more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
    return f"rpm: {failures[0]}{more}"


def settle_sqlite(db: Path) -> None:
    """Fold sqlite's write-ahead log into the database and drop the -wal/-shm files: they hold
    transient state (and differ on every install), not content."""
    import sqlite3

    if not db.is_file():
        return
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _nevra(p: dict[str, Any]) -> str:
    return f"{p['name']}-{p['epoch']}:{p['version']}-{p['release']}.{p['arch']}"


def _nevra_of(pkg: Any) -> str:
    return f"{pkg.name}-{pkg.epoch}:{pkg.version}-{pkg.release}.{pkg.arch}"


def _mark_exact(base: Any, packages: list[dict[str, Any]]) -> set[str]:
    """Mark every locked package for install, requiring its exact NEVRA, repo and sha256."""
    wanted = set()
    for p in packages:
        query = (
            base.sack.query()
            .available()
            .filter(
                name=p["name"],
                epoch=p["epoch"],
                version=p["version"],
                release=p["release"],
                arch=p["arch"],
                reponame=p["repo"],
            )
        )
        matches = [pkg for pkg in query if pkg.returnIdSum() == ("sha256", p["sha256"])]
        if not matches:
            raise PackageError(
                f"locked package {_nevra(p)} (repo {p['repo']}) is no longer in the repositories "
                "with the locked checksum",
                hint="the repository changed under the lock; rebuild to re-lock",
            )
        base.package_install(matches[0], strict=True)
        wanted.add(_nevra(p))
    return wanted


def tree_path(paths: Paths, key: str) -> Path:
    return paths.store / "objects" / "packages" / key / "tree"
