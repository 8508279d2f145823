"""Kickstarts: read a .ks and its %include tree into one parsed model (used by the kickstart
layer, and by the lock and config layers to re-parse their own fragments).

Why this module exists instead of calling ``KickstartParser.readKickstart``:

* pykickstart reports a bare line number and never says which ``%include``d file it is
  in. We flatten the include tree ourselves into one text plus a line map
  (flattened line -> file, line), parse that text with ``readKickstartFromString`` and
  translate every error and warning back to ``file:line``.
* A section left open at the end of an included file silently swallows the rest of the
  including file in pykickstart. We track sections while flattening and refuse that
  (or, in compat mode, close the section with a warning).
* Real 2008-2014 kickstarts use syntax current pykickstart rejects. The rules in
  ``compat.py`` find those constructs in the flattened lines; strict mode names the first
  one with its fix, compat mode rewrites them the way appliance-creator treated them.
* Later layers hash only their own inputs, so each gets one canonical text built from
  pykickstart's ``str()`` of the relevant objects (never raw file text): reformatting the
  kickstart changes no key. The texts are valid kickstart at the same syntax, so a layer
  may re-parse its own text.

``%include`` and local ``%ksappend`` paths resolve against the including file (never the
current directory), so a build does not depend on where it is started from.
"""

from __future__ import annotations

import errno
import re
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pykickstart import version as ksversion
from pykickstart.base import BaseHandler
from pykickstart.constants import KS_SCRIPT_POST
from pykickstart.errors import KickstartError as PykickstartError
from pykickstart.errors import KickstartWarning
from pykickstart.parser import KickstartParser, Packages, Script
from pykickstart.sections import PackageSection

from ksbake.errors import ConfigError, KickstartError
from ksbake.kickstart.compat import Legacy
from ksbake.paths import read_bounded

DEFAULT_SYNTAX = "F40"
"""Kickstart syntax version used unless the appliance settings pin another one."""

SECTION_HEADERS: tuple[str, ...] = (
    "%pre",
    "%pre-install",
    "%post",
    "%onerror",
    "%traceback",
    "%packages",
    "%addon",
    "%anaconda",
    "%certificate",
)
"""Sections pykickstart's parser registers; a line starting with one opens a section."""

REPO_COMMANDS: tuple[str, ...] = (
    "url",
    "repo",
    "cdrom",
    "harddrive",
    "nfs",
    "hmc",
    "liveimg",
    "ostreesetup",
    "ostreecontainer",
    "module",
)
"""Install sources (and module streams): what the depsolve layer resolves against."""

SYSTEM_COMMANDS: tuple[str, ...] = (
    "lang",
    "keyboard",
    "timezone",
    "timesource",
    "rootpw",
    "user",
    "group",
    "sshkey",
    "services",
    "selinux",
    "firewall",
    "network",
    "authselect",
    "firstboot",
    "xconfig",
    "skipx",
)
"""System settings the config layer writes into the tree (network carries the hostname;
firstboot, xconfig and skipx decide initial-setup and the default systemd target)."""

PARTITION_COMMANDS: tuple[str, ...] = (
    "clearpart",
    "zerombr",
    "ignoredisk",
    "reqpart",
    "autopart",
    "part",
    "volgroup",
    "logvol",
    "raid",
    "btrfs",
)
"""Disk layout: what the disks layer reads (``partition`` is the same object as ``part``)."""

BOOTLOADER_COMMANDS: tuple[str, ...] = ("bootloader",)

SECTION_NAMES: tuple[str, ...] = (
    "repos",
    "packages",
    "system",
    "post",
    "partitions",
    "bootloader",
)
"""Keys of ``Kickstart.sections``, one canonical text per downstream layer input."""

_EMPTY_PACKAGE_ENTRIES = frozenset({"-", "@", "-@", "@^", "-@^"})
_SECRET_OPTIONS = ("--password", "--md5pass", "--pass", "--plaintext", "--passphrase")
_ON_LINE = re.compile(r"\s*(?:on|at) line (\d+)")


