"""The report over many run folders: blackouts per direction, threshold checks and a
regression verdict against a baseline, as HTML, Markdown and JUnit XML.

``build_report`` reads run folders into a ``Report`` (building a missing
``derived/summary.json``, which is rebuildable from ``raw/``);
``render_markdown``, ``render_html`` and ``render_junit`` turn it into text.
Nothing here prints, exits or talks to a host. docs/reports.md describes the
outputs.

**Which blackout figure counts.** Every run's summary gives three: the lower
bound (first to last lost probe: what the losses prove), the upper bound (last
reply before to first reply after: the guest was silent for at most this
long) and the estimate (lost probes x interval). Reports show all three; the
thresholds and the regression test use the **upper bound**, the conservative
figure: a run that passes on it passes whatever the true blackout was. A
blackout that is open at a side (the run began or ended inside it) has no
upper bound: it fails ``max_blackout_ms`` and ranks above every measured
blackout in the regression test (statistics show it as "open").

**Which runs count.** Only runs with status ``completed`` and ICMP records
enter statistics and checks. Runs that ``failed``, were ``aborted`` or were
left ``running`` are listed with a note; their threshold checks are skipped.
A completed run without ICMP records measured nothing: its checks are errors.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import string
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from migration_blackout.analysis.compare import (
    DEFAULT_MAX_REGRESSION_PCT,
    RegressionVerdict,
    Verdict,
    compare_blackouts,
    format_ms,
    format_p,
    format_pct,
)
from migration_blackout.analysis.runfolder import (
    RunFolder,
    RunFormatError,
    load_run,
    package_version,
)
from migration_blackout.analysis.summary import (
    SUMMARY_FILE,
    build_summary,
    read_summary,
    write_summary,
)

DIRECTION_UNKNOWN = "unknown"
INCLUDED_STATUS = "completed"
JUNIT_PACKAGE = "migration-blackout"
# Above this many runs the Markdown per-run table folds into <details>.
MARKDOWN_FOLD_RUNS = 20


@dataclass(frozen=True)
class Thresholds:
    """Limits the report checks; a limit left at None is not checked.

    ``max_blackout_ms``: each run's blackout upper bound, in ms (a run at the
    limit passes). ``max_timeouts``: timeouts inside each run's blackout
    ("Request timed out"; unreachable answers are counted apart and not
    limited). ``max_regression_pct``: how far the median upper bound may rise
    above the baseline's before a significant rise is a regression; None means
    10 %, and it only applies when there is a baseline.
    """

    max_blackout_ms: float | None = None
    max_timeouts: int | None = None
    max_regression_pct: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_blackout_ms", "max_regression_pct"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        timeouts = self.max_timeouts
        if timeouts is not None and (
            isinstance(timeouts, bool) or not isinstance(timeouts, int) or timeouts < 0
        ):
            raise ValueError(f"max_timeouts must be an integer >= 0, not {timeouts!r}")

    @property
    def regression_pct(self) -> float:
        """``max_regression_pct``, or its default of 10 %."""
        if self.max_regression_pct is None:
            return DEFAULT_MAX_REGRESSION_PCT
        return float(self.max_regression_pct)


@dataclass(frozen=True)
class BlackoutFigures:
    """One run's blackout, from its summary (milliseconds).

    ``source`` is None when no probe was lost: every figure is then 0, the
    blackout (if any) was shorter than the probes could resolve.
    ``upper_ms`` is None when the outage is open at a side.
    """

    source: str | None
    lower_ms: float
    upper_ms: float | None
    estimate_ms: float | None
    lost: int
    timeouts: int
    unreachable: int
    errors: int
    timeouts_outside: int
    unreachable_outside: int
    errors_outside: int
    open_start: bool
    open_end: bool

    @property
    def conservative_ms(self) -> float:
        """The figure thresholds and the regression test use: the upper bound, inf if open."""
        return math.inf if self.upper_ms is None else self.upper_ms


NO_LOSS = BlackoutFigures(
    source=None,
    lower_ms=0.0,
    upper_ms=0.0,
    estimate_ms=0.0,
    lost=0,
    timeouts=0,
    unreachable=0,
    errors=0,
    timeouts_outside=0,
    unreachable_outside=0,
    errors_outside=0,
    open_start=False,
    open_end=False,
)


@dataclass(frozen=True)
class ReportedRun:
    """One run folder as the report sees it.

    ``blackout`` is None when the run has no ICMP records (nothing measured).
    ``summary_note`` says how ``derived/summary.json`` was obtained when it
    was not simply read (missing or stale: rebuilt). ``warnings`` are the
    summary's.
    """

    path: Path
    run_id: str
    status: str
    error: str | None
    direction: str
    started_utc: str
    ended_utc: str | None
    hostname: str | None
    blackout: BlackoutFigures | None
    warnings: tuple[str, ...]
    summary_note: str | None
    hypervisor_says: str | None = None

    @property
    def excluded_because(self) -> str | None:
        """Why the run is left out of statistics and checks; None when it is in."""
        if self.status != INCLUDED_STATUS:
            return f"status {self.status}" + (f" ({self.error})" if self.error else "")
        if self.blackout is None:
            return "no ICMP records: nothing was measured"
        return None

    @property
    def included(self) -> bool:
        return self.excluded_because is None


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
    """The blackouts of the included runs of one migration direction.

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

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(
            c for c in self.checks if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
        )

    @property
    def passed(self) -> bool:
        """No check failed (a report with nothing to check passes)."""
        return not self.failed_checks


