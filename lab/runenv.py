"""The labs as ``measure run`` measures them: run environments
(``harness.measurement.RunEnvironment``), handed to the product by
``lab/plugin.py``.

When no hosts are configured (or ``--lab`` is given), ``measure run`` uses
the emulated lab: a lab already started with ``measure lab up`` when one
runs and no lab settings were asked for, otherwise a lab of its own, started
for the run in a private state folder and stopped afterwards.

A lab for a run is a run environment (:class:`HyperVLabForRun`,
:class:`QemuLabForRun`): the run starts it once its run folder exists and
inside its own signal handling, and stops it at the end, whatever happened.
A lab whose run was killed outright is found by the next ``measure lab down``
or lab start (``lab.control.reap_orphans``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from migration_blackout.harness.backends import PreflightError, PreparedRun
from migration_blackout.harness.backends.qemu import (
    SHARED_MEMORY,
    QemuBackend,
    QemuSide,
    migration_settings,
)
from migration_blackout.harness.config import HostConfig, RunConfig
from migration_blackout.harness.deadlines import Interrupt
from migration_blackout.harness.guestagent import GuestAgentSetup
from migration_blackout.harness.labseam import LabError

from . import control
from .control import LabState
from .desktop import GuestDesktop
from .qemu import control as qemu_control
from .qemu.control import QemuLabState

T = TypeVar("T")
LAB_STOP_DEADLINE_S = 30.0


def run_config_for_lab(
    config: RunConfig, state: LabState, *, vm: str | None = None
) -> tuple[RunConfig, dict[str, str | None]]:
    """``config`` pointed at the lab's hosts and guest (and its VM unless ``vm``
    names another); returns it and the passwords.

    The hosts are reached with ``config.auth`` (default Basic). With Kerberos
    (or Negotiate, which prefers it) the run uses the lab's realm: its
    ``krb5.conf``, the user's principal and each host's WinRM SPN, because
    the hosts listen on 127.0.0.1 and not on their DNS names.
    """
    auth = config.auth or "basic"
    realm = state.kerberos
    if auth == "kerberos" and realm is None:
        raise LabError(
            "this lab runs without a KDC ([kerberos] enabled = false in its lab.toml): "
            "choose another --auth"
        )
    kerberos = realm is not None and auth in ("kerberos", "negotiate")
    hosts = []
    passwords: dict[str, str | None] = {}
    for host in state.hosts:
        address, port = host["address"], int(host["port"])
        hosts.append(
            HostConfig(
                name=host["name"],
                address=address,
                port=port,
                https=bool(state.document.get("tls")),
                auth=auth,
                username=str(realm["user_principal"])
                if kerberos and realm is not None
                else host["username"],
                password_env="(lab)",
                # The lab's own certificate, validated as a real host's would be.
                cert_validation=str(state.document["ca"]) if state.document.get("ca") else False,
                service_principal=host.get("service_principal") if kerberos else None,
            )
        )
        passwords[host["name"]] = str(host["password"])
    vm = vm or str(state.document["guest"]["name"])
    return (
        replace(
            config,
            hosts=tuple(hosts),
            guest_addresses=(state.guest_address,),
            vm=vm,
            krb5_config=str(realm["krb5_config"])
            if kerberos and realm is not None
            else config.krb5_config,
        ),
        passwords,
    )


def guest_agent_setup(
    state: LabState,
    *,
    listen: tuple[str, int] | None,
    contact_deadline_s: float,
    interval_s: float = 1.0,
    witness_port: int | None = None,
) -> GuestAgentSetup:
    """The receiver on the harness's side of the guest's link; the agent, with a
    virtual X display and a clock, runs inside the guest's namespace (answering
    the witnesses on ``witness_port``)."""
    guest = state.document["guest"]
    host, port = listen or (str(guest["harness_side_address"]), 0)
    return GuestAgentSetup(
        listen_host=host,
        listen_port=port,
        contact_deadline_s=contact_deadline_s,
        interval_s=interval_s,
        desktop=functools.partial(GuestDesktop, namespace=str(guest["namespace"])),
        witness_port=witness_port,
    )


class _PrivateLab:
    """A lab started (once) in a worker thread for this process, and stopped
    by :meth:`close` even while it is still starting (``cancel``)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # held while starting
        self.state_dir: Path | None = None

    async def start(self, start: Callable[[Path, threading.Event], T]) -> T:
        """Start the lab; a lab that cannot start fails the run's preflight
        (nothing was migrated: exit 3), with the reason."""

        def blocking() -> T:
            with self._lock:
                if self._cancel.is_set():
                    raise LabError("the lab start was cancelled")
                self.state_dir = Path(tempfile.mkdtemp(prefix=self._prefix))
                return start(self.state_dir, self._cancel)

        try:
            return await asyncio.to_thread(blocking)
        except (LabError, PermissionError) as exc:
            raise PreflightError(str(exc)) from None

    async def close(self, stop: Callable[[Path], object]) -> None:
        self._cancel.set()

        def blocking() -> None:
            # A start in progress sees the cancel within 50 ms and stops its daemon.
            if not self._lock.acquire(timeout=LAB_STOP_DEADLINE_S):
                return
            try:
                if self.state_dir is not None:
                    stop(self.state_dir)
                    shutil.rmtree(self.state_dir, ignore_errors=True)
                    self.state_dir = None
            finally:
                self._lock.release()

        await asyncio.to_thread(blocking)


