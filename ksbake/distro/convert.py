"""A Debian binary package made into an RPM: files, metadata and Fedora-style scriptlets.

Generic: no spec is written by hand. The data archive is unpacked into a build root with
merged /usr applied (``/bin``, ``/sbin``, ``/lib*`` → ``/usr/…``, relative symlinks re-aimed),
every entry is listed in ``%files`` with its mode and owner (``%config(noreplace)`` for
conffiles, ``%doc`` for documentation, ``%lang`` for translations), and the control fields
become RPM dependencies: Depends/Pre-Depends → Requires (``a | b`` → ``(a or b)``, Debian's
version operators → RPM's, always with a release so ``>> 2.36`` still orders after
``2.36-9``), Provides, Conflicts/Breaks → Conflicts (Conflicts+Replaces → Obsoletes; a
package never conflicts with what it provides).

Debian's maintainer scripts assume dpkg and are not run (see repo/distro/README.md). What a
tree needs from them comes from what the package ships, as Fedora's macros write it:

- ``/usr/lib/sysusers.d/*.conf`` (and users a fixup declares) → ``%pre``: ``systemd-sysusers``
  with the file's lines (Fedora's ``%sysusers_create_compat``), so owners exist before files;
- ``/usr/lib/tmpfiles.d/*.conf`` → ``%post``: ``systemd-tmpfiles --create``;
- units with an ``[Install]`` section → ``%post``: ``systemctl preset`` on first install,
  ``%preun``: ``disable`` on removal (``%systemd_post``/``%systemd_preun``);
- ``update-alternatives --install`` in the postinst → the winning link shipped as a symlink;
- anything else a package needs (statoverrides, ucf-managed configs, file triggers, the
  kernel's initramfs) is a fixup in repo/distro/fixups.toml, written where the package needs it.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shlex
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksbake.bundledrepo import _dying_with_build, rpm_evr
from ksbake.distro.debian import Relation, Stanza, parse_stanzas
from ksbake.errors import BuildError
from ksbake.run import run

BASE = "base-files"  # owns the merged-/usr links
ACCOUNTS = "base-passwd"  # owns /etc/passwd and /etc/group
STATIC_ACCOUNTS = ("/usr/share/base-passwd/passwd.master", "/usr/share/base-passwd/group.master")
MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
RPM_OPS = {"<<": "<", "<": "<=", "<=": "<=", "=": "=", ">=": ">=", ">": ">=", ">>": ">"}
ARCH = {"all": "noarch", "amd64": "x86_64"}
DOC_DIRS = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/")
UNIT_DIR = "/usr/lib/systemd/system/"
SYSUSERS_DIR = "/usr/lib/sysusers.d/"
TMPFILES_DIR = "/usr/lib/tmpfiles.d/"
_ALTERNATIVE = re.compile(
    r"update-alternatives\s+--install\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)((?:\s+--slave\s+\S+\s+\S+\s+\S+)*)"
)


def merged_usr(path: str) -> str:
    """``/bin/ls`` → ``/usr/bin/ls`` (absolute paths; others unchanged)."""
    parts = path.split("/", 2)
    if len(parts) > 1 and parts[0] == "" and parts[1] in MERGED:
        return "/usr/" + "/".join(parts[1:])
    return path


def rpm_version(debian_version: str) -> str:
    """A Debian version as an RPM EVR for a dependency: ``[E:]V-R`` (always a release)."""
    epoch, version, release = rpm_evr(debian_version)
    return (f"{epoch}:" if epoch != "0" else "") + f"{version}-{release}"


def rpm_relation(rel: Relation) -> str:
    if rel.op is None or rel.version is None:
        return rel.name
    return f"{rel.name} {RPM_OPS[rel.op]} {rpm_version(rel.version)}"


def rpm_requirement(group: list[Relation]) -> str:
    """One Debian dependency group as one RPM dependency (rich when it has alternatives)."""
    names = [rpm_relation(r) for r in group]
    return names[0] if len(names) == 1 else "(" + " or ".join(names) + ")"


@dataclass
class Fixup:
    """What a package needs beyond what it ships (repo/distro/fixups.toml, one table each)."""

    copy: dict[str, str] = field(default_factory=dict)  # new path: path in the package
    symlinks: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)  # path: "mode user group"
    attrs: dict[str, str] = field(default_factory=dict)  # statoverride: "mode user group"
    files: dict[str, str] = field(default_factory=dict)  # path: content
    sysusers: str = ""
    provides: list[str] = field(default_factory=list)
    requires_pre: list[str] = field(default_factory=list)
    post: str = ""
    posttrans: str = ""
    filetriggers: dict[str, str] = field(default_factory=dict)  # path prefix: shell command
    shadow: bool = False  # write /etc/shadow and /etc/gshadow from /etc/passwd and /etc/group
    remove: list[str] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> Fixup:
        default = cls()
        for key, value in table.items():
            if key not in cls.__dataclass_fields__:
                known = ", ".join(sorted(cls.__dataclass_fields__))
                raise BuildError(f"{where}: unknown key {key} (known: {known})")
            want = type(getattr(default, key))
            if not isinstance(value, want):
                raise BuildError(f"{where}: {key} must be a {want.__name__}, got {value!r}")
        return cls(**table)


@dataclass
class Entry:
    path: str  # absolute, merged /usr
    kind: str  # f, d, l, h (hardlink)
    mode: int
    user: str
    group: str
    target: str = ""  # symlink target or hardlink source


@dataclass
class Converted:
    """One converted package: its name and the RPM written."""

    name: str
    rpm: Path


def read_control(deb: Path) -> tuple[Stanza, dict[str, bytes]]:
    """The control stanza and the control archive's members (conffiles, postinst, ...)."""
    out = run(["dpkg-deb", "--ctrl-tarfile", deb], what=f"reading {deb.name}").stdout
    members = {}
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = tar.extractfile(member)
                members[posixpath.basename(member.name)] = data.read() if data else b""
    stanza = next(iter(parse_stanzas(members["control"].decode())))
    return Stanza(stanza), members