# --- reading run folders -----------------------------------------------------------------


def run_direction(manifest: Mapping[str, Any]) -> str:
    """``"<source> -> <destination>"`` from the manifest's ``hypervisor`` (or, in
    older run folders, ``hyperv``) object, else "unknown"."""
    for key in ("hypervisor", "hyperv"):
        block = manifest.get(key)
        if isinstance(block, Mapping):
            source, destination = block.get("source"), block.get("destination")
            if isinstance(source, str) and source and isinstance(destination, str) and destination:
                return f"{source} -> {destination}"
    return DIRECTION_UNKNOWN


def hypervisor_figure(summary: Mapping[str, Any]) -> str | None:
    """What the hypervisor itself says about the blackout, for the report's tables:
    Hyper-V's 20415/20417 figure, or QEMU's STOP -> RESUME and its downtime."""
    hyperv = summary.get("hyperv")
    reported = hyperv.get("reported") if isinstance(hyperv, Mapping) else None
    if isinstance(reported, Mapping) and _is_number(reported.get("blackout_s")):
        return f"{reported['blackout_s']:.1f} s (event {reported.get('event_id')})"
    qemu = summary.get("qemu")
    if isinstance(qemu, Mapping) and _is_number(qemu.get("stop_to_resume_ms")):
        downtime = qemu.get("downtime_ms")
        text = f"STOP->RESUME {qemu['stop_to_resume_ms']:.1f} ms"
        if _is_number(downtime):
            text += f", downtime {downtime} ms (source)"
        return text
    return None