class HyperVLabForRun:
    """The emulated Hyper-V lab as a run environment.

    The running lab (``measure lab up``) when one runs and no lab settings
    were asked for; else a private lab, started by the first :meth:`prepare`
    and stopped by :meth:`close`.
    """

    def __init__(
        self,
        *,
        config: Path | None = None,
        seed: int | None = None,
        vm: str | None = None,
        agent_listen: tuple[str, int] | None = None,
        agent_wait_s: float | None = None,
        agent_interval_s: float = 1.0,
        witness_port: int | None = None,
    ) -> None:
        self._config = config
        self._seed = seed
        self._vm = vm
        self._agent_listen = agent_listen
        self._agent_wait_s = agent_wait_s
        self._agent_interval_s = agent_interval_s
        self._witness_port = witness_port  # the agent answers the witnesses there
        self._state: LabState | None = None
        self._private = _PrivateLab("measure-lab-")

    async def prepare(self, config: RunConfig, interrupt: Interrupt) -> PreparedRun:
        if self._state is None:
            if self._config is None and self._seed is None:
                self._state = control.read_state()
            if self._state is None:
                self._state = await self._private.start(self._start)
        state = self._state
        lab_config, passwords = run_config_for_lab(config, state, vm=self._vm)
        agent = None
        if self._agent_wait_s is not None:
            agent = guest_agent_setup(
                state,
                listen=self._agent_listen,
                contact_deadline_s=self._agent_wait_s,
                interval_s=self._agent_interval_s,
                witness_port=self._witness_port,
            )
        return PreparedRun(
            config=lab_config,
            passwords=passwords,
            ground_truth=state.ground_truth,
            extra_manifest={
                "lab": {"state_file": str(state.path), "seed": state.document.get("seed")}
            },
            guest_agent=agent,
        )

    def _start(self, state_dir: Path, cancel: threading.Event) -> LabState:
        state, _ = control.up(
            state_dir=state_dir,
            config=self._config,
            seed=self._seed,
            owner_pid=os.getpid(),
            private=True,
            cancel=cancel,
        )
        return state

    async def close(self) -> None:
        await self._private.close(lambda state_dir: control.down(state_dir=state_dir))


