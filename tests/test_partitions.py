"""The partition planner: every layout rule, sizes exact in bytes, and one located
KickstartError (with what to write instead) for everything an image cannot honour."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from ksbake.errors import ConfigError, KickstartError
from ksbake.kickstart import Kickstart, load
from ksbake.layers.l1_kickstart.partitions import extended_partition, plan, plan_with_warnings
from ksbake.layout import FSTYPES, DiskPlan, MiB, PartitionPlan, Plan


def _ks(tmp_path: Path, text: str, name: str = "t.ks") -> Kickstart:
    """A kickstart from ``text`` (dedented), written to ``tmp_path / name``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load(path)


def _where(tmp_path: Path, line: int, name: str = "t.ks") -> str:
    return f"{(tmp_path / name).resolve()}:{line}: "


def _error(tmp_path: Path, text: str, disk_sizes: dict[str, int] | None = None) -> KickstartError:
    with pytest.raises(KickstartError) as info:
        plan(_ks(tmp_path, text), disk_sizes)
    return info.value


def _parts(disk: DiskPlan) -> list[tuple[int, str | None, str, int, int, bool]]:
    """(number, mountpoint, fstype, start MiB, size MiB, logical) per partition."""
    return [
        (p.number, p.mountpoint, p.fstype, p.start // MiB, p.size // MiB, p.logical)
        for p in disk.partitions
    ]


def _aligned(result: Plan) -> None:
    for disk in result.disks:
        assert disk.size % MiB == 0
        end = MiB
        for p in sorted(disk.partitions, key=lambda p: p.start):
            assert p.start % MiB == 0 and p.size % MiB == 0 and p.size > 0
            assert p.start >= end  # no overlap, first at 1 MiB at the earliest
            end = p.start + p.size
        assert end <= disk.size - (MiB if disk.label == "gpt" else 0)


# --- sizes, alignment, defaults --------------------------------------------------------


def test_sizes_are_mib_and_the_first_partition_starts_at_1_mib(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=200
        part / --size=1000 --fstype=xfs
        """,
        )
    )
    (disk,) = result.disks
    assert (disk.name, disk.label) == ("sda", "msdos")
    boot, root = disk.partitions
    assert boot == PartitionPlan(
        number=1, mountpoint="/boot", fstype="ext4", start=MiB, size=200 * MiB
    )
    assert root == PartitionPlan(
        number=2, mountpoint="/", fstype="xfs", start=201 * MiB, size=1000 * 1048576
    )
    assert disk.size == (1 + 200 + 1000) * MiB  # 1 MiB lead, no tail on msdos
    _aligned(result)


def test_gpt_keeps_1_mib_for_the_backup_header(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        clearpart --all --initlabel --disklabel=gpt
        zerombr
        part / --size=1000
        """,
        )
    )
    (disk,) = result.disks
    assert disk.label == "gpt"
    assert _parts(disk) == [(1, "/", "ext4", 1, 1000, False)]
    assert disk.size == 1002 * MiB
    _aligned(result)


def test_swap_and_options_are_recorded(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=2048 --fstype=ext4 --label=root --fsoptions="noatime,rw" --fsprofile=news
        part /srv --size=100 --fstype=xfs --mkfsoptions="-m bigtime=0"
        part swap --size=512
        """,
        )
    )
    root, srv, swap = result.disks[0].partitions
    assert (root.label, root.fsoptions, root.fsprofile, root.mkfsoptions) == (
        "root",
        "noatime,rw",
        "news",
        None,
    )
    assert (srv.fstype, srv.mkfsoptions, srv.label, srv.fsoptions) == (
        "xfs",
        "-m bigtime=0",
        None,
        None,
    )
    assert (swap.mountpoint, swap.fstype, swap.size) == (None, "swap", 512 * MiB)


def test_every_supported_fstype(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        clearpart --disklabel=gpt
        part /a --size=10 --fstype=ext2
        part /b --size=10 --fstype=ext3
        part / --size=10 --fstype=ext4
        part /d --size=10 --fstype=xfs
        part /e --size=10 --fstype=vfat
        part /boot/efi --size=10 --fstype=efi
        part swap --size=10 --fstype=swap
        part biosboot --size=1 --fstype=biosboot
        """,
        )
    )
    assert [p.fstype for p in result.disks[0].partitions] == [
        "efi",
        "biosboot",
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "vfat",
        "swap",
    ]


