"""Every real kickstart of the shared corpus either parses or fails with one located
KickstartError, in strict and compat mode, at DEFAULT_SYNTAX and at the syntax version the
corpus notes say was tried. Known outcomes are pinned exactly (the corpus is byte-for-byte
fixed), and each pinned error is checked against the line it names."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import (
    CORPUS,
    KICKSTARTS,
    MISSING_INCLUDES,
    corpus_primaries,
    skip_without_corpus,
)
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from ksbake.errors import KickstartError
from ksbake.kickstart import DEFAULT_SYNTAX, canonical_sections, load

skip_without_corpus()

PRIMARIES = corpus_primaries()

AUTH = "'auth' was removed from kickstart syntax (F40 rejects it, F34 was the last to accept it)"
INSTALL = "'install' was removed from kickstart syntax"
NOBASE = "'%packages --nobase' was removed from kickstart syntax (delete the option, or build"
EXTLINUX = "'bootloader ... extlinux' is old syntax"

# (local_path, "default" | "notes") -> (file that is named, line, text on that line,
# words in the message). Failures independent of the syntax are keyed by both. Anything
# not listed must parse in strict mode; in compat mode only MISSING_INCLUDES (conftest) may
# fail.
STRICT_FAILURES: dict[tuple[str, str], tuple[str, int, str, str]] = {
    ("kickstarts/srbala__fedora-kickstarts/fedora-eln-guest.ks", "default"): (
        "srbala__fedora-kickstarts/fedora-eln-guest.ks",
        12,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@4af7364/fedora-aos.ks", "default"): (
        "srbala__fedora-kickstarts@4af7364/fedora-aos.ks",
        7,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@4af7364/fedora-aos.ks", "notes"): (
        "srbala__fedora-kickstarts@4af7364/fedora-aos.ks",
        33,
        "--nobase",
        NOBASE,
    ),
    ("kickstarts/srbala__fedora-kickstarts@e25600d/fedora-aos.ks", "default"): (
        "srbala__fedora-kickstarts@e25600d/fedora-aos.ks",
        7,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@e25600d/fedora-aos.ks", "notes"): (
        "srbala__fedora-kickstarts@e25600d/fedora-aos.ks",
        44,
        "--nobase",
        NOBASE,
    ),
    ("kickstarts/srbala__fedora-kickstarts@513737f/Fedora-15-ec2.ks", "default"): (
        "srbala__fedora-kickstarts@513737f/Fedora-15-ec2.ks",
        5,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@41b3b4d/fedora-x86_64-cloud.ks", "default"): (
        "srbala__fedora-kickstarts@41b3b4d/fedora-cloud-base.ks",
        18,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@41b3b4d/fedora-x86_64-cloud.ks", "notes"): (
        "srbala__fedora-kickstarts@41b3b4d/fedora-cloud-base.ks",
        26,
        "extlinux",
        EXTLINUX,
    ),
    ("kickstarts/srbala__fedora-kickstarts@3336b78/fedora-cloud-atomic.ks", "default"): (
        "srbala__fedora-kickstarts@3336b78/fedora-cloud-atomic.ks",
        14,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@f7b98bb/fedora-arm-minimal-vfat.ks", "default"): (
        "srbala__fedora-kickstarts@f7b98bb/fedora-arm-base.ks",
        3,
        "auth",
        AUTH,
    ),
    ("kickstarts/srbala__fedora-kickstarts@f7b98bb/fedora-arm-minimal-vfat.ks", "notes"): (
        "srbala__fedora-kickstarts@f7b98bb/fedora-arm-base.ks",
        8,
        "extlinux",
        EXTLINUX,
    ),
    ("kickstarts/livecd-tools__appliance-tools/config/fedora-aos.ks", "default"): (
        "livecd-tools__appliance-tools/config/fedora-aos.ks",
        19,
        "device virtio_blk",
        "'device' was removed from kickstart syntax",
    ),
    ("kickstarts/livecd-tools__appliance-tools/config/fedora-aos.ks", "notes"): (
        "livecd-tools__appliance-tools/config/fedora-aos.ks",
        7,
        "authselect",
        "'authselect' is not part of kickstart syntax F25; it first appears in F28",
    ),
    ("kickstarts/rocky-linux__kickstarts@r9/Rocky-9-GenericCloud-LVM.ks", "default"): (
        "rocky-linux__kickstarts@r9/Rocky-9-GenericCloud-LVM.ks",
        7,
        "auth",
        AUTH,
    ),
    ("kickstarts/rocky-linux__kickstarts@r9/cloud/rocky-genclo-lvm.ks", "default"): (
        "rocky-linux__kickstarts@r9/cloud/rocky-cloud-base.ks",
        6,
        "auth",
        AUTH,
    ),
    ("kickstarts/rocky-linux__kickstarts@r9/Rocky-9-Azure-Base.ks", "default"): (
        "rocky-linux__kickstarts@r9/Rocky-9-Azure-Base.ks",
        19,
        "auth",
        AUTH,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/cloudimg/CentOS-7-x86_64-hvm.ks", "default"): (
        "CentOS__sig-cloud-instance-build/cloudimg/CentOS-7-x86_64-hvm.ks",
        2,
        "auth",
        AUTH,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/cloudimg/CentOS-8-x86_64-Azure.ks", "default"): (
        "CentOS__sig-cloud-instance-build/cloudimg/CentOS-8-x86_64-Azure.ks",
        8,
        "auth",
        AUTH,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/cloudimg/CentOS-6-x86_64-hvm.ks", "default"): (
        "CentOS__sig-cloud-instance-build/cloudimg/CentOS-6-x86_64-hvm.ks",
        5,
        "auth",
        AUTH,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/vagrant/centos7.ks", "default"): (
        "CentOS__sig-cloud-instance-build/vagrant/centos7.ks",
        2,
        "install",
        INSTALL,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/ovirt/CentOS-7-x86_64-oVirt-r1.ks", "default"): (
        "CentOS__sig-cloud-instance-build/ovirt/CentOS-7-x86_64-oVirt-r1.ks",
        1,
        "auth",
        AUTH,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/openstack/openstack-65-x86_64.ks", "default"): (
        "CentOS__sig-cloud-instance-build/openstack/openstack-65-x86_64.ks",
        1,
        "install",
        INSTALL,
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/openstack/openstack-65-x86_64.ks", "notes"): (
        "CentOS__sig-cloud-instance-build/openstack/openstack-65-x86_64.ks",
        14,
        "zerombr yes",
        "'zerombr yes' is old syntax: zerombr takes no argument now (write 'zerombr'",
    ),
    ("kickstarts/CentOS__sig-cloud-instance-build/docker/centos-7-x86_64.ks", "default"): (
        "CentOS__sig-cloud-instance-build/docker/centos-7-x86_64.ks",
        14,
        "install",
        INSTALL,
    ),
    (
        "kickstarts/oVirt__ovirt-appliance@f6b2f94/engine-appliance/data/"
        "ovirt-engine-appliance.ks.in",
        "default",
    ): (
        "oVirt__ovirt-appliance@f6b2f94/engine-appliance/data/ovirt-engine-appliance.ks.in",
        5,
        "auth",
        AUTH,
    ),
    ("kickstarts/redpesk-infra__rp-kickstarts/Redpesk-minimal-x86_64-selinux.ks", "default"): (
        "redpesk-infra__rp-kickstarts/features/password.ks",
        5,
        "auth",
        AUTH,
    ),
    ("kickstarts/redpesk-infra__rp-kickstarts/Redpesk-minimal-rpi-selinux.ks", "default"): (
        "redpesk-infra__rp-kickstarts/features/password.ks",
        5,
        "auth",
        AUTH,
    ),
}

CASES = [
    pytest.param(
        local,
        version,
        kind,
        compat,
        id=f"{local.removeprefix('kickstarts/')}@{version}-{'compat' if compat else 'strict'}",
    )
    for local, notes_version in PRIMARIES
    for kind, version in (("default", DEFAULT_SYNTAX), ("notes", notes_version))
    for compat in (False, True)
]


def _expected(local: str, kind: str, compat: bool) -> tuple[str, int, str, str] | None:
    if local in MISSING_INCLUDES:
        return MISSING_INCLUDES[local]
    if compat:
        return None
    return STRICT_FAILURES.get((local, kind))


def test_corpus_has_the_primaries_we_pin() -> None:
    locals_ = {local for local, _ in PRIMARIES}
    assert len(PRIMARIES) >= 39
    assert set(MISSING_INCLUDES) <= locals_
    assert {local for local, _ in STRICT_FAILURES} <= locals_


@pytest.mark.parametrize(("local", "version", "kind", "compat"), CASES)
def test_corpus_kickstart_parses_or_fails_with_a_located_error(
    local: str, version: str, kind: str, compat: bool
) -> None:
    path = CORPUS / local
    expected = _expected(local, kind, compat)
    try:
        ks = load(path, version=version, compat=compat)
    except KickstartError as err:
        # Specific: names a corpus file that exists and a line in it.
        assert Path(err.path).is_file() and Path(err.path).is_relative_to(KICKSTARTS.resolve())
        assert isinstance(err.line, int) and err.line >= 1
        assert str(err).startswith(f"{err.path}:{err.line}: ")
        assert expected is not None, f"unexpected failure: {err}"
        named, line, on_line, words = expected
        assert err.path == str((KICKSTARTS / named).resolve())
        assert err.line == line
        assert words in str(err)
        text = Path(err.path).read_text().splitlines()[line - 1]
        assert on_line in text, text
        return
    assert expected is None, f"expected a failure at {expected[0]}:{expected[1]}"
    assert ks.files[0] == path.resolve()
    assert set(ks.sections) == {"repos", "packages", "system", "post", "partitions", "bootloader"}
    for warning in ks.warnings:  # every warning is "file:line: message" for a file we read
        where, _, message = warning.partition(": ")
        file, _, line = where.rpartition(":")
        assert Path(file) in ks.files and line.isdigit() and message, warning
    if not compat:
        assert not any(w.endswith("(compat)") for w in ks.warnings)
    else:  # later layers re-parse these texts: valid syntax, and a fixed point
        again = _reparsed("".join(ks.sections.values()), version)
        for name, text in ks.sections.items():
            assert _without_keyboard_note(again[name]) == _without_keyboard_note(text), name


def _reparsed(text: str, version: str) -> dict[str, str]:
    handler = makeVersion(version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. duplicate mount points, already reported
        KickstartParser(handler).readKickstartFromString(text)
    return canonical_sections(handler)


def _without_keyboard_note(text: str) -> str:
    """pykickstart renders 'keyboard us --vckeymap=us' with the positional as a comment
    ("# old format: keyboard us"), which a re-parse cannot restore."""
    return "".join(
        line
        for line in text.splitlines(True)
        if not line.startswith(("# old format: keyboard", "# new format:"))
    )


def test_rawhide_based_srbala_kickstarts_parse_strictly_at_the_default_syntax() -> None:
    for name in (
        "fedora-cloud-base.ks",
        "fedora-cloud-base-vagrant.ks",
        "fedora-cloud-base-gcp.ks",
        "fedora-disk-minimal.ks",
        "fedora-disk-server.ks",
        "fedora-disk-workstation.ks",
        "fedora-live-workstation.ks",
    ):
        ks = load(KICKSTARTS / "srbala__fedora-kickstarts" / name)
        assert any(f.name == "fedora-repo-rawhide.ks" for f in ks.files), name
        assert '--name="rawhide"' in ks.sections["repos"], name
        assert not any(w.endswith("(compat)") for w in ks.warnings), name


def test_modular_arm_server_names_the_missing_include() -> None:
    path = KICKSTARTS / "srbala__fedora-kickstarts" / "fedora-modular-arm-server.ks"
    for compat in (False, True):
        with pytest.raises(KickstartError) as info:
            load(path, compat=compat)
        assert info.value.path == str(path.resolve()) and info.value.line == 1
        assert "fedora-arm-base.ks" in str(info.value)


def test_2008_fedora_aos_fails_strict_on_nobase_and_parses_in_compat() -> None:
    path = KICKSTARTS / "srbala__fedora-kickstarts@e25600d" / "fedora-aos.ks"
    with pytest.raises(KickstartError, match=r"fedora-aos.ks:44: '%packages --nobase'"):
        load(path, version="F10")
    with pytest.raises(KickstartError, match=r"fedora-aos.ks:7: 'auth' was removed"):
        load(path)  # at F40 the first construct is 'auth'
    ks = load(path, compat=True)
    assert [w.split(": ", 1)[0].rsplit(":", 1)[1] for w in ks.warnings] == ["7", "44"]
    assert "--nobase" in ks.warnings[1]
    assert "--excludedocs" in ks.sections["packages"]
    assert "generic-logos" in ks.sections["packages"]
    assert 'part / --fstype="ext3" --ondisk=sda --size=450' in ks.sections["partitions"]


def test_appliance_tools_fedora_aos_compat_drops_device_and_nobase() -> None:
    ks = load(
        KICKSTARTS / "livecd-tools__appliance-tools" / "config" / "fedora-aos.ks", compat=True
    )
    assert len(ks.warnings) == 2
    assert ":19: 'device' was removed" in ks.warnings[0]
    assert ":46: '%packages --nobase' was removed" in ks.warnings[1]
    assert "authselect select sssd with-silent-lastlog --force" in ks.sections["system"]


def test_2013_cloud_kickstart_in_compat_mode() -> None:
    """auth dropped, positional extlinux becomes --extlinux, the %post left open at the
    end of the main file is closed; the included repo chain is kept."""
    ks = load(
        KICKSTARTS / "srbala__fedora-kickstarts@41b3b4d" / "fedora-x86_64-cloud.ks", compat=True
    )
    assert [f.name for f in ks.files] == [
        "fedora-x86_64-cloud.ks",
        "fedora-cloud-base.ks",
        "fedora-repo.ks",
        "fedora-repo-rawhide.ks",
    ]
    assert "--extlinux" in ks.sections["bootloader"]
    assert ks.sections["post"].count("%post") == 2
    assert "DEFAULTKERNEL=kernel" in ks.sections["post"]
    assert any(
        "fedora-x86_64-cloud.ks:7: section %post opened here has no %end" in w for w in ks.warnings
    )


def test_arm_vfat_partitions_are_located_in_their_include() -> None:
    ks = load(
        KICKSTARTS / "srbala__fedora-kickstarts@f7b98bb" / "fedora-arm-minimal-vfat.ks", compat=True
    )
    where = [
        (ks.line_of(p).path.name, ks.line_of(p).line, p.mountpoint)
        for p in ks.handler.partition.partitions
    ]
    assert where == [
        ("fedora-arm-vfat-partitioning.ks", 1, "/boot/uboot"),
        ("fedora-arm-vfat-partitioning.ks", 2, "swap"),
        ("fedora-arm-vfat-partitioning.ks", 3, "/"),
        ("fedora-arm-minimal-vfat.ks", 4, "swap"),
        ("fedora-arm-minimal-vfat.ks", 5, "/"),
    ]
    assert any(
        "fedora-arm-minimal-vfat.ks:5: A partition with the mountpoint / has already "
        "been defined." in w
        for w in ks.warnings
    )
