"""``measure lab up / status / down``: the lab daemon's lifecycle.

``up`` starts ``python -m migration_blackout.lab.daemon`` in the background (its own session, so
it survives the shell) and waits, with a deadline, until it has written its
state file; a second ``up`` finds the running lab and returns it. ``down``
stops the daemon and removes whatever a crashed one left behind (namespaces,
veths, the state file); it is idempotent.

Every daemon this tool starts, of either lab, is entered in a registry (one
folder per user, whatever ``MEASURE_LAB_DIR`` says) with its state folder and
its owner: the ``measure run`` that started a lab for itself, or none for a
lab of ``measure lab up``. A lab whose owner is gone (SIGKILL, a crash) is an
orphan: the next ``measure lab down`` or lab start stops it and removes its
namespace, processes and private state folder (:func:`reap_orphans`). A lab
whose owner lives is never touched, so runs in parallel stay safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import migration_blackout
from migration_blackout.harness.labseam import LabError
from migration_blackout.probes.environment import child_environment

from . import kerberos
from .daemon import KERBEROS_DIR, STATE_FILE, STATE_SCHEMA_VERSION
from .guest import LAB_PREFIX
from .netns import process_runs, require_netns_privileges

UP_DEADLINE_S = 20.0
DOWN_DEADLINE_S = 10.0


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
    """``pid`` runs (not a zombie); a zombie child of ours is reaped on the way."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return process_runs(pid)


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
    env = child_environment(
        {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH", "")) if p
            )
        }
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )
    _SPAWNED[process.pid] = process
    return process


# The daemons this process started, held until stop_daemon ends them: a Popen
# dropped while its daemon runs is a ResourceWarning, and a daemon nobody waits
# for stays a zombie of the process that started it (measure run started from
# Python, a notebook or the tests, goes on living after its lab is down).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def _forget_spawned(pid: int) -> None:
    process = _SPAWNED.pop(pid, None)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)


# -- the registry of labs this tool started ----------------------------------


def registry_dir() -> Path:
    """``/tmp/migration-blackout-labs-<uid>``: the same for every state folder."""
    return Path("/tmp") / f"migration-blackout-labs-{os.getuid()}"


def _registry(create: bool) -> Path | None:
    folder = registry_dir()
    if create:
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return None
    # /tmp is shared: only a real folder of our own is trusted.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise LabError(f"{folder} is not a folder of this user: remove it")
    return folder


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field
    22), or None when it runs no more: tells a process from a later one that
    reuses its number."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])


def same_process(pid: int | None, start: int | None) -> bool:
    """``pid`` still runs and is the process that was registered."""
    return pid is not None and start is not None and process_start(pid) == start


@dataclass(frozen=True)
class LabRecord:
    """One daemon in the registry."""

    kind: str  # "hyperv" or "qemu"
    pid: int
    pid_start: int | None
    state_dir: Path
    owner_pid: int | None  # the measure run that started it; None: `measure lab up`
    owner_start: int | None
    private: bool  # its state folder was made for it and goes with it
    path: Path  # the registry entry

    @property
    def running(self) -> bool:
        return same_process(self.pid, self.pid_start)

    @property
    def orphaned(self) -> bool:
        return self.owner_pid is not None and not same_process(self.owner_pid, self.owner_start)


def register(kind: str, pid: int, state_dir: Path, *, owner_pid: int | None, private: bool) -> Path:
    """Enter a daemon just started; returns its entry (remove it with :func:`unregister`)."""
    folder = _registry(create=True)
    assert folder is not None
    entry = folder / f"{kind}-{pid}.json"
    document = {
        "kind": kind,
        "pid": pid,
        "pid_start": process_start(pid),
        "state_dir": str(Path(state_dir).resolve()),
        "owner_pid": owner_pid,
        "owner_start": None if owner_pid is None else process_start(owner_pid),
        "private": private,
    }
    tmp = entry.with_name(f".{entry.name}.tmp")
    tmp.write_text(json.dumps(document) + "\n", encoding="utf-8")
    os.replace(tmp, entry)
    return entry


def unregister(entry: Path | None) -> None:
    if entry is not None:
        entry.unlink(missing_ok=True)


def registered_labs(kind: str | None = None) -> list[LabRecord]:
    folder = _registry(create=False)
    if folder is None:
        return []
    records = []
    for entry in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(entry.read_text(encoding="utf-8"))
            record = LabRecord(
                kind=str(doc["kind"]),
                pid=int(doc["pid"]),
                pid_start=doc.get("pid_start"),
                state_dir=Path(doc["state_dir"]),
                owner_pid=doc.get("owner_pid"),
                owner_start=doc.get("owner_start"),
                private=bool(doc.get("private")),
                path=entry,
            )
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)  # not ours to read: a half-written entry
            continue
        if kind is None or record.kind == kind:
            records.append(record)
    return records


