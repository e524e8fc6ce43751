"""What ``lab/qemu/setup.sh`` built: QEMU, firmware folders, kernel, initramfs.

``setup.sh`` writes ``artefacts-<sources>.json`` into its cache folder,
``<sources>`` a hash of the guest's sources (``guest/mb-guestd.c`` and
``guest/init``): a checkout whose guest differs (another branch) builds and
finds its own. ``load_artefacts()`` reads and checks it, ``ensure_artefacts()`` runs the
script first when something is missing (it is idempotent and takes ~0.1 s
when everything is there).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SETUP_SCRIPT = Path(__file__).with_name("setup.sh")
GUEST_SOURCES = (
    Path(__file__).with_name("guest") / "mb-guestd.c",
    Path(__file__).with_name("guest") / "init",
)
# artefacts-<sources>.json history: 1 (0.1.0): first version.
ARTEFACTS_SCHEMA_VERSION = 1
MIN_QEMU_MAJOR = 8


class QemuSetupError(RuntimeError):
    """The QEMU lab's packages or guest images are missing or unusable; the message says what
    to run."""


def default_cache_dir() -> Path:
    """``$MB_QEMU_CACHE``, else the folder ``setup.sh`` uses by default."""
    configured = os.environ.get("MB_QEMU_CACHE")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/migration-blackout/qemu")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migration-blackout" / "qemu"


@dataclass(frozen=True)
class QemuArtefacts:
    qemu_binary: Path
    qemu_version: str
    firmware_dirs: tuple[Path, ...]
    kernel_package: str
    kernel: Path
    initramfs: Path

    @property
    def qemu_major(self) -> int:
        return int(self.qemu_version.split(".")[0])


def artefacts_file() -> str:
    """The manifest's name for this checkout's guest sources (as setup.sh names it)."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in GUEST_SOURCES))
    return f"artefacts-{digest.hexdigest()[:16]}.json"


def load_artefacts(cache_dir: Path | None = None) -> QemuArtefacts:
    """Read this guest's ``artefacts-<sources>.json``; ``QemuSetupError`` if it
    or a file it names is missing."""
    path = (cache_dir or default_cache_dir()) / artefacts_file()
    hint = f"run `sh {SETUP_SCRIPT}` as root"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QemuSetupError(f"the QEMU lab is not set up ({path} is missing): {hint}") from None
    except (OSError, ValueError) as exc:
        raise QemuSetupError(f"cannot read {path} ({exc}): {hint}") from None
    if document.get("schema_version") != ARTEFACTS_SCHEMA_VERSION:
        raise QemuSetupError(f"{path} was written by another version of setup.sh: {hint}")
    artefacts = QemuArtefacts(
        qemu_binary=Path(document["qemu_binary"]),
        qemu_version=str(document["qemu_version"]),
        firmware_dirs=tuple(Path(p) for p in str(document["firmware_dirs"]).split(":") if p),
        kernel_package=str(document["kernel_package"]),
        kernel=Path(document["kernel"]),
        initramfs=Path(document["initramfs"]),
    )
    for needed in (artefacts.qemu_binary, artefacts.kernel, artefacts.initramfs):
        if not needed.exists():
            raise QemuSetupError(f"{needed} (named in {path}) is missing: {hint}")
    if artefacts.qemu_major < MIN_QEMU_MAJOR:
        raise QemuSetupError(
            f"QEMU {artefacts.qemu_version} is too old (7.2 corrupts guests migrated under "
            f"memory load); need >= {MIN_QEMU_MAJOR}: {hint}"
        )
    return artefacts


def ensure_artefacts(cache_dir: Path | None = None) -> QemuArtefacts:
    """``load_artefacts()``, after running ``setup.sh`` if that fails."""
    try:
        return load_artefacts(cache_dir)
    except QemuSetupError:
        pass
    env = dict(os.environ)
    if cache_dir is not None:
        env["MB_QEMU_CACHE"] = str(cache_dir)
    proc = subprocess.run(
        ["sh", str(SETUP_SCRIPT)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise QemuSetupError(f"{SETUP_SCRIPT} failed: " + " | ".join(detail))
    return load_artefacts(cache_dir)
