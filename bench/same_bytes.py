"""Same inputs, same bytes across a code change: build appliances with an older revision and
with the working tree, and compare what each layer wrote.

For refactors that must not change any output. Three appliances cover the disk paths: `demo`
(BIOS, msdos), `uefi` (GPT with an ESP, OVMF firmware) and `ovirt-wui` (two disks, swap;
offline through the mirror override). Steps, in one private store:

1. the old revision (a `git worktree`) builds all three: every layer's objects;
2. the objects of the disks, bootloader, convert and descriptor layers are removed, and the
   working tree builds again over the same installed and configured trees: raw disks (of the
   disks and bootloader objects) and every published file must be byte-identical;
3. the config and packages objects are removed too, and the working tree builds them again:
   the trees are compared by content (paths, types, modes, owners, file bytes, link targets,
   xattrs), not by timestamps, which no build of them fixes yet.

Keys may differ where a layer's CODE_VERSION was bumped; the script says which.

    .venv/bin/python bench/same_bytes.py [--before REV] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import xxhash

PROJECT = Path(__file__).resolve().parents[1]
DEMO = (PROJECT / "configs" / "demo.ks").read_text()
DEMO_PARTS = "part /boot --fstype=ext4 --size=64 --ondisk=sda\n"
UEFI = DEMO.replace(DEMO_PARTS, "part /boot/efi --fstype=efi --size=64\n" + DEMO_PARTS).replace(
    "--disklabel=msdos", "--disklabel=gpt"
)
MIRRORS = (
    '[mirrors]\nfedora = "file://$ksbake_repo/base"\nupdates = "file://$ksbake_repo/updates"\n'
)
APPLIANCES = {
    "demo.ks": DEMO,
    "uefi.ks": UEFI,
    "uefi.toml": 'firmware = "uefi"\nformats = ["qcow2", "vmdk", "raw"]\nova = true\n',
    "ovirt-wui.ks": (PROJECT / "configs" / "ovirt-wui.ks").read_text(),
    "ovirt-wui.toml": (PROJECT / "configs" / "ovirt-wui.toml").read_text() + MIRRORS,
}
DOWNSTREAM = ("disks", "bootloader", "convert", "descriptor")
TREES = ("packages", "config")
# rpm/dnf files whose bytes change with every transaction: install times, dnf's history (the
# hardening issue normalises them)
TRANSIENT = (
    "rpmdb.sqlite",
    "rpmdb.sqlite-shm",
    "rpmdb.sqlite-wal",
    "history.sqlite",
    "history.sqlite-shm",
    "history.sqlite-wal",
)


def digest(path: Path) -> str:
    """xxh3 of a file, read without updating its atime: mkfs -d copies the cached tree's
    atimes into the image, so reading the store would itself change the next build's bytes."""
    h = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    with os.fdopen(fd, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def doit(code: Path, ws: Path, store: Path, *args: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "KSBAKE_CONFIGS": str(ws / "configs"),
        "KSBAKE_CACHE": str(ws / "cache"),
        "KSBAKE_STORE": str(store),
        # one out/ for every build: the libvirt domain names the published disks' paths
        "KSBAKE_OUT": str(ws.parent / "out"),
    }
    argv = [sys.executable, "-m", "doit", "-f", str(code / "dodo.py"), "-d", str(code), *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{code}: doit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def build(code: Path, root: Path, store: Path) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="ws-", dir=root))
    (ws / "configs").mkdir()
    for name, text in APPLIANCES.items():
        (ws / "configs" / name).write_text(text)
    doit(code, ws, store, "appliance")
    return ws


def refs(ws: Path, name: str) -> dict[str, list[str]]:
    """Store keys of each layer of one appliance, read from its ref files (old and new shape)."""
    out: dict[str, list[str]] = {}
    for ref in (ws / "cache" / "build" / name).glob("*.ref"):
        data = json.loads(ref.read_text())
        if "key" in data:
            keys = [data["key"]]
        elif "items" in data:
            keys = [v["key"] for v in data["items"].values()]
        else:
            keys = [v["key"] for v in data.values()]
        out[ref.stem] = sorted(keys)
    return out


