"""One clock for every witness of a run: the harness's CLOCK_MONOTONIC.

A run folder holds stamps from three kinds of clock:

* the **harness's** own (``*_mono_ns`` and ``*_utc_ns`` of every ICMP probe,
  host poll, console-view sample, harness event and arrival): used as they
  are;
* each **Hyper-V host's** wall clock (a poll's ``host_time``, an event's
  ``time_created``): mapped with the run's clock offsets (below);
* the **guest's** clocks (``guest_*`` of heartbeats and frames): unrelated to
  the harness's; mapped through the arrival times (below).

``build_timeline`` reads a run folder and returns a ``Timeline`` whose stamps
are all harness monotonic nanoseconds, each with bounds ``[t_lo_ns, t_hi_ns]``
that contain the true instant. UTC, for labels, is ``t + utc_minus_mono_ns``
from the manifest's ``clock.start`` pair. docs/timeline.md explains every
column and the reasoning below at more length.

**Host clocks.** The manifest's ``hyperv.clock.<host>`` gives the host's clock
minus the harness's UTC, estimated ``before`` and ``after`` the migration,
each with an uncertainty (half the best Get-Date round trip) and the harness
monotonic time it was taken at. At harness time ``t`` the offset is
interpolated linearly, ``w = (t - at_before) / (at_after - at_before)``,
``offset = (1 - w) before + w after``, and its uncertainty is
``|1 - w| u_before + |w| u_after``. That is a bound, not a guess, as long as
the host clock drifts linearly: the interpolated error is the same mix of the
two estimates' errors. Between the estimates it is the interpolated
uncertainty (at most the larger of the two); outside them (extrapolation) it
grows with the distance, as it should. With only one estimate the offset is
constant and the uncertainty that estimate's. A host stamp maps to
``mono = host_utc - offset(t) - utc_minus_mono_ns`` (evaluated once at an
approximate ``t``; the offset changes by parts per million).

**Guest clocks.** Each heartbeat (or frame upload) leaves the guest at
``g`` on its monotonic clock and arrives at ``recv`` on the harness's, so
``recv - g = c(g) + delay`` with ``c`` the unknown clock difference (which
drifts slowly) and ``delay >= 0``. The smallest ``recv - g`` of each block
(``GUEST_BLOCK_S``, at least ``GUEST_BLOCK_RECORDS`` intervals) is an
*anchor*: ``c`` plus that block's smallest delay. Between anchors the
envelope is interpolated linearly; a straight line through points that all lie
on or above the linear ``c`` stays on or above it, so ``t = g + envelope`` is
never earlier than the true send (and never later than the arrival: it is
clamped to it). Beyond a segment's first or last anchor the envelope follows
the drift fitted through the anchors, plus an allowance for its error
(``GUEST_DRIFT_MARGIN_PPM``, ``GUEST_DRIFT_UNKNOWN_PPM`` without a fit) times
the distance. Anchors are taken separately within each *segment*: a new one
begins wherever the guest's stamps or the arrivals step by more than
``GUEST_BREAK_INTERVALS`` nominal intervals, because a paused VM may stop its
clock (``c`` jumps by the pause) or keep it running; the two cases need not be
told apart then. The true send lies in ``[t - d - allowance, t + allowance]``
with ``d`` the largest anchor delay, bounded by the smallest ICMP round trip of
the run (``delay_bound_source = "icmp_min_rtt"``: a datagram that crossed
faster than the fastest echo round trip; an assumption that each block holds
one datagram sent on an idle network); for frames ``FRAME_DELAY_RTTS`` of it,
as an upload's headers follow a connection set-up. Without ICMP replies, the
99th percentile of how far arrivals lie above the envelope stands in
(``"arrival_spread"``: an assumption, not a bound). Heartbeats anchor the
envelope when the agent sent any (they are never queued); frames are mapped
with it. Frames alone use their upload start (``guest_send_mono_ns``), which
follows any queueing, as anchor.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from migration_blackout.analysis.guest import (
    FRAMES_FILE,
    FRAMES_SOURCE,
    HEARTBEAT_FILE,
    HEARTBEAT_SOURCE,
    load_frames,
    load_heartbeats,
)
from migration_blackout.analysis.hyperv_figures import (
    load_ground_truth,
    load_host_polls,
    load_hyperv_events,
)
from migration_blackout.analysis.icmp import utc_iso
from migration_blackout.analysis.runfolder import (
    ICMP_ATTEMPT_OUTCOMES,
    ICMP_OUTCOME_DTYPE,
    IcmpRecords,
    RunFolder,
    RunFormatError,
    load_icmp,
    load_run,
    read_jsonl,
    requested_icmp_interval_s,
)

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

# The columns every row of the tidy table has (``Timeline.tidy()``, ``Timeline.events``).
TIDY_COLUMNS = ("source", "lane", "kind", "t_mono_ns", "t_lo_ns", "t_hi_ns", "value", "label")
EVENTS_LANE = "events"

# Codes of the ICMP outcomes in ``Timeline.icmp["outcome"]`` (attempts first).
OUTCOME_CODE = {name: code for code, name in enumerate(ICMP_OUTCOME_DTYPE.categories)}

# Guest clock alignment: envelope block length, and the segment break in nominal intervals.
GUEST_BLOCK_S = 1.0  # at least this long ...
GUEST_BLOCK_RECORDS = 10  # ... and this many nominal intervals (frames: 10 s)
GUEST_BREAK_INTERVALS = 3.0
# Drift allowance beyond a segment's anchors: the fitted drift may be off by the
# margin; without a fit (segments shorter than the span), by the larger figure.
GUEST_DRIFT_MIN_SPAN_S = 5.0
GUEST_DRIFT_MARGIN_PPM = 50.0
GUEST_DRIFT_UNKNOWN_PPM = 300.0
# An upload's headers arrive at most this many smallest ICMP round trips after it began.
FRAME_DELAY_RTTS = 2.0

# A wall-clock step of the harness between clock.start and clock.end beyond this is reported.
HARNESS_STEP_WARN_NS = 1 * NS_PER_MS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# -- clocks ------------------------------------------------------------------


@dataclass(frozen=True)
class HarnessClock:
    """The harness's clock pairs from the manifest (``clock.start``, ``clock.end``)."""

    start_mono_ns: int
    start_utc_ns: int
    end_mono_ns: int | None = None
    end_utc_ns: int | None = None

    @property
    def utc_minus_mono_ns(self) -> int:
        """Harness UTC minus harness monotonic at the start; ``utc = mono + this``."""
        return self.start_utc_ns - self.start_mono_ns

    @property
    def step_ns(self) -> int | None:
        """How much ``utc - mono`` changed from start to end (a wall-clock step or slew)."""
        if self.end_mono_ns is None or self.end_utc_ns is None:
            return None
        return (self.end_utc_ns - self.end_mono_ns) - self.utc_minus_mono_ns

    def utc_ns(self, mono_ns: int) -> int:
        return mono_ns + self.utc_minus_mono_ns

    def utc_iso(self, mono_ns: int | None) -> str | None:
        """ISO 8601 UTC (microseconds, ``Z``) of a harness monotonic stamp; None for None."""
        return None if mono_ns is None else utc_iso(self.utc_ns(mono_ns))


