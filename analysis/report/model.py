"""The report itself: statistics per group, threshold checks, the regression verdict
against a baseline, and the notes that qualify them (``build_report``).

**Which blackout figure counts.** Every run's summary gives three: the lower
bound (first to last lost probe: what the losses prove), the upper bound (last
reply before to first reply after: the guest was silent for at most this
long) and the estimate (lost probes x interval). Reports show all three; the
thresholds and the regression test use the **upper bound**, the conservative
figure: a run that passes on it passes whatever the true blackout was. A
blackout that is open at a side (the run began or ended inside it) has no
upper bound: it fails ``max_blackout_ms`` and ranks above every measured
blackout in the regression test (statistics show it as "open").

**Groups.** Statistics and the regression test are per group: the migration
direction, and with ``group_by`` the values of those labels (``measure run
--label key=value``), e.g. ``"A -> B [vm_memory=4G]"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from migration_blackout.analysis.compare import (
    RegressionVerdict,
    Verdict,
    compare_blackouts,
    format_ms,
)
from migration_blackout.analysis.report.runs import (
    INCLUDED_STATUS,
    BlackoutFigures,
    ReportedRun,
    find_run_folders,
    read_run,
    run_group,
)
from migration_blackout.runformat import (
    RunFormatError,
    Thresholds,
    package_version,
)

# CPU steal during a run (the measuring machine's hypervisor ran something else)
# from which the report mentions it.
STEAL_NOTE_PCT = 2.0


@dataclass(frozen=True)
class FigureStats:
    """Median, 95th percentile (linear interpolation) and maximum of one figure, in ms.

    ``inf`` (shown "open") when a blackout without an upper bound reaches it.
    """

    n: int
    median_ms: float | None
    p95_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class DirectionStats:
    """The blackouts of the included runs of one group.

    ``direction`` names the group: the migration direction, followed by the
    values of the labels the report groups by (``"A -> B [vm_memory=4G]"``).
    ``open_upper`` counts the runs whose blackout has no upper bound (they
    are in ``upper`` as inf).
    """

    direction: str
    run_ids: tuple[str, ...]
    lower: FigureStats
    estimate: FigureStats
    upper: FigureStats
    open_upper: int


@dataclass(frozen=True)
class DirectionRegression:
    direction: str
    result: RegressionVerdict


class CheckOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not applicable: an excluded run, or insufficient data
    ERROR = "error"  # should have been checkable but was not: a run that measured nothing


@dataclass(frozen=True)
class Check:
    """One threshold check: ``name`` is ``max_blackout_ms``, ``max_timeouts`` or
    ``regression``; ``subject`` the run id, or the direction for ``regression``;
    ``message`` says what was compared, with the numbers."""

    name: str
    subject: str
    outcome: CheckOutcome
    message: str
    skip_reason: str | None = None  # for a skipped check, why in a few words


@dataclass(frozen=True)
class Report:
    runs: tuple[ReportedRun, ...]
    baseline_runs: tuple[ReportedRun, ...]
    thresholds: Thresholds
    directions: tuple[DirectionStats, ...]
    baseline_directions: tuple[DirectionStats, ...]
    regressions: tuple[DirectionRegression, ...]
    checks: tuple[Check, ...]
    notes: tuple[str, ...]
    generated_by: str
    generated_utc: str
    group_by: tuple[str, ...] = ()

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(
            c for c in self.checks if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
        )

    @property
    def passed(self) -> bool:
        """No check failed (a report with nothing to check passes)."""
        return not self.failed_checks

    @property
    def group_title(self) -> str:
        """What a group is: ``direction``, then the labels grouped by."""
        return "direction" + (f" [{', '.join(self.group_by)}]" if self.group_by else "")

    def checks_by_run(self) -> dict[str, list[Check]]:
        """Each run's checks (every check but the regression verdicts), by run id."""
        out: dict[str, list[Check]] = {}
        for check in self.checks:
            if check.name != "regression":
                out.setdefault(check.subject, []).append(check)
        return out


