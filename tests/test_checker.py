"""``tasks.common.XxhashChecker``, doit's file checker for every ``file_dep``: mtime first, then
size, then the xxh3 digest of the content (doit's MD5Checker, with a faster hash).

Unit tests of doit's ``FileChangedChecker`` API (``get_state`` after a successful run,
``check_modified`` on the next one), without running doit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ksbake.hashing import file_digest
from tasks.common import XxhashChecker

T0 = 1_700_000_000.0


@pytest.fixture
def dep(tmp_path: Path) -> Path:
    path = tmp_path / "inputs.json"
    path.write_text('{"plan": 1}\n')
    os.utime(path, (T0, T0))
    return path


def rewrite(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def modified(checker: XxhashChecker, path: Path, state: object) -> bool:
    return checker.check_modified(str(path), os.stat(path), state)


def test_state_is_mtime_size_and_xxh3(dep: Path) -> None:
    state = XxhashChecker().get_state(str(dep), None)
    assert state == (T0, dep.stat().st_size, file_digest(dep))


def test_unchanged_file_is_not_modified_and_keeps_its_state(dep: Path) -> None:
    checker = XxhashChecker()
    state = checker.get_state(str(dep), None)
    assert not modified(checker, dep, state)
    # same mtime: doit keeps the saved state, nothing is hashed again
    assert checker.get_state(str(dep), state) is None


def test_touched_file_with_the_same_content_is_not_modified(dep: Path) -> None:
    checker = XxhashChecker()
    state = checker.get_state(str(dep), None)
    os.utime(dep, (T0 + 60, T0 + 60))
    assert not modified(checker, dep, state)
    # a new mtime: a new state (so the next check stops at the mtime again)
    assert checker.get_state(str(dep), state) == (T0 + 60, *state[1:])


def test_same_size_different_content_is_modified(dep: Path) -> None:
    checker = XxhashChecker()
    state = checker.get_state(str(dep), None)
    rewrite(dep, '{"plan": 2}\n', T0 + 60)
    assert dep.stat().st_size == state[1]
    assert modified(checker, dep, state)


def test_different_size_is_modified_without_hashing(
    dep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checker = XxhashChecker()
    state = checker.get_state(str(dep), None)
    rewrite(dep, '{"plan": 12}\n', T0 + 60)

    def no_hashing(path: str) -> str:
        raise AssertionError(f"{path} hashed although its size changed")

    monkeypatch.setattr("tasks.common.file_digest", no_hashing)
    assert modified(checker, dep, state)


def test_same_mtime_trusts_the_file_like_doit(dep: Path) -> None:
    """The mtime shortcut doit's MD5Checker takes too: same mtime, not looked at."""
    checker = XxhashChecker()
    state = checker.get_state(str(dep), None)
    rewrite(dep, '{"plan": 3}\n', T0)
    assert not modified(checker, dep, state)
