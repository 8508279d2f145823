"""The Debian → RPM converter and the bundled systemd distribution.

Fast tests convert small .debs made here with ``dpkg-deb --build`` and read the RPMs back
with ``rpm -qp``; the slow ones build the real distribution (once per run, in the shared
store), the ``server`` appliance from it, the nightly update, and boot it with an ssh login.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from ksbake.distro import convert as conv
from ksbake.distro.build import _macros
from ksbake.distro.debian import Index, Relation, Stanza, closure, parse_relations
from ksbake.errors import BuildError
from tests.conftest import PROJECT, Workspace, copy_config, fails, ok

MACROS = _macros()


# -- relations ------------------------------------------------------------------------------


def test_relations_alternatives_versions_and_arch_qualifiers() -> None:
    groups = parse_relations("libc6 (>= 2.34), awk | mawk:any, perl:any (<< 5.37)", "x Depends")
    assert groups == [
        [Relation("libc6", ">=", "2.34")],
        [Relation("awk"), Relation("mawk")],
        [Relation("perl", "<<", "5.37")],
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("foo [amd64]", "foo [amd64]"),
        ("foo:i386", "architecture i386"),
        ("foo (~ 1.0)", "foo (~ 1.0)"),
        ("foo <!nocheck>", "foo <!nocheck>"),
    ],
)
def test_untranslatable_dependency_names_package_and_field(text: str, words: str) -> None:
    with pytest.raises(BuildError) as info:
        parse_relations(text, "broken Depends")
    message = str(info.value)
    assert message.startswith("broken Depends: cannot translate the dependency")
    assert words in message


@pytest.mark.parametrize(
    ("group", "rpm"),
    [
        ([Relation("libc6", ">=", "2.36")], "libc6 >= 2.36-0"),
        ([Relation("libc6", ">>", "2.36")], "libc6 > 2.36-0"),  # still after 2.36-9
        ([Relation("libc6", "<<", "2.37")], "libc6 < 2.37-0"),
        ([Relation("zlib1g", ">=", "1:1.2.13.dfsg-1")], "zlib1g >= 1:1.2.13.dfsg-1"),
        ([Relation("a", "=", "1.0-2~bpo1")], "a = 1.0-2~bpo1"),
        ([Relation("awk"), Relation("mawk", ">=", "1.3")], "(awk or mawk >= 1.3-0)"),
    ],
)
def test_dependency_groups_become_rpm_requirements(group: list[Relation], rpm: str) -> None:
    assert conv.rpm_requirement(group) == rpm


def test_rpm_orders_translated_constraints_as_dpkg_does() -> None:
    """What the translation must keep: rpm's comparison of the translated EVRs agrees with
    dpkg's comparison of the Debian versions."""
    import rpm

    pairs = [
        ("2.36-9", "2.36"),
        ("1:2.0", "3.0"),
        ("1.0~rc1-1", "1.0-1"),
        ("2.36-9+deb12u4", "2.36-9"),
    ]
    for a, b in pairs:
        dpkg = (
            subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0
        )

        def evr(v: str) -> tuple[str, str, str]:
            e, _, rest = conv.rpm_version(v).rpartition(":")
            ver, _, rel = rest.rpartition("-")
            return (e or "0", ver, rel)

        assert (rpm.labelCompare(evr(a), evr(b)) > 0) == dpkg, (a, b)


def test_merged_usr() -> None:
    assert conv.merged_usr("/bin/ls") == "/usr/bin/ls"
    assert conv.merged_usr("/lib64/ld-linux-x86-64.so.2") == "/usr/lib64/ld-linux-x86-64.so.2"
    assert conv.merged_usr("/binaries") == "/binaries"
    assert conv.merged_usr("/usr/bin/ls") == "/usr/bin/ls"


# -- closure and alternatives ----------------------------------------------------------------


def _index(*stanzas: dict[str, str]) -> Index:
    return Index({s["Package"]: Stanza({"Version": "1", **s}) for s in stanzas})


