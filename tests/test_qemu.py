"""ksbake.qemu: argv construction, marker and timeout handling, and that no QEMU survives.

Most tests use a fake ``qemu-system-x86_64`` (a shell script that writes to the serial log
and leaves a child process in its process group); one runs the real QEMU on a blank disk
that never prints anything.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ksbake import qemu
from ksbake.errors import BuildError, ToolError

FAKE_QEMU = r"""#!/bin/sh
# A stand-in for qemu-system-x86_64; FAKE_QEMU_MODE says how the "guest" behaves.
for a in "$@"; do
    case "$a" in file,id=ksbake-serial,path=*) log="${a#file,id=ksbake-serial,path=}" ;; esac
done
sleep 1000 &
echo $! > "$log.child"
printf 'SeaBIOS (fake)\r\nbooting the fake kernel\r\n' >> "$log"
case "$FAKE_QEMU_MODE" in
    marker) printf 'Welcome\r\nappliance login: ' >> "$log"; wait ;;
    silent) wait ;;
    fail) echo "qemu-system-x86_64: -drive file=x: Could not open" >&2; exit 1 ;;
    poweroff)
        printf 'KSBAKE-BOOT-OK\r\nKSBAKE-MOUNT /dev/vda1 / ext4 rw,relatime 0 0\r\n' >> "$log"
        sleep 0.5
        printf 'reboot: Power down\r\n' >> "$log"
        kill $!
        exit 0 ;;
esac
"""


def _gone(pid: int, within: float = 3.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie waiting for init to reap it)."""
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


def _pgrep(pattern: str) -> list[str]:
    proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return proc.stdout.split()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-qemu-system-x86_64"
    script.write_text(FAKE_QEMU)
    script.chmod(0o755)
    return script


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(1024 * 1024)
    return path


def _boot(fake: Path, disk: Path, tmp_path: Path, mode: str, monkeypatch, **kw):
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    return qemu.boot([disk], log=tmp_path / "serial.log", qemu=str(fake), **kw)


# -- argv ---------------------------------------------------------------------------------


def test_argv_bios_virtio(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    argv = qemu.build_argv([(Path("/img/a.raw"), "raw")], log=log)
    assert argv[0] == "qemu-system-x86_64"
    joined = " ".join(argv)
    for part in (
        "-machine q35",
        "-accel tcg",
        "-m 512",
        "-smp 1",
        "-nographic",
        "-no-reboot",
        "-monitor none",
        "-nic none",
        f"-chardev file,id=ksbake-serial,path={log}",
        "-serial chardev:ksbake-serial",
        "-drive file=/img/a.raw,if=none,id=disk0,format=raw,snapshot=on",
        "-device virtio-blk-pci,drive=disk0,bootindex=0",
    ):
        assert part in joined, part
    assert "pflash" not in joined and "-cpu" not in argv


def test_argv_order_formats_and_boot_disk(tmp_path: Path) -> None:
    disks = [(Path("/i/a.qcow2"), "qcow2"), (Path("/i/b,c.vmdk"), "vmdk"), (Path("/i/d"), "raw")]
    argv = qemu.build_argv(
        disks, log=tmp_path / "l", boot_disk=1, memory_mib=1024, vcpus=2, accel="kvm"
    )
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert drives == [
        "file=/i/a.qcow2,if=none,id=disk0,format=qcow2,snapshot=on",
        "file=/i/b,,c.vmdk,if=none,id=disk1,format=vmdk,snapshot=on",  # commas doubled
        "file=/i/d,if=none,id=disk2,format=raw,snapshot=on",
    ]
    assert devices == [  # guest order kept; the boot disk is first in the boot order
        "virtio-blk-pci,drive=disk0,bootindex=1",
        "virtio-blk-pci,drive=disk1,bootindex=0",
        "virtio-blk-pci,drive=disk2,bootindex=2",
    ]
    assert argv[argv.index("-m") + 1] == "1024" and argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_argv_uefi(tmp_path: Path) -> None:
    argv = qemu.build_argv(
        [(Path("/i/a.raw"), "raw")],
        log=tmp_path / "l",
        firmware="uefi",
        ovmf=(Path("/fw/OVMF_CODE_4M.fd"), tmp_path / "vars.fd"),
    )
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0] == "if=pflash,unit=0,format=raw,readonly=on,file=/fw/OVMF_CODE_4M.fd"
    assert drives[1] == f"if=pflash,unit=1,format=raw,file={tmp_path / 'vars.fd'}"
    with pytest.raises(BuildError, match="OVMF"):
        qemu.build_argv([(Path("/i/a.raw"), "raw")], log=tmp_path / "l", firmware="uefi")


@pytest.mark.parametrize(
    ("bus", "machine", "device"),
    [
        ("sata", "q35", "ide-hd,drive=disk1,bus=ide.1,bootindex=1"),
        ("scsi", "q35", "scsi-hd,drive=disk1,bus=scsi0.0,bootindex=1"),
        ("ide", "pc", "ide-hd,drive=disk1,bus=ide.0,unit=1,bootindex=1"),
    ],
)
def test_argv_buses(tmp_path: Path, bus: str, machine: str, device: str) -> None:
    disks = [(Path("/i/a"), "raw"), (Path("/i/b"), "raw")]
    argv = qemu.build_argv(disks, log=tmp_path / "l", bus=bus)
    assert argv[argv.index("-machine") + 1] == machine
    assert device in argv
    assert ("virtio-scsi-pci,id=scsi0" in argv) == (bus == "scsi")