def _summary_of(run: RunFolder) -> tuple[dict[str, Any], str | None]:
    """The run's summary document, and a note when it had to be (re)built."""
    path = run.path / SUMMARY_FILE
    rebuild = f"`measure analyze {run.path}` rebuilds it"
    if path.is_file():
        try:
            summary = read_summary(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunFormatError(f"{path} is not valid JSON ({exc}); {rebuild}") from None
        except OSError as exc:
            raise RunFormatError(f"cannot read {path}: {exc}") from None
        manifest = run.manifest
        if summary.get("run_id") == manifest.run_id and summary.get("status") == manifest.status:
            return summary, None
        why = "disagreed with manifest.json (run_id or status)"
    else:
        why = "was missing"
    try:
        write_summary(run.path)
        return read_summary(path), f"derived/summary.json {why}; rebuilt it from raw/"
    except OSError as exc:
        # A read-only copy of a run folder (a CI artifact): derive in memory.
        try:
            summary = build_summary(run.path)
        except OSError as read_exc:
            raise RunFormatError(f"cannot read run folder {run.path}: {read_exc}") from None
        reason = exc.strerror or type(exc).__name__
        return (
            summary,
            f"derived/summary.json {why} and could not be written ({reason}); built it in memory",
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What a summary key may hold: "?" allows null (docs/summary-format.md).
_SUMMARY_TYPES: dict[str, Callable[[object], bool]] = {
    "number": _is_number,
    "number?": lambda value: value is None or _is_number(value),
    "int": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "bool": lambda value: isinstance(value, bool),
    "str?": lambda value: value is None or isinstance(value, str),
}


def _field(doc: Mapping[str, Any], key: str, kind: str, where: str) -> Any:
    value = doc.get(key)
    if key not in doc or not _SUMMARY_TYPES[kind](value):
        raise RunFormatError(
            f"{where} key {key!r} is missing or not a {kind.rstrip('?')}; "
            "`measure analyze RUN_DIR` rebuilds the summary"
        )
    return float(value) if kind.startswith("number") and value is not None else value


def blackout_from_summary(summary: Mapping[str, Any], where: str) -> BlackoutFigures | None:
    """The blackout figures of a summary document; None when it has no ICMP records."""
    icmp = summary.get("icmp")
    if not isinstance(icmp, Mapping):
        raise RunFormatError(f"{where} key 'icmp' is missing or not an object")
    if not icmp:
        return None
    doc = summary.get("blackout")
    if doc is None:
        return NO_LOSS
    if not isinstance(doc, Mapping):
        raise RunFormatError(f"{where} key 'blackout' is not an object")
    at = f"{where} blackout"
    return BlackoutFigures(
        source=_field(doc, "source", "str?", at),
        lower_ms=_field(doc, "lower_ms", "number", at),
        upper_ms=_field(doc, "upper_ms", "number?", at),
        estimate_ms=_field(doc, "estimate_ms", "number?", at),
        lost=_field(doc, "lost", "int", at),
        timeouts=_field(doc, "timeouts", "int", at),
        unreachable=_field(doc, "unreachable", "int", at),
        errors=_field(doc, "errors", "int", at),
        timeouts_outside=_field(doc, "timeouts_outside", "int", at),
        unreachable_outside=_field(doc, "unreachable_outside", "int", at),
        errors_outside=_field(doc, "errors_outside", "int", at),
        open_start=_field(doc, "open_start", "bool", at),
        open_end=_field(doc, "open_end", "bool", at),
    )


def read_run(run_dir: str | os.PathLike[str]) -> ReportedRun:
    """Read one run folder for the report; writes ``derived/summary.json`` if it is missing.

    Raises ``RunFormatError`` for a folder that does not exist or cannot be
    read, and for a summary it cannot read (invalid JSON, unknown version).
    """
    path = Path(run_dir)
    if not path.exists():
        raise RunFormatError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise RunFormatError(f"{path} is not a folder")
    try:
        run = load_run(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFormatError(f"cannot read {path / 'manifest.json'}: {exc}") from None
    summary, note = _summary_of(run)
    manifest = run.manifest
    error = manifest.error
    host = manifest.document.get("harness_host")
    hostname = host.get("hostname") if isinstance(host, Mapping) else None
    warnings = summary.get("warnings")
    return ReportedRun(
        path=path,
        run_id=manifest.run_id,
        status=manifest.status,
        error=None if error is None else f"{error.type}: {error.message}",
        direction=run_direction(manifest.document),
        started_utc=manifest.started_utc,
        ended_utc=manifest.ended_utc,
        hostname=hostname if isinstance(hostname, str) else None,
        blackout=blackout_from_summary(summary, f"{path / SUMMARY_FILE}"),
        warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
        summary_note=note,
        hypervisor_says=hypervisor_figure(summary),
    )


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


def _directions_in_order(*groups: Sequence[ReportedRun]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        for run in group:
            seen.setdefault(run.direction)
    return list(seen)


def _included_blackouts(runs: Sequence[ReportedRun], direction: str) -> list[ReportedRun]:
    return [r for r in runs if r.included and r.direction == direction]


def direction_stats(runs: Sequence[ReportedRun]) -> tuple[DirectionStats, ...]:
    """Per direction (in order of first appearance), the included runs' blackout figures."""
    out = []
    for direction in _directions_in_order(runs):
        chosen = _included_blackouts(runs, direction)
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


def _limit(value: float) -> str:
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
            f"<= max_blackout_ms {_limit(limit)} ms",
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
            f"<= max_blackout_ms {_limit(limit)} ms ({bounds})",
        )
    if blackout.upper_ms > limit:
        return Check(
            name,
            run.run_id,
            CheckOutcome.FAILED,
            f"blackout upper bound {format_ms(blackout.upper_ms)} ms > max_blackout_ms "
            f"{_limit(limit)} ms ({bounds})",
        )
    return Check(
        name,
        run.run_id,
        CheckOutcome.PASSED,
        f"blackout upper bound {format_ms(blackout.upper_ms)} ms <= max_blackout_ms "
        f"{_limit(limit)} ms ({bounds})",
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


def _check_run(run: ReportedRun, name: str, limit: float) -> Check:
    if run.status != INCLUDED_STATUS:
        message = f"not checked: the run's {run.excluded_because}; it is left out of the statistics"
        return Check(name, run.run_id, CheckOutcome.SKIPPED, message)
    if run.blackout is None:
        message = f"the run completed without ICMP records: nothing was measured to check {name}"
        return Check(name, run.run_id, CheckOutcome.ERROR, message)
    if name == "max_blackout_ms":
        return _check_blackout(run, run.blackout, limit)
    return _check_timeouts(run, run.blackout, int(limit))


def run_checks(runs: Sequence[ReportedRun], thresholds: Thresholds) -> list[Check]:
    """Each run's threshold checks: ``max_blackout_ms`` and ``max_timeouts``, those set."""
    limits = [
        (name, float(limit))
        for name, limit in (
            ("max_blackout_ms", thresholds.max_blackout_ms),
            ("max_timeouts", thresholds.max_timeouts),
        )
        if limit is not None
    ]
    return [_check_run(run, name, limit) for run in runs for name, limit in limits]


def regression_checks(regressions: Sequence[DirectionRegression]) -> list[Check]:
    outcomes = {
        Verdict.PASS: CheckOutcome.PASSED,
        Verdict.REGRESSION: CheckOutcome.FAILED,
        Verdict.INSUFFICIENT_DATA: CheckOutcome.SKIPPED,
    }
    return [
        Check("regression", r.direction, outcomes[r.result.verdict], r.result.reason)
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


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    baseline_dirs: Sequence[str | os.PathLike[str]] = (),
    thresholds: Thresholds | None = None,
    now: datetime | None = None,
) -> Report:
    """Read the run folders and evaluate the checks.

    Raises ``RunFormatError`` (bad input) when no run folder is given, a
    folder is given twice, or a folder or its summary cannot be read.
    """
    thresholds = thresholds or Thresholds()
    if not run_dirs:
        raise RunFormatError("no run folder given")
    _check_distinct(run_dirs, baseline_dirs)
    runs = tuple(read_run(d) for d in run_dirs)
    baseline = tuple(read_run(d) for d in baseline_dirs)

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
    # One note per kind of summary rebuild, not one per run: the first report over
    # fresh run folders builds them all.
    rebuilt: dict[str, list[str]] = {}
    for run in (*runs, *baseline):
        if run.summary_note:
            rebuilt.setdefault(run.summary_note, []).append(run.run_id)
    notes.extend(f"{note}: {_id_list(ids)}" for note, ids in rebuilt.items())

    regressions: list[DirectionRegression] = []
    if baseline:
        for direction in _directions_in_order(runs):
            candidate = _included_blackouts(runs, direction)
            reference = _included_blackouts(baseline, direction)
            result = compare_blackouts(
                [r.blackout.conservative_ms for r in candidate if r.blackout is not None],
                [r.blackout.conservative_ms for r in reference if r.blackout is not None],
                max_regression_pct=thresholds.regression_pct,
            )
            regressions.append(DirectionRegression(direction, result))
        candidate_directions = set(_directions_in_order(runs))
        for direction in _directions_in_order(baseline):
            if direction not in candidate_directions:
                notes.append(
                    f"the baseline has runs in direction {direction}, which no run has; "
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
    )


# --- plots -------------------------------------------------------------------------------

_DIRECTION_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)
_OPEN_COLOUR = "#d62728"
_BASELINE_ALPHA = 0.4
# Above this many bars the run ids no longer fit under them.
_MAX_LABELLED_BARS = 40


def _colour_of(report: Report) -> dict[str, str]:
    directions = _directions_in_order(report.runs, report.baseline_runs)
    return {d: _DIRECTION_COLOURS[i % len(_DIRECTION_COLOURS)] for i, d in enumerate(directions)}


def plot_run_blackouts(report: Report) -> Figure:
    """Per run a bar at the estimate, with a whisker from the lower to the upper bound.

    Baseline runs come first (paler), then the runs, in the order given;
    excluded runs are left out. A blackout without an upper bound gets a red
    triangle at its lower bound.
    """
    entries = [(r, True) for r in report.baseline_runs if r.included]
    entries += [(r, False) for r in report.runs if r.included]
    count = len(entries)
    figure = Figure(figsize=(min(16.0, max(6.5, 2.0 + 0.3 * count)), 4.8), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title("Blackout per run: bar = estimate, whisker = lower .. upper bound")
    axes.set_ylabel("blackout (ms)")
    if not entries:
        axes.text(0.5, 0.5, "no run to plot", ha="center", va="center", transform=axes.transAxes)
        return figure
    colour = _colour_of(report)
    heights, below, above, colours, alphas = [], [], [], [], []
    open_x, open_y = [], []
    for x, (run, is_baseline) in enumerate(entries):
        blackout = run.blackout
        assert blackout is not None
        top = blackout.lower_ms if blackout.upper_ms is None else blackout.upper_ms
        middle = (blackout.lower_ms + top) / 2
        height = blackout.estimate_ms if blackout.estimate_ms is not None else middle
        # A drifting schedule can put the estimate outside the bounds.
        height = min(max(height, blackout.lower_ms), top)
        heights.append(height)
        below.append(height - blackout.lower_ms)
        above.append(top - height)
        colours.append(colour[run.direction])
        alphas.append(_BASELINE_ALPHA if is_baseline else 1.0)
        if blackout.upper_ms is None:
            open_x.append(x)
            open_y.append(blackout.lower_ms)
    positions = np.arange(count)
    bars = axes.bar(positions, heights, color=colours, edgecolor="none", width=0.75)
    for bar, alpha in zip(bars, alphas, strict=True):
        bar.set_alpha(alpha)
    axes.errorbar(
        positions,
        heights,
        yerr=[below, above],
        fmt="none",
        ecolor="black",
        elinewidth=1,
        capsize=3 if count <= _MAX_LABELLED_BARS else 0,
    )
    handles: list[Any] = [Patch(color=c, label=d) for d, c in colour.items()]
    if open_x:
        handles.append(
            axes.scatter(
                open_x, open_y, marker="^", color=_OPEN_COLOUR, zorder=3, label="no upper bound"
            )
        )
    baseline_count = sum(1 for _, is_baseline in entries if is_baseline)
    if baseline_count:
        axes.axvline(baseline_count - 0.5, color="grey", linestyle=":", linewidth=1)
        handles.append(Patch(color="grey", alpha=_BASELINE_ALPHA, label="baseline (paler)"))
    limit = report.thresholds.max_blackout_ms
    if limit is not None:
        handles.append(
            axes.axhline(
                limit,
                color=_OPEN_COLOUR,
                linestyle="--",
                linewidth=1,
                label=f"max {_limit(limit)} ms",
            )
        )
    if count <= _MAX_LABELLED_BARS:
        axes.set_xticks(positions, [run.run_id for run, _ in entries], rotation=90, fontsize=7)
    else:
        axes.set_xticks([])
        axes.set_xlabel(
            f"{count} runs in the order given" + (", baseline first" if baseline_count else "")
        )
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylim(bottom=0)
    axes.legend(handles=handles, fontsize=8, loc="lower right")
    return figure


def plot_direction_distributions(report: Report) -> Figure | None:
    """Per direction, box and points of the upper bounds: baseline beside the runs.

    None when there is nothing to compare: no baseline and no direction with
    two or more included runs. Blackouts without an upper bound are not drawn
    (they are counted in the tick label).
    """
    directions = _directions_in_order(report.runs, report.baseline_runs)
    groups: list[tuple[str, str, list[float], int]] = []  # (direction, role, values, open)
    for direction in directions:
        for role, runs in (("baseline", report.baseline_runs), ("runs", report.runs)):
            if role == "baseline" and not report.baseline_runs:
                continue
            upper = [
                r.blackout.conservative_ms
                for r in _included_blackouts(runs, direction)
                if r.blackout
            ]
            finite = [v for v in upper if math.isfinite(v)]
            groups.append((direction, role, finite, len(upper) - len(finite)))
    if not report.baseline_runs and not any(len(g[2]) + g[3] >= 2 for g in groups):
        return None
    figure = Figure(
        figsize=(min(16.0, max(6.5, 2.0 + 1.2 * len(groups))), 4.8), layout="constrained"
    )
    axes = figure.add_subplot()
    axes.set_title("Blackout upper bound per direction (box: quartiles; points: runs)")
    axes.set_ylabel("blackout upper bound (ms)")
    colour = _colour_of(report)
    jitter = np.random.default_rng(0)  # fixed: the same report draws the same picture
    labels = []
    for x, (direction, role, values, open_count) in enumerate(groups):
        alpha = _BASELINE_ALPHA if role == "baseline" else 1.0
        if values:
            box = axes.boxplot(
                [values],
                positions=[x],
                widths=0.55,
                showfliers=False,
                manage_ticks=False,
                patch_artist=True,
                medianprops={"color": "black"},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colour[direction])
                patch.set_alpha(0.35 * alpha)
            axes.scatter(
                x + jitter.uniform(-0.15, 0.15, len(values)),
                values,
                s=14,
                color=colour[direction],
                alpha=alpha,
                zorder=3,
            )
        label = f"{direction}\n{role} (n={len(values) + open_count})"
        if open_count:
            label += f"\n{open_count} open, not drawn"
        labels.append(label)
    axes.set_xticks(range(len(groups)), labels, fontsize=8)
    limit = report.thresholds.max_blackout_ms
    if limit is not None:
        axes.axhline(
            limit, color=_OPEN_COLOUR, linestyle="--", linewidth=1, label=f"max {_limit(limit)} ms"
        )
        axes.legend(fontsize=8)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG (Agg, through the Figure itself: no pyplot, no global backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


# --- the document, rendered as Markdown or HTML ------------------------------------------


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Paragraph:
    text: str
    lead: str | None = None  # a bold word before the text ("PASS", "FAIL")
    lead_class: str | None = None


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Details:
    summary: str
    blocks: tuple[_Block, ...]


@dataclass(frozen=True)
class _Image:
    png: bytes
    alt: str
    caption: str


_Block = _Heading | _Paragraph | _Table | _Bullets | _Details | _Image


def _verdict_line(report: Report) -> tuple[str, str]:
    counts = {outcome: 0 for outcome in CheckOutcome}
    for check in report.checks:
        counts[check.outcome] += 1
    skipped = f", {counts[CheckOutcome.SKIPPED]} skipped" if counts[CheckOutcome.SKIPPED] else ""
    if not report.checks:
        return "PASS", "nothing to check: no threshold was set and no baseline given"
    if report.passed:
        return (
            "PASS",
            f"{counts[CheckOutcome.PASSED]} of {len(report.checks)} checks passed{skipped}",
        )
    failed = counts[CheckOutcome.FAILED] + counts[CheckOutcome.ERROR]
    return "FAIL", f"{failed} of {len(report.checks)} checks failed{skipped}"


def _run_counts(runs: Sequence[ReportedRun]) -> str:
    included = sum(1 for r in runs if r.included)
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({included} in the statistics)"


def _thresholds_text(thresholds: Thresholds, has_baseline: bool) -> str:
    def show(value: float | int | None) -> str:
        return "not set" if value is None else _limit(value)

    regression = (
        f"{_limit(thresholds.regression_pct)} %"
        + (" (default)" if thresholds.max_regression_pct is None else "")
        + ("" if has_baseline else ", unused without a baseline")
    )
    return (
        f"Thresholds: max_blackout_ms {show(thresholds.max_blackout_ms)}, "
        f"max_timeouts {show(thresholds.max_timeouts)}, max_regression_pct {regression}."
    )


_FIGURE_NOTE = (
    "Blackouts in ms. Thresholds and the regression test use the upper bound (last reply "
    "before to first reply after the outage): the guest was silent for at most that long. "
    "The lower bound (first to last lost probe) is what the losses prove; the estimate is "
    'lost probes x probe interval. "open": a blackout without an upper bound.'
)


def _stats_rows(role: str, stats: Sequence[DirectionStats]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in stats:
        for label, figure in (
            ("upper (checked)", entry.upper),
            ("estimate", entry.estimate),
            ("lower", entry.lower),
        ):
            rows.append(
                (
                    entry.direction,
                    role,
                    str(figure.n),
                    label,
                    format_ms(figure.median_ms),
                    format_ms(figure.p95_ms),
                    format_ms(figure.max_ms),
                )
            )
    return rows


def _checks_by_run(report: Report) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {}
    for check in report.checks:
        if check.name != "regression":
            out.setdefault(check.subject, []).append(check)
    return out


def _run_rows(
    runs: Sequence[ReportedRun], checks: Mapping[str, list[Check]]
) -> list[tuple[str, ...]]:
    rows = []
    for run in runs:
        blackout = run.blackout if run.included else None
        run_checks_ = checks.get(run.run_id, [])
        failed = [
            c.name for c in run_checks_ if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
        ]
        if not run_checks_:
            verdict = "-"
        elif failed:
            verdict = "FAIL: " + ", ".join(failed)
        elif all(c.outcome is CheckOutcome.SKIPPED for c in run_checks_):
            verdict = "skipped"
        else:
            verdict = "pass"
        status = run.status if run.included else f"{run.status} (excluded)"
        if blackout is None:
            figures: tuple[str, ...] = ("-",) * 6
        else:
            figures = (
                format_ms(blackout.lower_ms),
                format_ms(blackout.estimate_ms),
                "open" if blackout.upper_ms is None else format_ms(blackout.upper_ms),
                str(blackout.lost),
                f"{blackout.timeouts} / {blackout.timeouts_outside}",
                f"{blackout.unreachable} / {blackout.unreachable_outside}",
            )
        rows.append(
            (run.run_id, status, run.direction, *figures, run.hypervisor_says or "-", verdict)
        )
    return rows


_RUN_HEADERS = (
    "run",
    "status",
    "direction",
    "lower ms",
    "estimate ms",
    "upper ms",
    "lost",
    "timeouts in / outside",
    "unreachable in / outside",
    "hypervisor says",
    "checks",
)
_RUN_NUMERIC = frozenset(range(3, 9))


def _stats_blocks(report: Report) -> list[_Block]:
    baseline_of = {stats.direction: stats for stats in report.baseline_directions}
    rows = []
    for stats in report.directions:
        rows += _stats_rows("runs", [stats])
        if stats.direction in baseline_of:
            rows += _stats_rows("baseline", [baseline_of.pop(stats.direction)])
    rows += _stats_rows("baseline", list(baseline_of.values()))
    headers = ("direction", "set", "runs", "figure", "median ms", "p95 ms", "max ms")
    return [
        _Heading(3, "Blackout per direction"),
        _Paragraph(_FIGURE_NOTE),
        _Table(headers, tuple(rows), frozenset({2, 4, 5, 6})),
    ]


def _regression_blocks(report: Report) -> list[_Block]:
    rows = []
    for entry in report.regressions:
        result, test = entry.result, entry.result.test
        rows.append(
            (
                entry.direction,
                result.verdict.value,
                f"{result.n_candidate} / {result.n_baseline}",
                f"{format_ms(result.candidate_median_ms)} / {format_ms(result.baseline_median_ms)}",
                format_pct(result.median_increase_pct),
                "-" if test is None else f"{test.u:g} of {test.n_candidate * test.n_baseline}",
                "-" if test is None else f"{format_p(test.p_value)} ({test.method})",
            )
        )
    headers = (
        *("direction", "verdict", "runs / baseline", "median upper ms: runs / baseline"),
        *("change", "U", "one-sided p"),
    )
    explanation = (
        "A regression needs both: the runs' upper bounds stochastically larger than the "
        "baseline's (one-sided Mann-Whitney U test, p <= alpha 0.05) and a median more than "
        f"{_limit(report.thresholds.regression_pct)} % above the baseline's. With fewer than 3 "
        'runs on a side the verdict is "insufficient data".'
    )
    return [
        _Heading(3, "Regression against the baseline"),
        _Paragraph(explanation),
        _Table(headers, tuple(rows), frozenset({2, 3, 4, 5, 6})),
        _Bullets(tuple(f"{r.direction}: {r.result.reason}" for r in report.regressions)),
    ]


def _plot_blocks(report: Report) -> list[_Block]:
    blocks: list[_Block] = [
        _Heading(3, "Plots"),
        _Image(
            figure_png(plot_run_blackouts(report)),
            "blackout per run",
            "Per run: the bar is the estimate, the whisker runs from the lower to the upper "
            "bound. Runs left out of the statistics are not drawn.",
        ),
    ]
    distribution = plot_direction_distributions(report)
    if distribution is not None:
        beside = ", the baseline beside them." if report.baseline_runs else "."
        blocks.append(
            _Image(
                figure_png(distribution),
                "blackout upper bound per direction",
                f"Per direction: the upper bounds of the runs{beside}",
            )
        )
    return blocks


def _run_blocks(report: Report) -> list[_Block]:
    blocks: list[_Block] = []
    checks = _checks_by_run(report)
    for title, runs in (("Runs", report.runs), ("Baseline runs", report.baseline_runs)):
        if not runs:
            continue
        table = _Table(_RUN_HEADERS, tuple(_run_rows(runs, checks)), _RUN_NUMERIC)
        blocks.append(_Heading(3, title))
        blocks.append(
            _Details(f"{len(runs)} runs", (table,)) if len(runs) > MARKDOWN_FOLD_RUNS else table
        )
    return blocks


def _document(report: Report, *, with_plots: bool) -> list[_Block]:
    lead, verdict = _verdict_line(report)
    runs = _run_counts(report.runs)
    if report.baseline_runs:
        runs += f"; baseline {_run_counts(report.baseline_runs)}"
    blocks: list[_Block] = [
        _Heading(2, "Migration blackout report"),
        _Paragraph(verdict, lead=lead, lead_class="pass" if lead == "PASS" else "fail"),
        _Paragraph(f"{runs}. {report.generated_by}, {report.generated_utc}."),
        _Paragraph(_thresholds_text(report.thresholds, bool(report.baseline_runs))),
    ]
    if report.failed_checks:
        rows = tuple((c.name, c.subject, c.outcome.value, c.message) for c in report.failed_checks)
        blocks.append(_Heading(3, "Failed checks"))
        blocks.append(_Table(("check", "run or direction", "outcome", "why"), rows))
    blocks += _stats_blocks(report)
    if report.regressions:
        blocks += _regression_blocks(report)
    if with_plots:
        blocks += _plot_blocks(report)
    blocks += _run_blocks(report)
    if report.notes:
        blocks += [_Heading(3, "Notes"), _Bullets(report.notes)]
    return blocks


# Escaped: what would start markup in the middle of a line; "<" only before what
# could open an HTML tag, so "->" and "<=" stay readable in the raw file.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*|]|<(?=[A-Za-z/!?]))")


def _md(text: str) -> str:
    """Text as literal Markdown (GitHub): special characters escaped, one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _markdown_blocks(blocks: Sequence[_Block]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            lines += ["#" * block.level + " " + _md(block.text), ""]
        elif isinstance(block, _Paragraph):
            lead = f"**{_md(block.lead)}**: " if block.lead else ""
            lines += [lead + _md(block.text), ""]
        elif isinstance(block, _Table):
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.headers))]
            lines.append("| " + " | ".join(_md(h) for h in block.headers) + " |")
            lines.append("| " + " | ".join(align) + " |")
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, _Bullets):
            lines += [f"- {_md(item)}" for item in block.items]
            lines.append("")
        elif isinstance(block, _Details):
            lines += ["<details>", f"<summary>{escape(block.summary)}</summary>", ""]
            lines += _markdown_blocks(block.blocks)
            lines += ["</details>", ""]
        # Images are left out: GitHub's job summary does not show data: URIs.
    return lines


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown, for a CI job summary ($GITHUB_STEP_SUMMARY)."""
    return "\n".join(_markdown_blocks(_document(report, with_plots=False))).rstrip("\n") + "\n"


def _html_blocks(blocks: Sequence[_Block]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            lead = ""
            if block.lead:
                css = f' class="verdict {block.lead_class}"' if block.lead_class else ""
                lead = f"<strong{css}>{escape(block.lead)}</strong> "
            out.append(f"<p>{lead}{escape(block.text)}</p>")
        elif isinstance(block, _Table):
            out.append("<table>")
            out.append(
                "<thead><tr>"
                + "".join(f"<th>{escape(h)}</th>" for h in block.headers)
                + "</tr></thead>"
            )
            out.append("<tbody>")
            for row in block.rows:
                cells = "".join(
                    f'<td class="num">{escape(cell)}</td>'
                    if i in block.numeric
                    else f"<td>{escape(cell)}</td>"
                    for i, cell in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, _Bullets):
            out.append(
                "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
            )
        elif isinstance(block, _Details):
            out.append(f"<details open><summary>{escape(block.summary)}</summary>")
            out += _html_blocks(block.blocks)
            out.append("</details>")
        elif isinstance(block, _Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure><img alt="{escape(block.alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>"
            )
    return out


_HTML_PAGE = string.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 90em;
       color: #202124; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #dadce0; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f1f3f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { padding: 0.15em 0.6em; border-radius: 0.2em; }
.pass { background: #e6f4ea; color: #137333; }
.fail { background: #fce8e6; color: #a50e0e; }
figure { margin: 1em 0; }
img { max-width: 100%; height: auto; }
figcaption { color: #5f6368; font-size: 0.9em; }
</style>
</head>
<body>
$body
</body>
</html>
"""
)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: plots inline as PNG data URIs, no links out."""
    lead, _ = _verdict_line(report)
    return _HTML_PAGE.substitute(
        title=escape(f"Migration blackout report: {lead}"),
        body="\n".join(_html_blocks(_document(report, with_plots=True))),
    )


def format_verdict(report: Report) -> str:
    """A few plain-text lines for the terminal: the verdict and every failed check."""
    lead, verdict = _verdict_line(report)
    lines = [f"{lead}: {verdict}"]
    lines += [
        f"  {c.outcome.value} {c.name} [{c.subject}]: {c.message}" for c in report.failed_checks
    ]
    return "\n".join(lines) + "\n"


# --- JUnit XML ---------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all (control characters in an error message).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("?", text)


def _junit_timestamp(iso: str | None) -> str | None:
    """``2026-11-25T13:02:39`` (UTC, seconds, no zone: the Ant/Jenkins shape)."""
    if iso is None:
        return None
    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def _duration_s(run: ReportedRun) -> float:
    start, end = run.started_utc, run.ended_utc
    if end is None:
        return 0.0
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):
        return 0.0
    return max(0.0, seconds)


def _classname(*parts: str) -> str:
    # Jenkins splits a classname at its dots into package and class; keep ours whole.
    return ".".join([JUNIT_PACKAGE, *(p.replace(".", "_") for p in parts)])


def _testcase(parent: ET.Element, check: Check, classname: str) -> None:
    case = ET.SubElement(parent, "testcase", name=check.name, classname=classname, time="0")
    message = _xml_text(check.message)
    if check.outcome is CheckOutcome.FAILED:
        ET.SubElement(case, "failure", message=message, type="threshold").text = message
    elif check.outcome is CheckOutcome.ERROR:
        ET.SubElement(case, "error", message=message, type="no-data").text = message
    elif check.outcome is CheckOutcome.SKIPPED:
        ET.SubElement(case, "skipped", message=message)


def _suite_counts(suite: ET.Element, checks: Sequence[Check]) -> None:
    def count(outcome: CheckOutcome) -> str:
        return str(sum(1 for c in checks if c.outcome is outcome))

    suite.set("tests", str(len(checks)))
    suite.set("failures", count(CheckOutcome.FAILED))
    suite.set("errors", count(CheckOutcome.ERROR))
    suite.set("skipped", count(CheckOutcome.SKIPPED))


def _properties(parent: ET.Element, values: Sequence[tuple[str, object]]) -> None:
    properties = ET.SubElement(parent, "properties")
    for name, value in values:
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=_xml_text(str(value)))


def render_junit(report: Report) -> str:
    """JUnit XML (the Jenkins junit-10.xsd shape): one testsuite per run, its threshold
    checks as testcases, and with a baseline one more testsuite ``regression`` with a
    testcase ``regression`` per direction. Skipped checks are ``<skipped>``; a run that
    measured nothing gives ``<error>``."""
    root = ET.Element("testsuites", name="migration-blackout report")
    by_run = _checks_by_run(report)
    suite_id = 0
    for run in report.runs:
        checks = by_run.get(run.run_id, [])
        suite = ET.Element("testsuite", name=run.run_id)
        _suite_counts(suite, checks)
        suite.set("time", f"{_duration_s(run):.3f}")
        timestamp = _junit_timestamp(run.started_utc)
        if timestamp:
            suite.set("timestamp", timestamp)
        suite.set("hostname", run.hostname or "localhost")
        suite.set("id", str(suite_id))
        suite.set("package", JUNIT_PACKAGE)
        suite_id += 1
        blackout = run.blackout
        _properties(
            suite,
            [
                ("run_dir", run.path),
                ("status", run.status),
                ("direction", run.direction),
                ("excluded", run.excluded_because),
                ("blackout_source", None if blackout is None else blackout.source),
                ("blackout_lower_ms", None if blackout is None else blackout.lower_ms),
                ("blackout_estimate_ms", None if blackout is None else blackout.estimate_ms),
                ("blackout_upper_ms", None if blackout is None else blackout.upper_ms),
                ("blackout_timeouts", None if blackout is None else blackout.timeouts),
            ],
        )
        for check in checks:
            _testcase(suite, check, _classname(run.run_id))
        root.append(suite)
    regression = [c for c in report.checks if c.name == "regression"]
    if regression:
        suite = ET.Element("testsuite", name="regression")
        _suite_counts(suite, regression)
        suite.set("time", "0")
        suite.set("timestamp", report.generated_utc.rstrip("Z"))
        suite.set("hostname", "localhost")
        suite.set("id", str(suite_id))
        suite.set("package", JUNIT_PACKAGE)
        _properties(
            suite,
            [
                ("max_regression_pct", _limit(report.thresholds.regression_pct)),
                ("baseline_runs", len(report.baseline_runs)),
            ],
        )
        for check in regression:
            _testcase(suite, check, _classname("regression", check.subject))
        root.append(suite)

    suites = list(root)
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in suites):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
