"""Descriptors: virt-image XML, libvirt domain XML, OVF/OVA.

Golden files (virt-manager style): every generated descriptor of the cases below is compared
byte for byte with ``tests/data/descriptors/<case>.<kind>``. After an intended change, rewrite
them with ``KSBAKE_REGENERATE_GOLDEN=1 pytest tests/test_descriptors.py`` and review the diff.

Structure is also checked against real files in the corpus: virt-image XML against the 2008
RelaxNG grammar (``image.rng``, with the documented deviations where virtinst's parser was
more permissive), libvirt XML against libvirt's own schema with ``virt-xml-validate`` (slow
test; Debian packages ``libvirt-clients`` and ``libxml2-utils``) and against the corpus import
domains, OVF against the VMware and VirtualBox exports.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import corpus_file
from lxml import etree

from ksbake.errors import ConfigError
from ksbake.formats import FORMATS
from ksbake.hashing import sha256_file
from ksbake.layers import l8_descriptor as dsc
from ksbake.layers.l8_descriptor import Appliance, DiskImage

GOLDEN = Path(__file__).parent / "data" / "descriptors"
REGENERATE = os.environ.get("KSBAKE_REGENERATE_GOLDEN") == "1"
OVF = dsc.OVF_NS
RASD = dsc.RASD_NS
GiB = 1024**3


def disk(name: str, appliance: str, fmt: str, virtual: int, size: int) -> DiskImage:
    return DiskImage(
        disk=name,
        file=f"{appliance}-{name}.{fmt}",
        format=fmt,
        virtual_size=virtual,
        file_size=size,
        sha256=hashlib.sha256(f"{appliance}-{name}.{fmt}".encode()).hexdigest(),
    )


# The appliances of the golden cases: name -> Appliance.
CASES: dict[str, Appliance] = {
    # configs/demo.ks: one disk, one network line, appliance-creator's defaults.
    "demo": Appliance(
        name="demo",
        version="1.0",
        release="1",
        disks=(disk("sda", "demo", "qcow2", 1 * GiB, 95_944_704),),
    ),
    # configs/ovirt-wui.ks: /boot, / and swap on sda, /data on sdb.
    "ovirt-wui": Appliance(
        name="ovirt-wui",
        version="0.91",
        release="1",
        disks=(
            disk("sda", "ovirt-wui", "qcow2", 4 * GiB, 301_137_920),
            disk("sdb", "ovirt-wui", "qcow2", 2 * GiB, 2_162_688),
        ),
    ),
    "uefi": Appliance(
        name="demo-uefi",
        firmware="uefi",
        vcpus=2,
        memory_mib=1024,
        disks=(disk("sda", "demo-uefi", "qcow2", 2 * GiB, 120_848_384),),
    ),
    # No network line: no NIC at all (appliance-creator wrote no <interface/>).
    "nonet": Appliance(
        name="nonet",
        nics=0,
        disks=(disk("sda", "nonet", "raw", 1 * GiB, 1 * GiB),),
    ),
    "vmdk": Appliance(
        name="demo",
        version="1.0",
        release="1",
        disks=(disk("sda", "demo", "vmdk", 1 * GiB, 41_550_336),),
    ),
    # Two vmdk disks, the boot disk second in --ondisk order, no NIC, UEFI.
    "vmdk-2disk": Appliance(
        name="store",
        version="2.3",
        nics=0,
        firmware="uefi",
        boot_disk="sdb",
        disks=(
            disk("sda", "store", "vmdk", 8 * GiB, 1_114_112),
            disk("sdb", "store", "vmdk", 2 * GiB, 52_428_800),
        ),
    ),
}


def image_dir(app: Appliance) -> list[str]:
    return [f"/var/lib/libvirt/images/{d.file}" for d in app.disks]


def libvirt_default(app: Appliance) -> bytes:
    return dsc.libvirt_domain_xml(app, image_dir(app))


def libvirt_test_style(app: Appliance) -> bytes:
    """What a boot test on this machine uses: TCG, serial to a file, user-mode network."""
    return dsc.libvirt_domain_xml(
        app,
        image_dir(app),
        domain_type="qemu",
        emulator="/usr/bin/qemu-system-x86_64",
        serial_log=f"/var/log/ksbake/{app.name}-serial.log",
        network=None,
        graphics=False,
    )


def manifest(app: Appliance) -> bytes:
    ovf_name = f"{app.name}.ovf"
    files = {ovf_name: hashlib.sha256(dsc.ovf_xml(app)).hexdigest()}
    files |= {d.file: d.sha256 for d in app.ordered_disks()}
    return dsc.ovf_manifest(files).encode()


# (case, kind) -> generator of the golden file's content.
GOLDEN_FILES: dict[tuple[str, str], Callable[[Appliance], bytes]] = {
    ("demo", "virt-image.xml"): dsc.virt_image_xml,
    ("demo", "libvirt.xml"): libvirt_default,
    ("ovirt-wui", "virt-image.xml"): dsc.virt_image_xml,
    ("ovirt-wui", "libvirt.xml"): libvirt_default,
    ("uefi", "virt-image.xml"): dsc.virt_image_xml,
    ("uefi", "libvirt.xml"): libvirt_default,
    ("nonet", "virt-image.xml"): dsc.virt_image_xml,
    ("nonet", "libvirt.xml"): libvirt_test_style,
    ("vmdk", "ovf"): dsc.ovf_xml,
    ("vmdk", "mf"): manifest,
    ("vmdk-2disk", "ovf"): dsc.ovf_xml,
    ("vmdk-2disk", "virt-image.xml"): dsc.virt_image_xml,
    ("vmdk-2disk", "libvirt.xml"): libvirt_default,
}


def generated(case: str, kind: str) -> bytes:
    return GOLDEN_FILES[(case, kind)](CASES[case])


def all_of(kind: str) -> list[tuple[str, bytes]]:
    return [(case, generated(case, k)) for (case, k) in GOLDEN_FILES if k == kind]


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize(("case", "kind"), sorted(GOLDEN_FILES))
def test_golden(case: str, kind: str) -> None:
    path = GOLDEN / f"{case}.{kind}"
    data = generated(case, kind)
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"missing {path}: run with KSBAKE_REGENERATE_GOLDEN=1"
    assert data == path.read_bytes(), f"{path} differs (KSBAKE_REGENERATE_GOLDEN=1 rewrites it)"


def test_output_is_deterministic() -> None:
    for (case, kind), make in GOLDEN_FILES.items():
        assert make(CASES[case]) == make(CASES[case]), (case, kind)


# --------------------------------------------------------------------------- virt-image


@pytest.fixture(scope="module")
def image_rng() -> etree.RelaxNG:
    """virt-image's RelaxNG grammar from the corpus (the tests using it skip without it)."""
    return etree.RelaxNG(etree.parse(str(corpus_file("virt-image", "schema", "image.rng"))))


