"""The config layer for real: accounts, system files, %post variants, over the bundled repo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, fails, object_file

from ksbake.layers.l4_config import password_field
from ksbake.passwords import sha512_crypt

CRYPTED = (
    "$6$fixedsalt$VQ7JOx3c/KmGkZqRnv0.Pq6JK.D1bZlq1sJ6kX5sGUBn1yZLZ3Qz8S0z9vI1Nq2yDd0Kc1I8x0g"
    "P5wN3G0a1."
)


def test_sha512_crypt_matches_known_vector() -> None:
    # glibc/libxcrypt test vector (crypt(3) SHA-512, "rounds" default 5000)
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
        "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )


def test_password_field_lock_and_crypted() -> None:
    assert password_field(CRYPTED, True, False, "seed", "root") == CRYPTED
    assert password_field(CRYPTED, True, True, "seed", "root") == "!" + CRYPTED
    a = password_field("secret", False, False, "seed", "root")
    assert a.startswith("$6$") and a == password_field("secret", False, False, "seed", "root")
    assert a != password_field("secret", False, False, "other-seed", "root")


KS_EXTRA = f"""
group --name=ops --gid=2000
user --name=alice --uid=1500 --groups=ops --gecos="Alice A" --password=wonderland --plaintext
user --name=bob --lock --iscrypted --password={CRYPTED}
sshkey --username=alice "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsbaketestkey alice@example"
keyboard --vckeymap=de
"""

POSTS = """
%post --nochroot
echo "nochroot sees $INSTALL_ROOT" > "$INSTALL_ROOT/etc/nochroot-ran"
test -f "$INSTALL_ROOT/etc/os-release"
%end

%post --interpreter=/usr/bin/ash --log=/var/log/ks-post.log
echo "this runs under $0"
%end

