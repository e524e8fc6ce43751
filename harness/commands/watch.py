"""``measure watch``: probe targets while a person migrates by hand, then analyse.

This is the write-up's own procedure, automated: ICMP probes against the
guest, every attempt recorded, until a duration passes or the user presses
Ctrl-C; then the run folder is analysed. Both are a watch's normal end: the
run is ``completed`` and its manifest says how it ended (``ended_by``:
``duration``, ``SIGINT``, ``SIGTERM``). ``aborted`` is left for a watch
stopped before it measured anything (a signal while waiting for the guest
agent), ``failed`` for an error. The run folder is complete and finalised in
every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.analysis.rebuild import rebuild_derived
from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.icmp import IcmpPermissionError, IcmpProbe, IcmpTargetStats
from migration_blackout.runformat import ICMP, RunFormatError, RunStatus

from ..config import ProbeConfig
from ..guestagent import GuestAgentSession, GuestAgentSetup, ProbesNotReadyError
from ..machine import MachineWatch
from ..runwriter import OutputFolderError, create_run_folder, describe_error
from ..witnesses import Witnesses

# How long the probe may take to open its sockets and send its first probe.
PROBE_READY_DEADLINE_S = 10.0
PROGRESS_PERIOD_S = 0.5


@dataclass(frozen=True)
class WatchProgress:
    """What a progress line shows; handed to the caller's callback."""

    elapsed_s: float
    targets: Mapping[str, IcmpTargetStats]


@dataclass(frozen=True)
class WatchResult:
    run_dir: Path
    status: RunStatus
    summary: dict[str, Any] | None
    error: str | None


