"""Loop devices that cannot outlive their user.

``losetup`` has no auto-clear flag for a plain attach, so a build killed between attach and
detach would leave the device behind. ``loop_attach`` configures the device itself
(LOOP_CONFIGURE) with LO_FLAGS_AUTOCLEAR and holds it open: however the process ends, closing
its last descriptor detaches the device.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ksbake.errors import BuildError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


@contextmanager
def loop_attach(image: Path, offset: int = 0, size: int = 0) -> Iterator[str]:
    """A loop device for ``size`` bytes of ``image`` at ``offset``, auto-cleared when the
    last descriptor closes: the one held here for the duration (or the process's death)."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(16):  # another process may take the free device first
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{number}"
                fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
                config = _LoopConfig(fd=backing)
                config.info.lo_offset = offset
                config.info.lo_sizelimit = size
                config.info.lo_flags = LO_FLAGS_AUTOCLEAR
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                    break
                except OSError:
                    os.close(fd)
            else:
                raise BuildError("could not attach a loop device (all taken)")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)  # the loop device holds its own reference
    try:
        yield dev
    finally:
        os.close(fd)
