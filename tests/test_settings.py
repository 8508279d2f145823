"""Appliance settings: validation errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksbake import settings
from ksbake.errors import ConfigError


def test_defaults_without_file(tmp_path: Path) -> None:
    conf = settings.load("x", tmp_path, environ={})
    assert conf.syntax == settings.DEFAULT_SYNTAX and conf.mirrors == {}


def test_values_and_env_override(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text('releasever = 39\n[mirrors]\nfedora = "file:///a"\n')
    conf = settings.load("x", tmp_path, environ={"KSBAKE_MIRRORS": "updates=file:///b"})
    assert conf.releasever == "39"
    assert conf.mirrors == {"fedora": "file:///a", "updates": "file:///b"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ('compat = "yes"\n', "key 'compat' must be of type boolean"),
        ("syntax = [\n", "x.toml"),
        ("[mirrors]\nfedora = 3\n", "entry 'fedora' must be a string"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load("x", tmp_path, environ={})
    assert needle in str(info.value) and str(tmp_path / "x.toml") in str(info.value)


def test_bad_mirror_env() -> None:
    with pytest.raises(ConfigError, match="KSBAKE_MIRRORS"):
        settings.parse_mirrors("fedora", "KSBAKE_MIRRORS")


def test_sizes_and_enums(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'firmware = "uefi"\nboot_timeout = 60\n[disk_sizes]\nsda = "4GiB"\n"/dev/sdb" = 512\n'
    )
    conf = settings.load("x", tmp_path, environ={"KSBAKE_ACCEL": "kvm"})
    assert conf.disk_sizes == {"sda": 4 * 1024**3, "sdb": 512 * 1024**2}
    assert conf.firmware == "uefi" and conf.accel == "kvm" and conf.boot_timeout == 60


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('firmware = "coreboot"\n', "key 'firmware' must be one of bios, uefi"),
        ('[disk_sizes]\nsda = "lots"\n', "key 'disk_sizes' entry 'sda' must be a size"),
        ("boot_timeout = -1\n", "key 'boot_timeout' must be positive"),
        ("boot_timeout = true\n", "key 'boot_timeout' must be of type integer"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        settings.load("x", tmp_path, environ={})


def test_output_settings(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'formats = ["qcow2", "vmdk", "qcow2"]\nqcow2_compression = "zstd"\nvcpus = 2\n'
        "memory = 1024\nversion = 2.5\nrelease = 3\n"
    )
    conf = settings.load("x", tmp_path, environ={})
    assert conf.formats == ("qcow2", "vmdk")
    assert (conf.qcow2_compression, conf.vcpus, conf.memory) == ("zstd", 2, 1024)
    assert (conf.version, conf.release) == ("2.5", "3")


def test_appliance_creator_defaults(tmp_path: Path) -> None:
    conf = settings.load("x", tmp_path, environ={})
    assert (conf.formats, conf.vcpus, conf.memory) == (("qcow2",), 1, 512)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('formats = ["qcow3"]\n', "key 'formats' names an unknown format 'qcow3'"),
        ('vmdk_subformat = "flat"\n', "key 'vmdk_subformat' must be one of"),
        ('formats = "qcow2"\n', "key 'formats' must be of type array"),
    ],
)
def test_invalid_output_settings(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        settings.load("x", tmp_path, environ={})


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [key for key in settings.FIELDS if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


# -- the boot test's login and checks --------------------------------------------------------

LOGIN = """
boot_ssh_user = "admin"
boot_ssh_key = "keys/admin"
boot_forward = [80, 8080, 80]

[[boot_checks]]
run = "systemctl is-active sshd"
match = "^active$"

[[boot_checks]]
name = "web page"
run = "curl -s http://127.0.0.1:{port:80}/ | awk '{print $1}'"
where = "host"
expect = "Welcome"
timeout = 10

