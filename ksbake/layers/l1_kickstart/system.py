"""The system commands, checked and made safe before any layer uses them.

Checked here, at the kickstart layer, so that a bad value is one error at its file:line before
anything is built: names as ``useradd`` accepts them (no ``root:x:0:0`` second uid-0 line, no
``../../etc/x`` path), shells and home directories as absolute paths, a hostname as RFC 1123
has it, a locale, keymap, time zone and unit names as the files they end up in can hold them.

And passwords leave this layer hashed (``hash_passwords``): the config layer's input file, the
store and the logs never hold a plain text password. The salt derives from the user and the
password, so the same kickstart gives the same hash (and the same bytes) everywhere.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ksbake.kickstart import Kickstart, canonical_sections, parse_fragment
from ksbake.passwords import crypt_salt, grub_password_hash, sha512_crypt

NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,30}[$]?")  # useradd's rule (shadow-utils), 32 at most
HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
LOCALE = re.compile(r"[A-Za-z]{2,3}(_[A-Za-z0-9]{2,3})?(\.[A-Za-z0-9-]+)?(@[A-Za-z0-9]+)?")
WORD = re.compile(r"[A-Za-z0-9_.+-]+")  # a keymap
ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
UNIT = re.compile(r"[A-Za-z0-9@_.:\\-]+")
PATH = re.compile(r"/[^\s:\0]*")  # absolute, and nothing /etc/passwd cannot hold


def check(ks: Kickstart) -> None:
    """Raise a KickstartError at the first unusable value of the system commands."""
    h = ks.handler

    def need(ok: bool, obj: Any, what: str, hint: str) -> None:
        if not ok:
            raise ks.error(obj, what, hint)

    name_hint = "use lower-case letters, digits, '_', '-' and '.' (32 at most), as useradd does"
    for user in getattr(getattr(h, "user", None), "userList", []):
        need(
            bool(NAME.fullmatch(user.name or "")),
            user,
            f"user --name={user.name!r}: not a valid user name",
            name_hint,
        )
        if user.shell:
            need(
                bool(PATH.fullmatch(user.shell)),
                user,
                f"user --shell={user.shell!r}: not an absolute path",
                "e.g. --shell=/bin/bash",
            )
        if user.homedir:
            need(
                bool(PATH.fullmatch(user.homedir)) and ".." not in user.homedir.split("/"),
                user,
                f"user --homedir={user.homedir!r}: not an absolute path",
                "e.g. --homedir=/home/NAME",
            )
        if user.gecos:
            need(
                ":" not in user.gecos and "\n" not in user.gecos,
                user,
                "user --gecos: ':' and line breaks cannot go into /etc/passwd",
                "leave them out of the comment",
            )
        for group in user.groups:
            need(
                bool(NAME.fullmatch(group)),
                user,
                f"user --groups: {group!r} is not a valid group name",
                name_hint,
            )
    for group in getattr(getattr(h, "group", None), "groupList", []):
        need(
            bool(NAME.fullmatch(group.name or "")),
            group,
            f"group --name={group.name!r}: not a valid group name",
            name_hint,
        )
    for key in getattr(getattr(h, "sshkey", None), "sshUserList", []):
        need(
            bool(NAME.fullmatch(key.username or "")),
            key,
            f"sshkey --username={key.username!r}: not a valid user name",
            name_hint,
        )
    for net in h.network.network:
        if net.hostname:
            need(
                bool(HOSTNAME.fullmatch(net.hostname)),
                net,
                f"network --hostname={net.hostname!r}: not a valid host name",
                "letters, digits and '-' in dot-separated labels (RFC 1123)",
            )
    if h.lang.lang:
        need(
            bool(LOCALE.fullmatch(h.lang.lang)),
            h.lang,
            f"lang {h.lang.lang!r}: not a locale name",
            "e.g. lang en_US.UTF-8",
        )
    keyboard = h.keyboard
    keymap = getattr(keyboard, "vc_keymap", None) or getattr(keyboard, "keyboard", None)
    if keymap:
        need(
            bool(WORD.fullmatch(keymap)),
            keyboard,
            f"keyboard {keymap!r}: not a keymap name",
            "e.g. keyboard us",
        )
    if h.timezone.timezone:
        zone = h.timezone.timezone
        need(
            bool(ZONE.fullmatch(zone)) and ".." not in zone,
            h.timezone,
            f"timezone {zone!r}: not a time zone name",
            "e.g. timezone Europe/Paris",
        )
    services = getattr(h, "services", None)
    for unit in [*getattr(services, "enabled", []), *getattr(services, "disabled", [])]:
        need(
            bool(UNIT.fullmatch(unit)),
            h.services,
            f"services: {unit!r} is not a unit name",
            "e.g. services --enabled=sshd,chronyd",
        )


def hash_passwords(system_text: str, syntax: str) -> str:
    """The canonical text of the system commands with every plain text password of ``rootpw``
    and ``user`` replaced by its SHA-512 crypt hash (``--iscrypted``)."""
    handler = parse_fragment(system_text, syntax)
    rootpw = handler.rootpw
    if rootpw.seen and rootpw.password and not rootpw.isCrypted:
        rootpw.password = sha512_crypt(rootpw.password, crypt_salt("root", rootpw.password))
        rootpw.isCrypted = True
    for user in handler.user.userList:
        if user.password and not user.isCrypted:
            user.password = sha512_crypt(user.password, crypt_salt(user.name, user.password))
            user.isCrypted = True
    return canonical_sections(handler)["system"]


def grub_password(password: str) -> str:
    """GRUB's PBKDF2 hash of a plain ``bootloader --password``, salted from the password."""
    return grub_password_hash(password, f"grub:{hashlib.sha512(password.encode()).hexdigest()}")
