"""The chain: one declaration per layer, in build order. Read here what is in each key.

Every layer's key is ``layer_key(name, version, {keyed inputs, discovered, tools}, parents)``
(``ksbake.runner``); its inputs come from the function named in ``inputs`` (written by the
kickstart layer to ``build/NAME/inputs/<layer>.json``, so reformatting the kickstart or editing
another layer's section changes nothing here), from build files (``reads``), from what the
build ``discover``s at run time, and the parents' keys. What a build reads but does not key
(file:line for its messages, workspace paths, bounds) comes from its ``unkeyed`` function, in a
file doit does not track (``inputs/<layer>.unkeyed.json``). The modules beside this file hold
the build functions; this file imports none of them (a no-op doit run stays fast).

Adding a layer: one ``Layer(...)`` below, one ``build(job) -> meta`` function in its module.
"""

from __future__ import annotations

from typing import Any

from ksbake.paths import Paths
from ksbake.runner import IN_PROCESS, NAMESPACES, PROCESS, Layer, Source, run_step
from ksbake.runner import obtain_in_worker as _obtain_in_worker

# -- what each layer reads from the kickstart, the settings and the plan ---------------------


def lock_inputs(src: Source) -> dict[str, Any]:
    """repo/url lines, %packages and its options, releasever/basearch/mirrors."""
    s = src.ks.sections
    return {
        "ks": s["repos"] + s["packages"],
        "syntax": src.conf.syntax,
        "settings": src.conf.lock_inputs(),
    }


def config_inputs(src: Source) -> dict[str, Any]:
    """System commands (lang, keyboard, timezone, rootpw, user, group, sshkey, services,
    selinux, firewall, network) and %post scripts."""
    from ksbake.layers.l1_kickstart.system import hash_passwords

    s = src.ks.sections  # passwords leave the kickstart layer hashed
    return {
        "ks": hash_passwords(s["system"], src.conf.syntax) + s["post"],
        "syntax": src.conf.syntax,
    }


def packages_line(src: Source) -> str:
    """file:line of the %packages header (or of the kickstart: there is none)."""
    for number, line in enumerate(src.ks.text.splitlines(), 1):
        if line.strip().startswith("%packages"):
            return str(src.ks.line_of(number))
    return str(src.ks.path)


def packages_unkeyed(src: Source) -> dict[str, Any]:
    """``where``: the %packages line, for what the lock finds wrong with it, and for a tree
    without a kernel (the bootloader layer)."""
    return {"where": {"packages": packages_line(src)}}


def disks_unkeyed(src: Source) -> dict[str, Any]:
    """``where``: each mount point's part line (for a filesystem its tree does not fit)."""
    h = src.ks.handler
    lines = [*h.partition.partitions]
    for command, attr in (("logvol", "lvList"), ("btrfs", "btrfsList")):
        lines += getattr(h.commands.get(command), attr, None) or []
    where = {str(x.mountpoint): str(src.ks.line_of(x)) for x in lines if x.mountpoint}
    return {"where": where}


def config_unkeyed(src: Source) -> dict[str, Any]:
    """``ks_dir``: %post --nochroot's cwd (a workspace path); ``where``: file:line of each
    %post, sshkey and the services line (for errors); ``write_limit``: how much the tree may
    grow (the size of the plan's filesystems: more could not be put on the disks)."""
    from pykickstart.constants import KS_SCRIPT_POST

    posts = [x for x in src.ks.handler.scripts if x.type == KS_SCRIPT_POST]
    keys = getattr(getattr(src.ks.handler, "sshkey", None), "sshUserList", [])
    where: dict[str, Any] = {
        "post": [str(src.ks.line_of(x)) for x in posts],
        "sshkey": {k.username: str(src.ks.line_of(k)) for k in keys},
    }
    services = getattr(src.ks.handler, "services", None)  # one line: the last one counts
    if services is not None and (services.enabled or services.disabled):
        where["services"] = str(src.ks.line_of(services))
    return {
        "ks_dir": str(src.ks.path.parent),
        "where": where,
        "write_limit": max(src.plan.filesystem_bytes(), 64 * 2**20),
    }


