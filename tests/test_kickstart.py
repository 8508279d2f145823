"""Tests of the kickstart layer: canonical section texts, file:line errors across
%include trees, the unterminated-section trap, and legacy syntax (strict vs compat)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from ksbake.errors import ConfigError, KickstartError
from ksbake.kickstart import (
    DEFAULT_SYNTAX,
    SECTION_HEADERS,
    SECTION_NAMES,
    Kickstart,
    Location,
    canonical_sections,
    load,
    locate,
)

DATA = Path(__file__).resolve().parent / "data" / "kickstart"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.resolve()


def changed(a: Kickstart, b: Kickstart) -> set[str]:
    return {name for name in SECTION_NAMES if a.sections[name] != b.sections[name]}


# --- canonical sections ----------------------------------------------------------------


def test_sections_have_exactly_the_documented_keys() -> None:
    ks = load(DATA / "base.ks")
    assert tuple(ks.sections) == SECTION_NAMES
    assert ks.syntax == DEFAULT_SYNTAX
    assert ks.files == ((DATA / "base.ks").resolve(),)
    assert ks.warnings == ()


def test_reformatting_does_not_change_any_section() -> None:
    a = load(DATA / "base.ks")
    b = load(DATA / "base-reformatted.ks")
    assert a.sections == b.sections


def test_section_contents_come_from_pykickstart_str() -> None:
    s = load(DATA / "base.ks").sections
    assert 'repo --name="updates"' in s["repos"] and "url --url=" in s["repos"]
    assert s["packages"].lstrip().startswith("%packages --excludedocs --nocore")
    assert "openssh-server" in s["packages"] and "-plymouth" in s["packages"]
    for word in (
        "lang en_US.UTF-8",
        "rootpw --iscrypted",
        "user --groups=wheel",
        "selinux",
        "firewall --enabled --service=ssh",
        "--hostname=demo.example",
        "services",
    ):
        assert word in s["system"], word
    assert s["post"].count("%post") == 2
    assert "--nochroot" in s["post"] and "--logfile=/root/post.log" in s["post"]
    assert "--erroronfail" in s["post"]
    for word in ("clearpart --all", "zerombr", "part /boot", "part /data"):
        assert word in s["partitions"], word
    assert "bootloader --append=" in s["bootloader"] and "--timeout=1" in s["bootloader"]


BASE_EDITS = [
    pytest.param('echo "configured"', 'echo "edited"', {"post"}, id="post-body"),
    pytest.param("%post --nochroot", "%post --nochroot --erroronfail", {"post"}, id="post-option"),
    pytest.param("bash\n", "bash\nvim-minimal\n", {"packages"}, id="packages-add"),
    pytest.param(
        "%packages --excludedocs --nocore", "%packages --nocore", {"packages"}, id="packages-option"
    ),
    pytest.param("part / --size=2048", "part / --size=4096", {"partitions"}, id="part-size"),
    pytest.param(
        "clearpart --all --initlabel --disklabel=msdos",
        "clearpart --all --initlabel --disklabel=gpt",
        {"partitions"},
        id="clearpart",
    ),
    pytest.param("--timeout=1", "--timeout=5", {"bootloader"}, id="bootloader"),
    pytest.param(
        "timezone Etc/UTC --utc", "timezone Europe/Paris --utc", {"system"}, id="timezone"
    ),
    pytest.param("--cost=50", "--cost=10", {"repos"}, id="repo"),
    pytest.param(
        "lang en_US.UTF-8\n", "lang en_US.UTF-8\n# a comment\n\n\n", set(), id="comment-only"
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), BASE_EDITS)
def test_an_edit_changes_only_its_own_section(
    tmp_path: Path, old: str, new: str, expected: set[str]
) -> None:
    base = (DATA / "base.ks").read_text()
    assert old in base
    edited = write(tmp_path, "edited.ks", base.replace(old, new, 1))
    assert changed(load(DATA / "base.ks"), load(edited)) == expected


def reparsed(ks: Kickstart, name: str) -> str:
    """Parse one section text alone at the same syntax and render it again."""
    handler = makeVersion(ks.syntax)
    KickstartParser(handler).readKickstartFromString(ks.sections[name])
    return canonical_sections(handler)[name]


@pytest.mark.parametrize("fixture", ["base.ks", "include/main.ks", "legacy/appliance-2008.ks"])
def test_section_texts_are_kickstart_text_that_reparses_to_itself(fixture: str) -> None:
    """Later layers re-parse their section text; it must be valid, already rewritten
    kickstart syntax at the same version, and a fixed point."""
    ks = load(DATA / fixture, compat=True)
    for name in SECTION_NAMES:
        assert reparsed(ks, name) == ks.sections[name], name


def test_unset_commands_give_stable_marker_text(tmp_path: Path) -> None:
    a = load(write(tmp_path, "a.ks", "lang C\n"))
    b = load(write(tmp_path, "b.ks", "# nothing but lang\n\nlang   C   \n"))
    assert a.sections == b.sections
    assert a.sections["post"] == "" and a.sections["packages"] == ""
    assert a.sections["bootloader"] == "## bootloader\n"
    assert "## part\n" in a.sections["partitions"]


def test_rootpw_is_in_the_system_text_but_errors_hide_it(tmp_path: Path) -> None:
    ks = load(write(tmp_path, "pw.ks", "rootpw --plaintext s3cr3tpw\n"))
    assert "s3cr3tpw" in ks.sections["system"]  # hashed, never printed
    bad = write(tmp_path, "bad.ks", "lang C\nrootpw --plaintext s3cr3tpw extra\n")
    with pytest.raises(KickstartError) as info:
        load(bad)
    assert info.value.line == 2
    assert "s3cr3tpw" not in str(info.value) and "extra" not in str(info.value)


# --- %include ----------------------------------------------------------------------------


def test_include_tree_is_flattened_with_a_line_map() -> None:
    ks = load(DATA / "include" / "main.ks")
    inc = (DATA / "include").resolve()
    assert ks.files == (
        inc / "main.ks",
        inc / "common.ks",
        inc / "parts" / "layout.ks",
        inc / "bootpart.ks",
        inc / "packages.list",
    )
    assert "kernel" in ks.sections["packages"] and "bash" in ks.sections["packages"]
    assert "echo main" in ks.sections["post"]
    parts = ks.handler.partition.partitions
    assert [p.mountpoint for p in parts] == ["/boot", "/"]
    assert ks.line_of(parts[0]) == Location(inc / "bootpart.ks", 1)
    assert ks.line_of(parts[1]) == (inc / "parts" / "layout.ks", 4)
    assert str(ks.line_of(parts[1])) == f"{inc / 'parts' / 'layout.ks'}:4"
    assert ks.line_of(ks.handler.scripts[0]).path == inc / "main.ks"
    assert ks.line_of(ks.handler.bootloader) == (inc / "common.ks", 6)


def test_line_of_accepts_numbers_and_rejects_objects_without_lineno() -> None:
    ks = load(DATA / "include" / "main.ks")
    assert ks.line_of(1) == ((DATA / "include" / "main.ks").resolve(), 1)
    assert locate(ks.line_map, 10_000) == ks.line_map[-1]
    with pytest.raises(ValueError):
        ks.line_of(object())
    err = ks.error(ks.handler.partition.partitions[0], "too big", "shrink it")
    assert str(err).endswith("bootpart.ks:1: too big (shrink it)")


def test_kickstart_is_frozen() -> None:
    ks = load(DATA / "base.ks")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ks.compat = True  # type: ignore[misc]


def test_syntax_error_in_main_file_names_file_and_line() -> None:
    with pytest.raises(KickstartError) as info:
        load(DATA / "errors" / "syntax-main.ks")
    err = info.value
    assert err.path == str((DATA / "errors" / "syntax-main.ks").resolve())
    assert err.line == 4
    assert "--no-such-option" in str(err)
    assert str(err).startswith(f"{err.path}:4: ")


def test_syntax_error_in_included_file_names_the_included_file() -> None:
    with pytest.raises(KickstartError) as info:
        load(DATA / "errors" / "syntax-included.ks")
    err = info.value
    assert err.path == str((DATA / "errors" / "inc" / "bad-part.ks").resolve())
    assert err.line == 4
    assert "--szie" in str(err)


def test_missing_include_names_includer_line_and_missing_path() -> None:
    with pytest.raises(KickstartError) as info:
        load(DATA / "errors" / "missing-include.ks", compat=True)
    err = info.value
    assert err.path == str((DATA / "errors" / "missing-include.ks").resolve())
    assert err.line == 3
    assert "does-not-exist.ks" in str(err)


def test_include_cycle_is_an_error() -> None:
    with pytest.raises(KickstartError, match="cycle: cycle-a.ks -> cycle-b.ks -> cycle-a.ks"):
        load(DATA / "errors" / "cycle-a.ks")


def test_include_without_a_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KickstartError, match=r":2: %include needs a file name"):
        load(write(tmp_path, "a.ks", "lang C\n%include\n"))


def test_absolute_include_is_used_as_given(tmp_path: Path) -> None:
    other = write(tmp_path, "elsewhere/parts.ks", "part / --size=100\n")
    main = write(tmp_path, "sub/main.ks", f"lang C\n%include {other}\n")
    ks = load(main)
    assert ks.files == (main, other)
    assert ks.line_of(ks.handler.partition.partitions[0]) == (other, 1)


def test_ksappend_of_a_local_file_is_inlined(tmp_path: Path) -> None:
    extra = write(tmp_path, "extra.ks", "%post\necho appended\n%end\n")
    ks = load(write(tmp_path, "main.ks", "lang C\n%ksappend extra.ks\n"))
    assert ks.files[-1] == extra
    assert "echo appended" in ks.sections["post"]


def test_ksappend_of_a_url_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(KickstartError, match=r"main.ks:2: '%ksappend http://example.org/x.ks'"):
        load(write(tmp_path, "main.ks", "lang C\n%ksappend http://example.org/x.ks\n"))


def test_warnings_name_the_included_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "pkgs.ks", "# packages\n%packages --instLangs=en\nbash\n%end\n")
    write(tmp_path, "parts.ks", "part / --size=100\npart / --size=200\n")
    ks = load(write(tmp_path, "main.ks", "lang C\n%include parts.ks\n%include pkgs.ks\n"))
    assert any(
        w.startswith(f"{tmp_path / 'pkgs.ks'}:2: ") and "--instLangs" in w for w in ks.warnings
    ), ks.warnings
    assert any(
        w.startswith(f"{tmp_path / 'parts.ks'}:2: ") and "already been defined" in w
        for w in ks.warnings
    ), ks.warnings


# --- the unterminated-section trap -------------------------------------------------------


def test_pykickstart_itself_swallows_the_rest_of_the_includer() -> None:
    """Why the check exists: plain pykickstart silently loses %packages, part, bootloader."""
    handler = makeVersion(DEFAULT_SYNTAX)
    KickstartParser(handler).readKickstart(str(DATA / "trap" / "main.ks"))
    assert handler.packages.packageList == []
    assert handler.partition.partitions == []
    assert not handler.bootloader.seen


def test_unterminated_section_in_included_file_is_an_error_in_strict_mode() -> None:
    with pytest.raises(KickstartError) as info:
        load(DATA / "trap" / "main.ks")
    err = info.value
    assert err.path == str((DATA / "trap" / "post-unterminated.ks").resolve())
    assert err.line == 3
    assert (
        "section %post opened here is not closed with %end before the end of this included file"
    ) in str(err)
    assert "add %end" in str(err)


def test_unterminated_section_in_included_file_is_closed_in_compat_mode() -> None:
    ks = load(DATA / "trap" / "main.ks", compat=True)
    inc = (DATA / "trap" / "post-unterminated.ks").resolve()
    assert len(ks.warnings) == 1
    assert ks.warnings[0].startswith(f"{inc}:3: section %post opened here is not closed")
    assert 'echo "this %post has no %end"' in ks.sections["post"]
    assert "part /" not in ks.sections["post"]
    assert "kernel" in ks.sections["packages"]
    assert 'part / --fstype="ext4" --size=2048' in ks.sections["partitions"]
    assert "--timeout=1" in ks.sections["bootloader"]


def test_include_inside_a_section_is_not_the_trap(tmp_path: Path) -> None:
    write(tmp_path, "list.ks", "bash\nkernel")  # no %end, no trailing newline: fine
    ks = load(write(tmp_path, "main.ks", "%packages\n%include list.ks\n%end\nlang C\n"))
    assert "bash" in ks.sections["packages"] and ks.warnings == ()


# --- legacy syntax -----------------------------------------------------------------------

LEGACY = [
    # (id, kickstart text, line of the construct, expected words in the strict error)
    (
        "packages-nobase",
        "lang C\n%packages --excludedocs --nobase\nbash\n%end\n",
        2,
        "'%packages --nobase' was removed from kickstart syntax (delete the option, or build "
        "with compat = true)",
    ),
    (
        "packages-resolvedeps",
        "%packages --resolvedeps\nbash\n%end\n",
        1,
        "'%packages --resolvedeps' was removed",
    ),
    (
        "bootloader-extlinux",
        "lang C\nbootloader --timeout=1 extlinux\n",
        2,
        "'bootloader ... extlinux' is old syntax",
    ),
    ("bootloader-lba32", "bootloader --lba32 --timeout=1\n", 1, "'bootloader --lba32'"),
    ("zerombr-yes", "lang C\n\nzerombr yes\n", 3, "'zerombr yes' is old syntax"),
    ("auth", "auth --useshadow --enablemd5\n", 1, "'auth' was removed from kickstart syntax"),
    (
        "authconfig",
        "lang C\nauthconfig --enableshadow --passalgo=sha512\n",
        2,
        "'authconfig' was removed",
    ),
    ("install", "install\nlang C\n", 1, "'install' was removed"),
    ("upgrade", "upgrade\n", 1, "'upgrade' was removed"),
    ("device", "device virtio_blk\n", 1, "'device' was removed"),
    ("key", "key --skip\n", 1, "'key' was removed"),
    ("interactive", "interactive\n", 1, "'interactive' was removed"),
    ("autostep", "autostep\n", 1, "'autostep' was removed"),
    ("mouse", "mouse none\n", 1, "'mouse' was removed"),
    ("langsupport", "langsupport --default=en_US en_US\n", 1, "'langsupport' was removed"),
    ("monitor", "monitor --noprobe\n", 1, "'monitor' was removed"),
    ("lilo", "lilo\n", 1, "'lilo' was removed"),
    ("method", "method\n", 1, "'method' was removed"),
    ("xconfig-depth", "xconfig --startxonboot --depth=16\n", 1, "'xconfig --depth' was removed"),
    (
        "part-bytes-per-inode",
        "part / --size 650 --bytes-per-inode=4096\n",
        1,
        "'part --bytes-per-inode' was removed",
    ),
    (
        "section-without-end",
        "%post\necho hi\n%packages\nbash\n%end\n",
        1,
        "section %post opened here has no %end (the next section starts at line 3)",
    ),
    (
        "section-without-end-at-eof",
        "lang C\n%post\necho hi\n",
        2,
        "section %post opened here has no %end before the end of the kickstart",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "words"), [pytest.param(t, n, w, id=i) for i, t, n, w in LEGACY]
)
def test_legacy_construct_fails_in_strict_mode(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, "legacy.ks", text)
    with pytest.raises(KickstartError) as info:
        load(path)
    assert info.value.path == str(path) and info.value.line == line
    assert words in str(info.value)
    assert "compat = true" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "words"), [pytest.param(t, n, w, id=i) for i, t, n, w in LEGACY]
)
def test_legacy_construct_parses_in_compat_mode(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, "legacy.ks", text)
    ks = load(path, compat=True)
    construct = words.split(" (")[0].split(" was removed")[0].split(" is old syntax")[0]
    assert any(
        w.startswith(f"{path}:{line}: ") and construct in w and w.endswith("(compat)")
        for w in ks.warnings
    ), ks.warnings


def test_compat_rewrites_keep_the_meaning() -> None:
    ks = load(DATA / "legacy" / "appliance-2008.ks", compat=True)
    s = ks.sections
    assert "--extlinux" in s["bootloader"] and " extlinux" not in s["bootloader"]
    assert "zerombr" in s["partitions"]
    assert 'part / --fstype="ext3" --ondisk=sda --size=650' in s["partitions"]
    assert "bytes-per-inode" not in s["partitions"]
    assert "--nobase" not in s["packages"] and "syslinux-extlinux" in s["packages"]
    assert "--excludedocs" in s["packages"]
    assert "/sbin/chkconfig network on" in s["post"] and "bash" not in s["post"]
    assert "--startxonboot" in s["system"] and "--depth" not in s["system"]
    assert "## authselect\n## firstboot" in s["system"]
    assert len(ks.warnings) == 17


def test_legacy_fixture_fails_at_its_first_construct_in_strict_mode() -> None:
    with pytest.raises(KickstartError) as info:
        load(DATA / "legacy" / "appliance-2008.ks")
    assert info.value.line == 3
    assert "'install' was removed from kickstart syntax" in str(info.value)


def test_legacy_rewrites_depend_on_the_pinned_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "old.ks", "auth --useshadow\n%packages --nobase\nbash\n%end\n")
    ks = load(path, version="F15")  # F15 still accepted both
    assert ks.warnings == () and ks.syntax == "F15"
    with pytest.raises(KickstartError, match=":1: 'auth' was removed"):
        load(path, version="F40")


def test_newer_command_on_old_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "new.ks", "lang C\nauthselect select sssd --force\n")
    with pytest.raises(KickstartError, match="first appears in F28"):
        load(path, version="F25")
    ks = load(path, version="F25", compat=True)
    assert "dropped the line" in ks.warnings[0]
    bootc = write(tmp_path, "bootc.ks", "lang C\nbootc --source-imgref=registry:x\n")
    with pytest.raises(KickstartError, match=":2: 'bootc' is not part of kickstart syntax F40"):
        load(bootc, compat=True)


def test_earlier_syntax_error_wins_over_a_later_legacy_construct(tmp_path: Path) -> None:
    first = write(tmp_path, "a.ks", "part / --szie=1\nauth --useshadow\n")
    with pytest.raises(KickstartError) as info:
        load(first)
    assert info.value.line == 1 and "--szie" in str(info.value)
    second = write(tmp_path, "b.ks", "auth --useshadow\npart / --szie=1\n")
    with pytest.raises(KickstartError) as info:
        load(second)
    assert info.value.line == 1 and "'auth' was removed" in str(info.value)


def test_section_headers_match_the_parser() -> None:
    parser = KickstartParser(makeVersion(DEFAULT_SYNTAX))
    for header in SECTION_HEADERS:
        parser.getSection(header)


# --- versions and odd input ----------------------------------------------------------


def test_unknown_syntax_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load(DATA / "base.ks", version="F99")
    assert "'F99'" in str(info.value) and "F40" in str(info.value)


def test_syntax_version_is_normalised() -> None:
    assert load(DATA / "base.ks", version="f40").syntax == "F40"
    assert load(DATA / "base.ks", version="RHEL9").syntax == "RHEL9"


def test_unbalanced_quotes_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(KickstartError, match=r"a.ks:2: cannot split this line"):
        load(write(tmp_path, "a.ks", 'lang C\nfirewall --service="ssh\n'))


def test_bare_minus_in_packages_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """pykickstart raises IndexError on a "-" line in %packages; we name the line."""
    path = write(tmp_path, "a.ks", "%packages\nbash\n-   # was -kudzu\n%end\n")
    with pytest.raises(KickstartError, match=r"a.ks:3: '-' in %packages names no package"):
        load(path)


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(KickstartError, match="cannot read the kickstart"):
        load(tmp_path / "nope.ks")


def test_packages_parse_in_linear_time(tmp_path: Path) -> None:
    """pykickstart re-sorts the list for every %packages line: 20k lines took a minute."""
    import random
    import time

    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    from ksbake.kickstart import _Parser, parse_fragment

    lines = [f"pkg{i}" for i in range(20000)] + ["-pkg7", "@core", "-@core", "pkg7", "-pkg9"]
    path = tmp_path / "big.ks"
    path.write_text("lang en_US.UTF-8\n%packages\n" + "\n".join(lines) + "\n%end\n")
    started = time.monotonic()
    ks = load(path)
    again = parse_fragment(ks.sections["packages"], "F40")
    assert time.monotonic() - started < 5  # seconds; a minute before (the bound has room)
    assert len(ks.handler.packages.packageList) == 19999 == len(again.packages.packageList)
    assert ks.handler.packages.excludedList == ["pkg9"]
    # the same lists as pykickstart's own section, for any mix of lines
    rng = random.Random(7)
    for _ in range(200):
        entries = [
            rng.choice(["a", "b", "-a", "-b", "c", "@core", "-@core", "@^env"])
            for _ in range(rng.randint(1, 10))
        ]
        text = "%packages\n" + "\n".join(entries) + "\n%end\n"
        theirs, ours = makeVersion("F40"), makeVersion("F40")
        KickstartParser(theirs).readKickstartFromString(text)
        _Parser(ours, lambda *_: None).readKickstartFromString(text)
        for attr in ("packageList", "excludedList", "environment"):
            assert getattr(ours.packages, attr) == getattr(theirs.packages, attr), entries
