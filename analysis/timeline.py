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
column and the reasoning at more length.

How each clock is mapped (the host clocks from the manifest's estimates,
the guest clocks through an envelope of arrivals) is ``analysis.clocks``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from migration_blackout.analysis.clocks import (
    FRAME_DELAY_RTTS,
    HARNESS_STEP_WARN_NS,
    NS_PER_MS,
    FloatArray,
    GuestClock,
    GuestEnvelope,
    HarnessClock,
    HostClock,
    IntArray,
    harness_clock,
    host_clocks,
    json_int,
    parse_utc_ns,
)
from migration_blackout.analysis.console import (
    DEFAULT_DIM_DARK_FRACTION,
    ConsoleRecords,
    load_console,
)
from migration_blackout.analysis.guest import (
    FRAMES_SOURCE,
    HEARTBEAT_SOURCE,
    load_frames,
    load_heartbeats,
)
from migration_blackout.analysis.hyperv_figures import (
    load_ground_truth,
    load_host_polls,
    load_hyperv_events,
)
from migration_blackout.analysis.icmp import IcmpAnalysis, analyse_icmp
from migration_blackout.analysis.rundata import (
    ICMP_OUTCOME_DTYPE,
    IcmpRecords,
    RunData,
    load_icmp,
    load_run,
    read_jsonl,
    requested_icmp_interval_s,
)
from migration_blackout.runformat import (
    CONSOLE,
    FRAMES,
    HARNESS_EVENTS,
    HEARTBEAT,
    HOST_PROBE_PREFIX,
    ICMP,
    ICMP_ATTEMPT_OUTCOMES,
    RunFormatError,
    RunStatus,
)

# The columns every row of the tidy table has (``Timeline.tidy()``, ``Timeline.events``).
TIDY_COLUMNS = ("source", "lane", "kind", "t_mono_ns", "t_lo_ns", "t_hi_ns", "value", "label")
EVENTS_LANE = "events"

# Codes of the ICMP outcomes in ``Timeline.icmp["outcome"]`` (attempts first).
OUTCOME_CODE = {name: code for code, name in enumerate(ICMP_OUTCOME_DTYPE.categories)}


# -- the timeline ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IcmpSource:
    """What the raw ICMP file says beside its rows.

    ``present``: the file exists (a run that did not complete may have none).
    ``send_missing``: for a send column with gaps (``send_mono_ns`` or
    ``send_utc_ns``: logs imported from other tools), which rows of
    ``Timeline.icmp`` lack it; columns without gaps are absent.
    """

    file: str  # relative to the run folder
    present: bool
    partial_last_line: bool = False
    header_interval_s: float | None = None
    send_missing: Mapping[str, npt.NDArray[np.bool_]] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestStream:
    """A guest agent's record file of the run: ``duplicates`` records were written
    twice (same agent and seq: a replayed datagram) and are left out of the timeline."""

    source: str  # "guest_heartbeat" or "guest_frames"
    duplicates: int


