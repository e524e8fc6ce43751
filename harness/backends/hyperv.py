"""Hyper-V over PowerShell remoting (pypsrp): real hosts and the emulated lab.

One :class:`~harness.psrp_session.HostSession` per host for the whole run (polls,
Get-Date, events); Move-VM on a connection of its own on the source host,
the write-up's rule. Everything blocking runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import queue
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.host_state import HostObservation
from migration_blackout.probes.sink import JsonlSink
from migration_blackout.runformat import HYPERV_EVENTS

from .. import kerberos
from ..clocksync import ClockOffset, sample_clock
from ..config import HostConfig, RunConfig
from ..console import console_poll_function
from ..psrp_session import (
    HostAuthError,
    HostCallError,
    HostError,
    HostFacts,
    HostSession,
    HostUnreachableError,
    MigrationCheck,
    MoveVmCall,
    VmStatus,
    WinEvent,
    listener_hint,
    missing_auth_support,
)
from ..runwriter import RunWriter
from . import MigrationOutcome, PolledSide, PreflightError, Recorder

# Hyper-V's own migration events, harvested after the run.
HARVESTED_EVENTS = (
    ("Microsoft-Windows-Hyper-V-VMMS-Admin", (20415, 20417, 20418)),
    ("Microsoft-Windows-Hyper-V-Worker-Admin", (22507, 22508, 22509)),
)
CLOCK_SAMPLES = 7
HARVEST_MARGIN_S = 2.0
# After Move-VM returned: how long the hosts may take to list the VM where it
# went (the write-up saw Running on the destination as the wizard closed).
POST_CONDITION_DEADLINE_S = 10.0
POST_CONDITION_RETRY_S = 0.2
POST_CONDITION_ROUND_S = 2.0  # the least a round of questions is given to be answered


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
        self.vm_id: str | None = None  # the VM's GUID, from Get-VM on its source
        # What preflight learnt about the hosts, for the manifest's "hyperv" block.
        self.preflight_facts: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "hosts": [h.name for h in self.config.hosts]}

    # -- preflight ------------------------------------------------------------

    async def open(self, record: Recorder) -> None:
        for host in self.config.hosts:
            missing = missing_auth_support(host.auth)
            if missing is not None:
                record("preflight", check="auth_support", host=host.name, ok=False, error=missing)
                raise PreflightError(f"{host.name}: {missing}")
        self._environment.enter_context(kerberos.use_krb5_config(self.config.krb5_config))
        for configured in self.config.hosts:
            if configured.auth == "kerberos":
                await self._kerberos_preflight(configured, record)
        sessions = {
            host.name: HostSession(
                host,
                self._passwords.get(host.name),
                call_timeout_s=self.config.probes.host_call_timeout_s,
                record=record,
            )
            for host in self.config.hosts
        }
        self.sessions.update(sessions)
        results = await asyncio.gather(
            *(asyncio.to_thread(s.open) for s in sessions.values()), return_exceptions=True
        )
        for name, result in zip(sessions, results, strict=True):
            if isinstance(result, HostError):
                hint = None
                if isinstance(result, HostUnreachableError | HostAuthError):
                    hint = await asyncio.to_thread(listener_hint, self.config.host(name))
                message = str(result) if hint is None else f"{result}; {hint}"
                record("preflight", check="connect", host=name, ok=False, error=message, hint=hint)
                raise PreflightError(message)
            if isinstance(result, BaseException):
                raise result
            record("preflight", check="connect", host=name, ok=True)

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
        self.vm_id = vm_status.vm_id
        if vm_status.state != "Running":
            raise PreflightError(f"{source}: VM {vm!r} is {vm_status.state}, not Running")
        if config.destination is not None:
            destination = config.host(config.destination).name
        else:
            destination = next(n for n in names if n != source)
        if destination.lower() == source.lower():
            raise PreflightError(f"{source}: the destination is the source host; pick another host")
        await self._check_migration_setup(source, destination, vm_status, record)
        return source, destination

    async def describe_hosts(self, source: str, destination: str) -> dict[str, Any]:
        """Each host's Windows build (Win32_OperatingSystem, asked in preflight)
        and the VM's memory (Get-VM MemoryAssigned in preflight)."""
        hosts = self.preflight_facts.get("hosts", {})
        vm = self._located
        return {
            "hosts": {
                name: {
                    "os_caption": facts.get("os_caption"),
                    "os_version": facts.get("os_version"),
                    "os_build": (facts.get("os_version") or "").rsplit(".", 1)[-1] or None,
                }
                for name, facts in hosts.items()
            },
            "vm": {
                "name": self.config.vm,
                "memory_bytes": None if vm is None else vm.memory_assigned,
                "memory_source": "Get-VM MemoryAssigned",
            },
        }

    # -- preflight: the domain set-up ------------------------------------------

    async def _check_migration_setup(
        self, source: str, destination: str, vm: VmStatus, record: Recorder
    ) -> None:
        """What live migration needs beyond reaching the hosts, each failure one
        line naming the host and the fix (docs/real-hosts.md has the table):
        live migration enabled and a network for it on both hosts, a
        destination name that Kerberos and the source can use, a destination
        that runs the VM's configuration version, and Compare-VM on the
        source (the second hop: CredSSP or constrained delegation)."""
        names = [source, destination]
        results = await asyncio.gather(
            *(asyncio.to_thread(self.sessions[n].host_facts) for n in names),
            return_exceptions=True,
        )
        facts: dict[str, HostFacts] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, HostError):
                raise PreflightError(f"{result} (while asking for its live migration settings)")
            if isinstance(result, BaseException):
                raise result
            facts[name] = result
            record("preflight", check="vmhost", host=name, **result.to_json())
        self.preflight_facts["hosts"] = {n: f.to_json() for n, f in facts.items()}
        for name in names:
            _check_live_migration(name, facts[name])
        dest_facts = facts[destination]
        destination_name = self.config.host(destination).migration_name
        _check_destination_name(destination, destination_name, dest_facts)

        supported = await self._call(destination, lambda s: s.supported_vm_versions())
        record(
            "preflight",
            check="versions",
            vm_version=vm.version,
            destination=destination,
            supported=None if supported is None else list(supported),
            source_os=facts[source].os_version,
            destination_os=dest_facts.os_version,
        )
        self.preflight_facts["versions"] = {
            "vm": vm.version,
            "destination_supports": None if supported is None else list(supported),
        }
        _check_versions(source, destination, vm, facts, supported)

        migration = self.config.migration
        check = await self._call(
            source,
            lambda s: s.test_migration(
                self.config.vm,
                destination_name,
                include_storage=migration.include_storage,
                destination_storage_path=migration.destination_storage_path,
            ),
        )
        record(
            "preflight", check="compare_vm", host=source, destination=destination, **check.to_json()
        )
        self.preflight_facts["compare_vm"] = check.to_json()
        _check_compare_vm(source, destination, destination_name, check, dest_facts)

    async def _call(self, host: str, call: Callable[[HostSession], T]) -> T:
        try:
            return await asyncio.to_thread(call, self.sessions[host])
        except HostError as exc:
            raise PreflightError(str(exc)) from None

    # -- clocks ---------------------------------------------------------------

    async def align_clocks(
        self,
        phase: str,
        sink: JsonlSink,
        record: Recorder,
        *,
        tolerate_failures: bool,
        deadline_s: float | None = None,
    ) -> dict[str, ClockOffset | None]:
        names = list(self.sessions)

        async def one_host(name: str) -> ClockOffset:
            sampling = asyncio.to_thread(
                sample_clock,
                name,
                self.sessions[name].get_date,
                phase=phase,
                count=CLOCK_SAMPLES,
                sink=sink,
            )
            try:
                return await asyncio.wait_for(sampling, deadline_s)
            except TimeoutError:
                raise HostError(name, f"Get-Date: no answer within {deadline_s:g} s") from None

        async def kept(name: str) -> ClockOffset | BaseException:
            try:
                return await one_host(name)
            except Exception as error:
                return error

        async with asyncio.TaskGroup() as hosts:
            tasks = [hosts.create_task(kept(n)) for n in names]
        results: list[ClockOffset | BaseException] = [task.result() for task in tasks]
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
            PolledSide(
                name=name, role=role(name), poll=_state_poll(session, self.config.vm, self.vm_id)
            )
            for name, session in self.sessions.items()
        ]

    def console_poll(self, source: str) -> Callable[[], Any]:
        holders = [self.sessions[source], *(s for n, s in self.sessions.items() if n != source)]
        return console_poll_function(holders, self.config.vm)

    # -- the migration -------------------------------------------------------

    async def migrate(
        self,
        run: RunWriter,
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
            destination=self.config.host(destination).migration_name,
            include_storage=migration.include_storage,
            destination_storage_path=migration.destination_storage_path,
        )
        deadline = time.monotonic() + timeout_s
        self._started_utc = datetime.now(UTC)

        def blocking() -> MigrationOutcome:
            try:
                call.connect()  # nothing asked of the host yet: still reversible
                if interrupted.is_set():
                    record("move_vm_not_started", host=source, reason="interrupted")
                    return MigrationOutcome("interrupted", "interrupted: Move-VM was not started")
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
                        error_ids=[e.fully_qualified_error_id for e in exc.errors],
                    )
                    return MigrationOutcome("failed", str(exc))
                record("move_vm_return", host=source)
                failure = self._check_where_the_vm_is(source, destination, record)
                if failure is not None:
                    return MigrationOutcome("failed", failure)
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

    def _check_where_the_vm_is(self, source: str, destination: str, record: Recorder) -> str | None:
        """The post-condition of a Move-VM that returned without an error: the VM
        is listed Running on the destination and not on the source. None when
        it holds (within POST_CONDITION_DEADLINE_S), else what was seen."""
        vm = self.config.vm
        deadline = time.monotonic() + POST_CONDITION_DEADLINE_S
        while True:
            seen = self._where_listed(vm, (source, destination), deadline)
            holds = seen[destination] == "Running" and seen[source] == "not listed"
            if holds or time.monotonic() > deadline:
                record("post_condition", vm=vm, holds=holds, seen=seen)
                if holds:
                    return None
                return (
                    f"{source}: Move-VM returned without an error, but VM {vm!r} is "
                    f"{seen[destination]} on {destination} (expected Running) and "
                    f"{seen[source]} on {source} (expected not listed)"
                )
            time.sleep(POST_CONDITION_RETRY_S)  # the hosts' lists are polled, not pushed

    def _where_listed(self, vm: str, hosts: tuple[str, ...], deadline: float) -> dict[str, str]:
        """How each host lists the VM, asked at the same time; a host that has
        not answered by ``deadline`` (or within POST_CONDITION_ROUND_S of being
        asked, if later) is "unknown" (its call is abandoned: a
        hung host's read timeout and reopen would take a minute, and the
        poller may hold its session meanwhile)."""
        answers: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()

        def ask(name: str) -> None:
            try:
                status = self.sessions[name].get_vm(vm)
            except HostError as exc:
                answers.put((name, f"unknown ({exc.reason})"))
            except Exception as exc:  # answered, with something unexpected
                answers.put((name, f"unknown ({type(exc).__name__}: {exc})"))
            else:
                answers.put((name, "not listed" if status is None else status.state))

        for name in hosts:
            threading.Thread(target=ask, args=(name,), name=f"where-is {name}", daemon=True).start()
        seen: dict[str, str] = {}
        while len(seen) < len(hosts):
            try:
                # A round asked near the deadline still gets its answers.
                wait_s = max(deadline - time.monotonic(), POST_CONDITION_ROUND_S)
                name, state = answers.get(timeout=wait_s)
            except queue.Empty:
                break
            seen[name] = state
        for name in hosts:
            seen.setdefault(name, f"unknown (no answer within {POST_CONDITION_DEADLINE_S:g} s)")
        return seen

    # -- afterwards -----------------------------------------------------------

    async def harvest(self, run: RunWriter, record: Recorder, *, deadline_s: float) -> None:
        """Hyper-V's own migration events from both hosts, stored raw; the
        hosts are asked at the same time, each within ``deadline_s`` (a host
        that does not answer gets a ``harvest_failed`` line)."""
        # Only this migration's events: an earlier migration of the same VM (a
        # ping-pong session) wrote the same event IDs minutes ago. The margin
        # covers the clock offsets' uncertainty.
        since = (self._started_utc or datetime.now(UTC)) - timedelta(seconds=HARVEST_MARGIN_S)
        sink = JsonlSink(
            run.raw / "hyperv_events.jsonl",
            probe="hyperv_events",
            meta={"vm": self.config.vm, "vm_id": self.vm_id, "since": since.isoformat()},
        )
        run.register_probe(HYPERV_EVENTS.probe, HYPERV_EVENTS.path, format="jsonl")

        async def one_host(name: str, session: HostSession) -> None:
            # Ask in the host's own time: its clock may be off by seconds.
            query_since = since + timedelta(microseconds=self._offsets.get(name, 0) / 1000)
            for log_name, ids in HARVESTED_EVENTS:
                try:
                    found = await asyncio.to_thread(
                        session.migration_events, log_name, ids, query_since
                    )
                except HostError as exc:
                    sink.write(_harvest_failed(name, log_name, str(exc)))
                    continue
                received = clock_pair()
                for item in found:
                    sink.write(
                        {
                            "event": "win_event",
                            "host": name,
                            "received_mono_ns": received.mono_ns,
                            "received_utc_ns": received.utc_ns,
                            "matches_vm": self._is_about_the_vm(item),
                            **item.to_json(),
                        }
                    )

        async def bounded(name: str, session: HostSession) -> None:
            try:
                async with asyncio.timeout(deadline_s):
                    await one_host(name, session)
            except TimeoutError:
                sink.write(_harvest_failed(name, None, f"no answer within {deadline_s:g} s"))

        try:
            async with asyncio.TaskGroup() as hosts:
                for name, session in self.sessions.items():
                    hosts.create_task(bounded(name, session))
        finally:
            sink.close()

    def _is_about_the_vm(self, event: WinEvent) -> bool:
        """By the event data (the VM's id or name, language-independent); the
        message only when an event carries no data."""
        values = [value.lower() for _, value in event.event_data]
        if values:
            return (self.vm_id or "").lower().strip(
                "{}"
            ) in values or self.config.vm.lower() in values
        return self.config.vm.lower() in (event.message or "").lower()

    async def close(self) -> None:
        await asyncio.gather(
            *(asyncio.to_thread(s.close) for s in self.sessions.values()), return_exceptions=True
        )
        self._environment.close()


