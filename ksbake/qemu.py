"""Boot disk images in QEMU, wait for a marker on the serial console, log in over ssh.

Why: the only proof that an image boots is booting it. QEMU runs headless with the serial
console in a log file; the log is polled for a marker (``login:``, ``KSBAKE-BOOT-OK``) under
a wall-clock timeout. Whatever happens (marker, timeout, error, Ctrl-C) QEMU's whole process
group is killed and reaped before ``boot`` returns or raises (or ``booted``'s block ends): no
QEMU is ever left behind.

The accelerator is a setting: "tcg" works everywhere (the build machines are VMs whose
``/dev/kvm`` cannot run guests), "kvm" is for real hosts. Disks are attached with
``snapshot=on``, so booting never changes an image.

A login test needs the guest's sshd: ``booted(..., forward=[22, 80])`` gives the guest QEMU
user networking (``restrict=on``: it reaches nothing outside, only the forwards reach it) with
each guest port forwarded from a free port on the host's 127.0.0.1, chosen when QEMU starts,
and keeps QEMU running while the caller waits for sshd (``Guest.wait_ssh``: TCP connect and
the ``SSH-2.0`` banner, since QEMU's forward accepts connections before the guest listens) and
runs commands with the system ``ssh`` client (``Guest.ssh``).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from ksbake.errors import BuildError, ToolError
from ksbake.run import run, which

QEMU = "qemu-system-x86_64"
BUSES = ("virtio", "sata", "scsi", "ide")
FIRMWARES = ("bios", "uefi")
POLL = 0.1  # seconds between looks at the log
TAIL = 30  # log lines shown when a boot fails
LOCALHOST = "127.0.0.1"
NIC_MODEL = "virtio-net-pci"
FORWARD_ATTEMPTS = 3  # fresh host ports when another process took one before QEMU bound it
SSH_RETRY = 1.0  # seconds between attempts to reach or log in to the guest's sshd
SSH_BANNERS = (b"SSH-2.0-", b"SSH-1.99-")

# (code, vars template): Debian 12 (4 MiB and 2 MiB builds), Fedora (old and new), openSUSE
OVMF_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE_4M.qcow2", "/usr/share/edk2/ovmf/OVMF_VARS_4M.qcow2"),
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
)


@dataclass
class BootResult:
    seconds: float  # from starting QEMU to the marker
    log_text: str  # the serial console (CR removed)
    log: Path
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None  # QEMU's, if it ended by itself (guest power-off)

    def mounts(self) -> list[tuple[str, str, str, str]]:
        """(device, mountpoint, fstype, options) of the guest's ``KSBAKE-MOUNT`` lines."""
        found = []
        for line in self.log_text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0] == "KSBAKE-MOUNT":
                found.append((fields[1], fields[2], fields[3], fields[4]))
        return found


def _escape(value: str | Path) -> str:
    """QEMU option values double their commas."""
    return str(value).replace(",", ",,")


def image_format(path: Path) -> str:
    """raw, qcow2, vmdk ... as ``qemu-img info`` detects it."""
    proc = run(
        [which("qemu-img"), "info", "-U", "--output=json", path],
        what=f"inspecting {path}",
    )
    try:
        return json.loads(proc.stdout)["format"]
    except (ValueError, KeyError) as exc:
        raise ToolError(f"qemu-img info {path}: unexpected output") from exc


def find_ovmf() -> tuple[Path, Path]:
    """OVMF firmware code and its variable store template."""
    for code, vars_ in OVMF_CANDIDATES:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    raise ToolError(
        "UEFI firmware (OVMF) not found",
        hint="install it: Debian 'apt-get install ovmf', Fedora 'dnf install edk2-ovmf'",
    )


