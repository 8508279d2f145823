"""The bundled offline repository (ksbake.bundledrepo, repo/).

Fast tests check the pieces (version mapping, the cpio writer, specs and comps, the staging
rules). Slow tests build the real repository once per session from the Debian .debs and
check what dnf and rpm see: packages, dependencies, groups, the updates repository,
reproducibility, and a real dnf install whose %post scriptlet ran inside the installroot.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT
from lxml import etree

from ksbake import bundledrepo
from ksbake.errors import BuildError

# rpm adds these to what a spec says: /bin/sh for a package with a shell scriptlet or an
# executable shell script.
GENERATED_REQUIRES = {
    "ksbake-init": {"/bin/sh"},
    "ksbake-release": {"/bin/sh"},
    "ovirt-wui": {"/bin/sh"},
}


def spec_tag(spec: str, tag: str) -> list[str]:
    """The values of a preamble tag in repo/specs/SPEC.spec (``Requires`` also gives the
    ``Requires(post)`` lines)."""
    text = (bundledrepo.SPECS_DIR / f"{spec}.spec").read_text()
    return re.findall(rf"^{tag}(?:\([^)]*\))?:\s*(.+?)\s*$", text, re.M)


def spec_names() -> dict[str, str]:
    """Package name -> its spec, for every spec of the bundled repository."""
    return {spec_tag(p.stem, "Name")[0]: p.stem for p in bundledrepo.SPECS_DIR.glob("*.spec")}


def comps_members(group: str, *kinds: str) -> set[str]:
    """The packages of a group of repo/comps.xml, of these kinds (mandatory, default ...)."""
    comps = etree.parse(str(bundledrepo.COMPS_FILE))
    return {
        req.text
        for req in comps.xpath(f"/comps/group[id='{group}']/packagelist/packagereq")
        if req.get("type") in kinds
    }


def debs_dir() -> Path:
    """Where the .debs are cached across test runs (the kernel .deb is 70 MB)."""
    return Path(os.environ.get("KSBAKE_TEST_DEBS", PROJECT / "cache" / "debs"))


def rpmq(path: Path, *args: str) -> list[str]:
    out = subprocess.run(["rpm", "-qp", *args, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def package(repo: Path, name: str) -> Path:
    (path,) = [p for p in repo.glob("Packages/*.rpm") if rpmq(p, "--qf", "%{NAME}")[0] == name]
    return path


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------
# fast


@pytest.mark.parametrize(
    ("debian", "rpm"),
    [
        ("1:1.35.0-4+deb12u1+b1", ("1", "1.35.0", "4+deb12u1+b1")),
        ("6.1.192-2", ("0", "6.1.192", "2")),
        ("2.0-rc1-3", ("0", "2.0_rc1", "3")),
        ("1.0", ("0", "1.0", "0")),
        ("1.0~bpo12+1-1", ("0", "1.0~bpo12+1", "1")),
    ],
)
def test_rpm_evr_maps_debian_versions(debian: str, rpm: tuple[str, str, str]) -> None:
    assert bundledrepo.rpm_evr(debian) == rpm


def test_rpm_evr_rejects_what_rpm_cannot_hold() -> None:
    with pytest.raises(BuildError, match="cannot map"):
        bundledrepo.rpm_evr("1.0-1 2")


def test_cpio_writer_output_is_read_by_cpio(tmp_path: Path) -> None:
    writer = bundledrepo._Cpio()
    writer.dir("bin")
    writer.symlink("sbin", "bin")
    writer.add("dev/console", 0o020600, rdev=(5, 1))
    writer.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    writer.file("odd", b"12345")  # data that needs padding
    archive = writer.close()
    assert len(archive) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines] == ["bin", "bin", "dev/console", "init", "odd"]
    assert lines[1].startswith("lrwxrwxrwx") and "sbin -> bin" in lines[1]
    assert lines[2].startswith("crw-------") and "5,   1" in lines[2]
    assert lines[3].startswith("-rwxr-xr-x")
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "odd").read_bytes() == b"12345"


def test_every_package_has_a_spec_and_its_sources() -> None:
    specs = {p.stem for p in bundledrepo.SPECS_DIR.glob("*.spec")}
    assert specs == set(bundledrepo.BASE_PACKAGES)
    assert all(name == spec for name, spec in spec_names().items())  # NAME.spec builds NAME
    assert {spec for spec, _ in bundledrepo.UPDATE_PACKAGES} <= specs
    generated = {"busybox": {"busybox", "applets", "copyright"}, "kernel": set()}
    for name in specs:
        text = (bundledrepo.SPECS_DIR / f"{name}.spec").read_text()
        assert re.search(r"^License:\s+\S", text, re.M), name
        assert re.search(r"^Summary:\s+\S", text, re.M), name
        assert "%changelog" in text, name  # SOURCE_DATE_EPOCH comes from it
        for source in re.findall(r"^Source\d+:\s+(\S+)", text, re.M):
            if source not in generated.get(name, set()):
                assert (bundledrepo.FILES_DIR / name / source).is_file(), (name, source)


def test_comps_groups_name_packages_of_the_repository() -> None:
    comps = etree.parse(str(bundledrepo.COMPS_FILE))
    packages = spec_names()
    assert set(comps.xpath("//packagereq/text()")) <= set(packages)
    groups = comps.xpath("/comps/group/id/text()")
    assert len(set(groups)) == len(groups)
    assert set(comps.xpath("/comps/environment//groupid/text()")) <= set(groups)
    assert set(comps.xpath("//packagereq/@type")) <= {"mandatory", "default", "optional"}
    # @core installs by itself: what its packages require, its mandatory ones provide
    core = comps_members("core", "mandatory")
    provided = core | {p for name in core for p in spec_tag(packages[name], "Provides")}
    for name in comps_members("core", "mandatory", "default", "optional"):
        assert set(spec_tag(packages[name], "Requires")) <= provided, name
    # the kernel is added by the kickstart (configs/demo.ks: @core and kernel)
    assert "kernel" not in comps_members("core", "mandatory", "default", "optional")


def test_failed_build_leaves_out_dir_alone(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "repo"
    (out / "base").mkdir(parents=True)
    (out / "base" / "old").write_text("previous build")

    def failing(result: Path, work: Path, debs: Path) -> None:
        (result / "base").mkdir(parents=True)
        (result / "base" / "half").write_text("half-built")
        raise BuildError("boom")

    monkeypatch.setattr(bundledrepo, "_build_into", failing)
    with pytest.raises(BuildError, match="boom"):
        bundledrepo.build(out, tmp_path / "debs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert [p.name for p in (out / "base").iterdir()] == ["old"]


def test_build_replaces_out_dir_and_removes_stale_staging(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "repo"
    (out / "base").mkdir(parents=True)
    (out / "base" / "old").write_text("previous build")
    stale = tmp_path / ".repo.staging"
    (stale / "result" / "base").mkdir(parents=True)
    (stale / "result" / "base" / "stale").write_text("from a killed build")

    def fake(result: Path, work: Path, debs: Path) -> None:
        assert not (result / "base" / "stale").exists()
        for name in ("base", "updates"):
            (result / name).mkdir(parents=True)
            (result / name / "new").write_text(name)

    monkeypatch.setattr(bundledrepo, "_build_into", fake)
    bundledrepo.build(out, tmp_path / "debs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert tree_digest(out).keys() == {"base/new", "updates/new"}


# ---------------------------------------------------------------------------------------
# slow: the real repository, built once


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundled") / "repo"
    bundledrepo.build(out, debs_dir())
    return out


@pytest.mark.slow
def test_layout_and_package_list(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == ["base", "updates"]
    assert not list(built.parent.glob(".*staging"))
    nevras = {}
    for rpm in (built / "base").glob("Packages/*.rpm"):
        name, arch = rpmq(rpm, "--qf", "%{NAME} %{ARCH}")[0].split()
        nevras[name] = arch
    names = spec_names()
    assert set(nevras) == set(names)
    for name, arch in nevras.items():
        assert arch == (spec_tag(names[name], "BuildArch") or ["x86_64"])[0], name
    for repo in ("base", "updates"):
        assert (built / repo / "repodata" / "repomd.xml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(spec_names()))
def test_requires(built: Path, name: str) -> None:
    """What the spec requires, plus what rpm generates, and nothing else."""
    requires = set(spec_tag(spec_names()[name], "Requires")) | GENERATED_REQUIRES.get(name, set())
    got = set(rpmq(package(built / "base", name), "--requires"))
    assert requires <= got
    # Nothing else but rpmlib features and the config() dependency of %config files.
    others = {r for r in got - requires if not r.startswith(("rpmlib(", f"config({name})"))}
    assert not others


@pytest.mark.slow
def test_provides_recommends_and_scriptlet(built: Path) -> None:
    base = built / "base"
    assert "/bin/sh" in rpmq(package(base, "busybox"), "--provides")
    release = package(base, "ksbake-release")
    provides = rpmq(release, "--provides")
    assert "system-release" in provides and "system-release(releasever) = 1" in provides
    assert rpmq(release, "--recommends") == ["ksbake-weak"]
    assert "release-post-ran" in "\n".join(rpmq(release, "--scripts"))


@pytest.mark.slow
def test_filesystem_layout(built: Path) -> None:
    rows = rpmq(
        package(built / "base", "filesystem"), "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]"
    )
    modes = dict(reversed(row.split(" ", 1)) for row in rows)
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        assert modes[link].startswith("l"), link
    assert modes["/tmp"] == "drwxrwxrwt"
    assert modes["/root"] == "dr-xr-x---"
    for d in ("/etc", "/var", "/proc", "/sys", "/dev", "/run", "/boot", "/home", "/mnt", "/data"):
        assert modes[d].startswith("d"), d
    setup = rpmq(package(built / "base", "setup"), "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]")
    assert "---------- /etc/shadow" in setup


@pytest.mark.slow
def test_busybox_applets(built: Path) -> None:
    rpm = package(built / "base", "busybox")
    files = set(rpmq(rpm, "--list"))
    names = {Path(f).name for f in files}
    assert "/usr/bin/busybox" in files
    assert all(f.startswith(("/usr/bin/", "/usr/sbin/", "/usr/share/licenses/")) for f in files)
    assert len(files) > 250
    wanted = (
        "sh mount umount getty login switch_root modprobe findfs cat echo ls poweroff "
        "hostname mkdir swapon sleep grep sed"
    )
    assert set(wanted.split()) <= names
    assert "/usr/sbin/init" not in files  # ksbake-init's
    assert "/usr/sbin/init" in rpmq(package(built / "base", "ksbake-init"), "--list")


@pytest.mark.slow
def test_kernel_package(built: Path, tmp_path: Path) -> None:
    rpm = package(built / "base", "kernel")
    files = rpmq(rpm, "--list")
    (kver,) = [f.removeprefix("/boot/vmlinuz-") for f in files if f.startswith("/boot/vmlinuz-")]
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", kver)
    for name in ("vmlinuz", "System.map", "config", "initramfs"):
        suffix = ".img" if name == "initramfs" else ""
        assert f"/boot/{name}-{kver}{suffix}" in files
    moddir = f"/usr/lib/modules/{kver}"
    assert f"{moddir}/modules.dep" in files
    kos = [Path(f).name for f in files if f.endswith(".ko")]
    modules = {ko.removesuffix(".ko").replace("-", "_") for ko in kos}  # nls_iso8859-1.ko
    # what the initramfs loads, the root filesystems it tries, and a dependency of ext4
    needed = {*bundledrepo.INITRAMFS_MODULES, *bundledrepo.ROOT_FILESYSTEMS, "jbd2"}
    assert needed <= modules
    assert len(modules) < 60  # only what a disk boot needs

    # The version comes from the Debian package.
    version = rpmq(rpm, "--qf", "%{VERSION}-%{RELEASE}")[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+-\S+", version)

    # The initramfs: busybox, /init, /dev/console, the modules and their load order.
    payload = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(
        ["cpio", "-idm", "--quiet", f"./boot/initramfs-{kver}.img"],
        input=payload,
        cwd=tmp_path,
        check=True,
    )
    archive = gzip.decompress((tmp_path / "boot" / f"initramfs-{kver}.img").read_bytes())
    listing = subprocess.run(
        ["cpio", "-itv"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"init", "bin/busybox", "dev/console", f"lib/modules/{kver}/modules.dep"} <= names
    assert any(line.startswith("crw") and "console" in line for line in listing.splitlines())
    subprocess.run(
        ["cpio", "-idm", "--quiet", "etc/initramfs-modules", f"lib/modules/{kver}/modules.dep"],
        input=archive,
        cwd=tmp_path,
        check=True,
    )
    load_order = (tmp_path / "etc" / "initramfs-modules").read_text().split()
    assert [m.replace("-", "_") for m in load_order] == list(bundledrepo.INITRAMFS_MODULES)
    dep = (tmp_path / "lib" / "modules" / kver / "modules.dep").read_text()
    assert re.search(r"^kernel/fs/ext4/ext4.ko: .*jbd2.ko", dep, re.M)


@pytest.mark.slow
def test_comps_in_repodata(built: Path) -> None:
    repomd = etree.parse(str(built / "base" / "repodata" / "repomd.xml"))
    ns = {"r": "http://linux.duke.edu/metadata/repo"}
    (href,) = repomd.xpath("/r:repomd/r:data[@type='group']/r:location/@href", namespaces=ns)
    comps = etree.parse(str(built / "base" / href))
    source = etree.parse(str(bundledrepo.COMPS_FILE))  # repo/comps.xml, as createrepo_c got it
    for query in ("/comps/group/id/text()", "/comps/environment/id/text()"):
        assert comps.xpath(query) == source.xpath(query), query
    for group in source.xpath("/comps/group/id/text()"):
        reqs = f"/comps/group[id='{group}']/packagelist/packagereq"
        assert [(r.text, r.get("type")) for r in comps.xpath(reqs)] == [
            (r.text, r.get("type")) for r in source.xpath(reqs)
        ], group
    assert repomd.xpath("/r:repomd/r:revision/text()", namespaces=ns) == [
        str(bundledrepo.SOURCE_DATE_EPOCH)
    ]


@pytest.mark.slow
def test_updates_holds_only_a_newer_rootfiles(built: Path) -> None:
    import rpm

    (update,) = (built / "updates").glob("Packages/*.rpm")
    name, version, release = rpmq(update, "--qf", "%{NAME} %{VERSION} %{RELEASE}")[0].split()
    assert name == "rootfiles"
    base_version, base_release = rpmq(
        package(built / "base", "rootfiles"), "--qf", "%{VERSION} %{RELEASE}"
    )[0].split()
    assert rpm.labelCompare(("0", version, release), ("0", base_version, base_release)) == 1


@pytest.mark.slow
def test_reproducible(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    bundledrepo.build(again, debs_dir())
    first, second = tree_digest(built), tree_digest(again)
    assert first.keys() == second.keys()
    assert first == second
    for rpm in built.glob("*/Packages/*.rpm"):
        assert rpmq(rpm, "--qf", "%{BUILDHOST}")[0] == "ksbake"


# A dnf install as the packages layer does it, in a child process: dnf must not run in
# threads, and the rpm macros it sets are process-wide.
DNF_INSTALL = r"""
import json, os, sys
import dnf, rpm
args = json.loads(sys.argv[1])
base = dnf.Base()
rpm.addMacro("_dbpath", "/usr/lib/sysimage/rpm")
for name, value in args["macros"].items():
    rpm.addMacro(name, value)
