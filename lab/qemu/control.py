"""The QEMU lab's lifecycle: what ``measure lab up/status/down --hypervisor qemu`` calls.

``up`` makes sure the guest images exist (``lab/qemu/setup.sh``), starts
``python -m migration_blackout.lab.qemu.daemon`` in its own session and waits, with a deadline,
until its state file says ``ready`` (the guest answers, a standby waits); a
second ``up`` finds the running lab and returns it. ``down`` stops the daemon
(which quits both QEMUs and removes the network) and removes whatever a
crashed one left behind: QEMU processes in dead labs' namespaces, namespaces,
veths, sockets, the state file. It is idempotent.

Between migrations, ``wait_ready(after_serial=...)`` waits until the lab has
a new standby destination (see ``lab.qemu.lab`` for the ping-pong).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from migration_blackout.harness.labseam import LabError
from migration_blackout.lab.control import default_state_dir as hyperv_state_dir
from migration_blackout.lab.control import (
    process_start,
    reap,
    reap_orphans,
    register,
    registered_labs,
    spawn_daemon,
    stop_daemon,
    unregister,
)
from migration_blackout.lab.netns import require_netns_privileges

from ..netns import process_runs
from .artefacts import QemuSetupError, ensure_artefacts
from .daemon import STATE_FILE, STATE_SCHEMA_VERSION
from .lab import STATUS_FAILED, STATUS_READY, QemuLabConfig
from .network import DEFAULT_PREFIX, cleanup_stale_labs

# Daemons started by this process, kept so that ``down`` can reap them (and so
# that no Popen of a running daemon is ever garbage-collected).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}

UP_DEADLINE_S = 180.0  # a TCG boot takes ~6-15 s; a loaded CI machine much longer
DOWN_DEADLINE_S = 20.0

__all__ = [
    "LabError",
    "QemuLabState",
    "default_state_dir",
    "down",
    "read_state",
    "up",
    "wait_ready",
]


def default_state_dir() -> Path:
    """$MEASURE_QEMU_LAB_DIR, else ``qemu/`` in the Hyper-V lab's state folder."""
    configured = os.environ.get("MEASURE_QEMU_LAB_DIR")
    return Path(configured) if configured else hyperv_state_dir() / "qemu"


@dataclass(frozen=True)
class QemuInstanceState:
    """One QEMU as the state file describes it."""

    side: str
    generation: int
    pid: int
    qmp: Path
    incoming_uri: str

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> QemuInstanceState:
        return cls(
            side=str(document["side"]),
            generation=int(document["generation"]),
            pid=int(document["pid"]),
            qmp=Path(document["qmp"]),
            incoming_uri=str(document["incoming_uri"]),
        )


@dataclass(frozen=True)
class QemuLabState:
    """What ``qemu-lab.json`` says about a running QEMU lab."""

    path: Path
    document: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.document["pid"])

    @property
    def status(self) -> str:
        return str(self.document["lab"]["status"])

    @property
    def serial(self) -> int:
        return int(self.document["lab"]["serial"])

    @property
    def error(self) -> str | None:
        error = self.document["lab"].get("error")
        return None if error is None else str(error)

    @property
    def guest_address(self) -> str:
        return str(self.document["guest"]["address"])

    @property
    def harness_side_address(self) -> str:
        return str(self.document["guest"]["harness_side_address"])

    @property
    def heartbeat_address(self) -> tuple[str, int]:
        """Where the guest's heartbeats go: bind the ``GuestReceiver`` here."""
        heartbeat = self.document["heartbeat"]
        return str(heartbeat["address"]), int(heartbeat["port"])

    @property
    def token(self) -> str:
        """The heartbeat (and guest control) token."""
        return str(self.document["heartbeat"]["token"])

    @property
    def control_port(self) -> int:
        return int(self.document["guest"]["control_port"])

    @property
    def memory_bytes(self) -> int:
        return int(self.document["qemu"]["memory_mib"]) * 1024 * 1024

    @property
    def running(self) -> QemuInstanceState | None:
        """The QEMU that runs the guest (the next migration's source)."""
        running = self.document["lab"].get("running")
        return None if running is None else QemuInstanceState.from_json(running)

    @property
    def standby(self) -> QemuInstanceState | None:
        """The QEMU waiting for the guest (the next migration's destination)."""
        standby = self.document["lab"].get("standby")
        return None if standby is None else QemuInstanceState.from_json(standby)

    def public(self) -> dict[str, Any]:
        """The ``measure lab status --json`` shape (the token included, as the Hyper-V lab
        shows its password)."""
        return {
            "running": True,
            "hypervisor": "qemu",
            "pid": self.pid,
            "status": self.status,
            "error": self.error,
            "qemu": self.document["qemu"],
            "guest": self.document["guest"],
            "heartbeat": self.document["heartbeat"],
            "running_side": self.document["lab"].get("running_side"),
            "running_qemu": self.document["lab"].get("running"),
            "standby_qemu": self.document["lab"].get("standby"),
            "handovers": self.document["lab"].get("handovers"),
            "lab_events": self.document.get("lab_events"),
            "state_file": str(self.path),
        }


