"""Benchmark on a realistic payload: the `server` appliance (systemd, sshd, nginx, dracut,
an LVM root and a data disk; ~450 MB, ~19k files) against the floor, in the same run.

Three rebuilds a kickstart author makes, each up to the bootloader layer, interleaved with
the same work done by hand with the raw tools (medians of --runs):

- cold: everything from the kickstart (the distribution and the downloaded packages kept).
  Floor: one dnf transaction of the same locked packages into an empty root (its scriptlets,
  dracut included, with /proc, /dev, /sys and /run mounted), `systemctl enable` and the
  %post chrooted, `mkfs.ext4 -d` of each filesystem at its offset, grub-mkimage + dd.
- layout-only (the size of /boot changed, so every partition after it moves).
  Floor: mkfs -d at the offsets, grub-mkimage + dd.
- %post-only (a line added to %post). Floor: the %post chrooted on an overlay of the
  installed tree, then mkfs -d at the offsets, grub-mkimage + dd.

    .venv/bin/python bench/realistic.py [--runs N] [--keep DIR] [--only cold|layout|post]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import PROJECT, Bench, show

TARGET = "bootloader:server"
POST_LINE = 'echo "ksbake server appliance" > /srv/www/index.html\n'

# Runs as root in a private mount namespace with the system python3 (dnf).
FLOOR = r"""
import json, os, subprocess, sys, time
mode, work, lock, repo, result, post = sys.argv[1:7]
result = json.loads(result)
root = os.path.join(work, "root")
t0 = time.perf_counter()

