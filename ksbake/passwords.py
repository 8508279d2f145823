"""Password hashes, made where the plain text is known (the kickstart layer) so that no later
layer, input file or store object ever holds it: SHA-512 crypt for /etc/shadow, PBKDF2 for
GRUB. Salts derive from the inputs, so the same kickstart gives the same bytes everywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib

from ksbake.errors import BuildError

PBKDF2_ITERATIONS = 10000  # grub-mkpasswd-pbkdf2's default
SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sha512_crypt(password: str, salt: str) -> str:
    """SHA-512 crypt(3) via the system's libcrypt (Python's crypt module is gone in 3.13)."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out = lib.crypt(password.encode(), f"$6${salt}$".encode())
    if not out or not out.startswith(b"$6$"):
        raise BuildError("libcrypt does not support SHA-512 crypt")
    return out.decode()


def crypt_salt(who: str, password: str) -> str:
    """16 salt characters derived from the account and its password."""
    digest = hashlib.sha512(f"ksbake-salt:{who}:{password}".encode()).digest()
    return "".join(SALT_ALPHABET[b & 63] for b in digest[:16])


def grub_password_hash(password: str, seed: str) -> str:
    """``grub-mkpasswd-pbkdf2`` output for ``password``, salted from ``seed`` (reproducible)."""
    salt = hashlib.sha512(f"{seed}:grub-password".encode()).digest()
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"grub.pbkdf2.sha512.{PBKDF2_ITERATIONS}.{salt.hex().upper()}.{digest.hex().upper()}"