def test_argv_rejects_nonsense(tmp_path: Path) -> None:
    one = [(Path("/i/a"), "raw")]
    with pytest.raises(BuildError, match="unknown disk bus 'usb'"):
        qemu.build_argv(one, log=tmp_path / "l", bus="usb")
    with pytest.raises(BuildError, match="unknown firmware"):
        qemu.build_argv(one, log=tmp_path / "l", firmware="coreboot")
    with pytest.raises(BuildError, match="out of range"):
        qemu.build_argv(one, log=tmp_path / "l", boot_disk=1)
    with pytest.raises(BuildError, match="no disks"):
        qemu.build_argv([], log=tmp_path / "l")


def test_kvm_without_dev_kvm_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: False)
    with pytest.raises(BuildError, match="'kvm' needs /dev/kvm.*'tcg'"):
        qemu.check_accel("kvm")
    qemu.check_accel("tcg")
    with pytest.raises(BuildError, match="invalid QEMU accelerator"):
        qemu.check_accel("kvm,thread=multi")


def test_missing_ovmf_names_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(qemu, "OVMF_CANDIDATES", ((str(tmp_path / "c"), str(tmp_path / "v")),))
    with pytest.raises(ToolError, match="ovmf.*edk2-ovmf"):
        qemu.find_ovmf()


def test_find_ovmf_here() -> None:
    if not any(Path(c).is_file() for c, _ in qemu.OVMF_CANDIDATES):
        pytest.skip("no OVMF installed")
    code, vars_ = qemu.find_ovmf()
    assert code.is_file() and vars_.is_file()


def test_image_format(tmp_path: Path, disk: Path) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-utils not installed")
    assert qemu.image_format(disk) == "raw"
    qcow = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "16M"], check=True)
    assert qemu.image_format(qcow) == "qcow2"


def test_mounts_parsing(tmp_path: Path) -> None:
    text = "x\nKSBAKE-MOUNT /dev/vda1 / ext4 rw,relatime 0 0\nKSBAKE-MOUNT bad\n"
    result = qemu.BootResult(1.0, text, tmp_path / "l")
    assert result.mounts() == [("/dev/vda1", "/", "ext4", "rw,relatime")]


# -- running (fake QEMU) ------------------------------------------------------------------


def test_marker_found_and_qemu_killed(fake, disk, tmp_path, monkeypatch) -> None:
    result = _boot(fake, disk, tmp_path, "marker", monkeypatch, timeout=20)
    assert result.seconds < 10
    assert "appliance login:" in result.log_text and "\r" not in result.log_text
    assert result.exit_code is None  # killed by us, not ended by itself
    child = int((tmp_path / "serial.log.child").read_text())
    assert _gone(child), "a process of QEMU's process group survived"
    assert _pgrep(str(fake)) == []


def test_timeout_raises_with_log_tail(fake, disk, tmp_path, monkeypatch) -> None:
    started = time.monotonic()
    with pytest.raises(BuildError) as info:
        _boot(fake, disk, tmp_path, "silent", monkeypatch, timeout=1.5)
    assert time.monotonic() - started < 8
    message = str(info.value)
    assert "no 'login:' on the serial console after 1.5 s" in message
    assert "  | booting the fake kernel" in message
    assert _gone(int((tmp_path / "serial.log.child").read_text()))
    assert _pgrep(str(fake)) == []


def test_qemu_failing_early_is_reported(fake, disk, tmp_path, monkeypatch) -> None:
    with pytest.raises(BuildError) as info:
        _boot(fake, disk, tmp_path, "fail", monkeypatch, timeout=20)
    message = str(info.value)
    assert "QEMU ended (exit code 1) before 'login:'" in message
    assert "Could not open" in message  # QEMU's own stderr
    assert _gone(int((tmp_path / "serial.log.child").read_text()))


def test_wait_exit_keeps_what_follows_the_marker(fake, disk, tmp_path, monkeypatch) -> None:
    result = _boot(
        fake, disk, tmp_path, "poweroff", monkeypatch, marker="KSBAKE-BOOT-OK", wait_exit=True
    )
    assert result.exit_code == 0
    assert result.mounts() == [("/dev/vda1", "/", "ext4", "rw,relatime")]
    assert "Power down" in result.log_text


def test_keyboard_interrupt_kills_qemu(fake, disk, tmp_path, monkeypatch) -> None:
    real_sleep = time.sleep
    calls = []

    def interrupted(seconds: float) -> None:
        # Ctrl-C once the "guest" runs and has a child in its process group
        if not calls and "booting" in (tmp_path / "serial.log").read_text():
            calls.append(seconds)
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(qemu.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _boot(fake, disk, tmp_path, "silent", monkeypatch, timeout=30)
    monkeypatch.undo()
    assert calls
    assert _gone(int((tmp_path / "serial.log.child").read_text()))
    assert _pgrep(str(fake)) == []


def test_missing_disk(tmp_path: Path, fake: Path) -> None:
    with pytest.raises(BuildError, match="no such disk image"):
        qemu.boot([tmp_path / "nope.raw"], log=tmp_path / "l", qemu=str(fake))


# -- the real QEMU ------------------------------------------------------------------------


@pytest.mark.boot
def test_real_qemu_timeout_leaves_nothing_behind(disk: Path, tmp_path: Path) -> None:
    """A blank disk never prints the marker: timeout, error with the log, QEMU gone."""
    if not shutil.which(qemu.QEMU):
        pytest.skip("qemu-system-x86 not installed")
    log = tmp_path / "unique-serial-log-for-pgrep.log"
    with pytest.raises(BuildError, match="after 3 s"):
        qemu.boot([disk], log=log, timeout=3)
    assert _pgrep(str(log)) == []
    assert not [pid for pid in _pgrep("qemu-system") if str(log) in _cmdline(pid)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