def byte_manifest(ws: Path, store: Path, name: str) -> dict[str, str]:
    """Digests of the raw disks of the disks and bootloader objects and every published file."""
    found: dict[str, str] = {}
    keys = refs(ws, name)
    for layer in ("disks", "bootloader"):
        for key in keys.get(layer, []):
            for raw in sorted((store / "objects" / layer / key).glob("*.raw")):
                found[f"{layer}/{raw.name}"] = digest(raw)
    for f in sorted((ws.parent / "out" / name).iterdir()):
        found[f"out/{f.name}"] = published_digest(f)
    return found


VMDK_CID = re.compile(rb"CID=[0-9a-f]{8}")
HASHES_VMDK = re.compile(rb"^.*\.(vmdk|ova|mf)\)?(\s*=.*)?$\n?", re.M)


def published_digest(path: Path) -> str:
    """A published file's digest, blind to qemu-img's random vmdk CID (it draws one per
    conversion: a vmdk is not reproducible, with or without this change) and to the lines
    of the manifests that hash a vmdk or what contains one (.ova, .mf)."""
    if path.suffix == ".vmdk":
        return xxhash.xxh3_128_hexdigest(VMDK_CID.sub(b"CID=00000000", path.read_bytes()))
    if path.suffix == ".ova":  # the vmdk and its .mf inside
        data = VMDK_CID.sub(b"CID=00000000", path.read_bytes())
        return xxhash.xxh3_128_hexdigest(HASHES_VMDK.sub(b"", data))
    if path.suffix == ".mf" or path.name == "SHA256SUMS":
        return xxhash.xxh3_128_hexdigest(HASHES_VMDK.sub(b"", path.read_bytes()))
    return digest(path)