def _harvest_failed(host: str, log_name: str | None, error: str) -> dict[str, Any]:
    return {"event": "harvest_failed", "host": host, "log_name": log_name, "error": error}


def _state_poll(session: HostSession, vm: str, vm_id: str | None) -> Callable[[], HostObservation]:
    def poll() -> HostObservation:
        result = session.poll_vm(vm, vm_id)
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


# -- preflight checks: one line naming the host and the fix ---------------------

T = TypeVar("T")
KERBEROS = "kerberos"
CREDSSP = "credssp"
# HRESULTs in a failed migration's message (its text is in the host's language).
NO_CREDENTIALS = "0x8009030e"  # SEC_E_NO_CREDENTIALS
UNKNOWN_CREDENTIALS = "0x8009030d"  # SEC_E_UNKNOWN_CREDENTIALS
NO_SUCH_HOST = "0x80072af9"  # WSAHOST_NOT_FOUND
DELEGATION_FIX = (
    "in Active Directory, on {source}'s computer account: Delegation, \"Trust this computer "
    'for delegation to the specified services only", "Use any authentication protocol", add '
    '"Microsoft Virtual System Migration Service"{cifs} on {destination}'
)


def _check_live_migration(host: str, facts: HostFacts) -> None:
    if facts.migration_enabled is False:
        raise PreflightError(
            f"{host}: live migration is disabled: run Enable-VMMigration on {host} (Hyper-V "
            "Settings > Live Migrations > Enable incoming and outgoing live migrations)"
        )
    if facts.use_any_network is False and not facts.migration_networks:
        raise PreflightError(
            f"{host}: no network may carry live migrations: add one with "
            f"Add-VMMigrationNetwork <subnet> on {host}, or Set-VMHost "
            "-UseAnyNetworkForMigration $true"
        )


