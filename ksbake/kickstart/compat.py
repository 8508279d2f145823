"""Legacy kickstart syntax: what current pykickstart rejects but 2008-2014 kickstarts wrote.

Each rule finds one construct in a command line of the flattened kickstart (removed commands,
``zerombr yes``, positional ``bootloader ... extlinux``, removed options) and hands it to
``rewrite(where, message, fix, done)``, which the flattener implements: strict mode names the
first construct with its fix, compat mode rewrites it with a warning, the way appliance-creator
effectively treated it. A rule fires only when the pinned syntax really rejects the line
(checked by parsing it alone), so an old pinned syntax keeps its then-valid options.
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Callable
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from pykickstart import version as ksversion
from pykickstart.base import RemovedCommand
from pykickstart.errors import KickstartError as PykickstartError
from pykickstart.handlers import control
from pykickstart.parser import KickstartParser

from ksbake.errors import KickstartError

if TYPE_CHECKING:
    from ksbake.kickstart import Location

REMOVED_COMMAND_NOTES: dict[str, str] = {
    "auth": "shadow passwords and SHA-512 are the default now, 'authselect' sets a profile",
    "authconfig": "shadow passwords and SHA-512 are the default now, 'authselect' sets a profile",
    "install": "a fresh install is the only mode, the line had no effect",
    "upgrade": "ksbake always builds a fresh image",
    "device": "appliance-creator put this kernel module into the initramfs, a "
    "/etc/dracut.conf.d file written in %post does that now",
    "deviceprobe": "it has no effect on an image build",
    "key": "installation numbers no longer exist",
    "interactive": "ksbake never prompts",
    "autostep": "ksbake never prompts",
    "mouse": "it has no effect on an image build",
    "monitor": "it has no effect on an image build",
    "langsupport": "'lang' and langpacks in %packages replace it",
    "lilo": "'bootloader' replaces it",
    "lilocheck": "'bootloader' replaces it",
    "method": "'url' or 'repo' replace it",
    "dmraid": "it has no effect on an image build",
    "multipath": "it has no effect on an image build",
}
"""Why dropping a removed command is what appliance-creator effectively did."""

DROPPABLE_NEWER_COMMANDS: frozenset[str] = frozenset({"authselect"})
"""Commands newer than an old pinned syntax that compat mode may drop (distro defaults
then apply, as with appliance-creator's authconfig-free images)."""

LEGACY_OPTIONS: dict[str, dict[str, bool]] = {
    "%packages": {"--nobase": False, "--resolvedeps": False, "--ignoredeps": False},
    "bootloader": {
        "--useLilo": False,
        "--lba32": False,
        "--upgrade": False,
        "--linear": False,
        "--nolinear": False,
    },
    "part": {"--bytes-per-inode": True},
    "partition": {"--bytes-per-inode": True},
    "logvol": {"--bytes-per-inode": True},
    "raid": {"--bytes-per-inode": True},
    "logging": {"--level": True},
    "firewall": {"--high": False, "--medium": False},
    "xconfig": {
        "--noprobe": False,
        "--card": True,
        "--videoram": True,
        "--monitor": True,
        "--hsync": True,
        "--vsync": True,
        "--resolution": True,
        "--depth": True,
        "--server": True,
    },
}
"""Options removed from kickstart syntax that only tuned installers of the time; the bool
says whether the option takes a value. Dropped in compat mode."""

_BOOTLOADER_VALUE_OPTIONS = frozenset(
    {
        "--append",
        "--location",
        "--driveorder",
        "--password",
        "--md5pass",
        "--timeout",
        "--default",
        "--boot-drive",
    }
)


class Legacy:
    """The rules for one pinned syntax; ``rewrite`` decides what a finding does."""

    def __init__(
        self, version: int, syntax: str, rewrite: Callable[[Location, str, str, str], None]
    ) -> None:
        self.version = version
        self.syntax = syntax
        self.rewrite = rewrite

    def command(self, tokens: list[str], raw: str, where: Location) -> str:
        name = tokens[0]
        status, other = _command_status(self.version, name)
        if status == "removed":
            note = REMOVED_COMMAND_NOTES.get(name, "it has no effect on an image build")
            self.rewrite(
                where,
                f"'{name}' was removed from kickstart syntax ({self.syntax} rejects it, {other} "
                f"was the last to accept it); {note}",
                "delete the line",
                "dropped the line",
            )
            return ""
        if status == "newer":
            message = (
                f"'{name}' is not part of kickstart syntax {self.syntax}; it first "
                f"appears in {other}"
            )
            if name in DROPPABLE_NEWER_COMMANDS:
                self.rewrite(
                    where,
                    message,
                    f"set the kickstart syntax to {other} or later",
                    "dropped the line",
                )
                return ""
            raise KickstartError(
                str(where.path),
                where.line,
                message,
                f"set the kickstart syntax to {other} or later",
            )
        if name == "zerombr" and len(tokens) > 1 and _rejects(self.version, raw.strip()):
            self.rewrite(
                where,
                f"'zerombr {' '.join(tokens[1:])}' is old syntax: zerombr takes no argument now",
                "write 'zerombr'",
                "normalised to 'zerombr'",
            )
            return "zerombr"
        if name == "bootloader":
            raw = self._extlinux(tokens, raw, where)
            tokens = shlex.split(raw, comments=True) if raw else tokens
        if name in LEGACY_OPTIONS:
            raw = self.options(tokens, raw, where, name)
        return raw

    def _extlinux(self, tokens: list[str], raw: str, where: Location) -> str:
        positions = [
            i
            for i, tok in enumerate(tokens)
            if i > 0 and tok == "extlinux" and tokens[i - 1] not in _BOOTLOADER_VALUE_OPTIONS
        ]
        if not positions or not _rejects(self.version, raw.strip()):
            return raw
        keep = [t for i, t in enumerate(tokens) if i not in positions]
        if _rejects(self.version, "bootloader --extlinux"):
            done = "dropped 'extlinux' (this syntax has no --extlinux)"
        else:
            if "--extlinux" not in keep:
                keep.append("--extlinux")
            done = "rewritten to 'bootloader --extlinux'"
        self.rewrite(
            where,
            "'bootloader ... extlinux' is old syntax: extlinux as a positional argument",
            "write 'bootloader --extlinux'",
            done,
        )
        return shlex.join(keep)

    def options(self, tokens: list[str], raw: str, where: Location, name: str) -> str:
        table = LEGACY_OPTIONS.get(name, {})
        if not table:
            return raw
        keep: list[str] = []
        found: list[str] = []
        skip_value = False
        for i, tok in enumerate(tokens):
            if skip_value:
                skip_value = False
                continue
            opt = tok.split("=", 1)[0]
            if i > 0 and opt in table:
                found.append(opt)
                skip_value = table[opt] and "=" not in tok and i + 1 < len(tokens)
                continue
            keep.append(tok)
        if not found:
            return raw
        probe = raw.strip() + ("\n%end" if name.startswith("%") else "")
        if not _rejects(self.version, probe):
            return raw
        for opt in found:
            self.rewrite(
                where,
                f"'{name} {opt}' was removed from kickstart syntax",
                "delete the option",
                "dropped the option",
            )
        return shlex.join(keep)


@cache
def _command_status(version: int, name: str) -> tuple[str, str]:
    """("ok" | "removed" | "newer" | "unknown", the version that explains it)."""
    current = control.commandMap.get(version, {})
    cls = current.get(name)
    older: list[int] = []
    newer: list[int] = []
    for ver, commands in control.commandMap.items():
        other = commands.get(name)
        if other is None or issubclass(other, RemovedCommand):
            continue
        (older if ver < version else newer).append(ver)
    if cls is not None and not issubclass(cls, RemovedCommand):
        return "ok", ""
    if older:
        return "removed", ksversion.versionToString(max(_same_family(version, older)))
    if cls is None and newer:
        return "newer", ksversion.versionToString(min(_same_family(version, newer)))
    return ("removed", "an older version") if cls is not None else ("unknown", "")


def _same_family(version: int, candidates: list[int]) -> list[int]:
    """Prefer RHEL versions when RHEL syntax is pinned and Fedora ones otherwise, so a
    message says "last accepted by F34" to a Fedora user rather than "by RHEL9"."""
    rhel = ksversion.versionToString(version).startswith("RHEL")
    same = [v for v in candidates if ksversion.versionToString(v).startswith("RHEL") == rhel]
    return same or candidates


@lru_cache(maxsize=1024)
def _rejects(version: int, text: str) -> bool:
    """Does pykickstart at ``version`` reject this standalone line? Keeps legacy rewrites
    to what the pinned syntax really refuses (F10 may still accept what F40 does not)."""
    handler = ksversion.makeVersion(version)
    parser = KickstartParser(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser.readKickstartFromString(text + "\n")
    except (PykickstartError, ValueError):
        return True
    return False