def test_closure_takes_essential_packages_and_resolves_virtual_names() -> None:
    index = _index(
        {"Package": "app", "Depends": "mail-transport-agent, libfoo | libbar"},
        {"Package": "libbar"},
        {"Package": "postfix", "Provides": "mail-transport-agent"},
        {"Package": "exim4", "Provides": "mail-transport-agent"},
        {"Package": "coreutils", "Essential": "yes", "Pre-Depends": "libc6"},
        {"Package": "libc6", "Priority": "required"},
        {"Package": "unrelated"},
    )
    assert closure(index, ["app"], {}) == ["app", "coreutils", "exim4", "libbar", "libc6"]
    assert "postfix" in closure(index, ["app"], {"mail-transport-agent": "postfix"})
    with pytest.raises(BuildError, match="no package nosuch"):
        closure(index, ["nosuch"], {})


def test_alternatives_highest_priority_wins_with_its_slaves() -> None:
    mawk = (
        "update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n"
        "    --slave /usr/bin/nawk nawk /usr/bin/mawk\n"
    )
    gawk = "update-alternatives --install /usr/bin/awk awk /usr/bin/gawk 10\n"
    dynamic = 'update-alternatives --install "$link" x "$path" 1\n'
    winners = conv.resolve_alternatives({"mawk": mawk, "gawk": gawk, "other": dynamic})
    assert winners == {"/usr/bin/awk": ("gawk", "/usr/bin/gawk")}
    assert conv.resolve_alternatives({"mawk": mawk}) == {
        "/usr/bin/awk": ("mawk", "/usr/bin/mawk"),
        "/usr/bin/nawk": ("mawk", "/usr/bin/mawk"),
    }


# -- converting real .debs -------------------------------------------------------------------


def make_deb(
    tmp: Path, name: str, control: str, files: dict[str, str | tuple], **scripts: str
) -> Path:
    """A .deb built by dpkg-deb from ``files`` (path: content, or ("link", target), or
    ("hardlink", source)) and control fields."""
    root = tmp / f"{name}-src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.2-3\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        f"Description: test package\n more text\n{control}"
    )
    for script, text in scripts.items():
        path = root / "DEBIAN" / script
        path.write_text(text)
        path.chmod(0o755)
    for path, content in files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "link":
            dest.symlink_to(content[1])
        elif isinstance(content, tuple) and content[0] == "hardlink":
            os.link(root / content[1].lstrip("/"), dest)
        else:
            dest.write_text(str(content))
    conffiles = [p for p in files if p.startswith("/etc/")]
    if conffiles:
        (root / "DEBIAN" / "conffiles").write_text("\n".join(conffiles) + "\n")
    deb = tmp / f"{name}.deb"
    subprocess.run(
        ["dpkg-deb", "--nocheck", "--root-owner-group", "-Zgzip", "--build", root, deb],
        check=True,
        capture_output=True,
    )
    return deb


def query(rpm: Path, *args: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", *args, rpm], check=True, capture_output=True, text=True
    ).stdout


def convert(tmp: Path, deb: Path, fixup: conv.Fixup | None = None, **kw) -> conv.Converted:  # noqa: ANN003
    rpmdir = tmp / "rpms"
    rpmdir.mkdir(exist_ok=True)
    work = tmp / f"work-{deb.stem}"
    work.mkdir()
    return conv.convert(
        deb, work, rpmdir, fixup or conv.Fixup(), kw.get("winners", {}), kw.get("users", {}), MACROS
    )


UNIT = (
    "[Unit]\nDescription=d\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
)


