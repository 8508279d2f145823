"""The config layer for real: accounts, system files, %post variants, over the bundled repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Workspace, demo_kickstart, object_file

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
    workspace.write("demo.ks", demo_kickstart() + "services --enabled=sshd\n")
    r = workspace.doit("config:demo")
    assert r.rc != 0
    assert "services: the tree has no systemd" in r.err and "sshd" in r.err
    assert "Traceback" not in r.err


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