[[boot_checks]]
run = "test -d /nonexistent"
status = 1
"""


def test_login_settings(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(LOGIN)
    conf = settings.load("x", tmp_path, environ={})
    assert conf.boot_ssh_user == "admin"
    assert conf.boot_ssh_key == str(tmp_path.resolve() / "keys/admin")
    assert conf.boot_forward == (80, 8080)
    assert settings.forwarded_ports(conf) == (22, 80, 8080)
    first, web, status = conf.boot_checks
    assert first == settings.BootCheck("systemctl is-active sshd", match="^active$")
    assert (web.where, web.expect, web.timeout, web.name) == ("host", "Welcome", 10, "web page")
    assert (status.status, status.where, status.timeout) == (1, "guest", 60)


def test_without_login_settings(tmp_path: Path) -> None:
    conf = settings.load("x", tmp_path, environ={})
    assert (conf.boot_ssh_user, conf.boot_ssh_key, conf.boot_checks) == (None, None, ())
    assert settings.forwarded_ports(conf) == ()
    # host checks and forwards need no login
    (tmp_path / "x.toml").write_text(
        'boot_forward = [80]\n[[boot_checks]]\nrun = "curl {port:80}"\nwhere = "host"\n'
    )
    assert settings.forwarded_ports(settings.load("x", tmp_path, environ={})) == (80,)


def test_ssh_key_from_env_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.toml").write_text('boot_ssh_user = "admin"\nboot_ssh_key = "/abs/key"\n')
    assert settings.load("x", tmp_path, environ={}).boot_ssh_key == "/abs/key"
    monkeypatch.chdir(tmp_path)
    conf = settings.load("x", tmp_path, environ={"KSBAKE_SSH_KEY": "gen/id"})
    assert conf.boot_ssh_key == str(tmp_path.resolve() / "gen/id")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('boot_ssh_user = "-oProxyCommand=x"\n', "key 'boot_ssh_user' '-oProxyCommand=x' is not"),
        ("boot_ssh_user = 1\n", "key 'boot_ssh_user' must be of type string"),
        ('boot_ssh_key = ""\n', "key 'boot_ssh_key' must be the path of a private key"),
        ("boot_forward = [0]\n", "key 'boot_forward' entry 0 is not a TCP port"),
        ('boot_forward = ["80"]\n', "key 'boot_forward' entry '80' is not a TCP port"),
        ("boot_forward = 80\n", "key 'boot_forward' must be of type array"),
        ('boot_checks = "uptime"\n', "key 'boot_checks' must be of type array"),
        ('boot_checks = ["uptime"]\n', "key 'boot_checks' check 1 must be a table"),
        ('[[boot_checks]]\nexpect = "x"\n', "key 'boot_checks' check 1 needs run ="),
        ('[[boot_checks]]\nrun = "x"\nexepct = "y"\n', "check 1: unknown key 'exepct'"),
        ('[[boot_checks]]\nrun = "x"\nwhere = "vm"\n', "check 1: 'where' must be guest or host"),
        ('[[boot_checks]]\nrun = "x"\nmatch = "("\n', "check 1: 'match' is not a regular"),
        ('[[boot_checks]]\nrun = "x"\nstatus = 256\n', "check 1: 'status' must be 0-255"),
        ('[[boot_checks]]\nrun = "x"\nstatus = "0"\n', "check 1: 'status' must be an integer"),
        ('[[boot_checks]]\nrun = "x"\ntimeout = 0\n', "check 1: 'timeout' must be 1-3600"),
        ('[[boot_checks]]\nrun = "x"\nexpect = true\n', "check 1: 'expect' must be a string"),
        (
            'boot_ssh_user = "a"\n[[boot_checks]]\nrun = "curl {port:80}"\n',
            "check 1: {port:N} is a host port",
        ),
        ('[[boot_checks]]\nrun = "uptime"\n', "key 'boot_checks' check 1 runs in the guest"),
        (
            '[[boot_checks]]\nrun = "true"\nwhere = "host"\n[[boot_checks]]\n'
            'run = "curl {port:81}"\nwhere = "host"\n',
            "key 'boot_checks' check 2 uses {port:81}, but guest port 81 is not forwarded",
        ),
    ],
)
def test_bad_login_settings(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load("x", tmp_path, environ={})
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'x.toml'}: key 'boot_"), message
    assert needle in message and "\n" not in message


def test_local_toml_holds_this_hosts_mirrors_and_accel(tmp_path: Path) -> None:
    """configs/local.toml (untracked) applies to every appliance: its mirrors over the
    appliance's, KSBAKE_MIRRORS over both."""
    (tmp_path / "demo.toml").write_text('mirrors = { fedora = "http://a", updates = "http://b" }\n')
    (tmp_path / "local.toml").write_text('mirrors = { fedora = "file:///m" }\naccel = "kvm"\n')
    conf = settings.load("demo", tmp_path, {})
    assert conf.mirrors == {"fedora": "file:///m", "updates": "http://b"}
    assert conf.accel == "kvm"
    env = settings.load("demo", tmp_path, {"KSBAKE_MIRRORS": "fedora=file:///env"})
    assert env.mirrors["fedora"] == "file:///env"
    assert settings.load("other", tmp_path, {}).mirrors == {"fedora": "file:///m"}


def test_local_toml_takes_only_host_keys(tmp_path: Path) -> None:
    (tmp_path / "local.toml").write_text('formats = ["vmdk"]\n')
    with pytest.raises(ConfigError, match=r"local.toml: unknown key 'formats'.*mirrors, accel"):
        settings.load("demo", tmp_path, {})
    (tmp_path / "local.toml").unlink()
    with pytest.raises(ConfigError, match="'local' cannot be an appliance name"):
        settings.load("local", tmp_path, {})