def schema_errors(rng: etree.RelaxNG, doc: etree._Element) -> list[str]:
    rng.validate(doc)
    return [e.message for e in rng.error_log]


def test_virt_image_shape_is_appliance_creators() -> None:
    root = etree.fromstring(generated("ovirt-wui", "virt-image.xml"))
    assert [c.tag for c in root] == ["name", "domain", "storage"]
    name = root.find("name")
    assert (name.text, name.get("version"), name.get("release")) == ("ovirt-wui", "0.91", "1")
    assert root.find("domain/boot").get("type") == "hvm"
    assert root.find("domain/boot/guest/arch").text == "x86_64"
    assert root.find("domain/boot/os/loader").get("dev") == "hd"
    drives = [(d.get("disk"), d.get("target")) for d in root.iterfind("domain/boot/drive")]
    assert drives == [("ovirt-wui-sda.qcow2", "hda"), ("ovirt-wui-sdb.qcow2", "hdb")]
    assert root.findtext("domain/devices/vcpu") == "1"
    assert root.findtext("domain/devices/memory") == str(512 * 1024)  # KiB
    assert len(root.findall("domain/devices/interface")) == 1
    assert root.find("domain/devices/graphics") is not None
    disks = root.findall("storage/disk")
    assert [(d.get("file"), d.get("use"), d.get("format")) for d in disks] == [
        ("ovirt-wui-sda.qcow2", "system", "qcow2"),
        ("ovirt-wui-sdb.qcow2", "system", "qcow2"),
    ]
    for element, image in zip(disks, CASES["ovirt-wui"].disks, strict=True):
        checksums = element.findall("checksum")
        assert [(c.get("type"), c.text) for c in checksums] == [("sha256", image.sha256)]


