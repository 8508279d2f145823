"""What doit cannot say well about ksbake's command line, said when dodo.py loads: a configs
directory that does not exist, and an appliance name that is not in it (with the nearest
one). doit's own words would be silence (exit 0) and "Invalid parameter"."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from ksbake.layers import CHAIN
from ksbake.paths import Paths

# per-appliance task groups: `GROUP:NAME`
GROUPS = ("appliance", "boottest", *(layer.name for layer in CHAIN))
# doit options that take a value (the value is not a task name)
VALUED = {"-f", "--file", "-d", "--dir", "-n", "--process", "-P", "--parallel-type"}
VALUED |= {"--backend", "--db-file", "--dep-file", "--check_file_uptodate", "-o", "--output-file"}
COMMANDS = {"run", "list", "info", "clean", "forget", "ignore", "help", "strace", "dumpdb"}
COMMANDS |= {"reset-dep", "tabcompletion", "auto"}
NO_APPLIANCE = {"list", "help", "tabcompletion", "dumpdb", "reset-dep"}
WITHOUT_CONFIGS = {"repo", "distro", "gc", "verify"}  # tasks that build no appliance


def positional(argv: Sequence[str]) -> list[str]:
    """doit's command and task arguments (not options or their values)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUED:
            skip = True
        elif not arg.startswith("-") and "=" not in arg:
            out.append(arg)
    return out


def problem(argv: Sequence[str], paths: Paths) -> str | None:
    """The one line to print instead of running doit, or None when the command line is fine."""
    args = positional(argv)
    command = args[0] if args and args[0] in COMMANDS else "run"
    tasks = [a for a in args if a not in COMMANDS]
    if command in NO_APPLIANCE:
        return None
    wants_appliance = not tasks or any(t.split(":")[0] not in WITHOUT_CONFIGS for t in tasks)
    if not paths.configs.is_dir():
        if not wants_appliance:
            return None
        return (
            f"ksbake: error: the configs directory {paths.configs} does not exist "
            "(set KSBAKE_CONFIGS to the directory that holds NAME.ks files, or unset it for "
            "./configs)"
        )
    known = paths.appliances()
    for task in tasks:
        group, colon, name = task.partition(":")
        if colon and group in GROUPS and name and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
            return (
                f"ksbake: error: {task}: there is no appliance '{name}' "
                f"({paths.configs}/{name}.ks does not exist; {hint})"
            )
    return None


def check_command_line(paths: Paths) -> None:
    """Exit with one line (status 2) if the command line names what cannot exist."""
    line = problem(sys.argv[1:], paths)
    if line is not None:
        print(line, file=sys.stderr)
        raise SystemExit(2)


def entry_points(group: str, what: str, names: Sequence[str], limit: int = 8) -> str:
    """The one-line doc of a per-appliance group for ``doit list``: its tasks by name."""
    shown = [f"{group}:{n}" for n in names[:limit]]
    more = f" and {len(names) - limit} more (doit list --all)" if len(names) > limit else ""
    listed = ", ".join(shown) + more if names else "no appliance in configs/ yet"
    return f"{what}: {listed}"