def alternatives(postinst: str) -> list[tuple[str, str, str, int]]:
    """(link, master name, path, priority) of each ``update-alternatives --install`` with
    literal arguments; slaves carry their master's name."""
    found = []
    for m in _ALTERNATIVE.finditer(postinst.replace("\\\n", " ")):
        link, name, path, prio = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if "$" in link + name + path:
            continue
        found.append((link, name, path, prio))
        for slave in re.findall(r"--slave\s+(\S+)\s+(\S+)\s+(\S+)", m.group(5)):
            if "$" not in "".join(slave):
                found.append((slave[0], name, slave[2], prio))
    return found


def _member_path(name: str) -> str:
    """An archive member's absolute path: ``./usr/bin/x`` -> ``/usr/bin/x``, ``./`` -> ``/``
    (only the ``./`` prefix goes: ``./.profile`` keeps its dot)."""
    rel = name.removeprefix("./").strip("/")
    return "/" if rel in ("", ".") else "/" + rel


def _unpack(deb: Path, root: Path) -> list[Entry]:
    """Unpack the data archive into ``root`` with merged /usr; the entries, in archive order."""
    data = run(["dpkg-deb", "--fsys-tarfile", deb], what=f"unpacking {deb.name}").stdout
    entries: dict[str, Entry] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            orig = _member_path(m.name)
            if orig == "/":
                continue
            path = merged_usr(orig)
            dest = root / path.lstrip("/")
            if ".." in path.split("/") or not dest.parent.resolve().is_relative_to(root.resolve()):
                raise BuildError(f"{deb.name}: {m.name} points outside the package's tree")
            user, group = m.uname or str(m.uid), m.gname or str(m.gid)
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                entries.setdefault(path, Entry(path, "d", m.mode, user, group))
                continue
            if path in entries:
                raise BuildError(
                    f"{deb.name}: {orig} and another path are both {path} with merged /usr"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            if m.issym():
                target = m.linkname
                if not target.startswith("/"):  # re-aim from the merged location
                    absolute = merged_usr(
                        posixpath.normpath(posixpath.join(posixpath.dirname(orig), target))
                    )
                    target = posixpath.relpath(absolute, posixpath.dirname(path))
                os.symlink(target, dest)
                entries[path] = Entry(path, "l", 0o777, user, group, target)
            elif m.islnk():
                source = merged_usr(_member_path(m.linkname))
                os.link(root / source.lstrip("/"), dest)
                entries[path] = Entry(path, "h", m.mode, user, group, source)
            elif m.isfile():
                src = tar.extractfile(m)
                assert src is not None
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                entries[path] = Entry(path, "f", m.mode, user, group)
            else:
                raise BuildError(
                    f"{deb.name}: {orig} is a device or fifo; packages cannot ship those"
                )
    return list(entries.values())


def _quoted(path: str) -> str:
    if '"' in path or "\n" in path:
        raise BuildError(f"cannot list {path!r} in an RPM %files section")
    return '"' + path.replace("%", "%%") + '"'


def _files_line(e: Entry, conffiles: set[str]) -> str:
    mode = "-" if e.kind == "l" else f"{stat.S_IMODE(e.mode):04o}"
    tags = [f"%attr({mode},{e.user},{e.group})"]
    if e.kind == "d":
        tags.append("%dir")
    elif e.path in conffiles:
        tags.append("%config(noreplace)")
    if e.path.startswith(DOC_DIRS):
        tags.append("%doc")
    lang = re.match(r"/usr/share/locale/([^/]+)/", e.path)
    if lang and e.kind != "d":
        tags.append(f"%lang({lang.group(1)})")
    return " ".join(tags) + " " + _quoted(e.path)


def _has_install_section(unit: Path) -> bool:
    try:
        return re.search(r"^\[Install\]", unit.read_text(errors="replace"), re.M) is not None
    except OSError:
        return False


def _sysusers_user(line: str) -> list[str]:
    fields = shlex.split(line, comments=True)
    return [fields[1]] if len(fields) > 1 and fields[0] in ("u", "g", "m") else []


@dataclass
class Spec:
    """The pieces of a spec file, filled in by ``convert``."""

    header: list[str] = field(default_factory=list)
    scripts: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def script(self, section: str, text: str) -> None:
        self.scripts.setdefault(section, []).append(text.strip("\n"))

    def text(self, description: str) -> str:
        out = [*self.header, "", "%description", description, ""]
        for section, parts in self.scripts.items():
            out += [section, *parts, ""]
        out += ["%files", *self.files, ""]
        return "\n".join(out)


def convert(
    deb: Path,
    work: Path,
    rpmdir: Path,
    fixup: Fixup,
    winners: dict[str, tuple[str, str]],
    user_packages: dict[str, str],
    macros: dict[str, str],
) -> Converted:
    """Make ``deb`` into an RPM in ``rpmdir`` (scratch space in ``work``).

    ``winners``: link → (package, target) of every alternative the distribution resolved;
    ``user_packages``: user/group name → the package whose %pre creates it.
    """
    stanza, control = read_control(deb)
    name = stanza.name
    root = work / "root"
    root.mkdir(parents=True)
    entries = _unpack(deb, root)
    conffiles = {
        merged_usr(line.strip())
        for line in control.get("conffiles", b"").decode().splitlines()
        if line.strip().startswith("/")
    }
    by_path = {e.path: e for e in entries}

    def add(
        path: str, kind: str, mode: int, user: str = "root", group: str = "root", target: str = ""
    ) -> None:
        entry = Entry(path, kind, mode, user, group, target)
        if path in by_path:
            entries.remove(by_path[path])
        by_path[path] = entry
        entries.append(entry)
        parent = posixpath.dirname(path)
        (root / parent.lstrip("/")).mkdir(parents=True, exist_ok=True)

    for path in fixup.remove:
        if path in by_path:
            entries.remove(by_path.pop(path))
            doomed = root / path.lstrip("/")
            if doomed.is_dir() and not doomed.is_symlink():
                shutil.rmtree(doomed)
            else:
                doomed.unlink()
    for dest, src in {**fixup.copy}.items():
        add(dest, "f", 0o644)
        shutil.copyfile(root / src.lstrip("/"), root / dest.lstrip("/"))
        if dest.startswith("/etc/"):
            conffiles.add(dest)
    for dest, content in fixup.files.items():
        add(dest, "f", 0o755 if content.startswith("#!") else 0o644)
        (root / dest.lstrip("/")).write_text(content)
        if dest.startswith("/etc/"):
            conffiles.add(dest)
    if fixup.shadow:
        _write_shadow(root, add, conffiles)
    for link, target in {**fixup.symlinks}.items():
        add(link, "l", 0o777, target=target)
        (root / link.lstrip("/")).symlink_to(target)
    for link, (package, target) in sorted(winners.items()):
        if package == name and merged_usr(link) not in by_path:
            add(merged_usr(link), "l", 0o777, target=target)
            (root / merged_usr(link).lstrip("/")).symlink_to(target)
    for path, meta in fixup.dirs.items():
        mode, user, group = meta.split()
        add(path, "d", int(mode, 8), user, group)
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for path, meta in fixup.attrs.items():
        mode, user, group = meta.split()
        e = by_path.get(path)
        if e is None:
            raise BuildError(
                f"repo/distro/fixups.toml [{name}]: attrs names {path}, not in the package"
            )
        e.mode, e.user, e.group = int(mode, 8), user, group
    if fixup.sysusers:
        add(f"{SYSUSERS_DIR}ksbake-{name}.conf", "f", 0o644)
        (root / SYSUSERS_DIR.lstrip("/") / f"ksbake-{name}.conf").write_text(
            fixup.sysusers.strip() + "\n"
        )

    spec = Spec()
    epoch, version, release = rpm_evr(stanza.version)
    summary, _, long = stanza.fields.get("Description", name).partition("\n")
    spec.header += [
        f"Name: {name}",
        *([f"Epoch: {epoch}"] if epoch != "0" else []),
        f"Version: {version}",
        f"Release: {release}",
        f"Summary: {summary.strip() or name}",
        f"License: see /usr/share/doc/{name}/copyright",
        *([f"URL: {stanza.fields['Homepage']}"] if stanza.fields.get("Homepage") else []),
        f"BuildArch: {ARCH[stanza.fields['Architecture']]}",
        "AutoReqProv: no",
        f"Packager: converted from Debian {name} {stanza.version} by ksbake",
    ]
    provides = {name}
    for deps in stanza.relations("Provides"):
        for rel in deps:
            provides.add(rel.name)
            spec.header.append(f"Provides: {rpm_relation(rel)}")
    for path in sorted(by_path):  # what scripts name by the old paths
        if path.startswith(("/usr/bin/", "/usr/sbin/")) and by_path[path].kind != "d":
            old = "/sbin/" if path.startswith("/usr/sbin/") else "/bin/"
            spec.header.append(f"Provides: {old}{posixpath.basename(path)}")
    kver = next((p.split("vmlinuz-", 1)[1] for p in by_path if p.startswith("/boot/vmlinuz-")), "")
    for extra in fixup.provides:
        spec.header.append(f"Provides: {extra.replace('@KVER@', kver)}")
    for deps in stanza.relations("Pre-Depends", "Depends"):
        spec.header.append(f"Requires: {rpm_requirement(deps)}")
    replaces = {r.name for g in stanza.relations("Replaces") for r in g}
    for deps in stanza.relations("Conflicts", "Breaks"):
        for rel in deps:
            if rel.name in provides:
                continue  # Debian's "only one provider" idiom
            tag = "Obsoletes" if rel.name in replaces else "Conflicts"
            spec.header.append(f"{tag}: {rpm_relation(rel)}")
    pre_needs = set(fixup.requires_pre)
    if name not in (BASE, ACCOUNTS):  # the links of merged /usr are there before any file
        pre_needs.add(BASE)
    for e in entries:  # rpm resolves owners as it writes the files: the accounts come first
        for who in {e.user, e.group} - {"root"}:
            owner = user_packages.get(who, ACCOUNTS)
            if owner != name:
                pre_needs.add(owner)
    spec.header += [f"Requires(pre): {p}" for p in sorted(pre_needs)]

    _scriptlets(spec, name, root, by_path, fixup, deb)
    spec.files = [_files_line(e, conffiles) for e in sorted(entries, key=lambda e: e.path)]
    description = (long.replace("\n.", "\n") if long else summary).strip() or name
    spec_path = work / f"{name}.spec"
    spec_path.write_text(spec.text(description.replace("%", "%%")))
    _rpmbuild(spec_path, root, rpmdir, work, macros, name)
    rpm = rpmdir / f"{name}-{version}-{release}.{ARCH[stanza.fields['Architecture']]}.rpm"
    if not rpm.exists():
        raise BuildError(f"rpmbuild made no {rpm.name} for {deb.name}")
    return Converted(name, rpm)


def _write_shadow(root: Path, add: Any, conffiles: set[str]) -> None:
    """/etc/shadow and /etc/gshadow for the accounts in the package's /etc/passwd, /etc/group:
    every password locked (``*``), as Debian's update-passwd leaves them."""
    for db, shadow, width in (("passwd", "shadow", 9), ("group", "gshadow", 4)):
        rows = (root / "etc" / db).read_text().splitlines()
        lines = []
        for row in rows:
            user = row.split(":")[0]
            cols = [user, "*"] + ([""] * (width - 2))
            if width == 9:
                cols[3:6] = ["0", "99999", "7"]
            lines.append(":".join(cols))
        path = f"/etc/{shadow}"
        add(path, "f", 0o640)  # root:shadow in Debian, but that group comes with this file
        (root / path.lstrip("/")).write_text("\n".join(lines) + "\n")
        conffiles.add(path)


def _scriptlets(
    spec: Spec, name: str, root: Path, by_path: dict[str, Entry], fixup: Fixup, deb: Path
) -> None:
    """The Fedora-style scriptlets this package's content calls for (module docstring)."""
    is_systemd = name == "systemd"
    sysusers = sorted(p for p in by_path if p.startswith(SYSUSERS_DIR) and p.endswith(".conf"))
    tmpfiles = sorted(p for p in by_path if p.startswith(TMPFILES_DIR) and p.endswith(".conf"))
    units = sorted(
        posixpath.basename(p)
        for p, e in by_path.items()
        if p.startswith(UNIT_DIR)
        and p.count("/") == UNIT_DIR.count("/")
        and e.kind == "f"
        and not posixpath.basename(p).split(".")[0].endswith("@")
        and _has_install_section(root / p.lstrip("/"))
    )
    needs_systemd = (sysusers or tmpfiles or units) and not is_systemd
    if needs_systemd:
        spec.header += [
            "Requires(pre): systemd",
            "Requires(post): systemd",
            "Requires(preun): systemd",
        ]
    for path in sysusers:
        text = (root / path.lstrip("/")).read_text()
        if is_systemd:
            continue  # its own: run in %post, once the tool is there
        spec.script(
            "%pre",
            f"systemd-sysusers --replace={path} - <<'EOF' || :\n{text.rstrip()}\nEOF",
        )
    if is_systemd and sysusers:
        spec.script("%post", "systemd-sysusers || :")
    if tmpfiles:
        spec.script(
            "%post", "systemd-tmpfiles --create " + " ".join(tmpfiles) + " >/dev/null 2>&1 || :"
        )
    if units:
        names = " ".join(units)
        spec.script(
            "%post",
            f'if [ "$1" -eq 1 ]; then systemctl --no-reload preset {names} >/dev/null 2>&1; fi',
        )
        spec.script(
            "%preun",
            f'if [ "$1" -eq 0 ]; then systemctl --no-reload disable {names} >/dev/null 2>&1; fi',
        )
    if fixup.post:
        spec.script("%post", fixup.post)
    if fixup.posttrans:
        kver = next(
            (p.split("vmlinuz-", 1)[1] for p in by_path if p.startswith("/boot/vmlinuz-")), ""
        )
        spec.script("%posttrans", fixup.posttrans.replace("@KVER@", kver))
    for prefix, command in sorted(fixup.filetriggers.items()):
        spec.script(f"%transfiletriggerin -- {prefix}", command)
        spec.script(f"%transfiletriggerpostun -- {prefix}", command)


def _rpmbuild(
    spec: Path, buildroot: Path, rpmdir: Path, work: Path, macros: dict[str, str], name: str
) -> None:
    """rpmbuild -bb over the prepared build root (a spec without %install leaves it as is)."""
    defines = {**macros, "_topdir": str(work / "top"), "_rpmdir": str(rpmdir)}
    argv: list[str | Path] = [
        *_dying_with_build("rpmbuild"),
        "-bb",
        "--quiet",
        "--buildroot",
        buildroot,
    ]
    for key, value in defines.items():
        argv += ["--define", f"{key} {value}"]
    argv.append(spec)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(work),
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": macros["ksbake_epoch"],
    }
    run(argv, env=env, what=f"building the RPM of {name}")