def test_fsprofile_on_a_non_ext_filesystem_is_dropped_with_a_warning(tmp_path: Path) -> None:
    result, warnings = plan_with_warnings(
        _ks(tmp_path, "part / --size=10 --fstype=xfs --fsprofile=news\n")
    )
    assert result.disks[0].partitions[0].fsprofile is None
    assert warnings == [
        _where(tmp_path, 1) + "--fsprofile only applies to ext2/3/4; ignored for xfs"
    ]


def test_reformatting_never_changes_the_plan(tmp_path: Path) -> None:
    a = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=200 --fstype=ext4 --ondisk=sda
        part / --size=1000 --grow --label=root
        """,
            "a.ks",
        )
    )
    b = plan(
        _ks(
            tmp_path,
            """
        # the same layout, written differently
        part   /boot/   --fstype ext4   --ondrive=/dev/sda --size 200

        partition / --label="root" --grow --size=1000 --fstype=EXT4
        """,
            "b.ks",
        )
    )
    assert a == b and a.to_json() == b.to_json()
    assert Plan.from_dict(a.to_dict()) == a


def test_grow_without_a_disk_size_keeps_its_size(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=4096 --grow --maxsize=8000
        part /data --grow
        """,
        )
    )
    assert _parts(result.disks[0]) == [
        (1, "/", "ext4", 1, 4096, False),
        (2, "/data", "ext4", 4097, 1, False),
    ]
    assert result.disks[0].size == 4098 * MiB


# --- fixed disk sizes and --grow -------------------------------------------------------


def test_grow_fills_a_fixed_disk(tmp_path: Path) -> None:
    ks = _ks(
        tmp_path,
        """
        part /boot --size=200
        part / --size=1000 --grow
        """,
    )
    result = plan(ks, {"sda": 4096 * MiB})
    assert result.disks[0].size == 4096 * MiB
    assert _parts(result.disks[0]) == [
        (1, "/boot", "ext4", 1, 200, False),
        (2, "/", "ext4", 201, 4095 - 200, False),
    ]
    _aligned(result)


def test_grow_on_gpt_leaves_the_tail_free(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        clearpart --disklabel=gpt
        part / --size=1000 --grow
        """,
        ),
        {"sda": 2048 * MiB},
    )
    (root,) = result.disks[0].partitions
    assert (root.start, root.size) == (MiB, 2046 * MiB)
    assert root.start + root.size == result.disks[0].size - MiB


def test_grow_shares_free_space_in_proportion_to_size(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=100 --grow
        part /var --size=300 --grow
        part /fixed --size=100
        """,
        ),
        {"sda": 1101 * MiB},
    )  # 1100 usable, 500 requested, 600 free
    assert _parts(result.disks[0]) == [
        (1, "/", "ext4", 1, 250, False),
        (2, "/var", "ext4", 251, 750, False),
        (3, "/fixed", "ext4", 1001, 100, False),
    ]


def test_grow_rounding_leftovers_go_one_mib_each_in_kickstart_order(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=1 --grow
        part /a --size=1 --grow
        part /b --size=1 --grow
        """,
        ),
        {"sda": 9 * MiB},
    )  # 8 usable, 3 base, 5 free: 1 each, then 2 left over
    assert [p.size // MiB for p in result.disks[0].partitions] == [3, 3, 2]


def test_maxsize_caps_growth_and_the_rest_goes_to_uncapped(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part swap --size=100 --grow --maxsize=200
        part / --size=100 --grow
        """,
        ),
        {"sda": 1001 * MiB},
    )  # 1000 usable, 800 free
    assert _parts(result.disks[0]) == [
        (1, None, "swap", 1, 200, False),
        (2, "/", "ext4", 201, 800, False),
    ]