def test_a_deb_becomes_an_rpm_with_files_metadata_and_scriptlets(tmp_path: Path) -> None:
    deb = make_deb(
        tmp_path,
        "demo-daemon",
        "Depends: libc6 (>= 2.34), awk | mawk\nPre-Depends: init-system-helpers (>= 1.54~)\n"
        "Provides: httpd, demo-api (= 2.0)\nConflicts: httpd, old-daemon (<< 1.0)\n"
        "Breaks: broken-thing (<= 0.9)\nReplaces: old-daemon\n",
        {
            "/bin/demo": "#!/bin/sh\n",
            "/usr/bin/demo2": ("hardlink", "/bin/demo"),
            "/lib/demo/helper": ("link", "../../usr/share/demo/real"),
            "/usr/share/demo/real": "x",
            "/etc/demo.conf": "setting=1\n",
            "/lib/systemd/system/demo.service": UNIT,
            "/usr/lib/tmpfiles.d/demo.conf": "d /run/demo 0755 root root -\n",
            "/usr/lib/sysusers.d/demo.conf": 'u demo - "Demo" /var/lib/demo\n',
            "/usr/share/doc/demo-daemon/copyright": "free\n",
            "/usr/share/locale/de/LC_MESSAGES/demo.mo": "de\n",
        },
        postinst="update-alternatives --install /usr/bin/demo-x demo-x /usr/bin/demo 10\n",
    )
    got = convert(tmp_path, deb, winners={"/usr/bin/demo-x": ("demo-daemon", "/usr/bin/demo")})
    rpm = got.rpm
    assert rpm.name == "demo-daemon-1.2-3.x86_64.rpm"
    requires = query(rpm, "--requires")
    assert "libc6 >= 2.34-0" in requires
    assert "(awk or mawk)" in requires
    assert "init-system-helpers >= 1.54~-0" in requires
    assert "base-files" in requires and "systemd" in requires
    provides = query(rpm, "--provides")
    assert "httpd" in provides and "demo-api = 2.0-0" in provides and "/bin/demo" in provides
    conflicts = query(rpm, "--conflicts")
    assert "httpd" not in conflicts  # provides and conflicts: Debian's one-provider idiom
    assert "broken-thing <= 0.9-0" in conflicts
    assert "old-daemon < 1.0-0" in query(rpm, "--obsoletes")  # Conflicts + Replaces
    listing = query(
        rpm, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES} -> %{FILELINKTOS}\n]"
    )
    assert "/usr/bin/demo " in listing and "/bin/demo" not in listing.replace("/usr/bin/demo", "")
    # the relative link still reaches its target from its merged location
    assert "/usr/lib/demo/helper -> ../../share/demo/real" in listing
    assert "/usr/bin/demo-x -> /usr/bin/demo" in listing  # the alternative
    assert "/etc/demo.conf" in query(rpm, "--configfiles")
    assert "/usr/share/doc/demo-daemon/copyright" in query(rpm, "--docfiles")
    assert "(de)" in query(rpm, "--qf", "[%{FILENAMES} (%{FILELANGS})\n]")
    inodes = dict(
        re.findall(r"^(\S+) (\d+)$", query(rpm, "--qf", "[%{FILENAMES} %{FILEINODES}\n]"), re.M)
    )
    assert inodes["/usr/bin/demo"] == inodes["/usr/bin/demo2"]  # a hardlink stays one
    scripts = query(rpm, "--scripts")
    assert "systemd-sysusers --replace=/usr/lib/sysusers.d/demo.conf" in scripts
    assert "systemd-tmpfiles --create /usr/lib/tmpfiles.d/demo.conf" in scripts
    assert "systemctl --no-reload preset demo.service" in scripts
    assert "update-alternatives" not in scripts  # Debian's maintainer scripts never run


def test_fixups_statoverride_users_and_kernel_posttrans(tmp_path: Path) -> None:
    deb = make_deb(
        tmp_path,
        "linux-image-9.9.9-test-amd64",
        "",
        {"/boot/vmlinuz-9.9.9-test-amd64": "kernel", "/usr/lib/helper": "x"},
    )
    fixup = conv.Fixup(
        attrs={"/usr/lib/helper": "4754 root messagebus"},
        provides=["kernel"],
        posttrans="dracut --force /boot/initramfs-@KVER@.img @KVER@",
        dirs={"/var/log/x": "0750 root adm"},
    )
    rpm = convert(tmp_path, deb, fixup, users={"messagebus": "dbus-system-bus-common"}).rpm
    assert "dracut --force /boot/initramfs-9.9.9-test-amd64.img 9.9.9-test-amd64" in query(
        rpm, "--scripts"
    )
    listing = query(
        rpm, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]"
    )
    assert "-rwsr-xr-- root:messagebus /usr/lib/helper" in listing
    assert "drwxr-x--- root:adm /var/log/x" in listing
    requires = query(rpm, "--qf", "[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]")
    assert "pre dbus-system-bus-common" in requires  # the user exists before the file
    assert "pre base-passwd" in requires  # adm: a static account
    assert "kernel" in query(rpm, "--provides")