def test_virt_image_one_interface_per_network_line() -> None:
    for nics in (0, 1, 3):
        app = Appliance(name="n", nics=nics, disks=CASES["nonet"].disks)
        root = etree.fromstring(dsc.virt_image_xml(app))
        assert len(root.findall("domain/devices/interface")) == nics


def test_virt_image_arch_is_the_images() -> None:
    app = Appliance(name="i", arch="i686", disks=CASES["nonet"].disks)
    assert etree.fromstring(dsc.virt_image_xml(app)).findtext("domain/boot/guest/arch") == "i686"


def test_virt_image_raw_validates_against_image_rng(image_rng: etree.RelaxNG) -> None:
    """A raw x86 appliance with graphics is fully valid, NICs or not, sha256 or sha1."""
    nonet = etree.fromstring(generated("nonet", "virt-image.xml"))
    assert schema_errors(image_rng, nonet) == []
    with_nics = Appliance(name="raw2", nics=2, disks=CASES["nonet"].disks)
    assert schema_errors(image_rng, etree.fromstring(dsc.virt_image_xml(with_nics))) == []
    nonet.find("storage/disk/checksum").set("type", "sha1")
    assert schema_errors(image_rng, nonet) == []


def test_virt_image_deviations_from_image_rng(image_rng: etree.RelaxNG) -> None:
    """Where the grammar is stricter than virtinst's parser, only the documented parts differ.

    Each golden virt-image file fails the grammar only because of a disk format other than
    raw (qcow2, vmdk): rewriting just that attribute makes it valid. The UEFI comment does
    not matter to the grammar.
    """
    for case, data in all_of("virt-image.xml"):
        doc = etree.fromstring(data)
        formats = {d.get("format") for d in doc.iterfind("storage/disk")}
        errors = schema_errors(image_rng, doc)
        if formats == {"raw"}:
            assert errors == [], case
            continue
        assert errors, case
        for element in doc.iterfind("storage/disk"):
            element.set("format", "raw")
        assert schema_errors(image_rng, doc) == [], case


def test_virt_image_more_deviations(image_rng: etree.RelaxNG) -> None:
    """No <graphics/> and arch aarch64: the parser accepts both, the grammar neither."""
    raw = CASES["nonet"].disks
    headless = etree.fromstring(dsc.virt_image_xml(Appliance("h", raw, graphics=False)))
    assert headless.find("domain/devices/graphics") is None
    assert schema_errors(image_rng, headless)
    etree.SubElement(headless.find("domain/devices"), "graphics")
    assert schema_errors(image_rng, headless) == []

    arm = etree.fromstring(dsc.virt_image_xml(Appliance("a", raw, arch="aarch64", firmware="uefi")))
    assert schema_errors(image_rng, arm)
    arm.find("domain/boot/guest/arch").text = "x86_64"
    assert schema_errors(image_rng, arm) == []


def test_appliance_creators_two_checksums_fail_image_rng(image_rng: etree.RelaxNG) -> None:
    """Why we write one checksum: appliance-creator's sha1 + sha256 pair is not valid."""
    doc = etree.fromstring(generated("nonet", "virt-image.xml"))
    element = doc.find("storage/disk")
    sha1 = etree.Element("checksum", type="sha1")
    sha1.text = "0" * 40
    element.insert(0, sha1)
    assert schema_errors(image_rng, doc)


def test_virt_image_uefi_is_said_in_a_comment() -> None:
    data = generated("uefi", "virt-image.xml")
    comments = etree.fromstring(data).xpath("//comment()")
    assert len(comments) == 1 and "uefi" in comments[0].text
    assert b"uefi" not in generated("demo", "virt-image.xml")


def test_virt_image_rejects_what_virt_image_cannot_read() -> None:
    vhdx = Appliance("v", (disk("sda", "v", "vhdx", GiB, 100),))
    with pytest.raises(ConfigError, match="virt-image"):
        dsc.virt_image_xml(vhdx)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_descriptors_take_the_formats_the_table_says(fmt: str) -> None:
    """ksbake.formats.FORMATS says which descriptor can reference which format."""
    app = Appliance("v", (disk("sda", "v", fmt, GiB, 100),))
    writers = [
        (FORMATS[fmt].virt_image, "virt-image", lambda: dsc.virt_image_xml(app)),
        (FORMATS[fmt].libvirt, "libvirt", lambda: dsc.libvirt_domain_xml(app, [f"/v-sda.{fmt}"])),
    ]
    for accepted, what, write in writers:
        if accepted:
            assert write(), what
        else:
            with pytest.raises(ConfigError, match=what):
                write()


