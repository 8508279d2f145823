"""The boot test's login: port forwards in QEMU's argv, waiting for sshd, commands over ssh,
the checks and how they fail; all fast (a fake QEMU, a fake sshd banner, a fake ssh client
that runs the "guest" command locally), no boot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksbake import boottest, qemu, settings
from ksbake.errors import BuildError, ConfigError, KsbakeError
from ksbake.paths import Paths
from ksbake.settings import BootCheck

FAKE_QEMU = r"""#!/bin/sh
# A stand-in for qemu-system-x86_64; FAKE_QEMU_MODE says how the "guest" behaves.
for a in "$@"; do
    case "$a" in file,id=ksbake-serial,path=*) log="${a#file,id=ksbake-serial,path=}" ;; esac
done
printf '%s\n' "$@" > "$log.argv.$$"
echo $$ >> "$log.pids"
case "$FAKE_QEMU_MODE" in
    taken-once)
        if [ ! -e "$log.taken" ]; then
            : > "$log.taken"
            echo "qemu: -nic user: Could not set up host forwarding rule 'tcp:127.0.0.1:1-:22'" >&2
            exit 1
        fi ;;
    taken) echo "qemu-system-x86_64: Could not set up host forwarding rule 'x'" >&2; exit 1 ;;
esac
sleep 1000 &
echo $! > "$log.child"
printf 'booting the fake kernel\r\nappliance login: ' >> "$log"
case "$FAKE_QEMU_MODE" in
    die-soon) sleep 1; printf 'Kernel panic\r\n' >> "$log"; kill $!; exit 3 ;;
esac
wait
"""

# A stand-in for ssh: FAKE_SSH_FAIL=N fails the first N calls as ssh does (exit status 255);
# otherwise it runs the command (the last argument) here, as if in the guest.
FAKE_SSH = r"""#!/bin/sh
state="$FAKE_SSH_STATE"
echo "$*" >> "$state.calls"
calls=$(wc -l < "$state.calls")
if [ "$calls" -le "${FAKE_SSH_FAIL:-0}" ]; then
    echo "admin@127.0.0.1: Permission denied (publickey)." >&2
    exit 255
