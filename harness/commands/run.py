"""``measure run``: live-migrate a VM and measure its blackout.

The hypervisor is a backend (``harness.backends``): Hyper-V over PSRP (real
hosts or the emulated lab) or QEMU over QMP. The phases, each announced to
the caller's progress callback and written to ``raw/events.jsonl``:

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
   emulated lab, its ground truth.

The run folder is finalised in every case; then it is analysed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from migration_blackout.analysis.derive import rebuild_derived
from migration_blackout.probes.clock import clock_pair, utc_iso
from migration_blackout.probes.console_view import CONSOLE_FILE, ConsoleViewProbe
from migration_blackout.probes.host_state import HostStatePoller
from migration_blackout.probes.icmp import IcmpTargetStats
from migration_blackout.probes.icmp_process import IcmpProbeProcess
from migration_blackout.probes.sink import JsonlSink

from .. import exitcodes
from ..backends import HypervisorBackend, MigrationOutcome, PreflightError
from ..backends.hyperv import HyperVBackend
from ..clocksync import ClockOffset, drift_ppm
from ..config import RunConfig
from ..console import DEFAULT_HEIGHT, DEFAULT_WIDTH
from ..guestagent import GuestAgentSession, GuestAgentSetup, ProbesNotReadyError
from ..hyperv import HostError
from ..machine import MachineWatch
from ..runfolder import RunFolder, RunStatus, create_run_folder
from ..witnesses import Witnesses

PROBES_READY_DEADLINE_S = 15.0
PREFLIGHT_PING_COUNT = 5
CONSOLE_POLL_INTERVAL_S = 0.5
# SCHED_FIFO priority of the ICMP prober's process when root: it does nothing
# else, and real-time scheduling keeps its sends on time on a busy machine.
ICMP_REALTIME_PRIORITY = 10
SETTLE_QUIET_LIMIT_S = 60.0  # the settle window ends at the latest this long after settle_s


class Phase(StrEnum):
    PREFLIGHT = "preflight"
    CLOCK = "clock"
    PROBES = "probes"
    MIGRATING = "migrating"
    SETTLING = "settling"
    HARVEST = "harvest"


@dataclass(frozen=True)
class RunProgress:
    phase: Phase
    elapsed_s: float
    message: str | None = None
    percent: int | None = None
    states: Mapping[str, str] = field(default_factory=dict)  # host -> state or "unlisted"
    icmp: Mapping[str, IcmpTargetStats] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: RunStatus
    exit_code: int
    message: str | None
    summary: dict[str, Any] | None
    source: str | None = None
    destination: str | None = None


ProgressCallback = Callable[[RunProgress], None]


class _Recorder:
    """``raw/events.jsonl``: the harness's own events, each with both clocks."""

    def __init__(self, sink: JsonlSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        now = clock_pair()
        with self._lock:
            self._sink.write(
                {
                    "event": event,
                    "mono_ns": now.mono_ns,
                    "utc_ns": now.utc_ns,
                    "utc": utc_iso(now.utc_ns),
                    **fields,
                }
            )


@dataclass
class _Context:
    config: RunConfig
    run: RunFolder
    record: _Recorder
    progress: ProgressCallback | None
    start_mono_ns: int
    backend: HypervisorBackend
    pollers: dict[str, HostStatePoller] = field(default_factory=dict)
    icmp: IcmpProbeProcess | None = None
    console: ConsoleViewProbe | None = None
    phase: Phase = Phase.PREFLIGHT

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


async def measure_run(
    *,
    config: RunConfig,
    passwords: Mapping[str, str | None] | None = None,
    backend: HypervisorBackend | None = None,
    backend_factory: Callable[[], Awaitable[HypervisorBackend]] | None = None,
    out: Path,
    command: Sequence[str],
    progress: ProgressCallback | None = None,
    ground_truth: Path | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    guest_agent: GuestAgentSetup | None = None,
    labels: Mapping[str, str] | None = None,
) -> RunResult:
    """Run one migration with every probe; always returns a finalised run folder.

    ``backend`` is the hypervisor (default: Hyper-V over PSRP with
    ``config.hosts`` and ``passwords``, which map host names to passwords and
    are never written anywhere). ``ground_truth``: the emulated lab's
    ground-truth file, copied (the part written during this run) into
    ``raw/ground_truth.jsonl``. ``labels`` go to the manifest; so do the
    measuring machine (``machine``) and what the backend tells of the hosts
    and the VM (``hosts``, ``vm``).
    """
    if backend is None and backend_factory is not None:
        backend = await backend_factory()
    if backend is None:
        backend = HyperVBackend(config, passwords or {})
    if not config.guest_addresses:
        raise PreflightError("no guest address is configured: set [guest] addresses or --target")
    run = create_run_folder(
        out,
        kind="run",
        command=command,
        config={**config.describe(), "hypervisor": backend.describe()},
        targets=list(config.guest_addresses),
        labels=labels,
    )
    machine = MachineWatch()
    run.manifest["machine"] = machine.context
    if extra_manifest:
        run.manifest.update(extra_manifest)
    run.save()
    events = JsonlSink(run.raw / "events.jsonl", probe="harness")
    run.register_probe("harness", "raw/events.jsonl", format="jsonl")
    ctx = _Context(
        config=config,
        run=run,
        record=_Recorder(events),
        progress=progress,
        start_mono_ns=time.monotonic_ns(),
        backend=backend,
    )
    status, exit_code, message = RunStatus.FAILED, exitcodes.MIGRATION_FAILED, None
    error: BaseException | str | None = None
    source = destination = None
    interrupted = threading.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, interrupted.set)
            installed.append(sig)
    try:
        ctx.announce(Phase.PREFLIGHT)
        await backend.open(ctx.record)
        source, destination = await backend.locate(ctx.record)
        ctx.record("preflight", check="direction", source=source, destination=destination)
        run.manifest.update(await backend.describe_hosts(source, destination))
        await _check_guest_answers(ctx)
        ctx.announce(Phase.CLOCK, "aligning clocks")
        clock_sink = JsonlSink(run.raw / "clock.jsonl", probe="clock")
        run.register_probe("clock", "raw/clock.jsonl", format="jsonl")
        try:
            before = await backend.align_clocks(
                "before", clock_sink, ctx.record, tolerate_failures=False
            )
            outcome = await _probe_and_migrate(ctx, source, destination, interrupted, guest_agent)
            ctx.announce(Phase.HARVEST, "aligning clocks and collecting the hypervisor's figures")
            after = await backend.align_clocks(
                "after", clock_sink, ctx.record, tolerate_failures=True
            )
        finally:
            clock_sink.close()
        _record_clocks(run, backend.kind, before, after)
        await backend.harvest(run, ctx.record)
        if outcome.kind == "returned":
            status, exit_code = RunStatus.COMPLETED, exitcodes.OK
        elif outcome.kind == "interrupted":
            status, exit_code = RunStatus.ABORTED, exitcodes.INTERRUPTED
            message = error = outcome.message or "interrupted"
        elif outcome.kind == "timeout":
            status, exit_code = RunStatus.ABORTED, exitcodes.MIGRATION_FAILED
            message = error = outcome.message
        else:
            status, exit_code = RunStatus.FAILED, exitcodes.MIGRATION_FAILED
            message = error = outcome.message
    except PreflightError as exc:
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
        for sig in installed:
            loop.remove_signal_handler(sig)
        await backend.close()
        if ground_truth is not None:
            _copy_ground_truth(ground_truth, run, ctx.start_mono_ns)
        ctx.record("end", status=str(status), message=message)
        events.close()
        run.manifest["hypervisor"] = {
            "kind": backend.kind,
            "source": source,
            "destination": destination,
        }
        run.manifest[backend.kind] = {
            **run.manifest.get(backend.kind, {}),
            # What preflight learnt (Hyper-V: each host's live migration set-up).
            **getattr(backend, "preflight_facts", {}),
            "source": source,
            "destination": destination,
        }
        run.manifest["machine"] = machine.finish()
        run.finalize(status, error)
    summary = None
    try:
        summary = json.loads(rebuild_derived(run.path)[0].read_text(encoding="utf-8"))
    except Exception as exc:  # the run folder stands; analysis can be rebuilt later
        message = (message + "; " if message else "") + f"analysis failed: {exc}"
    return RunResult(
        run_dir=run.path,
        status=status,
        exit_code=exit_code,
        message=message,
        summary=summary,
        source=source,
        destination=destination,
    )


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
    run: RunFolder,
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
    run.save()