def test_boot_disk_comes_first_everywhere() -> None:
    app = CASES["vmdk-2disk"]
    assert [d.disk for d in app.ordered_disks()] == ["sdb", "sda"]
    image = etree.fromstring(dsc.virt_image_xml(app))
    assert image.find("domain/boot/drive").get("disk") == "store-sdb.vmdk"
    assert image.find("domain/boot/drive").get("target") == "hda"
    domain = etree.fromstring(dsc.libvirt_domain_xml(app, ["/x/a.vmdk", "/x/b.vmdk"]))
    first = domain.find("devices/disk")
    assert first.find("source").get("file") == "/x/b.vmdk"  # disk_paths follow app.disks
    assert first.find("target").get("dev") == "vda"
    assert first.find("boot").get("order") == "1"
    assert [d.find("boot") for d in domain.findall("devices/disk")][1] is None
    ovf = etree.fromstring(dsc.ovf_xml(app))
    assert ovf.find(f"{{{OVF}}}References/{{{OVF}}}File").get(f"{{{OVF}}}href") == "store-sdb.vmdk"


def test_device_names() -> None:
    names = [dsc.device_name("vd", i) for i in (0, 1, 25, 26, 27, 701, 702)]
    assert names == ["vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]


# --------------------------------------------------------------------------- libvirt


def test_libvirt_domain_shape() -> None:
    app = CASES["ovirt-wui"]
    root = etree.fromstring(dsc.libvirt_domain_xml(app, image_dir(app)))
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "ovirt-wui"
    assert root.find("uuid") is None  # libvirt makes one at define time
    assert root.findtext("memory") == root.findtext("currentMemory") == str(512 * 1024)
    assert root.find("memory").get("unit") == "KiB"
    ostype = root.find("os/type")
    assert (ostype.text, ostype.get("arch"), ostype.get("machine")) == ("hvm", "x86_64", "q35")
    assert root.find("os").get("firmware") is None
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    assert {d.find("target").get("bus") for d in disks} == {"virtio"}
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "qcow2"]
    nics = root.findall("devices/interface")
    assert [(n.get("type"), n.find("source").get("network")) for n in nics] == [
        ("network", "default")
    ]
    assert root.find("devices/interface/mac") is None
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"


def test_libvirt_uefi_and_options() -> None:
    uefi = etree.fromstring(generated("uefi", "libvirt.xml"))
    assert uefi.find("os").get("firmware") == "efi"
    feature = uefi.find("os/firmware/feature")
    assert (feature.get("name"), feature.get("enabled")) == ("secure-boot", "no")
    test = etree.fromstring(generated("nonet", "libvirt.xml"))
    assert test.get("type") == "qemu"
    assert test.find("cpu").get("mode") == "maximum"
    assert test.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert test.find("devices/interface") is None
    assert test.find("devices/graphics") is None
    for tag in ("serial", "console"):
        element = test.find(f"devices/{tag}")
        assert element.get("type") == "file"
        assert element.find("source").get("path") == "/var/log/ksbake/nonet-serial.log"
    user = dsc.libvirt_domain_xml(CASES["demo"], ["/d.qcow2"], network=None)
    assert etree.fromstring(user).find("devices/interface").get("type") == "user"


def test_libvirt_errors() -> None:
    app = CASES["ovirt-wui"]
    with pytest.raises(ConfigError, match="2 disks but 1 disk paths"):
        dsc.libvirt_domain_xml(app, ["/a"])
    with pytest.raises(ConfigError, match="absolute"):
        dsc.libvirt_domain_xml(app, ["a.qcow2", "/b.qcow2"])
    with pytest.raises(ConfigError, match="domain type"):
        dsc.libvirt_domain_xml(app, image_dir(app), domain_type="xen")
    vhdx = Appliance("v", (disk("sda", "v", "vhdx", GiB, 100),))
    with pytest.raises(ConfigError, match="libvirt cannot attach"):
        dsc.libvirt_domain_xml(vhdx, ["/v-sda.vhdx"])


