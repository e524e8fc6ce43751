"""The QEMU lab: one tiny Linux guest, live-migrated back and forth between two QEMUs.

``QemuLab`` builds ``lab.qemu.network.LabNetwork`` (namespace, bridge, taps,
veth), boots the guest in QEMU on side ``a`` and starts a *standby* QEMU on
side ``b`` that waits for an incoming migration (``-incoming
tcp:127.0.0.1:PORT``, over the namespace's loopback). Both run TCG (software
emulation; ``/dev/kvm`` here cannot boot a stock kernel) with the same
command line apart from ``-incoming``, so their device models match.

Ping-pong: after a migration the old source QEMU is left paused
(``postmigrate``), and QEMU cannot receive a guest it once sent. So the lab
keeps this invariant by itself, watching each QEMU through a second QMP
monitor of its own:

1. the standby emits ``RESUME`` (the guest runs there now): it becomes the
   *running* side, the old source is *retired*;
2. a retired QEMU exits (the migration driver sends it ``quit`` when it has
   no more use for it, e.g. after the RAM comparison; the lab quits it itself
   after ``retire_after_s``): a new standby starts on that side;
3. a standby exits (an incoming migration failed or was cancelled: the
   destination QEMU quits): a new standby starts on that side;
4. the running QEMU exits: the guest is lost, the lab's status is ``failed``.

Every change is published as a ``LabSnapshot`` (``snapshot()``,
``wait_ready()``, the ``on_change`` callback that the daemon turns into its
state file) and recorded in ``lab-events-*.jsonl`` in the state folder.

Each QEMU has two QMP monitors: ``qmp`` for the harness (the migration driver
connects there) and ``lab.qmp`` for the lab's own watching; QEMU sends every
event to both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.harness.qemu.qmp import QmpClient, QmpConnectionError, QmpError, QmpEvent
from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.sink import JsonlSink
from migration_blackout.runformat import utc_iso

from .artefacts import QemuArtefacts, ensure_artefacts
from .guest import DEFAULT_CONTROL_PORT, GuestControl, GuestControlError, GuestStatus
from .network import DEFAULT_PREFIX, SIDES, LabNetwork, tap_name

ROLE_STARTING = "starting"  # process started, its monitor not yet answering
ROLE_RUNNING = "running"  # runs the guest
ROLE_STANDBY = "standby"  # waits for an incoming migration
ROLE_RETIRED = "retired"  # sent the guest away; paused, waiting to be quit
ROLE_GONE = "gone"  # exited

STATUS_STARTING = "starting"
STATUS_READY = "ready"  # a running guest and a standby destination
STATUS_PREPARING = "preparing"  # the guest runs; the next standby is not up yet
STATUS_FAILED = "failed"  # the guest is lost
STATUS_STOPPED = "stopped"

GUEST_NAME = "mb-qemu-guest"
_PR_SET_PDEATHSIG = 1
_KEEP_LOGS = 4  # generations of QEMU logs kept per side


@dataclass(frozen=True)
class QemuLabConfig:
    """How the lab is built. Times in seconds, memory in MiB."""

    memory_mib: int = 256
    heartbeat_port: int = 47100  # UDP, on the harness-side address
    heartbeat_hz: int = 100
    control_port: int = DEFAULT_CONTROL_PORT
    migration_port_base: int = 4440  # side a listens on base+1, side b on base+2
    boot_timeout_s: float = 120.0
    standby_timeout_s: float = 30.0
    retire_after_s: float = 30.0
    prefix: str = DEFAULT_PREFIX
    dirty_mib_at_boot: int = 0
    dirty_rate_at_boot: int = 0  # MiB/s, 0 = unthrottled
    cpu: str = "qemu64"


@dataclass(frozen=True)
class QemuInstance:
    """One QEMU process as the harness sees it."""

    side: str  # "a" or "b"
    generation: int  # the how-many-th QEMU of this side (1, 2, ...)
    pid: int
    role: str
    qmp: Path  # the harness's QMP monitor (UNIX socket)
    incoming_uri: str  # where this QEMU listens while it is the standby
    console_log: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "generation": self.generation,
            "pid": self.pid,
            "role": self.role,
            "qmp": str(self.qmp),
            "incoming_uri": self.incoming_uri,
            "console_log": str(self.console_log),
        }


@dataclass(frozen=True)
class LabSnapshot:
    """The lab at one moment. ``serial`` grows with every change."""

    serial: int
    status: str
    running: QemuInstance | None
    standby: QemuInstance | None
    retired: QemuInstance | None
    handovers: int  # migrations that moved the guest (destination RESUMEd)
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == STATUS_READY

    def to_json(self) -> dict[str, Any]:
        def one(instance: QemuInstance | None) -> dict[str, Any] | None:
            return None if instance is None else instance.to_json()

        return {
            "serial": self.serial,
            "status": self.status,
            "running_side": None if self.running is None else self.running.side,
            "running": one(self.running),
            "standby": one(self.standby),
            "retired": one(self.retired),
            "handovers": self.handovers,
            "error": self.error,
        }


class QemuLabError(RuntimeError):
    """The lab could not start, or lost its guest; the message says why."""


def _set_pdeathsig() -> None:
    # QEMU dies with the process that started it (the lab daemon): nothing
    # outlives a crashed lab except what cleanup_stale_labs() removes.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kernel_command_line(
    *,
    guest_cidr: str,
    harness_address: str,
    harness_mac: str,
    heartbeat: str,
    heartbeat_hz: int,
    control_port: int,
    dirty_mib: int,
    dirty_rate: int,
) -> str:
    """The guest's settings, read by its /init (lab/qemu/guest/init)."""
    return " ".join(
        [
            "console=ttyS0",
            "quiet",
            "panic=1",
            f"mb.ip={guest_cidr}",
            f"mb.peer={harness_address}",
            f"mb.peer_mac={harness_mac}",
            f"mb.hb={heartbeat}",
            f"mb.hz={heartbeat_hz}",
            f"mb.ctl={control_port}",
            f"mb.dirty={dirty_mib}:{dirty_rate}",
        ]
    )