# --- statistics and checks ---------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy's linear percentile, except that a value interpolated towards inf is inf."""
    position = (len(sorted_values) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    a, b = sorted_values[low], sorted_values[high]
    if low == high or a == b:
        return a
    if math.isinf(b):
        return math.inf
    return a + (b - a) * (position - low)


def figure_stats(values: Sequence[float]) -> FigureStats:
    """Median, p95 and max of blackout figures in ms (inf allowed)."""
    if not values:
        return FigureStats(n=0, median_ms=None, p95_ms=None, max_ms=None)
    ordered = sorted(values)
    return FigureStats(
        n=len(ordered),
        median_ms=_percentile(ordered, 50),
        p95_ms=_percentile(ordered, 95),
        max_ms=ordered[-1],
    )


def directions_in_order(*groups: Sequence[ReportedRun]) -> list[str]:
    """The runs' statistics groups (``ReportedRun.group``) in order of first appearance."""
    seen: dict[str, None] = {}
    for group in groups:
        for run in group:
            seen.setdefault(run.in_group)
    return list(seen)


def included_blackouts(runs: Sequence[ReportedRun], direction: str) -> list[ReportedRun]:
    return [r for r in runs if r.included and r.in_group == direction]


def direction_stats(runs: Sequence[ReportedRun]) -> tuple[DirectionStats, ...]:
    """Per group (in order of first appearance), the included runs' blackout figures."""
    out = []
    for direction in directions_in_order(runs):
        chosen = included_blackouts(runs, direction)
        figures = [r.blackout for r in chosen if r.blackout is not None]
        out.append(
            DirectionStats(
                direction=direction,
                run_ids=tuple(r.run_id for r in chosen),
                lower=figure_stats([b.lower_ms for b in figures]),
                estimate=figure_stats(
                    [b.estimate_ms for b in figures if b.estimate_ms is not None]
                ),
                upper=figure_stats([b.conservative_ms for b in figures]),
                open_upper=sum(1 for b in figures if b.upper_ms is None),
            )
        )
    return tuple(out)


def format_limit(value: float) -> str:
    return f"{value:g}"


def _open_sides(blackout: BlackoutFigures) -> str:
    sides = [
        s for s, is_open in (("start", blackout.open_start), ("end", blackout.open_end)) if is_open
    ]
    return " and ".join(sides) or "a side"


def _check_blackout(run: ReportedRun, blackout: BlackoutFigures, limit: float) -> Check:
    name = "max_blackout_ms"
    if blackout.source is None:
        return Check(
            name,
            run.run_id,
            CheckOutcome.PASSED,
            f"no probe was lost (a blackout, if any, below the probe interval) "
            f"<= max_blackout_ms {format_limit(limit)} ms",
        )
    bounds = (
        f"lower {format_ms(blackout.lower_ms)} ms, estimate {format_ms(blackout.estimate_ms)} ms, "
        f"{blackout.lost} probes lost, {blackout.source}"
    )
    if blackout.upper_ms is None:
        return Check(
            name,
            run.run_id,
            CheckOutcome.FAILED,
            f"blackout has no upper bound (the outage is open at its {_open_sides(blackout)}: the "
            f"run {'began' if blackout.open_start else 'ended'} inside it), so it cannot be shown "
            f"<= max_blackout_ms {format_limit(limit)} ms ({bounds})",
        )
    if blackout.upper_ms > limit:
        return Check(
            name,
            run.run_id,
            CheckOutcome.FAILED,
            f"blackout upper bound {format_ms(blackout.upper_ms)} ms > max_blackout_ms "
            f"{format_limit(limit)} ms ({bounds})",
        )
    return Check(
        name,
        run.run_id,
        CheckOutcome.PASSED,
        f"blackout upper bound {format_ms(blackout.upper_ms)} ms <= max_blackout_ms "
        f"{format_limit(limit)} ms ({bounds})",
    )


def _check_timeouts(run: ReportedRun, blackout: BlackoutFigures, limit: int) -> Check:
    outcome = CheckOutcome.FAILED if blackout.timeouts > limit else CheckOutcome.PASSED
    relation = ">" if outcome is CheckOutcome.FAILED else "<="
    where = f" on {blackout.source}" if blackout.source else ""
    return Check(
        "max_timeouts",
        run.run_id,
        outcome,
        f"{blackout.timeouts} timeouts in the blackout {relation} max_timeouts {limit} "
        f"({blackout.timeouts_outside} more outside it{where}; destination unreachable counted "
        f"apart: {blackout.unreachable} in the blackout, {blackout.unreachable_outside} outside)",
    )


def _check_tcp_stall(run: ReportedRun, limit: float) -> Check:
    name = "max_tcp_stall_ms"
    stall = run.tcp_stall
    if stall is None:
        return Check(
            name,
            run.run_id,
            CheckOutcome.SKIPPED,
            "not checked: the run has no TCP stream (measure run --witnesses)",
            skip_reason="no TCP stream",
        )
    survived = "survived" if stall.survived else "broke"
    failed = stall.upper_ms > limit
    return Check(
        name,
        run.run_id,
        CheckOutcome.FAILED if failed else CheckOutcome.PASSED,
        f"TCP stall upper bound {format_ms(stall.upper_ms)} ms ({stall.direction}, the stream "
        f"{survived}) {'>' if failed else '<='} max_tcp_stall_ms {format_limit(limit)} ms",
    )


def _check_run(run: ReportedRun, name: str, limit: float) -> Check:
    if run.status != INCLUDED_STATUS:
        message = f"not checked: the run's {run.excluded_because}; it is left out of the statistics"
        return Check(
            name, run.run_id, CheckOutcome.SKIPPED, message, skip_reason=f"run {run.status}"
        )
    if run.blackout is None:
        message = f"the run completed without ICMP records: nothing was measured to check {name}"
        return Check(name, run.run_id, CheckOutcome.ERROR, message)
    if name == "max_blackout_ms":
        return _check_blackout(run, run.blackout, limit)
    if name == "max_tcp_stall_ms":
        return _check_tcp_stall(run, limit)
    return _check_timeouts(run, run.blackout, int(limit))


def run_checks(runs: Sequence[ReportedRun], thresholds: Thresholds) -> list[Check]:
    """Each run's threshold checks: ``max_blackout_ms``, ``max_timeouts`` and
    ``max_tcp_stall_ms``, those set."""
    limits = [
        (name, float(limit))
        for name, limit in (
            ("max_blackout_ms", thresholds.max_blackout_ms),
            ("max_timeouts", thresholds.max_timeouts),
            ("max_tcp_stall_ms", thresholds.max_tcp_stall_ms),
        )
        if limit is not None
    ]
    return [_check_run(run, name, limit) for run in runs for name, limit in limits]


def regression_skip_reason(result: RegressionVerdict) -> str | None:
    if result.verdict is not Verdict.INSUFFICIENT_DATA:
        return None
    if result.n_baseline == 0:
        return "no baseline"
    return "insufficient data"


def regression_checks(regressions: Sequence[DirectionRegression]) -> list[Check]:
    outcomes = {
        Verdict.PASS: CheckOutcome.PASSED,
        Verdict.REGRESSION: CheckOutcome.FAILED,
        Verdict.INSUFFICIENT_DATA: CheckOutcome.SKIPPED,
    }
    return [
        Check(
            "regression",
            r.direction,
            outcomes[r.result.verdict],
            r.result.reason,
            skip_reason=regression_skip_reason(r.result),
        )
        for r in regressions
    ]


def _id_list(run_ids: Sequence[str], shown: int = 10) -> str:
    """``"3 runs (a, b, c)"``, naming at most ``shown`` of them."""
    names = ", ".join(run_ids[:shown]) + (", ..." if len(run_ids) > shown else "")
    return f"{len(run_ids)} run{'s' if len(run_ids) != 1 else ''} ({names})"


def _resolved(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    return [Path(p).resolve() for p in paths]


def _check_distinct(
    run_dirs: Sequence[str | os.PathLike[str]], baseline_dirs: Sequence[str | os.PathLike[str]]
) -> None:
    seen: dict[Path, str] = {}
    for role, paths in (("run", run_dirs), ("baseline", baseline_dirs)):
        for given, resolved in zip(paths, _resolved(paths), strict=True):
            if resolved in seen:
                raise RunFormatError(
                    f"{given} is given twice (as {seen[resolved]} and as {role}); "
                    "each run may count once"
                )
            seen[resolved] = role


def _context_notes(runs: Sequence[ReportedRun], baseline: Sequence[ReportedRun]) -> list[str]:
    """What differed between the runs and the baseline, or among the runs: the measuring
    machine, the probe interval, the hosts, the VM; and CPU steal worth knowing about."""
    notes = []
    included = [r for r in runs if r.included]
    reference = [r for r in baseline if r.included]
    keys = dict.fromkeys(k for r in (*included, *reference) for k in r.context)
    for key in keys:
        # A run that did not record a key (an older run, an import) differs in nothing.
        mine = sorted({r.context[key] for r in included if key in r.context})
        theirs = sorted({r.context[key] for r in reference if key in r.context})
        if mine and theirs and mine != theirs:
            notes.append(
                f"the runs and the baseline differ in {key}: {', '.join(mine)} (runs) vs "
                f"{', '.join(theirs)} (baseline)"
            )
        elif len(mine) > 1:
            notes.append(f"the runs differ among themselves in {key}: {', '.join(mine)}")
    for role, group in (("run", included), ("baseline run", reference)):
        for run in group:
            if run.cpu_steal_pct is not None and run.cpu_steal_pct >= STEAL_NOTE_PCT:
                notes.append(
                    f"{role} {run.run_id}: {run.cpu_steal_pct:.1f} % CPU steal during the run "
                    "(the measuring machine waited for its hypervisor)"
                )
    return notes


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    baseline_dirs: Sequence[str | os.PathLike[str]] = (),
    thresholds: Thresholds | None = None,
    group_by: Sequence[str] = (),
    now: datetime | None = None,
) -> Report:
    """Read the run folders and evaluate the checks.

    ``run_dirs`` and ``baseline_dirs`` are anything ``find_run_folders`` takes
    (run folders, sessions, parents of runs, globs, list files). Statistics
    and the regression test are per direction and, with ``group_by``, per value
    of those labels. Raises ``RunFormatError`` (bad input) when no run folder
    is given, a folder is on both sides, or a folder or its summary cannot be
    read.
    """
    thresholds = thresholds or Thresholds()
    if not run_dirs:
        raise RunFormatError("no run folder given")
    run_paths = find_run_folders(run_dirs)
    baseline_paths = find_run_folders(baseline_dirs)
    _check_distinct(run_paths, baseline_paths)
    group_by = tuple(group_by)
    runs = tuple(_grouped(read_run(d), group_by) for d in run_paths)
    baseline = tuple(_grouped(read_run(d), group_by) for d in baseline_paths)

    notes: list[str] = []
    for role, group in (("run", runs), ("baseline run", baseline)):
        for run in group:
            if run.excluded_because is not None:
                notes.append(
                    f"{role} {run.run_id} is listed but left out of the statistics and checks: "
                    f"{run.excluded_because}"
                )
            elif run.blackout is not None and run.blackout.upper_ms is None:
                notes.append(
                    f"{role} {run.run_id}: the blackout is open at its "
                    f"{_open_sides(run.blackout)}, so it has no upper bound; it counts as longer "
                    "than any measured blackout"
                )
            notes.extend(f"{role} {run.run_id}: {warning}" for warning in run.warnings)
            if run.tcp_stall is not None and run.tcp_stall.explanation:
                notes.append(f"{role} {run.run_id}: {run.tcp_stall.explanation}")
    # One note per kind of summary rebuild, not one per run: the first report over
    # fresh run folders builds them all.
    rebuilt: dict[str, list[str]] = {}
    for run in (*runs, *baseline):
        if run.summary_note:
            rebuilt.setdefault(run.summary_note, []).append(run.run_id)
    notes.extend(f"{note}: {_id_list(ids)}" for note, ids in rebuilt.items())
    notes.extend(_context_notes(runs, baseline))
    for key in group_by:
        if not any(key in r.labels for r in (*runs, *baseline)):
            notes.append(f"no run has the label {key!r} that the report groups by")

    regressions: list[DirectionRegression] = []
    if baseline:
        for direction in directions_in_order(runs):
            candidate = included_blackouts(runs, direction)
            reference = included_blackouts(baseline, direction)
            result = compare_blackouts(
                [r.blackout.conservative_ms for r in candidate if r.blackout is not None],
                [r.blackout.conservative_ms for r in reference if r.blackout is not None],
                max_regression_pct=thresholds.regression_pct,
            )
            regressions.append(DirectionRegression(direction, result))
        candidate_directions = set(directions_in_order(runs))
        for direction in directions_in_order(baseline):
            if direction not in candidate_directions:
                notes.append(
                    f"the baseline has runs in {direction}, which no run has; "
                    "they were not compared"
                )

    return Report(
        runs=runs,
        baseline_runs=baseline,
        thresholds=thresholds,
        directions=direction_stats(runs),
        baseline_directions=direction_stats(baseline),
        regressions=tuple(regressions),
        checks=tuple(run_checks(runs, thresholds) + regression_checks(regressions)),
        notes=tuple(notes),
        generated_by=f"migration-blackout {package_version()}",
        generated_utc=(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        group_by=group_by,
    )


def _grouped(run: ReportedRun, group_by: Sequence[str]) -> ReportedRun:
    return replace(run, group=run_group(run, group_by))