def _alive(pid: int) -> bool:
    """``pid`` runs (not a zombie); a zombie child of ours is reaped on the way."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return process_runs(pid)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read QEMU lab state {path}: {exc}") from None
    return document


def read_state(state_dir: Path | None = None) -> QemuLabState | None:
    """The running QEMU lab, or None (a state file of a dead daemon counts as none)."""
    path = (state_dir or default_state_dir()) / STATE_FILE
    document = _load(path)
    if document is None:
        return None
    if document.get("schema_version") != STATE_SCHEMA_VERSION:
        raise LabError(
            f"{path} is from another version of migration-blackout; run `measure lab down`"
        )
    state = QemuLabState(path=path, document=document)
    return state if _alive(state.pid) else None


def up(
    *,
    state_dir: Path | None = None,
    config: QemuLabConfig | None = None,
    deadline_s: float = UP_DEADLINE_S,
    owner_pid: int | None = None,
    private: bool = False,
    cancel: threading.Event | None = None,
) -> tuple[QemuLabState, bool]:
    """Start the QEMU lab unless one runs. Returns (state, started_now).

    Runs ``lab/qemu/setup.sh`` first if the guest images are missing (as
    root; see docs/qemu.md). Raises ``LabError`` with the reason. ``owner_pid``,
    ``private`` and ``cancel`` as for the Hyper-V lab (``lab.control.up``).
    """
    require_netns_privileges()
    state_dir = state_dir or default_state_dir()
    existing = read_state(state_dir)
    if existing is not None:
        return existing, False
    try:
        ensure_artefacts()
    except QemuSetupError as exc:
        raise LabError(str(exc)) from None
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    config = config or QemuLabConfig()
    reap_orphans("qemu")
    cleanup_stale_labs(config.prefix)
    log_path = state_dir / "daemon.log"
    argv = [
        sys.executable,
        "-m",
        "migration_blackout.lab.qemu.daemon",
        "--state-dir",
        str(state_dir),
        "--config-json",
        json.dumps(asdict(config)),
    ]
    if owner_pid is not None:
        argv += ["--owner-pid", str(owner_pid)]
    proc = spawn_daemon(argv, log_path)
    _STARTED[proc.pid] = proc
    entry = register("qemu", proc.pid, state_dir, owner_pid=owner_pid, private=private)
    where = "" if private else f" (log: {log_path})"
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise LabError("the QEMU lab start was cancelled")
            code = proc.poll()
            if code is not None:
                detail = log_path.read_text(encoding="utf-8", errors="replace").strip()
                last = detail.splitlines()[-1] if detail else f"exit code {code}"
                raise LabError(f"the QEMU lab failed to start: {last}{where}")
            state = read_state(state_dir)
            if state is not None and state.pid == proc.pid:
                if state.status == STATUS_READY:
                    return state, True
                if state.status == STATUS_FAILED:
                    raise LabError(f"the QEMU lab failed to start: {state.error}{where}")
            time.sleep(0.05)
        raise LabError(f"the QEMU lab did not become ready within {deadline_s:.0f} s{where}")
    except BaseException:
        stop_daemon(proc.pid, process_start(proc.pid), DOWN_DEADLINE_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        _STARTED.pop(proc.pid, None)
        unregister(entry)
        cleanup_stale_labs(config.prefix)
        raise


async def wait_ready(
    *, state_dir: Path | None = None, after_serial: int | None = None, timeout_s: float = 60.0
) -> QemuLabState:
    """Wait until the lab is ``ready`` (a running guest and a standby) at a serial above
    ``after_serial``: after a migration, pass the serial of the state you migrated with.

    Reads the state file every 10 ms; ``LabError`` if the lab failed or its daemon is
    gone, ``TimeoutError`` after ``timeout_s``.
    """
    state_dir = state_dir or default_state_dir()
    async with asyncio.timeout(timeout_s):
        while True:
            state = read_state(state_dir)
            if state is None:
                raise LabError(f"no QEMU lab runs (state folder {state_dir})")
            if state.status == STATUS_FAILED:
                raise LabError(f"the QEMU lab failed: {state.error}")
            if state.status == STATUS_READY and (
                after_serial is None or state.serial > after_serial
            ):
                return state
            await asyncio.sleep(0.01)


def down(
    *,
    state_dir: Path | None = None,
    deadline_s: float = DOWN_DEADLINE_S,
    prefix: str = DEFAULT_PREFIX,
) -> list[str]:
    """Stop the QEMU lab at ``state_dir`` and every orphaned QEMU lab; returns
    what was removed. Idempotent."""
    state_dir = (state_dir or default_state_dir()).resolve()
    removed: list[str] = []
    for record in registered_labs("qemu"):
        if record.state_dir == state_dir:
            removed += reap(record, deadline_s=deadline_s)
    path = state_dir / STATE_FILE
    try:
        document = _load(path)
    except LabError:
        document = None
    if document is not None and "pid" in document and _alive(int(document["pid"])):
        pid = int(document["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + deadline_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            removed.append(f"killed daemon {pid}")
        else:
            removed.append(f"stopped daemon {pid}")
    for pid, proc in list(_STARTED.items()):
        if proc.poll() is not None:
            del _STARTED[pid]
    if path.exists():
        path.unlink()
        removed.append(str(path))
    for leftover in [*state_dir.glob("*.qmp"), state_dir / "token"]:
        if leftover.exists():
            leftover.unlink()
            removed.append(str(leftover))
    removed += reap_orphans("qemu")
    if os.geteuid() == 0:
        removed += cleanup_stale_labs(prefix)
    return removed