def test_all_growers_capped_leaves_free_space_at_the_end(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=100 --grow --maxsize=150
        """,
        ),
        {"sda": 1024 * MiB},
    )
    (root,) = result.disks[0].partitions
    assert root.size == 150 * MiB and result.disks[0].size == 1024 * MiB


def test_grow_without_size_starts_at_1_mib(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=200
        part / --grow
        """,
        ),
        {"sda": 1024 * MiB},
    )
    assert [p.size // MiB for p in result.disks[0].partitions] == [200, 823]


def test_disk_sizes_accept_dev_names(tmp_path: Path) -> None:
    result = plan(
        _ks(tmp_path, "part / --size=10 --grow --ondisk=/dev/vda\n"), {"/dev/vda": 64 * MiB}
    )
    assert result.disks[0].name == "vda" and result.disks[0].partitions[0].size == 63 * MiB


def test_does_not_fit_names_the_lines_the_need_and_the_size_given(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        """
        clearpart --disklabel=gpt
        part /boot --size=1024 --ondisk=sda
        part / --size=3072 --grow
        part /data --size=10 --ondisk=sdb
        """,
        {"sda": 4096 * MiB},
    )
    text = str(err)
    assert text.startswith(_where(tmp_path, 2))
    assert (err.path, err.line) == (str((tmp_path / "t.ks").resolve()), 2)
    assert "disk sda is too small" in text
    assert "lines 2, 3" in text
    assert "need 4098 MiB" in text  # 4096 + 1 MiB lead + 1 MiB GPT tail
    assert "give it 4096 MiB" in text
    assert "at least 4098 MiB" in text


def test_a_disk_size_for_a_disk_no_part_line_uses_is_a_config_error(tmp_path: Path) -> None:
    ks = _ks(tmp_path, "part / --size=10\n")
    with pytest.raises(ConfigError, match="disk sdb, which no part line uses"):
        plan(ks, {"sdb": 100 * MiB})
    with pytest.raises(ConfigError, match="not a whole number of MiB"):
        plan(ks, {"sda": 100 * MiB + 512})
    with pytest.raises(ConfigError, match="positive number of bytes"):
        plan(ks, {"sda": 0})


# --- msdos primary / extended / logical ------------------------------------------------


def test_msdos_up_to_four_partitions_are_primary_in_kickstart_order(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=100
        part swap --size=100
        part /var --size=100
        part / --size=100 --asprimary
        """,
        )
    )
    assert _parts(result.disks[0]) == [
        (1, "/boot", "ext4", 1, 100, False),
        (2, None, "swap", 101, 100, False),
        (3, "/var", "ext4", 201, 100, False),
        (4, "/", "ext4", 301, 100, False),
    ]
    assert extended_partition(result.disks[0]) is None


def test_msdos_more_than_four_gives_extended_and_logical_with_ebr_gaps(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=100
        part / --size=200
        part /var --size=300
        part /home --size=400
        part /tmp --size=500
        part swap --size=600
        """,
        )
    )
    (disk,) = result.disks
    assert _parts(disk) == [
        (1, "/boot", "ext4", 1, 100, False),
        (2, "/", "ext4", 101, 200, False),
        (3, "/var", "ext4", 301, 300, False),
        # extended #4 from 601 MiB; each logical after its 1 MiB EBR
        (5, "/home", "ext4", 602, 400, True),
        (6, "/tmp", "ext4", 1003, 500, True),
        (7, None, "swap", 1504, 600, True),
    ]
    assert disk.size == (1 + 2100 + 3) * MiB
    assert extended_partition(disk) == (601 * MiB, (2104 - 601) * MiB)
    _aligned(result)


def test_msdos_asprimary_partitions_come_first_among_primaries(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /a --size=10
        part /b --size=10
        part /c --size=10
        part /d --size=10
        part / --size=10 --asprimary
        part /boot/efi --size=10 --fstype=efi
        """,
        )
    )
    assert [(p.number, p.mountpoint, p.logical) for p in result.disks[0].partitions] == [
        (1, "/boot/efi", False),
        (2, "/", False),
        (3, "/a", False),
        (5, "/b", True),
        (6, "/c", True),
        (7, "/d", True),
    ]


def test_msdos_fixed_disk_with_logicals_grows_inside_the_extended(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /a --size=10
        part /b --size=10
        part /c --size=10
        part /d --size=10
        part / --size=10 --grow
        """,
        ),
        {"sda": 100 * MiB},
    )  # 100 - 1 lead - 2 EBR - 50 = 47 free
    (disk,) = result.disks
    assert _parts(disk)[-1] == (6, "/", "ext4", 43, 57, True)
    assert disk.partitions[-1].start + disk.partitions[-1].size == disk.size
    _aligned(result)