def check_accel(accel: str) -> None:
    """Refuse an accelerator that cannot work here, with the reason."""
    if not re.fullmatch(r"[a-z0-9_]+", accel):
        raise BuildError(f"invalid QEMU accelerator '{accel}'", hint="e.g. 'tcg' or 'kvm'")
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise BuildError(
            "QEMU accelerator 'kvm' needs /dev/kvm, which is missing or not accessible",
            hint="set the accelerator to 'tcg' (slower, works everywhere)",
        )


def build_argv(
    disks: Sequence[tuple[Path, str]],
    *,
    log: Path,
    firmware: str = "bios",
    accel: str = "tcg",
    memory_mib: int = 512,
    vcpus: int = 1,
    bus: str = "virtio",
    boot_disk: int = 0,
    ovmf: tuple[Path, Path] | None = None,
    qemu: str = QEMU,
    snapshot: bool = True,
    forwards: Mapping[int, int] | None = None,
) -> list[str]:
    """QEMU's argv for ``disks`` ((path, format) in guest order); pure, for tests.

    ``boot_disk`` is the index of the disk the firmware boots first; ``ovmf`` is (code,
    writable vars copy) for UEFI. ``forwards`` (guest port -> host port) gives the guest a
    user-mode NIC whose TCP ports are reachable on the host's 127.0.0.1; None: no NIC.
    """
    if bus not in BUSES:
        raise BuildError(f"unknown disk bus '{bus}'", hint=f"use one of {', '.join(BUSES)}")
    if firmware not in FIRMWARES:
        raise BuildError(f"unknown firmware '{firmware}'", hint="use 'bios' or 'uefi'")
    if not disks:
        raise BuildError("nothing to boot: no disks")
    if not 0 <= boot_disk < len(disks):
        raise BuildError(f"boot disk index {boot_disk} out of range for {len(disks)} disk(s)")
    machine = "pc" if bus == "ide" else "q35"
    argv = [
        qemu,
        "-machine",
        machine,
        "-accel",
        accel,
        "-m",
        str(memory_mib),
        "-smp",
        str(vcpus),
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-nic",
        nic_option(forwards),
        "-chardev",
        f"file,id=ksbake-serial,path={_escape(log)}",
        "-serial",
        "chardev:ksbake-serial",
    ]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if firmware == "uefi":
        if ovmf is None:
            raise BuildError("UEFI boot without OVMF firmware files")
        code, vars_copy = ovmf
        for unit, path, extra in ((0, code, ",readonly=on"), (1, vars_copy, "")):
            fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
            argv += [
                "-drive",
                f"if=pflash,unit={unit},format={fmt}{extra},file={_escape(path)}",
            ]
    if bus == "scsi":
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    # Boot order: the boot disk first, then the others in guest order.
    order = [boot_disk] + [i for i in range(len(disks)) if i != boot_disk]
    for index, (path, fmt) in enumerate(disks):
        drive = f"disk{index}"
        argv += [
            "-drive",
            f"file={_escape(path)},if=none,id={drive},format={fmt}"
            + (",snapshot=on" if snapshot else ""),
        ]
        bootindex = f"bootindex={order.index(index)}"
        if bus == "virtio":
            device = f"virtio-blk-pci,drive={drive},{bootindex}"
        elif bus == "scsi":
            device = f"scsi-hd,drive={drive},bus=scsi0.0,{bootindex}"
        elif bus == "sata":  # q35's AHCI controller has six ports: ide.0 .. ide.5
            device = f"ide-hd,drive={drive},bus=ide.{index},{bootindex}"
        else:  # PIIX IDE on "pc": two buses, master and slave
            device = f"ide-hd,drive={drive},bus=ide.{index // 2},unit={index % 2},{bootindex}"
        argv += ["-device", device]
    return argv


