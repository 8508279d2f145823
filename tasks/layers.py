"""doit tasks of the layers, kickstart to publish: one sub-task per appliance.

Each task's inputs are the small files written by the layer before it; each action asks the
store first (``ksbake.store``), so doit decides *when* to look and the store *whether* to build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from doit.tools import config_changed

from ksbake import inputs, lock
from tasks.common import PATHS, action, objects_intact

ENV_INPUTS = ("KSBAKE_MIRRORS", "KSBAKE_ACCEL")  # environment overrides read by the settings


def _build(name: str, file: str) -> str:
    return str(PATHS.build_dir(name) / file)


def _code(*modules: str) -> list[str]:
    """A layer's own code as a dependency: an edit reruns the step, which then rebuilds only
    if the layer's CODE_VERSION (part of its key) was bumped, else reuses the stored object."""
    return [str(PATHS.root / "ksbake" / f"{m}.py") for m in modules]


def task_kickstart() -> Iterator[dict]:
    """Parse each kickstart and split it into per-layer inputs."""
    for name in PATHS.appliances():
        settings_file = PATHS.settings(name)
        deps = inputs.recorded_files(PATHS, name)
        if settings_file.exists():
            deps.append(str(settings_file))
        yield {
            "name": name,
            "doc": f"parse configs/{name}.ks",
            "actions": [action("ksbake.inputs:step", PATHS, name)],
            "file_dep": deps
            + _code("inputs", "kickstart", "partitions", "layout", "settings", "bootloader"),
            "targets": [_build(name, f"inputs/{layer}.json") for layer in inputs.LAYERS],
            # an environment override is an input too: rerun when it changes
            "uptodate": [config_changed({v: os.environ.get(v, "") for v in ENV_INPUTS})],
            "clean": True,
        }


def task_lock() -> Iterator[dict]:
    """Depsolve each appliance's %packages into a lock file."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"resolve the package set of {name}",
            "actions": [action("ksbake.lock:step", PATHS, name)],
            "file_dep": [_build(name, "inputs/lock.json"), *_code("lock")],
            "targets": [_build(name, "lock.json"), _build(name, "lock.state.json")],
            "task_dep": ["repo"] if inputs.uses_bundled_repo(PATHS, name) else [],
            "uptodate": [(lock.metadata_unchanged, [PATHS, name])],
        }


def task_packages() -> Iterator[dict]:
    """Install each appliance's locked package set (shared between identical locks)."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"install the locked packages of {name}",
            "actions": [action("ksbake.packages:step", PATHS, name)],
            "file_dep": [_build(name, "lock.json"), *_code("packages", "lock")],
            "targets": [_build(name, "packages.ref")],
        }


def task_config() -> Iterator[dict]:
    """Apply system settings and %post over each installed tree."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"configure {name} (settings, users, %post)",
            "actions": [action("ksbake.config:step", PATHS, name)],
            "file_dep": [
                _build(name, "packages.ref"),
                _build(name, "inputs/config.json"),
                *_code("config", "chroot", "treefs"),
            ],
            "targets": [_build(name, "config.ref")],
        }


def task_disks() -> Iterator[dict]:
    """Partition each appliance's disks and build their filesystems from the tree."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"partitioned raw disks of {name}",
            "actions": [action("ksbake.disks:step", PATHS, name)],
            "file_dep": [
                _build(name, "config.ref"),
                _build(name, "inputs/disks.json"),
                *_code("disks"),
            ],
            "targets": [_build(name, "disks.ref")],
            "uptodate": [(objects_intact, ["disks", _build(name, "disks.ref")])],
        }


def task_bootloader() -> Iterator[dict]:
    """Install GRUB (BIOS or UEFI) and grub.cfg into copies of each appliance's disks."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"bootable disks of {name}",
            "actions": [action("ksbake.bootloader:step", PATHS, name)],
            "file_dep": [
                _build(name, "disks.ref"),
                _build(name, "inputs/bootloader.json"),
                *_code("bootloader"),
            ],
            "targets": [_build(name, "bootloader.ref")],
            "uptodate": [(objects_intact, ["bootloader", _build(name, "bootloader.ref")])],
        }


def task_convert() -> Iterator[dict]:
    """Convert each appliance's bootable disks to its output formats with qemu-img."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"disk formats of {name} (qcow2, vmdk, ...)",
            "actions": [action("ksbake.convert:step", PATHS, name)],
            "file_dep": [
                _build(name, "bootloader.ref"),
                _build(name, "inputs/convert.json"),
                *_code("convert"),
            ],
            "targets": [_build(name, "convert.ref")],
            "uptodate": [(objects_intact, ["convert", _build(name, "convert.ref")])],
        }


def task_descriptor() -> Iterator[dict]:
    """Write each appliance's virt-image, libvirt and OVF descriptors."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"descriptors of {name} (virt-image, libvirt, OVF)",
            "actions": [action("ksbake.descriptors:step", PATHS, name)],
            "file_dep": [
                _build(name, "convert.ref"),
                _build(name, "inputs/descriptor.json"),
                *_code("descriptors"),
            ],
            "targets": [_build(name, "descriptor.ref")],
            "uptodate": [(objects_intact, ["descriptor", _build(name, "descriptor.ref")])],
        }


def _published_current(name: str) -> bool:
    from ksbake import publish

    return publish.current(PATHS, name)


def task_publish() -> Iterator[dict]:
    """Publish each appliance into out/NAME/ (hardlinks to the store, swapped in atomically)."""
    for name in PATHS.appliances():
        yield {
            "name": name,
            "doc": f"publish {name} into out/{name}/",
            "actions": [action("ksbake.publish:step", PATHS, name)],
            "file_dep": [
                _build(name, "convert.ref"),
                _build(name, "descriptor.ref"),
                _build(name, "lock.json"),
                *_code("publish"),
            ],
            "targets": [str(PATHS.out / name / "SHA256SUMS")],
            "uptodate": [(_published_current, [name])],
        }
