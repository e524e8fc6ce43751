"""The runs a report is made of: each run folder read into a ``ReportedRun`` (its
summary built when missing), and what a user types turned into run folders.

**Which runs count.** Only runs with status ``completed`` and ICMP records
enter statistics and checks. Runs that ``failed``, were ``aborted`` or were
left ``running`` are listed with a note; their threshold checks are skipped.
A completed run without ICMP records measured nothing: its checks are errors.
A watch that an older version recorded as ``aborted`` because it was ended
by a signal (its documented end) is read as ``completed``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.analysis.rundata import RunData, load_run
from migration_blackout.analysis.summary import build_summary, read_summary, write_summary
from migration_blackout.runformat import (
    MANIFEST_FILE,
    SESSION_FILE,
    SUMMARY_FILE,
    RunFormatError,
    RunStatus,
)

DIRECTION_UNKNOWN = "unknown"
INCLUDED_STATUS = RunStatus.COMPLETED


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
class BrownoutFigure:
    """The guest's brownout, from summary.json's ``brownout`` block (measured),
    with Hyper-V's 22508 figure and QEMU's highest throttle where the run has them."""

    duration_ms: float
    lower_ms: float
    upper_ms: float
    work_rate: float
    hyperv_ms: float | None
    qemu_throttle_pct: int | None


def brownout_from_summary(summary: Mapping[str, Any]) -> BrownoutFigure | None:
    block = summary.get("brownout")
    measured = block.get("measured") if isinstance(block, Mapping) else None
    if not isinstance(measured, Mapping) or not _is_number(measured.get("duration_ms")):
        return None
    assert isinstance(block, Mapping)
    hyperv, qemu = block.get("hyperv"), block.get("qemu")
    hyperv_ms = hyperv.get("brownout_ms") if isinstance(hyperv, Mapping) else None
    throttle = qemu.get("max_cpu_throttle_percentage") if isinstance(qemu, Mapping) else None
    return BrownoutFigure(
        duration_ms=float(measured["duration_ms"]),
        lower_ms=float(measured["lower_ms"]),
        upper_ms=float(measured["upper_ms"]),
        work_rate=float(measured["work_rate"]),
        hyperv_ms=float(hyperv_ms) if isinstance(hyperv_ms, int | float) else None,
        qemu_throttle_pct=throttle if isinstance(throttle, int) else None,
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
    # The guest's brownout (runs with a guest agent 1.1): summary.json's brownout.
    brownout: BrownoutFigure | None = None

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


def _summary_of(run: RunData) -> tuple[dict[str, Any], str | None]:
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
        status, error = str(RunStatus.COMPLETED), None
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
        brownout=brownout_from_summary(summary),
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


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def _runs_below(folder: Path) -> list[Path]:
    """Run folders inside ``folder`` (sessions and parents of runs, at any depth), by path."""
    found: list[Path] = []
    for parent, subfolders, files in os.walk(folder):
        if MANIFEST_FILE in files and Path(parent) != folder:
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
            if path.name in (MANIFEST_FILE, SESSION_FILE):
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
