"""What ``measure run`` needs from a hypervisor, and its two implementations.

The seam follows what Hyper-V over PSRP and QEMU over QMP really share: both
have a place the VM runs now and a place it goes; both can be asked about the
VM's state on each side; both start a migration on the source and can stop
it; both report their own figures afterwards. They differ in everything
else, so each backend records its own raw evidence in its own vocabulary
(Hyper-V: Get-VM states, Msvm_MigrationJob, event log 20415...; QEMU:
query-migrate, STOP/RESUME events, downtime) and the probes and the analysis
of the guest (ICMP, the in-guest agent) do not know which one ran.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from migration_blackout.probes.host_state import HostObservation
from migration_blackout.probes.sink import JsonlSink

from ..clocksync import ClockOffset
from ..config import RunConfig
from ..guestagent import GuestAgentSetup
from ..runwriter import RunWriter


class PreflightError(Exception):
    """A check before the migration failed; nothing was migrated."""


class Recorder(Protocol):
    """Writes one event to ``raw/events.jsonl`` (both clocks added)."""

    def __call__(self, event: str, **fields: Any) -> None: ...


@dataclass(frozen=True)
class MigrationOutcome:
    """How the migration call ended."""

    kind: str  # "returned", "failed", "timeout", "interrupted"
    message: str | None = None


@dataclass(frozen=True)
class PolledSide:
    """A side to poll with the host-state poller (``raw/host_<name>.jsonl``)."""

    name: str
    role: str | None  # "source" / "destination"
    poll: Callable[[], HostObservation] | Callable[[], Awaitable[HostObservation]]


class HypervisorBackend(Protocol):
    kind: str  # "hyperv" or "qemu"
    migration_name: str  # what the migration call is called, for messages

    async def open(self, record: Recorder) -> None:
        """Reach and authenticate to both sides; PreflightError naming the side."""

    async def locate(self, record: Recorder) -> tuple[str, str]:
        """(source, destination): where the VM runs now (found, not assumed)."""

    async def describe_hosts(self, source: str, destination: str) -> dict[str, Any]:
        """For the manifest, after ``locate``: ``{"hosts": {side: {...}}, "vm": {...}}``,
        what each side runs (its OS build, its hypervisor's version) and the VM's
        memory, where the backend can tell; what it cannot tell is null or an
        ``error`` text. Never fails the run."""

    async def align_clocks(
        self,
        phase: str,
        sink: JsonlSink,
        record: Recorder,
        *,
        tolerate_failures: bool,
        deadline_s: float | None = None,
    ) -> dict[str, ClockOffset | None]:
        """Each side's clock against the harness's ({} when they share its clock);
        a side that does not answer within ``deadline_s`` counts as failed."""

    def polled_sides(self, source: str, destination: str) -> list[PolledSide]:
        """Sides polled by the host-state poller during the run (may be empty)."""

    def console_poll(self, source: str) -> Callable[[], Any] | None:
        """The console view's poll function, or None when the hypervisor has none."""

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
        """Migrate; stop it on ``interrupted`` or when later than ``timeout_s``.

        ``interrupted`` is read right before the irreversible step (Move-VM,
        QMP ``migrate``): when it is set, the migration is not started."""

    async def harvest(self, run: RunWriter, record: Recorder, *, deadline_s: float) -> None:
        """Store the hypervisor's own figures in ``raw/``, within ``deadline_s``."""

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """For the manifest (no secrets)."""


@dataclass(frozen=True)
class PreparedRun:
    """What one run measures: the configuration and, where the configuration
    alone does not say it, the hypervisor and the guest agent.

    ``backend`` None means Hyper-V over PSRP with ``config.hosts`` and
    ``passwords`` (host name -> password, never written anywhere).
    ``ground_truth``: an emulated lab's ground-truth file, copied (the part
    written during the run) into ``raw/ground_truth.jsonl``;
    ``extra_manifest``: entries for the manifest (a lab's ``lab``). A run
    environment (a lab started for the run) prepares one for each run; its
    ``None`` fields keep what the caller's had.
    """

    config: RunConfig
    passwords: Mapping[str, str | None] | None = None
    backend: HypervisorBackend | None = None
    ground_truth: Path | None = None
    extra_manifest: Mapping[str, Any] | None = None
    guest_agent: GuestAgentSetup | None = None
