"""Writing a file of a run folder so that it is replaced, never written through.

Every file is first written under a fresh temporary name in the same folder
(``.<name>.<random>.tmp``), created exclusively (``O_EXCL | O_NOFOLLOW``: an
existing file or symbolic link there is never opened), then renamed over the
final name. A reader never sees half a file, a symbolic link planted in
``derived/`` is replaced by a file instead of having its target overwritten,
and nothing is left behind when writing fails (a full disk, an interrupt).

Permissions, one policy for the whole run folder (docs/run-format.md): files
are created with mode 0666 and folders 0777, less the process umask (0644 and
0755 with the usual umask 022), like the raw files the probes write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o666  # less the umask
FOLDER_MODE = 0o777  # less the umask


class OutputPathError(OSError):
    """A folder that must hold outputs is not a folder (a file, a link elsewhere)."""


def ensure_folder(path: Path) -> Path:
    """``path`` as a real folder of its own: created if missing; refused if it
    is a file or a symbolic link (which could point anywhere)."""
    if path.is_symlink():
        raise OutputPathError(f"{path} is a symbolic link; remove it and try again")
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is not a folder; remove it and try again")
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    return path


def replace_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(handle)`` to a temporary file beside it,
    then rename it over ``path``; fsync'd; the temporary file is removed on
    any failure."""
    target = Path(path)
    folder = ensure_folder(target.parent)
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def replace_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`replace_file` for UTF-8 text."""
    data = text.encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return replace_file(path, write)
