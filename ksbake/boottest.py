"""The boot test: boot an appliance's bootable disks in QEMU until its success marker shows,
then, when the settings ask for it, log in over ssh and run the appliance's checks.

Not a cached layer (it produces no artifact), but a doit task of its own
(``doit boottest:NAME``) that reruns only when the bootable disks or the boot settings change.
The accelerator is a setting (``accel``; ``KSBAKE_ACCEL``): TCG here, KVM on real hosts.

Without ``boot_ssh_user``, ``boot_forward`` and ``boot_checks`` the test is the marker alone.
With them the guest gets user networking with its ports forwarded to free ports on the host's
127.0.0.1, the test waits for sshd, logs in with the key, and runs each check (in the guest
over ssh, or ``where = "host"`` on the build host with ``{port:N}`` for the forwarded ports):
a real appliance's proof is a service that answers, not a prompt on the console.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ksbake import qemu, settings
from ksbake.errors import BuildError, ConfigError
from ksbake.hashing import canonical_json, write_if_changed
from ksbake.paths import Paths
from ksbake.settings import PORT_PLACEHOLDER, BootCheck, Settings

SHOWN = 160  # characters of a check's output quoted in its failure


def boot_inputs(conf: Settings) -> dict[str, Any]:
    """What the boot test reads besides the disks; the login part only when one is set, so
    a marker-only appliance's inputs (and its up-to-date state) stay as they were."""
    inputs: dict[str, Any] = {
        "marker": conf.boot_marker,
        "timeout": conf.boot_timeout,
        "accel": conf.accel,
        "memory": conf.memory,
        "vcpus": conf.vcpus,
    }
    if conf.boot_ssh_user or conf.boot_forward or conf.boot_checks:
        inputs["login"] = {
            "user": conf.boot_ssh_user,
            "key": conf.boot_ssh_key if conf.boot_ssh_user else None,
            "forward": list(settings.forwarded_ports(conf)),
            "checks": [check.as_dict() for check in conf.boot_checks],
        }
    return inputs


def boot_settings(paths: Paths, name: str) -> dict[str, Any]:
    """The boot test's doit ``config_changed`` input."""
    return boot_inputs(settings.load(name, paths.configs))


def step(paths: Paths, name: str) -> None:
    from ksbake.store import Store

    conf = settings.load(name, paths.configs)
    build = paths.build_dir(name)
    key = json.loads((build / "bootloader.ref").read_text())["key"]
    directory = Store(paths.store).object_dir("bootloader", key)
    result = json.loads((directory / "result.json").read_text())
    disks = [directory / d["file"] for d in result["disks"]]
    names = [d["name"] for d in result["disks"]]
    boot = boot_inputs(conf)
    log = build / "boot.log"
    how: dict[str, Any] = dict(
        log=log,
        firmware=result["firmware"],
        marker=conf.boot_marker,
        timeout=conf.boot_timeout,
        accel=conf.accel,
        memory_mib=conf.memory,
        vcpus=conf.vcpus,
        boot_disk=names.index(result["boot_disk"]) if result.get("boot_disk") in names else 0,
    )
    where = f"({result['firmware']}, accel={conf.accel}; log: {log})"
    record: dict[str, Any] = {"bootloader": key, **boot}
    if "login" not in boot:
        outcome = qemu.boot(disks, **how)
        print(
            f"boottest:{name}: {conf.boot_marker!r} on the serial console after "
            f"{outcome.seconds:.1f} s {where}",
            flush=True,
        )
        record["seconds"] = round(outcome.seconds, 1)
    else:
        record.update(login_test(paths, conf, disks, how, where))
    write_if_changed(build / "boottest.json", canonical_json(record) + "\n")


def login_key(paths: Paths, conf: Settings) -> Path | None:
    """The private key file for the login, or one error naming where it was configured."""
    if not conf.boot_ssh_user:
        return None
    toml = paths.settings(conf.name)
    if not conf.boot_ssh_key:
        raise ConfigError(
            f"{toml}: key 'boot_ssh_user' needs a private key to log in with",
            hint="set boot_ssh_key (a path relative to the configs directory) or KSBAKE_SSH_KEY",
        )
    path = Path(conf.boot_ssh_key)
    source = "KSBAKE_SSH_KEY" if os.environ.get("KSBAKE_SSH_KEY") else f"{toml}: key 'boot_ssh_key'"
    if not path.is_file():
        raise ConfigError(f"{source}: no such file {path}")
    return path


