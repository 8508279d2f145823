"""System commands: hostile values are refused at their file:line before anything is built, and
passwords leave the kickstart layer hashed (never in an input file, the store or a log).

The refusals run only the kickstart layer (fast); one real config build checks the hashes.
"""

from __future__ import annotations

import json
import stat

import pytest
from conftest import Workspace, demo_kickstart, ok

from ksbake.passwords import sha512_crypt

DEMO = demo_kickstart()
ROOTPW = "rootpw --plaintext ksbake\n"

HOSTILE = [
    pytest.param("user --name='root:x:0:0::/:/bin/sh'\n", "not a valid user name", id="uid0-line"),
    pytest.param("user --name=../../etc/x\n", "not a valid user name", id="path-name"),
    pytest.param("user --name='a b'\n", "not a valid user name", id="space-name"),
    pytest.param("user --name='a;reboot'\n", "not a valid user name", id="semicolon-name"),
    pytest.param("user --name=a --shell='/bin/sh -c x'\n", "not an absolute path", id="shell"),
    pytest.param("user --name=a --shell=bash\n", "not an absolute path", id="relative-shell"),
    pytest.param("user --name=a --homedir=/home/../etc\n", "not an absolute path", id="home"),
    pytest.param("user --name=a --gecos='x:y'\n", "cannot go into /etc/passwd", id="gecos"),
    pytest.param("user --name=a --groups='wheel,a b'\n", "not a valid group", id="groups"),
    pytest.param("group --name='g;x'\n", "not a valid group name", id="group"),
    pytest.param("network --hostname='demo;reboot'\n", "not a valid host name", id="hostname"),
    pytest.param("network --hostname=-bad-\n", "not a valid host name", id="hostname-dash"),
    pytest.param("lang 'en_US.UTF-8; x'\n", "not a locale name", id="lang"),
    pytest.param("keyboard 'us x'\n", "not a keymap name", id="keyboard"),
    pytest.param("timezone ../../etc/shadow\n", "not a time zone name", id="timezone"),
    pytest.param("services --enabled='sshd;x'\n", "not a unit name", id="services"),
]


def kickstart_with(line: str) -> str:
    return DEMO.replace(ROOTPW, ROOTPW + line)


@pytest.mark.slow
@pytest.mark.parametrize(("line", "message"), HOSTILE)
def test_hostile_system_values_are_refused_at_their_line(
    workspace: Workspace, line: str, message: str
) -> None:
    workspace.write("demo.ks", kickstart_with(line))
    r = workspace.doit("kickstart:demo")
    assert r.rc != 0
    errors = [x for x in r.err.splitlines() if x.startswith("ksbake: error:")]
    number = DEMO.splitlines().index(ROOTPW.strip()) + 2
    assert len(errors) == 1 and f"demo.ks:{number}: " in errors[0] and message in errors[0], r.err
    assert "Traceback" not in r.err + r.out
    assert not (workspace.cache / "build/demo/inputs/config.json").exists()


@pytest.mark.slow
def test_passwords_leave_the_kickstart_layer_hashed(workspace: Workspace) -> None:
    secret, user_secret = "pa ss#word;1", "us er#2"
    text = DEMO.replace(ROOTPW, f'rootpw --plaintext "{secret}"\n')
    text = text.replace(
        "%packages", f'user --name=ops --password="{user_secret}" --plaintext\n\n%packages'
    )
    workspace.write("demo.ks", text)
    r = workspace.doit("config:demo")
    ok(r)
    inputs = workspace.cache / "build/demo/inputs"
    for f in inputs.iterdir():
        assert secret not in f.read_text() and user_secret not in f.read_text(), f
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert secret not in r.out + r.err
    key = json.loads((workspace.cache / "build/demo/config.ref").read_text())["key"]
    shadow = (workspace.store / "objects/config" / key / "upper/etc/shadow").read_text()
    fields = {line.split(":")[0]: line.split(":")[1] for line in shadow.splitlines()}
    for name, password in (("root", secret), ("ops", user_secret)):  # whole, '#' included
        salt = fields[name].split("$")[2]
        assert fields[name] == sha512_crypt(password, salt), name
    assert not any(
        secret in p.read_text(errors="replace")
        for p in (workspace.store / "objects/config" / key).rglob("*.json")
    )


def test_hash_passwords_is_deterministic_and_keeps_crypted_ones() -> None:
    from ksbake.layers.l1_kickstart.system import hash_passwords

    text = "rootpw --plaintext secret\nuser --name=a --password=x --plaintext\n"
    once, twice = hash_passwords(text, "F40"), hash_passwords(text, "F40")
    assert once == twice and "secret" not in once and "--iscrypted" in once
    crypted = "rootpw --iscrypted $6$abc$def\n"
    assert "$6$abc$def" in hash_passwords(crypted, "F40")


SETTINGS = [
    pytest.param(
        "",
        "part / --fstype=ext4 --size=999999999999 --ondisk=sda",
        ("demo.ks:", "larger than the 16 TiB"),
        id="huge-part",
    ),
    pytest.param(
        '[disk_sizes]\nsda = "20TiB"\n', None, ("demo.toml: disk_sizes:", "16 TiB"), id="huge-disk"
    ),
    pytest.param(
        '[disk_sizes]\nsdq = "1GiB"\n', None, ("demo.toml: disk_sizes:", "sdq"), id="unknown-disk"
    ),
    pytest.param('syntax = "F99"\n', None, ("demo.toml: syntax:",), id="syntax"),
    pytest.param('version = "1 0"\n', None, ("demo.toml", "version"), id="version"),
    pytest.param('release = "1/2"\n', None, ("demo.toml", "release"), id="release"),
    pytest.param("vcpus = 100000\n", None, ("demo.toml", "vcpus", "at most 4096"), id="vcpus"),
    pytest.param("memory = 0\n", None, ("demo.toml", "memory"), id="memory"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("toml", "part", "needles"), SETTINGS)
def test_settings_and_sizes_are_refused_before_any_build(
    workspace: Workspace, toml: str, part: str | None, needles: tuple[str, ...]
) -> None:
    text = DEMO
    if part:
        text = text.replace("part / --fstype=ext4 --size=192 --grow --ondisk=sda", part)
    workspace.write("demo.ks", text)
    if toml:
        workspace.write("demo.toml", toml)
    r = workspace.doit("kickstart:demo")
    errors = [x for x in r.err.splitlines() if x.startswith("ksbake: error:")]
    assert r.rc != 0 and len(errors) == 1, r.err
    assert all(n in errors[0] for n in needles), errors[0]
    assert "Traceback" not in r.err + r.out


@pytest.mark.slow
def test_a_name_descriptors_cannot_carry_is_refused(workspace: Workspace) -> None:
    workspace.write("bad name.ks", DEMO)
    r = workspace.doit("kickstart")
    assert r.rc != 0 and "'bad name' cannot be an appliance name" in r.err, r.err
