"""``measure run --repeat N [--ping-pong]``: several migrations, one session folder.

Each migration gets a run folder of its own inside ``<out>/<session-id>/``;
``session.json`` beside them lists the runs as they finish and, at the end,
the blackout per direction (median, p95, max of the lower bound, estimate
and upper bound). With ``--ping-pong`` every run after the first goes back
the way the previous one came (the write-up migrated both ways); without it
each run finds the VM's host again, which alternates too unless ``--source``
pins the direction. The session stops early on Ctrl-C or a failed preflight.

The regression test of ``measure report`` needs at least ``MIN_RUNS`` runs
per direction on each side; ``ping_pong_shortfall`` says, before the first
migration, when a session will give fewer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from migration_blackout.analysis.compare import MIN_RUNS
from migration_blackout.analysis.report.model import direction_stats
from migration_blackout.analysis.report.renderers import direction_stats_json
from migration_blackout.analysis.report.runs import read_run
from migration_blackout.probes.clock import clock_pair
from migration_blackout.runformat import (
    MANIFEST_FILE,
    SESSION_FILE,
    SESSION_SCHEMA_VERSION,
    RunStatus,
    utc_iso,
)

from .. import exitcodes
from ..backends import PreflightError, PreparedRun
from ..deadlines import Interrupt
from ..measurement import (
    Outcome,
    ProgressCallback,
    RunEnvironment,
    RunResult,
    measure_run,
)
from ..runwriter import OutputFolderError, new_run_id


@dataclass(frozen=True)
class SessionResult:
    """The session folder, its runs in order and how the session ended
    (``document``: ``session.json`` as written)."""

    session_dir: Path
    runs: tuple[RunResult, ...]
    outcome: Outcome
    document: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


def _write(path: Path, document: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ping_pong_shortfall(repeat: int) -> str | None:
    """A warning when ``--repeat repeat --ping-pong`` gives a direction fewer runs than
    the regression test needs (``MIN_RUNS`` per direction and side); else None."""
    fewest = repeat // 2
    if fewest >= MIN_RUNS:
        return None
    needed = 2 * MIN_RUNS
    return (
        f"--repeat {repeat} --ping-pong gives {repeat - fewest} run(s) one way and {fewest} "
        f"the other; `measure report` needs at least {MIN_RUNS} runs per direction (on each "
        f"side of a comparison) to test for a regression: use --repeat {needed} or more"
    )


def _session_exit_code(results: list[RunResult], preflight_failed: bool) -> int:
    codes = {r.exit_code for r in results}
    if exitcodes.INTERRUPTED in codes:
        return exitcodes.INTERRUPTED
    if preflight_failed or exitcodes.PREFLIGHT in codes:
        return exitcodes.PREFLIGHT
    if codes - {exitcodes.OK}:
        return exitcodes.MIGRATION_FAILED
    return exitcodes.OK


async def measure_session(
    *,
    target: PreparedRun,
    environment: RunEnvironment | None = None,
    repeat: int,
    ping_pong: bool,
    out: Path,
    command: Sequence[str],
    interrupt: Interrupt,
    progress: ProgressCallback | None = None,
    on_run_start: Callable[[int, int], None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> SessionResult:
    """Run ``repeat`` migrations of ``target`` (in ``environment``, a lab
    started for the session); every run folder is complete whatever happens.
    An interrupt ends the run in progress (aborted) and the session.

    ``on_run_start(number, repeat)`` is called before each migration (number
    from 1), for a "run 2/3" header. ``labels`` go to every run's manifest
    and to ``session.json``.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    start = clock_pair()
    session_id = new_run_id("session", start)
    session_dir = Path(out) / session_id
    try:
        session_dir.mkdir(parents=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create session folder {session_dir}: {exc}") from exc
    document: dict[str, Any] = {
        "schema_version": SESSION_SCHEMA_VERSION,
        "kind": "session",
        "session_id": session_id,
        "command": list(command),
        "repeat": repeat,
        "ping_pong": ping_pong,
        "labels": dict(labels or {}),
        "started_utc": utc_iso(start.utc_ns),
        "ended_utc": None,
        "status": "running",
        "runs": [],
        "directions": [],
    }
    path = session_dir / SESSION_FILE
    _write(path, document)
    results: list[RunResult] = []
    preflight_failed = False
    run_target = target
    try:
        for index in range(repeat):
            if on_run_start is not None:
                on_run_start(index + 1, repeat)
            try:
                result = await measure_run(
                    target=run_target,
                    environment=environment,
                    out=session_dir,
                    command=command,
                    interrupt=interrupt,
                    progress=progress,
                    labels=labels,
                )
            except PreflightError as exc:
                document["runs"].append({"index": index, "preflight_error": str(exc)})
                preflight_failed = True
                break
            results.append(result)
            document["runs"].append(
                {
                    "index": index,
                    "run_id": result.run_dir.name,
                    "status": str(result.status),
                    "exit_code": result.exit_code,
                    "source": result.source,
                    "destination": result.destination,
                    "message": result.message,
                }
            )
            _write(path, document)
            if result.exit_code in (exitcodes.INTERRUPTED, exitcodes.PREFLIGHT):
                break
            if interrupt.is_set():
                break
            if ping_pong and result.source and result.destination:
                back = replace(
                    run_target.config, source=result.destination, destination=result.source
                )
                run_target = replace(run_target, config=back)
    finally:
        runs = [read_run(r.run_dir) for r in results if (r.run_dir / MANIFEST_FILE).exists()]
        document["directions"] = [direction_stats_json(s) for s in direction_stats(runs)]
        document["ended_utc"] = utc_iso(clock_pair().utc_ns)
        exit_code = _session_exit_code(results, preflight_failed)
        document["status"] = str(
            RunStatus.COMPLETED
            if exit_code == exitcodes.OK
            else (RunStatus.ABORTED if exit_code == exitcodes.INTERRUPTED else RunStatus.FAILED)
        )
        document["exit_code"] = exit_code
        _write(path, document)
    return SessionResult(
        session_dir=session_dir, runs=tuple(results), outcome=Outcome(exit_code), document=document
    )