def test_msdos_more_than_four_asprimary_is_an_error(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "".join(f"part /p{i} --size=10 --asprimary\n" for i in range(5)) + "part / --size=10\n",
    )
    assert str(err).startswith(_where(tmp_path, 5))
    assert "more than 4 --asprimary" in str(err) and "--disklabel=gpt" in str(err)


def test_msdos_four_asprimary_with_an_extended_partition_is_an_error(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "".join(f"part /p{i} --size=10 --asprimary\n" for i in range(4)) + "part / --size=10\n",
    )
    assert str(err).startswith(_where(tmp_path, 4))
    assert "only 3 primary partitions are left" in str(err)


def test_gpt_has_no_primary_limit_and_ignores_asprimary(tmp_path: Path) -> None:
    lines = "".join(f"part /p{i} --size=10 --asprimary\n" for i in range(7))
    result = plan(_ks(tmp_path, "clearpart --disklabel=gpt\n" + lines + "part / --size=10\n"))
    (disk,) = result.disks
    assert [p.number for p in disk.partitions] == list(range(1, 9))
    assert not any(p.logical for p in disk.partitions)
    assert extended_partition(disk) is None
    assert disk.size == (1 + 80 + 1) * MiB


# --- biosboot, EFI ---------------------------------------------------------------------


def test_gpt_biosboot_goes_first_with_1_mib(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        clearpart --all --initlabel --disklabel=gpt
        part /boot --size=500
        part / --size=2000
        part biosboot --fstype=biosboot
        """,
        )
    )
    assert _parts(result.disks[0]) == [
        (1, None, "biosboot", 1, 1, False),
        (2, "/boot", "ext4", 2, 500, False),
        (3, "/", "ext4", 502, 2000, False),
    ]
    assert result.disks[0].size == 2503 * MiB


def test_biosboot_options_without_a_filesystem_are_dropped(tmp_path: Path) -> None:
    result, warnings = plan_with_warnings(
        _ks(
            tmp_path,
            """
        clearpart --disklabel=gpt
        part biosboot --size=2 --label=bios
        part / --size=10
        """,
        )
    )
    assert result.disks[0].partitions[0].label is None
    assert result.disks[0].partitions[0].size == 2 * MiB
    assert warnings == [
        _where(tmp_path, 2) + "a biosboot partition has no filesystem; label ignored"
    ]


def test_biosboot_on_msdos_is_dropped_with_a_warning(tmp_path: Path) -> None:
    result, warnings = plan_with_warnings(
        _ks(
            tmp_path,
            """
        part biosboot --fstype=biosboot --size=1
        part / --size=100
        """,
        )
    )
    assert _parts(result.disks[0]) == [(1, "/", "ext4", 1, 100, False)]
    assert len(warnings) == 1
    assert warnings[0].startswith(_where(tmp_path, 1) + "a biosboot partition is only for GPT")


def test_efi_partition_goes_first(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        clearpart --disklabel=gpt
        part / --size=2000
        part /boot --size=500
        part /boot/efi --fstype=efi --size=600
        """,
        )
    )
    assert _parts(result.disks[0]) == [
        (1, "/boot/efi", "efi", 1, 600, False),
        (2, "/", "ext4", 601, 2000, False),
        (3, "/boot", "ext4", 2601, 500, False),
    ]


@pytest.mark.parametrize(
    ("option", "fstype"), [("", "efi"), ("--fstype=efi", "efi"), ("--fstype=vfat", "vfat")]
)
def test_boot_efi_is_efi_or_vfat(tmp_path: Path, option: str, fstype: str) -> None:
    result = plan(_ks(tmp_path, f"part / --size=100\npart /boot/efi --size=100 {option}\n"))
    assert result.disks[0].partitions[0].mountpoint == "/boot/efi"
    assert result.disks[0].partitions[0].fstype == fstype


def test_boot_efi_with_another_filesystem_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "part / --size=100\npart /boot/efi --size=100 --fstype=ext4\n")
    assert str(err).startswith(_where(tmp_path, 2)) and "write --fstype=efi" in str(err)


def test_efi_elsewhere_than_boot_efi_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "part / --size=100\npart /efi --size=100 --fstype=efi\n")
    assert str(err).startswith(_where(tmp_path, 2)) and "mounted at /boot/efi" in str(err)


# --- disks -----------------------------------------------------------------------------


