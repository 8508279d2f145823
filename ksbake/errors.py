"""One error hierarchy, so every failure reaches the user as one clear line.

Tracebacks are for bugs; anything a user can cause (bad kickstart, missing package,
unreachable repository, failing tool) is raised as a ``KsbakeError`` subclass whose
``str()`` says what went wrong, where, and what to do.
"""

from __future__ import annotations


class KsbakeError(Exception):
    """Base class: a failure the user can act on."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(KsbakeError):
    """Invalid appliance settings (names the file and the key)."""


class KickstartError(KsbakeError):
    """A kickstart problem, located by file and line."""

    def __init__(self, path: str, line: int | None, message: str, hint: str | None = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}", hint)


class ToolError(KsbakeError):
    """An external command failed or is missing."""


class PackageError(KsbakeError):
    """Depsolve or install problem: missing package or group, broken dependency, bad repo."""


class BuildError(KsbakeError):
    """A layer could not be built (a failing %post, no space left, ...)."""
