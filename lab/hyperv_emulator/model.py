"""The emulated Hyper-V lab: hosts, the VM, and the live-migration timeline.

Pure of any transport: the WinRM/PSRP layer (``server``, ``psrp``,
``cmdlets``) reads snapshots from a :class:`Lab` and calls
:meth:`Lab.move_vm`. Time comes from a :class:`LabClock` (real asyncio time by
default) and every random duration from one ``random.Random(seed)``, so a
seed and a config reproduce the same timeline.

The migration follows what the project's write-up observed on real hosts
(the shared ``DOMAIN.md``):

1. pre-copy (brownout): the VM keeps running on the source, the migration
   job's PercentComplete rises to 80; its length grows with memory size and
   with the guest's dirty rate;
2. stop-and-copy (blackout starts): the source shows the VM ``Paused`` and the
   guest is frozen;
3. the VM is listed on neither host;
4. the VM is listed ``Running`` on the destination, the guest thaws (blackout
   ends), progress jumps to 95;
5. Move-VM returns a moment later; separately, after a network-reconvergence
   delay, the guest's network is restored.

Every state change lands in the ground-truth log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import fnmatch
import random
import re
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from migration_blackout.lab.hyperv_emulator import groundtruth as gt
from migration_blackout.lab.hyperv_emulator import messages
from migration_blackout.lab.hyperv_emulator.screen import ConsoleScreen
from migration_blackout.lab.kerberos import KerberosSettings
from migration_blackout.probes.clock import ClockPair, clock_pair

DEFAULT_SOURCE_HOST = "WS16TP4DM1VML1b"
DEFAULT_DESTINATION_HOST = "WS16TP4DM2VML1b"
DEFAULT_VM_NAME = "HVSW10Home"
# The lab's DNS domain: a host's FQDN is <name>.lab.test (a reserved TLD).
DNS_DOMAIN = "lab.test"

GIB = 1024**3
MIB = 1024**2
PAGE_BYTES = 4096

VMMS_LOG = "Microsoft-Windows-Hyper-V-VMMS-Admin"
VMMS_PROVIDER = "Microsoft-Windows-Hyper-V-VMMS"
WORKER_LOG = "Microsoft-Windows-Hyper-V-Worker-Admin"
WORKER_PROVIDER = "Microsoft-Windows-Hyper-V-Worker"
# Failed live migrations are reported by the Hyper-V-High-Availability
# provider in the System log (event 21502, as seen on real hosts).
HA_LOG = "System"
HA_PROVIDER = "Microsoft-Windows-Hyper-V-High-Availability"

# What an older host (Windows Server 2012 R2, as the write-up's failing
# destination) and a Windows Server 2016 host report about themselves.
OS_2016 = ("10.0.14393", "Microsoft Windows Server 2016 Datacenter")
OS_2012R2 = ("6.3.9600", "Microsoft Windows Server 2012 R2 Datacenter")
VM_VERSIONS_2016 = ("5.0", "6.2", "7.0", "7.1", "8.0")
VM_VERSION = "8.0"  # the VM's configuration version (Get-VM's Version)
MIGRATION_AUTH = ("credssp", "kerberos")  # Set-VMHost -VirtualMachineMigrationAuthenticationType


class VmState(enum.IntEnum):
    """``Microsoft.HyperV.PowerShell.VMState`` with its real numeric values."""

    Other = 1
    Running = 2
    Off = 3
    Stopping = 4
    Saved = 6
    Paused = 9
    Starting = 10
    Reset = 11
    Saving = 32773
    Pausing = 32776
    Resuming = 32777
    FastSaved = 32779
    FastSaving = 32780
    ForceShutdown = 32781
    ForceReboot = 32782
    RunningCritical = 32783
    OffCritical = 32784
    StoppingCritical = 32785
    SavedCritical = 32786
    PausedCritical = 32787
    StartingCritical = 32788
    ResetCritical = 32789
    SavingCritical = 32790
    PausingCritical = 32791
    ResumingCritical = 32792
    FastSavedCritical = 32793
    FastSavingCritical = 32794


class JobState(enum.IntEnum):
    """``CIM_ConcreteJob.JobState`` values (Msvm_MigrationJob inherits them)."""

    New = 2
    Starting = 3
    Running = 4
    Suspended = 5
    ShuttingDown = 6
    Completed = 7
    Terminated = 8
    Killed = 9
    Exception = 10
    Service = 11


class EventLevel(enum.IntEnum):
    """Windows event levels and the LevelDisplayName each shows."""

    Critical = 1
    Error = 2
    Warning = 3
    Information = 4


# --------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Span:
    """A duration in seconds: fixed (``high_s`` None) or uniform in [low_s, high_s]."""

    low_s: float
    high_s: float | None = None

    def __post_init__(self) -> None:
        if self.low_s < 0 or (self.high_s is not None and self.high_s < self.low_s):
            raise ValueError(f"invalid span {self.low_s}..{self.high_s} s")

    def draw(self, rng: random.Random) -> float:
        if self.high_s is None:
            return self.low_s
        return rng.uniform(self.low_s, self.high_s)


@dataclass(frozen=True)
class MigrationTiming:
    """How long each phase of a live migration takes.

    Pre-copy lasts ``precopy_overhead + memory / (transfer_rate - dirty_rate)``
    seconds (plus the disk at ``transfer_rate`` with ``-IncludeStorage``): the
    classic geometric series of re-sending pages the guest dirties while they
    are copied. The blackout is ``paused_listed + unlisted``.
    """

    transfer_rate_bytes_per_s: float = 125e6  # 1 Gb/s migration network
    dirty_rate_bytes_per_s: float = 10e6
    precopy_overhead: Span = Span(1.0, 2.0)
    # Source lists the VM as Paused (guest frozen) before it vanishes.
    paused_listed: Span = Span(1.0, 2.0)
    # The VM is listed on neither host.
    unlisted: Span = Span(0.5, 1.5)
    # From resume on the destination until Move-VM returns.
    completion: Span = Span(0.5, 1.0)
    # From resume until the guest's network path works again.
    network_reconvergence: Span = Span(1.0, 3.0)
    # Inbound (to the guest) and outbound (from it) may come back apart, each
    # this long after the resume; None: with network_reconvergence. The guest
    # answers pings again (network_restored) once both are back.
    reconvergence_in: Span | None = None
    reconvergence_out: Span | None = None
    # During pre-copy the guest's dirtying workload runs and the guest keeps
    # this share of one CPU (the brownout); 1.0 or more: no brownout.
    precopy_cpu_share: float = 0.2
    # Time to negotiate with the destination before an incompatibility shows.
    negotiation: Span = Span(0.2, 0.5)
    # Hyper-V writes 20417 instead of a plain 20415 above this blackout.
    critical_blackout_s: float = 5.0
    # The console after resume (the write-up's F-H, lab/hyperv_emulator/thumbnail.py):
    # "Connecting to <vm>..." this long, then black this long, then the desktop.
    console_connecting: Span = Span(0.5, 1.5)
    console_black_after_connecting: Span = Span(0.5, 1.5)

    def __post_init__(self) -> None:
        if not self.precopy_cpu_share > 0:
            raise ValueError("precopy_cpu_share must be above 0 (1: no brownout)")
        if self.dirty_rate_bytes_per_s >= self.transfer_rate_bytes_per_s:
            raise ValueError(
                "dirty rate must be below the transfer rate or pre-copy never converges"
            )


@dataclass(frozen=True)
class HostConfig:
    name: str
    # Added to the host's wall clock (Get-Date, event TimeCreated), seconds.
    clock_offset_s: float = 0.0
    # The host's time zone, as its DateTime values show it (+540 for Japan).
    utc_offset_minutes: int = 0
    # An older Hyper-V generation (e.g. 2012 R2): migrations *to* it fail with
    # the protocol-version error; it reports OS 6.3.9600 and knows no
    # Get-VMHostSupportedVersion (VM configuration versions up to 5.0).
    older_version: bool = False
    # Every Hyper-V cmdlet on this host is refused (user not in Hyper-V Administrators).
    access_denied: bool = False
    # The host's display language: event, error and status texts (messages.py).
    culture: str = messages.EN_US
    # Get-VMHost VirtualMachineMigrationEnabled (Enable-VMMigration).
    migration_enabled: bool = True
    # Get-VMHost VirtualMachineMigrationAuthenticationType: how this host
    # authenticates *incoming* live migrations, "credssp" or "kerberos".
    migration_auth: str = "kerberos"
    # This host's computer account is trusted for constrained delegation ("use
    # any authentication protocol") to the other host's Microsoft Virtual
    # System Migration Service and cifs: its Kerberos second hop works from a
    # remote session.
    delegation: bool = True
    # Get-VMHost MaximumVirtualMachineMigrations, UseAnyNetworkForMigration;
    # Get-VMMigrationNetwork subnets.
    max_migrations: int = 2
    use_any_network: bool = True
    migration_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        messages.check_culture(self.culture)
        if self.migration_auth not in MIGRATION_AUTH:
            raise ValueError(
                f"{self.name}: migration_auth must be credssp or kerberos, "
                f"not {self.migration_auth!r}"
            )

    @property
    def os(self) -> tuple[str, str]:
        """(Win32_OperatingSystem.Version, Caption)."""
        return OS_2012R2 if self.older_version else OS_2016

    @property
    def supported_vm_versions(self) -> tuple[str, ...]:
        return ("5.0",) if self.older_version else VM_VERSIONS_2016


@dataclass(frozen=True)
class VmConfig:
    name: str = DEFAULT_VM_NAME
    host: str = DEFAULT_SOURCE_HOST
    memory_bytes: int = 2 * GIB
    disk_bytes: int = 32 * GIB
    uptime_at_start_s: float = 3600.0


@dataclass(frozen=True)
class UnresponsiveFault:
    """A host that stops answering HTTP.

    ``mode``: ``hang`` keeps requests open without answering, ``close``
    closes each connection without a response. ``after_event`` is a
    ground-truth event name that triggers the fault (None: from the start).
    """

    host: str
    mode: Literal["hang", "close"] = "hang"
    after_event: str | None = None
    # The host answers again after this many seconds (None: never).
    duration_s: float | None = None


@dataclass(frozen=True)
class FaultConfig:
    # Pre-copy fails at this PercentComplete (0-80) and rolls back.
    fail_midway_at_percent: float | None = None
    # The VM exists on no host.
    vm_missing: bool = False
    unresponsive: tuple[UnresponsiveFault, ...] = ()
    # The VM lands on the destination and is turned off there just before
    # Move-VM returns (without an error): only a post-condition catches it.
    vm_off_after_landing: bool = False


def default_hosts() -> tuple[HostConfig, ...]:
    return (HostConfig(DEFAULT_SOURCE_HOST), HostConfig(DEFAULT_DESTINATION_HOST))


@dataclass(frozen=True)
class LabConfig:
    hosts: tuple[HostConfig, ...] = field(default_factory=default_hosts)
    vm: VmConfig = field(default_factory=VmConfig)
    timing: MigrationTiming = field(default_factory=MigrationTiming)
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    domain: str = "LAB"
    username: str = "harness"
    # None: a random password is generated for the run.
    password: str | None = None
    # Which HTTP auth schemes the hosts accept: "basic", "negotiate" (NTLM, and
    # Kerberos with the lab's KDC), "credssp" (off by default, as on Windows).
    auth_methods: frozenset[str] = frozenset({"basic", "negotiate"})
    bind_address: str = "127.0.0.1"
    # HTTPS with a self-signed certificate made for the lab (LabHosts.ca_path).
    tls: bool = False
    # Fixed ports per host name; absent or 0: ephemeral.
    ports: tuple[tuple[str, int], ...] = ()
    # None: a file in a temporary directory removed when the lab stops.
    ground_truth_path: Path | None = None
    # Longest a Receive is held before the OperationTimeout fault, whatever
    # the client asked for (None: honour the client's OperationTimeout).
    receive_timeout_cap_s: float | None = None
    # The lab's domain controller (lab.kerberos): a real KDC the hosts trust.
    kerberos: KerberosSettings = field(default_factory=KerberosSettings)
    # Where the KDC keeps its state (None: in the lab's temporary directory).
    kerberos_dir: Path | None = None

    def __post_init__(self) -> None:
        names = [h.name.lower() for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError("host names must be unique")
        if self.vm.host.lower() not in names:
            raise ValueError(f"VM host {self.vm.host!r} is not one of the lab hosts")
        unknown = set(self.auth_methods) - {"basic", "negotiate", "credssp"}
        if unknown:
            raise ValueError(f"unknown auth methods {sorted(unknown)}")
        for fault in self.faults.unresponsive:
            if fault.host.lower() not in names:
                raise ValueError(f"unresponsive fault names unknown host {fault.host!r}")


# --------------------------------------------------------------------------
# Collaborators


class LabClock(Protocol):
    """Where the model reads time and waits. Monotonic for waiting."""

    def now(self) -> ClockPair: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> ClockPair:
        return clock_pair()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GuestControl(Protocol):
    """The migrated guest, as the lab drives it.

    ``freeze``: the guest stops executing and answering (blackout starts).
    ``thaw``: the guest runs again, on the destination (blackout ends); its
    network may still be unreachable. ``network_restored``: the network path
    to the guest works again. Each returns the moment it took effect (for the
    network: when ICMP echo stopped or started being answered).
    ``link_edge()``: where the guest's other traffic is darkened separately
    (the netns guest's link filter), the monotonic clock before and after the
    latest change of it, else None; recorded in the ground truth beside the
    echo edge.
    """

    async def freeze(self) -> ClockPair: ...

    async def thaw(self) -> ClockPair: ...

    async def network_restored(self) -> ClockPair: ...

    async def link_restored(self, direction: str) -> ClockPair:
        """Only ``direction`` (``inbound`` or ``outbound``) works again; the
        rest waits for ``network_restored``."""
        ...

    async def brownout_start(self, cpu_share: float) -> ClockPair | None:
        """Pre-copy slows the guest to ``cpu_share`` of a CPU (None: cannot here)."""
        ...

    async def brownout_end(self) -> ClockPair | None: ...

    def link_edge(self) -> tuple[int, int] | None: ...


class InMemoryGuest:
    """A guest that only remembers what was done to it (for tests and dry runs)."""

    def __init__(self) -> None:
        self.frozen = False
        self.network_up = True
        self.calls: list[tuple[str, ClockPair]] = []

    async def freeze(self) -> ClockPair:
        self.frozen = True
        self.network_up = False
        return self._note("freeze")

    async def thaw(self) -> ClockPair:
        self.frozen = False
        return self._note("thaw")

    async def network_restored(self) -> ClockPair:
        self.network_up = True
        return self._note("network_restored")

    async def link_restored(self, direction: str) -> ClockPair:
        return self._note(f"{direction}_restored")

    async def brownout_start(self, cpu_share: float) -> ClockPair | None:
        return self._note("brownout_start")

    async def brownout_end(self) -> ClockPair | None:
        return self._note("brownout_end")

    def link_edge(self) -> tuple[int, int] | None:
        return None

    def _note(self, what: str) -> ClockPair:
        stamp = clock_pair()
        self.calls.append((what, stamp))
        return stamp


# --------------------------------------------------------------------------
# Errors raised by lab operations. Messages are the texts Hyper-V shows;
# the cmdlet layer turns them into ErrorRecords.


class HyperVError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VmNotFoundError(HyperVError):
    def __init__(self, name: str, culture: str = messages.EN_US) -> None:
        super().__init__(messages.text(culture, "vm_not_found", name=name))
        self.name = name


class AccessDeniedError(HyperVError):
    def __init__(self, host: str, culture: str = messages.EN_US) -> None:
        super().__init__(messages.text(culture, "access_denied", host=host))
        self.host = host


class InvalidStateError(HyperVError):
    def __init__(self, culture: str = messages.EN_US) -> None:
        super().__init__(messages.text(culture, "invalid_state"))


class MigrationFailedError(HyperVError):
    """A Move-VM that failed; the VM stays (or is back) on its source."""


class SecondHopRefused(Exception):
    """The source host could not authenticate to the destination on the user's
    behalf. ``message_key``: which of Windows' failures (messages.py);
    ``details``: what the KDC or the destination said, for the ground truth."""

    def __init__(self, message_key: str, details: dict[str, Any]) -> None:
        super().__init__(message_key)
        self.message_key = message_key
        self.details = details


# How the source host reaches a destination for the session's user, with the
# lab's KDC: returns what to record, raises SecondHopRefused
# (HostServer.reach_for builds it from the session's authentication).
ReachDestination = Callable[[str], Coroutine[Any, Any, dict[str, Any]]]


def migration_failed_text(
    vm_name: str, source: str, vm_id: uuid.UUID, reason: str, culture: str = messages.EN_US
) -> str:
    return messages.text(
        culture,
        "migration_failed",
        vm=vm_name,
        source=source,
        vm_id=str(vm_id).upper(),
        reason=reason,
    )


# --------------------------------------------------------------------------
# Runtime state and the snapshots handed to the cmdlet layer


@dataclass(frozen=True)
class VmView:
    name: str
    vm_id: uuid.UUID
    state: VmState
    status: str
    computer_name: str
    uptime_s: float
    memory_assigned: int


@dataclass(frozen=True)
class HostEvent:
    """One event-log record on a host; ``time_created_ns`` is on the host's clock."""

    record_id: int
    log_name: str
    provider_name: str
    event_id: int
    level: EventLevel
    time_created_ns: int
    machine_name: str
    message: str
    properties: tuple[Any, ...]


@dataclass(frozen=True)
class JobView:
    instance_id: str
    vm_name: str
    vm_id: uuid.UUID
    source: str
    destination: str
    job_state: JobState
    percent_complete: int
    elapsed_s: float
    start_time_ns: int
    error_description: str


@dataclass
class _Vm:
    name: str
    vm_id: uuid.UUID
    memory_bytes: int
    disk_bytes: int
    host: str | None
    booted_mono_ns: int
    state: VmState = VmState.Running
    # Get-VM's Status: None "Operating normally", else "Migrating (n% complete)".
    migrating_percent: int | None = None
    migrating: bool = False


@dataclass
class _Job:
    instance_id: str
    vm: _Vm
    source: str
    destination: str
    started_mono_ns: int
    start_time_ns: int
    precopy_s: float
    state: JobState = JobState.Running
    # None while pre-copy runs (percent follows the clock), else fixed.
    fixed_percent: int | None = None
    finished_mono_ns: int | None = None
    error_description: str = ""

    def percent(self, now_mono_ns: int) -> int:
        if self.fixed_percent is not None:
            return self.fixed_percent
        elapsed = (now_mono_ns - self.started_mono_ns) / 1e9
        return min(80, int(80 * elapsed / self.precopy_s)) if self.precopy_s > 0 else 80


@dataclass
class _Host:
    config: HostConfig
    events: list[HostEvent] = field(default_factory=list)
    responsive: asyncio.Event = field(default_factory=asyncio.Event)
    unresponsive_mode: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class _MigrationPlan:
    precopy_s: float
    paused_listed_s: float
    unlisted_s: float
    completion_s: float
    network_reconvergence_s: float
    negotiation_s: float
    reconvergence_in_s: float | None = None
    reconvergence_out_s: float | None = None


Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

_WILDCARD_CHARS = re.compile(r"[*?\[]")


class Lab:
    """Shared state of every emulated host; all methods run on the lab's event loop."""

    def __init__(
        self,
        config: LabConfig,
        *,
        guest: GuestControl,
        ground_truth: gt.GroundTruthLog,
        spawn: Spawn,
        clock: LabClock | None = None,
    ) -> None:
        self.config = config
        self._guest = guest
        self._gt = ground_truth
        self._spawn = spawn
        self._clock: LabClock = clock or RealClock()
        self._rng = random.Random(config.seed)
        self._hosts = {h.name.lower(): _Host(h) for h in config.hosts}
        for host in self._hosts.values():
            host.responsive.set()
        self._fired_faults: set[UnresponsiveFault] = set()
        self._jobs: list[_Job] = []
        self._brownout = False  # the guest is slowed by pre-copy now
        self.console = ConsoleScreen(
            vm_name=config.vm.name,
            connecting=config.timing.console_connecting,
            black_after_connecting=config.timing.console_black_after_connecting,
            seed=config.seed,
            clock=self._clock,
            record=self._record,
            spawn=spawn,
        )
        self._record_ids = 0
        now = self._clock.now()
        vm_cfg = config.vm
        self._vm: _Vm | None = None
        if not config.faults.vm_missing:
            self._vm = _Vm(
                name=vm_cfg.name,
                vm_id=uuid.UUID(int=self._rng.getrandbits(128), version=4),
                memory_bytes=vm_cfg.memory_bytes,
                disk_bytes=vm_cfg.disk_bytes,
                host=self._hosts[vm_cfg.host.lower()].name,
                booted_mono_ns=now.mono_ns - int(vm_cfg.uptime_at_start_s * 1e9),
            )
        for fault in config.faults.unresponsive:
            if fault.after_event is None:
                self._make_unresponsive(fault)

    # ---- hosts and clocks -------------------------------------------------

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self._hosts.values()]

    def host(self, name: str) -> _Host:
        return self._hosts[name.lower()]

    def find_host(self, name: str) -> _Host | None:
        """A host by name, case-insensitive; an FQDN matches by its first label."""
        key = name.lower()
        if key in self._hosts:
            return self._hosts[key]
        return self._hosts.get(key.split(".", 1)[0])

    def host_time_ns(self, host_name: str, stamp: ClockPair | None = None) -> int:
        """The host's wall clock in ns since the epoch (its configured offset applied)."""
        when = stamp if stamp is not None else self._clock.now()
        return when.utc_ns + int(self.host(host_name).config.clock_offset_s * 1e9)

    def fqdn(self, host_name: str) -> str:
        """The host's DNS name in the lab's domain (Get-VMHost FullyQualifiedDomainName)."""
        return f"{self.host(host_name).name}.{DNS_DOMAIN}"

    def host_utc_offset(self, host_name: str) -> datetime.timedelta:
        return datetime.timedelta(minutes=self.host(host_name).config.utc_offset_minutes)

    def culture(self, host_name: str) -> str:
        """The host's display language (messages.py)."""
        return self.host(host_name).config.culture

    def text(self, host_name: str, key: str, **values: Any) -> str:
        """``messages.text`` in the host's language."""
        return messages.text(self.culture(host_name), key, **values)

    def check_access(self, host_name: str) -> None:
        host = self.host(host_name)
        if host.config.access_denied:
            raise AccessDeniedError(host.name, host.config.culture)

    # ---- responsiveness ----------------------------------------------------

    def unresponsive_mode(self, host_name: str) -> str | None:
        return self.host(host_name).unresponsive_mode

    async def wait_responsive(self, host_name: str) -> None:
        await self.host(host_name).responsive.wait()

    def set_unresponsive(self, host_name: str, mode: Literal["hang", "close"]) -> None:
        """Make a host stop answering HTTP from now on (``hang`` or ``close``)."""
        self._make_unresponsive(UnresponsiveFault(host_name, mode))

    def set_responsive(self, host_name: str) -> None:
        host = self.host(host_name)
        host.unresponsive_mode = None
        host.responsive.set()

    def release_all(self) -> None:
        """Wake every held request (lab shutdown)."""
        for host in self._hosts.values():
            host.responsive.set()

    def _make_unresponsive(self, fault: UnresponsiveFault) -> None:
        host = self.host(fault.host)
        host.unresponsive_mode = fault.mode
        host.responsive.clear()
        self._gt.record(
            gt.HOST_UNRESPONSIVE, host=host.name, mode=fault.mode, duration_s=fault.duration_s
        )
        if fault.duration_s is not None:
            self._spawn(self._recover(host.name, fault.duration_s))

    async def _recover(self, host_name: str, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        self.set_responsive(host_name)
        self._gt.record(gt.HOST_RESPONSIVE, host=host_name)

    def _record(self, event: str, stamp: ClockPair | None = None, **details: Any) -> ClockPair:
        when = self._gt.record(event, stamp, **details)
        for fault in self.config.faults.unresponsive:
            if fault.after_event == event and fault not in self._fired_faults:
                self._fired_faults.add(fault)
                self._make_unresponsive(fault)
        return when

    # ---- queries -----------------------------------------------------------

    def vms_on(self, host_name: str) -> list[VmView]:
        vm = self._vm
        host = self.host(host_name)
        if vm is None or vm.host != host.name:
            return []
        now = self._clock.now()
        return [
            VmView(
                name=vm.name,
                vm_id=vm.vm_id,
                state=vm.state,
                status=self.text(host.name, "status_ok")
                if vm.migrating_percent is None
                else self.text(host.name, "status_migrating", percent=vm.migrating_percent),
                computer_name=host.name,
                uptime_s=max(0.0, (now.mono_ns - vm.booted_mono_ns) / 1e9),
                memory_assigned=vm.memory_bytes,
            )
        ]

    def get_vms(self, host_name: str, names: list[str] | None) -> tuple[list[VmView], list[str]]:
        """Get-VM semantics: (matching VMs, literal names that matched nothing).

        Names with wildcard characters that match nothing are not errors, as
        with any PowerShell cmdlet taking wildcards.
        """
        self.check_access(host_name)
        listed = self.vms_on(host_name)
        if names is None:
            return listed, []
        found: list[VmView] = []
        missing: list[str] = []
        for pattern in names:
            if _WILDCARD_CHARS.search(pattern):
                matches = [
                    v for v in listed if fnmatch.fnmatchcase(v.name.lower(), pattern.lower())
                ]
            else:
                matches = [v for v in listed if v.name.lower() == pattern.lower()]
                if not matches:
                    missing.append(pattern)
            found.extend(m for m in matches if m not in found)
        return found, missing

    def events_on(self, host_name: str) -> list[HostEvent]:
        return list(self.host(host_name).events)

    def jobs_on(self, host_name: str) -> list[JobView]:
        now = self._clock.now().mono_ns
        host = self.host(host_name)
        views = []
        for job in self._jobs:
            if job.source != host.name:
                continue
            end = job.finished_mono_ns if job.finished_mono_ns is not None else now
            views.append(
                JobView(
                    instance_id=job.instance_id,
                    vm_name=job.vm.name,
                    vm_id=job.vm.vm_id,
                    source=job.source,
                    destination=job.destination,
                    job_state=job.state,
                    percent_complete=job.percent(now),
                    elapsed_s=(end - job.started_mono_ns) / 1e9,
                    start_time_ns=job.start_time_ns,
                    error_description=job.error_description,
                )
            )
        return views

    # ---- Move-VM -----------------------------------------------------------

    async def move_vm(
        self,
        host_name: str,
        vm_name: str,
        destination: str,
        *,
        include_storage: bool = False,
        storage_path: str | None = None,
        reach: ReachDestination | None = None,
        delegated_credentials: bool = False,
    ) -> None:
        """Live-migrate ``vm_name`` from ``host_name`` to ``destination``.

        Returns when Move-VM would return. Raises a :class:`HyperVError` on
        failure. Cancelled during pre-copy, the migration rolls back (VM stays
        on the source); cancelled later, it completes first and then the
        cancellation propagates. ``delegated_credentials``: the remote session
        that runs Move-VM delegated the user's credentials (CredSSP); ``reach``:
        how the source authenticates to the destination for that session with
        the lab's KDC (None: the lab has none; :meth:`second_hop_failure` then
        decides from lab.toml alone).
        """
        try:
            source, vm, dest = self._validate_move(host_name, vm_name, destination)
        except HyperVError as error:
            self._record(
                gt.MOVE_VM_FAILED,
                vm=vm_name,
                source_host=host_name,
                destination_host=destination,
                reason=error.message,
            )
            raise
        hop_failure, hop = await self.second_hop(
            source, dest, delegated_credentials=delegated_credentials, reach=reach
        )
        plan = self._plan(vm, include_storage=include_storage)
        vm.migrating = True
        now = self._clock.now()
        job = _Job(
            instance_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)).upper(),
            vm=vm,
            source=source.name,
            destination=dest.name,
            started_mono_ns=now.mono_ns,
            start_time_ns=self.host_time_ns(source.name, now),
            precopy_s=plan.precopy_s,
        )
        self._jobs.append(job)
        vm.migrating_percent = 0
        details = {"vm": vm.name, "source_host": source.name, "destination_host": dest.name}
        self._record(
            gt.MIGRATION_START,
            now,
            **details,
            include_storage=include_storage,
            storage_path=storage_path,
            planned=dataclasses.asdict(plan),
            # How the source authenticated to the destination for the caller
            # (with the lab's KDC: the tickets, or what the KDC refused).
            **({} if hop is None else {"second_hop": hop}),
        )
        try:
            await self._precopy(
                job, dest, plan, details, hop_failure, include_storage=include_storage
            )
        except asyncio.CancelledError:
            await self._end_brownout(details)
            self._roll_back(job, JobState.Terminated, self.text(source.name, "cancelled"), details)
            raise
        except BaseException:
            await self._end_brownout(details)
            raise
        switchover = self._spawn(self._switchover(job, dest, plan, details))
        try:
            await asyncio.shield(switchover)
        except asyncio.CancelledError:
            # Past the point of no return: let the VM land, then stop.
            await switchover
            raise

    def _validate_move(
        self, host_name: str, vm_name: str, destination: str
    ) -> tuple[_Host, _Vm, _Host]:
        self.check_access(host_name)
        source = self.host(host_name)
        culture = source.config.culture
        vm = self._vm
        if vm is None or vm.name.lower() != vm_name.lower() or vm.host is None:
            raise VmNotFoundError(vm_name, culture)

        def failed(key: str, host: str) -> MigrationFailedError:
            reason = messages.text(culture, key, host=host)
            return MigrationFailedError(
                migration_failed_text(vm.name, source.name, vm.vm_id, reason, culture)
            )

        if vm.host != source.name:
            # Started on a host that is not the VM's source (seen in the write-up).
            raise failed("not_the_source", destination)
        if vm.migrating or vm.state != VmState.Running:
            raise InvalidStateError(culture)
        dest = self.find_host(destination)
        if dest is None:
            raise failed("no_such_host", destination)
        if dest is source:
            raise failed("already_there", dest.name)
        return source, vm, dest

    def second_hop_failure(
        self, source: _Host, dest: _Host, *, delegated_credentials: bool
    ) -> str | None:
        """Why the source cannot open a migration connection to ``dest`` from a
        remote session, in the source's language; None when it can.

        As Windows decides it (docs/lab.md, "The second hop"): migration must
        be enabled on both hosts; the destination's
        VirtualMachineMigrationAuthenticationType says how it authenticates
        incoming migrations. CredSSP needs the user's own credentials on the
        source, which a remote session has only when it delegated them
        (0x8009030E otherwise). Kerberos needs the source's computer account
        to be trusted for constrained delegation to the destination's
        services, and then works whatever the client authenticated with
        (0x8009030E as well otherwise: Microsoft's virtualization blog and
        TechGenix quote that code for Kerberos without the right delegation).
        """
        culture = source.config.culture
        disabled = self._migration_disabled(source, dest)
        if disabled is not None:
            return disabled
        if dest.config.migration_auth == "credssp" and not delegated_credentials:
            return messages.text(culture, "no_credentials", host=dest.name)
        if dest.config.migration_auth == "kerberos" and not source.config.delegation:
            return messages.text(culture, "no_credentials", host=dest.name)
        return None

    def _migration_disabled(self, source: _Host, dest: _Host) -> str | None:
        for host in (source, dest):
            if not host.config.migration_enabled:
                return messages.text(source.config.culture, "migration_disabled", host=host.name)
        return None

    async def second_hop(
        self,
        source: _Host,
        dest: _Host,
        *,
        delegated_credentials: bool,
        reach: ReachDestination | None,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """(why the source cannot reach ``dest`` for this session, None when it
        can; what the lab's KDC said, None without one).

        With the lab's KDC (``reach``) real tickets decide: the source gets one
        for the destination's migration service on the user's behalf, or the
        KDC refuses (lab.hyperv_emulator.gss). Without it, :meth:`second_hop_failure`
        decides from lab.toml.
        """
        if reach is None:
            failure = self.second_hop_failure(
                source, dest, delegated_credentials=delegated_credentials
            )
            return failure, None
        disabled = self._migration_disabled(source, dest)
        if disabled is not None:
            return disabled, None
        try:
            return None, await reach(dest.name)
        except SecondHopRefused as refused:
            text = messages.text(source.config.culture, refused.message_key, host=dest.name)
            return text, refused.details

    async def compare_vm(
        self,
        host_name: str,
        vm_name: str,
        destination: str,
        *,
        delegated_credentials: bool = False,
        reach: ReachDestination | None = None,
    ) -> list[str]:
        """Compare-VM -Name ``vm_name`` -DestinationHost ``destination`` on
        ``host_name``: the incompatibilities (empty: none). Reaches the
        destination as Move-VM does, so a missing second hop, migration
        disabled or an older destination raise the same errors; nothing moves."""
        source, vm, dest = self._validate_move(host_name, vm_name, destination)
        culture = source.config.culture
        hop, _ = await self.second_hop(
            source, dest, delegated_credentials=delegated_credentials, reach=reach
        )
        if hop is None and dest.config.older_version:
            hop = messages.text(culture, "protocol_version", host=dest.name)
        if hop is not None:
            raise MigrationFailedError(
                migration_failed_text(vm.name, source.name, vm.vm_id, hop, culture)
            )
        return []

    def _plan(self, vm: _Vm, *, include_storage: bool) -> _MigrationPlan:
        timing = self.config.timing
        rng = self._rng
        memory_s = vm.memory_bytes / (
            timing.transfer_rate_bytes_per_s - timing.dirty_rate_bytes_per_s
        )
        storage_s = vm.disk_bytes / timing.transfer_rate_bytes_per_s if include_storage else 0.0
        # Drawn in a fixed order so a seed reproduces the timeline.
        overhead = timing.precopy_overhead.draw(rng)
        return _MigrationPlan(
            precopy_s=overhead + memory_s + storage_s,
            paused_listed_s=timing.paused_listed.draw(rng),
            unlisted_s=timing.unlisted.draw(rng),
            completion_s=timing.completion.draw(rng),
            network_reconvergence_s=timing.network_reconvergence.draw(rng),
            negotiation_s=timing.negotiation.draw(rng),
            # Drawn last and only when asked for: a seed's timeline without
            # them stays what it was.
            reconvergence_in_s=None
            if timing.reconvergence_in is None
            else timing.reconvergence_in.draw(rng),
            reconvergence_out_s=None
            if timing.reconvergence_out is None
            else timing.reconvergence_out.draw(rng),
        )

    async def _precopy(
        self,
        job: _Job,
        dest: _Host,
        plan: _MigrationPlan,
        details: dict[str, Any],
        hop: str | None,
        *,
        include_storage: bool,
    ) -> None:
        vm = job.vm
        source = self.host(job.source)
        culture = source.config.culture

        def fail(reason: str) -> MigrationFailedError:
            self._roll_back(job, JobState.Exception, reason, details)
            return MigrationFailedError(
                migration_failed_text(vm.name, job.source, vm.vm_id, reason, culture)
            )

        # Connecting to the destination: authentication (``hop``: why the
        # second hop fails, see second_hop), then the protocol.
        if hop is not None or dest.config.older_version:
            await self._clock.sleep(plan.negotiation_s)
            raise fail(hop or messages.text(culture, "protocol_version", host=dest.name))

        share = self.config.timing.precopy_cpu_share
        if share < 1.0:
            started = await self._guest.brownout_start(share)
            if started is not None:
                self._brownout = True
                self._record(gt.BROWNOUT_START, started, **details, cpu_share=share)
        fail_at = self.config.faults.fail_midway_at_percent
        precopy_end = plan.precopy_s
        if fail_at is not None:
            precopy_end = plan.precopy_s * min(max(fail_at, 0.0), 80.0) / 80.0
        # Refresh the Status text while pre-copy runs, in coarse steps.
        step_s = max(plan.precopy_s / 16, 0.01)
        elapsed = 0.0
        while elapsed < precopy_end:
            wait = min(step_s, precopy_end - elapsed)
            await self._clock.sleep(wait)
            elapsed = (self._clock.now().mono_ns - job.started_mono_ns) / 1e9
            vm.migrating_percent = job.percent(self._clock.now().mono_ns)
        if fail_at is not None:
            await self._end_brownout(details)
            raise fail(messages.text(culture, "connection_lost"))
        job.fixed_percent = 80

    def _roll_back(self, job: _Job, state: JobState, reason: str, details: dict[str, Any]) -> None:
        vm = job.vm
        now = self._clock.now()
        job.fixed_percent = job.percent(now.mono_ns)
        job.state = state
        job.finished_mono_ns = now.mono_ns
        job.error_description = reason
        vm.migrating = False
        vm.migrating_percent = None
        self._record(gt.ROLLBACK, now, **details, job_state=int(state), reason=reason)
        if state == JobState.Exception:
            culture = self.culture(job.source)
            detail = migration_failed_text(vm.name, job.source, vm.vm_id, reason, culture)
            self._write_event(
                job.source,
                HA_LOG,
                HA_PROVIDER,
                21502,
                EventLevel.Error,
                messages.text(culture, "event_21502", vm=vm.name, detail=detail),
                (vm.name, str(vm.vm_id).upper(), reason),
            )
        self._record(gt.MOVE_VM_FAILED, **details, reason=reason)

    async def _switchover(
        self, job: _Job, dest: _Host, plan: _MigrationPlan, details: dict[str, Any]
    ) -> None:
        vm = job.vm
        source = self.host(job.source)
        await self._end_brownout(details)
        vm.state = VmState.Paused
        vm.migrating_percent = 80
        self.console.pause(host=source.name)
        frozen = await self._guest.freeze()
        self._record(gt.PAUSE, frozen, **details, **self._link_fields(), percent=80)

        await self._clock.sleep(plan.paused_listed_s)
        vm.host = None
        job.fixed_percent = 95
        self._record(gt.GONE_FROM_SOURCE, **details, percent=95)

        await self._clock.sleep(plan.unlisted_s)
        vm.host = dest.name
        vm.state = VmState.Running
        vm.migrating_percent = None
        self._record(gt.LISTED_ON_DESTINATION, **details, percent=95)
        thawed = await self._guest.thaw()
        blackout_s = (thawed.mono_ns - frozen.mono_ns) / 1e9
        self._record(gt.RESUME, thawed, **details, blackout_s=blackout_s)
        self.console.resume(host=dest.name)
        self._spawn(self._restore_network(plan, details))
        self._write_migration_events(job, source, dest, plan, blackout_s)

        await self._clock.sleep(plan.completion_s)
        if self.config.faults.vm_off_after_landing:
            vm.state = VmState.Off
            self._record(gt.VM_TURNED_OFF, **details, host=dest.name)
        now = self._clock.now()
        job.fixed_percent = 100
        job.state = JobState.Completed
        job.finished_mono_ns = now.mono_ns
        vm.migrating = False
        self._record(gt.MOVE_VM_RETURNED, **details, blackout_s=blackout_s)

    async def _end_brownout(self, details: dict[str, Any]) -> None:
        if self._brownout:
            self._brownout = False
            ended = await self._guest.brownout_end()
            if ended is not None:
                self._record(gt.BROWNOUT_END, ended, **details)

    async def _restore_network(self, plan: _MigrationPlan, details: dict[str, Any]) -> None:
        """Each direction comes back its own delay after the resume (both
        ``network_reconvergence`` unless ``reconvergence_in`` / ``_out`` are
        set); the guest answers pings once both are back. Every direction's
        return is recorded (``link_restored``), with the link filter's edge."""
        default = plan.network_reconvergence_s
        delays = {
            "inbound": default if plan.reconvergence_in_s is None else plan.reconvergence_in_s,
            "outbound": default if plan.reconvergence_out_s is None else plan.reconvergence_out_s,
        }
        began = self._clock.now().mono_ns
        order = sorted(delays, key=lambda direction: delays[direction])
        first, last = order
        if delays[first] < delays[last]:
            await self._sleep_until(began, delays[first])
            restored_first = await self._guest.link_restored(first)
            self._record(
                gt.LINK_RESTORED, restored_first, **details, direction=first, **self._link_fields()
            )
            order = [last]
        await self._sleep_until(began, delays[last])
        restored = await self._guest.network_restored()
        for direction in order:
            self._record(
                gt.LINK_RESTORED, restored, **details, direction=direction, **self._link_fields()
            )
        self._record(gt.NETWORK_RESTORED, restored, **details, **self._link_fields())

    async def _sleep_until(self, began_mono_ns: int, delay_s: float) -> None:
        elapsed_s = (self._clock.now().mono_ns - began_mono_ns) / 1e9
        await self._clock.sleep(max(0.0, delay_s - elapsed_s))

    def _link_fields(self) -> dict[str, int]:
        """The link filter's edge beside the echo edge (the netns guest): all of
        the guest's traffic went dark / came back between these two stamps."""
        edge = self._guest.link_edge()
        if edge is None:
            return {}
        return {"link_before_mono_ns": edge[0], "link_after_mono_ns": edge[1]}

    def _write_migration_events(
        self, job: _Job, source: _Host, dest: _Host, plan: _MigrationPlan, blackout_s: float
    ) -> None:
        """Hyper-V's own account of the migration, on the source, in its language.

        The event data (what ``ToXml()`` shows under UserData/VmlEventLog) is
        ``properties`` in order: 20415/20417 carry the VM's name, its id and
        the blackout in seconds as Parameter0..2 (as real hosts' events do)."""
        vm = job.vm
        vm_id = str(vm.vm_id).upper()
        timing = self.config.timing
        blackout_text = f"{blackout_s:.1f}"
        brownout_text = f"{plan.precopy_s:.1f}"
        dirty_pages = int(timing.dirty_rate_bytes_per_s * blackout_s / PAGE_BYTES)
        memory_pages = int(vm.memory_bytes / PAGE_BYTES) + dirty_pages
        values = {
            "vm": vm.name,
            "vm_id": vm_id,
            "seconds": blackout_text,
            "brownout": brownout_text,
        }

        def write(
            log: str,
            provider: str,
            event_id: int,
            level: EventLevel,
            data: tuple[Any, ...],
            **more: Any,
        ) -> None:
            message = self.text(source.name, f"event_{event_id}", **values, **more)
            self._write_event(source.name, log, provider, event_id, level, message, data)

        info = EventLevel.Information
        write(WORKER_LOG, WORKER_PROVIDER, 22508, info, (vm.name, vm_id, brownout_text))
        write(
            WORKER_LOG,
            WORKER_PROVIDER,
            22509,
            info,
            (vm.name, vm_id, blackout_text, dirty_pages),
            pages=dirty_pages,
        )
        write(
            WORKER_LOG,
            WORKER_PROVIDER,
            22507,
            info,
            (vm.name, vm_id, brownout_text, blackout_text, memory_pages),
            pages=memory_pages,
        )
        critical = blackout_s > timing.critical_blackout_s
        event_id, level = (20417, EventLevel.Warning) if critical else (20415, info)
        write(VMMS_LOG, VMMS_PROVIDER, event_id, level, (vm.name, vm_id, blackout_text))
        write(VMMS_LOG, VMMS_PROVIDER, 20418, info, (vm.name, vm_id, source.name, dest.name))

    def _write_event(
        self,
        host_name: str,
        log_name: str,
        provider: str,
        event_id: int,
        level: EventLevel,
        message: str,
        properties: tuple[Any, ...],
    ) -> None:
        host = self.host(host_name)
        self._record_ids += 1
        host.events.append(
            HostEvent(
                record_id=self._record_ids,
                log_name=log_name,
                provider_name=provider,
                event_id=event_id,
                level=level,
                time_created_ns=self.host_time_ns(host.name),
                machine_name=host.name,
                message=message,
                properties=properties,
            )
        )