class QemuLabForRun:
    """The QEMU lab as a run environment: the running one, or one started for
    this process; each run gets a fresh backend (after a migration the
    lab's standby is new)."""

    def __init__(self, *, agent_wait_s: float) -> None:
        self._agent_wait_s = agent_wait_s
        self._state: QemuLabState | None = None
        self._serial: int | None = None
        self._private = _PrivateLab("measure-qemu-lab-")
        self._ram_dumps = tempfile.TemporaryDirectory(
            prefix="mb-ram-", dir=SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
        )

    async def prepare(self, config: RunConfig, interrupt: Interrupt) -> PreparedRun:
        if self._state is None:
            self._state = qemu_control.read_state()
            if self._state is None:
                self._state = await self._private.start(self._start)
        backend, current = await qemu_lab_backend(
            config,
            self._state,
            after_serial=self._serial,
            verify_dir=Path(self._ram_dumps.name),
        )
        self._serial = current.serial
        return PreparedRun(
            config=qemu_run_config(config, current),
            backend=backend,
            guest_agent=qemu_guest_agent_setup(current, contact_deadline_s=self._agent_wait_s),
            extra_manifest={"lab": {"kind": "qemu", "state_file": str(current.path)}},
        )

    def _start(self, state_dir: Path, cancel: threading.Event) -> QemuLabState:
        state, _ = qemu_control.up(
            state_dir=state_dir, owner_pid=os.getpid(), private=True, cancel=cancel
        )
        return state

    async def close(self) -> None:
        try:
            await self._private.close(lambda state_dir: qemu_control.down(state_dir=state_dir))
        finally:
            self._ram_dumps.cleanup()


async def qemu_lab_backend(
    config: RunConfig, state: QemuLabState, *, after_serial: int | None, verify_dir: Path | None
) -> tuple[QemuBackend, QemuLabState]:
    """A backend for the QEMU lab as it stands now (after the previous migration's
    standby is up again when ``after_serial`` is given)."""
    # Wait for the lab to be ready (a standby waiting), and after a migration
    # of ours for the new standby on the old side.
    state = await qemu_control.wait_ready(state_dir=state.path.parent, after_serial=after_serial)
    running, standby = state.running, state.standby
    if running is None or standby is None:
        raise LabError(f"the QEMU lab is not ready ({state.status}): run `measure lab down`")
    sides = (
        QemuSide(
            name=f"qemu-{running.side}", qmp=str(running.qmp), incoming_uri=running.incoming_uri
        ),
        QemuSide(
            name=f"qemu-{standby.side}", qmp=str(standby.qmp), incoming_uri=standby.incoming_uri
        ),
    )
    backend = QemuBackend(
        sides,
        settings=migration_settings(config.qemu),
        verify_memory=verify_dir if config.qemu.verify_memory else None,
        memory_bytes=state.memory_bytes,
    )
    return backend, state


# mb-guestd answers the witnesses on this port (lab/qemu/guest/init).
QEMU_GUEST_WITNESS_PORT = 47601


def qemu_run_config(config: RunConfig, state: QemuLabState) -> RunConfig:
    """The run's config aimed at the lab's guest: its address, and the port its
    mb-guestd answers the witnesses on, whatever port the config names (a
    probe of another port would find no guest and report a network that
    never came back)."""
    return replace(
        config,
        guest_addresses=(state.guest_address,),
        vm="qemu-guest",
        hypervisor="qemu",
        probes=replace(config.probes, witness_port=QEMU_GUEST_WITNESS_PORT),
    )


def qemu_guest_agent_setup(state: QemuLabState, *, contact_deadline_s: float) -> GuestAgentSetup:
    """The QEMU guest sends its own heartbeat (no frames) to this address and
    answers the witnesses."""
    host, port = state.heartbeat_address
    return GuestAgentSetup(
        listen_host=host,
        listen_port=port,
        token=state.token,
        in_guest=True,
        frames=False,
        contact_deadline_s=contact_deadline_s,
        witness_port=QEMU_GUEST_WITNESS_PORT,
    )
