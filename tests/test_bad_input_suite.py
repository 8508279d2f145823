"""The bad-input suite: hundreds of kickstarts and settings files made wrong on purpose.

Cases are generated from configs/demo.ks and, when ../shared/corpus is there, from real
public kickstarts: truncated, lines duplicated, unknown options, hostile values, special
files, huge sizes, broken encodings, settings of the wrong type or out of bounds. Each must
end in exactly one error line that names the file (and line, or settings key), with exit
status non-zero, no traceback, nothing stored and nothing published; or build correctly.
Demo cases run the whole chain (they build offline); corpus cases run the kickstart layer
(their repositories are not reachable here), which is where input is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CORPUS, Workspace, corpus_primaries, demo_kickstart

pytestmark = pytest.mark.slow

DEMO = demo_kickstart()


@dataclass(frozen=True)
class Case:
    name: str
    ks: str | bytes
    toml: str = ""
    target: str = "appliance"  # the task to run: the whole chain, or only the kickstart layer


def _demo_cases() -> list[Case]:
    lines = DEMO.splitlines(keepends=True)
    cases: list[Case] = []
    for i in range(1, len(lines)):  # truncated after every line
        cases.append(Case(f"trunc{i:02d}", "".join(lines[:i])))
    for i, line in enumerate(lines):  # every line twice
        if line.strip() and not line.startswith("#"):
            cases.append(Case(f"dup{i:02d}", "".join(lines[: i + 1] + [line] + lines[i + 1 :])))
    commands = [
        (i, line)
        for i, line in enumerate(lines)
        if line[:1].isalpha() and not line.startswith(("repo", "%"))
    ]
    for i, line in commands:  # an option no command has
        cases.append(
            Case(
                f"opt{i:02d}",
                "".join([*lines[:i], line.rstrip() + " --frobnicate\n", *lines[i + 1 :]]),
            )
        )
    hostile = {
        "rootpw": ["rootpw", "rootpw --iscrypted", "rootpw --plaintext 'a b' extra"],
        "network": [
            "network --hostname='x y'",
            "network --hostname=" + "a" * 300,
            "network --bootproto=telepathy",
        ],
        "lang": ["lang", "lang ''", "lang $(reboot)"],
        "keyboard": ["keyboard", "keyboard ';'"],
        "part /boot": [
            "part /boot --fstype=ext9 --size=64",
            "part /boot --size=-5",
            "part /boot --size=abc",
            "part /boot --fstype=ext4 --size=0",
            "part /boot --fstype=ext4 --size=64 --ondisk=../../x",
            "part ../etc --fstype=ext4 --size=64",
            "part /boot --fstype=ext4 --size=64 --label=" + "L" * 40,
        ],
        "part /": [
            "part / --fstype=ext4 --size=999999999999 --ondisk=sda",
            "part / --fstype=ext4 --size=4 --ondisk=sda",
            "part / --fstype=swap --size=64",
        ],
        "bootloader": [
            "bootloader --location=moon",
            "bootloader --timeout=soon",
            "bootloader --boot-drive=sdz",
        ],
        "clearpart": ["clearpart --all --disklabel=amiga"],
    }
    n = 0
    for prefix, replacements in hostile.items():
        at = next(
            i
            for i, line in enumerate(lines)
            if line.startswith(prefix + " ") or line.strip() == prefix
        )
        for text in replacements:
            n += 1
            cases.append(Case(f"val{n:02d}", "".join([*lines[:at], text + "\n", *lines[at + 1 :]])))
    for extra in (
        "user --name='root:x:0:0::/:/bin/sh'",
        "user --name=../../etc/x",
        "group --name='a b'",
        "timezone ../../etc/shadow",
        "services --enabled='a;b'",
        "sshkey --username=nobody-here 'ssh-ed25519 AAAA'",
        "selinux --frobnicate",
        "firewall --port=notaport",
        "autopart --type=plain",
        "raid / --level=1",
        "logvol / --vgname=vg --name=root --size=100",
        "ignoredisk --drives=sdb",
    ):
        n += 1
        cases.append(
            Case(
                f"val{n:02d}",
                DEMO.replace("selinux --disabled\n", f"selinux --disabled\n{extra}\n"),
            )
        )
    specials = [
        "/dev/zero",
        "/proc/self/environ",
        "/etc/shadow",
        "/nonexistent/x.ks",
        "/",
        "/dev/null",
        "../../../../etc/passwd",
    ]
    for i, path in enumerate(specials):
        cases.append(Case(f"inc{i}", DEMO.replace("zerombr\n", f"%include {path}\nzerombr\n")))
    cases += [
        Case("enc-latin1", DEMO.replace("Welcome", "Willkommen \xfc").encode("latin-1")),
        Case("enc-nul", DEMO.encode().replace(b"zerombr", b"zero\0mbr")),
        Case("enc-bom", b"\xef\xbb\xbf" + DEMO.encode()),
        Case("enc-binary", os.urandom(2048)),
        Case("empty", ""),
        Case("only-comment", "# nothing\n"),
        Case("open-section", DEMO.replace("%end\n", "", 1)),
        Case("stray-end", "%end\n" + DEMO),
        Case("nested", DEMO.replace("%post\n", "%post\n%packages\n", 1)),
    ]
    return cases


SETTINGS = {
    "syntax": ['"F99"', "40", '""'],
    "compat": ['"yes"', "1"],
    "releasever": ["[1]", "true"],
    "basearch": ["1", "[]"],
    "mirrors": ['"x"', "{ ksbake = 1 }", '{ nosuch = "file:///x" }'],
    "disk_sizes": [
        '"4GiB"',
        '{ sda = "lots" }',
        "{ sda = -1 }",
        '{ sda = "20TiB" }',
        "{ sda = 1.5 }",
    ],
    "firmware": ['"coreboot"', "1"],
    "accel": ["1", "[]"],
    "boot_marker": ["1"],
    "boot_timeout": ['"soon"', "0", "-5"],
    "formats": ['"qcow2"', "[]", '["floppy"]', "[1]"],
    "qcow2_compression": ['"lz4"'],
    "raw_compression": ['"gzip"'],
    "vmdk_subformat": ['"flat"'],
    "version": ['"1 0"', '"a/b"', "[1]"],
    "release": ['"1;2"', "1.5"],
    "vcpus": ["0", "100000", '"two"'],
    "memory": ["0", "99999999999", '"1G"'],
    "ova": ['"yes"'],
    "publish": ['"symlink"', "1"],
    "no_such_key": ["1"],
}


def _settings_cases() -> list[Case]:
    cases = []
    for key, values in SETTINGS.items():
        for i, value in enumerate(values):
            cases.append(Case(f"set-{key.replace('_', '-')}-{i}", DEMO, f"{key} = {value}\n"))
    cases += [
        Case("set-not-toml", DEMO, "this is = = not toml\n"),
        Case("set-binary", DEMO, "\udcff"),
        Case("set-ova-no-vmdk", DEMO, "ova = true\n"),
    ]
    return cases


def _corpus_cases() -> list[Case]:
    if not (CORPUS / "PROVENANCE.tsv").is_file():
        return []
    cases = []
    for i, (rel, syntax) in enumerate(corpus_primaries()):
        text = (CORPUS / rel).read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        toml = f'syntax = "{syntax}"\ncompat = true\n'
        cases.append(
            Case(f"corpus{i:02d}-half", "".join(lines[: len(lines) // 2]), toml, "kickstart")
        )
        cases.append(Case(f"corpus{i:02d}-strict", text, "", "kickstart"))
    return cases


ERROR = re.compile(r"^ksbake: error: (.*)$", re.M)


def test_bad_input_suite(tmp_path: Path) -> None:
    cases = _demo_cases() + _settings_cases() + _corpus_cases()
    assert len(cases) >= 200 or not (CORPUS / "PROVENANCE.tsv").is_file(), len(cases)
    from conftest import shared_store

    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    for case in cases:
        ws = Workspace(tmp_path / case.name, shared_store())
        ws.configs.mkdir(parents=True)
        path = ws.configs / f"{case.name}.ks"
        if isinstance(case.ks, bytes):
            path.write_bytes(case.ks)
        else:
            path.write_text(case.ks)
        if case.toml:
            (ws.configs / f"{case.name}.toml").write_bytes(
                case.toml.encode(errors="surrogateescape")
            )
        objects_before = _objects(ws.store)
        r = ws.doit(f"{case.target}:{case.name}")
        text = r.out + r.err
        if "Traceback" in text:
            problems.append(f"{case.name}: traceback\n{text[-1500:]}")
            continue
        if r.rc == 0:
            outcomes["built" if case.target == "appliance" else "accepted"] += 1
            if case.target == "appliance" and not (ws.root / "out" / case.name).is_dir():
                problems.append(f"{case.name}: exit 0 but nothing published")
            continue
        errors = ERROR.findall(r.err)
        if len(errors) != 1:
            problems.append(f"{case.name}: {len(errors)} error lines\n{r.err[-1500:]}")
            continue
        where = errors[0]
        named = (
            str(path) in where
            or str(ws.configs / f"{case.name}.toml") in where
            or re.search(r"\S+:\d+: ", where)  # an included file, by line
        )
        if not named:
            problems.append(f"{case.name}: the error names no file: {where}")
        if (ws.root / "out" / case.name).exists():
            problems.append(f"{case.name}: failed but published")
        failed = re.findall(r"TaskFailed - taskid:(\w+):", r.out)
        new = _objects(ws.store) - objects_before
        if new and failed[:1] == ["kickstart"]:  # refused early: nothing may be stored
            problems.append(f"{case.name}: refused by the kickstart layer but stored {new}")
        outcomes["refused"] += 1
        outcomes["with a hint" if where.endswith(")") else "without a hint"] += 1
    summary = json.dumps(dict(outcomes), sort_keys=True)
    print(f"bad-input suite: {len(cases)} cases: {summary}")
    shown = "\n".join(p if "traceback" in p else p[:300] for p in problems[:40])
    assert not problems, f"{shown}\n({len(problems)} problems; {summary})"


def _objects(store: Path) -> set[str]:
    return {str(p.parent.relative_to(store)) for p in store.glob("objects/*/*/meta.json")}
