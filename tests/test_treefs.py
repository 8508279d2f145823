"""treefs never follows a symlink out of the tree."""

from __future__ import annotations

from pathlib import Path

from ksbake import treefs


def test_absolute_symlink_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "host-etc"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "hostname").write_text("host\n")
    # a hostile or careless package: /etc/hostname -> <host path>
    (root / "etc" / "hostname").symlink_to(outside / "hostname")
    treefs.write_file(root, "/etc/hostname", "appliance\n")
    assert (outside / "hostname").read_text() == "host\n"
    resolved = treefs.resolve(root, "/etc/hostname")
    assert str(resolved).startswith(str(root))
    assert resolved.read_text() == "appliance\n"


def test_dotdot_cannot_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "up").symlink_to("../../../../")
    assert treefs.resolve(root, "/etc/up/x") == root / "x"
    assert treefs.resolve(root, "/../../x") == root / "x"


def test_relative_symlinks_and_dirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    treefs.write_file(root, "/bin/tool", "#!/bin/sh\n", mode=0o755)
    assert (root / "usr" / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    treefs.makedirs(root, "/home/user/.ssh", 0o700)
    assert (root / "home" / "user" / ".ssh").is_dir()
    treefs.symlink(root, "/etc/localtime", "../usr/share/zoneinfo/UTC")
    assert (root / "etc" / "localtime").readlink() == Path("../usr/share/zoneinfo/UTC")