def _looks_like_an_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_destination_name(destination: str, name: str, facts: HostFacts) -> None:
    """-DestinationHost must be the destination's own name (its computer name
    or DNS name): Kerberos finds the service by that name, an IP address has
    no service principal."""
    auth = (facts.migration_auth or "").lower()
    if _looks_like_an_address(name):
        if auth == KERBEROS:
            raise PreflightError(
                f"{destination}: Move-VM -DestinationHost would be the address {name}, but "
                f"{destination} authenticates live migrations with Kerberos, which needs its "
                f'name: set computer_name = "{facts.fqdn or facts.computer_name}" for '
                f"{destination}"
            )
        return
    known = {n.lower() for n in (facts.computer_name, facts.fqdn) if n}
    if known and name.lower() not in known and name.split(".")[0].lower() not in known:
        raise PreflightError(
            f"{destination}: Move-VM -DestinationHost would be '{name}', but the host calls "
            f"itself {' / '.join(sorted(n for n in (facts.computer_name, facts.fqdn) if n))}: "
            f'set computer_name = "{facts.fqdn or facts.computer_name}" for {destination} '
            "(a name the source resolves, matching its Kerberos service principal)"
        )


def _check_versions(
    source: str,
    destination: str,
    vm: VmStatus,
    facts: Mapping[str, HostFacts],
    supported: tuple[str, ...] | None,
) -> None:
    """An older destination is caught before the move: the write-up's Windows
    Server 2016 -> 2012 R2 migration failed with "protocol version 6.0 is not
    supported"; a host before 2016 runs VM configuration versions up to 5.0."""
    runs = supported if supported is not None else ("5.0",)
    if vm.version is None or vm.version in runs:
        return
    dest = facts[destination]
    os_text = f"{dest.os_caption or 'Windows'} ({dest.os_version or 'unknown version'})"
    raise PreflightError(
        f"{destination}: {os_text} cannot run VM configuration version {vm.version} "
        f"(it runs {', '.join(runs)}): migrate to a host of {source}'s Windows Server "
        f"version ({facts[source].os_version or 'unknown'}) or newer"
    )


