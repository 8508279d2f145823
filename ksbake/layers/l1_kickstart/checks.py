"""What the kickstart and the settings can be checked for before anything is built, beyond
the system commands (``system.py``): the package sources, and the disk layout against the
bootloader and the filesystems' limits. Each refusal names its file:line or file:key.
"""

from __future__ import annotations

from pathlib import Path

from ksbake.errors import ConfigError, KickstartError
from ksbake.kickstart import Kickstart
from ksbake.layout import LABEL_MAX, Plan
from ksbake.settings import Settings


def check_sources(ks: Kickstart, conf: Settings, settings_file: Path) -> None:
    """Repositories: at least one, each name once, mirror overrides for names that exist."""
    h = ks.handler
    names: dict[str, object] = {}
    for repo in h.repo.repoList:
        if repo.name in names:
            raise ks.error(
                repo,
                f"repo --name={repo.name} is given twice",
                "give each repository its own name, or drop one line",
            )
        names[repo.name] = repo
    url = getattr(h, "url", None)
    if url is not None and getattr(url, "seen", False):
        names["ks-url"] = url
    if not names:
        raise KickstartError(
            str(ks.path),
            None,
            "the kickstart names no package repository",
            "add a 'repo --name=NAME --baseurl=URL' line (the bundled one is "
            "'repo --name=ksbake --baseurl=file://$ksbake_repo/base')",
        )
    unknown = sorted(set(conf.mirrors) - set(names))
    if unknown:
        raise ConfigError(
            f"{settings_file}: mirrors: {', '.join(unknown)} is no repository of the kickstart",
            hint=f"its repositories: {', '.join(names)} (the url command is 'ks-url')",
        )


def check_layout(ks: Kickstart, plan: Plan) -> None:
    """What the disk builders would refuse late: labels too long for their filesystem, a
    bootloader --boot-drive that names no disk of the layout."""
    by_mount = {}
    for part in ks.handler.partition.partitions:
        by_mount[part.mountpoint] = part
    for disk in plan.disks:
        for p in disk.partitions:
            limit = LABEL_MAX.get(p.fstype, 16)
            if p.label and len(p.label.encode()) > limit:
                line = by_mount.get(p.mountpoint or "swap") or ks.handler.partition
                raise ks.error(
                    line,
                    f"--label={p.label!r} is too long for {p.fstype} (at most {limit} bytes)",
                    "use a shorter label",
                )
    bootloader = ks.handler.bootloader
    drive = (getattr(bootloader, "bootDrive", "") or "").removeprefix("/dev/")
    if drive and drive not in {d.name for d in plan.disks}:
        raise ks.error(
            bootloader,
            f"bootloader --boot-drive={drive}: no such disk in the layout",
            f"the disks are {', '.join(d.name for d in plan.disks)}",
        )