def nic_option(forwards: Mapping[int, int] | None) -> str:
    """``-nic`` value: none, or user networking with ``hostfwd`` to 127.0.0.1 only."""
    if forwards is None:
        return "none"
    parts = ["user", f"model={NIC_MODEL}", "restrict=on"]
    for guest, host in sorted(forwards.items()):
        for port in (guest, host):
            if not (isinstance(port, int) and 0 < port < 65536):
                raise BuildError(f"invalid TCP port {port!r} in a port forward")
        parts.append(f"hostfwd=tcp:{LOCALHOST}:{host}-:{guest}")
    return ",".join(parts)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (QEMU binds them a moment later)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child: get SIGKILL if ksbake dies (even by SIGKILL), so QEMU cannot outlive it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def running(argv: list[str], stderr_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own process group; on exit kill the whole group and reap it."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        yield proc
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child of it stays in the group.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _clean(raw: bytes) -> str:
    text = raw.decode(errors="replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _tail(text: str, lines: int = TAIL) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"  | {line}" for line in kept) if kept else "  (the serial console is empty)"


@dataclass(frozen=True)
class _Prepared:
    tmp: Path  # scratch directory: QEMU's stderr, the UEFI variables copy
    images: list[tuple[Path, str]]
    ovmf: tuple[Path, Path] | None
    binary: str


@contextmanager
def _prepared(
    disks: Sequence[Path], *, log: Path, firmware: str, accel: str, qemu: str | None
) -> Iterator[_Prepared]:
    """What every boot needs before QEMU starts: checks, image formats, an empty log."""
    check_accel(accel)
    binary = qemu or which(QEMU)
    paths = [Path(d).resolve() for d in disks]
    for path in paths:
        if not path.is_file():
            raise BuildError(f"cannot boot {path}: no such disk image")
    images = [(path, image_format(path)) for path in paths]
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="ksbake-qemu-") as tmp_name:
        tmp = Path(tmp_name)
        ovmf = None
        if firmware == "uefi":
            code, template = find_ovmf()
            vars_copy = tmp / f"vars{template.suffix}"
            shutil.copyfile(template, vars_copy)
            ovmf = (code, vars_copy)
        yield _Prepared(tmp, images, ovmf, binary)


def boot(
    disks: Sequence[Path],
    *,
    log: Path,
    firmware: str = "bios",
    marker: str = "login:",
    timeout: float = 120,
    accel: str = "tcg",
    memory_mib: int = 512,
    vcpus: int = 1,
    bus: str = "virtio",
    boot_disk: int = 0,
    wait_exit: bool = False,
    qemu: str | None = None,
    snapshot: bool = True,
) -> BootResult:
    """Boot ``disks`` (guest order) until ``marker`` appears on the serial console.

    ``snapshot=False`` boots the images read-write (a deployed copy does).
    ``wait_exit``: after the marker let the guest finish (e.g. power off with
    ``ksbake.poweroff``) within the same timeout, so the log holds what followed it.
    Raises BuildError on timeout or when QEMU ends before the marker, with the log's tail.
    """
    log = Path(log)
    with _prepared(disks, log=log, firmware=firmware, accel=accel, qemu=qemu) as prep:
        argv = build_argv(
            prep.images,
            log=log,
            firmware=firmware,
            accel=accel,
            memory_mib=memory_mib,
            vcpus=vcpus,
            bus=bus,
            boot_disk=boot_disk,
            ovmf=prep.ovmf,
            qemu=prep.binary,
            snapshot=snapshot,
        )
        return _watch(argv, log, prep.tmp / "qemu.stderr", marker, timeout, wait_exit)


def _watch(
    argv: list[str], log: Path, stderr_path: Path, marker: str, timeout: float, wait_exit: bool
) -> BootResult:
    """Run QEMU and poll ``log`` for ``marker``; QEMU is dead when this returns or raises."""
    started = time.monotonic()
    with running(argv, stderr_path) as proc:
        seconds, code = _wait_marker(proc, log, marker, started, started + timeout, wait_exit)
    text = _clean(log.read_bytes())
    if seconds is None:
        raise _no_marker(marker, timeout, log, stderr_path, code, text)
    return BootResult(round(seconds, 2), text, log, argv, code)


def _wait_marker(
    proc: subprocess.Popen[bytes],
    log: Path,
    marker: str,
    started: float,
    deadline: float,
    wait_exit: bool,
) -> tuple[float | None, int | None]:
    """(seconds to the marker or None, QEMU's exit code if it ended) by polling ``log``."""
    needle = marker.encode()
    seconds: float | None = None
    code: int | None = None
    while True:
        raw = log.read_bytes()
        code = proc.poll()
        if seconds is None and needle in raw:
            seconds = time.monotonic() - started
        if code is not None:
            raw = log.read_bytes()  # everything the guest wrote before QEMU ended
            if seconds is None and needle in raw:
                seconds = time.monotonic() - started
            break
        if seconds is not None and not wait_exit:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    return seconds, code


def _qemu_ended(code: int, what: str, log: Path, stderr_path: Path, text: str) -> BuildError:
    errors = stderr_path.read_text(errors="replace").strip() if stderr_path.exists() else ""
    return BuildError(
        f"QEMU ended (exit code {code}) {what} (log: {log})"
        + (f"\nQEMU said: {errors}" if errors else "")
        + f"\nlast lines of the console:\n{_tail(text)}"
    )


def _no_marker(
    marker: str, timeout: float, log: Path, stderr_path: Path, code: int | None, text: str
) -> BuildError:
    if code is not None:
        what = f"before '{marker}' appeared on the serial console"
        return _qemu_ended(code, what, log, stderr_path, text)
    return BuildError(
        f"no '{marker}' on the serial console after {timeout:g} s (log: {log})\n"
        f"last lines of the console:\n{_tail(text)}"
    )


def _port_taken(stderr_path: Path) -> bool:
    """QEMU could not bind a forwarded host port (another process took it since we looked)."""
    with suppress(OSError):
        return "host forwarding rule" in stderr_path.read_text(errors="replace")
    return False


# -- a running guest: port forwards, sshd, commands over ssh --------------------------------


@dataclass(frozen=True)
class CommandResult:
    status: int | None  # exit status; None when it was killed at its timeout
    output: str  # stdout and stderr together, CR removed
    seconds: float


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> CommandResult:
    """Run ``argv`` in its own process group, output captured; at ``timeout`` (or on any
    exception) the whole group is killed, so nothing a command starts outlives it."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    status: int | None
    try:
        try:
            out, _ = proc.communicate(timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired as exc:  # a process outside the group holds it
                out = exc.output if isinstance(exc.output, bytes) else b""
            status = None
    finally:
        _kill_group(proc)  # what the command left running in its group (a background job)
    text = (out or b"").decode(errors="replace").replace("\r", "")
    return CommandResult(status, text, round(time.monotonic() - started, 2))


def ssh_client() -> str:
    """The system ``ssh`` client, or one error naming the package."""
    path = shutil.which("ssh")
    if path is None:
        raise ToolError(
            "required tool 'ssh' not found (the boot test logs in with it)",
            hint="install it: Debian 'apt-get install openssh-client', "
            "Fedora 'dnf install openssh-clients'",
        )
    return path


def ssh_argv(
    port: int, user: str, key: Path, command: str, *, ssh: str = "ssh", host: str = LOCALHOST
) -> list[str]:
    """The ssh command line for one command in the guest; pure, for tests.

    No config file, agent or known_hosts is read or written (the guest's host keys are new at
    every boot); BatchMode: a missing key fails instead of asking for a password. ``--``
    before the destination keeps a user or command that starts with ``-`` from being options.
    """
    return [
        ssh,
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        "-T",
        "-p",
        str(port),
        "--",
        f"{user}@{host}",
        command,
    ]


@dataclass(frozen=True)
class SshLogin:
    """Who logs in to the guest, with which private key (a 0600 copy: see ``prepare``)."""

    user: str
    key: Path
    ssh: str = "ssh"

    @classmethod
    def prepare(cls, user: str, key: Path, directory: Path) -> SshLogin:
        """Copy ``key`` into ``directory`` with mode 0600: ssh ignores a private key that
        others can read, and one from a git checkout usually is."""
        binary = ssh_client()
        try:
            data = Path(key).read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read the ssh key {key}: {exc.strerror or exc}") from None
        copy = Path(directory) / "ksbake-ssh-key"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(copy, 0o600)
        return cls(user, copy, binary)

    def argv(self, port: int, command: str) -> list[str]:
        return ssh_argv(port, self.user, self.key, command, ssh=self.ssh)


def read_banner(port: int, timeout: float, host: str = LOCALHOST) -> tuple[bool, str]:
    """(True, banner) when ``host:port`` sends an SSH version line within ``timeout``,
    else (False, what happened instead)."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)) as sock:
            sock.settimeout(max(timeout, 0.1))
            data = b""
            while len(data) < 8192:
                chunk = sock.recv(1024)
                if not chunk:
                    return False, "the connection closed without an SSH banner"
                data += chunk
                for line in data.splitlines():
                    if line.startswith(SSH_BANNERS):
                        return True, line.decode(errors="replace").strip()
            return False, "no SSH banner in the first 8 KiB"
    except TimeoutError:
        return False, f"no SSH banner within {timeout:.0f} s"
    except OSError as exc:
        return False, exc.strerror or str(exc)


def wait_for_ssh(
    port: int,
    *,
    deadline: float,
    still_running: Callable[[], None] = lambda: None,
    host: str = LOCALHOST,
) -> float:
    """Seconds until ``host:port`` answers with an SSH banner; BuildError at ``deadline``
    (time.monotonic()). A TCP connection alone proves nothing: QEMU's forward accepts it
    before the guest listens. ``still_running`` raises when the guest is gone."""
    started = time.monotonic()
    last = "nothing tried"
    while True:
        still_running()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildError(
                f"the guest's sshd did not answer on {host}:{port} in time (last try: {last})"
            )
        ok, last = read_banner(port, min(remaining, 10.0), host)
        if ok:
            return round(time.monotonic() - started, 2)
        time.sleep(max(0.0, min(SSH_RETRY, deadline - time.monotonic())))


@dataclass
class Guest:
    """A guest booted to its marker and still running (inside ``booted``'s block)."""

    result: BootResult
    forwards: dict[int, int]  # guest TCP port -> host port on 127.0.0.1
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic() when QEMU started
    deadline: float  # ... and when the boot timeout ends
    stderr_path: Path

    def port(self, guest_port: int) -> int:
        """The host port on 127.0.0.1 that reaches ``guest_port``."""
        if guest_port not in self.forwards:
            known = ", ".join(map(str, sorted(self.forwards))) or "none"
            raise BuildError(f"guest port {guest_port} is not forwarded (forwarded: {known})")
        return self.forwards[guest_port]

    def still_running(self, what: str = "") -> None:
        """Raise BuildError with the console's tail if QEMU has ended."""
        code = self.proc.poll()
        if code is not None:
            text = _clean(self.result.log.read_bytes())
            raise _qemu_ended(
                code, what or "while the guest was tested", self.result.log, self.stderr_path, text
            )

    def wait_ssh(self, guest_port: int = 22, timeout: float | None = None) -> float:
        """Seconds until the guest's sshd sent its banner, within the boot timeout (or
        ``timeout`` seconds from now)."""
        deadline = self.deadline if timeout is None else time.monotonic() + timeout
        try:
            return wait_for_ssh(
                self.port(guest_port),
                deadline=deadline,
                still_running=lambda: self.still_running("before the guest's sshd answered"),
            )
        except BuildError as exc:
            if "QEMU ended" in exc.message:
                raise
            text = _clean(self.result.log.read_bytes())
            raise BuildError(
                f"{exc.message} (guest port {guest_port}; log: {self.result.log})\n"
                f"last lines of the console:\n{_tail(text)}"
            ) from None

    def ssh(self, login: SshLogin, command: str, timeout: float = 60) -> CommandResult:
        """Run ``command`` (a shell command line) in the guest as ``login.user``."""
        return run_bounded(login.argv(self.port(22), command), timeout=timeout)

    def wait_login(self, login: SshLogin, grace: float = 60) -> float:
        """Seconds until ``login`` runs ``true`` in the guest. ssh's own failures (exit
        status 255: refused, not yet allowed while the guest boots) are retried for
        ``grace`` seconds at most, within the boot timeout; then one error with ssh's words."""
        started = time.monotonic()
        deadline = min(self.deadline, started + grace)
        while True:
            self.still_running("before the ssh login worked")
            bound = max(5.0, min(deadline - time.monotonic(), 30.0))
            result = self.ssh(login, "true", timeout=bound)
            if result.status == 0:
                return round(time.monotonic() - started, 2)
            said = [line for line in result.output.splitlines() if line.strip()]
            last = said[-1].strip() if said else f"exit status {result.status}"
            if result.status is None:
                last = f"ssh did not finish within {bound:.0f} s"
            if result.status not in (255, None) or time.monotonic() >= deadline:
                raise BuildError(
                    f"ssh login as '{login.user}' to the guest (127.0.0.1:{self.port(22)}) "
                    f"failed: {last}",
                    hint="the private key must match the kickstart's sshkey for that user",
                )
            time.sleep(SSH_RETRY)


@contextmanager
def booted(
    disks: Sequence[Path],
    *,
    log: Path,
    forward: Sequence[int] = (),
    firmware: str = "bios",
    marker: str = "login:",
    timeout: float = 120,
    accel: str = "tcg",
    memory_mib: int = 512,
    vcpus: int = 1,
    bus: str = "virtio",
    boot_disk: int = 0,
    qemu: str | None = None,
    snapshot: bool = True,
    ports: Callable[[int], list[int]] | None = None,
) -> Iterator[Guest]:
    """Boot as ``boot`` does until ``marker``, then hand over the running guest.

    ``forward``: guest TCP ports reachable from the host (``Guest.port``), on free host
    ports chosen now (``ports``, default ``free_ports``); if another process takes one before
    QEMU binds it, QEMU starts again on fresh ones. QEMU is killed when the block ends,
    however it ends.
    """
    log = Path(log)
    wanted = sorted(set(forward))
    with _prepared(disks, log=log, firmware=firmware, accel=accel, qemu=qemu) as prep:
        stderr_path = prep.tmp / "qemu.stderr"
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            chosen = (ports or free_ports)(len(wanted))
            forwards = dict(zip(wanted, chosen, strict=True)) if wanted else None
            argv = build_argv(
                prep.images,
                log=log,
                firmware=firmware,
                accel=accel,
                memory_mib=memory_mib,
                vcpus=vcpus,
                bus=bus,
                boot_disk=boot_disk,
                ovmf=prep.ovmf,
                qemu=prep.binary,
                snapshot=snapshot,
                forwards=forwards,
            )
            log.write_bytes(b"")
            started = time.monotonic()
            deadline = started + timeout
            with running(argv, stderr_path) as proc:
                seconds, code = _wait_marker(proc, log, marker, started, deadline, False)
                text = _clean(log.read_bytes())
                if seconds is None:
                    retry = forwards and attempt < FORWARD_ATTEMPTS and _port_taken(stderr_path)
                    if code is not None and retry:
                        continue  # a fresh set of host ports
                    raise _no_marker(marker, timeout, log, stderr_path, code, text)
                result = BootResult(round(seconds, 2), text, log, argv, code)
                yield Guest(result, dict(forwards or {}), proc, started, deadline, stderr_path)
                return