def disks_inputs(src: Source) -> dict[str, Any]:
    """The partition plan (no file:line in it: reformatting leaves it alone)."""
    return {"plan": src.plan.to_dict()}


def bootloader_inputs(src: Source) -> dict[str, Any]:
    from ksbake.layers.l1_kickstart.system import grub_password
    from ksbake.layers.l6_bootloader.settings import bootloader_settings

    settings = bootloader_settings(src.ks.handler)
    if settings["password"] and not settings["password_crypted"]:  # hashed here, not later
        settings |= {"password": grub_password(settings["password"]), "password_crypted": True}
    return {"bootloader": settings, "firmware": src.conf.firmware}


def convert_inputs(src: Source) -> dict[str, Any]:
    """One entry per output format: that format's own options only."""
    from ksbake.formats import format_options

    return {
        "formats": {
            fmt: {"format": fmt, "options": format_options(fmt, src.conf)}
            for fmt in src.conf.formats
        }
    }


def descriptor_inputs(src: Source) -> dict[str, Any]:
    from ksbake.formats import DESCRIPTORS

    c = src.conf
    return {
        "name": c.name,
        "version": c.version,
        "release": c.release,
        "arch": c.basearch,
        "vcpus": c.vcpus,
        "memory": c.memory,
        "firmware": c.firmware,
        "accel": c.accel,
        # one NIC per kickstart network line, as appliance-creator counted them
        "nics": len(src.ks.handler.network.network),
        "ova": c.ova,
        "formats": list(c.formats),
        "descriptors": list(c.descriptors or DESCRIPTORS),
        "descriptors_asked": c.descriptors is not None,  # then a skipped one is noted
        "descriptor_format": c.descriptor_format,
        "vmdk_adapter": c.vmdk_adapter,
        "ovf_digest": c.ovf_digest,
        "libvirt_network": c.libvirt_network,
        "vendor": c.vendor,
        "out_dir": src.out_dir,  # the libvirt domain names the published disks' paths
    }


def publish_inputs(src: Source) -> dict[str, Any]:
    return {"mode": src.conf.publish}


# -- the chain ---------------------------------------------------------------------------------

