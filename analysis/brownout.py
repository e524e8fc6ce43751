"""The brownout the guest lived through: its rate of work, from the heartbeats.

After every heartbeat the agent does a fixed unit of CPU and memory work;
heartbeat version 2 carries ``work_ns``, the time from the previous
heartbeat's slot to the end of that unit (``probes/guest_agent.py``): the
time a fixed piece of work due at a moment took to be done, wake-up included.
A guest slowed by pre-copy (a busy or throttled CPU, memory writes slowed by
dirty tracking) takes longer. The *work rate* is the guest's normal time
over this time: 1.0 normally, 0.25 when the same work took four times as long.

Method (pure, over the heartbeat rows of one agent in sequence order):

* the *waiting share* around each heartbeat is the sum of the work times of
  the heartbeats within ``window_ms`` (centred) over ``window_ms``: the
  share of that time in which work was due and not yet done. A throttled
  guest is late on many wake-ups, not all (the throttle has its own
  period), and skips slots when very late; the sum counts all of it, where
  a per-heartbeat statistic would be fooled by the prompt ones. Each work
  time counts at most ``stall_intervals`` intervals: a guest that did not
  run at all for longer was stalled once (a busy host took its CPU: the
  lab's loaded machine stalls every process for 100-120 ms now and then),
  not slowed, and one such stall alone would fill a quarter of a window;
* the *baseline* is the lower quartile of the waiting share: the guest's
  normal state, even when a brownout takes up to three quarters of the run;
* a heartbeat is *slow* when its waiting share exceeds both ``min_share``
  and ``factor`` x the baseline;
* a *brownout* is a run of slow heartbeats, pauses in it of at most half a
  window bridged, at least ``window_ms`` long. A freeze ends any
  brownout: runs are cut at the given execution gap, and where the guest's
  clock steps by more than a second (a slowed guest may send nothing for a
  few hundred ms: a screen grab holding the interpreter's lock while the
  guest gets a fifth of a CPU). The one reported is the last
  that ends within ``max_gap_ms`` before the execution gap (the blackout),
  when one is given; else the longest.

Figures: ``work_ms`` the mean work time inside, ``baseline_work_ms`` the
mean outside every brownout, ``rate`` = baseline / inside (1.0: normal pace;
0.25: a unit of work took four times as long), ``waiting_share`` the mean
waiting share inside.

Bounds: a window centred on a heartbeat sees a brownout's edge half a window
before it reaches it, so each edge lies within ``window_ms / 2`` (plus an
interval) of the slow run's first and last heartbeat; a run that ends within
a window of the execution gap ends at it (the last heartbeat before the
freeze: the pause lies between it and the next slot). ``lower_ms`` /
``upper_ms`` are these limits on its length (guest clock).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from migration_blackout.analysis.decompose import Instant, ReportedBlackout, instant_json
from migration_blackout.analysis.qemu import QemuRecords
from migration_blackout.analysis.timeline import Timeline
from migration_blackout.analysis.witnesses import NS_PER_MS, failure_runs, read_raw_csv
from migration_blackout.runformat import HEARTBEAT

DEFAULT_WINDOW_MS = 400.0
DEFAULT_FACTOR = 2.5
DEFAULT_MIN_SHARE = 0.25
DEFAULT_STALL_INTERVALS = 3.0


@dataclass(frozen=True)
class Brownout:
    """A stretch in which the guest's work rate stayed low.

    Durations in ms on the guest's monotonic clock; ``*_guest_mono_ns`` the
    first and last slow heartbeat (guest clock), ``*_recv_mono_ns`` their
    arrival (harness clock). ``work_ms`` is the mean work time inside and
    ``rate`` = baseline / ``work_ms``: the share of its normal pace the guest
    kept (a unit due at a slot took 1 / rate times as long on average)."""

    agent_id: str
    duration_ms: float
    lower_ms: float
    upper_ms: float
    baseline_work_ms: float
    work_ms: float
    rate: float
    waiting_share: float
    heartbeats: int
    ends_at_gap: bool
    edge_ms: float  # how far each edge may lie from its heartbeat (the end's past it, at the gap)
    start_guest_mono_ns: int
    end_guest_mono_ns: int
    start_recv_mono_ns: int
    end_recv_mono_ns: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class WorkRate:
    """The work-rate series of one agent (for plots) and its brownout."""

    agent_id: str
    interval_ms: float
    baseline_work_ms: float
    guest_mono_ns: np.ndarray
    recv_mono_ns: np.ndarray
    waiting_share: np.ndarray  # per heartbeat, over the window around it
    brownouts: tuple[Brownout, ...]
    brownout: Brownout | None


def load_work(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The heartbeats of ``raw/guest_heartbeat.csv`` that carry a work time
    (version 2), in the columns as written; empty for version 1 only."""
    rows = read_raw_csv(run_dir, HEARTBEAT).rows
    if "work_ns" not in rows:
        return rows.iloc[0:0]
    return rows[rows["work_ns"].notna() & (rows["work_ns"] > 0)]


