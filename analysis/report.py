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
A watch that an older version recorded as ``aborted`` because it was ended
by a signal (its documented end) is read as ``completed``.

**Groups.** Statistics and the regression test are per group: the migration
direction, and with ``group_by`` the values of those labels (``measure run
--label key=value``), e.g. ``"A -> B [vm_memory=4G]"``.

**Which folders.** ``find_run_folders`` turns what a user types (run folders,
session folders, parent folders of runs, globs, files listing any of these)
into run folders.
"""

from __future__ import annotations

import base64
import glob
import io
import json
import math
import os
import re
import string
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from migration_blackout.analysis.render import text_table
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
# CPU steal during a run (the measuring machine's hypervisor ran something else)
# from which the report mentions it.
STEAL_NOTE_PCT = 2.0


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
    # Each run's TCP stream stall (upper bound, the longer direction), in ms.
    max_tcp_stall_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_blackout_ms", "max_regression_pct", "max_tcp_stall_ms"):
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
class TcpStall:
    """The TCP stream's longer stall, from summary.json's ``tcp.stream``."""

    stall_ms: float
    upper_ms: float
    direction: str
    survived: bool
    beyond_ms: float | None  # beyond the ICMP blackout's estimate
    explanation: str | None  # why it outlasted the blackout, when it surely did


def tcp_stall_from_summary(summary: Mapping[str, Any]) -> TcpStall | None:
    tcp = summary.get("tcp")
    stream = tcp.get("stream") if isinstance(tcp, Mapping) else None
    if not isinstance(stream, Mapping) or not _is_number(stream.get("stall_ms")):
        return None
    beyond = stream.get("beyond_blackout")
    beyond_ms = beyond.get("beyond_ms") if isinstance(beyond, Mapping) else None
    explanation = stream.get("explanation")
    upper = stream.get("stall_upper_ms")
    return TcpStall(
        stall_ms=float(stream["stall_ms"]),
        upper_ms=float(upper) if isinstance(upper, int | float) else float(stream["stall_ms"]),
        direction=str(stream.get("stall_direction")),
        survived=bool(stream.get("survived")),
        beyond_ms=float(beyond_ms) if isinstance(beyond_ms, int | float) else None,
        explanation=explanation if isinstance(explanation, str) else None,
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
    labels: Mapping[str, str] = field(default_factory=dict)
    # What the run was measured with, flattened for comparison ("kernel": "6.1.0").
    context: Mapping[str, str] = field(default_factory=dict)
    cpu_steal_pct: float | None = None
    ended_by: str | None = None
    # The statistics group: the direction, and the grouping labels' values.
    group: str = ""
    # The TCP stream's stall (runs with --witnesses): summary.json's tcp.stream.
    tcp_stall: TcpStall | None = None

    @property
    def in_group(self) -> str:
        """The statistics group (the direction when the report groups by no label)."""
        return self.group or self.direction

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


def run_labels(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The run's labels (``measure run/watch --label key=value``); {} when it has none."""
    labels = manifest.get("labels")
    if not isinstance(labels, Mapping):
        return {}
    return {str(key): str(value) for key, value in labels.items()}


def run_context(manifest: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, str]:
    """What the run was measured with, as text, for telling runs apart: the measuring
    machine (kernel, clocksource, clock synchronised), the probe interval, the
    hypervisor, the hosts' OS builds and the VM's memory, where recorded."""
    context: dict[str, str] = {}
    machine = manifest.get("machine")
    if isinstance(machine, Mapping):
        for key, name in (("kernel", "kernel"), ("clocksource", "clocksource")):
            if isinstance(machine.get(key), str):
                context[name] = machine[key]
        synchronised = machine.get("clock_synchronised")
        if isinstance(synchronised, bool):
            context["clock synchronised"] = "yes" if synchronised else "no"
    icmp = summary.get("icmp")
    if isinstance(icmp, Mapping):
        intervals = {
            f"{stats['interval_ms']['requested']:g}"
            for stats in icmp.values()
            if isinstance(stats, Mapping)
            and isinstance(stats.get("interval_ms"), Mapping)
            and _is_number(stats["interval_ms"].get("requested"))
        }
        if intervals:
            context["probe interval ms"] = ", ".join(sorted(intervals))
    hypervisor = manifest.get("hypervisor")
    if isinstance(hypervisor, Mapping) and isinstance(hypervisor.get("kind"), str):
        context["hypervisor"] = hypervisor["kind"]
    hosts = manifest.get("hosts")
    if isinstance(hosts, Mapping):
        builds = [
            f"{name}: {about['os_version']}"
            for name, about in sorted(hosts.items())
            if isinstance(about, Mapping) and isinstance(about.get("os_version"), str)
        ]
        if builds:
            context["host OS"] = "; ".join(builds)
    vm = manifest.get("vm")
    if isinstance(vm, Mapping) and _is_number(vm.get("memory_bytes")):
        context["VM memory"] = f"{vm['memory_bytes'] / 2**20:g} MiB"
    return context


