"""The config layer: system settings and %post scripts applied over the installed tree.

Input: the canonical text of the kickstart's system commands (lang, keyboard, timezone,
rootpw, user, group, sshkey, services, selinux, firewall, network) and %post scripts, re-parsed
here, plus the packages layer's key. Output: an overlayfs upper directory holding only what
changed, over the shared (untouched) packages tree; later layers read the merged view.

No disk layout goes in here (fstab, grub.cfg, UUIDs belong to the disk layers), so a layout
change reuses this layer. Files are written through ``ksbake.treefs`` (never following a
symlink out of the tree); %post runs chrooted, except ``--nochroot`` scripts, which run on the
host with INSTALL_ROOT set to the tree (as appliance-creator did) and cwd set to the
kickstart's directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksbake import treefs
from ksbake.chroot import sandboxed
from ksbake.errors import BuildError
from ksbake.passwords import sha512_crypt
from ksbake.run import probe, run
from ksbake.runner import Job, located
from ksbake.treefs import MIN_EPOCH, clamp_times

log = logging.getLogger("ksbake")
DEFAULT_WRITE_LIMIT = 4 * 2**30  # when no plan says how big the appliance is

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


# -- passwords ------------------------------------------------------------------------------


def _salt(seed: str, who: str) -> str:
    """A salt derived from the layer key: the same inputs give the same bytes."""
    import xxhash

    alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = xxhash.xxh3_128_intdigest(f"{seed}:{who}".encode())
    return "".join(alphabet[(n >> (6 * i)) & 63] for i in range(16))


def password_field(password: str, crypted: bool, lock: bool, seed: str, who: str) -> str:
    value = password if crypted else sha512_crypt(password, _salt(seed, who))
    return ("!" + value) if lock else value


# -- /etc/passwd, /etc/group, /etc/shadow ---------------------------------------------------


class Table:
    """A colon-separated account database inside the tree, edited in place."""

    def __init__(self, root: Path, path: str, width: int) -> None:
        self.root, self.path, self.width = root, path, width
        text = treefs.read_text(root, path)
        if text is None:
            raise BuildError(
                f"{path} does not exist in the tree (is the 'setup' package installed?)"
            )
        target = treefs.resolve(root, path)
        st = target.stat()
        self.mode, self.uid, self.gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
        self.rows = [line.split(":") for line in text.splitlines() if line.strip()]
        self.original = [list(r) for r in self.rows]

    def get(self, name: str) -> list[str] | None:
        return next((r for r in self.rows if r[0] == name), None)

    def put(self, row: list[str]) -> None:
        row = (row + [""] * self.width)[: self.width]
        for i, existing in enumerate(self.rows):
            if existing[0] == row[0]:
                self.rows[i] = row
                return
        self.rows.append(row)

    def ids(self, column: int) -> set[int]:
        return {int(r[column]) for r in self.rows if len(r) > column and r[column].isdigit()}

    def save(self) -> None:
        """Write the file back, only if it changed (the overlay then keeps the original)."""
        if self.rows == self.original:
            return
        text = "".join(":".join(r) + "\n" for r in self.rows)
        treefs.write_file(self.root, self.path, text, mode=self.mode, uid=self.uid, gid=self.gid)


def _next_id(used: set[int], start: int = 1000) -> int:
    n = start
    while n in used:
        n += 1
    return n


def apply_accounts(root: Path, handler: Any, seed: str) -> None:
    """rootpw, group, user and sshkey."""
    rootpw, users, groups = handler.rootpw, handler.user.userList, handler.group.groupList
    keys = handler.sshkey.sshUserList
    if not (rootpw.seen or users or groups or keys):
        return
    passwd, shadow, group = (
        Table(root, "/etc/passwd", 7),
        Table(root, "/etc/shadow", 9),
        Table(root, "/etc/group", 4),
    )
    gshadow = Table(root, "/etc/gshadow", 4) if treefs.exists(root, "/etc/gshadow") else None
    if rootpw.seen:
        row = shadow.get("root") or ["root", "", "", "0", "99999", "7", "", "", ""]
        pw = rootpw.password or ""
        row[1] = (
            password_field(pw, rootpw.isCrypted, rootpw.lock, seed, "root")
            if pw
            else ("!" if rootpw.lock else row[1])
        )
        shadow.put(row)
    for grp in groups:
        gid = grp.gid if grp.gid is not None else _next_id(group.ids(2))
        group.put([grp.name, "x", str(gid), ""])
        if gshadow:
            gshadow.put([grp.name, "!", "", ""])
    for user in users:
        uid = user.uid if user.uid is not None else _next_id(passwd.ids(2) | group.ids(2))
        if user.gid is not None:
            gid = user.gid
        else:
            existing = group.get(user.name)
            gid = int(existing[2]) if existing else uid
            if not existing:
                group.put([user.name, "x", str(gid), ""])
                if gshadow:
                    gshadow.put([user.name, "!", "", ""])
        home = user.homedir or f"/home/{user.name}"
        shell = user.shell or "/bin/bash"
        if not treefs.exists(root, shell) and treefs.exists(root, "/bin/sh"):
            shell = "/bin/sh"
        passwd.put([user.name, "x", str(uid), str(gid), user.gecos or "", home, shell])
        pw = user.password or ""
        field = password_field(pw, user.isCrypted, user.lock, seed, user.name) if pw else "!!"
        shadow.put([user.name, field, "", "0", "99999", "7", "", "", ""])
        for extra in user.groups:
            member_of = group.get(extra)
            if member_of is None:
                raise BuildError(f"user {user.name}: supplementary group '{extra}' does not exist")
            members = [m for m in member_of[3].split(",") if m]
            if user.name not in members:
                member_of[3] = ",".join([*members, user.name])
        home_dir = treefs.makedirs(root, home, 0o700)
        os.chown(home_dir, uid, gid)
    passwd.save()
    shadow.save()
    group.save()
    if gshadow:
        gshadow.save()
    for entry in keys:
        owner = passwd.get(entry.username)
        if owner is None:
            raise BuildError(f"sshkey: user '{entry.username}' does not exist")
        uid, gid, home = int(owner[2]), int(owner[3]), owner[5]
        ssh_dir = treefs.makedirs(root, f"{home}/.ssh", 0o700)
        os.chown(ssh_dir, uid, gid)
        path = f"{home}/.ssh/authorized_keys"
        old = treefs.read_text(root, path) or ""
        treefs.write_file(root, path, old + entry.key.strip() + "\n", mode=0o600, uid=uid, gid=gid)


# -- locale, keyboard, time zone, network -----------------------------------------------


def apply_system(root: Path, handler: Any, warnings: list[str]) -> None:
    if handler.lang.lang:
        treefs.write_file(root, "/etc/locale.conf", f"LANG={handler.lang.lang}\n")
    keyboard = handler.keyboard
    keymap = getattr(keyboard, "vc_keymap", None) or getattr(keyboard, "keyboard", None)
    if keymap:
        treefs.write_file(root, "/etc/vconsole.conf", f"KEYMAP={keymap}\n")
    tz = handler.timezone
    if tz.timezone:
        zone = f"/usr/share/zoneinfo/{tz.timezone}"
        if not treefs.exists(root, zone):
            warnings.append(f"timezone {tz.timezone}: {zone} is not in the tree (tzdata missing?)")
        treefs.symlink(root, "/etc/localtime", f"..{zone}")
        treefs.write_file(
            root, "/etc/adjtime", "0.0 0 0.0\n0\n" + ("UTC\n" if tz.isUtc else "LOCAL\n")
        )
    hostname = getattr(handler.network, "hostname", None)
    for net in handler.network.network:
        if net.hostname:
            hostname = net.hostname
    if hostname:
        treefs.write_file(root, "/etc/hostname", hostname + "\n")
    apply_network_devices(root, handler, warnings)


def _prefix(netmask: str) -> int:
    if netmask.isdigit():
        return int(netmask)
    return sum(bin(int(octet)).count("1") for octet in netmask.split("."))


# anaconda's --device values that name no interface: the first with a link, the boot one
ANY_DEVICE = ("link", "bootif", "ibft")


def nm_keyfile(net: Any) -> str:
    """A NetworkManager keyfile for one kickstart ``network`` line (dhcp or static IPv4)."""
    device = net.device or "eth0"
    lines = ["[connection]", f"id={device}", "type=ethernet"]
    if device not in ANY_DEVICE:  # else the first wired device that comes up takes it
        lines.append(f"interface-name={device}")
    if net.onboot is False:
        lines.append("autoconnect=false")
    lines += ["", "[ipv4]"]
    if (net.bootProto or "dhcp") == "static":
        if not (net.ip and net.netmask):
            raise BuildError(
                f"network --device={device} --bootproto=static needs --ip and --netmask"
            )
        lines.append(
            f"address1={net.ip}/{_prefix(net.netmask)}" + (f",{net.gateway}" if net.gateway else "")
        )
        lines.append("method=manual")
    else:
        lines.append("method=auto")
    if net.nameserver:
        lines.append("dns=" + ";".join(s.strip() for s in net.nameserver.split(",")) + ";")
    lines += ["", "[ipv6]", "method=" + ("ignore" if getattr(net, "noipv6", False) else "auto"), ""]
    return "\n".join(lines)


def apply_network_devices(root: Path, handler: Any, warnings: list[str]) -> None:
    """network lines that configure a device: NetworkManager keyfiles, if the tree has it."""
    devices = [n for n in handler.network.network if n.device or n.bootProto or n.ip]
    if not devices:
        return
    if not treefs.exists(root, "/usr/lib/NetworkManager") and not treefs.exists(
        root, "/usr/sbin/NetworkManager"
    ):
        names = ", ".join(n.device or "(first device)" for n in devices)
        warnings.append(
            f"network {names}: the tree has no NetworkManager; device settings not written "
            "(the appliance configures its network itself)"
        )
        return
    for net in devices:
        name = net.device or "eth0"
        treefs.write_file(
            root,
            f"/etc/NetworkManager/system-connections/{name}.nmconnection",
            nm_keyfile(net),
            mode=0o600,
        )


UNIT_DIRS = (
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
"""Where systemctl looks for unit files in a tree (aliases made by enable or preset
included: /etc/systemd/system/sshd.service -> ssh.service)."""

UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "device",
    "scope",
)


def unit_name(name: str) -> str:
    """The unit systemctl means by ``name``: ``sshd`` is ``sshd.service``."""
    return name if name.rpartition(".")[2] in UNIT_TYPES and "." in name else f"{name}.service"


def unit_exists(root: Path, name: str) -> bool:
    """Whether the tree has the unit file (a template's ``x@.service`` for ``x@y.service``;
    a masked unit's link to /dev/null counts: systemctl then says what it thinks)."""
    unit = unit_name(name)
    stem, at, rest = unit.partition("@")
    candidates = [unit] + ([f"{stem}@.{rest.rpartition('.')[2]}"] if at and rest else [])
    for directory in UNIT_DIRS:
        for candidate in candidates:
            path = treefs.resolve(root, f"{directory}/{candidate}", follow_last=False)
            if path.is_symlink() or path.exists():
                return True
    return False


def _systemctl(root: Path) -> str | None:
    """The tree's own systemctl, if it has one."""
    return next(
        (p for p in ("/usr/bin/systemctl", "/bin/systemctl") if treefs.exists(root, p)), None
    )


def apply_services(root: Path, handler: Any, warnings: list[str]) -> None:
    """``services --disabled`` then ``--enabled`` (anaconda's order), by the tree's own
    systemctl run in the tree (sandboxed, offline: nothing is started), else by the host's
    ``systemctl --root``. A unit to enable that the tree lacks is an error naming it (the
    caller adds the kickstart line); one to disable is a warning (it is not enabled)."""
    services = handler.services
    if not (services.enabled or services.disabled):
        return
    if not any(treefs.exists(root, d) for d in UNIT_DIRS[2:]):
        raise BuildError(
            "services: the tree has no systemd (/usr/lib/systemd/system), so "
            f"{', '.join(services.enabled + services.disabled)} cannot be enabled or disabled",
            hint="install systemd in %packages or remove the services line",
        )
    missing = [name for name in services.enabled if not unit_exists(root, name)]
    if missing:
        units = ", ".join(unit_name(name) for name in missing)
        raise BuildError(
            f"services --enabled={','.join(missing)}: the tree has no unit {units} "
            f"(looked in {', '.join(UNIT_DIRS)})",
            hint="install the package that has it in %packages, or correct the name",
        )
    for name in services.disabled:
        if not unit_exists(root, name):
            warnings.append(
                f"services --disabled={name}: the tree has no unit {unit_name(name)}; "
                "nothing to disable"
            )
    disable = [name for name in services.disabled if unit_exists(root, name)]
    if disable:
        _systemctl_run(root, ["disable", *disable])
    for name in services.enabled:  # one at a time: systemctl says which one is static
        said = _systemctl_run(root, ["enable", name])
        if "no installation config" in said:
            warnings.append(
                f"services --enabled={name}: {unit_name(name)} has no [Install] section "
                "(a static unit, started by another one): systemctl enable does nothing"
            )


def _systemctl_run(root: Path, args: list[str]) -> str:
    """``systemctl ARGS`` by the tree's own systemctl in the tree (sandboxed, offline), else
    by the host's with ``--root``; its output."""
    tool = _systemctl(root)
    if tool is not None:
        env = {**CHROOT_ENV, "SYSTEMD_OFFLINE": "1"}
        what = f"services: systemctl {args[0]} in the tree"
        proc = run(sandboxed(root, [tool, *args]), env=env, what=what)
    else:
        proc = run(["systemctl", f"--root={root}", *args], what=f"services: {args[0]}")
    return proc.stdout.decode(errors="replace")


def apply_security(root: Path, handler: Any, warnings: list[str]) -> None:
    from pykickstart.constants import SELINUX_DISABLED, SELINUX_ENFORCING, SELINUX_PERMISSIVE

    mode = {
        SELINUX_DISABLED: "disabled",
        SELINUX_ENFORCING: "enforcing",
        SELINUX_PERMISSIVE: "permissive",
    }.get(handler.selinux.selinux)
    if mode:
        config = treefs.read_text(root, "/etc/selinux/config")
        if config is None:
            if mode != "disabled":  # --disabled: what the tree is without a policy, silently
                warnings.append(
                    f"selinux --{mode}: the tree has no SELinux policy (/etc/selinux/config), "
                    "so the appliance runs without SELinux (add selinux-policy-targeted to "
                    "%packages)"
                )
        else:
            lines = [
                f"SELINUX={mode}" if ln.startswith("SELINUX=") else ln for ln in config.splitlines()
            ]
            treefs.write_file(root, "/etc/selinux/config", "\n".join(lines) + "\n")
            if mode != "disabled":
                # the tree was written by rpm on a build host, without SELinux labels: the
                # appliance relabels itself on its first boot (then reboots once)
                treefs.write_file(root, "/.autorelabel", "")
    fw = handler.firewall
    if fw.enabled is None:
        return
    tool = "/usr/bin/firewall-offline-cmd"
    if not treefs.exists(root, tool):
        if fw.enabled:  # --disabled: what the tree is without a firewall, silently
            asked = [f"--service={s}" for s in fw.services] + [f"--port={p}" for p in fw.ports]
            warnings.append(
                f"firewall --enabled{''.join(' ' + a for a in asked)}: the tree has no firewalld "
                f"({tool}), so no firewall is configured (add firewalld to %packages)"
            )
        return
    args = ["--disabled"] if not fw.enabled else ["--enabled"]
    if fw.enabled:
        args += [f"--service={s}" for s in fw.services] + [f"--port={p}" for p in fw.ports]
    _chroot_run(root, [tool, *args], what="firewall")


def reset_machine_id(root: Path) -> None:
    """Leave the machine ID to the appliance's first boot, as image builders must (every
    copy would share the build's ID otherwise): an empty ``/etc/machine-id`` (0444) in a
    systemd tree (systemd fills it at boot; the file must exist for a read-only root), and
    no ``/var/lib/dbus/machine-id`` copy (a symlink to /etc/machine-id stays)."""
    if any(treefs.exists(root, p) for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        path = treefs.resolve(root, "/etc/machine-id", follow_last=False)
        st = path.lstat() if path.is_symlink() or path.exists() else None
        if st is None or stat.S_ISREG(st.st_mode):  # a link (to /run...) is a choice: kept
            wanted = (0, 0o444, 0, 0)  # size, mode, owner, group: unchanged if so already
            if st is None or (st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != wanted:
                treefs.write_file(root, "/etc/machine-id", "", mode=0o444)
    dbus = treefs.resolve(root, "/var/lib/dbus/machine-id", follow_last=False)
    if dbus.is_file() and not dbus.is_symlink():
        dbus.unlink()


def _chroot_run(root: Path, argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    """A tool of the tree, run in the tree (sandboxed: ``ksbake.chroot.sandboxed``)."""
    return run(sandboxed(root, argv), env=CHROOT_ENV, what=what)


# -- %post ----------------------------------------------------------------------------------


LEFT_MARK = "ksbake-post-left-running"
# Runs a chrooted script as the init of its PID namespace, then counts what it left running
# there (besides itself): the namespace, and all of them, end when this shell exits.
POST_WRAPPER = (
    '"$@"; rc=$?; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; '
    f'[ "$n" -gt 1 ] && echo "{LEFT_MARK} $((n-1))" >&2; exit $rc'
)


@dataclass(frozen=True)
class Bound:
    """Where the layer's writes go: a filesystem of ``limit`` bytes (``path``)."""

    path: Path
    limit: int

    def full(self) -> bool:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize < 4 * 1024 * 1024

    def message(self) -> str:
        return (
            f"the configured tree may grow by at most {self.limit // 2**20} MiB (the size of the "
            "appliance's filesystems), and that is used up"
        )


def run_post_scripts(
    root: Path, handler: Any, ks_dir: str, where: list[str], bound: Bound | None = None
) -> None:
    """Run the %post scripts in order: chrooted ones sandboxed in the tree, ``--nochroot``
    ones on the host (documented: they are the kickstart's code, run as root)."""
    from pykickstart.constants import KS_SCRIPT_POST

    scripts = [s for s in handler.scripts if s.type == KS_SCRIPT_POST]
    for index, script in enumerate(scripts, 1):
        interp = script.interp or "/bin/sh"
        at = where[index - 1] if index <= len(where) else ""
        label = (f"{at}: " if at else "") + f"%post #{index}"
        label += " --nochroot" if not script.inChroot else ""
        print(f"Running {label} ({interp})", flush=True)
        if script.inChroot:
            if not treefs.exists(root, interp):
                raise BuildError(f"{label}: interpreter {interp} is not in the tree")
            name = f"/tmp/ks-script-{index}"
            treefs.write_file(root, name, script.script, mode=0o700)
            command = [interp, name]
            if treefs.exists(root, "/bin/sh"):
                command = ["/bin/sh", "-c", POST_WRAPPER, "ksbake-post", *command]
            argv = sandboxed(root, command)
            env = dict(CHROOT_ENV)
            cwd = None
        else:
            host_script = root.parent / f"ks-script-nochroot-{index}"
            host_script.write_text(script.script)
            argv = [interp, str(host_script)]
            env = {**os.environ, "INSTALL_ROOT": str(root)}
            cwd = ks_dir
        env["SOURCE_DATE_EPOCH"] = os.environ.get("SOURCE_DATE_EPOCH", "0")
        proc = probe(argv, cwd=cwd, env=env)
        output, left = _left_running(proc.stdout.decode(errors="replace"))
        for line in output.splitlines():
            print(f"  | {line}", flush=True)
        if left:
            log.warning("%s left %d process(es) running: ended with the script", label, left)
        if script.inChroot:
            treefs.resolve(root, name).unlink(missing_ok=True)
        else:
            host_script.unlink(missing_ok=True)
        if script.logfile:
            if script.inChroot:
                old = treefs.read_text(root, script.logfile) or ""
                treefs.write_file(root, script.logfile, old + output)
            else:
                with open(script.logfile, "a") as logfile:
                    logfile.write(output)
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-20:])
            message = f"{label} failed with exit code {proc.returncode}"
            if bound is not None and bound.full():
                message += f": {bound.message()}"
            if script.errorOnFail:
                raise BuildError(message + (f"; its output:\n{tail}" if tail else "; no output"))
            log.warning("%s (not --erroronfail: continuing)", message)


def _left_running(output: str) -> tuple[str, int]:
    """The script's output without the wrapper's count line, and that count."""
    kept, left = [], 0
    for line in output.splitlines():
        if line.startswith(LEFT_MARK + " ") and line.split()[-1].isdigit():
            left = int(line.split()[-1])
        else:
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else ""), left


@contextmanager
def bounded(stage: Path, limit: int) -> Iterator[Bound]:
    """A filesystem of ``limit`` bytes for the overlay's upper and work directories: a sparse
    ext4 image in the staging directory, loop-mounted with ``discard`` (what a script writes
    and deletes again gives its blocks back to the host). Only the final upper directory is
    copied out, so a zero-fill costs at most ``limit`` of host disk, and only while it runs."""
    image, mnt = stage / "bounded.img", stage / "bounded"
    with open(image, "wb") as f:
        f.truncate(limit)
    run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,nodiscard", image])
    mnt.mkdir()
    run(["mount", "-o", "loop,discard", image, mnt], what="mounting the config layer's bound")
    try:
        yield Bound(mnt, limit)
    finally:
        run(["umount", mnt], what="unmounting the config layer's bound")
        image.unlink()
        mnt.rmdir()


def configure(job: Job) -> dict[str, Any]:
    """The layer's build (a worker in private namespaces): ``staging/upper`` over the tree,
    every write of the settings and the scripts bounded by the appliance's size."""
    from ksbake.chroot import mount_overlay
    from ksbake.kickstart import parse_fragment

    handler = parse_fragment(job.inputs["ks"], job.inputs["syntax"])
    where = job.inputs.get("where", {})
    stage = job.stage
    merged = stage / "merged"
    lower = job.parent_dir("packages") / "tree"
    warnings: list[str] = []
    with bounded(stage, job.inputs.get("write_limit") or DEFAULT_WRITE_LIMIT) as bound:
        upper = bound.path / "upper"
        mount_overlay([lower], upper, bound.path / "work", merged)
        try:
            apply_system(merged, handler, warnings)
            try:
                apply_accounts(merged, handler, job.key)
            except BuildError as exc:  # "sshkey: user 'x' does not exist": at its line
                name = exc.message.split("'")[1] if exc.message.startswith("sshkey:") else ""
                raise located(exc, where.get("sshkey", {}).get(name)) from None
            try:
                apply_services(merged, handler, warnings)
            except BuildError as exc:  # a unit the tree lacks: at the services line
                raise located(exc, where.get("services")) from None
            apply_security(merged, handler, warnings)
            run_post_scripts(merged, handler, job.inputs["ks_dir"], where.get("post", []), bound)
            reset_machine_id(merged)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise BuildError(f"configuring the tree: {bound.message()}") from None
        finally:
            run(["umount", merged])
        merged.rmdir()
        # what the settings and %post wrote gets the packages' epoch, not this build's time
        packages_meta = json.loads((job.parent_dir("packages") / "meta.json").read_text())
        clamp_times(upper, packages_meta.get("epoch", MIN_EPOCH))
        run(["cp", "-a", upper, stage / "upper"], what="copying the configured changes")
    return {"warnings": warnings}


def tree_layers(config_dir: Path) -> list[Path]:
    """The directories whose overlay is the configured tree of a config object, topmost first:
    its upper directory over the packages tree it was built on."""
    import json

    packages_key = json.loads((config_dir / "meta.json").read_text())["parents"]["packages"]
    return [config_dir / "upper", config_dir.parent.parent / "packages" / packages_key / "tree"]