def test_two_disks_with_ondisk_and_dev_spelling(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /data --size=300 --ondisk=/dev/sdb
        part /boot --size=200 --ondisk=sda
        part / --size=1000 --ondrive=sda
        part /srv --size=100 --ondisk=sdb
        """,
        )
    )
    assert [d.name for d in result.disks] == ["sda", "sdb"]
    sda, sdb = result.disks
    assert _parts(sda) == [(1, "/boot", "ext4", 1, 200, False), (2, "/", "ext4", 201, 1000, False)]
    assert _parts(sdb) == [
        (1, "/data", "ext4", 1, 300, False),
        (2, "/srv", "ext4", 301, 100, False),
    ]
    assert (sda.size, sdb.size) == (1201 * MiB, 401 * MiB)
    assert result.boot_disk() == sda


def test_no_ondisk_means_the_first_disk_named(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part /boot --size=200
        part / --size=1000 --ondisk=vda
        part swap --size=100
        """,
        )
    )
    assert [d.name for d in result.disks] == ["vda"]
    assert len(result.disks[0].partitions) == 3


def test_no_ondisk_anywhere_means_sda(tmp_path: Path) -> None:
    assert [d.name for d in plan(_ks(tmp_path, "part / --size=10\n")).disks] == ["sda"]


def test_fixed_size_on_one_disk_only(tmp_path: Path) -> None:
    result = plan(
        _ks(
            tmp_path,
            """
        part / --size=100 --grow --ondisk=sda
        part /data --size=100 --grow --ondisk=sdb
        """,
        ),
        {"sdb": 1024 * MiB},
    )
    assert [(d.name, d.size // MiB) for d in result.disks] == [("sda", 101), ("sdb", 1024)]


@pytest.mark.parametrize(
    "disk",
    ["/dev/disk/by-id/ata-QEMU_HARDDISK", "disk/by-path/x", "/dev/mapper/root", "LABEL=root"],
)
def test_disk_named_by_path_is_refused(tmp_path: Path, disk: str) -> None:
    err = _error(tmp_path, f"part /boot --size=10\npart / --size=10 --ondisk={disk}\n")
    assert str(err).startswith(_where(tmp_path, 2))
    assert f"--ondisk={disk}" in str(err) and "write --ondisk=sda" in str(err)


# --- duplicates, missing /, mount points -----------------------------------------------


def test_duplicate_mount_point_last_wins_with_a_warning(tmp_path: Path) -> None:
    ks = _ks(
        tmp_path,
        """
        part / --size=5120 --fstype=ext4
        part swap --size=100
        part swap --size=200
        part / --size=7680 --fstype=xfs
        """,
    )
    result, warnings = plan_with_warnings(ks)
    assert _parts(result.disks[0]) == [
        (1, None, "swap", 1, 100, False),
        (2, None, "swap", 101, 200, False),
        (3, "/", "xfs", 301, 7680, False),
    ]
    assert warnings == [
        _where(tmp_path, 4) + "mount point / is also defined at "
        f"{(tmp_path / 't.ks').resolve()}:1; this later line wins"
    ]
    assert plan(ks) == result


def test_duplicate_in_an_include_is_located_in_its_file(tmp_path: Path) -> None:
    (tmp_path / "parts.ks").write_text("part / --size=100\npart /boot --size=50\n")
    ks = _ks(
        tmp_path,
        """
        %include parts.ks
        part / --size=200
        """,
    )
    result, warnings = plan_with_warnings(ks)
    assert [p.mountpoint for p in result.disks[0].partitions] == ["/boot", "/"]
    assert warnings == [
        _where(tmp_path, 2) + "mount point / is also defined at "
        f"{(tmp_path / 'parts.ks').resolve()}:1; this later line wins"
    ]


def test_no_root_partition_is_an_error_with_a_hint(tmp_path: Path) -> None:
    err = _error(tmp_path, "part /boot --size=100\npart /data --size=100\n")
    assert str(err).startswith(_where(tmp_path, 1))
    assert "no part, logvol or btrfs line mounts /" in str(err) and "part / --size=" in str(err)


def test_no_part_lines_at_all_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "zerombr\nclearpart --all\n")
    assert err.path == str((tmp_path / "t.ks").resolve()) and err.line is None
    assert "no part lines" in str(err) and "part / --size=4096" in str(err)


@pytest.mark.parametrize("mountpoint", ["boot", "None", "data/x"])
def test_mount_point_must_be_absolute(tmp_path: Path, mountpoint: str) -> None:
    err = _error(tmp_path, f"part / --size=10\npart {mountpoint} --size=10\n")
    assert str(err).startswith(_where(tmp_path, 2)) and "absolute path" in str(err)


def test_part_without_size_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "part / --fstype=ext4\n")
    assert str(err).startswith(_where(tmp_path, 1)) and "--size=MiB" in str(err)