def heartbeats_with_work(heartbeats: pd.DataFrame) -> pd.DataFrame:
    """The heartbeats (``analysis.guest.load_heartbeats`` columns, as the
    timeline keeps them) that carry a work time; empty when none does."""
    if "work_ns" not in heartbeats:
        return heartbeats.iloc[0:0]
    work = heartbeats["work_ns"]
    return heartbeats[work.notna() & (work.fillna(0) > 0)]


def analyse_work(
    records: pd.DataFrame,
    *,
    gap_start_guest_mono_ns: int | None = None,
    window_ms: float = DEFAULT_WINDOW_MS,
    factor: float = DEFAULT_FACTOR,
    min_share: float = DEFAULT_MIN_SHARE,
    max_gap_ms: float = 1000.0,
    stall_intervals: float = DEFAULT_STALL_INTERVALS,
) -> WorkRate | None:
    """The work rate and brownouts of the agent with the most records (module
    docstring); None with fewer than 20 records. ``records``: ``load_work``'s
    rows (``interval_us``) or ``heartbeats_with_work``' (``interval_ns``).
    ``gap_start_guest_mono_ns``:
    the execution gap's start (the last heartbeat before the freeze, guest
    clock), to pick the brownout that led into it."""
    if records.empty:
        return None
    agent = str(records["agent_id"].value_counts().idxmax())
    rows = records[records["agent_id"] == agent].drop_duplicates("seq").sort_values("seq")
    if len(rows) < 20:
        return None
    work = rows["work_ns"].to_numpy(np.int64).astype(float)
    mono = rows["guest_mono_ns"].to_numpy(np.int64)
    recv = rows["recv_mono_ns"].to_numpy(np.int64)
    seq = rows["seq"].to_numpy(np.int64)
    interval_ns = (
        float(rows["interval_ns"].median())
        if "interval_ns" in rows
        else float(rows["interval_us"].median()) * 1000
    )
    window_ns = window_ms * NS_PER_MS
    waited = np.minimum(work, stall_intervals * interval_ns)
    total = np.concatenate(([0.0], np.cumsum(waited)))
    low = np.searchsorted(mono, mono - window_ns / 2, side="left")
    high = np.searchsorted(mono, mono + window_ns / 2, side="right")
    share = (total[high] - total[low]) / window_ns
    baseline_share = float(np.percentile(share, 25))
    slow = share > max(min_share, factor * baseline_share)
    # A freeze ends any brownout: runs never reach across a step of the
    # guest's clock longer than a few intervals (or across the given gap).
    breaks = np.diff(mono) > max(10 * interval_ns, 1000 * NS_PER_MS)
    if gap_start_guest_mono_ns is not None:
        breaks |= mono[:-1] == gap_start_guest_mono_ns
    runs = []
    for first, last in _bridged(failure_runs(slow), mono, window_ns / 2):
        cuts = [first, *(np.flatnonzero(breaks[first:last]) + first + 1).tolist(), last + 1]
        runs += [
            (a, b - 1) for a, b in itertools.pairwise(cuts) if mono[b - 1] - mono[a] >= window_ns
        ]
    inside = np.zeros(len(work), dtype=bool)
    for first, last in runs:
        inside[first : last + 1] = True
    baseline = float(np.mean(work[~inside])) if (~inside).any() else float(np.mean(work))
    edge_ns = int(window_ns / 2 + interval_ns)
    brownouts = []
    for first, last in runs:
        # A run that reaches the freeze ends at it: the pause ends pre-copy.
        ends_at_gap = bool(
            gap_start_guest_mono_ns is not None
            and 0 <= gap_start_guest_mono_ns - mono[last] <= window_ns
        )
        end = gap_start_guest_mono_ns if ends_at_gap else int(mono[last])
        assert end is not None
        length = end - int(mono[first])
        mean = float(np.mean(work[first : last + 1]))
        brownouts.append(
            Brownout(
                agent_id=agent,
                duration_ms=length / NS_PER_MS,
                lower_ms=max(0, length - edge_ns * (1 if ends_at_gap else 2)) / NS_PER_MS,
                upper_ms=(length + edge_ns + (interval_ns if ends_at_gap else edge_ns)) / NS_PER_MS,
                baseline_work_ms=baseline / NS_PER_MS,
                work_ms=mean / NS_PER_MS,
                rate=baseline / mean if mean > 0 else 1.0,
                waiting_share=float(np.mean(share[first : last + 1])),
                heartbeats=last - first + 1,
                ends_at_gap=ends_at_gap,
                edge_ms=edge_ns / NS_PER_MS,
                start_guest_mono_ns=int(mono[first]),
                end_guest_mono_ns=end,
                start_recv_mono_ns=int(recv[first]),
                end_recv_mono_ns=int(recv[last]),
                first_seq=int(seq[first]),
                last_seq=int(seq[last]),
            )
        )
    chosen = None
    if brownouts:
        if gap_start_guest_mono_ns is not None:
            leading = [
                b
                for b in brownouts
                if 0 <= gap_start_guest_mono_ns - b.end_guest_mono_ns <= max_gap_ms * NS_PER_MS
            ]
            chosen = leading[-1] if leading else None
        if chosen is None:
            chosen = max(brownouts, key=lambda b: b.duration_ms)
    return WorkRate(
        agent_id=agent,
        interval_ms=interval_ns / NS_PER_MS,
        baseline_work_ms=baseline / NS_PER_MS,
        guest_mono_ns=mono,
        recv_mono_ns=recv,
        waiting_share=share,
        brownouts=tuple(brownouts),
        brownout=chosen,
    )