async def watch_async(
    *,
    targets: Sequence[str],
    interval_s: float,
    timeout_s: float | None,
    duration_s: float | None,
    out: Path,
    command: Sequence[str],
    kind: str = "watch",
    privileged: bool | None = None,
    progress: Callable[[WatchProgress], None] | None = None,
    guest_agent: GuestAgentSetup | None = None,
    announce: Callable[[str], None] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    witness_probes: ProbeConfig | None = None,
) -> WatchResult:
    """Probe ``targets`` every ``interval_s`` until ``duration_s`` or SIGINT/SIGTERM.

    With ``guest_agent`` the in-guest agent's receiver runs too, and the
    duration starts once its first frame and heartbeat arrived; ``announce``
    gets the command to start the agent. ``labels`` go to the manifest.
    ``witness_probes``: its TCP connect ports and whether the agent's
    witnesses run (``harness/witnesses.py``). Returns after the run folder
    is finalised and analysed.
    """
    config: dict[str, Any] = {
        "icmp": {"interval_s": interval_s, "timeout_s": timeout_s, "privileged": privileged},
        "duration_s": duration_s,
        **(extra_config or {}),
    }
    run = create_run_folder(
        out, kind=kind, command=command, config=config, targets=targets, labels=labels
    )
    machine = MachineWatch()
    run.manifest["machine"] = machine.context
    run.save()
    status = RunStatus.FAILED
    error: BaseException | None = None
    stop = asyncio.Event()
    measuring = asyncio.Event()  # set once the probes (and the agent) are ready
    ended_by: list[str] = []  # the signal's name, when a signal ended the watch
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not ended_by:
            ended_by.append(sig.name)
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        probe = IcmpProbe.create(
            run.raw / "icmp.csv",
            targets=list(targets),
            interval_s=interval_s,
            timeout_s=timeout_s,
            privileged=privileged,
        )
        witnesses: Witnesses | None = None
        try:
            run.manifest["config"]["icmp"].update(
                timeout_s=probe.timeout_s, privileged=probe.privileged
            )
            run.register_probe(ICMP.probe, ICMP.path, format="csv", **probe.meta)
            agent = None
            if guest_agent is not None:
                agent = GuestAgentSession(
                    run,
                    guest_agent,
                    record=lambda *_a, **_k: None,
                    announce=announce or (lambda _message: None),
                )
            witnesses = Witnesses(
                run,
                witness_probes or ProbeConfig(),
                targets=targets,
                token=None if agent is None else agent.token,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(probe.run(stop))
                if agent is not None:
                    tasks.create_task(agent.receiver.run(stop))
                tasks.create_task(witnesses.run(stop))
                tasks.create_task(
                    _supervise(probe, stop, duration_s, progress, agent, measuring, witnesses)
                )
        finally:
            probe.sink.close()
            if witnesses is not None:
                witnesses.close()
        # Ctrl-C (or SIGTERM) is how a watch without --duration ends: a normal end
        # once it measured; before that (waiting for the agent), nothing was measured.
        status = RunStatus.COMPLETED if measuring.is_set() else RunStatus.ABORTED
        if not ended_by:
            ended_by.append("duration")
    except Exception as exc:
        # A probe or the disk failed: the folder is finalised as failed and
        # the caller gets a result that says why (never a traceback).
        error = exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc
        status = RunStatus.FAILED
        ended_by[:] = ["error"]
        if isinstance(
            error, ProbesNotReadyError | OutputFolderError | IcmpPermissionError | ValueError
        ):
            raise error from None
    except BaseException as exc:
        error = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
        cancelled = isinstance(error, KeyboardInterrupt | asyncio.CancelledError)
        status = RunStatus.ABORTED if cancelled else RunStatus.FAILED
        ended_by[:] = ["SIGINT" if isinstance(error, KeyboardInterrupt) else "error"]
        raise error from None
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        run.manifest["ended_by"] = ended_by[0] if ended_by else "error"
        run.manifest["machine"] = machine.finish()
        run.finalize(status, error if status is RunStatus.FAILED else None)
        if status is RunStatus.ABORTED and error is None:
            run.manifest["error"] = {
                "type": "interrupted",
                "message": f"stopped by {ended_by[0]} before the probes were measuring",
            }
            run.save()
    message = None if error is None else describe_error(error)
    summary = None
    try:
        summary_path = rebuild_derived(run.path)[0]
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, RunFormatError) as exc:
        message = (message + "; " if message else "") + f"analysis failed: {describe_error(exc)}"
    return WatchResult(run_dir=run.path, status=status, summary=summary, error=message)


async def _supervise(
    probe: IcmpProbe,
    stop: asyncio.Event,
    duration_s: float | None,
    progress: Callable[[WatchProgress], None] | None,
    agent: GuestAgentSession | None,
    measuring: asyncio.Event,
    witnesses: Witnesses,
) -> None:
    """Wait for readiness (and the guest agent), report progress, end the watch."""
    try:
        try:
            async with asyncio.timeout(PROBE_READY_DEADLINE_S):
                await probe.ready.wait()
        except TimeoutError:
            raise ProbesNotReadyError(
                f"the ICMP probe was not ready within {PROBE_READY_DEADLINE_S:.0f} s"
            ) from None
        if agent is not None:
            await agent.start_and_wait()
        witnesses.agent_ready.set()
        measuring.set()
        start = clock_pair().mono_ns
        deadline = None if duration_s is None else start + int(duration_s * 1e9)
        while not stop.is_set():
            now = clock_pair().mono_ns
            if deadline is not None and now >= deadline:
                break
            if progress is not None:
                progress(WatchProgress(elapsed_s=(now - start) / 1e9, targets=probe.stats()))
            wait = PROGRESS_PERIOD_S
            if deadline is not None:
                wait = min(wait, (deadline - now) / 1e9)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
    finally:
        await witnesses.finish_agent_witnesses()
        if agent is not None:
            await agent.stop()
        stop.set()


def run(**kwargs: Any) -> WatchResult:
    """Synchronous entry point for the CLI and for tests."""
    return asyncio.run(watch_async(**kwargs))