fi
for last in "$@"; do :; done
exec /bin/sh -c "$last"
"""


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return _script(tmp_path / "fake-qemu-system-x86_64", FAKE_QEMU)


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_SSH_STATE", str(tmp_path / "ssh"))
    return _script(tmp_path / "fake-ssh", FAKE_SSH)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(1024 * 1024)
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_test"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n")
    path.chmod(0o644)  # as a git checkout leaves it
    return path


class BannerServer:
    """127.0.0.1:PORT that closes each connection at once (QEMU's forward while the guest
    does not listen) until ``ready``, then answers with an SSH banner."""

    def __init__(self, banner: bytes = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.banner = banner
        self.ready = False
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.ready:
                    conn.sendall(b"a pre-banner line\r\n" + self.banner)
                    time.sleep(0.1)

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def banner() -> Iterator[BannerServer]:
    server = BannerServer()
    yield server
    server.close()


# -- QEMU's argv ---------------------------------------------------------------------------


def test_no_forwards_no_nic(tmp_path: Path) -> None:
    argv = qemu.build_argv([(Path("/i/a"), "raw")], log=tmp_path / "l")
    assert argv[argv.index("-nic") + 1] == "none"
    assert qemu.nic_option(None) == "none"


def test_forwards_give_user_networking_on_localhost(tmp_path: Path) -> None:
    argv = qemu.build_argv(
        [(Path("/i/a"), "raw")], log=tmp_path / "l", forwards={80: 4080, 22: 4022}
    )
    assert argv.count("-nic") == 1
    assert argv[argv.index("-nic") + 1] == (
        "user,model=virtio-net-pci,restrict=on,"
        "hostfwd=tcp:127.0.0.1:4022-:22,hostfwd=tcp:127.0.0.1:4080-:80"
    )
    assert qemu.nic_option({}) == "user,model=virtio-net-pci,restrict=on"


@pytest.mark.parametrize("forwards", [{22: 0}, {70000: 4022}, {22: "x"}])
def test_bad_forward_ports(forwards: dict, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="invalid TCP port"):
        qemu.build_argv([(Path("/i/a"), "raw")], log=tmp_path / "l", forwards=forwards)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = qemu.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# -- ssh's argv and key ----------------------------------------------------------------------


def test_ssh_argv(tmp_path: Path) -> None:
    argv = qemu.ssh_argv(4022, "admin", tmp_path / "k", "systemctl is-active sshd", ssh="ssh")
    joined = " ".join(argv)
    for part in (
        "-F /dev/null",
        f"-i {tmp_path / 'k'}",
        "-o StrictHostKeyChecking=no",
        "-o UserKnownHostsFile=/dev/null",
        "-o BatchMode=yes",
        "-o IdentitiesOnly=yes",
        "-p 4022",
    ):
        assert part in joined, part
    assert argv[-3:] == ["--", "admin@127.0.0.1", "systemctl is-active sshd"]


def test_real_ssh_client_accepts_the_options(tmp_path: Path) -> None:
    """``ssh -G`` evaluates the command line without connecting."""
    try:
        ssh = qemu.ssh_client()
    except KsbakeError:
        pytest.skip("openssh-client not installed")
    argv = qemu.ssh_argv(4022, "admin", tmp_path / "k", "-x true", ssh=ssh)
    argv.insert(1, "-G")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    config = proc.stdout.lower().splitlines()
    for line in ("user admin", "hostname 127.0.0.1", "port 4022", "batchmode yes"):
        assert line in config, line
    assert "stricthostkeychecking false" in config or "stricthostkeychecking no" in config


def test_missing_ssh_client_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda name: None)
    with pytest.raises(KsbakeError, match="openssh-client.*openssh-clients"):
        qemu.ssh_client()


def test_key_is_copied_private(key: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    login = qemu.SshLogin.prepare("admin", key, work)
    assert login.key.parent == work and login.key.read_bytes() == key.read_bytes()
    assert login.key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BuildError, match="cannot read the ssh key"):
        qemu.SshLogin.prepare("admin", tmp_path / "nope", work)


# -- waiting for sshd ------------------------------------------------------------------------


def test_banner_after_refusals(banner: BannerServer) -> None:
    assert qemu.read_banner(banner.port, 2) == (
        False,
        "the connection closed without an SSH banner",
    )
    threading.Timer(1.0, lambda: setattr(banner, "ready", True)).start()
    seconds = qemu.wait_for_ssh(banner.port, deadline=time.monotonic() + 20)
    assert 0.5 < seconds < 10 and banner.connections >= 2
    assert qemu.read_banner(banner.port, 2) == (True, "SSH-2.0-OpenSSH_9.2p1 Debian-2")


def test_no_sshd_times_out_with_the_reason() -> None:
    (port,) = qemu.free_ports(1)  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BuildError, match=f"did not answer on 127.0.0.1:{port}.*refused"):
        qemu.wait_for_ssh(port, deadline=time.monotonic() + 1.5)
    assert time.monotonic() - started < 5


def test_silent_listener_is_not_sshd() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        ok, why = qemu.read_banner(sock.getsockname()[1], 0.5)
    assert not ok and "no SSH banner within" in why


def test_wait_stops_when_the_guest_is_gone(banner: BannerServer) -> None:
    def gone() -> None:
        raise BuildError("QEMU ended")

    with pytest.raises(BuildError, match="QEMU ended"):
        qemu.wait_for_ssh(banner.port, deadline=time.monotonic() + 30, still_running=gone)


# -- commands with a bound -------------------------------------------------------------------


def test_run_bounded_output_and_status() -> None:
    result = qemu.run_bounded(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert result.status == 3 and result.output.split() == ["out", "err"]


def test_run_bounded_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    result = qemu.run_bounded(
        ["/bin/sh", "-c", f"sleep 100 & echo $! > {pidfile}; echo partial; wait"], timeout=1
    )
    assert result.status is None and "partial" in result.output
    assert time.monotonic() - started < 8
    assert _gone(int(pidfile.read_text()))


def test_run_bounded_kills_what_a_finished_command_left(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    result = qemu.run_bounded(
        ["/bin/sh", "-c", f"sleep 100 >/dev/null 2>&1 & echo $! > {pidfile}"], timeout=10
    )
    assert result.status == 0
    assert _gone(int(pidfile.read_text()))


# -- a booted guest (fake QEMU) --------------------------------------------------------------


def _booted(fake: Path, disk: Path, tmp_path: Path, monkeypatch, mode: str = "", **kw):
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    return qemu.booted([disk], log=tmp_path / "serial.log", qemu=str(fake), timeout=20, **kw)


def _argvs(directory: Path, log: str = "serial.log") -> list[list[str]]:
    return [p.read_text().splitlines() for p in sorted(directory.glob(f"{log}.argv.*"))]


def test_booted_forwards_and_kills_qemu(fake, disk, tmp_path, monkeypatch) -> None:
    with _booted(fake, disk, tmp_path, monkeypatch, forward=[80, 22, 80]) as guest:
        assert "appliance login:" in guest.result.log_text
        assert sorted(guest.forwards) == [22, 80]
        assert guest.port(22) != guest.port(80)
        with pytest.raises(BuildError, match="guest port 443 is not forwarded.*22, 80"):
            guest.port(443)
        guest.still_running()
        child = int((tmp_path / "serial.log.child").read_text())
        (argv,) = _argvs(tmp_path)
        nic = argv[argv.index("-nic") + 1]
        assert f"hostfwd=tcp:127.0.0.1:{guest.port(22)}-:22" in nic
        assert f"hostfwd=tcp:127.0.0.1:{guest.port(80)}-:80" in nic
    assert _gone(child) and guest.proc.poll() is not None


def test_booted_kills_qemu_when_the_block_raises(fake, disk, tmp_path, monkeypatch) -> None:
    with pytest.raises(RuntimeError), _booted(fake, disk, tmp_path, monkeypatch, forward=[22]):
        raise RuntimeError("a check blew up")
    assert _gone(int((tmp_path / "serial.log.child").read_text()))
    for pid in (tmp_path / "serial.log.pids").read_text().split():
        assert _gone(int(pid))


def test_taken_port_gets_fresh_ones(fake, disk, tmp_path, monkeypatch) -> None:
    picks: list[list[int]] = []

    def ports(count: int) -> list[int]:
        picks.append(qemu.free_ports(count))
        return picks[-1]

    with _booted(fake, disk, tmp_path, monkeypatch, "taken-once", forward=[22], ports=ports) as g:
        assert g.forwards == {22: picks[1][0]}
    assert len(picks) == 2 and len(_argvs(tmp_path)) == 2


def test_always_taken_port_is_one_error(fake, disk, tmp_path, monkeypatch) -> None:
    with (
        pytest.raises(BuildError, match="(?s)QEMU ended .*host forwarding rule"),
        _booted(fake, disk, tmp_path, monkeypatch, "taken", forward=[22]),
    ):
        pass
    assert len(_argvs(tmp_path)) == qemu.FORWARD_ATTEMPTS


def test_wait_ssh_through_the_guest(fake, disk, tmp_path, monkeypatch, banner) -> None:
    banner.ready = True
    with _booted(
        fake, disk, tmp_path, monkeypatch, forward=[22], ports=lambda n: [banner.port]
    ) as guest:
        assert guest.wait_ssh() < 5


def test_guest_dying_while_waiting_for_sshd(fake, disk, tmp_path, monkeypatch) -> None:
    with (
        pytest.raises(BuildError) as info,
        _booted(fake, disk, tmp_path, monkeypatch, "die-soon", forward=[22]) as guest,
    ):
        guest.wait_ssh()
    message = str(info.value)
    assert message.startswith("QEMU ended (exit code 3) before the guest's sshd answered")
    assert "Kernel panic" in message


def test_sshd_never_answering_names_port_and_log(fake, disk, tmp_path, monkeypatch) -> None:
    with (
        _booted(fake, disk, tmp_path, monkeypatch, forward=[22]) as guest,
        pytest.raises(BuildError) as info,
    ):
        guest.wait_ssh(timeout=1.5)
    first = str(info.value).splitlines()[0]
    assert "sshd did not answer" in first and "guest port 22" in first
    assert "appliance login:" in str(info.value)  # the console's tail


def test_login_retries_ssh_failures(fake, disk, tmp_path, monkeypatch, fake_ssh, key) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "2")
    monkeypatch.setattr(qemu, "SSH_RETRY", 0.1)
    login = qemu.SshLogin("admin", key, str(fake_ssh))
    with _booted(fake, disk, tmp_path, monkeypatch, forward=[22]) as guest:
        assert guest.wait_login(login) < 10
        result = guest.ssh(login, "echo hello from $((40 + 2))")
        calls = (tmp_path / "ssh.calls").read_text().splitlines()
    assert result.status == 0 and result.output == "hello from 42\n"
    assert len(calls) == 4 and f"-p {guest.forwards[22]} -- admin@127.0.0.1 true" in calls[0]


def test_login_refused_is_one_error(fake, disk, tmp_path, monkeypatch, fake_ssh, key) -> None:
    monkeypatch.setenv("FAKE_SSH_FAIL", "1000")
    monkeypatch.setattr(qemu, "SSH_RETRY", 0.1)
    login = qemu.SshLogin("admin", key, str(fake_ssh))
    with (
        _booted(fake, disk, tmp_path, monkeypatch, forward=[22]) as guest,
        pytest.raises(BuildError) as info,
    ):
        guest.wait_login(login, grace=1)
    message = str(info.value)
    assert message.startswith("ssh login as 'admin' to the guest (127.0.0.1:")
    assert "Permission denied (publickey)" in message and "sshkey" in message
    assert "\n" not in message


def test_shell_refusing_is_not_retried(fake, disk, tmp_path, monkeypatch, key) -> None:
    ssh = _script(tmp_path / "nologin-ssh", "#!/bin/sh\necho 'account not available'\nexit 1\n")
    login = qemu.SshLogin("admin", key, str(ssh))
    with _booted(fake, disk, tmp_path, monkeypatch, forward=[22]) as guest:
        started = time.monotonic()
        with pytest.raises(BuildError, match="failed: account not available"):
            guest.wait_login(login, grace=30)
        assert time.monotonic() - started < 5


# -- checks ----------------------------------------------------------------------------------


def _result(output: str, status: int | None = 0) -> qemu.CommandResult:
    return qemu.CommandResult(status, output, 0.1)


@pytest.mark.parametrize(
    ("check", "result", "why"),
    [
        (BootCheck("hostname", expect="server"), _result("server.example\n"), None),
        (BootCheck("x", match=r"^active$"), _result("loaded\nactive\n"), None),
        (BootCheck("false", status=1), _result("", 1), None),
        (
            BootCheck("systemctl is-active nginx"),
            _result("inactive\n", 3),
            "expected exit status 0, got 3 ('inactive')",
        ),
        (
            BootCheck("x", match=r"^active$"),
            _result("inactive\n"),
            "expected output matching '^active$', got 'inactive'",
        ),
        (
            BootCheck("x", expect="Welcome"),
            _result("line one\nline two\n"),
            "expected output containing 'Welcome', got 'line one\\nline two'",
        ),
        (
            BootCheck("x", expect="y"),
            _result("  \n"),
            "expected output containing 'y', got no output",
        ),
        (
            BootCheck("sleep 9", timeout=5),
            _result("partial", None),
            "did not finish within 5 s (got 'partial')",
        ),
    ],
)
def test_judge(check: BootCheck, result: qemu.CommandResult, why: str | None) -> None:
    assert boottest.judge(check, result) == why


def test_long_output_is_cut() -> None:
    why = boottest.judge(BootCheck("x", expect="zz"), _result("a" * 1000))
    assert why is not None and why.endswith("...'") and len(why) < 250


def test_expand_ports_leaves_other_braces() -> None:
    command = "curl -s http://127.0.0.1:{port:80}/ | awk '{print $1}' # {port:22}"
    assert boottest.expand_ports(command, {80: 5080, 22: 5022}) == (
        "curl -s http://127.0.0.1:5080/ | awk '{print $1}' # 5022"
    )
    with pytest.raises(BuildError, match="guest port 443 is not forwarded"):
        boottest.expand_ports("{port:443}", {80: 5080})


def test_describe() -> None:
    assert boottest.describe(3, 9, BootCheck("systemctl is-active nginx")) == (
        "check 3 of 9 'systemctl is-active nginx' (in the guest)"
    )
    check = BootCheck("curl " + "x" * 100, where="host", name="web page")
    assert boottest.describe(1, 1, check) == "check 1 of 1 'web page' (on the host)"
    assert len(boottest.describe(1, 1, BootCheck("y" * 100))) < 100


class FakeGuest:
    """What run_checks needs of a guest: forwards and ssh (here: the command runs locally)."""

    forwards = {22: 5022, 80: 5080}

    def ssh(self, login, command: str, timeout: float = 60) -> qemu.CommandResult:
        return qemu.run_bounded(["/bin/sh", "-c", command], timeout=timeout)


def test_run_checks_reports_every_failure(tmp_path: Path, capsys, key) -> None:
    login = qemu.SshLogin("admin", key, "ssh")
    checks = [
        BootCheck("echo guest", expect="guest"),
        BootCheck(
            "echo {port:80} $KSBAKE_PORT_80 $KSBAKE_HOST; pwd",
            where="host",
            match="^5080 5080 127.0.0.1$",
        ),
        BootCheck("echo $KSBAKE_SSH", where="host", expect="-p 5022 -- admin@127.0.0.1"),
        BootCheck("echo inactive; exit 3", name="nginx"),
        BootCheck("cat nonexistent", where="host"),
    ]
    failed = boottest.run_checks(FakeGuest(), checks, login, tmp_path, "boottest:x")
    out = capsys.readouterr().out.splitlines()
    assert failed == [
        "check 4 of 5 'nginx' (in the guest) failed: expected exit status 0, got 3 ('inactive')",
        "check 5 of 5 'cat nonexistent' (on the host) failed: expected exit status 0, got 1 "
        "('cat: nonexistent: No such file or directory')",
    ]
    assert [line.split(")", 1)[1].split()[0] for line in out] == [
        "ok",
        "ok",
        "ok",
        "FAILED:",
        "FAILED:",
    ]
    assert all(line.startswith("boottest:x: check ") for line in out)


def test_host_check_runs_in_the_configs_dir(tmp_path: Path) -> None:
    result = boottest.run_check(
        FakeGuest(),
        BootCheck("pwd", where="host"),
        None,
        dict(os.environ),
        tmp_path,
    )
    assert result.output.strip() == str(tmp_path)


# -- the boot test's inputs and login errors --------------------------------------------------


def _paths(tmp_path: Path) -> Paths:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    return Paths.from_env(root=tmp_path, environ={"KSBAKE_CONFIGS": str(configs)})


def test_marker_only_inputs_are_unchanged(tmp_path: Path) -> None:
    conf = settings.load("demo", tmp_path, environ={})
    assert boottest.boot_inputs(conf) == {
        "marker": "login:",
        "timeout": 180,
        "accel": "tcg",
        "memory": 512,
        "vcpus": 1,
    }


def test_login_inputs(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'boot_ssh_user = "admin"\nboot_ssh_key = "k"\nboot_forward = [80]\n'
        '[[boot_checks]]\nrun = "hostname"\nexpect = "x"\n'
    )
    inputs = boottest.boot_inputs(settings.load("x", tmp_path, environ={}))
    assert inputs["login"] == {
        "user": "admin",
        "key": str(tmp_path.resolve() / "k"),
        "forward": [22, 80],
        "checks": [
            {"run": "hostname", "where": "guest", "expect": "x", "status": 0, "timeout": 60}
        ],
    }


def test_login_key_errors_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KSBAKE_SSH_KEY", raising=False)
    paths = _paths(tmp_path)
    toml = paths.settings("x")
    toml.write_text('boot_ssh_user = "admin"\n')
    with pytest.raises(ConfigError) as info:
        boottest.login_key(paths, settings.load("x", paths.configs, environ={}))
    assert str(info.value).startswith(f"{toml}: key 'boot_ssh_user' needs a private key")
    toml.write_text('boot_ssh_user = "admin"\nboot_ssh_key = "keys/admin"\n')
    with pytest.raises(ConfigError) as info:
        boottest.login_key(paths, settings.load("x", paths.configs, environ={}))
    assert str(info.value) == (
        f"{toml}: key 'boot_ssh_key': no such file {paths.configs.resolve() / 'keys/admin'}"
    )
    monkeypatch.setenv("KSBAKE_SSH_KEY", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=f"^KSBAKE_SSH_KEY: no such file {tmp_path / 'gone'}$"):
        boottest.login_key(paths, settings.load("x", paths.configs))


def test_login_test_end_to_end(fake, fake_ssh, disk, key, tmp_path, monkeypatch, capsys) -> None:
    """Marker, sshd banner, login, checks (fake QEMU, fake sshd, fake ssh): the failing check
    is one line, and QEMU is gone afterwards."""
    server = BannerServer()
    server.ready = True
    try:
        paths = _paths(tmp_path)
        paths.settings("x").write_text(
            f'boot_ssh_user = "admin"\nboot_ssh_key = "{key}"\nboot_forward = [80]\n'
            '[[boot_checks]]\nrun = "echo multi-user.target"\nexpect = "multi-user"\n'
            '[[boot_checks]]\nrun = "echo {port:80}"\nwhere = "host"\nmatch = "^[0-9]+$"\n'
            '[[boot_checks]]\nname = "nginx"\nrun = "echo inactive; exit 3"\n'
        )
        conf = settings.load("x", paths.configs, environ={})
        monkeypatch.setattr(qemu, "ssh_client", lambda: str(fake_ssh))
        free = qemu.free_ports
        monkeypatch.setattr(qemu, "free_ports", lambda n: [server.port, *free(n - 1)])
        monkeypatch.setenv("FAKE_QEMU_MODE", "")
        how = {"log": tmp_path / "serial.log", "timeout": 20, "qemu": str(fake)}
        with pytest.raises(BuildError) as info:
            boottest.login_test(paths, conf, [disk], how, "(fake)")
    finally:
        server.close()
    assert str(info.value) == (
        "boottest:x: check 3 of 3 'nginx' (in the guest) failed: expected exit status 0, "
        "got 3 ('inactive')"
    )
    out = capsys.readouterr().out
    assert "boottest:x: 'login:' on the serial console after" in out
    assert f"forwarded 22->127.0.0.1:{server.port}, 80->127.0.0.1:" in out
    assert "ssh login as 'admin' worked" in out
    assert "check 1 of 3 'echo multi-user.target' (in the guest) ok" in out
    assert "check 2 of 3 'echo {port:80}' (on the host) ok" in out
    assert _gone(int((tmp_path / "serial.log.child").read_text()))


# -- the real QEMU ---------------------------------------------------------------------------


@pytest.mark.boot
def test_real_qemu_forwards_on_localhost_only(disk: Path, tmp_path: Path) -> None:
    """QEMU takes the NIC option and listens on 127.0.0.1 only; its forward accepts
    connections although nothing in the guest listens (hence the banner wait); QEMU is gone
    afterwards. A blank disk: SeaBIOS's banner is the marker."""
    if not shutil.which(qemu.QEMU):
        pytest.skip("qemu-system-x86 not installed")
    log = tmp_path / "serial.log"
    with qemu.booted([disk], log=log, forward=[22], marker="SeaBIOS", timeout=60) as guest:
        port = guest.port(22)
        listening = Path("/proc/net/tcp").read_text().lower()
        assert f"0100007f:{port:04x}" in listening  # 127.0.0.1:port
        assert f"00000000:{port:04x}" not in listening
        ok, why = qemu.read_banner(port, 1)
        assert not ok and "no SSH banner" in why
        pid = guest.proc.pid
    assert _gone(pid)