def test_same_deb_same_rpm_bytes(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "twice", "", {"/usr/bin/twice": "#!/bin/sh\n"})
    rpms = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        rpms.append(convert(tmp_path / run, deb).rpm.read_bytes())
    assert rpms[0] == rpms[1]


def test_unknown_fixup_key_names_the_table() -> None:
    with pytest.raises(BuildError, match=r"\[x\]: unknown key colour"):
        conv.Fixup.from_table({"colour": 1}, "repo/distro/fixups.toml [x]")


# -- a converted package whose scriptlet fails: named, nothing cached ------------------------


@pytest.mark.slow
def test_failing_scriptlet_names_package_and_caches_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    from ksbake.bundledrepo import _createrepo

    repo = tmp_path / "extra"
    (repo / "Packages").mkdir(parents=True)
    # converted packages need base-files (the merged-/usr links) first: a stand-in
    base = make_deb(tmp_path, "base-files", "", {"/usr/share/doc/base-files/README": "x\n"})
    broken = make_deb(tmp_path, "broken-post", "", {"/usr/share/broken/README": "x\n"})
    failing = conv.Fixup(post="echo 'cannot configure broken-post' >&2\nexit 3")
    for deb, fixup in ((base, conv.Fixup()), (broken, failing)):
        work = tmp_path / f"work-{deb.stem}"
        work.mkdir()
        conv.convert(deb, work, repo / "Packages", fixup, {}, {}, MACROS)
    _createrepo(repo, None)
    ks = (PROJECT / "configs" / "demo.ks").read_text()
    ks = ks.replace(
        "%packages\n", f"repo --name=extra --baseurl=file://{repo}\n\n%packages\nbroken-post\n"
    )
    workspace.write("demo.ks", ks)
    r = fails(
        workspace,
        "Error in POSTIN scriptlet in rpm package broken-post",
        "cannot configure broken-post",
    )
    assert not [e for e in r.events if e["layer"] == "packages" and e["built"]]
    assert not (workspace.cache / "build" / "demo" / "packages.ref").exists()


# -- the distribution and the server appliance -----------------------------------------------


def _server_workspace(ws: Workspace, tmp: Path) -> Path:
    """configs/server.* with a key pair made here in the kickstart's sshkey line."""
    copy_config(ws, "server")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    ks = ws.configs / "server.ks"
    text = re.sub(
        r"^sshkey .*$",
        f'sshkey --username=ops "{key.with_suffix(".pub").read_text().strip()}"',
        ks.read_text(),
        flags=re.M,
    )
    ks.write_text(text)
    return key


def _tree(ws: Workspace, name: str = "server") -> Path:
    key = json.loads((ws.cache / "build" / name / "packages.ref").read_text())["key"]
    return ws.store / "objects" / "packages" / key / "tree"