def test_maxsize_smaller_than_size_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "part / --size=100 --grow --maxsize=50\n")
    assert str(err).startswith(_where(tmp_path, 1)) and "--maxsize=50" in str(err)


# --- fstypes ---------------------------------------------------------------------------

SUPPORTED = ", ".join(FSTYPES)  # the error lists every type the disks layer can make


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("part /data --size=10 --fstype=ntfs", "--fstype=ntfs is not supported"),
        ("part /data --size=10 --fstype=zfs", "--fstype=zfs is not supported"),
        ("part /boot/efi --size=10 --fstype=FAT32", "write --fstype=vfat"),
    ],
)
def test_unknown_fstype_names_the_line_and_the_supported_list(
    tmp_path: Path, line: str, words: str
) -> None:
    err = _error(tmp_path, f"part / --size=10\n{line}\n")
    assert str(err).startswith(_where(tmp_path, 2))
    assert f"supported: {SUPPORTED}" in str(err) and words in str(err)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("part swap --size=10 --fstype=ext4", "part swap with --fstype=ext4"),
        ("part /swap --size=10 --fstype=swap", "swap is not mounted"),
        ("part biosboot --size=1 --fstype=ext4", "part biosboot with --fstype=ext4"),
        ("part /bios --size=1 --fstype=biosboot", "biosboot partition is not mounted"),
    ],
)
def test_mount_point_and_fstype_must_agree(tmp_path: Path, line: str, words: str) -> None:
    err = _error(tmp_path, f"part / --size=10\n{line}\n")
    assert str(err).startswith(_where(tmp_path, 2)) and words in str(err)


def test_clearpart_disklabel_must_be_msdos_or_gpt(tmp_path: Path) -> None:
    err = _error(tmp_path, "part / --size=10\nclearpart --all --disklabel=mac\n")
    assert str(err).startswith(_where(tmp_path, 2)) and "--disklabel=gpt" in str(err)


def test_clearpart_and_zerombr_options_are_accepted(tmp_path: Path) -> None:
    a = plan(
        _ks(
            tmp_path,
            "zerombr\nclearpart --all --initlabel --drives=sda,sdb\npart / --size=10\n",
            "a.ks",
        )
    )
    b = plan(_ks(tmp_path, "clearpart --none\npart / --size=10\n", "b.ks"))
    c = plan(_ks(tmp_path, "part / --size=10\n", "c.ks"))
    assert a == b == c


# --- constructs an image cannot honour -------------------------------------------------