def corpus_domains() -> list[etree._Element]:
    """The corpus import domains (the ovf2libvirt files have virt-convert output after them)."""
    docs = []
    for path in sorted(corpus_file("descriptors", "libvirt").iterdir()):
        text = path.read_text()
        docs.append(etree.fromstring(text[: text.index("</domain>") + len("</domain>")]))
    return docs


def element_paths(root: etree._Element) -> set[str]:
    """``/domain/devices/disk/driver``-style paths of every element, without positions."""
    tree = etree.ElementTree(root)
    return {
        "/".join(part.split("[")[0] for part in tree.getpath(e).split("/"))
        for e in root.iter()
        if isinstance(e.tag, str)
    }


def test_libvirt_structure_matches_corpus_imports() -> None:
    """Every element we write is one the corpus import domains use, in the same places."""
    corpus = corpus_domains()
    assert len(corpus) == 5
    known = set().union(*(element_paths(d) for d in corpus))
    new = {
        "/domain/os/firmware",  # libvirt >= 7.2 firmware features (secure-boot off)
        "/domain/os/firmware/feature",
        "/domain/devices/serial/source",  # serial_log: the corpus only has pty consoles
        "/domain/devices/console/source",
    }
    for case, data in all_of("libvirt.xml"):
        extra = element_paths(etree.fromstring(data)) - known
        assert extra <= new, (case, sorted(extra))
    # Disks exactly as modern `virt-install --import` writes them.
    virt_install = next(d for d in corpus if d.find("os").get("firmware") == "efi")
    ours = etree.fromstring(generated("demo", "libvirt.xml"))
    assert [c.tag for c in ours.find("devices/disk")] == [
        c.tag for c in virt_install.find("devices/disk")
    ]
    # Top-level order agrees with the 2008 oVirt WUI template wherever both have an element.
    template = next(d for d in corpus if d.findtext("name") == "$name")
    theirs = [c.tag for c in template]
    shared = [c.tag for c in ours if c.tag in theirs]
    assert shared == [t for t in theirs if t in shared]
    assert {"on_poweroff", "on_reboot", "on_crash", "clock", "os", "devices"} <= set(shared)