def qemu_argv(
    artefacts: QemuArtefacts,
    *,
    memory_mib: int,
    cpu: str,
    append: str,
    token_file: Path,
    tap: str,
    guest_mac: str,
    console_log: Path,
    qmp: Path,
    lab_qmp: Path,
    incoming_uri: str | None,
) -> list[str]:
    """The QEMU command line. Source and destination differ only in the tap, the
    files and ``-incoming``: everything that shapes the machine is identical."""
    argv = [
        str(artefacts.qemu_binary),
        "-name",
        f"{GUEST_NAME},debug-threads=on",
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-cpu",
        cpu,
        "-smp",
        "1",
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    for folder in artefacts.firmware_dirs:
        argv += ["-L", str(folder)]
    argv += [
        "-kernel",
        str(artefacts.kernel),
        "-initrd",
        str(artefacts.initramfs),
        "-append",
        append,
        # The token reaches the guest through fw_cfg: not on any command line.
        "-fw_cfg",
        f"name=opt/migration-blackout/token,file={token_file}",
        "-netdev",
        f"tap,id=net0,ifname={tap},script=no,downscript=no",
        # romfile= : no iPXE option ROM (direct kernel boot does not need one).
        "-device",
        f"virtio-net-pci,netdev=net0,mac={guest_mac},romfile=",
        "-chardev",
        f"file,id=console0,path={console_log}",
        "-serial",
        "chardev:console0",
        "-chardev",
        f"socket,id=qmp0,path={qmp},server=on,wait=off",
        "-mon",
        "chardev=qmp0,mode=control",
        "-chardev",
        f"socket,id=qmp1,path={lab_qmp},server=on,wait=off",
        "-mon",
        "chardev=qmp1,mode=control",
    ]
    if incoming_uri is not None:
        argv += ["-incoming", incoming_uri]
    return argv


@dataclass(eq=False)
class _Process:
    side: str
    generation: int
    role: str
    proc: asyncio.subprocess.Process
    qmp: Path
    lab_qmp: Path
    incoming_uri: str
    console_log: Path
    log: Path
    monitor: QmpClient | None = None
    exit_code: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def public(self) -> QemuInstance:
        return QemuInstance(
            side=self.side,
            generation=self.generation,
            pid=self.proc.pid,
            role=self.role,
            qmp=self.qmp,
            incoming_uri=self.incoming_uri,
            console_log=self.console_log,
        )


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


class QemuLab:
    """The QEMU lab in this process. ``async with QemuLab(state_dir) as lab:``.

    ``start()`` returns once the guest answers on its control port and a
    standby destination waits; ``close()`` stops both QEMUs and removes the
    network (idempotent). Everything needs root.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        config: QemuLabConfig | None = None,
        artefacts: QemuArtefacts | None = None,
        token: str | None = None,
        on_change: Callable[[LabSnapshot], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.config = config or QemuLabConfig()
        self.artefacts = artefacts
        self.token = token or secrets.token_urlsafe(32)
        self.network = LabNetwork(prefix=self.config.prefix)
        self._on_change = on_change
        self._processes: dict[str, _Process] = {}  # side -> its current QEMU
        self._generations = dict.fromkeys(SIDES, 0)
        self._status = STATUS_STOPPED
        self._error: str | None = None
        self._handovers = 0
        self._serial = 0
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._closing = False
        self._events: JsonlSink | None = None
        self.token_file = self.state_dir / "token"
        self.events_path: Path | None = None

    # -- addresses --------------------------------------------------------------

    @property
    def guest_address(self) -> str:
        return self.network.guest_address

    @property
    def harness_address(self) -> str:
        return self.network.harness_address

    @property
    def heartbeat_target(self) -> tuple[str, int]:
        """Where the guest sends its heartbeats: bind the receiver here."""
        return self.network.harness_address, self.config.heartbeat_port

    def guest_control(self) -> GuestControl:
        return GuestControl(self.guest_address, self.token, port=self.config.control_port)

    def incoming_uri(self, side: str) -> str:
        return f"tcp:127.0.0.1:{self.config.migration_port_base + 1 + SIDES.index(side)}"

    # -- snapshots ----------------------------------------------------------------

    def _role_holder(self, role: str) -> QemuInstance | None:
        for process in self._processes.values():
            if process.role == role:
                return process.public()
        return None

    def snapshot(self) -> LabSnapshot:
        return LabSnapshot(
            serial=self._serial,
            status=self._status,
            running=self._role_holder(ROLE_RUNNING),
            standby=self._role_holder(ROLE_STANDBY),
            retired=self._role_holder(ROLE_RETIRED),
            handovers=self._handovers,
            error=self._error,
        )

    def _update_status(self) -> None:
        if self._status in (STATUS_FAILED, STATUS_STOPPED, STATUS_STARTING):
            return
        roles = {p.role for p in self._processes.values()}
        self._status = STATUS_READY if {ROLE_RUNNING, ROLE_STANDBY} <= roles else STATUS_PREPARING

    def _publish(self, what: str, **details: Any) -> None:
        self._update_status()
        self._serial += 1
        snapshot = self.snapshot()
        if self._events is not None:
            at = clock_pair()
            self._events.write(
                {
                    "event": what,
                    "mono_ns": at.mono_ns,
                    "utc_ns": at.utc_ns,
                    **details,
                    "lab": snapshot.to_json(),
                }
            )
            self._events.flush()
        if self._on_change is not None:
            self._on_change(snapshot)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_ready(
        self, *, timeout_s: float = 60.0, after_serial: int | None = None
    ) -> LabSnapshot:
        """The first snapshot that is ``ready`` (and newer than ``after_serial``).

        Raises ``QemuLabError`` if the lab failed, ``TimeoutError`` after ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                snapshot = self.snapshot()
                if snapshot.status == STATUS_FAILED:
                    raise QemuLabError(f"the QEMU lab failed: {snapshot.error}")
                if snapshot.ready and (after_serial is None or snapshot.serial > after_serial):
                    return snapshot
                await self._changed.wait()

    # -- lifetime -------------------------------------------------------------------

    def _spawn(self, coroutine: Any, name: str) -> None:
        if self._task_group is None:
            coroutine.close()
            return
        task = self._task_group.create_task(coroutine, name=f"qemu-lab {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> QemuLab:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> LabSnapshot:
        """Build the network, boot the guest on side a, start the standby on side b."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.artefacts is None:
            self.artefacts = await asyncio.to_thread(ensure_artefacts)
        started = clock_pair()
        stamp = utc_iso(started.utc_ns).replace(":", "").replace("-", "")[:15]
        self.events_path = self.state_dir / f"lab-events-{stamp}-{os.getpid()}.jsonl"
        self._events = JsonlSink(
            self.events_path,
            probe="qemu_lab",
            meta={"qemu_version": self.artefacts.qemu_version, "clock": "harness"},
        )
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(self.token)
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._status = STATUS_STARTING
        try:
            await asyncio.to_thread(self.network.create)
            await asyncio.gather(
                self._start_process("a", incoming=False), self._start_process("b", incoming=True)
            )
            await self._wait_for_guest(self.config.boot_timeout_s)
            self._status = STATUS_PREPARING
            self._publish("ready")
            return await self.wait_ready(timeout_s=self.config.standby_timeout_s)
        except BaseException:
            await self.close()
            raise

    async def _wait_for_guest(self, timeout_s: float) -> GuestStatus:
        control = self.guest_control()
        deadline = time.monotonic() + timeout_s
        running = self._processes["a"]
        while True:
            if running.exited.is_set():
                raise QemuLabError(
                    f"QEMU exited while the guest booted (code {running.exit_code}): "
                    f"{_tail(running.log)} {_tail(running.console_log)}"
                )
            try:
                return await control.status(timeout_s=1.0)
            except GuestControlError:
                if time.monotonic() > deadline:
                    raise QemuLabError(
                        f"the guest did not come up within {timeout_s:.0f} s "
                        f"(console: {_tail(running.console_log)})"
                    ) from None

    async def close(self) -> None:
        """Stop every QEMU, remove the network. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for process in list(self._processes.values()):
            await self._stop_process(process)
        await asyncio.to_thread(self.network.destroy)
        self._status = STATUS_STOPPED
        if self._events is not None:
            at = clock_pair()
            self._events.write({"event": "stopped", "mono_ns": at.mono_ns, "utc_ns": at.utc_ns})
            self._events.close()
            self._events = None
        group, self._task_group = self._task_group, None
        for task in list(self._tasks):
            task.cancel()
        if group is not None:
            with contextlib.suppress(Exception):
                await group.__aexit__(None, None, None)
        self.token_file.unlink(missing_ok=True)
        for path in self.state_dir.glob("*.qmp"):
            path.unlink(missing_ok=True)

    async def _stop_process(self, process: _Process) -> None:
        if process.exited.is_set() or process.proc.returncode is not None:
            return
        if process.monitor is not None and process.monitor.connected:
            with contextlib.suppress(QmpError, OSError):
                await process.monitor.quit()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await process.proc.wait()
                return
        with contextlib.suppress(ProcessLookupError):
            process.proc.kill()
        await process.proc.wait()

    # -- processes --------------------------------------------------------------------

    async def _start_process(self, side: str, *, incoming: bool) -> _Process:
        assert self.artefacts is not None
        self._generations[side] += 1
        generation = self._generations[side]
        base = self.state_dir / f"{side}-{generation}"
        qmp = base.with_suffix(".qmp")
        lab_qmp = base.with_name(base.name + ".lab.qmp")
        for path in (qmp, lab_qmp):
            path.unlink(missing_ok=True)
        console_log = base.with_name(base.name + ".console.log")
        log = base.with_name(base.name + ".qemu.log")
        # A long-lived lab starts a QEMU per migration: keep the logs of the last few.
        for old in self.state_dir.glob(f"{side}-{generation - _KEEP_LOGS}.*.log"):
            old.unlink(missing_ok=True)
        uri = self.incoming_uri(side)
        append = kernel_command_line(
            guest_cidr=f"{self.network.guest_address}/{self.network.prefix_len}",
            harness_address=self.network.harness_address,
            harness_mac=self.network.harness_mac,
            heartbeat=f"{self.network.harness_address}:{self.config.heartbeat_port}",
            heartbeat_hz=self.config.heartbeat_hz,
            control_port=self.config.control_port,
            dirty_mib=self.config.dirty_mib_at_boot,
            dirty_rate=self.config.dirty_rate_at_boot,
        )
        argv = self.network.exec_argv(
            *qemu_argv(
                self.artefacts,
                memory_mib=self.config.memory_mib,
                cpu=self.config.cpu,
                append=append,
                token_file=self.token_file,
                tap=tap_name(side),
                guest_mac=self.network.guest_mac,
                console_log=console_log,
                qmp=qmp,
                lab_qmp=lab_qmp,
                incoming_uri=uri if incoming else None,
            )
        )
        log_file = await asyncio.to_thread(open, log, "wb")
        with log_file:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_set_pdeathsig,
            )
        process = _Process(
            side=side,
            generation=generation,
            role=ROLE_STARTING,
            proc=proc,
            qmp=qmp,
            lab_qmp=lab_qmp,
            incoming_uri=uri,
            console_log=console_log,
            log=log,
        )
        self._processes[side] = process
        self._spawn(self._watch_exit(process), f"exit {side}-{generation}")
        try:
            process.monitor = await self._connect_monitor(process)
            status = await process.monitor.query_status()
        except (QmpError, QemuLabError) as exc:
            raise QemuLabError(
                f"QEMU {side}-{generation} did not start: {exc} ({_tail(log)})"
            ) from None
        expected = "inmigrate" if incoming else "running"
        if status.status != expected and not (not incoming and status.status == "prelaunch"):
            raise QemuLabError(f"QEMU {side}-{generation} is {status.status!r}, not {expected!r}")
        process.role = ROLE_STANDBY if incoming else ROLE_RUNNING
        self._publish(
            "qemu_started",
            side=side,
            generation=generation,
            pid=proc.pid,
            role=process.role,
        )
        return process

    async def _connect_monitor(self, process: _Process) -> QmpClient:
        """Connect the lab's own monitor, retrying until QEMU listens (the socket file
        appears before QEMU accepts on it)."""
        deadline = time.monotonic() + self.config.standby_timeout_s
        while True:
            if process.exited.is_set():
                raise QemuLabError(f"it exited with code {process.exit_code}")
            if process.lab_qmp.exists():
                try:
                    return await QmpClient.connect(
                        process.lab_qmp,
                        timeout_s=max(1.0, deadline - time.monotonic()),
                        on_event=lambda event: self._on_event(process, event),
                    )
                except QmpConnectionError:
                    pass
            if time.monotonic() > deadline:
                raise QemuLabError(f"no monitor at {process.lab_qmp} within the deadline")
            await asyncio.sleep(0.01)

    def _on_event(self, process: _Process, event: QmpEvent) -> None:
        if self._closing or event.name != "RESUME" or process.role != ROLE_STANDBY:
            return
        if self._processes.get(process.side) is not process:
            return
        # The guest runs on this QEMU now.
        old = [p for p in self._processes.values() if p.role == ROLE_RUNNING]
        process.role = ROLE_RUNNING
        self._handovers += 1
        for retired in old:
            retired.role = ROLE_RETIRED
            self._spawn(self._retire(retired), f"retire {retired.side}-{retired.generation}")
        self._publish(
            "guest_moved",
            to_side=process.side,
            to_generation=process.generation,
            qemu_resume_utc_ns=event.qemu_utc_ns,
        )

    async def _retire(self, process: _Process) -> None:
        """Give whoever migrated ``retire_after_s`` to finish with the old source, then quit it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.retire_after_s):
                await process.exited.wait()
                return
        if not self._closing:
            await self._stop_process(process)

    async def _watch_exit(self, process: _Process) -> None:
        process.exit_code = await process.proc.wait()
        process.exited.set()
        if process.monitor is not None:
            await process.monitor.close()
        previous_role, process.role = process.role, ROLE_GONE
        for path in (process.qmp, process.lab_qmp):
            path.unlink(missing_ok=True)
        if self._closing or self._processes.get(process.side) is not process:
            return
        self._publish(
            "qemu_exited",
            side=process.side,
            generation=process.generation,
            pid=process.proc.pid,
            code=process.exit_code,
            role=previous_role,
        )
        if previous_role == ROLE_RUNNING:
            self._status = STATUS_FAILED
            self._error = (
                f"QEMU {process.side}-{process.generation}, which ran the guest, exited with "
                f"code {process.exit_code}: {_tail(process.log)}"
            )
            self._publish("guest_lost", error=self._error)
            return
        if previous_role in (ROLE_STANDBY, ROLE_RETIRED):
            self._spawn(self._replace_standby(process.side), f"standby {process.side}")

    async def _replace_standby(self, side: str) -> None:
        try:
            await self._start_process(side, incoming=True)
        except Exception as exc:  # a task of the group must not fail: report instead
            if not self._closing:
                self._status = STATUS_FAILED
                self._error = f"no new standby on side {side}: {exc}"
                self._publish("standby_failed", error=self._error)

    # -- for tests and tools --------------------------------------------------------------

    def processes(self) -> Sequence[QemuInstance]:
        return [p.public() for p in self._processes.values()]