def _bridged(
    runs: list[tuple[int, int]], mono: np.ndarray, window_ns: float
) -> list[tuple[int, int]]:
    """Runs joined across pauses of at most ``window_ns`` (guest clock)."""
    joined: list[tuple[int, int]] = []
    for first, last in runs:
        if joined and mono[first] - mono[joined[-1][1]] <= window_ns:
            joined[-1] = (joined[-1][0], last)
        else:
            joined.append((first, last))
    return joined


# -- summary.json's ``brownout`` block (docs/summary-format.md) ---------------

NO_WORK_REASON = (
    "no heartbeat carries a work time (no guest agent, or one before heartbeat version 2)"
)


def brownout_summary(
    work: WorkRate | None,
    timeline: Timeline,
    *,
    reported: ReportedBlackout | None,
    qemu: QemuRecords | None,
) -> dict[str, Any]:
    """The ``brownout`` block: the guest's brownout (``measured``, or None and
    the ``reason``), with Hyper-V's 22508 figure and QEMU's auto-converge
    throttle beside it where the run has them."""
    measured, reason = None, None
    if work is None:
        count = len(heartbeats_with_work(timeline.heartbeats))
        reason = NO_WORK_REASON if not count else f"only {count} heartbeats carry a work time"
    elif work.brownout is None:
        reason = "the guest's work rate never stayed low for a window (no brownout)"
    else:
        measured = _measured_json(work.brownout, work.interval_ms, timeline)
    return {
        "source": "guest_heartbeat",
        "measured": measured,
        "reason": reason,
        "baseline_work_ms": None if work is None else round(work.baseline_work_ms, 3),
        "heartbeats_with_work": 0 if work is None else len(work.guest_mono_ns),
        "hyperv": _hyperv_json(reported),
        "qemu": _qemu_json(qemu),
    }


def _measured_json(brownout: Brownout, interval_ms: float, timeline: Timeline) -> dict[str, Any]:
    edge_ns = int(brownout.edge_ms * NS_PER_MS)
    start = _placed(timeline, brownout.agent_id, brownout.start_guest_mono_ns, edge_ns, edge_ns)
    after = int(interval_ms * NS_PER_MS) if brownout.ends_at_gap else edge_ns
    before = 0 if brownout.ends_at_gap else edge_ns
    end = _placed(timeline, brownout.agent_id, brownout.end_guest_mono_ns, before, after)
    return {
        "duration_ms": round(brownout.duration_ms, 3),
        "lower_ms": round(brownout.lower_ms, 3),
        "upper_ms": round(brownout.upper_ms, 3),
        "start": instant_json(start, timeline),
        "end": instant_json(end, timeline),
        "ends_at_blackout": brownout.ends_at_gap,
        "work_rate": round(brownout.rate, 3),
        "work_ms": round(brownout.work_ms, 3),
        "waiting_share": round(brownout.waiting_share, 3),
        "heartbeats": brownout.heartbeats,
        "agent_id": brownout.agent_id,
    }


def _placed(
    timeline: Timeline, agent: str, guest_mono_ns: int, before_ns: int, after_ns: int
) -> Instant | None:
    """A brownout edge on the harness clock: its heartbeat as the timeline
    placed it, widened by how far the edge may lie before and after it."""
    rows = timeline.heartbeats
    row = rows[(rows["agent_id"] == agent) & (rows["guest_mono_ns"] == guest_mono_ns)]
    if row.empty:
        return None
    first = row.iloc[0]
    return Instant(
        int(first["t_mono_ns"]),
        int(first["t_lo_ns"]) - before_ns,
        int(first["t_hi_ns"]) + after_ns,
    )


def _hyperv_json(reported: ReportedBlackout | None) -> dict[str, Any] | None:
    """Hyper-V's own brownout figure (22508, seconds with one decimal), None when
    the host logged none."""
    if reported is None or reported.brownout_s is None:
        return None
    return {
        "source": "hyperv-event:22508",
        "host": reported.host,
        "brownout_ms": round(reported.brownout_s * 1000, 3),
        "resolution_ms": 100.0,
    }


def _qemu_json(qemu: QemuRecords | None) -> dict[str, Any] | None:
    """QEMU's auto-converge throttle: the highest ``cpu_throttle_percentage``
    its query-migrate polls gave (0: QEMU never throttled the guest; it gives
    the figure only while it does); None when QEMU did not run."""
    if qemu is None:
        return None
    polls = [r for r in qemu.records if r.get("event") == "migrate_poll"]
    throttles = [
        int(r["cpu_throttle_percentage"])
        for r in polls
        if isinstance(r.get("cpu_throttle_percentage"), int)
    ]
    return {
        "source": "qemu-query-migrate",
        "max_cpu_throttle_percentage": max(throttles, default=0),
        "polls": len(polls),
    }