def _cpu_steal_pct(manifest: Mapping[str, Any]) -> float | None:
    machine = manifest.get("machine")
    steal = machine.get("cpu_steal") if isinstance(machine, Mapping) else None
    if isinstance(steal, Mapping) and _is_number(steal.get("pct")):
        return float(steal["pct"])
    return None


def _ended_by(manifest: Mapping[str, Any]) -> str | None:
    ended_by = manifest.get("ended_by")
    return ended_by if isinstance(ended_by, str) else None


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
    document = manifest.document
    error = manifest.error
    status, ended_by = manifest.status, _ended_by(document)
    if (
        document.get("run_kind") == "watch"
        and status == "aborted"
        and error is not None
        and error.type == "interrupted"
    ):
        # Before watch recorded a signal as its normal end, it wrote "aborted".
        status, error = "completed", None
        ended_by = "signal (recorded as aborted by an older version)"
    host = document.get("harness_host")
    hostname = host.get("hostname") if isinstance(host, Mapping) else None
    warnings = summary.get("warnings")
    direction = run_direction(document)
    return ReportedRun(
        path=path,
        run_id=manifest.run_id,
        status=status,
        error=None if error is None else f"{error.type}: {error.message}",
        direction=direction,
        started_utc=manifest.started_utc,
        ended_utc=manifest.ended_utc,
        hostname=hostname if isinstance(hostname, str) else None,
        blackout=blackout_from_summary(summary, f"{path / SUMMARY_FILE}"),
        warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
        summary_note=note,
        hypervisor_says=hypervisor_figure(summary),
        labels=run_labels(document),
        context=run_context(document, summary),
        cpu_steal_pct=_cpu_steal_pct(document),
        ended_by=ended_by,
        group=direction,
        tcp_stall=tcp_stall_from_summary(summary),
    )


def run_group(run: ReportedRun, group_by: Sequence[str]) -> str:
    """The run's statistics group: its direction, then ``[key=value, ...]`` of ``group_by``
    (``key=-`` for a run without that label)."""
    if not group_by:
        return run.direction
    values = ", ".join(f"{key}={run.labels.get(key, '-')}" for key in group_by)
    return f"{run.direction} [{values}]"


# --- which folders -----------------------------------------------------------------------

_GLOB_MAGIC = re.compile(r"[*?[]")
RUN_MANIFEST = "manifest.json"
SESSION_FILE = "session.json"


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / RUN_MANIFEST).is_file()


def _runs_below(folder: Path) -> list[Path]:
    """Run folders inside ``folder`` (sessions and parents of runs, at any depth), by path."""
    found: list[Path] = []
    for parent, subfolders, files in os.walk(folder):
        if RUN_MANIFEST in files and Path(parent) != folder:
            found.append(Path(parent))
            subfolders.clear()  # a run folder holds no runs
            continue
        subfolders[:] = [d for d in subfolders if d not in ("raw", "derived")]
    return sorted(found)


def _list_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFormatError(
            f"{path} is a file, not a run folder; read as a list of run folders it failed: {exc}"
        ) from None
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry if Path(entry).is_absolute() else str(path.parent / entry))
    if not entries:
        raise RunFormatError(f"{path} lists no run folder (one path or glob per line)")
    return entries