def stop_daemon(pid: int, pid_start: int | None, deadline_s: float = 10.0) -> str | None:
    """SIGTERM, then SIGKILL of its group after ``deadline_s``; what happened, or
    None when it was not running."""
    try:
        if not same_process(pid, pid_start):
            return None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + deadline_s
        while same_process(pid, pid_start) and time.monotonic() < deadline:
            process = _SPAWNED.get(pid)
            if process is not None:
                process.poll()  # ours: reaped through its Popen, which then knows
            else:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if same_process(pid, pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return f"killed daemon {pid}"
        return f"stopped daemon {pid}"
    finally:
        _forget_spawned(pid)


def reap(record: LabRecord, *, deadline_s: float = DOWN_DEADLINE_S) -> list[str]:
    """Stop a registered lab (if it runs) and remove what it leaves behind."""
    removed: list[str] = []
    done = stop_daemon(record.pid, record.pid_start, deadline_s)
    if done is not None:
        why = f" (its run, process {record.owner_pid}, is gone)" if record.orphaned else ""
        removed.append(done + why)
    if record.kind == "hyperv":
        # The KDC and its directory server of a lab that could not stop them.
        removed += kerberos.cleanup_stale(record.state_dir / KERBEROS_DIR)
    if record.private:
        if record.state_dir.is_dir():
            shutil.rmtree(record.state_dir, ignore_errors=True)
            removed.append(str(record.state_dir))
    else:
        state_file = record.state_dir / STATE_FILE
        if state_file.exists():
            state_file.unlink(missing_ok=True)
            removed.append(str(state_file))
    unregister(record.path)
    return removed


def reap_orphans(kind: str | None = None) -> list[str]:
    """Every registered lab whose owner is gone, or whose daemon is gone:
    stopped and removed. Labs in use (owner alive) and standing labs of
    ``measure lab up`` are left alone. Then namespaces of dead labs."""
    removed: list[str] = []
    for record in registered_labs(kind):
        if record.running and not record.orphaned:
            continue
        removed += reap(record)
    if os.geteuid() == 0:
        from .qemu.network import cleanup_stale_labs

        if kind in (None, "hyperv"):
            removed += cleanup_stale_labs(LAB_PREFIX)
    return removed


# -- up and down ----------------------------------------------------------------


def _log_tail(log_path: Path, lines: int = 3) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


def up(
    *,
    state_dir: Path | None = None,
    config: Path | None = None,
    seed: int | None = None,
    deadline_s: float = UP_DEADLINE_S,
    owner_pid: int | None = None,
    private: bool = False,
    cancel: threading.Event | None = None,
) -> tuple[LabState, bool]:
    """Start the lab unless one runs. Returns (state, started_now).

    ``owner_pid``: the process the lab is started for (it is reaped once that
    process is gone); ``private``: the state folder was made for this lab
    and is removed with it. ``cancel`` set while the lab starts stops it
    again and raises :class:`LabError`; so does any exception meanwhile.
    """
    require_netns_privileges()
    state_dir = state_dir or default_state_dir()
    existing = read_state(state_dir)
    if existing is not None:
        return existing, False
    reap_orphans()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    kerberos.cleanup_stale(state_dir / KERBEROS_DIR)
    log_path = state_dir / "daemon.log"
    argv = [sys.executable, "-m", "migration_blackout.lab.daemon", "--state-dir", str(state_dir)]
    if config is not None:
        argv += ["--config", str(Path(config).resolve())]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if owner_pid is not None:
        argv += ["--owner-pid", str(owner_pid)]
    proc = spawn_daemon(argv, log_path)
    entry = register("hyperv", proc.pid, state_dir, owner_pid=owner_pid, private=private)
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise LabError("the lab start was cancelled")
            code = proc.poll()
            if code is not None:
                last = _log_tail(log_path) or f"exit code {code}"
                where = "" if private else f" (log: {log_path})"
                raise LabError(f"the lab failed to start: {last}{where}")
            state = read_state(state_dir)
            if state is not None and state.pid == proc.pid:
                return state, True
            time.sleep(0.02)
        where = "" if private else f" (log: {log_path})"
        raise LabError(f"the lab did not become ready within {deadline_s:.0f} s{where}")
    except BaseException:
        stop_daemon(proc.pid, process_start(proc.pid))
        with contextlib.suppress(ChildProcessError, OSError):
            proc.wait(timeout=1)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        unregister(entry)
        raise


def down(*, state_dir: Path | None = None, deadline_s: float = DOWN_DEADLINE_S) -> list[str]:
    """Stop the lab at ``state_dir`` and every orphaned lab; returns what was
    removed. Idempotent."""
    state_dir = (state_dir or default_state_dir()).resolve()
    removed: list[str] = []
    path = state_dir / STATE_FILE
    document: dict[str, Any] | None = None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        pass
    mine = [r for r in registered_labs("hyperv") if r.state_dir == state_dir]
    for record in mine:
        removed += reap(record, deadline_s=deadline_s)
    if document is not None and "pid" in document and _alive(int(document["pid"])):
        # A lab started before the registry existed, or by another tool version.
        pid = int(document["pid"])
        done = stop_daemon(pid, process_start(pid), deadline_s)
        if done is not None:
            removed.append(done)
    if path.exists():
        path.unlink()
        removed.append(str(path))
    # The KDC and its directory server, if the daemon could not stop them.
    removed += kerberos.cleanup_stale(state_dir / KERBEROS_DIR)
    removed += reap_orphans("hyperv")
    return removed