@pytest.mark.slow
@pytest.mark.boot
def test_server_builds_offline_updates_and_passes_its_login_test(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The acceptance scenario: the distribution (built once), `server` from it, the nightly
    update of nginx from the updates repository, and the updated appliance's login test."""
    key = _server_workspace(workspace, tmp_path)
    first = workspace.doit("appliance:server", timeout=2400)
    ok(first)
    assert "GRUB modules: i386-pc from the tree (/usr/lib/grub/i386-pc" in first.out

    tree = _tree(workspace)
    files = sum(len(f) + len(d) for _, d, f in os.walk(tree))
    size = sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert files >= 5000 and size >= 300 * 10**6, (files, size)
    kver = next(tree.glob("boot/vmlinuz-*")).name.removeprefix("vmlinuz-")
    assert (tree / "boot" / f"initramfs-{kver}.img").stat().st_size > 10 * 2**20  # dracut's
    entry = (tree / "boot/loader/entries" / f"ksbake-{kver}.conf").read_text()
    assert f"linux /vmlinuz-{kver}" in entry
    assert (tree / "etc/ssh/sshd_config").is_file()
    assert os.readlink(tree / "bin") == "usr/bin"

    # the nightly: the updates repository brings a newer nginx; only what depends moves
    ks = workspace.configs / "server.ks"
    ks.write_text(
        ks.read_text().replace(
            "repo --name=distro --baseurl=file://$ksbake_distro/base\n",
            "repo --name=distro --baseurl=file://$ksbake_distro/base\n"
            "repo --name=distro-updates --baseurl=file://$ksbake_distro/updates\n",
        )
    )
    second = workspace.doit("appliance:server", timeout=1800)
    ok(second)
    moved = re.findall(
        r"^\s+~ (\S+) (\S+) \(distro\) -> (\S+) \(distro-updates\)$", second.out, re.M
    )
    assert {m[0] for m in moved} == {"nginx", "nginx-common"}, second.out
    assert second.built("lock") and second.built("packages") and second.built("disks")

    boot = workspace.doit("boottest:server", timeout=900, extra_env={"KSBAKE_SSH_KEY": str(key)})
    ok(boot)
    assert re.search(r"all \d+ checks passed", boot.out + boot.err), boot.out + boot.err


@pytest.mark.slow
def test_services_enabled_by_the_trees_systemctl_and_bad_names(
    workspace: Workspace, tmp_path: Path
) -> None:
    _server_workspace(workspace, tmp_path)
    ks = workspace.configs / "server.ks"
    good = ks.read_text()
    ks.write_text(
        good.replace(
            "services --enabled=sshd,nginx,NetworkManager", "services --enabled=sshd,nosuch"
        )
    )
    line = next(i for i, t in enumerate(ks.read_text().splitlines(), 1) if t.startswith("services"))
    fails(workspace, f"server.ks:{line}", "nosuch.service", target="config:server")

    ks.write_text(good.replace("sshkey --username=ops", "sshkey --username=nobody-here"))
    line = next(i for i, t in enumerate(ks.read_text().splitlines(), 1) if t.startswith("sshkey"))
    fails(workspace, f"server.ks:{line}", "nobody-here", target="config:server")

    ks.write_text(good)
    ok(workspace.doit("config:server", timeout=1800))
    config = json.loads((workspace.cache / "build" / "server" / "config.ref").read_text())["key"]
    upper = workspace.store / "objects" / "config" / config / "upper"
    wants = upper / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "ssh.service").endswith("/ssh.service")
    assert (wants / "nginx.service").is_symlink()
    assert (upper / "etc/machine-id").stat().st_size == 0
    assert "Europe/Berlin" in os.readlink(upper / "etc/localtime")
    assert (upper / "etc/hostname").read_text() == "server.ksbake.test\n"
    keyfile = upper / "etc/NetworkManager/system-connections/link.nmconnection"
    assert "method=auto" in keyfile.read_text() and "interface-name" not in keyfile.read_text()
    assert re.search(
        r"^ops:x:\d+:\d+:Operator:/home/ops:/bin/bash$", (upper / "etc/passwd").read_text(), re.M
    )


def test_distribution_sources_are_consistent() -> None:
    """repo/distro: every fixup table parses, every group member is a listed or required
    package name (checked against the package list, not Debian: no apt needed)."""
    from ksbake.distro.build import load_config

    config = load_config()
    assert "linux-image-cloud-amd64" in config.packages
    for group in config.groups.values():
        for kind in ("mandatory", "default", "optional"):
            for name in group.get(kind, []):
                assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name), name
    assert config.fixup("linux-image-6.1.0-99-cloud-amd64").posttrans
    assert textwrap.dedent(config.fixup("openssh-server").sysusers).startswith("u sshd")