def find_run_folders(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The run folders that ``paths`` name, in order, each once.

    Each path may be a run folder (it holds ``manifest.json``); a session
    folder (``measure run --repeat``) or any folder holding run folders, at
    any depth (every run inside, sorted by path: run ids sort by start time);
    a glob, for a shell that did not expand it (``'results/*'``); or a text
    file listing any of these, one per line (``#`` starts a comment; relative
    paths are relative to the file's folder). Raises ``RunFormatError`` for
    a path that does not exist, a glob that matches nothing and a folder
    without runs.
    """
    found: dict[Path, None] = {}
    seen_lists: set[Path] = set()

    def visit(given: str, depth: int) -> None:
        path = Path(given)
        if not path.exists() and _GLOB_MAGIC.search(given):
            matches = sorted(glob.glob(given))
            if not matches:
                raise RunFormatError(f"{given}: no file or folder matches this pattern")
            for match in matches:
                visit(match, depth)
            return
        if not path.exists():
            raise RunFormatError(f"{given} does not exist")
        if path.is_file():
            if path.name in (RUN_MANIFEST, SESSION_FILE):
                visit(str(path.parent), depth)
                return
            resolved = path.resolve()
            if resolved in seen_lists or depth > 8:
                raise RunFormatError(f"{given}: a list of run folders that lists itself")
            seen_lists.add(resolved)
            for entry in _list_file(path):
                visit(entry, depth + 1)
            return
        if is_run_folder(path):
            found.setdefault(path, None)
            return
        runs = _runs_below(path)
        if not runs:
            raise RunFormatError(
                f"{given} is not a run folder (it has no manifest.json) and holds none"
            )
        for run in runs:
            found.setdefault(run, None)

    for given in paths:
        visit(os.fspath(given), 0)
    # The same folder named two ways (a glob and its session) counts once.
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


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
    """The runs' statistics groups (``ReportedRun.group``) in order of first appearance."""
    seen: dict[str, None] = {}
    for group in groups:
        for run in group:
            seen.setdefault(run.in_group)
    return list(seen)


def _included_blackouts(runs: Sequence[ReportedRun], direction: str) -> list[ReportedRun]:
    return [r for r in runs if r.included and r.in_group == direction]


def direction_stats(runs: Sequence[ReportedRun]) -> tuple[DirectionStats, ...]:
    """Per group (in order of first appearance), the included runs' blackout figures."""
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
        f"{survived}) {'>' if failed else '<='} max_tcp_stall_ms {_limit(limit)} ms",
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
    """Each run's threshold checks: ``max_blackout_ms`` and ``max_timeouts``, those set."""
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


def _regression_skip_reason(result: RegressionVerdict) -> str | None:
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
            skip_reason=_regression_skip_reason(r.result),
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
    figure = Figure(figsize=(min(16.0, max(8.0, 2.0 + 0.3 * count)), 5.2), layout="constrained")
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
        colours.append(colour[run.in_group])
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
    # Below the plot, never over a bar.
    figure.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    return figure


# Below this many values a box (quartiles) says less than the points themselves.
MIN_VALUES_FOR_BOX = 5


def plot_direction_distributions(report: Report) -> Figure | None:
    """Per direction (group), the upper bounds of the runs, the baseline's just above.

    One row per set that has runs in that direction, labelled on the left (host
    names stay whole and level however many runs there are); a set without runs
    there gets no row. Every run is a point; a box (quartiles) is drawn from
    ``MIN_VALUES_FOR_BOX`` values on, a median tick below that. Blackouts
    without an upper bound are not drawn (the row label counts them). None when
    there is nothing to compare: no baseline and no direction with two or more
    included runs.
    """
    directions = _directions_in_order(report.runs, report.baseline_runs)
    rows: list[tuple[str, str, list[float], int]] = []  # (direction, role, values, open)
    for direction in directions:
        for role, runs in (("baseline", report.baseline_runs), ("runs", report.runs)):
            upper = [
                r.blackout.conservative_ms
                for r in _included_blackouts(runs, direction)
                if r.blackout
            ]
            if not upper:
                continue  # no empty slot for a set without runs in this direction
            finite = [v for v in upper if math.isfinite(v)]
            rows.append((direction, role, finite, len(upper) - len(finite)))
    if not report.baseline_runs and not any(len(r[2]) + r[3] >= 2 for r in rows):
        return None
    figure = Figure(figsize=(10.0, 1.2 + 0.55 * max(2, len(rows))), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(
        f"Blackout upper bound per {_group_title(report)}\n(points: runs; box: quartiles, "
        f"from {MIN_VALUES_FOR_BOX} runs; else a tick at the median)",
        fontsize=9,
    )
    axes.set_xlabel("blackout upper bound (ms)")
    colour = _colour_of(report)
    jitter = np.random.default_rng(0)  # fixed: the same report draws the same picture
    labels = []
    for y, (direction, role, values, open_count) in enumerate(rows):
        alpha = _BASELINE_ALPHA if role == "baseline" else 1.0
        if len(values) >= MIN_VALUES_FOR_BOX:
            box = axes.boxplot(
                [values],
                positions=[y],
                widths=0.55,
                showfliers=False,
                manage_ticks=False,
                patch_artist=True,
                orientation="horizontal",
                medianprops={"color": "black"},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colour[direction])
                patch.set_alpha(0.35 * alpha)
        elif values:
            axes.plot([float(np.median(values))] * 2, [y - 0.3, y + 0.3], color="black", lw=1.5)
        if values:
            axes.scatter(
                values,
                y + jitter.uniform(-0.15, 0.15, len(values)),
                s=16,
                color=colour[direction],
                alpha=alpha,
                zorder=3,
            )
        label = f"{direction}\n{role}, n={len(values) + open_count}"
        if open_count:
            label += f" ({open_count} open, not drawn)"
        labels.append(label)
    axes.set_yticks(range(len(rows)), labels, fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)  # the first direction at the top
    limit = report.thresholds.max_blackout_ms
    if limit is not None:
        axes.axvline(
            limit, color=_OPEN_COLOUR, linestyle="--", linewidth=1, label=f"max {_limit(limit)} ms"
        )
        figure.legend(fontsize=8, loc="outside lower center", frameon=False)
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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _verdict_line(report: Report) -> tuple[str, str]:
    """("PASS" or "FAIL", the sentence after it), e.g. "4 checks passed; 2 skipped: no
    baseline" or "1 of 6 checks failed (max_blackout_ms); 5 passed"."""
    if not report.checks:
        return "PASS", "nothing to check: no threshold was set and no baseline given"
    failed = report.failed_checks
    passed = [c for c in report.checks if c.outcome is CheckOutcome.PASSED]
    skipped: dict[str, int] = {}
    for check in report.checks:
        if check.outcome is CheckOutcome.SKIPPED:
            reason = check.skip_reason or "not applicable"
            skipped[reason] = skipped.get(reason, 0) + 1
    parts: list[str] = []

    def add(count: int, what: str) -> None:
        # The first part names the checks ("2 checks skipped"), the others need not.
        parts.append(f"{count} {what}" if parts else f"{_plural(count, 'check')} {what}")

    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        parts.append(f"{len(failed)} of {_plural(len(report.checks), 'check')} failed ({names})")
    if passed:
        add(len(passed), "passed")
    for reason, count in skipped.items():
        add(count, f"skipped: {reason}")
    return ("FAIL" if failed else "PASS"), "; ".join(parts)


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
    tcp = (
        ""
        if thresholds.max_tcp_stall_ms is None
        else f", max_tcp_stall_ms {show(thresholds.max_tcp_stall_ms)}"
    )
    return (
        f"Thresholds: max_blackout_ms {show(thresholds.max_blackout_ms)}, "
        f"max_timeouts {show(thresholds.max_timeouts)}{tcp}, max_regression_pct {regression}."
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


def _tcp_cell(run: ReportedRun) -> str:
    stall = run.tcp_stall
    if stall is None:
        return "-"
    broke = "" if stall.survived else ", broke"
    return f"{format_ms(stall.upper_ms)} ({stall.direction}{broke})"


def _run_rows(
    runs: Sequence[ReportedRun],
    checks: Mapping[str, list[Check]],
    *,
    with_labels: bool = False,
    with_tcp: bool = False,
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
        labels = (_labels_text(run.labels),) if with_labels else ()
        rows.append(
            (
                run.run_id,
                status,
                run.direction,
                *labels,
                *figures,
                *((_tcp_cell(run),) if with_tcp else ()),
                run.hypervisor_says or "-",
                verdict,
            )
        )
    return rows


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items()) or "-"


def _has_labels(report: Report) -> bool:
    return any(r.labels for r in (*report.runs, *report.baseline_runs))


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
    headers = (_group_title(report), "set", "runs", "figure", "median ms", "p95 ms", "max ms")
    return [
        _Heading(3, "Blackout per " + _group_title(report)),
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
        *(_group_title(report), "verdict", "runs / baseline", "median upper ms: runs / baseline"),
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
    with_labels = _has_labels(report)
    headers: tuple[str, ...] = _RUN_HEADERS
    numeric = _RUN_NUMERIC
    if with_labels:
        headers = (*_RUN_HEADERS[:3], "labels", *_RUN_HEADERS[3:])
        numeric = frozenset(i + 1 for i in _RUN_NUMERIC)
    # A column for the TCP stream's stall when a run has one (--witnesses).
    with_tcp = any(r.tcp_stall for r in (*report.runs, *report.baseline_runs))
    if with_tcp:
        at = headers.index("hypervisor says")
        headers = (*headers[:at], "TCP stall ms", *headers[at:])
    for title, runs in (("Runs", report.runs), ("Baseline runs", report.baseline_runs)):
        if not runs:
            continue
        rows = _run_rows(runs, checks, with_labels=with_labels, with_tcp=with_tcp)
        table = _Table(headers, tuple(rows), numeric)
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


def _group_title(report: Report) -> str:
    return "direction" + (f" [{', '.join(report.group_by)}]" if report.group_by else "")


def format_report_table(report: Report) -> str:
    """The comparison as plain text for a terminal or a CI log (like pyperf's
    ``compare_to``): per group the runs' blackout upper bounds beside the
    baseline's with the change and the verdict; then every run, the runs left
    out and why, the notes, and the verdict as the last line."""
    regression_of = {r.direction: r.result for r in report.regressions}
    baseline_of = {s.direction: s for s in report.baseline_directions}
    with_baseline = bool(report.baseline_runs)
    headers = [_group_title(report), "runs", "median", "p95", "max"]
    if with_baseline:
        headers += ["baseline runs", "baseline median", "change", "p", "verdict"]
    rows = []
    for stats in report.directions:
        row = [
            stats.direction,
            str(stats.upper.n),
            format_ms(stats.upper.median_ms),
            format_ms(stats.upper.p95_ms),
            format_ms(stats.upper.max_ms),
        ]
        if with_baseline:
            reference = baseline_of.get(stats.direction)
            result = regression_of.get(stats.direction)
            test = None if result is None else result.test
            row += [
                "0" if reference is None else str(reference.upper.n),
                "-" if reference is None else format_ms(reference.upper.median_ms),
                "-" if result is None else format_pct(result.median_increase_pct),
                "-" if test is None else format_p(test.p_value),
                "-"
                if result is None
                else (_regression_skip_reason(result) or result.verdict.value),
            ]
        rows.append(row)
    lines = [
        "Blackout upper bound per " + _group_title(report) + " (ms: the guest was silent at "
        "most this long; thresholds and the regression test use it)"
    ]
    lines += text_table(headers, rows, align="l" + "r" * (len(headers) - 2) + "l")

    checks = _checks_by_run(report)
    with_labels = _has_labels(report)
    for title, runs in (("Runs", report.runs), ("Baseline runs", report.baseline_runs)):
        if not runs:
            continue
        run_rows = []
        for run in runs:
            blackout = run.blackout if run.included else None
            failed = [
                c.name
                for c in checks.get(run.run_id, [])
                if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
            ]
            run_rows.append(
                [
                    run.run_id,
                    run.status if run.included else f"{run.status}, left out",
                    run.direction,
                    *([_labels_text(run.labels)] if with_labels else []),
                    "-" if blackout is None else format_ms(blackout.lower_ms),
                    "-" if blackout is None else format_ms(blackout.estimate_ms),
                    "-" if blackout is None else format_ms(blackout.conservative_ms),
                    "-" if blackout is None else str(blackout.timeouts),
                    run.hypervisor_says or "-",
                    ("FAIL: " + ", ".join(failed)) if failed else "",
                ]
            )
        run_headers = ["run", "status", "direction", *(["labels"] if with_labels else [])]
        run_headers += ["lower", "estimate", "upper", "timeouts", "hypervisor says", ""]
        align = "lll" + ("l" if with_labels else "") + "rrrrll"
        lines += ["", f"{title} (ms)", *text_table(run_headers, run_rows, align=align)]
        left_out = [r for r in runs if not r.included]
        lines += [f"  left out: {r.run_id}: {r.excluded_because}" for r in left_out]
    reasons = [f"  {r.direction}: {r.result.reason}" for r in report.regressions]
    if reasons:
        lines += ["", "Regression against the baseline", *reasons]
    notes = [n for n in report.notes if "left out of the statistics" not in n]
    if notes:
        lines += ["", "Notes", *(f"  {note}" for note in notes)]
    if report.failed_checks:
        lines += ["", "Failed checks"]
        lines += [
            f"  {c.outcome.value} {c.name} [{c.subject}]: {c.message}" for c in report.failed_checks
        ]
    lead, verdict = _verdict_line(report)
    lines += ["", f"{lead}: {verdict}"]
    return "\n".join(lines) + "\n"


# Version history of the report document (``measure report --json``):
#   1 (0.1.0): first version.
REPORT_SCHEMA_VERSION = 1


def _ms_or_none(value: float | None) -> float | None:
    """A figure for JSON: rounded to the microsecond; None for none or open (inf)."""
    return None if value is None or math.isinf(value) else round(value, 3)


def direction_stats_json(stats: DirectionStats) -> dict[str, Any]:
    """One group's statistics as JSON (``session.json`` and ``measure report --json``);
    an open figure (a blackout without an upper bound) is null, counted in ``open_upper``."""

    def figure(f: FigureStats) -> dict[str, Any]:
        return {
            "n": f.n,
            "median_ms": _ms_or_none(f.median_ms),
            "p95_ms": _ms_or_none(f.p95_ms),
            "max_ms": _ms_or_none(f.max_ms),
        }

    return {
        "direction": stats.direction,
        "runs": list(stats.run_ids),
        "lower": figure(stats.lower),
        "estimate": figure(stats.estimate),
        "upper": figure(stats.upper),
        "open_upper": stats.open_upper,
    }


def _run_json(run: ReportedRun) -> dict[str, Any]:
    blackout = run.blackout
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "status": run.status,
        "included": run.included,
        "excluded_because": run.excluded_because,
        "ended_by": run.ended_by,
        "direction": run.direction,
        "group": run.in_group,
        "labels": dict(run.labels),
        "started_utc": run.started_utc,
        "ended_utc": run.ended_utc,
        "blackout": None
        if blackout is None
        else {
            "source": blackout.source,
            "lower_ms": _ms_or_none(blackout.lower_ms),
            "estimate_ms": _ms_or_none(blackout.estimate_ms),
            "upper_ms": _ms_or_none(blackout.upper_ms),
            "lost": blackout.lost,
            "timeouts": blackout.timeouts,
            "unreachable": blackout.unreachable,
            "open_start": blackout.open_start,
            "open_end": blackout.open_end,
        },
        "hypervisor_says": run.hypervisor_says,
        "tcp_stall": None
        if run.tcp_stall is None
        else {
            "stall_ms": _ms_or_none(run.tcp_stall.stall_ms),
            "upper_ms": _ms_or_none(run.tcp_stall.upper_ms),
            "direction": run.tcp_stall.direction,
            "survived": run.tcp_stall.survived,
            "beyond_blackout_ms": _ms_or_none(run.tcp_stall.beyond_ms),
            "explanation": run.tcp_stall.explanation,
        },
        "context": dict(run.context),
        "cpu_steal_pct": run.cpu_steal_pct,
    }


def report_document(report: Report) -> dict[str, Any]:
    """The report as one JSON document (``measure report --json``; docs/reports.md)."""
    lead, verdict = _verdict_line(report)
    regression_of = {r.direction: r.result for r in report.regressions}
    baseline_of = {s.direction: s for s in report.baseline_directions}
    groups = []
    for stats in report.directions:
        result = regression_of.get(stats.direction)
        reference = baseline_of.get(stats.direction)
        groups.append(
            {
                "group": stats.direction,
                "runs": direction_stats_json(stats),
                "baseline": None if reference is None else direction_stats_json(reference),
                "regression": None
                if result is None
                else {
                    "verdict": result.verdict.value,
                    "median_increase_pct": None
                    if result.median_increase_pct is None or math.isinf(result.median_increase_pct)
                    else round(result.median_increase_pct, 3),
                    "u": None if result.test is None else result.test.u,
                    "p_value": None if result.test is None else result.test.p_value,
                    "method": None if result.test is None else result.test.method,
                    "reason": result.reason,
                },
            }
        )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "report",
        "generated_by": report.generated_by,
        "generated_utc": report.generated_utc,
        "passed": report.passed,
        "verdict": f"{lead}: {verdict}",
        "thresholds": {
            "max_blackout_ms": report.thresholds.max_blackout_ms,
            "max_timeouts": report.thresholds.max_timeouts,
            "max_regression_pct": report.thresholds.regression_pct,
            "max_tcp_stall_ms": report.thresholds.max_tcp_stall_ms,
        },
        "group_by": list(report.group_by),
        "groups": groups,
        "baseline_only_groups": [
            direction_stats_json(s)
            for s in report.baseline_directions
            if s.direction not in {d.direction for d in report.directions}
        ],
        "runs": [_run_json(r) for r in report.runs],
        "baseline_runs": [_run_json(r) for r in report.baseline_runs],
        "checks": [
            {
                "name": c.name,
                "subject": c.subject,
                "outcome": c.outcome.value,
                "message": c.message,
                "skip_reason": c.skip_reason,
            }
            for c in report.checks
        ],
        "notes": list(report.notes),
    }


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
