"""Debian's package metadata, read from apt's local lists: stanzas, relations, the closure.

The distribution is made of one Debian suite's versions (``bookworm``: a point release, so
every version is still on the mirror) plus, for its updates repository, newer builds from
the suites layered over it (``bookworm-security``, ``bookworm-updates``). apt's own resolver
answers for the host (installed packages, the newest candidate); reading the lists here
answers for an empty tree and one chosen suite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.run import run

LISTS = Path("/var/lib/apt/lists")
ARCHES = ("amd64", "all")

# one relation: name[:arch] [(op version)] [[arch list]] [<profiles>]
_RELATION = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9.+-]*)(?::(?P<arch>[a-z0-9-]+))?"
    r"(?:\s*\(\s*(?P<op><<|<=|=|>=|>>|<|>)\s*(?P<version>[^)\s]+)\s*\))?"
    r"(?P<rest>.*)$"
)


@dataclass(frozen=True)
class Relation:
    """One alternative of a dependency: a name and an optional version constraint."""

    name: str
    op: str | None = None  # Debian's <<, <=, =, >=, >>
    version: str | None = None


@dataclass
class Stanza:
    """One package of one suite's Packages list (the fields the converter reads)."""

    fields: dict[str, str]
    suite: str = ""

    @property
    def name(self) -> str:
        return self.fields["Package"]

    @property
    def version(self) -> str:
        return self.fields["Version"]

    def relations(self, *keys: str) -> list[list[Relation]]:
        groups: list[list[Relation]] = []
        for key in keys:
            groups += parse_relations(self.fields.get(key, ""), f"{self.name} {key}")
        return groups


def parse_stanzas(text: str) -> Iterable[dict[str, str]]:
    """deb822 paragraphs: ``Field: value`` with indented continuation lines."""
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line[1:]
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if "Package" in fields:
            yield fields


def parse_relations(text: str, where: str) -> list[list[Relation]]:
    """``a (>= 1) | b, c:any`` → [[a >= 1, b], [c]]; what cannot be translated is an error
    naming ``where`` (the package and field), never silently dropped."""
    groups = []
    for group in text.replace("\n", " ").split(","):
        if not group.strip():
            continue
        alternatives = []
        for alt in group.split("|"):
            match = _RELATION.match(alt.strip())
            rest = match.group("rest").strip() if match else ""
            if match is None or rest:
                raise BuildError(
                    f"{where}: cannot translate the dependency '{alt.strip()}' "
                    "(architecture or build-profile restrictions, or not a relation)",
                    hint="remove the package from repo/distro/packages.list or add a fixup",
                )
            arch = match.group("arch")
            if arch not in (None, "any", "native", "amd64"):
                raise BuildError(
                    f"{where}: cannot translate the dependency '{alt.strip()}' "
                    f"(on architecture {arch})",
                    hint="remove the package from repo/distro/packages.list",
                )
            alternatives.append(
                Relation(match.group("name"), match.group("op"), match.group("version"))
            )
        groups.append(alternatives)
    return groups


def _list_files(suite: str) -> list[Path]:
    files = []
    for arch in ARCHES:
        files += sorted(LISTS.glob(f"*_dists_{suite}_main_binary-{arch}_Packages*"))
    return files


def load_suite(suite: str) -> dict[str, Stanza]:
    """Every package of ``suite`` (main, amd64 + all) from apt's lists, by name."""
    files = _list_files(suite)
    if not files:
        raise ToolError(
            f"apt has no package list for the Debian suite {suite}",
            hint=f"add '{suite}' to the host's apt sources and run 'apt-get update'",
        )
    packages: dict[str, Stanza] = {}
    for path in files:
        text = run(
            ["/usr/lib/apt/apt-helper", "cat-file", path], what=f"reading {path.name}"
        ).stdout.decode()
        for fields in parse_stanzas(text):
            if fields.get("Architecture") in ARCHES:
                packages[fields["Package"]] = Stanza(fields, suite)
    return packages


@dataclass
class Index:
    """A suite's packages and who provides each virtual name."""

    packages: dict[str, Stanza]
    providers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in sorted(self.packages):
            for group in self.packages[name].relations("Provides"):
                for rel in group:
                    self.providers.setdefault(rel.name, []).append(name)


def closure(index: Index, wanted: list[str], prefer: dict[str, str]) -> list[str]:
    """The packages an empty tree needs for ``wanted``: every ``Essential: yes`` and
    ``Priority: required`` package (Debian never lists them as dependencies), then the
    Depends and Pre-Depends of each, transitively. Of ``a | b`` the first real package is
    taken unless one alternative is already in; a virtual name goes to the provider named
    in ``prefer``, else its first provider by name. Recommends are not followed."""
    pkgs = index.packages
    missing = [w for w in wanted if w not in pkgs]
    if missing:
        raise BuildError(
            f"repo/distro/packages.list: no package {', '.join(missing)} in Debian's lists",
            hint="check the name with 'apt-cache show NAME'",
        )
    base = [n for n, s in pkgs.items() if s.fields.get("Essential") == "yes"]
    base += [n for n, s in pkgs.items() if s.fields.get("Priority") == "required"]
    chosen: dict[str, None] = {}
    provided: set[str] = set()
    todo = sorted(set(wanted) | set(base))

    def add(name: str) -> None:
        if name not in chosen:
            chosen[name] = None
            provided.update(r.name for g in pkgs[name].relations("Provides") for r in g)
            todo.append(name)

    for name in list(todo):
        todo.remove(name)
        add(name)
    while todo:
        stanza = pkgs[todo.pop(0)]
        for group in stanza.relations("Pre-Depends", "Depends"):
            if any(r.name in chosen or r.name in provided for r in group):
                continue
            pick = next((r.name for r in group if r.name in pkgs), None)
            if pick is None:
                virtual = next((r.name for r in group if index.providers.get(r.name)), None)
                if virtual is None:
                    names = " | ".join(r.name for r in group)
                    raise BuildError(
                        f"{stanza.name} depends on {names}, which no Debian package provides"
                    )
                pick = prefer.get(virtual) or index.providers[virtual][0]
            add(pick)
    return sorted(chosen)
