"""Which way the network came back: the direction probe's losses, split into
lost on the way in and lost on the way out.

Pure functions from the rows of ``raw/udp_direction.csv`` (and, for the
outbound edge when the probes cannot tell it, the guest's heartbeats) to
frozen dataclasses. The agent answers every probe it receives with the
number of probes of the session it has received so far and where the
unbroken run of consecutive probe numbers it received last began (counts,
not a window), so for an outage between answered probes *a* and *b*:

* ``lost`` = the probes between them, all unanswered;
* ``lost_outbound`` = received(b) - received(a) - 1 of them reached the guest:
  their answers were lost on the way out; the others, ``lost_inbound``, never
  reached it. (Some of those that reached it may have arrived just before
  the outage and been answered only after it began: a paused guest answers
  what waited in its queue when it runs again.)
* the run that *b* ends began at the first probe that reached the guest
  again after the last one lost on the way in (``run_start_seq``).

Both directions go dark together at a pause; coming back they may part. All
stamps on the harness's monotonic clock:

* **inbound restored**, when some probe was lost on the way in: after the
  send of the probe before the run's first, and by the send of the run's
  first plus one round trip (the answer to *b*'s, an allowance for the way
  in);
* **outbound restored**: when answers to probes of that run were lost (the
  run began before *b*), after the send of the probe before *b* (the guest
  answered it, the answer was lost) and by the arrival of *b*'s answer.
  Otherwise the probes cannot tell when outbound came back (it was back by
  the time inbound was); the guest's heartbeats can: the first heartbeat
  that arrived after the outage, with heartbeats missing before it, went out
  after outbound was back, and the missing one before it went out at most
  one interval (plus the first one's lateness) before it, still into the
  dark. Without missing heartbeats, outbound was back before the guest sent
  again: the edge lies between the outage's start and the first heartbeat
  that arrived.

The outage's own bounds are the ICMP outage's: ``lower`` = first lost send ->
last lost send, ``upper`` = send of the last answered probe before -> send of
the first answered after (None when open at either end).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from migration_blackout.analysis.witnesses import NS_PER_MS, failure_runs, read_raw_csv
from migration_blackout.runformat import UDP_DIRECTION

ATTEMPTS = ("reply", "timeout", "error")


@dataclass(frozen=True)
class RestoreEdge:
    """When one direction of the guest's network worked again: after
    ``after_mono_ns`` and by ``by_mono_ns`` (harness CLOCK_MONOTONIC)."""

    direction: str  # "inbound" (to the guest) or "outbound" (from it)
    after_mono_ns: int
    by_mono_ns: int
    source: str  # "udp_direction" or "guest_heartbeat"

    @property
    def window_ms(self) -> float:
        return (self.by_mono_ns - self.after_mono_ns) / NS_PER_MS

    @property
    def mid_mono_ns(self) -> int:
        return (self.after_mono_ns + self.by_mono_ns) // 2


@dataclass(frozen=True)
class DirectionOutage:
    """A maximal run of unanswered direction probes, split by where they were lost."""

    lost: int
    lost_inbound: int | None  # None: open at an end, the count is unknown
    lost_outbound: int | None
    lower_ms: float
    upper_ms: float | None
    open_start: bool
    open_end: bool
    first_lost_seq: int
    last_lost_seq: int
    first_lost_send_mono_ns: int
    last_lost_send_mono_ns: int
    last_answered_before_send_mono_ns: int | None
    first_answered_after_send_mono_ns: int | None
    inbound_restored: RestoreEdge | None
    outbound_restored: RestoreEdge | None


@dataclass(frozen=True)
class DirectionAnalysis:
    sent: int
    answered: int
    lost: int
    interval_ms: float | None
    outages: tuple[DirectionOutage, ...]

    @property
    def longest(self) -> DirectionOutage | None:
        if not self.outages:
            return None
        return max(self.outages, key=lambda o: (o.lower_ms, o.lost))


def load_udp_direction(run_dir: str | os.PathLike[str]) -> tuple[dict[str, object], pd.DataFrame]:
    """``raw/udp_direction.csv``: (its header, its rows)."""
    raw = read_raw_csv(run_dir, UDP_DIRECTION)
    return raw.header, raw.rows


def _outbound_from_heartbeats(
    heartbeats: pd.DataFrame | None, dark_from_ns: int, back_by_ns: int, allowance_ns: int
) -> RestoreEdge | None:
    """The outbound edge from the heartbeats (module docstring): the largest
    gap in their arrivals that ends after ``dark_from_ns`` and begins before
    ``back_by_ns`` (outbound was back by then); None without one."""
    if heartbeats is None or len(heartbeats) < 2:
        return None
    beats = heartbeats.sort_values("recv_mono_ns")
    recv = beats["recv_mono_ns"].to_numpy(np.int64)
    seq = beats["seq"].to_numpy(np.int64)
    agent = beats["agent_id"].to_numpy(str)
    steps = np.diff(recv)
    candidates = (recv[1:] > dark_from_ns) & (recv[:-1] < back_by_ns)
    if not candidates.any():
        return None
    j = int(np.argmax(np.where(candidates, steps, -1))) + 1
    missing = int(seq[j] - seq[j - 1] - 1) if agent[j] == agent[j - 1] else 0
    if missing <= 0:
        # Nothing the guest sent was lost: outbound was back before it sent again.
        return RestoreEdge("outbound", dark_from_ns, int(recv[j]), "guest_heartbeat")
    interval_ns = int(beats["interval_ns"].to_numpy(np.int64)[j])
    late_ns = 0
    if "late_ns" in beats:
        late = beats["late_ns"].iloc[j]
        late_ns = 0 if pd.isna(late) else int(late)
    return RestoreEdge(
        "outbound",
        max(dark_from_ns, int(recv[j]) - interval_ns - late_ns - allowance_ns),
        int(recv[j]),
        "guest_heartbeat",
    )


def analyse_direction(
    records: pd.DataFrame, *, heartbeats: pd.DataFrame | None = None
) -> DirectionAnalysis:
    """Outages of the direction probe, split by direction (module docstring).

    ``heartbeats``: the guest's heartbeats (``agent_id``, ``seq``,
    ``recv_mono_ns``, ``interval_ns`` and, for version 2, ``late_ns``), used
    for the outbound edge when no answer was lost on the way out."""
    attempts = records[records["outcome"].isin(ATTEMPTS)].sort_values("seq")
    seq = attempts["seq"].to_numpy(np.int64)
    send = attempts["send_mono_ns"].to_numpy(np.int64)
    answered = (attempts["outcome"] == "reply").to_numpy()
    received = attempts["received"].fillna(-1).to_numpy(np.int64)
    run_start = attempts["run_start_seq"].fillna(-1).to_numpy(np.int64)
    recv = attempts["recv_mono_ns"].fillna(-1).to_numpy(np.int64)
    rtt = attempts["rtt_ns"].fillna(0).to_numpy(np.int64)
    outages = []
    for first, last in failure_runs(~answered):
        open_start, open_end = first == 0, last == len(seq) - 1
        before = None if open_start else first - 1
        after = None if open_end else last + 1
        lost = last - first + 1
        lost_in = lost_out = None
        inbound = outbound = None
        if before is not None and after is not None:
            lost_out = int(min(max(received[after] - received[before] - 1, 0), lost))
            lost_in = lost - lost_out
            # The first probe the guest received again after the last lost on the way in.
            first_in = int(np.searchsorted(seq, run_start[after]))
            allowance = int(rtt[after])
            if before < first_in <= after and run_start[after] > seq[before] + 1:
                inbound = RestoreEdge(
                    "inbound",
                    int(send[first_in - 1]),
                    int(send[first_in]) + allowance,
                    "udp_direction",
                )
            # From here on every probe reached the guest: answers lost after it
            # were lost on the way out, with outbound still dark.
            reached_from = first_in if inbound is not None else before + 1
            if reached_from < after:
                outbound = RestoreEdge(
                    "outbound", int(send[after - 1]), int(recv[after]), "udp_direction"
                )
            else:
                outbound = _outbound_from_heartbeats(
                    heartbeats, int(send[before]), int(recv[after]), allowance
                )
        outages.append(
            DirectionOutage(
                lost=lost,
                lost_inbound=lost_in,
                lost_outbound=lost_out,
                lower_ms=int(send[last] - send[first]) / NS_PER_MS,
                upper_ms=None
                if before is None or after is None
                else int(send[after] - send[before]) / NS_PER_MS,
                open_start=open_start,
                open_end=open_end,
                first_lost_seq=int(seq[first]),
                last_lost_seq=int(seq[last]),
                first_lost_send_mono_ns=int(send[first]),
                last_lost_send_mono_ns=int(send[last]),
                last_answered_before_send_mono_ns=None if before is None else int(send[before]),
                first_answered_after_send_mono_ns=None if after is None else int(send[after]),
                inbound_restored=inbound,
                outbound_restored=outbound,
            )
        )
    interval = float(np.median(np.diff(send))) / NS_PER_MS if len(send) >= 2 else None
    return DirectionAnalysis(
        sent=len(seq),
        answered=int(answered.sum()),
        lost=int((~answered).sum()),
        interval_ms=interval,
        outages=tuple(outages),
    )
