"""Hyper-V over PowerShell remoting (pypsrp): real hosts and the emulated lab.

One :class:`~harness.hyperv.HostSession` per host for the whole run (polls,
Get-Date, events); Move-VM on a connection of its own on the source host,
the write-up's rule. Everything blocking runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.host_state import HostObservation
from migration_blackout.probes.sink import JsonlSink

from .. import kerberos
from ..clocksync import ClockOffset, sample_clock
from ..config import HostConfig, RunConfig
from ..console import console_poll_function
from ..hyperv import (
    HostCallError,
    HostError,
    HostSession,
    MoveVmCall,
    VmStatus,
    _prop,
    _text,
)
from ..runfolder import RunFolder
from . import MigrationOutcome, PolledSide, PreflightError, Recorder

# Hyper-V's own migration events, harvested after the run.
HARVESTED_EVENTS = (
    ("Microsoft-Windows-Hyper-V-VMMS-Admin", (20415, 20417, 20418)),
    ("Microsoft-Windows-Hyper-V-Worker-Admin", (22507, 22508, 22509)),
)
CLOCK_SAMPLES = 7
HOST_CALL_TIMEOUT_S = 20.0
# The host's Windows build (learn.microsoft.com: Win32_OperatingSystem class).
OPERATING_SYSTEM_QUERY = (("ClassName", "Win32_OperatingSystem"),)
HARVEST_MARGIN_S = 2.0


class HyperVBackend:
    kind = "hyperv"
    migration_name = "Move-VM"

    def __init__(self, config: RunConfig, passwords: Mapping[str, str | None]) -> None:
        if len(config.hosts) < 2:
            raise PreflightError("two Hyper-V hosts are needed (source and destination)")
        self.config = config
        self._passwords = dict(passwords)
        self.sessions: dict[str, HostSession] = {}
        self._started_utc: datetime | None = None  # when Move-VM was sent
        self._offsets: dict[str, int] = {}
        self._located: VmStatus | None = None  # Get-VM on the source, in preflight
        # KRB5_CONFIG for the run, restored by close().
        self._environment = contextlib.ExitStack()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "hosts": [h.name for h in self.config.hosts]}

    # -- preflight ------------------------------------------------------------

    async def open(self, record: Recorder) -> None:
        self._environment.enter_context(kerberos.use_krb5_config(self.config.krb5_config))
        for configured in self.config.hosts:
            if configured.auth == "kerberos":
                await self._kerberos_preflight(configured, record)
        sessions = {
            host.name: HostSession(
                host, self._passwords.get(host.name), call_timeout_s=HOST_CALL_TIMEOUT_S
            )
            for host in self.config.hosts
        }
        self.sessions.update(sessions)
        results = await asyncio.gather(
            *(asyncio.to_thread(s.open) for s in sessions.values()), return_exceptions=True
        )
        for host, result in zip(sessions, results, strict=True):
            if isinstance(result, HostError):
                record("preflight", check="connect", host=host, ok=False, error=str(result))
                raise PreflightError(str(result))
            if isinstance(result, BaseException):
                raise result
            record("preflight", check="connect", host=host, ok=True)

    async def _kerberos_preflight(self, host: HostConfig, record: Recorder) -> None:
        """The host's ticket from the KDC before any WinRM traffic: Kerberos
        problems get their own one-line error (recorded: who, which SPN, from
        which credentials; never the password or the ticket)."""
        try:
            login = await asyncio.to_thread(
                kerberos.preflight, host, self._passwords.get(host.name)
            )
        except kerberos.KerberosError as exc:
            record("preflight", check="kerberos", host=host.name, ok=False, error=str(exc))
            raise PreflightError(str(exc)) from None
        record("preflight", check="kerberos", ok=True, **login.describe())

    async def locate(self, record: Recorder) -> tuple[str, str]:
        """Which host holds the VM (found, not assumed), and where it goes."""
        config, vm = self.config, self.config.vm
        names = list(self.sessions)
        results = await asyncio.gather(
            *(asyncio.to_thread(self.sessions[n].get_vm, vm) for n in names),
            return_exceptions=True,
        )
        holders = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, HostError):
                raise PreflightError(f"{result} (while looking for VM {vm!r})")
            if isinstance(result, BaseException):
                raise result
            record(
                "preflight",
                check="locate",
                host=name,
                listed=result is not None,
                state=None if result is None else result.state,
            )
            if result is not None:
                holders.append((name, result))
        if config.source is not None:
            source = config.host(config.source).name
            if source not in dict(holders):
                where = ", ".join(n for n, _ in holders) or "no configured host"
                raise PreflightError(
                    f"{source}: does not hold VM {vm!r} (it is on {where}); "
                    f"Move-VM must run on the source host"
                )
        elif not holders:
            raise PreflightError(
                f"VM {vm!r} was found on no host ({', '.join(names)}): check the VM name and "
                f"that the account may see it (Hyper-V Administrators)"
            )
        elif len(holders) > 1:
            raise PreflightError(
                f"VM {vm!r} is listed on {' and '.join(n for n, _ in holders)}; pass --source"
            )
        else:
            source = holders[0][0]
        vm_status = dict(holders)[source]
        self._located = vm_status
        if vm_status.state != "Running":
            raise PreflightError(f"{source}: VM {vm!r} is {vm_status.state}, not Running")
        if config.destination is not None:
            destination = config.host(config.destination).name
        else:
            destination = next(n for n in names if n != source)
        if destination.lower() == source.lower():
            raise PreflightError(f"{source}: the destination is the source host; pick another host")
        return source, destination

    async def describe_hosts(self, source: str, destination: str) -> dict[str, Any]:
        """Each host's Windows build (Win32_OperatingSystem Caption, Version,
        BuildNumber) and the VM's memory (Get-VM MemoryAssigned in preflight)."""
        names = list(self.sessions)
        found = await asyncio.gather(*(asyncio.to_thread(self._os_of, n) for n in names))
        vm = self._located
        return {
            "hosts": dict(zip(names, found, strict=True)),
            "vm": {
                "name": self.config.vm,
                "memory_bytes": None if vm is None else vm.memory_assigned,
                "memory_source": "Get-VM MemoryAssigned",
            },
        }

    def _os_of(self, host: str) -> dict[str, Any]:
        try:
            result = self.sessions[host].invoke("Get-CimInstance", OPERATING_SYSTEM_QUERY)
        except HostError as exc:
            return {"error": str(exc)}
        if result.errors or not result.output:
            why = result.errors[0].message if result.errors else "no answer"
            return {"error": f"Win32_OperatingSystem: {why}"}
        answer = result.output[0]
        return {
            "os_caption": _text(_prop(answer, "Caption")),
            "os_version": _text(_prop(answer, "Version")),
            "os_build": _text(_prop(answer, "BuildNumber")),
        }

    # -- clocks ---------------------------------------------------------------

    async def align_clocks(
        self, phase: str, sink: JsonlSink, record: Recorder, *, tolerate_failures: bool
    ) -> dict[str, ClockOffset | None]:
        names = list(self.sessions)
        results = await asyncio.gather(
            *(
                asyncio.to_thread(
                    sample_clock,
                    n,
                    self.sessions[n].get_date,
                    phase=phase,
                    count=CLOCK_SAMPLES,
                    sink=sink,
                )
                for n in names
            ),
            return_exceptions=True,
        )
        offsets: dict[str, ClockOffset | None] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                record("clock_failed", host=name, phase=phase, error=str(result))
                if not tolerate_failures:
                    raise PreflightError(f"{name}: Get-Date failed: {result}")
                offsets[name] = None
            else:
                offsets[name] = result
                self._offsets.setdefault(name, result.offset_ns)
        return offsets

    # -- probes ---------------------------------------------------------------

    def polled_sides(self, source: str, destination: str) -> list[PolledSide]:
        def role(name: str) -> str | None:
            return "source" if name == source else "destination" if name == destination else None

        return [
            PolledSide(name=name, role=role(name), poll=_state_poll(session, self.config.vm))
            for name, session in self.sessions.items()
        ]

    def console_poll(self, source: str) -> Callable[[], Any]:
        holders = [self.sessions[source], *(s for n, s in self.sessions.items() if n != source)]
        return console_poll_function(holders, self.config.vm)

    # -- the migration -------------------------------------------------------

    async def migrate(
        self,
        run: RunFolder,
        source: str,
        destination: str,
        *,
        timeout_s: float,
        interrupted: threading.Event,
        record: Recorder,
        tick: Callable[[], None],
    ) -> MigrationOutcome:
        migration = self.config.migration
        call = MoveVmCall(
            self.config.host(source),
            self._passwords.get(source),
            vm=self.config.vm,
            destination=destination,
            include_storage=migration.include_storage,
            destination_storage_path=migration.destination_storage_path,
        )
        deadline = time.monotonic() + timeout_s
        self._started_utc = datetime.now(UTC)

        def blocking() -> MigrationOutcome:
            try:
                record(
                    "move_vm_start",
                    host=source,
                    destination=destination,
                    include_storage=migration.include_storage,
                )
                call.start()
                while True:
                    if interrupted.is_set():
                        call.stop()
                        record("move_vm_stopped", host=source, reason="interrupted")
                        return MigrationOutcome("interrupted", "interrupted: Move-VM was stopped")
                    if time.monotonic() > deadline:
                        call.stop()
                        record("move_vm_stopped", host=source, reason="timeout")
                        return MigrationOutcome(
                            "timeout", f"{source}: Move-VM did not return within {timeout_s:g} s"
                        )
                    if call.poll(1):
                        break
                try:
                    call.result()
                except HostCallError as exc:
                    record(
                        "move_vm_error",
                        host=source,
                        error=exc.reason,
                        errors=[e.message for e in exc.errors],
                    )
                    return MigrationOutcome("failed", str(exc))
                record("move_vm_return", host=source)
                return MigrationOutcome("returned")
            except HostError as exc:
                record("move_vm_error", host=source, error=str(exc))
                return MigrationOutcome("failed", str(exc))
            finally:
                call.close()

        async with asyncio.TaskGroup() as tasks:
            call_task = tasks.create_task(asyncio.to_thread(blocking))
            while not call_task.done():
                tick()
                await asyncio.wait([call_task], timeout=0.25)
        return call_task.result()

    # -- afterwards -----------------------------------------------------------

    async def harvest(self, run: RunFolder, record: Recorder) -> None:
        """Hyper-V's own migration events from both hosts, stored raw."""
        # Only this migration's events: an earlier migration of the same VM (a
        # ping-pong session) wrote the same event IDs minutes ago. The margin
        # covers the clock offsets' uncertainty.
        since = (self._started_utc or datetime.now(UTC)) - timedelta(seconds=HARVEST_MARGIN_S)
        sink = JsonlSink(
            run.raw / "hyperv_events.jsonl",
            probe="hyperv_events",
            meta={"vm": self.config.vm, "since": since.isoformat()},
        )
        run.register_probe("hyperv_events", "raw/hyperv_events.jsonl", format="jsonl")
        try:
            for name, session in self.sessions.items():
                # Ask in the host's own time: its clock may be off by seconds.
                query_since = since + timedelta(microseconds=self._offsets.get(name, 0) / 1000)
                for log_name, ids in HARVESTED_EVENTS:
                    try:
                        found = await asyncio.to_thread(
                            session.win_events, log_name, ids, query_since
                        )
                    except HostError as exc:
                        sink.write(
                            {
                                "event": "harvest_failed",
                                "host": name,
                                "log_name": log_name,
                                "error": str(exc),
                            }
                        )
                        continue
                    received = clock_pair()
                    for item in found:
                        sink.write(
                            {
                                "event": "win_event",
                                "host": name,
                                "received_mono_ns": received.mono_ns,
                                "received_utc_ns": received.utc_ns,
                                "matches_vm": self.config.vm.lower()
                                in (item.get("message") or "").lower(),
                                **item,
                            }
                        )
        finally:
            sink.close()

    async def close(self) -> None:
        await asyncio.gather(
            *(asyncio.to_thread(s.close) for s in self.sessions.values()), return_exceptions=True
        )
        self._environment.close()


def _state_poll(session: HostSession, vm: str) -> Callable[[], HostObservation]:
    def poll() -> HostObservation:
        result = session.poll_vm(vm)
        return HostObservation(
            listed=result.vm is not None,
            state=None if result.vm is None else result.vm.state,
            status=None if result.vm is None else result.vm.status,
            percent_complete=None if result.job is None else result.job.percent_complete,
            job_state=None if result.job is None else result.job.job_state,
            host_time=None if result.host_time is None else result.host_time.isoformat(),
            errors=result.errors,
        )

    return poll