@dataclass(frozen=True)
class ClockEstimate:
    """One estimate of a host's clock: host clock minus harness UTC, at a harness time."""

    offset_ns: int
    uncertainty_ns: int
    at_mono_ns: int


@dataclass(frozen=True)
class HostClock:
    """Maps one host's wall-clock stamps onto the harness monotonic clock (module docstring)."""

    host: str
    before: ClockEstimate | None
    after: ClockEstimate | None
    utc_minus_mono_ns: int

    def offset_at(self, mono_ns: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Host clock minus harness UTC (ns) and its uncertainty (ns) at harness times."""
        at = np.asarray(mono_ns, dtype=np.int64)
        estimates = [e for e in (self.before, self.after) if e is not None]
        if not estimates:
            raise ValueError(f"host {self.host} has no clock estimate")
        first, last = estimates[0], estimates[-1]
        if len(estimates) == 1 or first.at_mono_ns == last.at_mono_ns:
            offset = np.full(at.shape, float(first.offset_ns))
            return offset, np.full(at.shape, float(max(first.uncertainty_ns, last.uncertainty_ns)))
        w = (at - first.at_mono_ns).astype(np.float64) / float(last.at_mono_ns - first.at_mono_ns)
        offset = first.offset_ns + w * float(last.offset_ns - first.offset_ns)
        uncertainty = np.abs(1.0 - w) * first.uncertainty_ns + np.abs(w) * last.uncertainty_ns
        return offset, uncertainty

    def to_harness(self, host_utc_ns: npt.ArrayLike) -> tuple[IntArray, IntArray]:
        """Harness monotonic ns of host wall-clock stamps (ns since 1970), and ± uncertainty."""
        host = np.asarray(host_utc_ns, dtype=np.int64)
        estimate = self.before if self.before is not None else self.after
        assert estimate is not None
        guess = host - self.utc_minus_mono_ns - estimate.offset_ns
        offset, uncertainty = self.offset_at(guess)
        mono = host - self.utc_minus_mono_ns - np.rint(offset).astype(np.int64)
        return mono, np.ceil(uncertainty).astype(np.int64)


@dataclass(frozen=True)
class GuestClock:
    """How one guest agent's monotonic stamps were mapped (module docstring)."""

    agent_id: str
    anchor_source: str  # "guest_heartbeat" or "guest_frames"
    anchors: int  # envelope points (one per block and segment)
    segments: int
    delay_bound_ns: int  # d: the true send time lies in [t - d, t]
    delay_bound_source: str  # "icmp_min_rtt" or "arrival_spread"


# -- the timeline ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Timeline:
    """Every record of a run on the harness monotonic clock (ns).

    ``events``: the tidy table of low-rate rows (``TIDY_COLUMNS``): host polls,
    Hyper-V events, harness events, the lab's ground truth, guest frames.
    The high-rate streams are kept column-compact in their own frames, sorted
    by ``t_mono_ns``; ``tidy()`` joins everything into one table:

    * ``icmp``: one row per ICMP record: ``target``, ``n``, ``outcome``,
      ``t_mono_ns`` (send), ``send_utc_ns``, ``rtt_ms`` (NaN without a reply);
      the send instant is exact, so its bounds are ``t`` itself;
    * ``heartbeats``: the guest heartbeats (``analysis.guest.load_heartbeats``
      columns, duplicates dropped) plus ``t_mono_ns``, ``t_lo_ns``, ``t_hi_ns``;
    * ``frames``: the guest frames likewise;
    * ``console``: the console-view samples (``raw/console.jsonl``, read by
      ``analysis.console``): ``k``, ``host``, ``classification``, ``view``,
      ``send_mono_ns``, ``recv_mono_ns``, ``t_mono_ns`` (the middle),
      ``mean_luma``, ``dark_fraction``, ``image``; also in ``events``;
    * ``polls``: ``analysis.hyperv_figures.load_host_polls`` plus ``t_mono_ns`` (the
      host's Get-Date mapped, kept inside the poll's send..recv),
      ``host_mono_ns`` and ``host_uncertainty_ns`` (the mapping itself; -1 and
      0 where the host has no clock estimate or the poll no ``host_time``).
    """

    run: RunFolder
    clock: HarnessClock
    host_clocks: Mapping[str, HostClock]
    guest_clocks: Mapping[str, GuestClock]
    events: pd.DataFrame
    icmp: pd.DataFrame
    polls: pd.DataFrame
    heartbeats: pd.DataFrame
    frames: pd.DataFrame
    hyperv_events: Sequence[Mapping[str, Any]]
    ground_truth: Sequence[Mapping[str, Any]] | None
    requested_icmp_interval_s: float | None
    icmp_targets: tuple[str, ...]
    console: pd.DataFrame
    console_samples: tuple[Any, ...]  # analysis.console.ConsoleSample, for analyse_console
    warnings: tuple[str, ...] = field(default=())

    @property
    def source_host(self) -> str | None:
        return _hyperv_host(self.run, "source")

    @property
    def destination_host(self) -> str | None:
        return _hyperv_host(self.run, "destination")

    @property
    def vm(self) -> str:
        return str(self.run.manifest.config.get("vm") or "")

    def utc_iso(self, mono_ns: int | None) -> str | None:
        return self.clock.utc_iso(mono_ns)

    def span_ns(self) -> tuple[int, int]:
        """First and last stamp of the run (manifest clock pairs and every record)."""
        lows: list[int] = []
        highs: list[int] = []
        if self.clock.start_utc_ns:  # a pair from the manifest or a record, not the fallback
            end = self.clock.end_mono_ns
            lows.append(self.clock.start_mono_ns)
            highs.append(self.clock.start_mono_ns if end is None else end)
        for frame in (self.events, self.icmp, self.heartbeats, self.frames, self.console):
            if len(frame):
                lows.append(int(frame["t_mono_ns"].min()))
                highs.append(int(frame["t_mono_ns"].max()))
        return (min(lows), max(highs)) if lows else (0, 0)

    def tidy(self) -> pd.DataFrame:
        """All rows in one table with ``TIDY_COLUMNS`` plus ``t_utc_ns``, sorted by time.

        Meant for small runs and notebooks: for an hour at 1 kHz this is
        millions of rows (the plots bin the compact frames instead).
        """
        parts = [self.events]
        if len(self.icmp):
            target = self.icmp["target"].astype(str)
            t = self.icmp["t_mono_ns"]
            parts.append(
                pd.DataFrame(
                    {
                        "source": "icmp:" + target,
                        "lane": "icmp:" + target,
                        "kind": self.icmp["outcome"].astype(str),
                        "t_mono_ns": t,
                        "t_lo_ns": t,
                        "t_hi_ns": t,
                        "value": self.icmp["rtt_ms"],
                        "label": "",
                    }
                )
            )
        if len(self.heartbeats):
            parts.append(
                pd.DataFrame(
                    {
                        "source": HEARTBEAT_SOURCE,
                        "lane": HEARTBEAT_SOURCE,
                        "kind": "heartbeat",
                        "t_mono_ns": self.heartbeats["t_mono_ns"],
                        "t_lo_ns": self.heartbeats["t_lo_ns"],
                        "t_hi_ns": self.heartbeats["t_hi_ns"],
                        "value": self.heartbeats["seq"].astype(np.float64),
                        "label": self.heartbeats["agent_id"].astype(str),
                    }
                )
            )
        rows = pd.concat([p for p in parts if len(p)], ignore_index=True) if parts else _empty()
        if not len(rows):
            rows = _empty()
        rows = rows.sort_values("t_mono_ns", kind="stable").reset_index(drop=True)
        rows["t_utc_ns"] = rows["t_mono_ns"] + self.clock.utc_minus_mono_ns
        return rows


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": pd.Series(dtype=str),
            "lane": pd.Series(dtype=str),
            "kind": pd.Series(dtype=str),
            "t_mono_ns": pd.Series(dtype=np.int64),
            "t_lo_ns": pd.Series(dtype=np.int64),
            "t_hi_ns": pd.Series(dtype=np.int64),
            "value": pd.Series(dtype=np.float64),
            "label": pd.Series(dtype=str),
        }
    )


