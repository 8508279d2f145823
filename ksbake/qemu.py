"""Boot disk images in QEMU and wait for a marker on the serial console.

Why: the only proof that an image boots is booting it. QEMU runs headless with the serial
console in a log file; the log is polled for a marker (``login:``, ``KSBAKE-BOOT-OK``) under
a wall-clock timeout. Whatever happens (marker, timeout, error, Ctrl-C) QEMU's whole process
group is killed and reaped before ``boot`` returns or raises: no QEMU is ever left behind.

The accelerator is a setting: "tcg" works everywhere (the build machines are VMs whose
``/dev/kvm`` cannot run guests), "kvm" is for real hosts. Disks are attached with
``snapshot=on``, so booting never changes an image.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
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
) -> list[str]:
    """QEMU's argv for ``disks`` ((path, format) in guest order); pure, for tests.

    ``boot_disk`` is the index of the disk the firmware boots first; ``ovmf`` is (code,
    writable vars copy) for UEFI.
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
        "none",
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
    check_accel(accel)
    binary = qemu or which(QEMU)
    paths = [Path(d).resolve() for d in disks]
    for path in paths:
        if not path.is_file():
            raise BuildError(f"cannot boot {path}: no such disk image")
    images = [(path, image_format(path)) for path in paths]
    log = Path(log)
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
        argv = build_argv(
            images,
            log=log,
            firmware=firmware,
            accel=accel,
            memory_mib=memory_mib,
            vcpus=vcpus,
            bus=bus,
            boot_disk=boot_disk,
            ovmf=ovmf,
            qemu=binary,
            snapshot=snapshot,
        )
        stderr_path = tmp / "qemu.stderr"
        return _watch(argv, log, stderr_path, marker, timeout, wait_exit)


def _watch(
    argv: list[str], log: Path, stderr_path: Path, marker: str, timeout: float, wait_exit: bool
) -> BootResult:
    """Run QEMU and poll ``log`` for ``marker``; QEMU is dead when this returns or raises."""
    needle = marker.encode()
    started = time.monotonic()
    deadline = started + timeout
    seconds: float | None = None
    code: int | None = None
    with running(argv, stderr_path) as proc:
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
    text = _clean(log.read_bytes())
    if seconds is None:
        if code is not None:
            errors = stderr_path.read_text(errors="replace").strip()
            raise BuildError(
                f"QEMU ended (exit code {code}) before '{marker}' appeared on the serial "
                f"console (log: {log})"
                + (f"\nQEMU said: {errors}" if errors else "")
                + f"\nlast lines of the console:\n{_tail(text)}"
            )
        raise BuildError(
            f"no '{marker}' on the serial console after {timeout:g} s (log: {log})\n"
            f"last lines of the console:\n{_tail(text)}"
        )
    return BootResult(round(seconds, 2), text, log, argv, code)