def _check_compare_vm(
    source: str, destination: str, name: str, check: MigrationCheck, dest: HostFacts
) -> None:
    auth = (dest.migration_auth or "").lower()
    for error in check.errors:
        text = error.message.lower()
        if NO_CREDENTIALS in text:
            if auth == CREDSSP:
                fix = (
                    f"{destination} takes CredSSP for live migration, and this session to "
                    f"{source} did not delegate credentials: connect to {source} with "
                    f'auth = "credssp" (Enable-WSManCredSSP on both ends), or switch both hosts '
                    "to Kerberos with constrained delegation (Set-VMHost "
                    "-VirtualMachineMigrationAuthenticationType Kerberos)"
                )
            else:
                fix = DELEGATION_FIX.format(source=source, destination=destination, cifs="")
            raise PreflightError(
                f"{source}: cannot authenticate to {destination} (0x8009030E): {fix}"
            )
        if UNKNOWN_CREDENTIALS in text:
            fix = DELEGATION_FIX.format(
                source=source, destination=destination, cifs=' (and "cifs" to move storage)'
            )
            raise PreflightError(
                f"{source}: cannot authenticate to {destination} (0x8009030D): {fix}"
            )
        if NO_SUCH_HOST in text:
            raise PreflightError(
                f"{source}: cannot resolve '{name}': set computer_name for {destination} to a "
                f"name {source} resolves (its DNS name)"
            )
    if check.errors:
        raise PreflightError(
            f"{source}: Compare-VM -DestinationHost {name} failed: "
            + "; ".join(e.message for e in check.errors)
        )
    if check.incompatibilities:
        raise PreflightError(
            f"{source}: the VM is not compatible with {destination}: "
            + "; ".join(check.incompatibilities)
        )