def _hyperv_host(run: RunFolder, role: str) -> str | None:
    hyperv = run.manifest.document.get("hyperv")
    if isinstance(hyperv, Mapping) and isinstance(hyperv.get(role), str):
        return str(hyperv[role])
    for probe, entry in run.manifest.probes.items():
        if probe.startswith("host:") and isinstance(entry, Mapping) and entry.get("role") == role:
            return probe.removeprefix("host:")
    return None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def harness_clock(run: RunFolder, fallback_pairs: Sequence[tuple[int, int]] = ()) -> HarnessClock:
    """The manifest's clock pairs; without ``clock.start``, the first ``(mono, utc)`` fallback."""
    clock = run.manifest.document.get("clock")
    start = clock.get("start") if isinstance(clock, Mapping) else None
    end = clock.get("end") if isinstance(clock, Mapping) else None
    if isinstance(start, Mapping):
        mono, utc = _int_or_none(start.get("mono_ns")), _int_or_none(start.get("utc_ns"))
        if mono is not None and utc is not None:
            end_mono = _int_or_none(end.get("mono_ns")) if isinstance(end, Mapping) else None
            end_utc = _int_or_none(end.get("utc_ns")) if isinstance(end, Mapping) else None
            return HarnessClock(mono, utc, end_mono, end_utc)
    for mono, utc in fallback_pairs:
        return HarnessClock(mono, utc)
    return HarnessClock(0, 0)