@pytest.mark.slow
def test_libvirt_xml_validates_with_virt_xml_validate(tmp_path: Path) -> None:
    """libvirt's own schema accepts every variant (needs libvirt-clients, libxml2-utils)."""
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate missing: apt-get install libvirt-clients libxml2-utils"
    variants = dict(all_of("libvirt.xml"))
    for case, app in CASES.items():
        if all(d.format in dsc.LIBVIRT_FORMATS for d in app.disks):
            variants[f"{case}-test"] = libvirt_test_style(app)
    arm = Appliance("arm", CASES["demo"].disks, arch="aarch64", firmware="uefi")
    variants["aarch64"] = dsc.libvirt_domain_xml(arm, ["/d.qcow2"])
    variants["i686"] = dsc.libvirt_domain_xml(
        Appliance("x86", CASES["demo"].disks, arch="i686", nics=2), ["/d.qcow2"]
    )
    known = Appliance(
        "srv", CASES["demo"].disks, os_id="http://debian.org/debian/11", guest_agent=True
    )
    variants["osinfo-agent-user-net"] = dsc.libvirt_domain_xml(known, ["/d.qcow2"], network=None)
    for name, data in variants.items():
        path = tmp_path / f"{name}.xml"
        path.write_bytes(data)
        proc = subprocess.run(
            [tool, str(path), "domain"], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"


# --------------------------------------------------------------------------- OVF


def q(tag: str) -> str:
    """Clark name for an OVF-namespace tag path ("VirtualSystem/Name")."""
    return "/".join(f"{{{OVF}}}{part}" for part in tag.split("/"))


def ovf_paths(root: etree._Element) -> set[str]:
    """Element paths with namespace prefixes normalized (ovf:, rasd:, vssd:, vmw:)."""
    prefixes = {OVF: "", RASD: "rasd:", dsc.VSSD_NS: "vssd:", dsc.VMW_NS: "vmw:"}

    def name(e: etree._Element) -> str:
        qn = etree.QName(e)
        return prefixes.get(qn.namespace, "?:") + qn.localname

    found = set()
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        parts = [name(element)] + [name(a) for a in element.iterancestors()]
        found.add("/".join(reversed(parts)))
    return found


def corpus_ovfs() -> dict[str, etree._Element]:
    exports = sorted(corpus_file("descriptors", "ovf").glob("*.ovf"))
    return {p.name: etree.parse(str(p)).getroot() for p in exports}


REQUIRED_OVF_PATHS = {
    "Envelope/References/File",
    "Envelope/DiskSection/Info",
    "Envelope/DiskSection/Disk",
    "Envelope/NetworkSection/Info",
    "Envelope/NetworkSection/Network/Description",
    "Envelope/VirtualSystem/Info",
    "Envelope/VirtualSystem/OperatingSystemSection/Info",
    "Envelope/VirtualSystem/VirtualHardwareSection/Info",
    "Envelope/VirtualSystem/VirtualHardwareSection/System/vssd:VirtualSystemType",
    "Envelope/VirtualSystem/VirtualHardwareSection/Item/rasd:ResourceType",
    "Envelope/VirtualSystem/VirtualHardwareSection/Item/rasd:HostResource",
    "Envelope/VirtualSystem/VirtualHardwareSection/Item/rasd:Connection",
}


def test_ovf_has_the_sections_of_the_corpus_exports() -> None:
    """The paths every corpus export has (VMware and VirtualBox), we have too."""
    corpus = corpus_ovfs()
    assert len(corpus) == 4
    for name, root in corpus.items():
        assert ovf_paths(root) >= REQUIRED_OVF_PATHS, name
    ours = ovf_paths(etree.fromstring(generated("vmdk", "ovf")))
    assert ours >= REQUIRED_OVF_PATHS
    # Nothing we write is unknown to the corpus, except ProductSection (OVF 1.0 section
    # that VirtualBox reads for product/version) and VMware's firmware Config.
    known = set().union(*(ovf_paths(r) for r in corpus.values()))
    for case, data in all_of("ovf"):
        extra = ovf_paths(etree.fromstring(data)) - known
        extra = {p for p in extra if "/ProductSection" not in p}
        assert extra <= {"Envelope/VirtualSystem/VirtualHardwareSection/vmw:Config"}, case


def test_ovf_items_are_consistent() -> None:
    for case, data in all_of("ovf"):
        root = etree.fromstring(data)
        app = CASES[case]
        files = root.findall(q("References/File"))
        assert [f.get(q("href")) for f in files] == [d.file for d in app.ordered_disks()]
        assert [int(f.get(q("size"))) for f in files] == [d.file_size for d in app.ordered_disks()]
        file_ids = {f.get(q("id")) for f in files}
        disks = root.findall(q("DiskSection/Disk"))
        assert {d.get(q("fileRef")) for d in disks} == file_ids
        assert [int(d.get(q("capacity"))) for d in disks] == [
            d.virtual_size for d in app.ordered_disks()
        ]
        assert {d.get(q("format")) for d in disks} == {dsc.VMDK_STREAM_OPTIMIZED}
        disk_ids = {d.get(q("diskId")) for d in disks}
        items = root.findall(q("VirtualSystem/VirtualHardwareSection/Item"))
        ids = [i.findtext(f"{{{RASD}}}InstanceID") for i in items]
        assert len(ids) == len(set(ids)), case

        def of_type(kind: int, items: list = items) -> list[etree._Element]:
            return [i for i in items if i.findtext(f"{{{RASD}}}ResourceType") == str(kind)]

        assert of_type(3)[0].findtext(f"{{{RASD}}}VirtualQuantity") == str(app.vcpus)
        memory = of_type(4)[0]
        assert memory.findtext(f"{{{RASD}}}VirtualQuantity") == str(app.memory_mib)
        assert memory.findtext(f"{{{RASD}}}AllocationUnits") == "byte * 2^20"
        (scsi,) = of_type(6)
        assert scsi.findtext(f"{{{RASD}}}ResourceSubType") == "lsilogic"
        hard_disks = of_type(17)
        assert {h.findtext(f"{{{RASD}}}HostResource") for h in hard_disks} == {
            f"ovf:/disk/{i}" for i in disk_ids
        }
        assert {h.findtext(f"{{{RASD}}}Parent") for h in hard_disks} == {
            scsi.findtext(f"{{{RASD}}}InstanceID")
        }
        nics = of_type(10)
        assert len(nics) == app.nics
        assert {n.findtext(f"{{{RASD}}}ResourceSubType") for n in nics} <= {"E1000"}
        networks = {n.get(q("name")) for n in root.findall(q("NetworkSection/Network"))}
        assert {n.findtext(f"{{{RASD}}}Connection") for n in nics} == networks
        for item in items:  # CIM wants rasd children in alphabetical order
            tags = [etree.QName(c).localname for c in item]
            assert tags == sorted(tags), case
        system = root.find(q("VirtualSystem/VirtualHardwareSection/System"))
        assert system.findtext(f"{{{dsc.VSSD_NS}}}VirtualSystemType") == "vmx-07"
        product = root.find(q("VirtualSystem/ProductSection"))
        assert product.findtext(q("Product")) == app.name
        assert product.findtext(q("Version")) == app.version


def test_corpus_exports_also_sort_rasd_children() -> None:
    """The alphabetical rasd order we write is the one both exporters use."""
    for name, root in corpus_ovfs().items():
        for item in root.iter(q("Item")):
            tags = [etree.QName(c).localname for c in item if etree.QName(c).namespace == RASD]
            assert tags == sorted(tags), name


def test_ovf_os_and_firmware() -> None:
    demo = etree.fromstring(generated("vmdk", "ovf"))
    section = demo.find(q("VirtualSystem/OperatingSystemSection"))
    assert section.get(q("id")) == "101"
    assert section.get(f"{{{dsc.VMW_NS}}}osType") == "otherLinux64Guest"
    assert demo.find(f".//{{{dsc.VMW_NS}}}Config") is None
    assert demo.find(q("NetworkSection")) is not None
    two = etree.fromstring(generated("vmdk-2disk", "ovf"))
    config = two.find(f".//{{{dsc.VMW_NS}}}Config")
    assert (config.get(f"{{{dsc.VMW_NS}}}key"), config.get(f"{{{dsc.VMW_NS}}}value")) == (
        "firmware",
        "efi",
    )
    assert two.find(q("NetworkSection")) is None  # no NIC, no logical network
    i686 = Appliance("x", CASES["vmdk"].disks, arch="i686")
    section = etree.fromstring(dsc.ovf_xml(i686)).find(q("VirtualSystem/OperatingSystemSection"))
    assert section.get(q("id")) == "36"


def test_ovf_needs_vmdk() -> None:
    with pytest.raises(ConfigError, match="OVF needs vmdk"):
        dsc.ovf_xml(CASES["demo"])


def test_ovf_manifest() -> None:
    text = dsc.ovf_manifest({"a.ovf": "1" * 64, "a-sda.vmdk": "2" * 64})
    assert text == f"SHA256(a.ovf)= {'1' * 64}\nSHA256(a-sda.vmdk)= {'2' * 64}\n"
    with pytest.raises(ConfigError):
        dsc.ovf_manifest({"dir/a.ovf": "1" * 64})
    with pytest.raises(ConfigError):
        dsc.ovf_manifest({"a.ovf": "XYZ"})


def make_package(tmp_path: Path, app: Appliance) -> tuple[Path, list[Path], Path]:
    """Write fake disk files plus the .ovf and .mf of an appliance into tmp_path."""
    disks = []
    for d in app.disks:
        path = tmp_path / d.file
        path.write_bytes(d.file.encode() * 1000)
        disks.append(path)
    ovf = tmp_path / f"{app.name}.ovf"
    ovf.write_bytes(dsc.ovf_xml(app))
    files = {ovf.name: sha256_file(ovf)}
    files |= {d.file: sha256_file(tmp_path / d.file) for d in app.ordered_disks()}
    mf = tmp_path / f"{app.name}.mf"
    mf.write_text(dsc.ovf_manifest(files))
    return ovf, disks, mf


def test_write_ova_order_and_determinism(tmp_path: Path, monkeypatch) -> None:
    app = CASES["vmdk-2disk"]
    ovf, disks, mf = make_package(tmp_path, app)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = dsc.write_ova(ovf, disks, mf, tmp_path / "one.ova")
    # disks given in --ondisk order; the archive follows References (boot disk first)
    second = dsc.write_ova(ovf, list(reversed(disks)), mf, tmp_path / "two.ova")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "store.ovf",
            "store.mf",
            *dsc.ovf_references(ovf.read_bytes()),
        ]
        assert [m.name for m in members][2:] == ["store-sdb.vmdk", "store-sda.vmdk"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert tar.extractfile("store-sda.vmdk").read() == disks[0].read_bytes()
    header = first.read_bytes()[:512]
    assert header[257:265] == b"ustar\x0000"  # POSIX ustar, as OVF requires
    assert not list(tmp_path.glob("*.partial"))


def test_write_ova_source_date_epoch_and_no_manifest(tmp_path: Path, monkeypatch) -> None:
    ovf, disks, _ = make_package(tmp_path, CASES["vmdk"])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1220227200")
    out = dsc.write_ova(ovf, disks, None, tmp_path / "demo.ova")
    with tarfile.open(out) as tar:
        assert [m.name for m in tar] == ["demo.ovf", "demo-sda.vmdk"]
        assert {m.mtime for m in tar} == {1220227200}


def test_write_ova_rejects_wrong_disks(tmp_path: Path) -> None:
    ovf, disks, mf = make_package(tmp_path, CASES["vmdk-2disk"])
    with pytest.raises(ConfigError, match="References"):
        dsc.write_ova(ovf, disks[:1], mf, tmp_path / "x.ova")
    assert not (tmp_path / "x.ova").exists()


def test_write_ova_big_members_use_gnu_sizes(tmp_path: Path, monkeypatch) -> None:
    """Members over ustar's 8 GiB limit switch the archive to base-256 sizes."""
    ovf, disks, mf = make_package(tmp_path, CASES["vmdk"])
    monkeypatch.setattr(dsc, "_USTAR_MAX", 100)
    out = dsc.write_ova(ovf, disks, mf, tmp_path / "big.ova")
    assert out.read_bytes()[257:265] == b"ustar  \x00"  # GNU magic
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["demo.ovf", "demo.mf", "demo-sda.vmdk"]


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "bad name"}, "name must be"),
        ({"name": "../x"}, "name must be"),
        ({"version": "1 0"}, "version"),
        ({"arch": "sparc"}, "arch must be"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 2}, "memory"),
        ({"firmware": "coreboot"}, "firmware"),
        ({"arch": "aarch64"}, "no BIOS"),
        ({"nics": -1}, "nics"),
        ({"disks": ()}, "at least one disk"),
        ({"boot_disk": "sdc"}, "boot disk"),
    ],
)
def test_appliance_validation(change: dict, message: str) -> None:
    fields = {"name": "ok", "disks": CASES["demo"].disks} | change
    with pytest.raises(ConfigError, match=message):
        Appliance(**fields)