class Location(NamedTuple):
    """Where a flattened line came from; unpacks as ``(path, line)``."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, eq=False)
class Kickstart:
    """A parsed kickstart with everything later layers need to key and locate things."""

    path: Path
    """The kickstart file, resolved."""
    syntax: str
    """The pykickstart syntax version it was parsed with (e.g. "F40")."""
    compat: bool
    files: tuple[Path, ...]
    """Every file read (the kickstart, every %include/%ksappend), resolved, in read order."""
    handler: BaseHandler
    warnings: tuple[str, ...]
    """Each "file:line: message": pykickstart deprecations and compat rewrites."""
    sections: dict[str, str]
    """Canonical text per downstream input; keys are SECTION_NAMES."""
    text: str
    """The flattened (and, in compat mode, rewritten) text pykickstart parsed."""
    line_map: tuple[Location, ...]
    """line_map[n - 1] is the origin of flattened line n."""
    pending: tuple[str, ...] = ()
    """``before_pre``: the ``%include /tmp/...`` files skipped (a %pre would write them)."""

    def line_of(self, where: int | Any) -> Location:
        """Map a flattened line number, or a pykickstart object with ``.lineno``, to its
        file and line, so a later layer can say ``file:line`` about e.g. a ``part``."""
        lineno = where if isinstance(where, int) else getattr(where, "lineno", None)
        if not isinstance(lineno, int):
            raise ValueError(f"{where!r} carries no line number")
        return locate(self.line_map, lineno)

    def error(self, where: int | Any, message: str, hint: str | None = None) -> KickstartError:
        """A KickstartError located at a flattened line or pykickstart object."""
        loc = self.line_of(where)
        return KickstartError(str(loc.path), loc.line, message, hint)


def locate(line_map: tuple[Location, ...] | list[Location], lineno: int) -> Location:
    """Origin of flattened line ``lineno`` (1-based); out-of-range numbers are clamped so an
    end-of-text error still names the last file read."""
    if not line_map:
        raise ValueError("empty line map")
    return line_map[min(max(lineno, 1), len(line_map)) - 1]


def load(
    path: Path,
    *,
    version: str = DEFAULT_SYNTAX,
    compat: bool = False,
    pre_tmp: Path | None = None,
    before_pre: bool = False,
) -> Kickstart:
    """Read ``path`` and its %include tree, check or rewrite legacy syntax, parse with
    pykickstart at syntax ``version``, and build the canonical section texts.

    ``pre_tmp``: the directory a %pre script's /tmp was (``%include /tmp/x`` reads
    ``pre_tmp/x``). ``before_pre``: the first pass, made to find the %pre scripts: an
    ``%include /tmp/...`` that does not exist yet (a %pre writes it) is skipped.

    Raises KickstartError (located by file:line) for anything wrong in the kickstart and
    ConfigError for an unknown syntax version.
    """
    syntax, number = _syntax(version)
    main = Path(path).resolve()
    flat = _Flattener(number, syntax, compat)
    flat.pre_tmp, flat.before_pre = pre_tmp, before_pre
    flat.read_main(main)
    text = "".join(line.text + "\n" for line in flat.lines)
    line_map = tuple(line.where for line in flat.lines)

    handler = ksversion.makeVersion(number)
    parse_warnings: list[tuple[int | None, str]] = []
    parser = _Parser(handler, lambda lineno, msg: parse_warnings.append((lineno, msg)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parser.readKickstartFromString(text)
        for w in caught:
            if issubclass(w.category, KickstartWarning):
                parse_warnings.append((None, str(w.message)))
    except PykickstartError as exc:
        error = _translate_error(exc, line_map, flat, syntax)
        violation = flat.first_violation
        if violation is not None and (error.line is None or violation[0] <= _flat_line(exc)):
            raise violation[1] from None
        raise error from None
    except ValueError as exc:  # pykickstart lets some of these out (shlex, conversions)
        where = locate(line_map, parser.last_lineno) if parser.last_lineno else None
        raise KickstartError(
            str(where.path if where else main),
            where.line if where else None,
            f"pykickstart could not parse this: {exc}",
            f"checked against kickstart syntax {syntax}",
        ) from None
    if flat.first_violation is not None:
        raise flat.first_violation[1]

    all_warnings = list(flat.warnings)
    for lineno, msg in parse_warnings:
        all_warnings.append(_locate_warning(msg, lineno, line_map, main))
    return Kickstart(
        path=main,
        syntax=syntax,
        compat=compat,
        files=tuple(flat.files),
        handler=handler,
        warnings=tuple(all_warnings),
        sections=canonical_sections(handler),
        text=text,
        line_map=line_map,
        pending=tuple(flat.pending),
    )


def canonical_sections(handler: BaseHandler) -> dict[str, str]:
    """One text per downstream input, from pykickstart's normalising ``str()``.

    Option order, ``--opt=v`` vs ``--opt v``, whitespace and comments do not change it; a
    command the kickstart does not use contributes just its marker line, so its absence is
    stable too. Contains the root password hash: hash it, never print it.
    """
    # str() of scripts and %packages depends on these class attributes, which every
    # KickstartParser() overwrites; pin them to this handler's version.
    Script._ver = handler.version
    Packages._ver = handler.version
    posts = [s for s in handler.scripts if s.type == KS_SCRIPT_POST]
    return {
        "repos": _commands_text(handler, REPO_COMMANDS),
        "packages": str(handler.packages),
        "system": _commands_text(handler, SYSTEM_COMMANDS),
        "post": "".join(str(script) for script in posts),
        "partitions": _commands_text(handler, PARTITION_COMMANDS),
        "bootloader": _commands_text(handler, BOOTLOADER_COMMANDS),
    }


def parse_fragment(text: str, syntax: str) -> BaseHandler:
    """Parse a canonical section text (a layer's input) back into a handler.

    The text comes from ``canonical_sections`` of an already validated kickstart, so it
    has no %include and parses at the same syntax version.
    """
    handler = ksversion.makeVersion(_syntax(syntax)[1])
    parser = KickstartParser(handler, followIncludes=False)
    parser.registerSection(_PackageSection(handler))  # linear %packages here too
    parser.readKickstartFromString(text)
    return handler


def _commands_text(handler: BaseHandler, names: tuple[str, ...]) -> str:
    chunks: list[str] = []
    done: set[int] = set()
    for name in names:
        cmd = handler.commands.get(name)
        if cmd is None or id(cmd) in done:
            continue
        done.add(id(cmd))
        body = str(cmd).strip("\n") if getattr(cmd, "seen", False) else ""
        chunks.append(f"## {name}\n{body}\n" if body else f"## {name}\n")
    return "".join(chunks)


def _syntax(version: str) -> tuple[str, int]:
    """Validate a syntax version name; returns (canonical name, pykickstart number)."""
    try:
        number = ksversion.stringToVersion(version)
    except PykickstartError:
        known = sorted(ksversion.versionMap, key=lambda v: ksversion.versionMap[v])
        fedora = [v for v in known if v.startswith("F") and v != DEFAULT_SYNTAX][-4:]
        rhel = [v for v in known if v.startswith("RHEL")][-3:]
        raise ConfigError(
            f"unknown kickstart syntax version {version!r}",
            f"use {DEFAULT_SYNTAX} (the default) or another pykickstart version name such as "
            f"{', '.join(fedora + rhel)} or DEVEL",
        ) from None
    return ksversion.versionToString(number), number


class _PackageSection(PackageSection):
    """pykickstart's %packages, in linear time: its ``handleLine`` rebuilds and re-sorts the
    whole package list for every line (20k lines took a minute). Runs of package and
    ``-package`` lines update two sets instead, written back sorted once; groups and the
    environment go through pykickstart as before. The result is the same for any order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sets: tuple[set[str], set[str]] | None = None

    def handleLine(self, line: str) -> None:  # noqa: N802 (pykickstart API)
        entry = line.partition("#")[0].strip()
        if not self.handler or not entry or entry.startswith(("@", "-@")):
            self._flush()
            super().handleLine(line)
            return
        if self._sets is None:
            pkgs = self.handler.packages
            self._sets = (set(pkgs.packageList), set(pkgs.excludedList))
        packages, excluded = self._sets  # kept apart, as pykickstart's add() keeps them
        if entry.startswith("-"):
            packages.discard(entry[1:])
            excluded.add(entry[1:])
        else:
            packages.add(entry)
            excluded.discard(entry)

    def _flush(self) -> None:
        if self._sets is not None:
            self.handler.packages.packageList = sorted(self._sets[0])
            self.handler.packages.excludedList = sorted(self._sets[1])
            self._sets = None

    def finalize(self) -> None:
        self._flush()
        super().finalize()


class _Parser(KickstartParser):
    """KickstartParser that attributes warnings raised by a command to that command's line
    (pykickstart's own messages rarely say which line) and remembers the last command line."""

    def __init__(self, handler: BaseHandler, on_warning: Callable[[int, str], None]) -> None:
        super().__init__(handler)
        self.on_warning = on_warning
        self.last_lineno = 0

    def setupSections(self) -> None:  # noqa: N802 (pykickstart API)
        super().setupSections()
        self.registerSection(_PackageSection(self.handler))

    def handleCommand(self, lineno: int, args: list[str]) -> Any:  # noqa: N802 (pykickstart API)
        self.last_lineno = lineno
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return super().handleCommand(lineno, args)
            finally:
                for w in caught:
                    if issubclass(w.category, KickstartWarning):
                        self.on_warning(lineno, str(w.message))


def _flat_line(exc: PykickstartError) -> int:
    return exc.lineno if isinstance(exc.lineno, int) and exc.lineno > 0 else 0


def _translate_error(
    exc: PykickstartError, line_map: tuple[Location, ...], flat: _Flattener, syntax: str
) -> KickstartError:
    message = " ".join(str(exc.message or "").split()) or "syntax error"
    lineno = _flat_line(exc)
    hint = f"checked against kickstart syntax {syntax}"
    if not lineno or not line_map:
        return KickstartError(str(flat.main), None, message, hint)
    loc = locate(line_map, lineno)
    if not _quotable(loc.path, flat.main):
        return KickstartError(
            str(loc.path),
            loc.line,
            "not kickstart syntax (the line is not shown: it comes from a file outside the "
            "kickstart's directory)",
            "check what this %include reads",
        )
    message = _redact(message, flat.lines[min(lineno, len(flat.lines)) - 1].text)
    return KickstartError(str(loc.path), loc.line, message, hint)


def _quotable(path: Path, main: Path) -> bool:
    """Errors may quote the kickstart's own files (beside it, or below), never another file
    an %include happened to read (``%include /etc/shadow`` must not print the shadow file)."""
    top = main.resolve().parent
    return path.resolve() == main.resolve() or top in path.resolve().parents


def _locate_warning(
    message: str, lineno: int | None, line_map: tuple[Location, ...], main: Path
) -> str:
    text = " ".join(message.split())
    match = _ON_LINE.search(text)
    if match:
        lineno = int(match.group(1))
        text = text[: match.start()] + text[match.end() :]
    if lineno and line_map:
        return f"{locate(line_map, lineno)}: {text}"
    return f"{main}: {text}"


def _redact(message: str, line: str) -> str:
    """Keep passwords from rootpw/sshpw/user lines out of error messages."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return message
    secrets: list[str] = []
    if tokens and tokens[0] in ("rootpw", "sshpw"):
        secrets += [t for t in tokens[1:] if not t.startswith("-")]
    for i, tok in enumerate(tokens):
        for opt in _SECRET_OPTIONS:
            if tok.startswith(opt + "="):
                secrets.append(tok.split("=", 1)[1])
            elif tok == opt and i + 1 < len(tokens):
                secrets.append(tokens[i + 1])
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


# --- flattening and the legacy text pass ----------------------------------------------


@dataclass(frozen=True)
class _Line:
    text: str
    where: Location


@dataclass(frozen=True)
class _Open:
    """A section being read: its header and which file read (``owner``) opened it."""

    name: str
    where: Location
    owner: int


class _Flattener:
    """Inline %include/%ksappend, track sections, and check or rewrite legacy syntax.

    One output line per input line (a dropped command becomes an empty line), plus a
    synthetic ``%end`` wherever compat mode closes a section; each carries its origin.
    """

    def __init__(self, version: int, syntax: str, compat: bool) -> None:
        self.version = version
        self.syntax = syntax
        self.compat = compat
        self.main = Path()
        self.lines: list[_Line] = []
        self.files: list[Path] = []
        self.warnings: list[str] = []
        self.first_violation: tuple[int, KickstartError] | None = None
        self._section: _Open | None = None
        self._stack: list[Path] = []
        self._reads = 0
        self._current = 0
        self.legacy = Legacy(version, syntax, self._rewrite)
        self.pre_tmp: Path | None = None
        self.before_pre = False
        self.pending: list[str] = []

    # reading files

    def read_main(self, path: Path) -> None:
        self.main = path
        try:
            text = _read_text(path)
        except OSError as exc:
            raise KickstartError(
                str(path), None, f"cannot read the kickstart: {exc.strerror or exc}"
            ) from None
        self._read(path, text)
        if self._section is not None:
            self._unterminated_at_eof(self._section)

    def _read(self, path: Path, text: str) -> None:
        self._reads += 1
        outer, self._current = self._current, self._reads
        self._stack.append(path)
        if path not in self.files:
            self.files.append(path)
        for number, raw in enumerate(text.splitlines(), 1):
            self._line(raw, Location(path, number))
        self._stack.pop()
        self._current = outer

    def _include(self, kind: str, tokens: list[str], where: Location) -> None:
        if len(tokens) < 2 or not tokens[1]:
            raise KickstartError(str(where.path), where.line, f"{kind} needs a file name")
        name = tokens[1]
        if kind == "%ksappend" and "://" in name:
            raise KickstartError(
                str(where.path),
                where.line,
                f"'%ksappend {name}': remote files are not supported",
                "download it next to the kickstart and %include the copy",
            )
        target = Path(name)
        if not target.is_absolute():
            target = where.path.parent / target
        if name.startswith("/tmp/") and (self.before_pre or self.pre_tmp is not None):
            if self.pre_tmp is None or not (self.pre_tmp / name[5:]).is_file():
                if self.before_pre:
                    self.pending.append(name)
                    return  # written by a %pre that has not run yet
            else:
                target = self.pre_tmp / name[5:]
                if not target.resolve().is_relative_to(self.pre_tmp.resolve()):
                    raise KickstartError(
                        str(where.path), where.line, f"{kind} {name}: leaves %pre's /tmp"
                    )
        target = target.resolve()
        if target in self._stack:
            chain = " -> ".join(p.name for p in [*self._stack, target])
            raise KickstartError(
                str(where.path),
                where.line,
                f"{kind} cycle: {chain}",
                "remove one of the %include lines",
            )
        if target.exists() and not target.is_file():
            raise KickstartError(
                str(where.path), where.line, f"{kind} {name}: {target} is not a file"
            )
        if not target.is_file():
            hint = "create the file or remove the line"
            if name.startswith(("/tmp/", "/run/")):
                hint = (
                    "it is probably written by a %pre script at install time, and no %pre "
                    "wrote it: check the %pre script (ksbake runs it before partitioning, "
                    "with its own /tmp), or put the content in a file next to the kickstart"
                )
            raise KickstartError(
                str(where.path), where.line, f"{kind} {name}: {target} does not exist", hint
            )
        try:
            text = _read_text(target)
        except OSError as exc:
            raise KickstartError(
                str(where.path),
                where.line,
                f"{kind} {name}: cannot read {target}: {exc.strerror or exc}",
            ) from None
        before = self._section
        token = self._reads + 1
        self._read(target, text)
        after = self._section
        opened_inside = after is not None and after is not before and after.owner >= token
        if kind == "%include" and after is not None and opened_inside:
            self._unterminated_include(after, target)

    # one line

    def _line(self, raw: str, where: Location) -> None:
        stripped = raw.strip()
        if stripped.startswith(("%include", "%ksappend")):
            tokens = self._split(raw, where)
            if tokens and tokens[0] in ("%include", "%ksappend"):
                self._include(tokens[0], tokens, where)
                return
        if self._section is None:
            self._command_line(raw, where)
            return
        if stripped.startswith("%"):
            first = stripped.split()[0]
            if first == "%end":
                self._split(raw, where)
                self._section = None
                self._emit(raw, where)
                return
            if first in SECTION_HEADERS:
                self._unterminated_before(self._section, where)
                self._command_line(raw, where)
                return
        if self._section.name == "%packages":
            entry = raw.partition("#")[0].strip()
            if entry in _EMPTY_PACKAGE_ENTRIES:  # pykickstart crashes (IndexError) on "-"
                raise KickstartError(
                    str(where.path),
                    where.line,
                    f"'{entry}' in %packages names no package or group",
                    "write the name right after it, e.g. -kudzu or @core",
                )
        self._emit(raw, where)

    def _command_line(self, raw: str, where: Location) -> None:
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            self._emit(raw, where)
            return
        tokens = self._split(raw, where)
        if not tokens:
            self._emit(raw, where)
            return
        head = tokens[0]
        if head.startswith("%"):
            if head in SECTION_HEADERS:
                self._section = _Open(head, where, self._current)
                if head == "%packages":
                    raw = self.legacy.options(tokens, raw, where, head)
            self._emit(raw, where)
            return
        raw = self.legacy.command(tokens, raw, where)
        self._emit(raw, where)

    def _emit(self, text: str, where: Location) -> None:
        self.lines.append(_Line(text, where))

    def _split(self, raw: str, where: Location) -> list[str]:
        try:
            return shlex.split(raw, comments=True)
        except ValueError as exc:
            raise KickstartError(
                str(where.path), where.line, f"cannot split this line: {exc}", "check the quotes"
            ) from None

    # legacy constructs

    def _violation(self, where: Location, message: str, fix: str) -> None:
        """Strict mode: remember the first legacy construct (raised after parsing, unless
        pykickstart fails on an earlier line); compat mode never gets here."""
        if self.first_violation is None:
            error = KickstartError(
                str(where.path), where.line, message, f"{fix}, or build with compat = true"
            )
            self.first_violation = (len(self.lines) + 1, error)

    def _rewrite(self, where: Location, message: str, fix: str, done: str) -> None:
        if self.compat:
            self.warnings.append(f"{where}: {message}; {done} (compat)")
        else:
            self._violation(where, message, fix)

    # sections left open

    def _unterminated_before(self, section: _Open, where: Location) -> None:
        """A new section header while ``section`` is still open (sections without %end)."""
        at = f"line {where.line}" if where.path == section.where.path else str(where)
        self._close_legacy(
            section,
            f"section {section.name} opened here has no %end (the next section starts at {at})",
        )

    def _unterminated_at_eof(self, section: _Open) -> None:
        self._close_legacy(
            section,
            f"section {section.name} opened here has no %end before the end of the kickstart",
        )

    def _close_legacy(self, section: _Open, message: str) -> None:
        self._section = None
        if self.version < ksversion.F8:  # %end was optional before F8
            self._emit("%end", section.where)
            return
        self._rewrite(
            section.where, message, "add %end after the last line of the section", "closed it there"
        )
        self._emit("%end", section.where)

    def _unterminated_include(self, section: _Open, target: Path) -> None:
        """The trap: pykickstart would swallow the rest of the including file."""
        self._section = None
        self._rewrite(
            section.where,
            f"section {section.name} opened here is not closed with %end before the end of "
            "this included file; pykickstart would swallow the rest of the including file "
            "into it",
            "add %end",
            f"closed it at the end of {target.name}",
        )
        self._emit("%end", section.where)


KERNEL_TREES = ("/proc", "/sys", "/dev")


def _read_text(path: Path) -> str:
    resolved = str(path.resolve())
    if any(resolved == t or resolved.startswith(t + "/") for t in KERNEL_TREES):
        raise OSError(errno.EINVAL, f"{resolved} is a kernel interface, not a kickstart")
    data = read_bounded(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KickstartError(
            str(path), line, "not UTF-8 text", "re-encode the file as UTF-8"
        ) from None