def host_clocks(run: RunFolder, clock: HarnessClock) -> dict[str, HostClock]:
    """``hyperv.clock.<host>.before/after`` of the manifest as ``HostClock`` per host."""
    hyperv = run.manifest.document.get("hyperv")
    entries = hyperv.get("clock") if isinstance(hyperv, Mapping) else None
    clocks: dict[str, HostClock] = {}
    if not isinstance(entries, Mapping):
        return clocks
    for host, entry in entries.items():
        if not isinstance(entry, Mapping):
            continue
        estimates = []
        for phase in ("before", "after"):
            doc = entry.get(phase)
            values = (
                [_int_or_none(doc.get(k)) for k in ("offset_ns", "uncertainty_ns", "at_mono_ns")]
                if isinstance(doc, Mapping)
                else [None]
            )
            estimates.append(
                None
                if any(v is None for v in values)
                else ClockEstimate(*(int(v) for v in values if v is not None))
            )
        if estimates[0] is None and estimates[1] is None:
            continue
        before, after = estimates
        if before is not None and after is not None and after.at_mono_ns < before.at_mono_ns:
            before, after = after, before
        clocks[str(host)] = HostClock(str(host), before, after, clock.utc_minus_mono_ns)
    return clocks


def parse_utc_ns(values: Sequence[object] | pd.Series) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """ISO 8601 stamps with an offset (any number of fraction digits) to ns since 1970.

    Returns the values (0 where unparseable) and a mask of those that parsed.
    Stamps without an offset are refused (naive local time is ambiguous).
    """
    series = pd.Series(values, dtype=object)
    text = series.where(series.map(lambda v: isinstance(v, str)), None)
    has_zone = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
    stamps = pd.to_datetime(text.where(has_zone, None), format="ISO8601", utc=True, errors="coerce")
    stamps = stamps.dt.as_unit("ns")
    ok = stamps.notna().to_numpy(dtype=bool)
    return stamps.to_numpy(dtype=np.int64, na_value=0), ok


# -- building ----------------------------------------------------------------


def build_timeline(run: RunFolder | str | os.PathLike[str], *, icmp_rtt: bool = True) -> Timeline:
    """Read a run folder and put every record on the harness monotonic clock.

    ``icmp_rtt=False`` skips reading the RTT column (the decomposition does
    not need it; the plot does).
    """
    folder = run if isinstance(run, RunFolder) else load_run(run)
    warnings: list[str] = []

    icmp_records = _load_icmp(folder, icmp_rtt, warnings)
    icmp_table = None if icmp_records is None else icmp_records.frame
    fallback: list[tuple[int, int]] = []
    if icmp_table is not None and len(icmp_table):
        first = icmp_table.iloc[0]
        if not (pd.isna(first["send_mono_ns"]) or pd.isna(first["send_utc_ns"])):
            fallback.append((int(first["send_mono_ns"]), int(first["send_utc_ns"])))
    clock = harness_clock(folder, fallback)
    if clock.step_ns is not None and abs(clock.step_ns) > HARNESS_STEP_WARN_NS:
        warnings.append(
            f"the harness's UTC moved by {clock.step_ns / NS_PER_MS:.3f} ms against its "
            "monotonic clock during the run (clock.start vs clock.end); UTC labels use "
            "clock.start"
        )
    hosts = host_clocks(folder, clock)

    header_targets = icmp_records.targets if icmp_records is not None else ()
    requested = requested_icmp_interval_s(folder, icmp_records)
    # The records move column by column into the sorted frame: one copy at a time.
    icmp = _icmp_frame(icmp_table, clock)
    del icmp_table, icmp_records
    polls = _map_polls(load_host_polls(folder), hosts, warnings)
    hyperv_events = load_hyperv_events(folder)
    truth = load_ground_truth(folder)

    heartbeats, frames, guest_clocks = _load_guest(folder, icmp, warnings)
    console, console_samples = _load_console(folder)

    rows = [
        _poll_rows(polls),
        _console_rows(console),
        _hyperv_event_rows(hyperv_events, hosts, warnings),
        _harness_rows(folder),
        _truth_rows(truth),
        _frame_rows(frames),
    ]
    events = pd.concat([r for r in rows if len(r)] or [_empty()], ignore_index=True)
    events = events.sort_values("t_mono_ns", kind="stable").reset_index(drop=True)
    events["t_utc_ns"] = events["t_mono_ns"] + clock.utc_minus_mono_ns

    targets = header_targets or tuple(t for t in folder.manifest.targets if isinstance(t, str))
    if len(icmp):
        seen = icmp["target"].unique()  # categorical: from the codes, not 3.6 M strings
        extra = sorted({str(t) for t in seen} - set(targets))
        targets = (*targets, *extra)

    return Timeline(
        run=folder,
        clock=clock,
        host_clocks=hosts,
        guest_clocks=guest_clocks,
        events=events,
        icmp=icmp,
        polls=polls,
        heartbeats=heartbeats,
        frames=frames,
        hyperv_events=hyperv_events,
        ground_truth=truth,
        requested_icmp_interval_s=requested,
        icmp_targets=targets,
        console=console,
        console_samples=console_samples,
        warnings=tuple(warnings),
    )


def _load_icmp(run: RunFolder, rtt: bool, warnings: list[str]) -> IcmpRecords | None:
    path = run.probe_file("icmp")
    if path is None:
        return None
    if not path.is_file() and run.manifest.status != "completed":
        warnings.append(f"{path.relative_to(run.path)} does not exist (run {run.manifest.status})")
        return None
    columns = ("target", "n", "outcome", "send_mono_ns", "send_utc_ns")
    records = load_icmp(run, columns=(*columns, "rtt_ns") if rtt else columns)
    if records is not None and records.dropped_partial_last_line:
        warnings.append(f"{path.relative_to(run.path)} ends in a partial line; it was ignored")
    return records