def resolve_alternatives(postinsts: dict[str, str]) -> dict[str, tuple[str, str]]:
    """link → (package, target): of each alternative, the links of the package with the
    highest priority (ties: the first by name), as update-alternatives' automatic mode."""
    best: dict[str, tuple[int, str]] = {}  # master name: (priority, package)
    links: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for package in sorted(postinsts):
        for link, name, path, prio in alternatives(postinsts[package]):
            links.setdefault((name, package), []).append((link, path))
            if name not in best or prio > best[name][0]:
                best[name] = (prio, package)
    return {
        link: (package, path)
        for name, (_, package) in best.items()
        for link, path in links[(name, package)]
    }


def declared_users(deb: Path) -> list[str]:
    """User and group names the package creates: its sysusers.d files, or the static
    accounts if it is base-passwd."""
    data = run(["dpkg-deb", "--fsys-tarfile", deb], what=f"reading {deb.name}").stdout
    names: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            path = merged_usr(_member_path(m.name))
            if not m.isfile():
                continue
            if path.startswith(SYSUSERS_DIR) and path.endswith(".conf"):
                src = tar.extractfile(m)
                text = src.read().decode(errors="replace") if src else ""
                for line in text.splitlines():
                    names += _sysusers_user(line)
            elif path in STATIC_ACCOUNTS:  # base-passwd's masters: the static accounts
                src = tar.extractfile(m)
                text = src.read().decode(errors="replace") if src else ""
                names += [line.split(":")[0] for line in text.splitlines() if ":" in line]
    return names


def fixup_users(fixup: Fixup) -> list[str]:
    return [n for line in fixup.sysusers.splitlines() for n in _sysusers_user(line)]