conf = base.conf
conf.releasever = "1"
conf.installroot = args["root"]
for attr in ("cachedir", "persistdir", "logdir"):
    setattr(conf, attr, os.path.join(args["state"], attr))
os.makedirs(conf.logdir)
conf.gpgcheck = False
conf.install_weak_deps = args["weak"]
conf.tsflags = args["tsflags"]
for name, url in args["repos"].items():
    base.repos.add_new_repo(name, conf, baseurl=[url])
base.fill_sack(load_system_repo=False)
base.read_comps()
for spec in args["specs"]:
    if spec.startswith("@"):
        base.group_install(base.comps.group_by_pattern(spec[1:]).id, ("mandatory", "default"))
    else:
        base.install(spec)
base.resolve()
base.download_packages(list(base.transaction.install_set))
base.do_transaction()
print(json.dumps(sorted(str(p) for p in base.transaction.install_set)))
"""


def dnf_install(
    built: Path,
    tmp_path: Path,
    specs: list[str],
    *,
    updates: bool = False,
    weak: bool = True,
    tsflags: list[str] | None = None,
    macros: dict[str, str] | None = None,
) -> tuple[Path, list[str]]:
    root = tmp_path / "root"
    repos = {"base": f"file://{built}/base"}
    if updates:
        repos["updates"] = f"file://{built}/updates"
    args = {
        "root": str(root),
        "state": str(tmp_path / "dnf"),
        "repos": repos,
        "specs": specs,
        "weak": weak,
        "tsflags": tsflags or [],
        "macros": macros or {},
    }
    proc = subprocess.run(
        [sys.executable, "-c", DNF_INSTALL, json.dumps(args)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return root, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
def test_dnf_installs_core_and_kernel(built: Path, tmp_path: Path) -> None:
    root, installed = dnf_install(built, tmp_path, ["@core", "kernel"])
    names = {re.sub(r"-(\d+:)?[^-]+-[^-]+$", "", nevra) for nevra in installed}
    wanted = comps_members("core", "mandatory", "default") | {"kernel"}
    specs = spec_names()
    weak = {w for name in wanted for w in spec_tag(specs[name], "Recommends")}
    assert weak  # ksbake-release recommends ksbake-weak
    assert names == wanted | weak
    # The %post ran inside the installroot: it read the installed /etc/ksbake-release.
    post = (root / "var/lib/ksbake/release-post-ran").read_text()
    assert post == "ksbake-release 1-1 %post ran\nksbake release 1 (bundled)\n"
    assert (root / "bin").is_symlink() and os.readlink(root / "bin") == "usr/bin"
    assert os.access(root / "usr/sbin/init", os.X_OK)
    assert os.readlink(root / "usr/bin/sh") == "busybox"
    assert (root / "usr/lib/sysimage/rpm/rpmdb.sqlite").is_file()
    assert list((root / "boot").glob("vmlinuz-*")) and list((root / "boot").glob("initramfs-*"))
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert oct((root / "etc/shadow").stat().st_mode & 0o777) == "0o0"


@pytest.mark.slow
def test_dnf_updates_and_no_weak_deps(built: Path, tmp_path: Path) -> None:
    root, installed = dnf_install(built, tmp_path, ["@core"], updates=True, weak=False)
    assert "rootfiles-1.0-2.noarch" in installed
    assert not any(n.startswith("ksbake-weak") for n in installed)
    assert (root / "root/.profile").read_text().endswith("# rootfiles 1.0-2: updated\n")


@pytest.mark.slow
def test_docs_package_obeys_nodocs_and_langs(built: Path, tmp_path: Path) -> None:
    root, _ = dnf_install(
        built, tmp_path, ["ksbake-docs"], tsflags=["nodocs"], macros={"_install_langs": "de"}
    )
    share = root / "usr/share"
    assert not (share / "doc/ksbake-docs/README").exists()
    assert not (share / "man/man7/ksbake-docs.7").exists()
    assert (share / "licenses/ksbake-docs/COPYING").exists()
    assert (share / "ksbake-docs/greeting").exists()
    assert (share / "ksbake-docs/de/greeting").exists()
    assert not (share / "ksbake-docs/fr/greeting").exists()