def login_test(
    paths: Paths, conf: Settings, disks: Sequence[Path], how: dict[str, Any], where: str
) -> dict[str, Any]:
    """Boot to the marker, log in, run the checks; QEMU is gone when this returns or raises."""
    name = conf.name
    key = login_key(paths, conf)
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ksbake-login-") as tmp:
        login = None
        if key is not None and conf.boot_ssh_user:
            login = qemu.SshLogin.prepare(conf.boot_ssh_user, key, Path(tmp))
        forward = settings.forwarded_ports(conf)
        with qemu.booted(disks, forward=forward, **how) as guest:
            seconds = guest.result.seconds
            ports = ", ".join(f"{g}->127.0.0.1:{h}" for g, h in sorted(guest.forwards.items()))
            print(
                f"boottest:{name}: {conf.boot_marker!r} on the serial console after "
                f"{seconds:.1f} s {where}" + (f"; forwarded {ports}" if ports else ""),
                flush=True,
            )
            record["seconds"] = round(seconds, 1)
            if login is not None:
                guest.wait_ssh()
                guest.wait_login(login)
                seconds = time.monotonic() - guest.started
                print(
                    f"boottest:{name}: ssh login as {login.user!r} worked {seconds:.1f} s "
                    "after QEMU started",
                    flush=True,
                )
                record["login_seconds"] = round(seconds, 1)
            failed = run_checks(guest, conf.boot_checks, login, paths.configs, f"boottest:{name}")
    if failed:
        more = f"; {len(failed) - 1} more check(s) failed (above)" if len(failed) > 1 else ""
        raise BuildError(f"boottest:{name}: {failed[0]}{more}")
    if conf.boot_checks:
        print(f"boottest:{name}: all {len(conf.boot_checks)} checks passed", flush=True)
    record["checks_passed"] = len(conf.boot_checks)
    return record


def run_checks(
    guest: qemu.Guest,
    checks: Sequence[BootCheck],
    login: qemu.SshLogin | None,
    cwd: Path,
    prefix: str,
) -> list[str]:
    """Run every check (one failure hides no other), printing one line each; returns the
    failures as ``check N of M '...' (where) failed: expected ..., got ...``."""
    env = host_env(guest.forwards, login)
    failed = []
    for number, check in enumerate(checks, 1):
        result = run_check(guest, check, login, env, cwd)
        why = judge(check, result)
        what = describe(number, len(checks), check)
        if why is None:
            print(f"{prefix}: {what} ok ({result.seconds:.1f} s)", flush=True)
        else:
            print(f"{prefix}: {what} FAILED: {why}", flush=True)
            failed.append(f"{what} failed: {why}")
    return failed


def host_env(forwards: Mapping[int, int], login: qemu.SshLogin | None) -> dict[str, str]:
    """A host check's environment: ``KSBAKE_PORT_80`` for each forward, ``KSBAKE_SSH`` (the
    ssh command up to the destination: append a command to run it in the guest)."""
    env = dict(os.environ)
    env["KSBAKE_HOST"] = qemu.LOCALHOST
    for guest_port, host_port in forwards.items():
        env[f"KSBAKE_PORT_{guest_port}"] = str(host_port)
    if login is not None and 22 in forwards:
        env["KSBAKE_SSH"] = " ".join(login.argv(forwards[22], "")[:-1])
    return env


def expand_ports(command: str, forwards: Mapping[int, int]) -> str:
    """``{port:N}`` -> the host port that reaches guest port N (nothing else: shell braces
    such as awk's ``{print $1}`` stay as they are)."""

    def port(m: re.Match[str]) -> str:
        guest_port = int(m.group(1))
        if guest_port not in forwards:
            raise BuildError(f"{{port:{guest_port}}}: guest port {guest_port} is not forwarded")
        return str(forwards[guest_port])

    return PORT_PLACEHOLDER.sub(port, command)


def run_check(
    guest: qemu.Guest,
    check: BootCheck,
    login: qemu.SshLogin | None,
    env: Mapping[str, str],
    cwd: Path,
) -> qemu.CommandResult:
    """Run one check where it says: in the guest over ssh, or on the host with ``sh -c``
    (working directory: the configs directory)."""
    if check.where == "host":
        command = expand_ports(check.run, guest.forwards)
        return qemu.run_bounded(["/bin/sh", "-c", command], timeout=check.timeout, env=env, cwd=cwd)
    if login is None:  # settings.load refuses this; a guard for direct callers
        raise BuildError(f"check {check.run!r} runs in the guest, which needs a login")
    return guest.ssh(login, check.run, timeout=check.timeout)


def shorten(text: str, limit: int = SHOWN) -> str:
    """Output quoted on one line: newlines escaped, cut at ``limit`` characters."""
    text = text.strip()
    if not text:
        return "no output"
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut)


def judge(check: BootCheck, result: qemu.CommandResult) -> str | None:
    """None when ``result`` is what ``check`` expects; else expected what, got what."""
    got = shorten(result.output)
    if result.status is None:
        return f"did not finish within {check.timeout} s (got {got})"
    if result.status != check.status:
        return f"expected exit status {check.status}, got {result.status} ({got})"
    if check.expect is not None and check.expect not in result.output:
        return f"expected output containing {check.expect!r}, got {got}"
    if check.match is not None and not re.search(check.match, result.output, re.MULTILINE):
        return f"expected output matching {check.match!r}, got {got}"
    return None


def describe(number: int, total: int, check: BootCheck) -> str:
    """``check 3 of 9 'systemctl is-active nginx' (in the guest)``."""
    label = check.name or (check.run if len(check.run) <= 60 else check.run[:57] + "...")
    place = "on the host" if check.where == "host" else "in the guest"
    return f"check {number} of {total} {label!r} ({place})"


def boot_log(paths: Paths, name: str) -> Path:
    return paths.build_dir(name) / "boot.log"
