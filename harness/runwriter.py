"""Creating and finalising a run folder (format v1, see docs/run-format.md).

A run folder is ``<parent>/<run-id>/`` holding ``manifest.json``, ``raw/`` (one
file per probe, append-only) and ``derived/`` (rebuildable by ``measure
analyze``). The manifest is written when the run starts, with status
``running``, and rewritten once at the end from a ``finally`` block with the
final status and error, after every probe has flushed.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.analysis.outputs import replace_text
from migration_blackout.probes.clock import ClockPair, clock_pair
from migration_blackout.runformat import (
    DERIVED_DIR,
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    RAW_DIR,
    RunStatus,
    utc_iso,
)

from . import __version__

# Keys whose values never reach a run folder, wherever they appear in a config.
SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "credential", "credentials"})


class OutputFolderError(Exception):
    """The parent folder for run folders cannot be created or written."""


def describe_error(error: BaseException) -> str:
    """One line for an error: an OSError by its file and reason (``raw/icmp.csv:
    No space left on device``), anything else by its message."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error) or type(error).__name__


def new_run_id(kind: str, now: ClockPair | None = None) -> str:
    """``20261125T130238Z-watch-3fa2``: sortable by start time, unique per run."""
    now = now or clock_pair()
    stamp = utc_iso(now.utc_ns)
    compact = stamp[:19].replace("-", "").replace(":", "") + "Z"
    return f"{compact}-{kind}-{secrets.token_hex(2)}"


def redact(config: Any) -> Any:
    """A copy of ``config`` with every secret-looking key left out."""
    if isinstance(config, Mapping):
        return {
            key: redact(value)
            for key, value in config.items()
            if not any(word in str(key).lower() for word in SECRET_KEYS)
        }
    if isinstance(config, list | tuple):
        return [redact(value) for value in config]
    return config


def _write_json_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document``; never leaves a temporary file.

    When the disk is full, the document is written in place instead, compact
    (the previous file's blocks are reused: a manifest written at the start
    with indentation is larger than the same one compact), and at last only
    the fields that say how the run ended: the folder must never be left at
    ``running`` because the end did not fit.
    """
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    try:
        replace_text(path, text)
        return
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.is_file():
            raise
        full = error
    compact = dict(document)
    for attempt in (compact, _essentials(compact)):
        try:
            _overwrite_in_place(path, json.dumps(attempt, separators=(",", ":")) + "\n")
            return
        except OSError:
            continue
    raise full


def _essentials(document: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest cut to what a reader needs, for a disk with no room for more."""
    keep = (
        "schema_version",
        "kind",
        "run_id",
        "run_kind",
        "status",
        "error",
        "started_utc",
        "ended_utc",
        "targets",
        "probes",
        "clock",
    )
    cut = {key: document[key] for key in keep if key in document}
    cut["config"] = {}
    cut["truncated"] = "the disk was full: the rest of the manifest did not fit"
    return cut


def _overwrite_in_place(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if len(data) > os.fstat(fd).st_size:
            raise OSError(errno.ENOSPC, "does not fit in the previous file's space")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class RunWriter:
    """A run folder being written. Only the harness writes manifests; the
    analysis reads the folder as ``analysis.rundata.RunData``."""

    path: Path
    run_id: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self.path / RAW_DIR

    @property
    def derived(self) -> Path:
        return self.path / DERIVED_DIR

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def register_probe(self, name: str, file: str, **details: Any) -> None:
        """Name a probe's raw file in the manifest (written at the next save)."""
        self.manifest.setdefault("probes", {})[name] = {"file": file, **details}
        self.save()

    def save(self) -> None:
        _write_json_atomically(self.manifest_path, self.manifest)

    def finalize(self, status: RunStatus, error: BaseException | str | None = None) -> None:
        """Record how the run ended. Call from a ``finally`` after probes flushed."""
        end = clock_pair()
        self.manifest["status"] = str(status)
        self.manifest["ended_utc"] = utc_iso(end.utc_ns)
        self.manifest.setdefault("clock", {})["end"] = end.to_json()
        if error is None:
            self.manifest["error"] = None
        elif isinstance(error, BaseException):
            self.manifest["error"] = {"type": type(error).__name__, "message": str(error)}
        else:
            self.manifest["error"] = {"type": "error", "message": error}
        self.save()


def create_run_folder(
    parent: Path,
    *,
    kind: str,
    command: Sequence[str],
    config: Mapping[str, Any],
    targets: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> RunWriter:
    """Create ``parent/<run-id>/`` with ``raw/`` and a ``running`` manifest.

    ``labels``: the user's ``key=value`` labels (``--label``), kept as given.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create output folder {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {parent} is not writable")
    start = clock_pair()
    run_id = new_run_id(kind, start)
    path = parent / run_id
    try:
        path.mkdir()
        (path / RAW_DIR).mkdir()
    except OSError as exc:
        raise OutputFolderError(f"cannot create run folder {path}: {exc.strerror}") from exc
    run = RunWriter(path=path, run_id=run_id)
    run.manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "kind": "run",
        "run_id": run_id,
        "run_kind": kind,
        "tool": "migration-blackout",
        "tool_version": __version__,
        "command": list(command),
        "config": redact(dict(config)),
        "targets": list(targets),
        "labels": dict(labels or {}),
        "started_utc": utc_iso(start.utc_ns),
        "ended_utc": None,
        "status": str(RunStatus.RUNNING),
        "error": None,
        "clock": {"start": start.to_json()},
        "harness_host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "probes": {},
    }
    run.save()
    return run