# -- probes and the migration ----------------------------------------------


def _poller_file(host: str) -> str:
    return f"raw/host_{host}.jsonl"


async def _probe_and_migrate(
    ctx: _Context,
    source: str,
    destination: str,
    interrupted: threading.Event,
    guest_agent: GuestAgentSetup | None = None,
) -> MigrationOutcome:
    config, run = ctx.config, ctx.run
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
    await icmp.start()
    ctx.icmp = icmp
    run.register_probe("icmp", "raw/icmp.csv", format="csv", process=True, **icmp.meta)
    sinks: list[JsonlSink] = []
    witnesses: Witnesses | None = None
    try:
        for side in ctx.backend.polled_sides(source, destination):
            sink = JsonlSink(
                run.raw / f"host_{side.name}.jsonl",
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
            )
            run.register_probe(
                f"host:{side.name}", _poller_file(side.name), format="jsonl", role=side.role
            )
        # The console view (the write-up's VM Connection window), where the
        # hypervisor has one: the VM's screen from whichever side holds it.
        console = None
        console_poll = ctx.backend.console_poll(source)
        if console_poll is not None:
            console = ConsoleViewProbe.create(
                run.path,
                poll=console_poll,
                vm=config.vm,
                width=DEFAULT_WIDTH,
                height=DEFAULT_HEIGHT,
                interval_s=CONSOLE_POLL_INTERVAL_S,
            )
            ctx.console = console
            sinks.append(console.sink)
            run.register_probe("console", CONSOLE_FILE, format="jsonl", **console.meta)
        stop = asyncio.Event()
        outcome: list[MigrationOutcome] = []
        agent = (
            None
            if guest_agent is None
            else GuestAgentSession(ctx.run, guest_agent, record=ctx.record, announce=ctx.tick)
        )
        token = None if agent is None else agent.token
        witnesses = Witnesses(run, config.probes, targets=config.guest_addresses, token=token)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(icmp.run(stop))
            for poller in ctx.pollers.values():
                tasks.create_task(poller.run(stop))
            if console is not None:
                tasks.create_task(console.run(stop))
            if agent is not None:
                tasks.create_task(agent.receiver.run(stop))
            tasks.create_task(witnesses.run(stop))
            tasks.create_task(
                _drive(ctx, source, destination, stop, interrupted, outcome, agent, witnesses)
            )
        return outcome[0]
    finally:
        await icmp.close()
        for opened in sinks:
            opened.close()
        if witnesses is not None:
            witnesses.close()


