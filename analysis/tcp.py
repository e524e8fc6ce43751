"""What applications feel: TCP connects and a TCP stream through the migration.

Pure functions from the raw records of ``probes/tcp_connect.py`` and
``probes/tcp_stream.py`` (docs/run-format.md) to frozen dataclasses.

Connect outages (per target and port), built like the ICMP outages:

* an *attempt* is a row whose outcome is ``connected``, ``refused``,
  ``timeout``, ``unreachable`` or ``error``; ``unresolved`` attempts (the run
  stopped first) are evidence of nothing and left out;
* attempts are ordered by start time; an attempt *failed* unless it
  connected (a refusal is an answer, but no connection either: counted apart
  in ``refused``);
* an *outage* is a maximal run of failed attempts. ``lower`` = start of the
  first failed -> start of the last failed; ``upper`` = start of the last
  connected attempt before -> end (handshake completed) of the first connected
  after, None when the outage touches either end of the record.

Stream stalls, per direction, from the receiving side's stamps:

* **inbound** (harness -> guest): the guest's receive stamps of consecutive
  data frames (``in`` rows), on the guest's clock;
* **outbound** (guest -> harness): the harness's receive stamps of
  consecutive ticks (``out`` rows), on the harness's clock.

The *stall* of a direction is its longest delivery gap: the largest step
between two consecutive deliveries (over every connection of the run: an
application that reconnects stalls across the break too). Frames are sent
every interval *I*, so the time without delivery beyond the normal spacing
lies in [gap - *I*, gap]: ``lower_ms`` and ``upper_ms``; ``stall_ms`` is the
gap itself, what the application saw. TCP retransmits what the network
dropped, with exponential backoff (200 ms, 400 ms, 800 ms, ... on Linux), so
a stall often outlasts the outage that caused it: ``beyond_blackout``.

The stream *survived* when one connection carried it from its first
welcome to the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from migration_blackout.analysis.witnesses import NS_PER_MS, failure_runs, read_raw_csv
from migration_blackout.runformat import TCP_CONNECT, TCP_STREAM

CONNECT_ATTEMPTS = ("connected", "refused", "timeout", "unreachable", "error")


# -- connects -------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectOutage:
    """A maximal run of failed connects to one port (durations in ms, stamps on
    the harness's clocks: ``*_mono_ns`` CLOCK_MONOTONIC, ``*_utc_ns`` UTC)."""

    target: str
    port: int
    failed: int
    outcomes: dict[str, int]
    lower_ms: float
    upper_ms: float | None
    open_start: bool
    open_end: bool
    first_failed_start_mono_ns: int
    last_failed_start_mono_ns: int
    last_connected_before_start_mono_ns: int | None
    first_connected_after_end_mono_ns: int | None
    first_failed_start_utc_ns: int
    first_connected_after_end_utc_ns: int | None


@dataclass(frozen=True)
class PortConnects:
    """Every attempt to one port, counted, and its outages in time order."""

    target: str
    port: int
    attempts: int
    outcomes: dict[str, int]
    interval_ms: float | None
    connect_ms_median: float | None
    outages: tuple[ConnectOutage, ...]

    @property
    def longest(self) -> ConnectOutage | None:
        """The outage with the longest lower bound (then the most failures)."""
        if not self.outages:
            return None
        return max(self.outages, key=lambda o: (o.lower_ms, o.failed))


def load_tcp_connect(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``raw/tcp_connect.csv`` as a frame (columns as written)."""
    return read_raw_csv(run_dir, TCP_CONNECT).rows


def analyse_connects(
    records: pd.DataFrame, *, interval_s: float | None = None
) -> list[PortConnects]:
    """Per (target, port) in first-seen order: counts and outages (module docstring)."""
    result = []
    for key, rows in records.groupby(["target", "port"], sort=False):
        target, port = str(key[0]), int(key[1])  # type: ignore[call-overload]
        attempts = rows[rows["outcome"].isin(CONNECT_ATTEMPTS)].sort_values(["start_mono_ns", "n"])
        start = attempts["start_mono_ns"].to_numpy(np.int64)
        end = attempts["end_mono_ns"].to_numpy(np.int64)
        start_utc = attempts["start_utc_ns"].to_numpy(np.int64)
        end_utc = attempts["end_utc_ns"].to_numpy(np.int64)
        outcome = attempts["outcome"].to_numpy(str)
        failed = outcome != "connected"
        outages = []
        for first, last in failure_runs(failed):
            open_start, open_end = first == 0, last == len(outcome) - 1
            before = None if open_start else first - 1
            after = None if open_end else last + 1
            kinds, counts = np.unique(outcome[first : last + 1], return_counts=True)
            outages.append(
                ConnectOutage(
                    target=target,
                    port=port,
                    failed=last - first + 1,
                    outcomes={str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
                    lower_ms=int(start[last] - start[first]) / NS_PER_MS,
                    upper_ms=None
                    if before is None or after is None
                    else int(end[after] - start[before]) / NS_PER_MS,
                    open_start=open_start,
                    open_end=open_end,
                    first_failed_start_mono_ns=int(start[first]),
                    last_failed_start_mono_ns=int(start[last]),
                    last_connected_before_start_mono_ns=None
                    if before is None
                    else int(start[before]),
                    first_connected_after_end_mono_ns=None if after is None else int(end[after]),
                    first_failed_start_utc_ns=int(start_utc[first]),
                    first_connected_after_end_utc_ns=None if after is None else int(end_utc[after]),
                )
            )
        achieved = None
        if len(start) >= 2:
            achieved = float(np.median(np.diff(start))) / NS_PER_MS
        connect = attempts["connect_ns"].dropna()
        kinds, counts = np.unique(rows["outcome"].to_numpy(str), return_counts=True)
        result.append(
            PortConnects(
                target=target,
                port=port,
                attempts=len(attempts),
                outcomes={str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
                interval_ms=interval_s * 1000 if interval_s is not None else achieved,
                connect_ms_median=float(connect.median()) / NS_PER_MS if len(connect) else None,
                outages=tuple(outages),
            )
        )
    return result


# -- the stream -------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """The longest delivery gap of one direction of the stream.

    ``stall_ms`` is the gap between two consecutive deliveries, on the
    receiving side's clock (the guest's for ``inbound``, the harness's for
    ``outbound``); the time without delivery beyond the normal spacing lies
    in [``lower_ms``, ``upper_ms``] = [gap - interval, gap]. ``start_mono_ns``
    / ``end_mono_ns`` are the two deliveries on the harness's monotonic clock
    (inbound: the guest's stamps moved to the harness's clock with the
    offset seen on the frames before the gap, so a guest clock that stood
    still while the VM was paused shifts ``end`` earlier by that much).
    ``before_seq`` / ``after_seq``: the frames (data frames inbound, ticks
    outbound) on either side. A stall still going on when the record ended
    (frames sent and never delivered) is ``open_end``: it lasted at least
    from the last delivery to the end of the record (``after_seq`` is then
    the last delivered frame's, ``end_mono_ns`` the record's end).
    """

    direction: str
    stall_ms: float
    lower_ms: float
    upper_ms: float
    interval_ms: float
    before_seq: int
    after_seq: int
    start_mono_ns: int
    end_mono_ns: int
    delivered: int
    same_connection: bool
    open_end: bool = False  # still stalled when the record ended: ``upper_ms`` is a floor


@dataclass(frozen=True)
class StreamAnalysis:
    """Both directions' stalls, the connections and whether the stream survived."""

    interval_ms: float
    connections: int
    survived: bool
    closed_reasons: tuple[str, ...]
    failed_connects: int
    inbound: Stall | None
    outbound: Stall | None
    inbound_undelivered: int  # data frames never reported by the guest

    @property
    def stall(self) -> Stall | None:
        """The longer of the two directions' stalls."""
        stalls = [s for s in (self.inbound, self.outbound) if s is not None]
        return max(stalls, key=lambda s: s.stall_ms) if stalls else None


def load_tcp_stream(run_dir: str | os.PathLike[str]) -> tuple[dict[str, object], pd.DataFrame]:
    """``raw/tcp_stream.csv``: (its header, its rows)."""
    raw = read_raw_csv(run_dir, TCP_STREAM)
    return raw.header, raw.rows


def _stall(
    direction: str,
    seq: np.ndarray,
    conn: np.ndarray,
    at_ns: np.ndarray,
    to_harness_ns: np.ndarray,
    interval_ns: int,
    pending_until_ns: int | None = None,
) -> Stall | None:
    """The largest step of ``at_ns`` (deliveries in order) and where it lies;
    ``pending_until_ns``: the record ended then (harness clock) with frames
    still undelivered."""
    if len(at_ns) < 2:
        return None
    steps = np.diff(at_ns)
    i = int(np.argmax(steps))
    gap = int(steps[i])
    start_ns = int(to_harness_ns[i])
    before, after, same_connection, open_end = (
        int(seq[i]),
        int(seq[i + 1]),
        conn[i] == conn[i + 1],
        False,
    )
    if pending_until_ns is not None and pending_until_ns - int(to_harness_ns[-1]) > gap:
        # Still stalled when the record ended: from the last delivery to the end.
        start_ns = int(to_harness_ns[-1])
        gap = pending_until_ns - start_ns
        before = after = int(seq[-1])
        same_connection, open_end = True, True
    return Stall(
        direction=direction,
        stall_ms=gap / NS_PER_MS,
        lower_ms=max(0, gap - interval_ns) / NS_PER_MS,
        upper_ms=gap / NS_PER_MS,
        interval_ms=interval_ns / NS_PER_MS,
        before_seq=before,
        after_seq=after,
        start_mono_ns=start_ns,
        end_mono_ns=start_ns + gap,
        delivered=len(at_ns),
        same_connection=bool(same_connection),
        open_end=open_end,
    )


def analyse_stream(records: pd.DataFrame, *, interval_s: float) -> StreamAnalysis:
    """Stalls per direction and survival (module docstring) from the rows of
    ``raw/tcp_stream.csv``; ``interval_s`` is the probe's (its header)."""
    interval_ns = round(interval_s * 1e9)
    # The record's end: the latest harness stamp in it (the close at "stopped").
    record_end = int(pd.concat([records["recv_mono_ns"], records["send_mono_ns"]]).dropna().max())
    inbound_rows = records[records["kind"] == "in"]
    delivered = inbound_rows.dropna(subset=["guest_mono_ns"]).sort_values(["conn", "seq"])
    inbound = None
    if len(delivered) >= 2:
        guest = delivered["guest_mono_ns"].to_numpy(np.int64)
        sent = delivered["send_mono_ns"].to_numpy(np.int64)
        # Guest clock -> harness clock: the smallest (guest receive - harness
        # send) of each connection so far stands for the offset plus the
        # shortest delivery delay.
        offset = pd.Series(guest - sent).groupby(delivered["conn"].to_numpy()).cummin().to_numpy()
        last_sent = int(sent.max())
        pending = inbound_rows[inbound_rows["guest_mono_ns"].isna()]
        pending = pending[pending["send_mono_ns"] > last_sent]
        inbound = _stall(
            "inbound",
            delivered["seq"].to_numpy(np.int64),
            delivered["conn"].to_numpy(np.int64),
            guest,
            guest - offset,
            interval_ns,
            pending_until_ns=record_end if len(pending) else None,
        )
    ticks = records[records["kind"] == "out"].sort_values(["recv_mono_ns"])
    outbound = None
    if len(ticks) >= 2:
        recv = ticks["recv_mono_ns"].to_numpy(np.int64)
        outbound = _stall(
            "outbound",
            ticks["seq"].to_numpy(np.int64),
            ticks["conn"].to_numpy(np.int64),
            recv,
            recv,
            interval_ns,
            # The agent ticks all the time: a silence to the end of the record
            # longer than a few ticks is a stall that had not ended.
            pending_until_ns=record_end if record_end - int(recv[-1]) > 3 * interval_ns else None,
        )
    connected = records[records["kind"] == "connected"]
    closed = records[records["kind"] == "closed"]
    reasons = tuple(str(r) for r in closed["detail"].fillna(""))
    survived = len(connected) == 1 and all(r == "stopped" for r in reasons)
    return StreamAnalysis(
        interval_ms=interval_ns / NS_PER_MS,
        connections=len(connected),
        survived=survived,
        closed_reasons=reasons,
        failed_connects=int((records["kind"] == "failed").sum()),
        inbound=inbound,
        outbound=outbound,
        inbound_undelivered=int(inbound_rows["guest_mono_ns"].isna().sum()),
    )


@dataclass(frozen=True)
class BeyondBlackout:
    """How much longer a stall lasted than the ICMP blackout, in ms: bounded by
    both figures' bounds (``lower_ms`` can be negative: the stall may be shorter)."""

    stall_ms: float
    blackout_ms: float
    beyond_ms: float
    lower_ms: float
    upper_ms: float | None


def beyond_blackout(
    stall: Stall, blackout_lower_ms: float, blackout_upper_ms: float | None, blackout_ms: float
) -> BeyondBlackout:
    """The stall beyond the blackout: ``stall - blackout`` (``blackout_ms`` the
    blackout's estimate), bounded by the stall's bounds against the blackout's."""
    return BeyondBlackout(
        stall_ms=stall.stall_ms,
        blackout_ms=blackout_ms,
        beyond_ms=stall.stall_ms - blackout_ms,
        lower_ms=stall.lower_ms
        - (blackout_upper_ms if blackout_upper_ms is not None else blackout_ms),
        upper_ms=stall.upper_ms - blackout_lower_ms,
    )


def longest_connect_outage(ports: Sequence[PortConnects]) -> ConnectOutage | None:
    """The longest outage over every port (by lower bound, then failures)."""
    outages = [p.longest for p in ports if p.longest is not None]
    return max(outages, key=lambda o: (o.lower_ms, o.failed)) if outages else None