def _with_missing(values: pd.Series, missing: npt.NDArray[np.bool_] | None) -> pd.Series:
    """``values`` as recorded: nullable Int64 with ``missing`` rows empty, else as they are."""
    if missing is None:
        return values
    return pd.Series(pd.arrays.IntegerArray(values.to_numpy(np.int64), missing), copy=False)


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

    What the raw files say beside their rows is kept too, so that nothing
    needs to read them again: ``icmp_source`` (the ICMP file's header and
    which send stamps were missing), ``console_records`` (the console file's
    header and samples), ``guest_streams`` (the guest files present, and how
    many duplicate records each had).
    """

    run: RunData
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
    console_records: ConsoleRecords | None
    icmp_source: IcmpSource | None = None
    guest_streams: Mapping[str, GuestStream] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=())

    def icmp_records(self) -> pd.DataFrame:
        """The ICMP rows (in send order) as ``analysis.icmp.analyse_icmp`` reads them:
        ``target``, ``n``, ``outcome`` and the send stamps as recorded, ``send_mono_ns``
        and ``send_utc_ns`` (nullable where a row lacked one, e.g. an imported log)."""
        icmp = self.icmp
        missing = {} if self.icmp_source is None else self.icmp_source.send_missing
        t_mono = icmp["t_mono_ns"]
        return pd.DataFrame(
            {
                "target": icmp["target"],
                "n": icmp["n"],
                "outcome": icmp["outcome"],
                "send_mono_ns": _with_missing(t_mono, missing.get("send_mono_ns")),
                "send_utc_ns": _with_missing(icmp["send_utc_ns"], missing.get("send_utc_ns")),
            },
            copy=False,
        )

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


def _hyperv_host(run: RunData, role: str) -> str | None:
    hyperv = run.manifest.document.get("hyperv")
    if isinstance(hyperv, Mapping) and isinstance(hyperv.get(role), str):
        return str(hyperv[role])
    for probe, entry in run.manifest.probes.items():
        if (
            probe.startswith(HOST_PROBE_PREFIX)
            and isinstance(entry, Mapping)
            and entry.get("role") == role
        ):
            return probe.removeprefix(HOST_PROBE_PREFIX)
    return None


# -- building ----------------------------------------------------------------


def build_timeline(run: RunData | str | os.PathLike[str], *, icmp_rtt: bool = True) -> Timeline:
    """Read a run folder and put every record on the harness monotonic clock.

    ``icmp_rtt=False`` skips reading the RTT column (the decomposition does
    not need it; the plot does).
    """
    folder = run if isinstance(run, RunData) else load_run(run)
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
    icmp_source = _icmp_source(folder, icmp_records)
    # The records move column by column into the sorted frame: one copy at a time.
    icmp, send_missing = _icmp_frame(icmp_table, clock)
    if icmp_source is not None:
        icmp_source = replace(icmp_source, send_missing=send_missing)
    del icmp_table, icmp_records
    polls = _map_polls(load_host_polls(folder), hosts, warnings)
    hyperv_events = load_hyperv_events(folder)
    truth = load_ground_truth(folder)

    heartbeats, frames, guest_clocks, guest_streams = _load_guest(folder, icmp, warnings)
    console, console_records = _load_console(folder)

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
        console_records=console_records,
        icmp_source=icmp_source,
        guest_streams=guest_streams,
        warnings=tuple(warnings),
    )


def _icmp_source(run: RunData, records: IcmpRecords | None) -> IcmpSource | None:
    path = run.probe_file(ICMP.probe)
    if path is None:
        return None
    return IcmpSource(
        file=str(path.relative_to(run.path)),
        present=records is not None,
        partial_last_line=records is not None and records.dropped_partial_last_line,
        header_interval_s=None if records is None else records.interval_s,
    )


def _load_icmp(run: RunData, rtt: bool, warnings: list[str]) -> IcmpRecords | None:
    path = run.probe_file(ICMP.probe)
    if path is None:
        return None
    if not path.is_file() and run.manifest.status != RunStatus.COMPLETED:
        warnings.append(f"{path.relative_to(run.path)} does not exist (run {run.manifest.status})")
        return None
    columns = ("target", "n", "outcome", "send_mono_ns", "send_utc_ns")
    records = load_icmp(run, columns=(*columns, "rtt_ns") if rtt else columns)
    if records is not None and records.dropped_partial_last_line:
        warnings.append(f"{path.relative_to(run.path)} ends in a partial line; it was ignored")
    return records


def _icmp_frame(
    records: pd.DataFrame | None, clock: HarnessClock
) -> tuple[pd.DataFrame, dict[str, npt.NDArray[np.bool_]]]:
    """ICMP records in send order on the harness monotonic clock (``Timeline.icmp``),
    and which rows lacked a send stamp (``IcmpSource.send_missing``).

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
        ), {}
    missing: dict[str, npt.NDArray[np.bool_]] = {}
    for name in ("send_mono_ns", "send_utc_ns"):
        if records[name].dtype != np.int64:
            gaps = records[name].isna().to_numpy(dtype=bool)
            if gaps.any():
                missing[name] = gaps
    mono = records.pop("send_mono_ns")
    if "send_mono_ns" not in missing:
        t = mono.to_numpy(dtype=np.int64)
    else:
        # Imported logs may lack the monotonic stamp: place them by their UTC stamp.
        from_utc = (
            records["send_utc_ns"].to_numpy(dtype=np.int64, na_value=0) - clock.utc_minus_mono_ns
        )
        t = np.where(missing["send_mono_ns"], from_utc, mono.to_numpy(dtype=np.int64, na_value=0))
    del mono
    order = np.argsort(t, kind="stable")
    missing = {name: gaps[order] for name, gaps in missing.items()}
    columns: dict[str, Any] = {}
    for name in ("target", "n", "outcome", "t_mono_ns", "send_utc_ns", "rtt_ms"):
        if name == "t_mono_ns":
            columns[name] = t[order]
            del t
            continue
        if name == "rtt_ms":
            if "rtt_ns" in records:
                rtt = records.pop("rtt_ns").to_numpy(dtype=np.float64, na_value=np.nan)[order]
                rtt /= NS_PER_MS
                columns[name] = rtt
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
    # Not copied into blocks: a second copy of the table, for a moment and in
    # the process's memory thereafter.
    return pd.DataFrame(columns, copy=False), missing