async def _drive(
    ctx: _Context,
    source: str,
    destination: str,
    stop: asyncio.Event,
    interrupted: threading.Event,
    outcome: list[MigrationOutcome],
    agent: GuestAgentSession | None = None,
    witnesses: Witnesses | None = None,
) -> None:
    """Wait for the probes, migrate, settle, then stop the probes."""
    try:
        if agent is not None:
            await agent.start_and_wait()
        if witnesses is not None:
            witnesses.agent_ready.set()  # the agent's witnesses start now
        probes: list[asyncio.Event] = [ctx.icmp.ready] if ctx.icmp else []
        probes += [p.ready for p in ctx.pollers.values()]
        probes += [ctx.console.ready] if ctx.console else []
        probes += witnesses.ready if witnesses else []
        try:
            async with asyncio.timeout(PROBES_READY_DEADLINE_S):
                for ready in probes:
                    await ready.wait()
        except TimeoutError:
            not_ready = [n for n, p in ctx.pollers.items() if not p.ready.is_set()]
            raise ProbesNotReadyError(
                f"probes not ready within {PROBES_READY_DEADLINE_S:.0f} s: "
                f"{', '.join(not_ready) or 'icmp'}"
            ) from None
        ctx.record("probes_ready")
        ctx.announce(
            Phase.MIGRATING,
            f"{ctx.backend.migration_name} {ctx.config.vm} {source} -> {destination}",
        )
        result = await ctx.backend.migrate(
            ctx.run,
            source,
            destination,
            timeout_s=ctx.config.migration.timeout_s,
            interrupted=interrupted,
            record=ctx.record,
            tick=ctx.tick,
        )
        outcome.append(result)
        if result.kind in ("returned", "failed"):
            ctx.announce(Phase.SETTLING, "waiting for the guest to settle")
            await _settle(ctx, interrupted)
    finally:
        if witnesses is not None:
            await witnesses.finish_agent_witnesses()
        if agent is not None:
            await agent.stop()
        stop.set()


async def _settle(ctx: _Context, interrupted: threading.Event) -> None:
    """``settle_s`` after Move-VM returned, and until the guest answered for
    ``settle_quiet_s``; never longer than ``settle_s + SETTLE_QUIET_LIMIT_S``."""
    migration = ctx.config.migration
    start = time.monotonic()
    quiet_since: float | None = None
    while not interrupted.is_set():
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
        if now - start >= migration.settle_s + SETTLE_QUIET_LIMIT_S:
            ctx.record("settle_limit", message="the guest did not answer steadily")
            break
        ctx.tick()
        await asyncio.sleep(0.1)  # a periodic check, not a wait for a condition
    ctx.record("settled", interrupted=interrupted.is_set())


# -- after the migration ----------------------------------------------------


def _copy_ground_truth(path: Path, run: RunFolder, since_mono_ns: int) -> None:
    """The lab's ground truth written since this run started, as raw data."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    except OSError:
        return
    if not lines:
        return
    out = run.raw / "ground_truth.jsonl"
    with open(out, "x", encoding="utf-8") as handle:
        handle.write(lines[0] + "\n")
        for line in lines[1:]:
            if json.loads(line).get("mono_ns", 0) >= since_mono_ns:
                handle.write(line + "\n")
    run.register_probe("ground_truth", "raw/ground_truth.jsonl", format="jsonl", source=str(path))


def run(**kwargs: Any) -> RunResult:
    """Synchronous entry point for the CLI and tests."""
    return asyncio.run(measure_run(**kwargs))
