"""The migration driver: one live migration between two QEMUs, with everything QEMU tells.

``migrate(source, destination, uri=...)`` takes two connected ``QmpClient``
(the running QEMU and a QEMU started with ``-incoming``), applies the
settings, starts the migration, polls ``query-migrate`` on the source every
``poll_interval_s`` (drift-free schedule on the monotonic clock; each poll is
kept with its send and receive stamps), and returns a ``MigrationResult``:

* the outcome (``completed``, ``cancelled``, ``failed``);
* ``STOP`` on the source and ``RESUME`` on the destination with QEMU's
  timestamps (both the host's wall clock, so ``stop_to_resume_ms`` needs no
  clock alignment), every other event either QEMU sent meanwhile;
* the source's final ``query-migrate``: ``downtime`` (measured by the source
  only, from its stop to the end of sending), ``setup-time``, ``total-time``
  and the RAM counters. QEMU 7.2 reports ``completed`` before it filled
  ``downtime``/``total-time``; the driver queries again until they are there.

A migration still running at ``timeout_s`` is cancelled (``migrate_cancel``)
and the driver waits until the source says ``cancelled`` and runs the guest:
outcome ``cancelled``. The destination QEMU then exits (an incoming migration
that failed ends its process); the lab starts a new standby.

After ``RESUME`` the driver sends ``announce-self`` when QEMU's own
announcements are off (``announce_rounds=0``), so the bridge learns the
guest's new port even when no traffic comes from the guest.

``verify_memory``: before migrating, the destination gets ``stop`` (on a QEMU
waiting for its incoming migration this means "do not start the guest when
it arrived", the QMP form of ``-S``); once the migration completed both
QEMUs write the guest's RAM with ``pmemsave``, the driver compares the dumps
page by page and only then sends ``cont`` to the destination. The blackout of
such a migration includes the check (seconds), so it measures correctness,
not downtime.

With ``quit_source`` (default) the driver sends ``quit`` to the old source
when it has no more use for it; in the QEMU lab that is the signal to start
the next standby there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.probes.clock import ClockPair, clock_pair

from .qmp import MigrationInfo, QmpClient, QmpError, QmpEvent

OUTCOME_COMPLETED = "completed"
OUTCOME_CANCELLED = "cancelled"
OUTCOME_FAILED = "failed"

PAGE_BYTES = 4096
_FILL_REQUERY_S = 2.0  # how long to wait for QEMU to fill downtime/total-time
_CANCEL_DEADLINE_S = 15.0
_RESUME_DEADLINE_S = 15.0


class MigrationError(RuntimeError):
    """The migration could not be started (wrong QEMU states, a refused setting)."""


@dataclass(frozen=True)
class MigrationSettings:
    """What to ask of QEMU. ``None`` keeps QEMU's default.

    ``downtime_limit_ms``: the longest stop-and-copy QEMU aims for (default
    300). ``max_bandwidth``: bytes per second for the migration stream
    (QEMU's default is 128 MiB/s). ``auto_converge``: throttle the guest's
    vCPU when it dirties memory faster than it can be sent.
    ``announce_rounds``: RARP rounds the destination sends after RESUME
    (QEMU's default 5); 0 turns them off, and then the driver sends
    ``announce-self`` itself unless ``self_announce`` is False.
    """

    downtime_limit_ms: int | None = None
    max_bandwidth: int | None = None
    auto_converge: bool = False
    announce_rounds: int | None = None
    self_announce: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "downtime_limit_ms": self.downtime_limit_ms,
            "max_bandwidth": self.max_bandwidth,
            "auto_converge": self.auto_converge,
            "announce_rounds": self.announce_rounds,
            "self_announce": self.self_announce,
        }


@dataclass(frozen=True)
class MigrationPoll:
    """One ``query-migrate`` on the source, bracketed by harness clocks."""

    sent: ClockPair
    received: ClockPair
    info: MigrationInfo

    def to_json(self) -> dict[str, Any]:
        ram = self.info.ram
        return {
            "send_mono_ns": self.sent.mono_ns,
            "send_utc_ns": self.sent.utc_ns,
            "recv_mono_ns": self.received.mono_ns,
            "recv_utc_ns": self.received.utc_ns,
            "status": self.info.status,
            "total_time_ms": self.info.total_time_ms,
            "expected_downtime_ms": self.info.expected_downtime_ms,
            "downtime_ms": self.info.downtime_ms,
            "ram_transferred": None if ram is None else ram.transferred,
            "ram_remaining": None if ram is None else ram.remaining,
            "dirty_pages_rate": None if ram is None else ram.dirty_pages_rate,
            "dirty_sync_count": None if ram is None else ram.dirty_sync_count,
            "cpu_throttle_percentage": self.info.cpu_throttle_percentage,
        }


@dataclass(frozen=True)
class MemoryComparison:
    """The guest's RAM on both sides after the migration, before the destination ran."""

    bytes_compared: int
    pages_differing: int
    first_differing_offsets: tuple[int, ...]  # guest-physical byte offsets, at most 16
    dump_ms: float  # both pmemsave calls
    compare_ms: float
    kept_dumps: tuple[Path, ...]  # kept only when they differ

    @property
    def identical(self) -> bool:
        return self.pages_differing == 0


@dataclass(frozen=True)
class MigrationResult:
    """What one migration did. Times from QEMU in ms; clocks in ns (see ``probes.clock``)."""

    outcome: str  # "completed", "cancelled", "failed"
    settings: MigrationSettings
    uri: str
    started: ClockPair  # just before the ``migrate`` command
    finished: ClockPair  # when the driver was done (after RESUME / the cancel)
    stop: QmpEvent | None  # STOP on the source
    resume: QmpEvent | None  # RESUME on the destination
    final: MigrationInfo | None  # the source's last query-migrate
    polls: tuple[MigrationPoll, ...]
    source_events: tuple[QmpEvent, ...]
    destination_events: tuple[QmpEvent, ...]
    memory: MemoryComparison | None = None
    announced: bool = False  # the driver sent announce-self
    error: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def stop_to_resume_ms(self) -> float | None:
        """From the source's STOP to the destination's RESUME, on QEMU's timestamps."""
        if self.stop is None or self.resume is None:
            return None
        return (self.resume.qemu_utc_ns - self.stop.qemu_utc_ns) / 1e6

    @property
    def downtime_ms(self) -> int | None:
        return None if self.final is None else self.final.downtime_ms

    @property
    def setup_time_ms(self) -> int | None:
        return None if self.final is None else self.final.setup_time_ms

    @property
    def total_time_ms(self) -> int | None:
        return None if self.final is None else self.final.total_time_ms

    def to_json(self) -> dict[str, Any]:
        final = self.final
        ram = None if final is None or final.ram is None else final.ram
        return {
            "outcome": self.outcome,
            "settings": self.settings.to_json(),
            "uri": self.uri,
            "started": self.started.to_json(),
            "finished": self.finished.to_json(),
            "stop": None if self.stop is None else self.stop.to_json(),
            "resume": None if self.resume is None else self.resume.to_json(),
            "stop_to_resume_ms": self.stop_to_resume_ms,
            "downtime_ms": self.downtime_ms,
            "setup_time_ms": self.setup_time_ms,
            "total_time_ms": self.total_time_ms,
            "ram": None
            if ram is None
            else {
                "transferred": ram.transferred,
                "total": ram.total,
                "duplicate": ram.duplicate,
                "normal": ram.normal,
                "dirty_sync_count": ram.dirty_sync_count,
                "precopy_bytes": ram.precopy_bytes,
                "downtime_bytes": ram.downtime_bytes,
                "mbps": ram.mbps,
            },
            "final": None if final is None else dict(final.raw),
            "polls": [poll.to_json() for poll in self.polls],
            "source_events": [event.to_json() for event in self.source_events],
            "destination_events": [event.to_json() for event in self.destination_events],
            "memory": None
            if self.memory is None
            else {
                "identical": self.memory.identical,
                "bytes_compared": self.memory.bytes_compared,
                "pages_differing": self.memory.pages_differing,
                "first_differing_offsets": list(self.memory.first_differing_offsets),
                "dump_ms": self.memory.dump_ms,
                "compare_ms": self.memory.compare_ms,
                "kept_dumps": [str(p) for p in self.memory.kept_dumps],
            },
            "announced": self.announced,
            "error": self.error,
            "notes": list(self.notes),
        }


EventCallback = Callable[[str, QmpEvent], None]  # ("source" | "destination", event)
PollCallback = Callable[[MigrationPoll], None]


def compare_dumps(source_dump: Path, destination_dump: Path) -> tuple[int, int, tuple[int, ...]]:
    """Compare two RAM dumps page by page: (bytes compared, pages differing, first offsets).

    Chunks are compared as bytes (memcmp); only a chunk that differs is split
    into 4 KiB pages.
    """
    chunk_bytes = 4 * 1024 * 1024
    compared = 0
    differing = 0
    offsets: list[int] = []
    with open(source_dump, "rb") as a_file, open(destination_dump, "rb") as b_file:
        while True:
            a = a_file.read(chunk_bytes)
            b = b_file.read(chunk_bytes)
            if len(a) != len(b):
                raise MigrationError(
                    f"RAM dumps {source_dump} and {destination_dump} differ in size"
                )
            if not a:
                break
            if a != b:
                for page_start in range(0, len(a), PAGE_BYTES):
                    if (
                        a[page_start : page_start + PAGE_BYTES]
                        != b[page_start : page_start + PAGE_BYTES]
                    ):
                        differing += 1
                        if len(offsets) < 16:
                            offsets.append(compared + page_start)
            compared += len(a)
    return compared, differing, tuple(offsets)


class _Recorder:
    """Events both QEMUs sent since the migration began, handed to ``on_event`` once each."""

    def __init__(
        self, source: QmpClient, destination: QmpClient, on_event: EventCallback | None
    ) -> None:
        self._clients = {"source": source, "destination": destination}
        self._marks = {"source": len(source.events), "destination": len(destination.events)}
        self._reported = dict(self._marks)
        self._on_event = on_event

    def new_events(self, role: str) -> list[QmpEvent]:
        return self._clients[role].events[self._marks[role] :]

    @property
    def source_mark(self) -> int:
        return self._marks["source"]

    @property
    def destination_mark(self) -> int:
        return self._marks["destination"]

    def report(self) -> None:
        for role, client in self._clients.items():
            events = client.events
            for event in events[self._reported[role] :]:
                if self._on_event is not None:
                    self._on_event(role, event)
            self._reported[role] = len(events)


async def _poll(source: QmpClient) -> MigrationPoll:
    sent = clock_pair()
    info = await source.query_migrate()
    return MigrationPoll(sent=sent, received=clock_pair(), info=info)


async def _apply_settings(
    source: QmpClient, destination: QmpClient, settings: MigrationSettings
) -> bool:
    """Set capabilities and parameters; True when QEMU will announce nothing by itself."""
    await source.migrate_set_capabilities({"events": True, "auto-converge": settings.auto_converge})
    await destination.migrate_set_capabilities({"events": True})
    parameters: dict[str, Any] = {}
    if settings.downtime_limit_ms is not None:
        parameters["downtime-limit"] = int(settings.downtime_limit_ms)
    if settings.max_bandwidth is not None:
        parameters["max-bandwidth"] = int(settings.max_bandwidth)
    if parameters:
        await source.migrate_set_parameters(parameters)
    # The destination announces the guest after RESUME with its own parameters.
    if settings.announce_rounds is not None:
        await destination.migrate_set_parameters({"announce-rounds": settings.announce_rounds})
    rounds = (await destination.query_migrate_parameters()).get("announce-rounds")
    return rounds == 0


async def _memory_check(
    source: QmpClient, destination: QmpClient, folder: Path, memory_bytes: int
) -> MemoryComparison:
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    stamp = time.time_ns()
    source_dump = folder / f"ram-source-{stamp}.bin"
    destination_dump = folder / f"ram-destination-{stamp}.bin"
    begin = time.monotonic()
    await asyncio.gather(
        source.pmemsave(0, memory_bytes, source_dump),
        destination.pmemsave(0, memory_bytes, destination_dump),
    )
    dumped = time.monotonic()
    compared, differing, offsets = await asyncio.to_thread(
        compare_dumps, source_dump, destination_dump
    )
    done = time.monotonic()
    kept: tuple[Path, ...] = ()
    if differing:
        kept = (source_dump, destination_dump)
    else:
        source_dump.unlink(missing_ok=True)
        destination_dump.unlink(missing_ok=True)
    return MemoryComparison(
        bytes_compared=compared,
        pages_differing=differing,
        first_differing_offsets=offsets,
        dump_ms=(dumped - begin) * 1e3,
        compare_ms=(done - dumped) * 1e3,
        kept_dumps=kept,
    )


async def _final_info(source: QmpClient, last: MigrationInfo) -> MigrationInfo:
    """The completed migration's numbers, once QEMU has filled them in."""
    deadline = time.monotonic() + _FILL_REQUERY_S
    info = last
    while info.downtime_ms is None or info.total_time_ms is None:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
        info = await source.query_migrate()
    return info


async def migrate(
    source: QmpClient,
    destination: QmpClient,
    *,
    uri: str,
    settings: MigrationSettings | None = None,
    timeout_s: float = 60.0,
    poll_interval_s: float = 0.02,
    on_event: EventCallback | None = None,
    on_poll: PollCallback | None = None,
    verify_memory: Path | None = None,
    memory_bytes: int = 256 * 1024 * 1024,
    quit_source: bool = True,
) -> MigrationResult:
    """Migrate the guest from ``source`` to ``destination`` (listening at ``uri``).

    ``timeout_s``: a migration call that fails when late: at this point the
    driver cancels it (the guest keeps running on the source). ``on_event``
    gets each QMP event of either side (role, event) within one poll interval
    of its arrival; ``on_poll`` each poll. ``verify_memory``: a folder for the
    RAM dumps; enables the comparison (module docstring) of ``memory_bytes``
    of guest RAM from address 0 (the whole RAM of a guest below 3 GiB).

    Raises ``MigrationError`` if the QEMUs are not a running source and a
    waiting destination, or refuse the settings; every later problem ends up
    in the result (outcome ``failed`` and ``error``).
    """
    settings = settings or MigrationSettings()
    source_state = await source.query_status()
    destination_state = await destination.query_status()
    if source_state.status != "running":
        raise MigrationError(f"the source is {source_state.status!r}, not running")
    if destination_state.status != "inmigrate":
        raise MigrationError(
            f"the destination is {destination_state.status!r}, not waiting for a migration "
            "(inmigrate): start it with -incoming"
        )
    try:
        announce_off = await _apply_settings(source, destination, settings)
        if verify_memory is not None:
            await destination.stop()
    except QmpError as exc:
        raise MigrationError(f"QEMU refused the migration settings: {exc}") from None

    recorder = _Recorder(source, destination, on_event)
    polls: list[MigrationPoll] = []
    notes: list[str] = []
    started = clock_pair()
    try:
        await source.migrate(uri)
    except QmpError as exc:
        raise MigrationError(f"migrate to {uri} refused: {exc}") from None

    interval_ns = max(1, round(poll_interval_s * 1e9))
    deadline_ns = started.mono_ns + round(timeout_s * 1e9)
    outcome = OUTCOME_FAILED
    error: str | None = None
    last: MigrationInfo | None = None
    k = 0
    cancelled_at: int | None = None
    try:
        while True:
            poll = await _poll(source)
            polls.append(poll)
            last = poll.info
            if on_poll is not None:
                on_poll(poll)
            recorder.report()
            if last.status == "completed":
                outcome = OUTCOME_COMPLETED
                break
            if last.status == "cancelled":
                outcome = OUTCOME_CANCELLED
                break
            if last.status == "failed":
                error = last.error_desc or "QEMU reports the migration failed"
                break
            now = time.monotonic_ns()
            if cancelled_at is None and now >= deadline_ns:
                await source.migrate_cancel()
                cancelled_at = now
                notes.append(f"cancelled after {timeout_s} s (timeout_s)")
            elif cancelled_at is not None and now - cancelled_at > _CANCEL_DEADLINE_S * 1e9:
                error = f"the cancelled migration is still {last.status!r}"
                break
            k = max(k + 1, (now - started.mono_ns) // interval_ns + 1)
            await asyncio.sleep(max(0.0, (started.mono_ns + k * interval_ns - now) / 1e9))
    except QmpError as exc:
        error = f"lost QMP during the migration: {exc}"

    memory: MemoryComparison | None = None
    resume: QmpEvent | None = None
    stop: QmpEvent | None = None
    announced = False
    final = last
    try:
        if outcome == OUTCOME_COMPLETED and last is not None:
            final = await _final_info(source, last)
            if verify_memory is not None:
                memory = await _memory_check(source, destination, verify_memory, memory_bytes)
                await destination.cont()
            _, resume = await destination.wait_event(
                "RESUME", since=recorder.destination_mark, timeout_s=_RESUME_DEADLINE_S
            )
            if announce_off and settings.self_announce:
                await destination.announce_self()
                announced = True
            _, stop = await source.wait_event("STOP", since=recorder.source_mark, timeout_s=2.0)
        elif outcome == OUTCOME_CANCELLED:
            state = await source.query_status()
            if not state.running:
                error = f"after the cancel the source is {state.status!r}, not running"
                outcome = OUTCOME_FAILED
    except QmpError as exc:
        error = f"after the migration: {exc}"
        if outcome == OUTCOME_COMPLETED and resume is None:
            outcome = OUTCOME_FAILED
    recorder.report()
    finished = clock_pair()
    if outcome == OUTCOME_COMPLETED and quit_source:
        with contextlib.suppress(QmpError):
            await source.quit()
    elif outcome != OUTCOME_COMPLETED:
        # A destination whose incoming migration failed is of no further use (QEMU
        # usually exits by itself); make sure it is gone before the caller asks
        # the lab for the next standby.
        with contextlib.suppress(QmpError):
            await destination.quit()
    return MigrationResult(
        outcome=outcome,
        settings=settings,
        uri=uri,
        started=started,
        finished=finished,
        stop=stop,
        resume=resume,
        final=final,
        polls=tuple(polls),
        source_events=tuple(recorder.new_events("source")),
        destination_events=tuple(recorder.new_events("destination")),
        memory=memory,
        announced=announced,
        error=error,
        notes=tuple(notes),
    )


def events_named(events: Sequence[QmpEvent], name: str) -> list[QmpEvent]:
    return [event for event in events if event.name == name]