def tree_manifest(top: Path) -> dict[str, str]:
    """Content of a tree without timestamps: type, mode, owner, bytes, link target, xattrs."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in sorted(dirnames + filenames):
            p = Path(dirpath) / entry
            rel = str(p.relative_to(top))
            if p.name in TRANSIENT:
                continue
            st = p.lstat()
            what = (
                f"{stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
            )
            if stat.S_ISLNK(st.st_mode):
                what += " -> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what += " " + digest(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what += f" dev {st.st_rdev}"
            xattrs = sorted(  # overlayfs' own bookkeeping (inode handles) is not content
                (k, os.getxattr(p, k, follow_symlinks=False).hex())
                for k in os.listxattr(p, follow_symlinks=False)
                if not k.startswith("trusted.overlay.origin")
            )
            found[rel] = what + (f" {xattrs}" if xattrs else "")
    return found


def tree_manifests(ws: Path, store: Path, name: str) -> dict[str, dict[str, str]]:
    keys = refs(ws, name)
    out = {}
    for layer, sub in (("packages", "tree"), ("config", "upper")):
        for key in keys.get(layer, []):
            out[layer] = tree_manifest(store / "objects" / layer / key / sub)
    return out


def remove_objects(store: Path, layers: tuple[str, ...], aside: Path | None = None) -> None:
    for layer in layers:
        if aside is not None and (store / "objects" / layer).exists():
            aside.mkdir(parents=True, exist_ok=True)
            (store / "objects" / layer).rename(aside / layer)
        shutil.rmtree(store / "objects" / layer, ignore_errors=True)


def differing_ranges(a: Path, b: Path, limit: int = 12) -> list[str]:
    """Where two files differ, as byte ranges (the first ``limit`` of them)."""
    ranges: list[list[int]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if not x and not y:
                break
            if x != y:
                for i in range(max(len(x), len(y))):
                    if x[i : i + 1] != y[i : i + 1]:
                        at = offset + i
                        if ranges and ranges[-1][1] >= at - 16:
                            ranges[-1][1] = at + 1
                        else:
                            ranges.append([at, at + 1])
            offset += max(len(x), len(y))
    return [f"{s}-{e - 1}" for s, e in ranges[:limit]] + (["..."] if len(ranges) > limit else [])


def compare(title: str, old: dict[str, str], new: dict[str, str]) -> bool:
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    print(f"  {title}: {len(old)} entries, " + ("identical" if not differ else "DIFFERENT:"))
    for k in differ[:20]:
        print(f"    {k}: {old.get(k, 'missing')} -> {new.get(k, 'missing')}")
    return not differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="revision to compare against")
    parser.add_argument("--after", help="revision to compare (default: the working tree)")
    parser.add_argument("--keep", type=Path, help="scratch directory to use and keep")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ksbake-same-bytes-", dir=PROJECT / "cache"))
    root.mkdir(parents=True, exist_ok=True)
    store = root / "store"
    old_code = root / "before"
    new_code = root / "after" if args.after else PROJECT
    ok = True
    try:
        for code, rev in ((old_code, args.before), (new_code, args.after)):
            if rev and not code.exists():
                add = ["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(code), rev]
                subprocess.run(add, check=True, capture_output=True)
        print(f"building with {args.before} ...", flush=True)
        build(old_code, root, store)
        # mkfs -d copies the cached trees' atimes into the image, and the first read of a
        # file after its install moves its atime (relatime: the bootloader layer reads
        # os-release and /boot). So the comparison is between two builds that both come
        # after that first read: build the disks again with the old code, then the new.
        # (The hardening issue makes the disks layer clamp atimes.)
        remove_objects(store, DOWNSTREAM)
        ws_old = build(old_code, root, store)
        names = [n[:-3] for n in APPLIANCES if n.endswith(".ks")]
        old_bytes = {n: byte_manifest(ws_old, store, n) for n in names}
        old_keys = {n: refs(ws_old, n) for n in names}

        print("rebuilding disks and what follows with the working tree ...", flush=True)
        aside = root / "old-objects"
        remove_objects(store, DOWNSTREAM, aside)
        ws_new = build(new_code, root, store)
        for n in names:
            print(f"{n}:")
            new_keys = refs(ws_new, n)
            changed = sorted(k for k in new_keys if old_keys[n].get(k) != new_keys[k])
            print(f"  keys changed: {', '.join(changed) or 'none'}")
            new_bytes = byte_manifest(ws_new, store, n)
            ok &= compare("raw disks and published files", old_bytes[n], new_bytes)
            for layer in ("disks", "bootloader"):  # where raw disks differ, show the bytes
                old_dir = aside / layer / old_keys[n][layer][0]
                new_dir = store / "objects" / layer / new_keys[layer][0]
                for raw in sorted(new_dir.glob("*.raw")):
                    entry = f"{layer}/{raw.name}"
                    if old_bytes[n].get(entry) != new_bytes.get(entry):
                        where = ", ".join(differing_ranges(old_dir / raw.name, raw))
                        print(f"    {entry} differs at bytes {where}")

        # only now: listing a tree's directories moves their atimes, which mkfs -d copies
        old_trees = {n: tree_manifests(ws_old, store, n) for n in names}
        print("rebuilding the packages and config trees with the working tree ...", flush=True)
        shutil.rmtree(aside, ignore_errors=True)
        remove_objects(store, DOWNSTREAM + TREES)
        ws_trees = build(new_code, root, store)
        for n in names:
            new = tree_manifests(ws_trees, store, n)
            for layer in TREES:
                ok &= compare(f"{n}: {layer} tree (content)", old_trees[n][layer], new[layer])
    finally:
        if not args.keep:
            for code in (old_code, root / "after"):
                subprocess.run(
                    ["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(code)],
                    check=False,
                    capture_output=True,
                )
            shutil.rmtree(root, ignore_errors=True)
    print("same bytes: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