L = "ksbake.layers."
CHAIN: tuple[Layer, ...] = (
    Layer(
        name="kickstart",
        version=1,
        doc="parse configs/NAME.ks into per-layer inputs",
        step=L + "l1_kickstart:step",
        code=(
            "layers/l1_kickstart",
            "kickstart",
            "layout",
            "settings",
            "formats",
            "layers/__init__.py",
            "layers/l6_bootloader/settings.py",
        ),
    ),
    Layer(
        name="lock",
        version=2,
        doc="resolve the package set",
        inputs=lock_inputs,
        unkeyed=packages_unkeyed,
        tools=("dnf", "hawkey"),
        discover=L + "l2_lock:metadata",  # repo metadata checksums: a nightly re-lock
        build=L + "l2_lock:resolve",
        isolation=PROCESS,  # dnf keeps global state; discover and build share one dnf start
        exports=("lock.json",),
        on_export=L + "l2_lock:print_changes",
        code=("layers/l2_lock.py",),
    ),
    Layer(
        name="packages",
        version=3,  # 2: times clamped, rpmdb settled, no dnf history; 3: a private /run
        doc="install the locked packages",
        reads={"lock": "lock.json"},  # the lock's content, not its key: same set, same tree
        context={"lock_ref": "lock.ref"},  # where to download from: not the bytes
        tools=("dnf", "rpm"),
        build=L + "l3_packages:install",
        isolation=NAMESPACES,  # scriptlets chrooted with /proc and /dev mounted
        code=("layers/l3_packages.py", "chroot", "treefs"),
    ),
    Layer(
        name="config",
        version=5,  # 4: times clamped to the packages' epoch; 5: machine-id, systemctl in tree
        doc="configure (settings, users, %post)",
        inputs=config_inputs,
        unkeyed=config_unkeyed,  # paths and bounds: not the bytes (and no rerun for them)
        parents=("packages",),
        build=L + "l4_config:configure",
        isolation=NAMESPACES,  # an overlay over the packages tree, %post chrooted
        code=("layers/l4_config.py", "chroot", "treefs", "kickstart"),
    ),
    Layer(
        name="disks",
        version=5,  # 3: tables by sfdisk; 4: every inode's atime and ctime the epoch; 5: LVs
        doc="partitioned raw disks",
        inputs=disks_inputs,
        unkeyed=disks_unkeyed,
        parents=("config",),
        checks=("packages",),  # the configured tree is config's upper over packages' tree
        tools=(
            "sfdisk",
            "e2fsprogs",
            "xfsprogs",
            "dosfstools",
            "mtools",
            "util-linux",
            "mke2fs.conf",
        ),
        build=L + "l5_disks:build",
        isolation=NAMESPACES,  # read-only overlays of the tree; xfs needs a loop mount
        code=("layers/l5_disks", "layout", "treefs"),
    ),
    Layer(
        name="bootloader",
        version=4,  # 4: BLS entries; the tree's GRUB modules only when complete
        doc="bootable disks (GRUB for BIOS and/or UEFI)",
        inputs=bootloader_inputs,
        unkeyed=packages_unkeyed,
        parents=("disks",),
        # reads the tree's kernels, BLS entries and GRUB modules: whether the tree's modules
        # are used is the tree's content, keyed through disks -> config -> packages
        checks=("config", "packages"),
        tools=("grub-mkimage",),
        build=L + "l6_bootloader:build",
        isolation=NAMESPACES,  # an xfs /boot is written through a loop mount
        code=("layers/l6_bootloader", "treefs"),
    ),
    Layer(
        name="convert",
        version=6,  # 6: vmdk adapter, hwversion, extent name; sda.EXT; populated_size
        doc="disk formats (qcow2, vmdk, ...)",
        inputs=convert_inputs,
        each="formats",  # one object per format: a format change converts only that one
        parents=("bootloader",),
        tools=("qemu-img",),
        build=L + "l7_convert:build",
        isolation=IN_PROCESS,
        code=("layers/l7_convert.py", "formats"),
    ),
    Layer(
        name="descriptor",
        version=4,  # 4: runnable formats; OVF controller = vmdk adapter; libosinfo id, agent
        doc="descriptors (virt-image, libvirt, OVF)",
        inputs=descriptor_inputs,
        parents=("convert",),
        tools=("osinfo-db",),  # the libosinfo id comes from the host's database
        build=L + "l8_descriptor:build",
        isolation=IN_PROCESS,
        code=("layers/l8_descriptor.py", "formats"),
    ),
    Layer(
        name="publish",
        version=1,
        doc="publish into out/NAME/",
        inputs=publish_inputs,
        step=L + "l9_publish:step",
        code=("layers/l9_publish.py", "formats"),
    ),
)

STORED = tuple(layer for layer in CHAIN if layer.build is not None)
"""The layers whose outputs are store objects (all but kickstart and publish)."""


def by_name(name: str) -> Layer:
    for layer in CHAIN:
        if layer.name == name:
            return layer
    raise KeyError(name)


def step(paths: Paths, name: str, layer_name: str) -> None:
    """The doit action of a stored layer (``ksbake.runner.run_step``)."""
    run_step(paths, name, by_name(layer_name))


def obtain_in_worker(layer_name: str, paths: dict[str, str], name: str) -> dict[str, Any]:
    """Worker entry point of a layer with ``discover`` (the lock): key and build there."""
    return _obtain_in_worker(by_name(layer_name), paths, name)
