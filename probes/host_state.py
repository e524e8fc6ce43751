"""The host-state poller: what a hypervisor host says about the VM, every 100 ms.

The probe does not know how to talk to a host: the harness hands it a
blocking ``poll`` function (for Hyper-V, one PowerShell pipeline of Get-Date;
Get-VM; Get-CimInstance Msvm_MigrationJob on an open RunspacePool). The probe
owns the schedule, the worker thread, the timestamps and the record: one
JSON Lines event per poll, successful or not, with the harness's send and
receive times (monotonic and UTC ns) and the host's own clock reading.

Polls run back to back on a drift-free schedule (poll k is due at
t0 + k*interval); a poll that takes longer than the interval delays the
next one, and the slots it overran are counted in ``skipped``, never
silently lost.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from migration_blackout.runformat import POLL_ERROR, POLL_OK

from .clock import clock_pair
from .schedule import poll_on_schedule
from .sink import JsonlSink


@dataclass(frozen=True)
class HostObservation:
    """What one poll saw. Returned by the harness's poll function."""

    listed: bool  # the host lists the VM
    state: str | None = None  # Running, Paused, Off, Saved, ... (None when not listed)
    status: str | None = None  # Get-VM's Status text
    percent_complete: int | None = None  # of this VM's migration job, where one runs
    job_state: int | None = None  # Msvm_MigrationJob.JobState
    host_time: str | None = None  # the host's clock during the poll, ISO 8601 with offset
    errors: tuple[str, ...] = ()  # non-terminating errors other than "VM not found"


# Blocking (run in a worker thread) or a coroutine function (awaited on the loop).
PollFunction = Callable[[], HostObservation] | Callable[[], Awaitable[HostObservation]]


@dataclass(frozen=True)
class PollerStats:
    polls: int
    failures: int
    skipped: int
    last_state: str | None
    last_listed: bool | None


class HostStatePoller:
    """Polls one host; same shape as every probe: ``ready`` and ``run(stop)``."""

    def __init__(
        self,
        *,
        host: str,
        poll: PollFunction,
        interval_s: float,
        sink: JsonlSink,
        role: str | None = None,
        stop_grace_s: float | None = None,
    ) -> None:
        """``stop_grace_s``: how long a poll in flight at the stop may still
        take before it is recorded as abandoned (None: wait for it)."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.host = host
        self.role = role
        self.interval_s = interval_s
        self._poll = poll
        self._sink = sink
        self.stop_grace_s = stop_grace_s
        self.ready = asyncio.Event()
        self._polls = 0
        self._failures = 0
        self._skipped = 0
        self._last: HostObservation | None = None

    def stats(self) -> PollerStats:
        return PollerStats(
            polls=self._polls,
            failures=self._failures,
            skipped=self._skipped,
            last_state=None if self._last is None else self._last.state,
            last_listed=None if self._last is None else self._last.listed,
        )

    @property
    def last(self) -> HostObservation | None:
        return self._last

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; the poll in flight then completes and is recorded."""
        try:
            await poll_on_schedule(
                self.interval_s,
                stop,
                self._poll_once,
                self._note_skipped,
                stop_grace_s=self.stop_grace_s,
            )
        finally:
            self._sink.flush()

    def _note_skipped(self, slots: int) -> None:
        self._skipped += slots

    async def _poll_once(self, k: int) -> None:
        send = clock_pair()
        observation: HostObservation | None = None
        error: str | None = None
        abandoned = False
        try:
            if inspect.iscoroutinefunction(self._poll):
                observation = await self._poll()
            else:
                observation = await asyncio.to_thread(self._poll)  # type: ignore[arg-type]
        except Exception as exc:  # a failed poll is an event, never the end of the run
            error = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            # The probes stopped and the host had not answered within the grace.
            error = "abandoned: no answer when the probes stopped"
            abandoned = True
        recv = clock_pair()
        self._polls += 1
        record: dict[str, object] = {
            "event": "poll",
            "host": self.host,
            "role": self.role,
            "k": k,
            "send_mono_ns": send.mono_ns,
            "send_utc_ns": send.utc_ns,
            "recv_mono_ns": recv.mono_ns,
            "recv_utc_ns": recv.utc_ns,
            "outcome": POLL_OK if error is None else POLL_ERROR,
            "error": error,
        }
        if observation is not None:
            fields = asdict(observation)
            fields["errors"] = list(observation.errors)
            record.update(fields)
            self._last = observation
            self.ready.set()
        else:
            self._failures += 1
        self._sink.write(record)
        if abandoned:
            raise asyncio.CancelledError