%post
ls /proc/self > /dev/null && echo "chroot has /proc and /dev/null" > /etc/chroot-check
%end
"""


@pytest.mark.slow
def test_accounts_and_post_variants(workspace: Workspace) -> None:
    text = demo_kickstart().replace("selinux --disabled", KS_EXTRA + "selinux --disabled") + POSTS
    text = text.replace("rootpw --plaintext ksbake", f"rootpw --lock --iscrypted {CRYPTED}")
    workspace.write("demo.ks", text)
    r = workspace.doit("config:demo")
    assert r.rc == 0, r.out + r.err
    # the hashes never reach the output
    assert CRYPTED not in r.out + r.err
    from ksbake.layers.l4_config import tree_layers

    ref = json.loads((workspace.cache / "build/demo/config.ref").read_text())
    layers = tree_layers(workspace.store / "objects/config" / ref["key"])

    def read(rel: str) -> str:
        found = object_file(workspace.store, layers, rel)
        assert found is not None, rel
        return found.read_text()

    shadow = {line.split(":")[0]: line.split(":") for line in read("/etc/shadow").splitlines()}
    assert shadow["root"][1] == "!" + CRYPTED
    assert shadow["bob"][1] == "!" + CRYPTED
    assert shadow["alice"][1].startswith("$6$") and "wonderland" not in shadow["alice"][1]
    passwd = {line.split(":")[0]: line.split(":") for line in read("/etc/passwd").splitlines()}
    assert passwd["alice"][2:5] == ["1500", "1500", "Alice A"]
    assert passwd["alice"][6] == "/bin/sh"  # no bash in the tree: falls back to /bin/sh
    assert int(passwd["bob"][2]) >= 1000 and passwd["bob"][2] != "1500"
    groups = {line.split(":")[0]: line.split(":") for line in read("/etc/group").splitlines()}
    assert groups["ops"][2] == "2000" and "alice" in groups["ops"][3].split(",")
    keys = layers[0] / "home/alice/.ssh/authorized_keys"
    assert keys.read_text().startswith("ssh-ed25519 ")
    assert keys.stat().st_uid == 1500 and keys.stat().st_mode & 0o777 == 0o600
    assert read("/etc/vconsole.conf") == "KEYMAP=de\n"
    # %post variants
    assert read("/etc/nochroot-ran").startswith("nochroot sees /")
    assert "this runs under /tmp/ks-script-3" in read("/var/log/ks-post.log")
    assert read("/etc/chroot-check") == "chroot has /proc and /dev/null\n"
    # the scripts were removed; nothing mounted is left in the upper dir
    assert not list((layers[0] / "tmp").glob("ks-script-*"))
    assert not (layers[0] / "proc/self").exists()
    # the shared packages tree is untouched
    assert not (layers[1] / "etc/nochroot-ran").exists()
    assert "alice" not in (layers[1] / "etc/passwd").read_text()


@pytest.mark.slow
def test_services_without_systemd_is_a_clear_error(workspace: Workspace) -> None:
    path = workspace.write("demo.ks", demo_kickstart() + "services --enabled=sshd\n")
    line = len(demo_kickstart().splitlines()) + 1
    fails(
        workspace, f"{path}:{line}: services: the tree has no systemd", "sshd", target="config:demo"
    )


@pytest.mark.slow
def test_firewall_and_selinux_warnings_reach_the_user(workspace: Workspace) -> None:
    text = demo_kickstart().replace("selinux --disabled", "selinux --enforcing")
    text = text.replace("firewall --disabled", "firewall --enabled --service=ssh")
    workspace.write("demo.ks", text)
    r = workspace.doit("config:demo")
    assert r.rc == 0, r.out + r.err
    warnings = [line for line in r.err.splitlines() if line.startswith("warning: config:demo: ")]
    assert any("selinux --enforcing: the tree has no SELinux policy" in w for w in warnings), r.err
    assert any("firewall --enabled --service=ssh: the tree has no firewalld" in w for w in warnings)


@pytest.mark.slow
def test_host_dnf_state_untouched(workspace: Workspace) -> None:
    before = Path("/var/lib/dnf").exists()
    workspace.write("demo.ks", demo_kickstart())
    assert workspace.doit("config:demo").rc == 0
    assert Path("/var/lib/dnf").exists() == before
    assert not Path("/root/.rpmdb").exists() or before


def test_network_keyfiles() -> None:
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    from ksbake.layers.l4_config import nm_keyfile

    handler = makeVersion("F40")
    KickstartParser(handler).readKickstartFromString(
        "network --device=eth0 --bootproto=static --ip=10.0.0.5 --netmask=255.255.255.0 "
        "--gateway=10.0.0.1 --nameserver=10.0.0.2,10.0.0.3\n"
        "network --device=eth1 --bootproto=dhcp --onboot=no\n"
    )
    static, dhcp = (nm_keyfile(n) for n in handler.network.network)
    assert "address1=10.0.0.5/24,10.0.0.1\nmethod=manual" in static
    assert "dns=10.0.0.2;10.0.0.3;" in static and "interface-name=eth0" in static
    assert "method=auto" in dhcp and "autoconnect=false" in dhcp


def test_selinux_mode_and_relabel(tmp_path: Path) -> None:
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    from ksbake.layers.l4_config import apply_security

    (tmp_path / "etc/selinux").mkdir(parents=True)
    (tmp_path / "etc/selinux/config").write_text("SELINUX=disabled\nSELINUXTYPE=targeted\n")
    handler = makeVersion("F40")
    KickstartParser(handler).readKickstartFromString("selinux --enforcing\n")
    warnings: list[str] = []
    apply_security(tmp_path, handler, warnings)
    assert (tmp_path / "etc/selinux/config").read_text() == (
        "SELINUX=enforcing\nSELINUXTYPE=targeted\n"
    )
    assert (tmp_path / ".autorelabel").exists() and not warnings


# -- on synthetic trees: what a real (systemd) tree needs ------------------------------------


def _handler(text: str):  # noqa: ANN202
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    handler = makeVersion("F40")
    KickstartParser(handler).readKickstartFromString(text)
    return handler


def _put(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


UNIT = "[Unit]\nDescription={0}\n[Service]\nExecStart=/bin/true\n"
INSTALL = "[Install]\nWantedBy={0}\n"


def _units(tree: Path) -> Path:
    """Unit files as packages ship them: one to enable, one static (no [Install]), a
    template, and one enabled already (as a preset would have it)."""
    system = tree / "usr/lib/systemd/system"
    _put(system / "web.service", UNIT.format("web") + INSTALL.format("multi-user.target"))
    _put(system / "static.service", UNIT.format("static"))
    _put(system / "getty@.service", UNIT.format("getty") + INSTALL.format("getty.target"))
    _put(system / "old.service", UNIT.format("old") + INSTALL.format("multi-user.target"))
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "old.service").symlink_to("/usr/lib/systemd/system/old.service")
    return tree


def _copy_program(tree: Path, program: str, dest: str) -> None:
    """A host program and the libraries it links into ``tree`` (a tree's own tool)."""
    import re
    import shutil
    import subprocess

    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+) \(0x", out):
        target = tree / lib.lstrip("/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(lib).resolve(), target)
    target = tree / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(program, target)


SERVICES = "services --enabled=web,static,getty@ttyS0 --disabled=old,gone\n"


def _check_services(tree: Path, warnings: list[str]) -> None:
    etc = tree / "etc/systemd/system"
    assert os.readlink(etc / "multi-user.target.wants/web.service") == (
        "/usr/lib/systemd/system/web.service"
    )
    assert (etc / "getty.target.wants/getty@ttyS0.service").is_symlink()
    assert not (etc / "multi-user.target.wants/old.service").is_symlink()
    assert warnings[0] == (
        "services --disabled=gone: the tree has no unit gone.service; nothing to disable"
    )
    assert warnings[1:] == [
        "services --enabled=static: static.service has no [Install] section (a static unit, "
        "started by another one): systemctl enable does nothing"
    ]


def _need(*tools: str) -> None:
    import shutil

    if os.geteuid() != 0:
        pytest.skip("needs root (the sandbox, file owners)")
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")


def test_services_by_the_trees_systemctl(tmp_path: Path) -> None:
    """A tree with its own systemctl: enable/disable run in the tree, sandboxed (PID 1 of its
    namespace), not the host's ``systemctl --root``."""
    import shutil

    from ksbake.layers.l4_config import apply_services

    _need("systemctl", "bwrap", "ldd")
    tree = _units(tmp_path / "tree")
    _copy_program(tree, shutil.which("systemctl") or "", "/usr/bin/systemctl.real")
    _copy_program(tree, "/bin/sh", "/bin/sh")
    _put(
        tree / "usr/bin/systemctl",
        '#!/bin/sh\necho "$$ $*" >> /systemctl-ran\nexec /usr/bin/systemctl.real "$@"\n',
        0o755,
    )
    warnings: list[str] = []
    apply_services(tree, _handler(SERVICES), warnings)
    _check_services(tree, warnings)
    assert (tree / "systemctl-ran").read_text() == (
        "1 disable old\n1 enable web\n1 enable static\n1 enable getty@ttyS0\n"
    )


def test_services_by_the_hosts_systemctl(tmp_path: Path) -> None:
    from ksbake.layers.l4_config import apply_services

    _need("systemctl")
    tree = _units(tmp_path / "tree")
    warnings: list[str] = []
    apply_services(tree, _handler(SERVICES), warnings)
    _check_services(tree, warnings)


def test_services_unknown_unit_names_unit_and_line(tmp_path: Path) -> None:
    from ksbake.errors import BuildError
    from ksbake.layers import config_unkeyed
    from ksbake.layers.l4_config import apply_services, unit_exists, unit_name
    from ksbake.runner import located

    tree = _units(tmp_path / "tree")
    (tree / "etc/systemd/system/sshd.service").symlink_to("/usr/lib/systemd/system/web.service")
    assert unit_name("sshd") == "sshd.service" and unit_name("x.socket") == "x.socket"
    assert unit_name("a.b") == "a.b.service"
    assert unit_exists(tree, "sshd") and unit_exists(tree, "getty@tty1")
    assert not unit_exists(tree, "getty@tty1.socket") and not unit_exists(tree, "nosuch")
    with pytest.raises(BuildError) as info:
        apply_services(tree, _handler("services --enabled=web,nosuch\n"), [])
    assert info.value.message.startswith(
        "services --enabled=nosuch: the tree has no unit nosuch.service (looked in "
    )
    assert not (tree / "etc/systemd/system/multi-user.target.wants/web.service").exists()
    # the kickstart layer records the services line for it (as for sshkey)
    from test_keys import source

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "demo.ks").write_text(demo_kickstart() + "\nservices --enabled=web,nosuch\n")
    where = config_unkeyed(source(configs))["where"]["services"]
    line = len(demo_kickstart().splitlines()) + 2
    assert where == f"{configs / 'demo.ks'}:{line}"
    assert str(located(info.value, where)).startswith(
        f"{configs / 'demo.ks'}:{line}: services --enabled=nosuch: the tree has no unit "
        "nosuch.service"
    )


def test_machine_id_left_for_first_boot(tmp_path: Path) -> None:
    from ksbake.layers.l4_config import reset_machine_id

    tree = tmp_path / "tree"
    _put(tree / "usr/lib/systemd/systemd", "", 0o755)
    _put(tree / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    _put(tree / "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
    reset_machine_id(tree)
    st = (tree / "etc/machine-id").stat()
    assert st.st_size == 0 and st.st_mode & 0o7777 == 0o444
    assert not (tree / "var/lib/dbus/machine-id").exists()
    # Fedora's dbus link to /etc/machine-id stays; no machine-id at all: an empty one
    (tree / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    (tree / "etc/machine-id").unlink()
    reset_machine_id(tree)
    assert (tree / "etc/machine-id").stat().st_size == 0
    assert (tree / "var/lib/dbus/machine-id").is_symlink()
    # a tree without systemd keeps its /etc/machine-id (nothing there fills an empty one)
    plain = tmp_path / "plain"
    _put(plain / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    reset_machine_id(plain)
    assert (plain / "etc/machine-id").read_text().startswith("0123")


def test_firewall_and_selinux_on_a_tree_without_them(tmp_path: Path) -> None:
    from ksbake.layers.l4_config import apply_security

    warnings: list[str] = []
    text = "firewall --enabled --service=ssh --port=8080:tcp\nselinux --enforcing\n"
    apply_security(tmp_path, _handler(text), warnings)
    assert warnings == [
        "selinux --enforcing: the tree has no SELinux policy (/etc/selinux/config), so the "
        "appliance runs without SELinux (add selinux-policy-targeted to %packages)",
        "firewall --enabled --service=ssh --port=8080:tcp: the tree has no firewalld "
        "(/usr/bin/firewall-offline-cmd), so no firewall is configured (add firewalld to "
        "%packages)",
    ]
    assert not (tmp_path / ".autorelabel").exists() and not list(tmp_path.iterdir())
    # --disabled is what such a tree is: nothing to say
    warnings.clear()
    apply_security(tmp_path, _handler("firewall --disabled\nselinux --disabled\n"), warnings)
    assert warnings == []


def test_lang_and_keyboard(tmp_path: Path) -> None:
    from ksbake.layers.l4_config import apply_system

    warnings: list[str] = []
    apply_system(tmp_path, _handler("lang de_DE.UTF-8\nkeyboard --vckeymap=de-latin1\n"), warnings)
    assert (tmp_path / "etc/locale.conf").read_text() == "LANG=de_DE.UTF-8\n"
    assert (tmp_path / "etc/vconsole.conf").read_text() == "KEYMAP=de-latin1\n"
    apply_system(tmp_path, _handler("keyboard us\n"), warnings)  # the legacy form
    assert (tmp_path / "etc/vconsole.conf").read_text() == "KEYMAP=us\n"
    assert warnings == []