def test_disk_validation() -> None:
    good = CASES["demo"].disks[0]
    for change, message in [
        ({"file": "dir/demo-sda.qcow2"}, "plain file name"),
        ({"format": "qcow"}, "format"),
        ({"sha256": "ABC"}, "sha256"),
        ({"virtual_size": 0}, "sizes"),
        ({"disk": "sd-a"}, "disk name"),
    ]:
        fields = {**good.__dict__, **change}
        with pytest.raises(ConfigError, match=message):
            DiskImage(**fields)
    with pytest.raises(ConfigError, match="repeat"):
        Appliance("two", (good, good))


def test_convert_describes_what_it_wrote(tmp_path: Path) -> None:
    raw = tmp_path / "x-sda.raw"
    with raw.open("wb") as f:
        f.write(b"ksbake")
        f.truncate(8 * 1024 * 1024)
    qcow = tmp_path / "x-sda.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True
    )
    from ksbake.layers.l7_convert import describe

    record = describe(qcow, "qcow2")
    assert record["virtual_size"] == 8 * 1024 * 1024
    assert record["sha256"] == hashlib.sha256(qcow.read_bytes()).hexdigest()


def test_virt_image_version_with_letters_is_a_schema_deviation(image_rng: etree.RelaxNG) -> None:
    raw = CASES["nonet"].disks
    numeric = etree.fromstring(dsc.virt_image_xml(Appliance("v", raw, version="2.0", release="3")))
    assert schema_errors(image_rng, numeric) == []
    lettered = etree.fromstring(dsc.virt_image_xml(Appliance("v", raw, version="2.0rc1")))
    assert schema_errors(image_rng, lettered)


def test_ova_packing_shows_progress_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    data = b"x" * (3 << 20)
    reader = dsc._Progress(io.BytesIO(data), "demo.ova: demo-sda.vmdk", len(data))
    reader.tty = True  # as on a terminal
    while reader.read(1 << 20):
        pass
    out = capsys.readouterr().out
    assert "packing demo.ova: demo-sda.vmdk: 100%" in out and out.endswith("s left\n")
