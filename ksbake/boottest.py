"""The boot test: boot an appliance's bootable disks in QEMU until its success marker shows.

Not a cached layer (it produces no artifact), but a doit task of its own
(``doit boottest:NAME``) that reruns only when the bootable disks or the boot settings change.
The accelerator is a setting (``accel``; ``KSBAKE_ACCEL``): TCG here, KVM on real hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ksbake import settings
from ksbake.hashing import canonical_json, write_if_changed
from ksbake.paths import Paths


def boot_settings(paths: Paths, name: str) -> dict[str, Any]:
    """What the boot test reads besides the disks (its doit ``config_changed`` input)."""
    conf = settings.load(name, paths.configs)
    return {
        "marker": conf.boot_marker,
        "timeout": conf.boot_timeout,
        "accel": conf.accel,
        "memory": conf.memory,
        "vcpus": conf.vcpus,
    }


def step(paths: Paths, name: str) -> None:
    from ksbake import qemu
    from ksbake.store import Store

    build = paths.build_dir(name)
    key = json.loads((build / "bootloader.ref").read_text())["key"]
    directory = Store(paths.store).object_dir("bootloader", key)
    result = json.loads((directory / "result.json").read_text())
    disks = [directory / d["file"] for d in result["disks"]]
    names = [d["name"] for d in result["disks"]]
    boot = boot_settings(paths, name)
    log = build / "boot.log"
    outcome = qemu.boot(
        disks,
        log=log,
        firmware=result["firmware"],
        marker=boot["marker"],
        timeout=boot["timeout"],
        accel=boot["accel"],
        memory_mib=boot["memory"],
        vcpus=boot["vcpus"],
        boot_disk=names.index(result["boot_disk"]) if result.get("boot_disk") in names else 0,
    )
    seconds = outcome.seconds
    print(
        f"boottest:{name}: {boot['marker']!r} on the serial console after {seconds:.1f} s "
        f"({result['firmware']}, accel={boot['accel']}; log: {log})",
        flush=True,
    )
    write_if_changed(
        build / "boottest.json",
        canonical_json({"bootloader": key, **boot, "seconds": round(seconds, 1)}) + "\n",
    )


def boot_log(paths: Paths, name: str) -> Path:
    return paths.build_dir(name) / "boot.log"