def mount_api(root):
    for d in ("proc", "dev", "sys", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", root + "/proc"], check=True)
    subprocess.run(["mount", "--rbind", "/dev", root + "/dev"], check=True)
    subprocess.run(["mount", "-t", "sysfs", "-o", "ro", "sysfs", root + "/sys"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", root + "/run"], check=True)

def unmount_api(root):
    for d in ("run", "sys", "dev", "proc"):
        subprocess.run(["umount", "-l", os.path.join(root, d)], check=True)

if mode == "cold":
    import dnf, rpm
    base = dnf.Base()
    conf = base.conf
    conf.installroot, conf.releasever = root, "40"
    conf.cachedir = os.path.join(work, "dnfcache")
    conf.persistdir = conf.logdir = os.path.join(work, "dnfstate")
    os.makedirs(conf.logdir, exist_ok=True)
    conf.install_weak_deps, conf.gpgcheck = False, False
    base.repos.add_new_repo("distro", conf, baseurl=["file://" + repo])
    base.fill_sack(load_system_repo=False)
    rpm.addMacro("_dbpath", "/usr/lib/sysimage/rpm")
    for p in json.load(open(lock))["packages"]:
        base.install(f"{p['name']}-{p['epoch']}:{p['version']}-{p['release']}.{p['arch']}")
    base.resolve()
    base.download_packages(list(base.transaction.install_set))
    os.environ.update(TMPDIR="/tmp", HOME="/root")
    mount_api(root)
    base.do_transaction()
    base.close()
    unmount_api(root)
if mode in ("cold", "post"):
    if mode == "post":  # the %post on an overlay of the installed tree (sys.argv[7])
        upper, wd = os.path.join(work, "upper"), os.path.join(work, "wd")
        os.makedirs(upper); os.makedirs(wd); os.makedirs(root)
        subprocess.run(["mount", "-t", "overlay", "-o",
                        f"lowerdir={sys.argv[7]},upperdir={upper},workdir={wd}", "x", root],
                       check=True)
    else:
        subprocess.run(["chroot", root, "systemctl", "enable", "ssh", "nginx",
                        "NetworkManager"], check=True, capture_output=True)
    mount_api(root)
    subprocess.run(["chroot", root, "/bin/sh", "-c", post], check=True)
    unmount_api(root)
if mode == "layout":
    root = sys.argv[7]
for disk in result["disks"]:
    with open(os.path.join(work, disk["file"]), "wb") as f:
        f.truncate(disk["size"])
for fs in result["filesystems"]:
    if not fs["mountpoint"]:
        continue
    src = root if fs["mountpoint"] == "/" else root + fs["mountpoint"]
    start = fs["start"]
    image = os.path.join(work, fs["disk"] + ".raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, "-E", f"offset={start}", image,
                    f"{fs['size'] // 1024}k"], check=True)
core = os.path.join(work, "core.img")
subprocess.run(["grub-mkimage", "-O", "i386-pc", "-p", "/grub", "-o", core, "biosdisk",
                "part_msdos", "ext2", "lvm", "search_fs_uuid", "normal", "configfile",
                "linux", "serial", "terminal", "echo", "test"], check=True)
sda = os.path.join(work, "sda.raw")
subprocess.run(["dd", "if=/usr/lib/grub/i386-pc/boot.img", f"of={sda}", "bs=440", "count=1",
                "conv=notrunc", "status=none"], check=True)
subprocess.run(["dd", f"if={core}", f"of={sda}", "bs=512", "seek=1", "conv=notrunc",
                "status=none"], check=True)
print(time.perf_counter() - t0)
"""


def _ref(bench: Bench, layer: str) -> str:
    return json.loads((bench.root / "cache/build/server" / f"{layer}.ref").read_text())["key"]


def tree_layers(bench: Bench) -> list[Path]:
    """The configured tree's layers: config's upper directory over the packages tree."""
    config = bench.store / "objects/config" / _ref(bench, "config")
    meta = json.loads((config / "meta.json").read_text())
    return [
        config / "upper",
        bench.store / "objects/packages" / meta["parents"]["packages"] / "tree",
    ]


def floor(bench: Bench, mode: str, post: str) -> float:
    work = bench.root / "floor"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    lock = bench.store / "objects/lock" / _ref(bench, "lock") / "lock.json"
    result = (bench.store / "objects/disks" / _ref(bench, "disks") / "result.json").read_text()
    packages = tree_layers(bench)[1]
    extra: list[str] = []
    prefix = ""
    if mode == "post":
        extra = [str(packages)]
    if mode == "layout":  # the configured tree, read-only, as ksbake's disks layer sees it
        view = work / "view"
        view.mkdir()
        upper, lower = tree_layers(bench)
        prefix = (
            f"import subprocess; subprocess.run(['mount','-t','overlay','-o',"
            f"'ro,lowerdir={upper}:{lower}','x','{view}'],check=True)\n"
        )
        extra = [str(view)]
    argv = [
        "unshare",
        "--mount",
        "--propagation=private",
        "/usr/bin/python3",
        "-c",
        prefix + FLOOR,
        mode,
        str(work),
        str(lock),
        str(bench.store / "distro/base"),
        result,
        post,
        *extra,
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    seconds = float(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def trim(bench: Bench) -> None:
    """Drop the objects no ref points at any more (the previous run's disks): the bench's
    disk use stays about one appliance, not one per run (gc keeps the distribution)."""
    env = {**bench.env, "KSBAKE_CACHE_BUDGET": "0"}
    subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "-d", str(PROJECT), "gc"],
        env=env,
        check=True,
        capture_output=True,
    )


def forget_layers(bench: Bench) -> None:
    """A cold build: drop every object but the distribution, and the workspace's state."""
    for layer in ("lock", "packages", "config", "disks", "bootloader"):
        shutil.rmtree(bench.store / "objects" / layer, ignore_errors=True)
    shutil.rmtree(bench.root / "cache", ignore_errors=True)


def post_text(ks: str) -> str:
    body = ks.split("%post --erroronfail\n", 1)[1].split("%end", 1)[0]
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="reuse this directory (and its distribution)")
    parser.add_argument("--only", choices=("cold", "layout", "post"), action="append")
    args = parser.parse_args()
    bench = Bench(args.keep)
    ks = (PROJECT / "configs/server.ks").read_text()
    bench.write("server.toml", (PROJECT / "configs/server.toml").read_text())
    bench.write("server.ks", ks)
    started = time.perf_counter()
    bench.doit("distro")
    print(f"the distribution (built once, or reused): {time.perf_counter() - started:.1f} s")
    wall, _ = bench.doit(TARGET)  # the starting point every edit is made from
    print(f"server up to the bootloader layer (built once, or reused): {wall:.1f} s")

    results: dict[str, tuple[list[float], list[float]]] = {}
    for scenario in args.only or ("cold", "layout", "post"):
        ours, floors = [], []
        for i in range(args.runs):
            if scenario == "cold":
                bench.write("server.ks", ks)
                forget_layers(bench)
                text = ks
            elif scenario == "layout":
                boot = "part /boot --fstype=ext4 --size=256"
                text = ks.replace(boot, boot.replace("256", str(256 + 8 * (i + 1))))
                assert text != ks
            else:
                text = ks.replace(POST_LINE, POST_LINE + f"echo run {i} > /etc/ksbake-bench\n")
            bench.write("server.ks", text)
            wall, events = bench.doit(TARGET)
            ran = {e["layer"] for e in events if e["built"]}
            if scenario != "cold" and ran & {"lock", "packages"}:
                sys.exit(f"a {scenario} change rebuilt {ran}: the cache is wrong")
            if i == 0:
                print(f"{scenario}: first run {wall:.2f} s")
                show(events)
            ours.append(wall)
            floors.append(floor(bench, scenario, post_text(text)))
            trim(bench)
            print(f"  run {i + 1}: ksbake {wall:6.2f} s   floor {floors[-1]:6.2f} s", flush=True)
        results[scenario] = (ours, floors)
        bench.write("server.ks", ks)

    tree = bench.store / "objects/packages" / _ref(bench, "packages") / "tree"
    files = sum(1 for _ in tree.rglob("*"))
    size = sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"\npayload: the server tree, {size / 1e6:.0f} MB in {files} files")
    print(f"medians of {args.runs}, each up to {TARGET}:")
    print(f"{'rebuild':<12} {'ksbake':>8} {'floor':>8} {'ratio':>6}")
    for scenario, (ours, floors) in results.items():
        a, b = statistics.median(ours), statistics.median(floors)
        print(f"{scenario:<12} {a:7.2f}s {b:7.2f}s {a / b:6.2f}")
    bench.close()


if __name__ == "__main__":
    main()