# -- the doit step (fake QEMU on PATH) -------------------------------------------------------


def _step_workspace(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A bootloader object with one disk, and the fake QEMU as qemu-system-x86_64."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / qemu.QEMU).symlink_to(fake)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_MODE", "")
    monkeypatch.delenv("KSBAKE_SSH_KEY", raising=False)
    monkeypatch.delenv("KSBAKE_ACCEL", raising=False)
    paths = _paths(tmp_path)
    objdir = paths.store / "objects/bootloader/k1"
    objdir.mkdir(parents=True)
    with open(objdir / "sda.raw", "wb") as f:
        f.truncate(1 << 20)
    (objdir / "result.json").write_text(
        '{"firmware": "bios", "boot_disk": "sda", "disks": [{"name": "sda", "file": "sda.raw"}]}'
    )
    build = paths.build_dir("x")
    build.mkdir(parents=True)
    (build / "bootloader.ref").write_text('{"key": "k1"}')
    return paths


def test_step_marker_only_as_before(fake, tmp_path, monkeypatch, capsys) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-utils not installed")
    paths = _step_workspace(tmp_path, fake, monkeypatch)
    boottest.step(paths, "x")
    out = capsys.readouterr().out
    assert out.startswith("boottest:x: 'login:' on the serial console after ")
    assert "(bios, accel=tcg; log: " in out and "forwarded" not in out
    record = json.loads((paths.build_dir("x") / "boottest.json").read_text())
    assert set(record) == {"accel", "bootloader", "marker", "memory", "seconds", "timeout", "vcpus"}
    (argv,) = _argvs(paths.build_dir("x"), "boot.log")
    assert argv[argv.index("-nic") + 1] == "none"


def test_step_with_host_checks(fake, tmp_path, monkeypatch, capsys) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-utils not installed")
    paths = _step_workspace(tmp_path, fake, monkeypatch)
    paths.settings("x").write_text(
        'boot_forward = [80]\n[[boot_checks]]\nrun = "echo port {port:80}"\nwhere = "host"\n'
        'match = "^port [0-9]+$"\n'
    )
    boottest.step(paths, "x")
    out = capsys.readouterr().out
    assert "forwarded 80->127.0.0.1:" in out and "all 1 checks passed" in out
    record = json.loads((paths.build_dir("x") / "boottest.json").read_text())
    assert record["checks_passed"] == 1 and record["login"]["forward"] == [80]
    paths.settings("x").write_text(
        'boot_forward = [80]\n[[boot_checks]]\nrun = "echo nope"\nwhere = "host"\nexpect = "yes"\n'
    )
    with pytest.raises(BuildError) as info:
        boottest.step(paths, "x")
    assert str(info.value) == (
        "boottest:x: check 1 of 1 'echo nope' (on the host) failed: expected output "
        "containing 'yes', got 'nope'"
    )
    assert _gone(int((paths.build_dir("x") / "boot.log.child").read_text()))