def _icmp_frame(records: pd.DataFrame | None, clock: HarnessClock) -> pd.DataFrame:
    """ICMP records in send order on the harness monotonic clock (``Timeline.icmp``).

    Empties ``records`` as it goes (each column is dropped once its sorted copy
    exists), so an hour at 1 kHz never holds two copies of the table.
    """
    if records is None or not len(records):
        return pd.DataFrame(
            {
                "target": pd.Series(dtype="category"),
                "n": pd.Series(dtype=np.int64),
                "outcome": pd.Series(pd.Categorical([], dtype=ICMP_OUTCOME_DTYPE)),
                "t_mono_ns": pd.Series(dtype=np.int64),
                "send_utc_ns": pd.Series(dtype=np.int64),
                "rtt_ms": pd.Series(dtype=np.float64),
            }
        )
    mono = records.pop("send_mono_ns")
    if mono.dtype == np.int64:
        t = mono.to_numpy()
    else:
        # Imported logs may lack the monotonic stamp: place them by their UTC stamp.
        from_utc = (
            records["send_utc_ns"].to_numpy(dtype=np.int64, na_value=0) - clock.utc_minus_mono_ns
        )
        t = np.where(
            mono.isna().to_numpy(dtype=bool), from_utc, mono.to_numpy(dtype=np.int64, na_value=0)
        )
    del mono
    order = np.argsort(t, kind="stable")
    columns: dict[str, Any] = {}
    for name in ("target", "n", "outcome", "t_mono_ns", "send_utc_ns", "rtt_ms"):
        if name == "t_mono_ns":
            columns[name] = t[order]
            del t
            continue
        if name == "rtt_ms":
            if "rtt_ns" in records:
                rtt = records.pop("rtt_ns").to_numpy(dtype=np.float64, na_value=np.nan)
                columns[name] = rtt[order] / NS_PER_MS
            else:
                columns[name] = np.full(len(order), np.nan)
            continue
        column = records.pop(name)
        if isinstance(column.dtype, pd.CategoricalDtype):
            columns[name] = pd.Categorical.from_codes(
                column.cat.codes.to_numpy()[order], dtype=column.dtype
            )
        elif column.dtype == np.int64:
            columns[name] = column.to_numpy()[order]
        else:
            columns[name] = column.to_numpy(dtype=np.int64, na_value=0)[order]
        del column
    return pd.DataFrame(columns)


def outcome_codes(icmp: pd.DataFrame) -> npt.NDArray[np.int8]:
    """The ``outcome`` column as codes into ``ICMP_OUTCOME_DTYPE`` (see ``OUTCOME_CODE``)."""
    return np.asarray(icmp["outcome"].cat.codes.to_numpy(), dtype=np.int8)


@dataclass(frozen=True, eq=False)
class TargetAttempts:
    """One target's attempts (no duplicate / late rows) in send order, as arrays."""

    target: str
    t_mono_ns: IntArray
    outcome: npt.NDArray[np.int8]  # codes: OUTCOME_CODE
    rtt_ms: FloatArray

    def __len__(self) -> int:
        return len(self.t_mono_ns)

    def count(self, outcome: str) -> int:
        return int((self.outcome == OUTCOME_CODE[outcome]).sum())


def target_attempts(icmp: pd.DataFrame, target: str) -> TargetAttempts:
    """``target``'s attempts from ``Timeline.icmp``; views, not copies, when nothing is left out."""
    t = icmp["t_mono_ns"].to_numpy(np.int64)
    codes = outcome_codes(icmp)
    rtt = icmp["rtt_ms"].to_numpy(np.float64)
    keep = codes < len(ICMP_ATTEMPT_OUTCOMES)
    if len(icmp) and not (icmp["target"].cat.categories == target).all():
        keep &= (icmp["target"] == target).to_numpy(dtype=bool)
    if keep.all():
        return TargetAttempts(target, t, codes, rtt)
    return TargetAttempts(target, t[keep], codes[keep], rtt[keep])


def _map_polls(
    polls: pd.DataFrame, hosts: Mapping[str, HostClock], warnings: list[str]
) -> pd.DataFrame:
    polls = polls.copy()
    n = len(polls)
    host_mono = np.full(n, -1, dtype=np.int64)
    host_unc = np.zeros(n, dtype=np.int64)
    if n:
        send = polls["send_mono_ns"].to_numpy(dtype=np.int64)
        recv = polls["recv_mono_ns"].to_numpy(dtype=np.int64)
        t = send + (recv - send) // 2
        host_times = polls["host_time"] if "host_time" in polls else pd.Series([None] * n)
        utc, parsed = parse_utc_ns(host_times.reset_index(drop=True))
        host_names = polls["host"].astype(str).to_numpy()
        for host in pd.unique(host_names):
            clock = hosts.get(str(host))
            mine = host_names == host
            if clock is None:
                if parsed[mine].any():
                    warnings.append(
                        f"host {host} has no clock estimate in the manifest: its polls are "
                        "placed at the middle of each round trip, its events not at all"
                    )
                continue
            use = mine & parsed
            if use.any():
                mono, unc = clock.to_harness(utc[use])
                host_mono[use] = mono
                host_unc[use] = unc
                # The host read its clock between our send and our receive.
                t[use] = np.clip(mono, send[use], recv[use])
    else:
        t = np.zeros(0, dtype=np.int64)
    polls["t_mono_ns"] = t
    polls["host_mono_ns"] = host_mono
    polls["host_uncertainty_ns"] = host_unc
    return polls


def _poll_rows(polls: pd.DataFrame) -> pd.DataFrame:
    if not len(polls):
        return _empty()
    percent = (
        pd.to_numeric(polls["percent_complete"], errors="coerce")
        if "percent_complete" in polls
        else pd.Series(np.nan, index=polls.index)
    )
    status = polls["status"] if "status" in polls else pd.Series("", index=polls.index)
    error = polls["error"] if "error" in polls else pd.Series("", index=polls.index)
    label = status.where(polls["seen"] != "error", error).fillna("").astype(str)
    source = "host:" + polls["host"].astype(str)
    return pd.DataFrame(
        {
            "source": source,
            "lane": source,
            "kind": polls["seen"].astype(str),
            "t_mono_ns": polls["t_mono_ns"].astype(np.int64),
            "t_lo_ns": polls["send_mono_ns"].astype(np.int64),
            "t_hi_ns": polls["recv_mono_ns"].astype(np.int64),
            "value": percent.astype(np.float64),
            "label": label,
        }
    )