UNSUPPORTED = [
    pytest.param(
        "part pv.01 --size=1000\nvolgroup vg pv.01\n"
        "logvol none --vgname=vg --name=pool --size=500 --thinpool\n"
        "logvol / --vgname=vg --name=root --size=400 --thin --poolname=pool\n",
        3,
        "thin provisioning is not supported",
        "drop --thinpool/--thin",
        id="thinpool",
    ),
    pytest.param(
        "part /boot --size=500\nvolgroup vg --useexisting\n"
        "logvol / --vgname=vg --name=root --useexisting\n",
        2,
        "no existing volume group",
        "drop the option",
        id="volgroup-useexisting",
    ),
    pytest.param(
        "part / --size=100\nlogvol /home --vgname=nosuch --name=h --size=10\n",
        2,
        "no such volume group",
        "add a volgroup line",
        id="logvol-unknown-vg",
    ),
    pytest.param(
        "part btrfs.01 --size=1000\npart btrfs.02 --size=1000\n"
        "btrfs / --data=raid1 btrfs.01 btrfs.02\n",
        3,
        "multi-device btrfs is not supported",
        "one member partition",
        id="btrfs-multi-device",
    ),
    pytest.param(
        "part btrfs.01 --size=1000\nbtrfs none --label=x btrfs.01\n"
        "btrfs / --subvol --name=root x\nbtrfs /srv --subvol --name=root x\n",
        4,
        "two btrfs subvolumes are named root",
        "its own --name",
        id="btrfs-duplicate-subvolume",
    ),
    pytest.param(
        "autopart --type=thinp\n",
        1,
        "autopart --type=thinp is not supported",
        "--type=lvm",
        id="autopart-thinp",
    ),
    pytest.param(
        "autopart --encrypted --passphrase=secret\n",
        1,
        "autopart --encrypted",
        "drop --encrypted",
        id="autopart-encrypted",
    ),
    pytest.param(
        "part raid.01 --size=100\npart raid.02 --size=100 --ondisk=sdb\n"
        "raid / --level=1 --device=md0 --fstype=xfs raid.01 raid.02\n",
        1,
        "software RAID",
        "part / --size=N --fstype=xfs",
        id="raid",
    ),
    pytest.param(
        "part / --size=100\nignoredisk --drives=sdb\n",
        2,
        "ignoredisk",
        "delete the line",
        id="ignoredisk",
    ),
    pytest.param(
        "mount /dev/sda1 /\n", 1, "mount assigns existing devices", "write part lines", id="mount"
    ),
    pytest.param(
        "part / --onpart=sda1\n",
        1,
        "--onpart/--usepart=sda1",
        "write 'part / --size=N'",
        id="onpart",
    ),
    pytest.param(
        "part /boot --size=10\npart / --usepart=LABEL=root\n",
        2,
        "--onpart/--usepart=LABEL=root",
        "write 'part / --size=N'",
        id="usepart",
    ),
    pytest.param(
        "part / --size=100 --encrypted --passphrase=secret\n",
        1,
        "--encrypted",
        "drop --encrypted",
        id="encrypted",
    ),
    pytest.param(
        "part / --onpart=sda1 --size=100 --resize\n",
        1,
        "--resize",
        "drop --resize and --onpart",
        id="resize",
    ),
    pytest.param(
        "part / --size=100 --noformat\n", 1, "--noformat", "drop --noformat", id="noformat"
    ),
    pytest.param(
        "part / --size=100\npart raid.11 --size=100\n",
        2,
        "software RAID",
        "plain part lines",
        id="raid-mountpoint",
    ),
    pytest.param(
        "part / --onbiosdisk=80 --size=10\n",
        1,
        "--onbiosdisk",
        "use --ondisk=DISK",
        id="onbiosdisk",
    ),
]


@pytest.mark.parametrize(("text", "line", "words", "instead"), UNSUPPORTED)
def test_unsupported_construct_fails_once_with_its_line_and_replacement(
    tmp_path: Path, text: str, line: int, words: str, instead: str
) -> None:
    err = _error(tmp_path, text)
    assert str(err).startswith(_where(tmp_path, line)), str(err)
    assert (err.path, err.line) == (str((tmp_path / "t.ks").resolve()), line)
    assert words in err.message, str(err)
    assert err.hint and instead in err.hint, str(err)
    assert "secret" not in str(err)


def test_the_first_problem_in_kickstart_order_is_reported(tmp_path: Path) -> None:
    (tmp_path / "disk.ks").write_text("part /boot --size=10 --fstype=ntfs\n")
    err = _error(
        tmp_path,
        """
        part / --size=100
        %include disk.ks
        ignoredisk --only-use=sda
        part /x --size=10 --noformat
        """,
    )
    assert str(err).startswith(f"{(tmp_path / 'disk.ks').resolve()}:1: --fstype=ntfs")


def test_errors_are_one_line(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "part / --size=10\nlogvol /home --vgname=vg --name=h --size=10\n"
        "volgroup vg pv.01\npart pv.01 --size=10\n",
    )
    assert "\n" not in str(err)
    assert re.match(rf"{re.escape(_where(tmp_path, 3))}volume group vg is too small", str(err))


def test_ignoredisk_only_use_is_accepted_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "ks.ks"
    path.write_text("part / --size=100 --ondisk=vda\nignoredisk --only-use=vda\n")
    plan_, warnings = plan_with_warnings(load(path))
    assert [d.name for d in plan_.disks] == ["vda"]
    assert warnings == [
        f"{path.resolve()}:2: ignoredisk --only-use has no effect on an image "
        "(each disk the part lines name is its own image file)"
    ]