def analyse_timeline_icmp(timeline: Timeline) -> IcmpAnalysis:
    """``analysis.icmp.analyse_icmp`` of the run's ICMP rows (summary.json's ``icmp`` and
    ``blackout``, the decomposition's network outage)."""
    return analyse_icmp(
        timeline.icmp_records(),
        requested_interval_s=timeline.requested_icmp_interval_s,
        targets=timeline.icmp_targets,
    )


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
    source = HOST_PROBE_PREFIX + polls["host"].astype(str)
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


def _harness_rows(run: RunData) -> pd.DataFrame:
    path = run.probe_file(HARNESS_EVENTS.probe)
    if path is None or not path.is_file():
        return _empty()
    rows = []
    for record in _read_jsonl_records(path):
        mono = json_int(record.get("mono_ns"))
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
        mono = json_int(event.get("mono_ns"))
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

CONSOLE_LANE = "console"


def _load_console(run: RunData) -> tuple[pd.DataFrame, ConsoleRecords | None]:
    """The console-view samples as a frame, and the file as ``analysis.console`` reads it."""
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
    path = run.probe_file(CONSOLE.probe)
    if path is None or not path.is_file():
        return pd.DataFrame(columns), None
    records = load_console(path)
    samples = records.samples
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
        return pd.DataFrame(columns), records
    frame = frame.astype({"k": np.int64, "send_mono_ns": np.int64, "recv_mono_ns": np.int64})
    frame["t_mono_ns"] = frame["t_mono_ns"].astype(np.int64)
    return frame, records


def _console_rows(console: pd.DataFrame) -> pd.DataFrame:
    if not len(console):
        return _empty()
    return pd.DataFrame(
        {
            "source": CONSOLE.probe,
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
    run: RunData, icmp: pd.DataFrame, warnings: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, GuestClock], dict[str, GuestStream]]:
    heartbeats = pd.DataFrame(_guest_frame_columns())
    frames = pd.DataFrame({**_guest_frame_columns(), "file": pd.Series(dtype=str)})
    streams: dict[str, GuestStream] = {}
    if (run.path / HEARTBEAT.path).is_file():
        records = load_heartbeats(run.path)
        heartbeats = records.drop_duplicates(["agent_id", "seq"])
        streams[HEARTBEAT_SOURCE] = GuestStream(HEARTBEAT_SOURCE, len(records) - len(heartbeats))
        del records
    if (run.path / FRAMES.path).is_file():
        records = load_frames(run.path)
        frames = records.drop_duplicates(["agent_id", "seq"])
        streams[FRAMES_SOURCE] = GuestStream(FRAMES_SOURCE, len(records) - len(frames))
        del records
    if not len(heartbeats) and not len(frames):
        return heartbeats, frames, {}, streams

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
        envelope = GuestEnvelope.fit(anchor_g, anchor_recv, interval)
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
    return heartbeats, frames, clocks, streams


def _frame_send_mono(frames: pd.DataFrame) -> IntArray:
    """Guest monotonic time a frame's upload started (after queueing), else its capture."""
    capture = frames["guest_mono_ns"].to_numpy(np.int64)
    if "guest_send_mono_ns" not in frames:
        return capture
    send = pd.to_numeric(frames["guest_send_mono_ns"], errors="coerce")
    missing = send.isna().to_numpy(dtype=bool)
    return np.where(missing, capture, send.to_numpy(dtype=np.float64, na_value=0).astype(np.int64))


def icmp_min_rtt_ms(timeline: Timeline) -> float | None:
    rtt = timeline.icmp["rtt_ms"].to_numpy() if len(timeline.icmp) else np.zeros(0)
    rtt = rtt[np.isfinite(rtt)]
    return float(rtt.min()) if len(rtt) else None