def _hyperv_event_rows(
    events: Sequence[Mapping[str, Any]], hosts: Mapping[str, HostClock], warnings: list[str]
) -> pd.DataFrame:
    rows = []
    unplaced = 0
    for event in events:
        host = str(event.get("host"))
        clock = hosts.get(host)
        utc, ok = parse_utc_ns([event.get("time_created")])
        if clock is None or not ok[0]:
            unplaced += 1
            continue
        mono, unc = clock.to_harness(utc)
        t, u = int(mono[0]), int(unc[0])
        rows.append(
            {
                "source": f"host:{host}",
                "lane": EVENTS_LANE,
                "kind": f"event:{event.get('id')}",
                "t_mono_ns": t,
                "t_lo_ns": t - u,
                "t_hi_ns": t + u,
                "value": float(event["id"]) if isinstance(event.get("id"), int) else math.nan,
                "label": str(event.get("message") or ""),
            }
        )
    if unplaced:
        warnings.append(
            f"{unplaced} Hyper-V events could not be placed on the timeline "
            "(no clock estimate for their host, or no time_created)"
        )
    return pd.DataFrame(rows) if rows else _empty()


def _read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    try:
        return read_jsonl(path, what=f"raw file {path}").records
    except RunFormatError as exc:
        if "is empty" in str(exc):
            return []
        raise


def _harness_rows(run: RunFolder) -> pd.DataFrame:
    path = run.probe_file("harness")
    if path is None or not path.is_file():
        return _empty()
    rows = []
    for record in _read_jsonl_records(path):
        mono = _int_or_none(record.get("mono_ns"))
        if mono is None:
            continue
        name = str(record.get("event"))
        kind = f"phase:{record.get('phase')}" if name == "phase" else name
        label = record.get("message") or record.get("host") or record.get("check") or ""
        rows.append(
            {
                "source": "harness",
                "lane": EVENTS_LANE,
                "kind": kind,
                "t_mono_ns": mono,
                "t_lo_ns": mono,
                "t_hi_ns": mono,
                "value": math.nan,
                "label": str(label),
            }
        )
    return pd.DataFrame(rows) if rows else _empty()


def _truth_rows(truth: Sequence[Mapping[str, Any]] | None) -> pd.DataFrame:
    rows = []
    for event in truth or ():
        mono = _int_or_none(event.get("mono_ns"))
        if mono is None:
            continue
        blackout = event.get("blackout_s")
        rows.append(
            {
                "source": "ground_truth",
                "lane": EVENTS_LANE,
                "kind": f"truth:{event.get('event')}",
                "t_mono_ns": mono,
                "t_lo_ns": mono,
                "t_hi_ns": mono,
                "value": float(blackout) if isinstance(blackout, int | float) else math.nan,
                "label": str(event.get("event")),
            }
        )
    return pd.DataFrame(rows) if rows else _empty()


def _frame_rows(frames: pd.DataFrame) -> pd.DataFrame:
    if not len(frames):
        return _empty()
    return pd.DataFrame(
        {
            "source": FRAMES_SOURCE,
            "lane": FRAMES_SOURCE,
            "kind": "frame",
            "t_mono_ns": frames["t_mono_ns"],
            "t_lo_ns": frames["t_lo_ns"],
            "t_hi_ns": frames["t_hi_ns"],
            "value": frames["seq"].astype(np.float64),
            "label": frames["file"].astype(str) if "file" in frames else "",
        }
    )


# -- console view ------------------------------------------------------------

CONSOLE_PROBE = "console"
CONSOLE_LANE = "console"


def _load_console(run: RunFolder) -> tuple[pd.DataFrame, tuple[Any, ...]]:
    """The console-view samples as a frame, and as ``analysis.console`` samples."""
    columns = {
        "k": pd.Series(dtype=np.int64),
        "host": pd.Series(dtype=object),
        "classification": pd.Series(dtype=str),
        "view": pd.Series(dtype=str),
        "send_mono_ns": pd.Series(dtype=np.int64),
        "recv_mono_ns": pd.Series(dtype=np.int64),
        "t_mono_ns": pd.Series(dtype=np.int64),
        "mean_luma": pd.Series(dtype=np.float64),
        "dark_fraction": pd.Series(dtype=np.float64),
        "image": pd.Series(dtype=object),
    }
    path = run.probe_file(CONSOLE_PROBE)
    if path is None or not path.is_file():
        return pd.DataFrame(columns), ()
    # Imported here: only runs with a console probe need that reader.
    from migration_blackout.analysis.console import DEFAULT_DIM_DARK_FRACTION, load_console

    samples = load_console(path).samples
    frame = pd.DataFrame(
        {
            "k": [s.k for s in samples],
            "host": [s.host for s in samples],
            "classification": [s.classification for s in samples],
            "view": [s.view(DEFAULT_DIM_DARK_FRACTION) for s in samples],
            "send_mono_ns": [s.send_mono_ns for s in samples],
            "recv_mono_ns": [s.recv_mono_ns for s in samples],
            "t_mono_ns": [s.mid_mono_ns for s in samples],
            "mean_luma": [s.mean_luma for s in samples],
            "dark_fraction": [s.dark_fraction for s in samples],
            "image": [s.image for s in samples],
        }
    )
    if not len(frame):
        return pd.DataFrame(columns), ()
    frame = frame.astype({"k": np.int64, "send_mono_ns": np.int64, "recv_mono_ns": np.int64})
    frame["t_mono_ns"] = frame["t_mono_ns"].astype(np.int64)
    return frame, tuple(samples)


