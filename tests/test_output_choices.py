"""Descriptors name only disks a hypervisor can run; users choose the descriptors and their
format; the vmdk and the OVF agree on the adapter, the hardware version and the file name."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from lxml import etree

from ksbake.errors import ConfigError
from ksbake.formats import format_options, pick_format, runnable
from ksbake.layers import l7_convert
from ksbake.layers import l8_descriptor as dsc
from ksbake.settings import Settings, load
from tests.conftest import Workspace, demo_kickstart, fails, ok

XZ = {"raw": {"compression": "xz"}, "qcow2": {"compression": "zlib"}}


def test_a_compressed_raw_disk_is_not_runnable() -> None:
    assert not runnable("raw", {"compression": "xz"})
    assert runnable("raw", {"compression": "none"}) and runnable("vhdx", {})


@pytest.mark.parametrize(
    ("descriptor", "formats", "chosen", "expected"),
    [
        ("virt-image", ["raw", "qcow2"], None, "qcow2"),  # raw.xz first: skipped
        ("libvirt", ["raw", "qcow2"], None, "qcow2"),
        ("virt-image", ["vhdx"], None, None),  # nothing it can describe
        ("libvirt", ["vhdx", "vmdk"], None, "vmdk"),
        ("libvirt", ["qcow2", "vmdk"], "vmdk", "vmdk"),  # descriptor_format wins
        ("virt-image", ["qcow2", "vhdx"], "vhdx", None),  # ... if the descriptor can
        ("ovf", ["qcow2", "vmdk"], None, "vmdk"),
    ],
)
def test_each_descriptor_picks_a_runnable_format_it_can_describe(
    descriptor: str, formats: list[str], chosen: str | None, expected: str | None
) -> None:
    assert pick_format(descriptor, formats, XZ, chosen) == expected


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('formats = ["qcow2"]\ndescriptor_format = "vmdk"\n', "descriptor_format: 'vmdk' is not"),
        (
            'formats = ["raw"]\nraw_compression = "xz"\ndescriptor_format = "raw"\n',
            "descriptor_format: raw compressed with xz",
        ),
        ('descriptors = ["virt-image", "vagrant"]\n', "unknown descriptor 'vagrant'"),
        (
            'formats = ["vmdk"]\nova = true\ndescriptors = ["libvirt"]\n',
            "ova: an OVA packs the OVF descriptor",
        ),
        ('vmdk_adapter = "sata"\n', "vmdk_adapter"),
    ],
)
def test_bad_choices_fail_at_load(tmp_path: Path, toml: str, words: str) -> None:
    (tmp_path / "demo.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load("demo", tmp_path, {})
    assert str(info.value).startswith(str(tmp_path / "demo.toml"))
    assert words in str(info.value)


def _vmdk_descriptor(path: Path) -> str:
    with open(path, "rb") as f:
        header = f.read(512)
        offset, size = struct.unpack_from("<QQ", header, 28)
        f.seek(offset * 512)
        return f.read(size * 512).split(b"\0", 1)[0].decode()


@pytest.mark.parametrize("adapter", ["lsilogic", "ide"])
def test_vmdk_names_its_published_file_and_agrees_with_the_ovf(
    tmp_path: Path, adapter: str
) -> None:
    raw = tmp_path / "sda.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * 2**20)
    conf = Settings(name="demo", formats=("vmdk",), vmdk_adapter=adapter)
    options = format_options("vmdk", conf)
    (record,) = l7_convert.convert([{"name": "sda", "file": str(raw)}], "vmdk", options, tmp_path)
    assert record["object_file"] == "demo-sda.vmdk"
    text = _vmdk_descriptor(tmp_path / "demo-sda.vmdk")
    assert re.search(r'^RW \d+ SPARSE "demo-sda.vmdk"$', text, re.M), text
    assert f'ddb.adapterType = "{adapter}"' in text
    assert 'ddb.virtualHWVersion = "7"' in text

    disk = dsc.DiskImage("sda", "demo-sda.vmdk", "vmdk", record["virtual_size"], 1, "0" * 64)
    ovf = etree.fromstring(dsc.ovf_xml(dsc.Appliance("demo", (disk,), adapter=adapter)))
    ns = {"ovf": dsc.OVF_NS, "rasd": dsc.RASD_NS, "vssd": dsc.VSSD_NS}
    assert ovf.findtext(".//vssd:VirtualSystemType", namespaces=ns) == "vmx-07"
    types = [
        i.findtext("rasd:ResourceType", namespaces=ns) for i in ovf.iterfind(".//ovf:Item", ns)
    ]
    if adapter == "ide":
        assert "5" in types and "6" not in types
    else:
        assert "6" in types and "5" not in types
        assert ovf.findtext(".//rasd:ResourceSubType", namespaces=ns) == "lsilogic"


@pytest.mark.slow
def test_xz_raw_first_describes_qcow2_and_vhdx_alone_builds(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write(
        "demo.toml",
        'formats = ["raw", "qcow2"]\nraw_compression = "xz"\nqcow2_compression = "zstd"\n',
    )
    r = workspace.doit("appliance:demo")
    ok(r)
    out = workspace.root / "out" / "demo"
    virt_image = (out / "demo.xml").read_text()
    assert "demo-sda.qcow2" in virt_image and "raw.xz" not in virt_image
    domain = (out / "demo.libvirt.xml").read_text()
    assert "demo-sda.qcow2" in domain and "type='qcow2'" in domain.replace('"', "'")
    assert "virt-image: qcow2; libvirt: qcow2" in r.out

    workspace.write(
        "demo.toml", 'formats = ["vhdx"]\ndescriptors = ["virt-image", "libvirt", "ovf"]\n'
    )
    r = workspace.doit("appliance:demo")
    ok(r)
    assert (out / "demo-sda.vhdx").is_file()
    assert not (out / "demo.xml").exists() and not (out / "demo.libvirt.xml").exists()
    assert "virt-image: skipped, it cannot run vhdx" in r.out
    assert "ovf: skipped, it needs streamOptimized vmdk" in r.out


def test_descriptor_format_not_built_fails_the_build_at_load(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", 'descriptor_format = "vdi"\n')
    fails(
        workspace,
        "demo.toml: descriptor_format: 'vdi' is not among formats",
        target="kickstart:demo",
    )


def test_manifest_digest_is_a_choice() -> None:
    sha1 = dsc.ovf_manifest({"a.ovf": "1" * 40, "a-sda.vmdk": "2" * 40}, "sha1")
    assert sha1 == f"SHA1(a.ovf)= {'1' * 40}\nSHA1(a-sda.vmdk)= {'2' * 40}\n"
    with pytest.raises(ConfigError, match="sha1 must be 40"):
        dsc.ovf_manifest({"a.ovf": "1" * 64}, "sha1")


@pytest.mark.slow
def test_sha1_manifest_matches_the_published_files(workspace: Workspace) -> None:
    import hashlib

    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", 'formats = ["vmdk"]\novf_digest = "sha1"\nvmdk_adapter = "ide"\n')
    ok(workspace.doit("appliance:demo"))
    out = workspace.root / "out" / "demo"
    lines = (out / "demo.mf").read_text().splitlines()
    assert [ln.split("(")[0] for ln in lines] == ["SHA1", "SHA1"]
    for line in lines:
        name, digest = re.fullmatch(r"SHA1\((.+)\)= ([0-9a-f]{40})", line).groups()
        assert hashlib.sha1((out / name).read_bytes()).hexdigest() == digest
    assert 'ddb.adapterType = "ide"' in _vmdk_descriptor(out / "demo-sda.vmdk")
    ovf = (out / "demo.ovf").read_text()
    assert "<rasd:ResourceType>5</rasd:ResourceType>" in ovf
    populated = int(re.search(r'ovf:populatedSize="(\d+)"', ovf).group(1))
    capacity = int(re.search(r'ovf:capacity="(\d+)"', ovf).group(1))
    assert 0 < populated < capacity


def _osinfo_db(tmp_path: Path) -> Path:
    db = tmp_path / "osinfo"
    for vendor, name, os_id, shorts in (
        ("fedoraproject.org", "fedora-37", "http://fedoraproject.org/fedora/37", ["fedora37"]),
        (
            "fedoraproject.org",
            "fedora-unknown",
            "http://fedoraproject.org/fedora/unknown",
            ["fedora-unknown"],
        ),
        ("debian.org", "debian-11", "http://debian.org/debian/11", ["debian11", "debianbullseye"]),
    ):
        (db / "os" / vendor).mkdir(parents=True, exist_ok=True)
        ids = "".join(f"<short-id>{s}</short-id>" for s in shorts)
        (db / "os" / vendor / f"{name}.xml").write_text(
            f'<libosinfo><os id="{os_id}">{ids}</os></libosinfo>'
        )
    return db


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ({"ID": "fedora", "VERSION_ID": "37"}, "http://fedoraproject.org/fedora/37"),
        ({"ID": "fedora", "VERSION_ID": "99"}, "http://fedoraproject.org/fedora/unknown"),
        ({"ID": "debian", "VERSION_ID": "11"}, "http://debian.org/debian/11"),
        ({"ID": "debian", "VERSION_ID": "12"}, None),  # newer than the database, no -unknown
        ({"ID": "ksbake", "VERSION_ID": "1"}, None),
        ({}, None),
    ],
)
def test_libosinfo_id_from_os_release(tmp_path: Path, release: dict, expected: str | None) -> None:
    assert dsc.osinfo_id(release, _osinfo_db(tmp_path)) == expected


def test_os_release_is_read_from_the_tree_never_through_a_link(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (lower / "usr/lib").mkdir(parents=True)
    (lower / "usr/lib/os-release").write_text('ID=fedora\nVERSION_ID="40"\nNAME="Fedora Linux"\n')
    (lower / "etc").mkdir()
    (lower / "etc/os-release").symlink_to("/etc/passwd")  # absolute: the host's file
    upper.mkdir()
    assert dsc.os_release([upper, lower]) == {
        "ID": "fedora",
        "VERSION_ID": "40",
        "NAME": "Fedora Linux",
    }


def test_domain_metadata_agent_channel_and_user_network() -> None:
    disk = dsc.DiskImage("sda", "a-sda.qcow2", "qcow2", 1 << 30, 1, "0" * 64)
    app = dsc.Appliance("a", (disk,), os_id="http://debian.org/debian/11", guest_agent=True)
    xml = dsc.libvirt_domain_xml(app, ["/x/a-sda.qcow2"], network=None).decode()
    assert '<libosinfo:os id="http://debian.org/debian/11"/>' in xml
    assert '<target type="virtio" name="org.qemu.guest_agent.0"/>' in xml
    assert '<interface type="user">' in xml
    plain = dsc.libvirt_domain_xml(dsc.Appliance("a", (disk,)), ["/x/a-sda.qcow2"]).decode()
    assert "libosinfo" not in plain and "guest_agent" not in plain
    assert '<source network="default"/>' in plain


@pytest.mark.slow
def test_libvirt_network_user_reaches_the_domain(workspace: Workspace) -> None:
    workspace.write("demo.ks", demo_kickstart())
    workspace.write("demo.toml", 'libvirt_network = "user"\n')
    ok(workspace.doit("appliance:demo"))
    domain = (workspace.root / "out/demo/demo.libvirt.xml").read_text()
    assert '<interface type="user">' in domain
    workspace.write("demo.toml", 'libvirt_network = "no network"\n')
    fails(workspace, "demo.toml: key 'libvirt_network' must be a libvirt network name")


def test_xen_pv_boot_beside_hvm_validates_against_image_rng() -> None:
    from conftest import corpus_file

    from tests.test_descriptors import CASES, schema_errors

    rng = etree.RelaxNG(etree.parse(str(corpus_file("virt-image", "schema", "image.rng"))))
    app = dsc.Appliance("pv", CASES["nonet"].disks, xen_pv=True)
    doc = etree.fromstring(dsc.virt_image_xml(app))
    assert schema_errors(rng, doc) == []
    boots = doc.findall("domain/boot")
    assert [b.get("type") for b in boots] == ["hvm", "xen"]
    assert boots[1].findtext("os/loader") == "pygrub"
    assert [d.get("target") for d in boots[1].findall("drive")] == ["xvda"]
    uefi = dsc.Appliance("pv", CASES["nonet"].disks, xen_pv=True, firmware="uefi")
    assert len(etree.fromstring(dsc.virt_image_xml(uefi)).findall("domain/boot")) == 1


def test_xen_pv_comes_from_the_kernel_config(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.1.0-1-amd64").write_text("X=1\nCONFIG_XEN_PV=y\nY=2\n")
    assert dsc.xen_pv_kernel([tmp_path])
    (tmp_path / "boot/config-6.1.0-1-amd64").write_text("X=1\n# CONFIG_XEN_PV is not set\n")
    assert not dsc.xen_pv_kernel([tmp_path])


def test_ovf_product_vendor_and_populated_size() -> None:
    disk = dsc.DiskImage("sda", "a-sda.vmdk", "vmdk", 2 << 30, 5 << 20, "0" * 64, 40 << 20)
    app = dsc.Appliance("a", (disk,), version="2.1", release="3", vendor="Example Corp")
    ovf = etree.fromstring(dsc.ovf_xml(app))
    ns = {"ovf": dsc.OVF_NS}
    product = ovf.find(".//ovf:ProductSection", ns)
    assert [etree.QName(c).localname for c in product] == [
        "Info",
        "Product",
        "Vendor",
        "Version",
        "FullVersion",
    ]
    assert product.findtext("ovf:Vendor", namespaces=ns) == "Example Corp"
    assert ovf.find(".//ovf:Disk", ns).get(f"{{{dsc.OVF_NS}}}populatedSize") == str(40 << 20)


@pytest.mark.slow
def test_every_format_holds_the_same_disk(workspace: Workspace) -> None:
    """qemu-img's own checks on the published files: each format is consistent (check) and
    holds exactly the raw disk's content (compare)."""
    import subprocess

    workspace.write("demo.ks", demo_kickstart())
    workspace.write(
        "demo.toml",
        'formats = ["raw", "qcow2", "vmdk", "vdi", "vhdx"]\nqcow2_compression = "zstd"\n',
    )
    ok(workspace.doit("appliance:demo"))
    out = workspace.root / "out" / "demo"
    raw = out / "demo-sda.raw"
    for fmt in ("qcow2", "vmdk", "vdi", "vhdx"):
        image = out / f"demo-sda.{fmt}"
        if fmt in ("qcow2", "vmdk", "vdi"):  # the formats qemu-img check knows
            check = subprocess.run(
                ["qemu-img", "check", "-f", fmt, image], capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
        same = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", fmt, raw, image],
            capture_output=True,
            text=True,
        )
        assert same.returncode == 0 and "Images are identical" in same.stdout, (fmt, same.stdout)
