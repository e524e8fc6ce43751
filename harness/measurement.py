"""One measured migration: what ``measure run`` does for each migration
(``harness.commands.run`` says what to measure; a session repeats this).

The hypervisor is a backend (``harness.backends``): Hyper-V over PSRP (real
hosts or the emulated lab) or QEMU over QMP. The phases, each announced to
the caller's progress callback and written to ``raw/events.jsonl``:

0. **lab** (only when a lab is started for the run): the run folder exists
   first, so an interrupted lab start is a complete, aborted run too.
1. **preflight**: reach both sides (reachable, authenticated), find where
   the VM runs (or check ``--source``), check that it runs, that the
   destination is another side, and that the guest answers pings. Any
   failure is a :class:`PreflightError` (exit code 3) naming the side.
2. **clock**: each side's clock against the harness's (``raw/clock.jsonl``).
3. **probes**: ICMP to the guest, a state poller per side, the console view
   and the guest agent where there are such, all owned by one TaskGroup;
   the migration starts only when every probe is ready.
4. **migrating**: Move-VM on the source host / QMP ``migrate``, bounded by
   ``migration.timeout_s``; Ctrl-C or the timeout stops it.
5. **settling**: probes go on for ``settle_s`` after the migration returns,
   and until the guest has answered for ``settle_quiet_s``.
6. **harvest**: clocks again, then the hypervisor's own figures; with the
   emulated lab, its ground truth. Attempted in every case, with a short
   deadline after an interrupt.

The run folder is finalised in every case; then it is analysed.

What the run promises (docs/reliability.md): SIGINT and SIGTERM are honoured
in every phase within a few seconds whatever a host does (exit 130, status
``aborted``); nothing irreversible starts after one; every wait on a host has
a deadline derived from the run's own limits (:class:`RunLimits`); a run
whose probe data is missing is never ``completed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from migration_blackout.analysis.rebuild import rebuild_derived
from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.console_view import ConsoleViewProbe
from migration_blackout.probes.host_state import HostStatePoller
from migration_blackout.probes.icmp import IcmpTargetStats
from migration_blackout.probes.icmp_process import IcmpProbeProcess
from migration_blackout.probes.sink import JsonlSink
from migration_blackout.runformat import (
    CLOCK_SAMPLES,
    CONSOLE,
    GROUND_TRUTH,
    HARNESS_EVENTS,
    ICMP,
    RunStatus,
    host_state_file,
    utc_iso,
)

from . import exitcodes
from .backends import HypervisorBackend, MigrationOutcome, PreflightError, PreparedRun
from .backends.hyperv import HyperVBackend
from .clocksync import ClockOffset, drift_ppm
from .config import RunConfig
from .console import DEFAULT_HEIGHT, DEFAULT_WIDTH
from .deadlines import (
    DeadlineExceeded,
    Interrupt,
    Interrupted,
    use_abandonable_threads,
    within,
)
from .guestagent import GuestAgentSession, GuestAgentSetup, ProbesNotReadyError
from .machine import MachineWatch
from .psrp_session import HostError
from .runwriter import RunWriter, create_run_folder
from .witnesses import Witnesses

T = TypeVar("T")

PROBES_READY_DEADLINE_S = 15.0
PREFLIGHT_PING_COUNT = 5
CONSOLE_POLL_INTERVAL_S = 0.5
# SCHED_FIFO priority of the ICMP prober's process when root: it does nothing
# else, and real-time scheduling keeps its sends on time on a busy machine.
ICMP_REALTIME_PRIORITY = 10
SETTLE_QUIET_LIMIT_S = 60.0  # the settle window ends at the latest this long after settle_s
# Deadlines that are not settings of their own (see RunLimits).
HOST_CALL_DEADLINE_S = 25.0  # a preflight or clock step (pypsrp's own read timeout is 20 s)
MIGRATION_STOP_GRACE_S = 5.0  # for the host to confirm a stop, after a timeout or interrupt
HARVEST_AFTER_INTERRUPT_S = 5.0  # the harvest's deadline once the run was interrupted
CLOSE_DEADLINE_S = 2.0  # closing the sessions to the hosts (a hung one is left)
POLL_STOP_GRACE_S = 2.0  # a poll in flight when the probes stop: its answer, or abandoned
LAB_START_DEADLINE_S = 60.0  # a lab started for the run (its own deadline is 20 s)


class Phase(StrEnum):
    LAB = "lab"
    PREFLIGHT = "preflight"
    CLOCK = "clock"
    PROBES = "probes"
    MIGRATING = "migrating"
    SETTLING = "settling"
    HARVEST = "harvest"
    ANALYSIS = "analysis"


@dataclass(frozen=True)
class RunLimits:
    """Every deadline of one run, in seconds, derived from its own settings."""

    host_call_s: float  # each preflight / clock step: never longer than the migration may take
    migration_s: float  # --timeout: Move-VM is stopped when it is later
    stop_s: float  # then the host has this long to confirm the stop
    harvest_s: float  # clocks and the hypervisor's figures after the migration
    harvest_after_interrupt_s: float
    close_s: float
    poll_stop_grace_s: float

    @classmethod
    def of(cls, config: RunConfig) -> RunLimits:
        migration = config.migration
        return cls(
            host_call_s=min(HOST_CALL_DEADLINE_S, migration.timeout_s),
            migration_s=migration.timeout_s,
            stop_s=MIGRATION_STOP_GRACE_S,
            harvest_s=migration.harvest_timeout_s,
            harvest_after_interrupt_s=min(HARVEST_AFTER_INTERRUPT_S, migration.harvest_timeout_s),
            close_s=CLOSE_DEADLINE_S,
            poll_stop_grace_s=POLL_STOP_GRACE_S,
        )

    def to_json(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass(frozen=True)
class RunProgress:
    phase: Phase
    elapsed_s: float
    message: str | None = None
    percent: int | None = None
    states: Mapping[str, str] = field(default_factory=dict)  # host -> state or "unlisted"
    icmp: Mapping[str, IcmpTargetStats] = field(default_factory=dict)


class Outcome(Enum):
    """How a measurement ended, as a value; each has its exit code of
    ``measure run`` (``harness.exitcodes``, docs/cli.md)."""

    MEASURED = exitcodes.OK  # migrated and measured; the run folder is complete
    MIGRATION_FAILED = exitcodes.MIGRATION_FAILED  # failed or stopped by --timeout
    REFUSED = exitcodes.USAGE  # a mistake in the request: nothing was started
    PREFLIGHT_FAILED = exitcodes.PREFLIGHT  # nothing was migrated
    INTERRUPTED = exitcodes.INTERRUPTED  # SIGINT / SIGTERM; status aborted

    @property
    def exit_code(self) -> int:
        return int(self.value)


@dataclass(frozen=True)
class RunResult:
    """One finalised run folder and how its run ended."""

    run_dir: Path
    status: RunStatus
    outcome: Outcome
    message: str | None
    summary: dict[str, Any] | None
    source: str | None = None
    destination: str | None = None

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


class RunEnvironment(Protocol):
    """A lab started for a run (or a session of runs) and stopped afterwards."""

    async def prepare(self, config: RunConfig, interrupt: Interrupt) -> PreparedRun:
        """Start (the first time) and describe the environment for one run."""

    async def close(self) -> None:
        """Stop whatever :meth:`prepare` started, within its own deadline."""


ProgressCallback = Callable[[RunProgress], None]


class _Recorder:
    """``raw/events.jsonl``: the harness's own events, each with both clocks.

    A record that cannot be written (the disk is full) is counted, never
    raised: the run goes on stopping what it started, and ends ``failed``.
    """

    def __init__(self, sink: JsonlSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self.write_error: OSError | None = None
        self.lost = 0

    def __call__(self, event: str, **fields: Any) -> None:
        now = clock_pair()
        with self._lock:
            try:
                self._sink.write(
                    {
                        "event": event,
                        "mono_ns": now.mono_ns,
                        "utc_ns": now.utc_ns,
                        "utc": utc_iso(now.utc_ns),
                        **fields,
                    }
                )
            except OSError as error:
                self.write_error = self.write_error or error
                self.lost += 1

    def close(self) -> None:
        with self._lock:
            try:
                self._sink.close()
            except OSError as error:
                self.write_error = self.write_error or error


@dataclass
class _Context:
    config: RunConfig
    run: RunWriter
    record: _Recorder
    progress: ProgressCallback | None
    start_mono_ns: int
    interrupt: Interrupt
    limits: RunLimits
    backend: HypervisorBackend | None = None
    pollers: dict[str, HostStatePoller] = field(default_factory=dict)
    icmp: IcmpProbeProcess | None = None
    console: ConsoleViewProbe | None = None
    phase: Phase = Phase.PREFLIGHT
    probe_failures: dict[str, BaseException] = field(default_factory=dict)
    migration_started: bool = False  # the backend's migrate was called

    def announce(self, phase: Phase, message: str | None = None) -> None:
        self.phase = phase
        self.record("phase", phase=str(phase), message=message)
        self.tick(message)

    def tick(self, message: str | None = None) -> None:
        if self.progress is None:
            return
        states: dict[str, str] = {}
        percent = None
        for name, poller in self.pollers.items():
            last = poller.last
            if last is not None:
                states[name] = (last.state or "?") if last.listed else "unlisted"
                if last.percent_complete is not None:
                    percent = last.percent_complete
        self.progress(
            RunProgress(
                phase=self.phase,
                elapsed_s=(time.monotonic_ns() - self.start_mono_ns) / 1e9,
                message=message,
                percent=percent,
                states=states,
                icmp={} if self.icmp is None else self.icmp.stats(),
            )
        )

    async def bounded(self, work: Awaitable[Any], deadline_s: float, what: str) -> Any:
        """``work`` within ``deadline_s``, given up at once on an interrupt."""
        return await within(work, deadline_s=deadline_s, what=what, interrupt=self.interrupt)


async def measure_run(
    *,
    target: PreparedRun,
    environment: RunEnvironment | None = None,
    out: Path,
    command: Sequence[str],
    interrupt: Interrupt,
    progress: ProgressCallback | None = None,
    labels: Mapping[str, str] | None = None,
) -> RunResult:
    """Run one migration with every probe; always returns a finalised run folder.

    ``target`` says what is measured (:class:`PreparedRun`); ``environment``:
    a lab started for the run, prepared once the run folder exists (and
    closed by the caller), whose :class:`PreparedRun` overrides ``target``'s
    fields it sets. ``interrupt``: the caller's signal handling
    (:func:`with_environment`). ``labels`` go to the manifest; so do the
    measuring machine (``machine``) and what the backend tells of the hosts
    and the VM (``hosts``, ``vm``).
    """
    use_abandonable_threads(asyncio.get_running_loop())
    config, passwords, backend = target.config, target.passwords, target.backend
    ground_truth, guest_agent = target.ground_truth, target.guest_agent
    extra_manifest = target.extra_manifest
    if environment is None and not config.guest_addresses:
        raise PreflightError("no guest address is configured: set [guest] addresses or --target")
    limits = RunLimits.of(config)
    run = create_run_folder(
        out,
        kind="run",
        command=command,
        config={
            **config.describe(),
            **({"hypervisor": backend.describe()} if backend is not None else {}),
            "limits": limits.to_json(),
        },
        targets=list(config.guest_addresses),
        labels=labels,
    )
    machine = MachineWatch()
    run.manifest["machine"] = machine.context
    if extra_manifest:
        run.manifest.update(extra_manifest)
    run.save()
    events = JsonlSink(run.raw / "events.jsonl", probe="harness")
    run.register_probe(HARNESS_EVENTS.probe, HARNESS_EVENTS.path, format="jsonl")
    ctx = _Context(
        config=config,
        run=run,
        record=_Recorder(events),
        progress=progress,
        start_mono_ns=time.monotonic_ns(),
        interrupt=interrupt,
        limits=limits,
        backend=backend,
    )
    status, exit_code, message = RunStatus.FAILED, exitcodes.MIGRATION_FAILED, None
    error: BaseException | str | None = None
    source = destination = None
    outcome: MigrationOutcome | None = None
    clock_sink: JsonlSink | None = None
    before: Mapping[str, ClockOffset | None] = {}
    try:
        if environment is not None:
            ctx.announce(Phase.LAB, "starting the lab")
            prepared = await ctx.bounded(
                environment.prepare(config, interrupt), LAB_START_DEADLINE_S, "the lab start"
            )
            config, ctx.config = prepared.config, prepared.config
            passwords = prepared.passwords if prepared.passwords is not None else passwords
            backend = prepared.backend or backend
            ground_truth = prepared.ground_truth or ground_truth
            guest_agent = prepared.guest_agent or guest_agent
            run.manifest.update(prepared.extra_manifest or {})
            run.manifest["targets"] = list(config.guest_addresses)
            run.manifest["config"].update(config.describe())
            run.save()
            if not config.guest_addresses:
                raise PreflightError("the lab gave no guest address")
        if backend is None:
            backend = HyperVBackend(config, passwords or {})
        ctx.backend = backend
        run.manifest["config"]["hypervisor"] = backend.describe()
        run.save()
        ctx.announce(Phase.PREFLIGHT)
        await ctx.bounded(backend.open(ctx.record), limits.host_call_s, "preflight (connecting)")
        source, destination = await ctx.bounded(
            backend.locate(ctx.record), limits.host_call_s, "preflight (locating the VM)"
        )
        ctx.record("preflight", check="direction", source=source, destination=destination)
        run.manifest.update(
            await ctx.bounded(
                backend.describe_hosts(source, destination),
                limits.host_call_s,
                "preflight (describing the hosts)",
            )
        )
        await ctx.bounded(_check_guest_answers(ctx), limits.host_call_s, "preflight (guest ping)")
        ctx.announce(Phase.CLOCK, "aligning clocks")
        clock_sink = JsonlSink(run.raw / "clock.jsonl", probe="clock")
        run.register_probe(CLOCK_SAMPLES.probe, CLOCK_SAMPLES.path, format="jsonl")
        before = await ctx.bounded(
            backend.align_clocks(
                "before",
                clock_sink,
                ctx.record,
                tolerate_failures=False,
                deadline_s=limits.host_call_s,
            ),
            limits.host_call_s,
            "aligning clocks",
        )
        outcome = await _probe_and_migrate(ctx, source, destination, guest_agent)
    except PreflightError as exc:
        status, exit_code, message, error = RunStatus.FAILED, exitcodes.PREFLIGHT, str(exc), exc
    except Interrupted as exc:
        status, exit_code, message, error = (
            RunStatus.ABORTED,
            exitcodes.INTERRUPTED,
            str(exc),
            exc,
        )
    except DeadlineExceeded as exc:
        # Before the migration: a host that does not answer fails the preflight.
        status, exit_code, message, error = RunStatus.FAILED, exitcodes.PREFLIGHT, str(exc), exc
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        status, exit_code, message, error = (
            RunStatus.ABORTED,
            exitcodes.INTERRUPTED,
            "interrupted",
            exc,
        )
        raise
    except Exception as exc:
        status, exit_code, error = RunStatus.FAILED, exitcodes.MIGRATION_FAILED, exc
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HostError) else str(exc)
    finally:
        after = await _harvest(ctx, clock_sink)
        _record_clocks(run, backend.kind if backend else "hyperv", before, after)
        if backend is not None:
            with contextlib.suppress(Exception, DeadlineExceeded):
                await within(backend.close(), deadline_s=limits.close_s, what="closing sessions")
    if outcome is not None:
        status, exit_code, message = _judge(ctx, outcome)
        error = message
    status, exit_code, message, error = _check_evidence(ctx, status, exit_code, message, error)
    run.manifest["machine"] = machine.finish()
    _finish(ctx, status, message, error, ground_truth, source, destination)
    summary, message, exit_code = await _analyse(ctx, status, message, exit_code)
    return RunResult(
        run_dir=run.path,
        status=RunStatus(run.manifest["status"]),
        outcome=Outcome(exit_code),
        message=message,
        summary=summary,
        source=source,
        destination=destination,
    )


def _judge(ctx: _Context, outcome: MigrationOutcome) -> tuple[RunStatus, int, str | None]:
    """Status, exit code and message from how the migration ended."""
    if ctx.interrupt.is_set() and outcome.kind != "returned":
        by = ctx.interrupt.signal_name or "a signal"
        text = outcome.message or "interrupted"
        if not text.startswith("interrupted"):
            text = f"interrupted by {by}: {text}"
        return RunStatus.ABORTED, exitcodes.INTERRUPTED, text
    if ctx.interrupt.is_set():
        # Move-VM returned, then the settle window or the harvest was interrupted.
        by = ctx.interrupt.signal_name or "a signal"
        name = ctx.backend.migration_name if ctx.backend else "the migration"
        return (
            RunStatus.ABORTED,
            exitcodes.INTERRUPTED,
            f"interrupted by {by} after {name} returned; the measurement may be cut short",
        )
    if outcome.kind == "returned":
        return RunStatus.COMPLETED, exitcodes.OK, None
    if outcome.kind == "timeout":
        return RunStatus.ABORTED, exitcodes.MIGRATION_FAILED, outcome.message
    return RunStatus.FAILED, exitcodes.MIGRATION_FAILED, outcome.message


def _check_evidence(
    ctx: _Context,
    status: RunStatus,
    exit_code: int,
    message: str | None,
    error: BaseException | str | None,
) -> tuple[RunStatus, int, str | None, BaseException | str | None]:
    """A run is ``completed`` only with its evidence on disk: a probe that
    failed, a raw file that is missing or could not be written fails it."""
    if status is not RunStatus.COMPLETED:
        return status, exit_code, message, error
    problems = [f"the {name} probe failed: {exc}" for name, exc in ctx.probe_failures.items()]
    icmp = ctx.run.raw / "icmp.csv"
    if not icmp.is_file():
        problems.append(f"the ICMP record {icmp} is missing")
    elif icmp.stat().st_size == 0:
        problems.append(f"the ICMP record {icmp} is empty")
    if ctx.record.write_error is not None:
        problems.append(
            f"{HARNESS_EVENTS.path}: {ctx.record.lost} events not written "
            f"({ctx.record.write_error.strerror or ctx.record.write_error})"
        )
    if not problems:
        return status, exit_code, message, error
    text = "; ".join(problems)
    return RunStatus.FAILED, exitcodes.MIGRATION_FAILED, text, text


def _finish(
    ctx: _Context,
    status: RunStatus,
    message: str | None,
    error: BaseException | str | None,
    ground_truth: Path | None,
    source: str | None,
    destination: str | None,
) -> None:
    """The ground truth, the last event and the final manifest: each tried in
    turn, so that a full disk loses as little as possible."""
    run, backend = ctx.run, ctx.backend
    if ground_truth is not None:
        try:
            _copy_ground_truth(ground_truth, run, ctx.start_mono_ns)
        except OSError as exc:
            ctx.record("ground_truth_failed", error=str(exc))
    ctx.record("end", status=str(status), message=message)
    ctx.record.close()
    kind = backend.kind if backend is not None else "hyperv"
    run.manifest["hypervisor"] = {"kind": kind, "source": source, "destination": destination}
    run.manifest[kind] = {
        **run.manifest.get(kind, {}),
        # What preflight learnt (Hyper-V: each host's live migration set-up).
        **getattr(backend, "preflight_facts", {}),
        "source": source,
        "destination": destination,
    }
    run.finalize(status, error)


async def _analyse(
    ctx: _Context,
    status: RunStatus,
    message: str | None,
    exit_code: int,
) -> tuple[dict[str, Any] | None, str | None, int]:
    """``derived/`` from the finalised folder. An interrupt here ends the run
    as ``aborted`` (exit 130); derived/ can be rebuilt with ``measure analyze``."""
    run = ctx.run
    summary = None
    await _let_signals_arrive()
    if ctx.interrupt.is_set() and status is not RunStatus.ABORTED:
        return None, _abort_after_the_fact(ctx, status, message), exitcodes.INTERRUPTED
    ctx.phase = Phase.ANALYSIS
    try:
        with _signals_raise_keyboard_interrupt():
            summary = json.loads(rebuild_derived(run.path)[0].read_text(encoding="utf-8"))
    except KeyboardInterrupt as exc:
        ctx.interrupt.set(str(exc) or None)
    except Exception as exc:  # the run folder stands; analysis can be rebuilt later
        message = (message + "; " if message else "") + f"analysis failed: {exc}"
    await _let_signals_arrive()
    if ctx.interrupt.is_set() and status is not RunStatus.ABORTED:
        return None, _abort_after_the_fact(ctx, status, message), exitcodes.INTERRUPTED
    return summary, message, exit_code


async def _let_signals_arrive() -> None:
    """Let the loop deliver a signal that came while it was not running: the
    first pass reads it from the wakeup pipe, the second runs its handler, the
    third resumes us after it."""
    for _ in range(3):
        await asyncio.sleep(0)


def _abort_after_the_fact(ctx: _Context, status: RunStatus, message: str | None) -> str:
    """An interrupt during the analysis: the manifest says so (what the
    measurement had come to stays in the message)."""
    by = ctx.interrupt.signal_name or "a signal"
    text = (
        f"interrupted by {by} during the analysis; the measurement had ended {status}"
        + (f" ({message})" if message else "")
        + "; rebuild derived/ with `measure analyze`"
    )
    if status is not RunStatus.ABORTED:
        ctx.run.manifest["measurement_status"] = str(status)
        ctx.run.finalize(RunStatus.ABORTED, text)
    return text


@contextlib.contextmanager
def _signals_raise_keyboard_interrupt() -> Iterator[None]:
    """During synchronous work on the event loop's thread (the analysis), the
    loop cannot run its signal handlers: SIGINT and SIGTERM raise
    KeyboardInterrupt instead, as a plain Python program would."""

    def raise_interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave them
            previous[sig] = signal.signal(sig, raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- preflight ---------------------------------------------------------------


async def _check_guest_answers(ctx: _Context) -> None:
    from icmplib import async_multiping

    from migration_blackout.probes.icmp import resolve_privileged

    addresses = list(ctx.config.guest_addresses)
    try:
        privileged = resolve_privileged(None)
        hosts = await async_multiping(
            addresses,
            count=PREFLIGHT_PING_COUNT,
            interval=0.05,
            timeout=1,
            privileged=privileged,
        )
    except Exception as exc:
        raise PreflightError(f"cannot ping the guest: {exc}") from None
    for host in hosts:
        ctx.record(
            "preflight",
            check="guest_ping",
            target=host.address,
            received=host.packets_received,
            sent=host.packets_sent,
        )
        if not host.is_alive:
            raise PreflightError(
                f"guest {host.address} does not answer pings: check the address and that the "
                f"guest's firewall allows ICMP echo"
            )


# -- clocks ------------------------------------------------------------------


def _record_clocks(
    run: RunWriter,
    kind: str,
    before: Mapping[str, ClockOffset | None],
    after: Mapping[str, ClockOffset | None],
) -> None:
    clocks = {}
    for host in before:
        b, a = before.get(host), after.get(host)
        clocks[host] = {
            "before": None if b is None else b.to_json(),
            "after": None if a is None else a.to_json(),
            "drift_ppm": None if a is None or b is None else drift_ppm(b, a),
        }
    run.manifest.setdefault(kind, {})["clock"] = clocks


# -- probes and the migration ----------------------------------------------


def _poller_file(host: str) -> str:
    return host_state_file(host).path


async def _probe_and_migrate(
    ctx: _Context,
    source: str,
    destination: str,
    guest_agent: GuestAgentSetup | None = None,
) -> MigrationOutcome:
    config, run, backend = ctx.config, ctx.run, ctx.backend
    assert backend is not None
    ctx.announce(Phase.PROBES, "starting probes")
    # The ICMP prober runs in a process of its own: pypsrp's XML parsing in
    # threads and image decoding here would otherwise delay its schedule.
    icmp = IcmpProbeProcess(
        run.raw / "icmp.csv",
        targets=list(config.guest_addresses),
        interval_s=config.probes.icmp_interval_s,
        timeout_s=config.probes.icmp_timeout_s,
        realtime_priority=ICMP_REALTIME_PRIORITY if os.geteuid() == 0 else None,
    )
    sinks: list[JsonlSink] = []
    witnesses: Witnesses | None = None
    try:
        await ctx.bounded(icmp.start(), PROBES_READY_DEADLINE_S, "the ICMP prober's start")
        ctx.icmp = icmp
        run.register_probe(ICMP.probe, ICMP.path, format="csv", process=True, **icmp.meta)
        for side in backend.polled_sides(source, destination):
            sink = JsonlSink(
                run.path / _poller_file(side.name),
                probe="host_state",
                meta={
                    "host": side.name,
                    "role": side.role,
                    "vm": config.vm,
                    "interval_s": config.probes.host_poll_interval_s,
                },
            )
            sinks.append(sink)
            ctx.pollers[side.name] = HostStatePoller(
                host=side.name,
                role=side.role,
                poll=side.poll,
                interval_s=config.probes.host_poll_interval_s,
                sink=sink,
                stop_grace_s=ctx.limits.poll_stop_grace_s,
            )
            run.register_probe(
                f"host:{side.name}", _poller_file(side.name), format="jsonl", role=side.role
            )
        # The console view (the write-up's VM Connection window), where the
        # hypervisor has one: the VM's screen from whichever side holds it.
        console = None
        console_poll = backend.console_poll(source)
        if console_poll is not None:
            console = ConsoleViewProbe.create(
                run.path,
                poll=console_poll,
                vm=config.vm,
                width=DEFAULT_WIDTH,
                height=DEFAULT_HEIGHT,
                interval_s=CONSOLE_POLL_INTERVAL_S,
                stop_grace_s=ctx.limits.poll_stop_grace_s,
            )
            ctx.console = console
            sinks.append(console.sink)
            run.register_probe("console", CONSOLE.path, format="jsonl", **console.meta)
        stop = asyncio.Event()
        outcome: list[MigrationOutcome] = []
        agent = (
            None
            if guest_agent is None
            else GuestAgentSession(ctx.run, guest_agent, record=ctx.record, announce=ctx.tick)
        )
        token = None if agent is None else agent.token
        witnesses = Witnesses(run, config.probes, targets=config.guest_addresses, token=token)
        # A probe that fails is an event and fails the run at the end, but it
        # never cancels the migration in progress (that would leave Move-VM
        # running unwatched): the TaskGroup only ever sees the drive fail.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_witness(ctx, "icmp", icmp.run(stop)))
            for name, poller in ctx.pollers.items():
                tasks.create_task(_witness(ctx, f"host:{name}", poller.run(stop)))
            if console is not None:
                tasks.create_task(_witness(ctx, "console", console.run(stop)))
            if agent is not None:
                tasks.create_task(_witness(ctx, "guest_agent", agent.receiver.run(stop)))
            tasks.create_task(_witness(ctx, "witnesses", witnesses.run(stop)))
            tasks.create_task(_drive(ctx, source, destination, stop, outcome, agent, witnesses))
        return outcome[0]
    finally:
        await icmp.close()
        for opened in sinks:
            with contextlib.suppress(OSError):
                opened.close()
        if witnesses is not None:
            witnesses.close()


async def _witness(ctx: _Context, name: str, work: Coroutine[Any, Any, None]) -> None:
    """Run one probe; its failure is recorded, not raised into the TaskGroup."""
    try:
        await work
    except Exception as exc:
        ctx.probe_failures[name] = exc
        ctx.record("probe_failed", probe=name, error=f"{type(exc).__name__}: {exc}")


async def _drive(
    ctx: _Context,
    source: str,
    destination: str,
    stop: asyncio.Event,
    outcome: list[MigrationOutcome],
    agent: GuestAgentSession | None = None,
    witnesses: Witnesses | None = None,
) -> None:
    """Wait for the probes, migrate, settle, then stop the probes. Never
    raises for an interrupt or a probe that is not ready: the outcome says."""
    backend = ctx.backend
    assert backend is not None
    try:
        try:
            if agent is not None:
                await ctx.bounded(
                    agent.start_and_wait(),
                    agent.setup.contact_deadline_s + PROBES_READY_DEADLINE_S,
                    "waiting for the guest agent",
                )
            if witnesses is not None:
                witnesses.agent_ready.set()  # the agent's witnesses start now
            await ctx.bounded(
                _probes_ready(ctx, witnesses), PROBES_READY_DEADLINE_S, "waiting for the probes"
            )
        except DeadlineExceeded:
            not_ready = [n for n, p in ctx.pollers.items() if not p.ready.is_set()]
            if ctx.icmp is not None and not ctx.icmp.ready.is_set():
                not_ready.insert(0, "icmp")
            if witnesses is not None:
                not_ready += witnesses.not_ready()
            raise ProbesNotReadyError(
                f"probes not ready within {PROBES_READY_DEADLINE_S:.0f} s: "
                f"{', '.join(not_ready) or 'the guest agent'}"
            ) from None
        ctx.record("probes_ready")
        ctx.interrupt.check("the probes' start")  # nothing irreversible after an interrupt
        ctx.announce(
            Phase.MIGRATING,
            f"{backend.migration_name} {ctx.config.vm} {source} -> {destination}",
        )
        result = await _migrate(ctx, source, destination)
        outcome.append(result)
        if result.kind in ("returned", "failed") and not ctx.interrupt.is_set():
            ctx.announce(Phase.SETTLING, "waiting for the guest to settle")
            # After a failure, settle_s only: a guest that no longer answers (its
            # host gone) must not hold the run for the quiet limit.
            await _settle(ctx, wait_for_quiet=result.kind == "returned")
    except Interrupted as exc:
        outcome.append(MigrationOutcome("interrupted", str(exc)))
    except (ProbesNotReadyError, TimeoutError) as exc:
        outcome.append(MigrationOutcome("failed", str(exc)))
    finally:
        if not outcome:  # cancelled, or an unexpected error: the caller reports it
            outcome.append(MigrationOutcome("failed", "the run was cancelled"))
        try:
            if witnesses is not None:
                # Before the agent stops, or the stream would seem to break.
                with contextlib.suppress(DeadlineExceeded, Exception):
                    await within(
                        witnesses.finish_agent_witnesses(),
                        deadline_s=10.0,
                        what="ending the agent's witnesses",
                    )
            if agent is not None:
                with contextlib.suppress(DeadlineExceeded, Exception):
                    await within(agent.stop(), deadline_s=10.0, what="stopping the guest agent")
        finally:
            stop.set()


async def _probes_ready(ctx: _Context, witnesses: Witnesses | None) -> None:
    probes: list[asyncio.Event] = [ctx.icmp.ready] if ctx.icmp else []
    probes += [p.ready for p in ctx.pollers.values()]
    probes += [ctx.console.ready] if ctx.console else []
    probes += witnesses.ready if witnesses else []
    for ready in probes:
        await ready.wait()


async def _migrate(ctx: _Context, source: str, destination: str) -> MigrationOutcome:
    """The backend's migration with the run's deadlines around it.

    The backend stops the migration itself on the interrupt or at
    ``--timeout`` (the flag it is given is set the moment a signal arrives).
    If the host does not even answer that stop within ``stop_s``, the call
    is abandoned: its worker thread is left behind, and the run goes on to
    the harvest and its end.
    """
    backend, limits = ctx.backend, ctx.limits
    assert backend is not None
    stop_migration = threading.Event()
    ctx.interrupt.link(stop_migration)
    ctx.migration_started = True
    call = asyncio.ensure_future(
        backend.migrate(
            ctx.run,
            source,
            destination,
            timeout_s=limits.migration_s,
            interrupted=stop_migration,
            record=ctx.record,
            tick=ctx.tick,
        )
    )
    name = backend.migration_name
    try:
        interrupted = asyncio.ensure_future(ctx.interrupt.event.wait())
        try:
            # The backend stops the call itself at --timeout or on the interrupt
            # (and gives the host stop_s to confirm); this is the backstop for a
            # host too hung to be asked anything.
            await asyncio.wait(
                {call, interrupted},
                timeout=limits.migration_s + limits.stop_s,
                return_when="FIRST_COMPLETED",
            )
        finally:
            interrupted.cancel()
        if not call.done() and ctx.interrupt.is_set():
            await asyncio.wait({call}, timeout=limits.stop_s)
        if call.done():
            return call.result()
        why = "interrupted" if ctx.interrupt.is_set() else "timeout"
        ctx.record("migration_abandoned", host=source, reason=why, after_s=limits.stop_s)
        if why == "interrupted":
            return MigrationOutcome(
                "interrupted",
                f"interrupted: {source} did not confirm that {name} was stopped "
                f"within {limits.stop_s:g} s",
            )
        return MigrationOutcome(
            "timeout",
            f"{source}: {name} did not return within {limits.migration_s:g} s and the host "
            f"did not confirm a stop within {limits.stop_s:g} s",
        )
    finally:
        ctx.interrupt.unlink(stop_migration)
        if not call.done():
            call.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({call}, timeout=1.0)


async def _settle(ctx: _Context, *, wait_for_quiet: bool = True) -> None:
    """``settle_s`` after Move-VM returned, and (``wait_for_quiet``) until the
    guest answered for ``settle_quiet_s``; never longer than ``settle_s`` plus
    the quiet limit (``SETTLE_QUIET_LIMIT_S``, or ``--timeout`` if shorter)."""
    migration = ctx.config.migration
    quiet_limit_s = min(SETTLE_QUIET_LIMIT_S, migration.timeout_s) if wait_for_quiet else 0.0
    start = time.monotonic()
    quiet_since: float | None = None
    while not ctx.interrupt.is_set():
        now = time.monotonic()
        stats = ctx.icmp.stats() if ctx.icmp else {}
        answering = all(s.current_loss_streak == 0 and s.replies > 0 for s in stats.values())
        if not answering:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        quiet = quiet_since is not None and now - quiet_since >= migration.settle_quiet_s
        if now - start >= migration.settle_s and quiet:
            break
        if now - start >= migration.settle_s + quiet_limit_s:
            if wait_for_quiet:
                ctx.record("settle_limit", message="the guest did not answer steadily")
            break
        ctx.tick()
        # A periodic check of the counters, ended at once by an interrupt.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await ctx.interrupt.event.wait()
    ctx.record("settled", interrupted=ctx.interrupt.is_set())


# -- after the migration ----------------------------------------------------


async def _harvest(ctx: _Context, clock_sink: JsonlSink | None) -> Mapping[str, ClockOffset | None]:
    """Clocks again and the hypervisor's own figures, each side within the
    harvest deadline, the sides and the two kinds at the same time. Attempted
    whatever happened before, with the short deadline once the run was
    interrupted or never started its migration; what it cannot get is
    recorded, never raised."""
    backend, limits = ctx.backend, ctx.limits
    after: Mapping[str, ClockOffset | None] = {}
    if backend is None:
        return after
    short = ctx.interrupt.is_set() or not ctx.migration_started
    deadline_s = limits.harvest_after_interrupt_s if short else limits.harvest_s
    message = "aligning clocks and collecting the hypervisor's figures"
    if ctx.migration_started:
        ctx.announce(Phase.HARVEST, message)
    else:  # recorded, not shown: a failed preflight leaves just its error line
        ctx.phase = Phase.HARVEST
        ctx.record("phase", phase=str(Phase.HARVEST), message=message)

    async def clocks() -> Mapping[str, ClockOffset | None]:
        if clock_sink is None:
            return {}
        return await backend.align_clocks(
            "after", clock_sink, ctx.record, tolerate_failures=True, deadline_s=deadline_s
        )

    async def both() -> tuple[Any, Any]:
        async def kept(work: Awaitable[Any]) -> Any:
            try:
                return await work
            except Exception as error:
                return error

        async with asyncio.TaskGroup() as kinds:
            clock_task = kinds.create_task(kept(clocks()))
            events_task = kinds.create_task(
                kept(backend.harvest(ctx.run, ctx.record, deadline_s=deadline_s))
            )
        return clock_task.result(), events_task.result()

    try:
        clock_result, harvest_result = await _until_deadline_or_short_after_interrupt(
            ctx,
            both(),
            deadline_s=deadline_s + 2.0,  # each side has its own deadline inside
            what="the harvest",
        )
        if isinstance(clock_result, BaseException):
            ctx.record("clock_failed", phase="after", error=_describe(clock_result))
        else:
            after = clock_result
        if isinstance(harvest_result, BaseException):
            ctx.record("harvest_incomplete", error=_describe(harvest_result))
    except DeadlineExceeded as exc:
        ctx.record("harvest_incomplete", error=str(exc))
    finally:
        if clock_sink is not None:
            with contextlib.suppress(OSError):
                clock_sink.close()
    return after


async def _until_deadline_or_short_after_interrupt(
    ctx: _Context, work: Awaitable[T], *, deadline_s: float, what: str
) -> T:
    """``work`` within ``deadline_s``; an interrupt meanwhile cuts what is left
    to the short harvest deadline (the harvest is attempted, not waited for)."""
    task = asyncio.ensure_future(work)
    interrupted = asyncio.ensure_future(ctx.interrupt.event.wait())
    try:
        await asyncio.wait({task, interrupted}, timeout=deadline_s, return_when="FIRST_COMPLETED")
        if not task.done() and ctx.interrupt.is_set():
            await asyncio.wait({task}, timeout=ctx.limits.harvest_after_interrupt_s)
        if task.done():
            return task.result()
        raise DeadlineExceeded(
            f"{what}: cut short by {ctx.interrupt.signal_name or 'a signal'}"
            if ctx.interrupt.is_set()
            else f"{what}: no answer within {deadline_s:g} s"
        )
    finally:
        interrupted.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=1.0)


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, HostError) else f"{type(error).__name__}: {error}"


def _copy_ground_truth(path: Path, run: RunWriter, since_mono_ns: int) -> None:
    """The lab's ground truth written since this run started, as raw data."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]
    except OSError:
        return
    if not lines:
        return
    out = run.raw / "ground_truth.jsonl"
    with open(out, "x", encoding="utf-8") as handle:
        handle.write(lines[0] + "\n")
        for line in lines[1:]:
            try:
                stamp = json.loads(line).get("mono_ns", 0)
            except (ValueError, AttributeError):
                continue  # a line the lab did not finish: not evidence
            if isinstance(stamp, int) and stamp >= since_mono_ns:
                handle.write(line + "\n")
    run.register_probe(GROUND_TRUTH.probe, GROUND_TRUTH.path, format="jsonl", source=str(path))


async def with_environment(
    measure: Callable[[Interrupt], Awaitable[T]], environment: RunEnvironment | None
) -> T:
    """``measure(interrupt)`` with SIGINT and SIGTERM handled throughout (the
    previous handlers restored after), and ``environment`` closed inside that
    handling (a signal while the lab stops cannot cut the cleanup short)."""
    loop = asyncio.get_running_loop()
    use_abandonable_threads(loop)
    interrupt = Interrupt()
    with interrupt.handling(loop):
        try:
            return await measure(interrupt)
        finally:
            if environment is not None:
                await environment.close()