def _console_rows(console: pd.DataFrame) -> pd.DataFrame:
    if not len(console):
        return _empty()
    return pd.DataFrame(
        {
            "source": CONSOLE_PROBE,
            "lane": CONSOLE_LANE,
            "kind": console["view"],
            "t_mono_ns": console["t_mono_ns"],
            "t_lo_ns": console["send_mono_ns"],
            "t_hi_ns": console["recv_mono_ns"],
            "value": pd.to_numeric(console["mean_luma"], errors="coerce").astype(np.float64),
            "label": console["host"].fillna("").astype(str),
        }
    )


# -- guest alignment ---------------------------------------------------------


def _guest_frame_columns() -> dict[str, pd.Series]:
    return {
        "agent_id": pd.Series(dtype=str),
        "seq": pd.Series(dtype=np.int64),
        "guest_mono_ns": pd.Series(dtype=np.int64),
        "recv_mono_ns": pd.Series(dtype=np.int64),
        "t_mono_ns": pd.Series(dtype=np.int64),
        "t_lo_ns": pd.Series(dtype=np.int64),
        "t_hi_ns": pd.Series(dtype=np.int64),
    }


def _load_guest(
    run: RunFolder, icmp: pd.DataFrame, warnings: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, GuestClock]]:
    heartbeats = pd.DataFrame(_guest_frame_columns())
    frames = pd.DataFrame({**_guest_frame_columns(), "file": pd.Series(dtype=str)})
    if (run.path / HEARTBEAT_FILE).is_file():
        heartbeats = load_heartbeats(run.path).drop_duplicates(["agent_id", "seq"])
    if (run.path / FRAMES_FILE).is_file():
        frames = load_frames(run.path).drop_duplicates(["agent_id", "seq"])
    if not len(heartbeats) and not len(frames):
        return heartbeats, frames, {}

    replies = icmp["rtt_ms"].to_numpy() if len(icmp) else np.zeros(0)
    replies = replies[np.isfinite(replies)]
    icmp_bound = math.ceil(float(replies.min()) * NS_PER_MS) if len(replies) else None

    heartbeats = heartbeats.reset_index(drop=True)
    frames = frames.reset_index(drop=True)
    hb_t = np.zeros((3, len(heartbeats)), dtype=np.int64)
    fr_t = np.zeros((3, len(frames)), dtype=np.int64)
    clocks: dict[str, GuestClock] = {}
    hb_agents = heartbeats["agent_id"].astype(str).to_numpy()
    fr_agents = frames["agent_id"].astype(str).to_numpy()
    for agent in sorted(set(hb_agents) | set(fr_agents)):
        hb_rows = np.flatnonzero(hb_agents == agent)
        fr_rows = np.flatnonzero(fr_agents == agent)
        if len(hb_rows):
            source = HEARTBEAT_SOURCE
            anchor_g = heartbeats["guest_mono_ns"].to_numpy(np.int64)[hb_rows]
            anchor_recv = heartbeats["recv_mono_ns"].to_numpy(np.int64)[hb_rows]
            stated = heartbeats["interval_ns"].iloc[hb_rows].dropna()
        else:
            source = FRAMES_SOURCE
            anchor_g = _frame_send_mono(frames.iloc[fr_rows])
            anchor_recv = frames["recv_mono_ns"].to_numpy(np.int64)[fr_rows]
            stated = frames["interval_ns"].iloc[fr_rows].dropna()
        interval = float(stated.median()) if len(stated) else None
        envelope = _Envelope.fit(anchor_g, anchor_recv, interval)
        if icmp_bound is not None:
            bound, bound_source = icmp_bound, "icmp_min_rtt"
        else:
            bound, bound_source = envelope.arrival_spread_ns(), "arrival_spread"
        if source == FRAMES_SOURCE and bound_source == "icmp_min_rtt":
            bound = math.ceil(bound * FRAME_DELAY_RTTS)
        for rows, frame, out in ((hb_rows, heartbeats, hb_t), (fr_rows, frames, fr_t)):
            if not len(rows):
                continue
            g = frame["guest_mono_ns"].to_numpy(np.int64)[rows]
            recv = frame["recv_mono_ns"].to_numpy(np.int64)[rows]
            mapped, allowance = envelope.map(g)
            out[0, rows] = np.minimum(mapped, recv)
            out[1, rows] = np.minimum(mapped, recv) - bound - allowance
            out[2, rows] = np.minimum(mapped + allowance, recv)
        clocks[agent] = GuestClock(
            agent_id=agent,
            anchor_source=source,
            anchors=envelope.anchors,
            segments=envelope.segments,
            delay_bound_ns=bound,
            delay_bound_source=bound_source,
        )
    for frame, values in ((heartbeats, hb_t), (frames, fr_t)):
        frame["t_mono_ns"] = values[0]
        frame["t_lo_ns"] = values[1]
        frame["t_hi_ns"] = values[2]
    if icmp_bound is None:
        warnings.append(
            "no ICMP reply to bound the guest-to-harness delay: guest stamps are placed "
            "with the spread of arrivals as their uncertainty (an assumption, not a bound)"
        )
    heartbeats = heartbeats.sort_values("t_mono_ns", kind="stable").reset_index(drop=True)
    frames = frames.sort_values("t_mono_ns", kind="stable").reset_index(drop=True)
    return heartbeats, frames, clocks


def _frame_send_mono(frames: pd.DataFrame) -> IntArray:
    """Guest monotonic time a frame's upload started (after queueing), else its capture."""
    capture = frames["guest_mono_ns"].to_numpy(np.int64)
    if "guest_send_mono_ns" not in frames:
        return capture
    send = pd.to_numeric(frames["guest_send_mono_ns"], errors="coerce")
    missing = send.isna().to_numpy(dtype=bool)
    return np.where(missing, capture, send.to_numpy(dtype=np.float64, na_value=0).astype(np.int64))