def test_untranslatable_dependency_of_a_deb_names_the_package(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "odd-deps", "Depends: libc6, foo [amd64]\n", {"/usr/bin/odd": "x"})
    with pytest.raises(BuildError) as info:
        convert(tmp_path, deb)
    assert "odd-deps Depends: cannot translate the dependency 'foo [amd64]'" in str(info.value)


def test_a_deb_cannot_write_outside_its_tree(tmp_path: Path) -> None:
    """A symlinked directory in the archive, then a file "inside" it: refused, nothing
    written where the link points."""
    outside = tmp_path / "outside"
    outside.mkdir()
    deb = make_deb(tmp_path, "escape", "", {"/usr/share/x": ("link", str(outside))})
    # dpkg-deb cannot build such an archive from a tree: append the member with tar
    data = tmp_path / "escape-src"
    (data / "tmp-file").write_text("owned\n")
    subprocess.run(["dpkg-deb", "-R", deb, tmp_path / "unpacked"], check=True)
    tar = tmp_path / "data.tar"
    subprocess.run(
        ["tar", "-C", tmp_path / "unpacked", "--exclude=DEBIAN", "-cf", tar, "."], check=True
    )
    subprocess.run(
        ["tar", "-C", data, "-rf", tar, "--transform=s,tmp-file,./usr/share/x/evil,", "tmp-file"],
        check=True,
    )
    evil = tmp_path / "evil.deb"
    ctrl = tmp_path / "control.tar"
    subprocess.run(["tar", "-C", tmp_path / "unpacked/DEBIAN", "-cf", ctrl, "."], check=True)
    (tmp_path / "debian-binary").write_text("2.0\n")
    subprocess.run(
        ["ar", "rc", evil, tmp_path / "debian-binary", ctrl, tar], check=True, cwd=tmp_path
    )
    with pytest.raises(BuildError, match="outside the package's tree"):
        convert(tmp_path, evil)
    assert list(outside.iterdir()) == []


@pytest.mark.slow
def test_distribution_rebuilt_elsewhere_has_the_same_bytes(
    workspace: Workspace, tmp_path: Path
) -> None:
    """A second, independent build of the distribution (same sources, same .debs) gives the
    same .rpm and repodata bytes as the one in the shared store."""
    from ksbake.distro.build import build

    ok(workspace.doit("distro", timeout=1800))
    stored = workspace.store / "distro"
    again = tmp_path / "distro"
    build(again, workspace.store / "debs")

    def digests(root: Path) -> dict[str, str]:
        import hashlib

        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    first, second = digests(stored), digests(again)
    assert len(first) > 200
    assert first == second


@pytest.mark.parametrize(
    ("file", "text", "words"),
    [
        ("distro.toml", 'suite = "bookworm"\n', "distro.toml: the key 'update_suites' is missing"),
        ("distro.toml", "suite = [\n", "distro.toml: "),
        ("fixups.toml", '[dbus]\nprovides = "dbus-x"\n', "[dbus]: provides must be a list"),
        ("fixups.toml", "[dbus]\ncolour = 1\n", "[dbus]: unknown key colour"),
    ],
)
def test_bad_distribution_sources_are_one_line(
    tmp_path: Path, file: str, text: str, words: str
) -> None:
    import shutil

    from ksbake.distro.build import SOURCE, load_config

    source = tmp_path / "distro"
    shutil.copytree(SOURCE, source)
    (source / file).write_text(text)
    with pytest.raises(BuildError) as info:
        load_config(source)
    assert words in str(info.value) and str(source) in str(info.value)


def test_member_paths_keep_dotfiles() -> None:
    assert conv._member_path("./usr/bin/x") == "/usr/bin/x"
    assert conv._member_path("./.profile") == "/.profile"
    assert conv._member_path("./") == "/"
    assert conv._member_path("./etc/skel/") == "/etc/skel"
