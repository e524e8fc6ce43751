"""A small disk that fills up: a tmpfs of a few hundred KiB mounted for one test.

``full_disk`` yields a :class:`SmallDisk`: its ``path`` is the mount point,
``fill()`` takes every byte that is left (ENOSPC from then on) and ``free()``
gives the room back. Needs root (mount); unmounted afterwards whatever
happened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._ballast = path / ".ballast"

    def fill(self) -> None:
        """Take all the space left: the next write that needs a block fails (ENOSPC)."""
        with open(self._ballast, "ab", buffering=0) as handle:
            for size in (65536, 4096, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while handle.write(b"\0" * size):
                        pass
        probe = self.path / ".probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as raised:
                os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        assert raised.value.errno == errno.ENOSPC

    def free(self) -> None:
        self._ballast.unlink(missing_ok=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mount)], check=True
    )
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
