"""``measure lab up / status / down``: the lab daemon's lifecycle.

``up`` starts ``python -m migration_blackout.lab.daemon`` in the background (its own session, so
it survives the shell) and waits, with a deadline, until it has written its
state file; a second ``up`` finds the running lab and returns it. ``down``
stops the daemon and removes whatever a crashed one left behind (namespaces,
veths, the state file); it is idempotent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import migration_blackout

from . import kerberos
from .daemon import KERBEROS_DIR, STATE_FILE, STATE_SCHEMA_VERSION
from .guest import LAB_PREFIX
from .netns import cleanup_stale, require_netns_privileges

UP_DEADLINE_S = 20.0
DOWN_DEADLINE_S = 10.0


class LabError(Exception):
    """The lab could not be started, found or stopped; the message says why."""


def default_state_dir() -> Path:
    """Where the running lab's state lives: $MEASURE_LAB_DIR, else a per-user folder."""
    configured = os.environ.get("MEASURE_LAB_DIR")
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path("/tmp")
    return base / f"migration-blackout-lab-{os.getuid()}"


@dataclass(frozen=True)
class LabState:
    """What ``lab.json`` says about a running lab."""

    path: Path
    document: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.document["pid"])

    @property
    def hosts(self) -> list[dict[str, Any]]:
        return list(self.document["hosts"])

    @property
    def guest_address(self) -> str:
        return str(self.document["guest"]["address"])

    @property
    def ground_truth(self) -> Path:
        return Path(self.document["ground_truth"])

    @property
    def kerberos(self) -> dict[str, Any] | None:
        """The realm (``realm``, ``krb5_config``, ``kdc``, ``user_principal``, ...),
        or None for a lab without a KDC."""
        realm = self.document.get("kerberos")
        return None if realm is None else dict(realm)

    def public(self) -> dict[str, Any]:
        """The documented ``measure lab status --json`` shape."""
        realm = self.kerberos
        return {
            "running": True,
            "pid": self.pid,
            "hosts": [
                {
                    "name": h["name"],
                    "url": h["url"],
                    "auth": h["auth"],
                    "username": h["username"],
                    "password": h["password"],
                    "service_principal": h.get("service_principal"),
                }
                for h in self.hosts
            ],
            "kerberos": None
            if realm is None
            else {
                key: realm[key]
                for key in ("realm", "krb5_config", "kdc", "user_principal", "dns_domain")
            },
            "guest": {
                "name": self.document["guest"]["name"],
                "address": self.guest_address,
            },
            "ground_truth": str(self.ground_truth),
            "state_file": str(self.path),
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie child of ours counts as gone.
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def read_state(state_dir: Path | None = None) -> LabState | None:
    """The running lab, or None (a state file of a dead daemon counts as none)."""
    path = (state_dir or default_state_dir()) / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read lab state {path}: {exc}") from None
    if document.get("schema_version") != STATE_SCHEMA_VERSION:
        raise LabError(
            f"{path} is from another version of migration-blackout; run `measure lab down`"
        )
    state = LabState(path=path, document=document)
    return state if _alive(state.pid) else None


# The folder that holds the migration_blackout package (not resolved: in a
# checkout the package's folders are symbolic links).
IMPORT_ROOT = Path(migration_blackout.__file__).parent.parent


def spawn_daemon(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a lab daemon in a session of its own (it outlives the shell), with
    this project importable and its output in ``log_path``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )


def up(
    *,
    state_dir: Path | None = None,
    config: Path | None = None,
    seed: int | None = None,
    deadline_s: float = UP_DEADLINE_S,
) -> tuple[LabState, bool]:
    """Start the lab unless one runs. Returns (state, started_now)."""
    require_netns_privileges()
    state_dir = state_dir or default_state_dir()
    existing = read_state(state_dir)
    if existing is not None:
        return existing, False
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    cleanup_stale(LAB_PREFIX)
    kerberos.cleanup_stale(state_dir / KERBEROS_DIR)
    log_path = state_dir / "daemon.log"
    argv = [sys.executable, "-m", "migration_blackout.lab.daemon", "--state-dir", str(state_dir)]
    if config is not None:
        argv += ["--config", str(Path(config).resolve())]
    if seed is not None:
        argv += ["--seed", str(seed)]
    proc = spawn_daemon(argv, log_path)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            detail = log_path.read_text(encoding="utf-8", errors="replace").strip()
            last = detail.splitlines()[-1] if detail else f"exit code {code}"
            raise LabError(f"the lab failed to start: {last} (log: {log_path})")
        state = read_state(state_dir)
        if state is not None and state.pid == proc.pid:
            return state, True
        time.sleep(0.02)
    proc.terminate()
    raise LabError(f"the lab did not become ready within {deadline_s:.0f} s (log: {log_path})")


def down(*, state_dir: Path | None = None, deadline_s: float = DOWN_DEADLINE_S) -> list[str]:
    """Stop the lab and clean up after it; returns what was removed. Idempotent."""
    state_dir = state_dir or default_state_dir()
    removed: list[str] = []
    path = state_dir / STATE_FILE
    document: dict[str, Any] | None = None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        pass
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
    if path.exists():
        path.unlink()
        removed.append(str(path))
    # The KDC and its directory server, if the daemon could not stop them.
    removed += kerberos.cleanup_stale(state_dir / KERBEROS_DIR)
    if os.geteuid() == 0:
        removed += cleanup_stale(LAB_PREFIX)
    return removed