@dataclass(frozen=True, eq=False)
class _Envelope:
    """Lower envelope of ``recv - guest`` per segment (module docstring)."""

    segment_start: IntArray  # guest stamp where each segment begins (sorted)
    anchor_g: list[IntArray]  # per segment: guest stamps of the envelope points
    anchor_d: list[IntArray]  # per segment: recv - guest at those points
    slope: float  # drift of recv - guest per guest ns, for stamps beyond the anchors
    slope_allowance: float  # how wrong ``slope`` may be (per guest ns)
    excess: FloatArray  # how far each anchoring record arrived above the envelope

    @property
    def anchors(self) -> int:
        return sum(len(a) for a in self.anchor_g)

    @property
    def segments(self) -> int:
        return len(self.segment_start)

    @classmethod
    def fit(cls, guest: IntArray, recv: IntArray, interval_ns: float | None) -> _Envelope:
        order = np.argsort(guest, kind="stable")
        g, r = guest[order], recv[order]
        d = r - g
        steps_g, steps_r = np.diff(g), np.diff(r)
        if interval_ns is None or interval_ns <= 0:
            positive = steps_g[steps_g > 0]
            interval_ns = float(np.median(positive)) if len(positive) else float(NS_PER_S)
        limit = GUEST_BREAK_INTERVALS * interval_ns
        breaks = np.flatnonzero((steps_g > limit) | (steps_r > limit)) + 1
        bounds = [0, *breaks.tolist(), len(g)]
        block = max(round(GUEST_BLOCK_S * NS_PER_S), round(GUEST_BLOCK_RECORDS * interval_ns))
        starts, anchor_g, anchor_d = [], [], []
        for lo, hi in itertools.pairwise(bounds):
            sg, sd = g[lo:hi], d[lo:hi]
            blocks = (sg - sg[0]) // block
            edges = np.flatnonzero(np.diff(blocks)) + 1
            first = np.concatenate([[0], edges])
            last = np.concatenate([edges, [len(sd)]])
            # Each block's minimum, at the record that has it.
            at = np.array(
                [a + int(np.argmin(sd[a:b])) for a, b in zip(first, last, strict=True)],
                dtype=np.int64,
            )
            starts.append(int(sg[0]))
            anchor_g.append(sg[at])
            anchor_d.append(sd[at])
        slope, allowance = _drift(anchor_g, anchor_d)
        envelope = cls(
            np.array(starts, dtype=np.int64), anchor_g, anchor_d, slope, allowance, np.zeros(0)
        )
        mapped, _ = envelope.map(g)
        excess = (r - mapped).astype(np.float64)
        return cls(envelope.segment_start, anchor_g, anchor_d, slope, allowance, excess)

    def map(self, guest: IntArray) -> tuple[IntArray, IntArray]:
        """Harness monotonic time of guest stamps (before clamping to their arrival), and
        the allowance for drift where a stamp lies beyond its segment's anchors."""
        segment = np.clip(np.searchsorted(self.segment_start, guest, side="right") - 1, 0, None)
        out = np.empty(len(guest), dtype=np.int64)
        allowance = np.zeros(len(guest), dtype=np.int64)
        for s in np.unique(segment):
            mine = segment == s
            g = guest[mine]
            xp, fp = self.anchor_g[s], self.anchor_d[s]
            base, rel = _interp(g, xp, fp)
            # Beyond the first / last anchor: along the drift, not flat.
            before = (g - xp[0]).astype(np.float64)
            after = (g - xp[-1]).astype(np.float64)
            beyond = np.where(before < 0, before, np.where(after > 0, after, 0.0))
            rel = rel + self.slope * beyond
            out[mine] = g + base + np.rint(rel).astype(np.int64)
            allowance[mine] = np.ceil(np.abs(beyond) * self.slope_allowance).astype(np.int64)
        return out, allowance

    def arrival_spread_ns(self) -> int:
        return math.ceil(float(np.percentile(self.excess, 99))) if len(self.excess) else 0


def _drift(anchor_g: list[IntArray], anchor_d: list[IntArray]) -> tuple[float, float]:
    """The guest clock's drift against the harness's (a slope of recv - guest), and its allowance.

    A least-squares line through the anchors of the segment with the longest
    span; without a span of ``GUEST_DRIFT_MIN_SPAN_S``, no drift and a wider allowance.
    """
    spans = [int(g[-1] - g[0]) for g in anchor_g]
    best = int(np.argmax(spans)) if spans else 0
    if not spans or spans[best] < GUEST_DRIFT_MIN_SPAN_S * NS_PER_S or len(anchor_g[best]) < 3:
        return 0.0, GUEST_DRIFT_UNKNOWN_PPM * 1e-6
    x = (anchor_g[best] - anchor_g[best][0]).astype(np.float64)
    y = (anchor_d[best] - anchor_d[best][0]).astype(np.float64)
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, GUEST_DRIFT_MARGIN_PPM * 1e-6


def _interp(x: IntArray, xp: IntArray, fp: IntArray) -> tuple[int, FloatArray]:
    """``np.interp`` as ``fp[0] + relative``: ns stamps near 2**63 stay exact in the int part."""
    x0, f0 = int(xp[0]), int(fp[0])
    relative = np.interp(
        (x - x0).astype(np.float64), (xp - x0).astype(np.float64), (fp - f0).astype(np.float64)
    )
    return f0, relative


def icmp_min_rtt_ms(timeline: Timeline) -> float | None:
    rtt = timeline.icmp["rtt_ms"].to_numpy() if len(timeline.icmp) else np.zeros(0)
    rtt = rtt[np.isfinite(rtt)]
    return float(rtt.min()) if len(rtt) else None
