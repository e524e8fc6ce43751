"""Where the downtime went: the blackout split by witness, and the write-up's points A-H.

Every figure is an interval ``[lower_ms, upper_ms]`` that contains the true
value, with the ``source`` it was measured from; every place on the timeline is
an ``Instant``: a best guess ``t`` and bounds ``lo <= true <= hi`` on the
harness monotonic clock (``analysis.timeline``). docs/timeline.md documents
the ``decomposition`` block of summary.json that ``decomposition_summary``
returns. The components:

* **hypervisor blackout** (``host-polls``): source paused -> destination
  running, from ``analysis.hyperv_figures.host_blackout`` (harness clock only);
* **reported blackout** (``hyperv-event:20415``): Hyper-V's own figure,
  printed to 0.1 s; whether it rounds or truncates is not documented, so
  ``[value - 0.05 s, value + 0.1 s]`` covers both;
* **guest execution gap** (``guest_heartbeat`` / ``guest_frames``): the
  longest freeze of one agent that overlaps the hypervisor blackout. Across
  *n* records lost on the way (outbound still dark after the resume) the
  guest sent those *n* after it ran again, at once and then on its grid, so
  it resumed about *n* intervals before the next record that arrived; a
  stream that saw the freeze between consecutive records is preferred;
* **network outage** (``icmp:<target>``): the ICMP blackout of summary.json;
* **network reconvergence**: the part of the network outage after the guest
  resumed, ``end of the outage - resume``. The resume is the guest gap's end
  when the guest agent saw the freeze, else the destination's Running edge
  from the host polls;
* **console blackout** (``console-thumbnail``): the VM's screen black or
  missing, from ``analysis.console`` when the run has the console-view probe.

A host that was not polled while the VM paused (polls failed or were skipped)
does not make B unknown: the edge lies between the last poll that saw Running
and the first later poll that saw anything else, so its bounds simply widen;
the point says how many polls failed or were skipped in between.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from migration_blackout.analysis.clocks import NS_PER_MS, HarnessClock, parse_utc_ns
from migration_blackout.analysis.console import ConsoleAnalysis, analyse_console
from migration_blackout.analysis.direction import RestoreEdge
from migration_blackout.analysis.guest import (
    FRAMES_SOURCE,
    GUEST_RECORD_COLUMNS,
    HEARTBEAT_SOURCE,
    ExecutionGap,
    execution_gaps,
)
from migration_blackout.analysis.hyperv_figures import (
    HostBlackout,
    StateEdge,
    host_blackout,
    reported_blackout,
)
from migration_blackout.analysis.icmp import BlackoutWindow, IcmpAnalysis
from migration_blackout.analysis.qemu import QemuRecords
from migration_blackout.analysis.rundata import RunData
from migration_blackout.analysis.timeline import (
    OUTCOME_CODE,
    TargetAttempts,
    Timeline,
    analyse_timeline_icmp,
    target_attempts,
)
from migration_blackout.runformat import (
    CONSOLE,
    FRAMES,
    HEARTBEAT,
    HOST_PROBE_PREFIX,
    QEMU_MIGRATION,
)

# Hyper-V prints its blackout figure to this resolution (seconds).
REPORTED_RESOLUTION_S = 0.1
# The counts "around" the blackout reach this far on each side (seconds).
AROUND_S = 5.0
_GUEST_FILES = (HEARTBEAT.path, FRAMES.path)

OBSERVED = "observed"
UNKNOWN = "unknown"
NOT_OBSERVED = "not_observed"


@dataclass(frozen=True)
class Instant:
    """Where something happened on the harness monotonic clock (ns).

    The true instant lies in ``[lo_mono_ns, hi_mono_ns]``; None is an open
    side. ``t_mono_ns`` is the best single guess (the middle of the bounds
    unless a finer stamp says otherwise).
    """

    t_mono_ns: int
    lo_mono_ns: int | None
    hi_mono_ns: int | None

    @classmethod
    def between(cls, lo: int | None, hi: int | None) -> Instant:
        """The instant somewhere in ``[lo, hi]``, best guessed as the middle (or the known side)."""
        if lo is not None and hi is not None:
            return cls(lo + (hi - lo) // 2, lo, hi)
        if lo is not None:
            return cls(lo, lo, None)
        if hi is not None:
            return cls(hi, None, hi)
        raise ValueError("an instant needs at least one bound")

    @property
    def earliest(self) -> int:
        """The lower bound, or the best guess when that side is open."""
        return self.t_mono_ns if self.lo_mono_ns is None else self.lo_mono_ns

    @property
    def latest(self) -> int:
        """The upper bound, or the best guess when that side is open."""
        return self.t_mono_ns if self.hi_mono_ns is None else self.hi_mono_ns

    @property
    def window_ms(self) -> float | None:
        if self.lo_mono_ns is None or self.hi_mono_ns is None:
            return None
        return (self.hi_mono_ns - self.lo_mono_ns) / NS_PER_MS


@dataclass(frozen=True)
class Component:
    """One part of the downtime: ``lower_ms <= true duration <= upper_ms`` (None: open)."""

    name: str
    source: str
    lower_ms: float | None
    upper_ms: float | None
    start: Instant | None
    end: Instant | None
    note: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def estimate_ms(self) -> float | None:
        """The middle of the bounds."""
        if self.lower_ms is None or self.upper_ms is None:
            return None
        return (self.lower_ms + self.upper_ms) / 2


@dataclass(frozen=True)
class ReportedBlackout:
    """Hyper-V's own blackout figure (event 20415, or 20417 over the critical level)."""

    source: str
    event_id: int
    host: str | None
    value_s: float
    resolution_s: float
    lower_ms: float
    upper_ms: float
    critical: bool
    logged: Instant | None  # the event's time_created on the harness clock
    brownout_s: float | None
    dirty_pages: int | None


@dataclass(frozen=True)
class Point:
    """One of the write-up's points A-H on the timeline, or why it is not there."""

    letter: str
    what: str
    status: str  # "observed", "unknown" or "not_observed"
    at: Instant | None
    source: str | None
    note: str | None = None


@dataclass(frozen=True)
class WindowCounts:
    """ICMP attempts of one target whose send time lies in ``[start, end]`` (both included)."""

    window: str
    target: str
    start_mono_ns: int
    end_mono_ns: int
    sent: int
    replies: int
    timeouts: int
    unreachable: int
    errors: int
    unresolved: int


@dataclass(frozen=True)
class Decomposition:
    hypervisor_blackout: Component | None
    reported_blackout: ReportedBlackout | None
    guest_execution_gap: Component | None
    network_outage: Component | None
    network_reconvergence: Component | None
    console_blackout: Component | None
    points: tuple[Point, ...]
    icmp_counts: tuple[WindowCounts, ...]
    notes: tuple[str, ...] = ()
    # The reconvergence per direction, from the direction probe's edges.
    inbound_reconvergence: Component | None = None
    outbound_reconvergence: Component | None = None

    def point(self, letter: str) -> Point:
        return next(p for p in self.points if p.letter == letter)

    def components(self) -> tuple[Component, ...]:
        """The components that exist, in the order of the write-up."""
        return tuple(
            c
            for c in (
                self.hypervisor_blackout,
                self.guest_execution_gap,
                self.network_outage,
                self.network_reconvergence,
                self.console_blackout,
            )
            if c is not None
        )


# -- host-poll edges ---------------------------------------------------------


@dataclass(frozen=True)
class _Edge:
    """A change seen by one host's successful polls, with what lies between them."""

    host: str
    before: str
    after: str
    before_row: int  # row in Timeline.polls of the last poll before the change
    after_row: int  # ... and of the first poll after it
    after_mono_ns: int  # send of the poll before
    by_mono_ns: int  # recv of the poll after
    failed_between: int
    skipped_between: int

    @property
    def instant(self) -> Instant:
        return Instant.between(self.after_mono_ns, self.by_mono_ns)

    def widened_note(self) -> str | None:
        if not self.failed_between and not self.skipped_between:
            return None
        window = (self.by_mono_ns - self.after_mono_ns) / NS_PER_MS
        return (
            f"{self.failed_between} polls of {self.host} failed and {self.skipped_between} "
            f"poll slots were skipped between the two polls that bound it: its bounds "
            f"widen to {window:.3f} ms"
        )


def _cell(polls: pd.DataFrame, column: str, row: int) -> int:
    """An integer stamp of one poll (``Timeline.polls`` has a RangeIndex)."""
    return int(polls[column].to_numpy(np.int64)[row])


def _find_edge(
    polls: pd.DataFrame,
    host: str,
    *,
    leaving: str | None = None,
    entering: str | None = None,
    after_mono_ns: int | None = None,
) -> _Edge | None:
    """The first change on ``host`` away from ``leaving`` (or into ``entering``).

    The same rule as ``analysis.hyperv_figures.host_blackout``: failed polls observed
    nothing and are skipped; with ``after_mono_ns`` only polls received after it count.
    """
    if not len(polls):
        return None
    everything = polls[polls["host"] == host]
    mine = everything[everything["seen"] != "error"]
    if after_mono_ns is not None:
        mine = mine[mine["recv_mono_ns"] > after_mono_ns]
    seen = mine["seen"].astype(str).to_numpy()
    if len(seen) < 2:
        return None
    if leaving is not None:
        hits = (seen[:-1] == leaving) & (seen[1:] != leaving)
    else:
        hits = (seen[:-1] != entering) & (seen[1:] == entering)
    found = np.flatnonzero(hits)
    if not len(found):
        return None
    i = int(found[0])
    before_row, after_row = int(mine.index[i]), int(mine.index[i + 1])
    send = _cell(polls, "send_mono_ns", before_row)
    later = _cell(polls, "send_mono_ns", after_row)
    inside = everything[(everything["send_mono_ns"] > send) & (everything["send_mono_ns"] < later)]
    failed = int((inside["seen"] == "error").sum())
    skipped = 0
    if "k" in polls:
        slot = pd.to_numeric(polls["k"], errors="coerce").to_numpy(dtype=np.float64)
        k_before, k_after = slot[before_row], slot[after_row]
        if np.isfinite(k_before) and np.isfinite(k_after):
            skipped = max(0, int(k_after - k_before) - 1 - len(inside))
    return _Edge(
        host=host,
        before=str(seen[i]),
        after=str(seen[i + 1]),
        before_row=before_row,
        after_row=after_row,
        after_mono_ns=send,
        by_mono_ns=_cell(polls, "recv_mono_ns", after_row),
        failed_between=failed,
        skipped_between=skipped,
    )


def _edge_instant(edge: StateEdge) -> Instant:
    return Instant.between(edge.after_mono_ns, edge.by_mono_ns)


# -- components --------------------------------------------------------------


def _hypervisor_component(window: HostBlackout) -> Component:
    return Component(
        name="hypervisor_blackout",
        source=window.source,
        lower_ms=window.lower_ms,
        upper_ms=window.upper_ms,
        start=_edge_instant(window.pause),
        end=_edge_instant(window.resume),
        detail={"pause_host": window.pause.host, "resume_host": window.resume.host},
    )


def _network_component(blackout: BlackoutWindow, clock: HarnessClock) -> Component:
    outage = blackout.outage

    def mono(mono_ns: int | None, utc_ns: int | None) -> int | None:
        """The send on the harness clock; a row without its monotonic stamp (an
        imported log) is placed by its UTC stamp, as the timeline places it."""
        if mono_ns is not None or utc_ns is None:
            return mono_ns
        return utc_ns - clock.utc_minus_mono_ns

    first_lost = mono(outage.first_lost_send_mono_ns, outage.first_lost_send_utc_ns)
    last_lost = mono(outage.last_lost_send_mono_ns, outage.last_lost_send_utc_ns)
    before = mono(outage.last_reply_before_send_mono_ns, outage.last_reply_before_send_utc_ns)
    after = mono(outage.first_reply_after_send_mono_ns, outage.first_reply_after_send_utc_ns)
    start = end = None
    if first_lost is not None:
        start = Instant.between(before, first_lost)
    if last_lost is not None:
        end = Instant.between(last_lost, after)
    return Component(
        name="network_outage",
        source=blackout.source,
        lower_ms=outage.lower_ms,
        upper_ms=outage.upper_ms,
        start=start,
        end=end,
        detail={
            "target": outage.target,
            "lost": outage.lost,
            "timeouts": outage.timeouts,
            "unreachable": outage.unreachable,
            "errors": outage.errors,
        },
    )


def _reported(timeline: Timeline) -> ReportedBlackout | None:
    document = reported_blackout([dict(e) for e in timeline.hyperv_events], timeline.vm)
    if document is None or not isinstance(document.get("blackout_s"), int | float):
        return None
    value = float(document["blackout_s"])
    resolution = REPORTED_RESOLUTION_S
    host = document.get("host")
    logged = None
    clock = timeline.host_clocks.get(str(host))
    stamps, ok = parse_utc_ns([document.get("time_created")])
    if clock is not None and ok[0]:
        mono, unc = clock.to_harness(stamps)
        t, u = int(mono[0]), int(unc[0])
        logged = Instant(t, t - u, t + u)
    brownout = document.get("brownout_s")
    pages = document.get("dirty_pages")
    return ReportedBlackout(
        source=str(document["source"]),
        event_id=int(document["event_id"]),
        host=None if host is None else str(host),
        value_s=value,
        resolution_s=resolution,
        lower_ms=max(0.0, value - resolution / 2) * 1000,
        upper_ms=(value + resolution) * 1000,
        critical=bool(document.get("critical")),
        logged=logged,
        brownout_s=float(brownout) if isinstance(brownout, int | float) else None,
        dirty_pages=int(pages) if isinstance(pages, int) else None,
    )


def _record_times(records: pd.DataFrame, agent: str, seq: int) -> tuple[int, int, int]:
    row = records[(records["agent_id"] == agent) & (records["seq"] == seq)].iloc[0]
    return int(row["t_mono_ns"]), int(row["t_lo_ns"]), int(row["t_hi_ns"])


_Placed = tuple[ExecutionGap, Instant, Instant]

# Steps longer than this many nominal intervals are freeze candidates (a 1 Hz frame
# stream shows a 1.2 s freeze as a 1.7 s step); only the largest few are placed.
_CANDIDATE_INTERVALS = 1.5
_CANDIDATES = 50


def _freezes(records: pd.DataFrame, source: str) -> tuple[list[_Placed], str | None]:
    """The largest freezes of one stream, placed on the harness clock, or why there are none."""
    stated = records["interval_ns"].dropna()
    threshold = None
    if len(stated):
        threshold = _CANDIDATE_INTERVALS * float(stated.median()) / NS_PER_MS
    # Each gap's length already leaves out the slots of the records lost in
    # it (the guest sent them: it ran), so a network outage alone is no freeze.
    gaps = execution_gaps(records[list(GUEST_RECORD_COLUMNS)], source=source, min_gap_ms=threshold)
    if not gaps:
        why = f"{source}: no freeze in the guest's own stamps"
        return [], why + "; the guest's clock may have stopped while it was paused"
    largest = sorted(gaps, key=lambda g: g.gap_ms, reverse=True)[:_CANDIDATES]
    return [(gap, *_place_gap(records, gap)) for gap in largest], None


def _guest_component(
    timeline: Timeline, reference: tuple[int, int] | None
) -> tuple[Component | None, bool, list[str]]:
    """The guest's freeze, whether it may serve as the resume, and notes.

    The heartbeat is preferred (finer), then the frames; within them, the
    largest freeze that overlaps ``reference`` (the hypervisor blackout on the
    harness clock), else the largest at all, which then is not the resume.
    """
    notes: list[str] = []
    streams: list[tuple[str, list[_Placed]]] = []
    for source, records in (
        (HEARTBEAT_SOURCE, timeline.heartbeats),
        (FRAMES_SOURCE, timeline.frames),
    ):
        if len(records) < 2:
            continue
        placed, why = _freezes(records, source)
        if why:
            notes.append(why)
        if placed:
            streams.append((source, placed))
    if not streams:
        return None, False, notes

    def overlaps(item: _Placed) -> bool:
        _, start, end = item
        if reference is None or start.lo_mono_ns is None or end.hi_mono_ns is None:
            return False
        return start.lo_mono_ns <= reference[1] and end.hi_mono_ns >= reference[0]

    candidates = []
    for source, placed in streams:
        overlapping = [item for item in placed if overlaps(item)]
        if overlapping:
            candidates.append((source, overlapping[0], True))  # the largest: placed is sorted
    # Across records lost on the way the resume leans on the guest having kept
    # to its grid after it (a guest that stalled again skipped slots and resumed
    # earlier); between consecutive records it is the first send after the
    # freeze. So a stream that saw the freeze without losses goes first: the
    # frames, queued while outbound was dark and delivered later, carry the
    # guest's stamps across the outage.
    chosen = next(
        (c for c in candidates if c[1][0].lost_between == 0),
        candidates[0] if candidates else None,
    )
    if chosen is None:
        source, placed = streams[0]
        chosen = (source, placed[0], reference is None)
    source, (gap, start, end), usable = chosen
    gap_note = None
    if not usable:
        gap_note = (
            "the longest freeze does not overlap the hypervisor blackout (the guest's "
            "clock may have stopped while it was paused); it is not used as the resume"
        )
    component = Component(
        name="guest_execution_gap",
        source=source,
        lower_ms=gap.lower_ms,
        upper_ms=gap.upper_ms,
        start=start,
        end=end,
        note=gap_note,
        detail={
            "agent_id": gap.agent_id,
            "before_seq": gap.before_seq,
            "after_seq": gap.after_seq,
            "gap_ms": gap.gap_ms,
            "lost_between": gap.lost_between,
            "interval_ms": gap.interval_ms,
            "jitter_ms": gap.jitter_ms,
            "wall_clock_jump_ms": gap.wall_clock_jump_ms,
        },
    )
    return component, usable, notes


def _place_gap(records: pd.DataFrame, gap: ExecutionGap) -> tuple[Instant, Instant]:
    """The freeze's start and end on the harness clock.

    It began after record a was sent and by a's next slot (+ jitter): ``[lo(a),
    hi(a) + I + j]``; it ended at most the jitter before b was sent: ``[lo(b) - j, hi(b)]``.

    With *n* records lost between a and b, the guest sent them after the
    freeze: the first as soon as it ran, the others on its grid, then b;
    slots lie exact multiples of I apart. So it resumed by ``hi(b) - (n - 1)
    I`` (even if it stalled again: then it skipped slots and resumed earlier
    still) and not before ``lo(b) - n (I + j) - j`` (each step allowed its
    jitter, as ``analysis.guest``'s lower bound); best guess ``t(b) - n I``
    (``gap_ms``).
    """
    interval = round(gap.interval_ms * NS_PER_MS)
    jitter = math.ceil(gap.jitter_ms * NS_PER_MS)
    lost = gap.lost_between
    _, a_lo, a_hi = _record_times(records, gap.agent_id, gap.before_seq)
    b_t, b_lo, b_hi = _record_times(records, gap.agent_id, gap.after_seq)
    start = Instant.between(a_lo, a_hi + interval + jitter)
    if not lost:
        return start, Instant(b_t, b_lo - jitter, b_hi)
    end = Instant(
        b_t - lost * interval,
        b_lo - lost * (interval + jitter) - jitter,
        b_hi - (lost - 1) * interval,
    )
    return start, end


def _reconvergence(
    network: Component | None, resume: Instant | None, resume_source: str | None
) -> Component | None:
    if network is None or network.end is None or resume is None or resume_source is None:
        return None
    end = network.end
    assert end.lo_mono_ns is not None and resume.lo_mono_ns is not None
    assert resume.hi_mono_ns is not None
    lower = max(0, end.lo_mono_ns - resume.hi_mono_ns) / NS_PER_MS
    upper = None
    note = None
    if end.hi_mono_ns is not None:
        upper = (end.hi_mono_ns - resume.lo_mono_ns) / NS_PER_MS
        if upper < 0:
            note = "the network answered before the resume: the witnesses disagree"
            upper = 0.0
    return Component(
        name="network_reconvergence",
        source=f"{network.source} end - {resume_source} resume",
        lower_ms=lower,
        upper_ms=upper,
        start=resume,
        end=end,
        note=note,
        detail={"resume_source": resume_source},
    )


def direction_reconvergence(
    direction: str, edge: RestoreEdge | None, reconvergence: Component | None
) -> Component | None:
    """``direction`` ("inbound": to the guest, "outbound": from it) came back
    ``edge`` (the direction probe's, harness clock): its reconvergence is
    ``edge - resume``, the resume the one ``network_reconvergence`` used."""
    if edge is None or reconvergence is None or reconvergence.start is None:
        return None
    resume = reconvergence.start
    assert resume.lo_mono_ns is not None and resume.hi_mono_ns is not None
    upper = (edge.by_mono_ns - resume.lo_mono_ns) / NS_PER_MS
    note = None
    if upper < 0:
        note = f"{direction} answered before the resume: the witnesses disagree"
        upper = 0.0
    return Component(
        name=f"{direction}_reconvergence",
        source=f"{edge.source} {direction} edge - {reconvergence.detail['resume_source']} resume",
        lower_ms=max(0, edge.after_mono_ns - resume.hi_mono_ns) / NS_PER_MS,
        upper_ms=upper,
        start=resume,
        end=Instant.between(edge.after_mono_ns, edge.by_mono_ns),
        note=note,
        detail={"resume_source": reconvergence.detail["resume_source"], "edge_source": edge.source},
    )


# -- points A-H --------------------------------------------------------------


def _poll_instant(timeline: Timeline, row: int) -> Instant:
    polls = timeline.polls
    return Instant(
        _cell(polls, "t_mono_ns", row),
        _cell(polls, "send_mono_ns", row),
        _cell(polls, "recv_mono_ns", row),
    )


def _points(
    timeline: Timeline, window: HostBlackout | None, console: Mapping[str, Point]
) -> tuple[Point, ...]:
    polls = timeline.polls
    source, destination = timeline.source_host, timeline.destination_host
    console_reason = f"no console probe in this run ({CONSOLE.path} absent)"
    no_hosts = "the run has no host polls" if not len(polls) else None

    def unknown(letter: str, what: str, reason: str) -> Point:
        return Point(letter, what, UNKNOWN, None, None, reason)

    points: dict[str, Point] = {}
    pause = None if source is None else _find_edge(polls, source, leaving="Running")
    a_what = "last seen Running on the source"
    b_what = "paused on the source (leaves Running)"
    if pause is None:
        reason = no_hosts or f"the polls of {source} never show the VM leave Running"
        points["A"] = unknown("A", a_what, reason)
        points["B"] = unknown("B", b_what, reason)
    else:
        points["A"] = Point(
            "A", a_what, OBSERVED, _poll_instant(timeline, pause.before_row), f"host:{source}"
        )
        notes = [pause.widened_note()]
        if pause.after != "Paused":
            notes.append(
                f"Paused was never seen: the source went from Running to {pause.after} "
                "between two polls; the pause lies in the same bounds"
            )
        at = pause.instant if window is None else _edge_instant(window.pause)
        points["B"] = Point(
            "B", b_what, OBSERVED, at, f"host:{source}", "; ".join(n for n in notes if n) or None
        )

    c_what = "listed on neither host"
    gone = (
        None
        if pause is None or source is None
        else _find_edge(polls, source, entering="unlisted", after_mono_ns=pause.after_mono_ns)
    )
    listed = (
        None
        if destination is None or pause is None
        else _find_edge(polls, destination, leaving="unlisted", after_mono_ns=pause.after_mono_ns)
    )
    if gone is None:
        points["C"] = (
            unknown("C", c_what, no_hosts or "the source was not seen to leave Running")
            if pause is None
            else Point(
                "C",
                c_what,
                NOT_OBSERVED,
                None,
                f"host:{source}",
                "the source listed the VM at every poll after the pause",
            )
        )
    elif listed is not None and listed.by_mono_ns < gone.after_mono_ns:
        points["C"] = Point(
            "C",
            c_what,
            NOT_OBSERVED,
            None,
            f"host:{source}",
            "the destination listed the VM before the source dropped it (listed on both)",
        )
    else:
        notes = [gone.widened_note()]
        if listed is not None and listed.after_mono_ns < gone.by_mono_ns:
            notes.append(
                "the polls do not prove an instant with the VM on neither list: the "
                "destination may have listed it before the source dropped it"
            )
        points["C"] = Point(
            "C",
            c_what,
            OBSERVED,
            gone.instant,
            f"host:{source}",
            "; ".join(n for n in notes if n) or None,
        )

    points["D"] = console.get("D") or unknown("D", CONSOLE_WHAT["D"], console_reason)

    e_what = "Running on the destination"
    running = (
        None
        if destination is None or pause is None
        else _find_edge(polls, destination, entering="Running", after_mono_ns=pause.after_mono_ns)
    )
    if running is None:
        reason = no_hosts or (
            f"the polls of {destination} never show the VM Running after the pause"
            if pause is not None
            else "the source was not seen to leave Running"
        )
        points["E"] = unknown("E", e_what, reason)
    else:
        at = running.instant if window is None else _edge_instant(window.resume)
        points["E"] = Point(
            "E", e_what, OBSERVED, at, f"host:{destination}", running.widened_note()
        )

    for letter in "FGH":
        points[letter] = console.get(letter) or unknown(
            letter, CONSOLE_WHAT[letter], console_reason
        )
    return tuple(points[letter] for letter in "ABCDEFGH")


# -- the console view (D, F-H) -----------------------------------------------

CONSOLE_WHAT = {
    "D": "console without a screen ('not responding')",
    "F": "console reconnects ('Connecting to ...')",
    "G": "console black again",
    "H": "console shows the desktop",
}


def _console(
    timeline: Timeline, console: ConsoleAnalysis | None
) -> tuple[Component | None, dict[str, Point]]:
    """The console blackout (``analysis.console``) and the points D, F, G, H in it.

    The episode's ``sequence`` holds runs of one view from one host; a point
    is the onset of a run: after the send of the sample before it, by the
    receive of its first sample. D: the first ``unavailable`` run (no host
    listed the VM or the poll failed: VM Connection's "not responding"). F:
    the first ``connecting`` run served by the new host. G: the first
    ``black`` run after F. H: the first ``desktop`` run after that.
    """
    records = timeline.console_records
    if records is None or not records.samples:
        return None, {}
    episode = (analyse_console(records.samples) if console is None else console).blackout
    if episode is None:
        why = "the console never went black or lost its screen"
        return None, {
            letter: Point(letter, CONSOLE_WHAT[letter], NOT_OBSERVED, None, "console", why)
            for letter in "DFGH"
        }
    component = Component(
        name="console_blackout",
        source=episode.source,
        lower_ms=episode.lower_ms,
        upper_ms=episode.upper_ms,
        start=Instant.between(episode.start_after_mono_ns, episode.first_abnormal.recv_mono_ns),
        end=Instant.between(episode.last_abnormal.send_mono_ns, episode.end_by_mono_ns),
        detail={
            "host_before": episode.host_before,
            "host_after": episode.host_after,
            "black_samples": episode.black_samples,
            "unavailable_samples": episode.unavailable_samples,
            "interlude_samples": episode.interlude_samples,
        },
    )
    steps = episode.sequence
    new_host = episode.host_switch.to_host if episode.host_switch else episode.host_after

    def onset(i: int) -> Instant:
        before = steps[i - 1].last if i > 0 else episode.last_normal_before
        lo = None if before is None else before.send_mono_ns
        return Instant.between(lo, steps[i].first.recv_mono_ns)

    def first(view: str, after: int = -1, host: str | None = None) -> int | None:
        for i, step in enumerate(steps):
            if i > after and step.view == view and (host is None or step.host == host):
                return i
        return None

    def point(letter: str, index: int | None, why: str) -> Point:
        if index is None:
            return Point(letter, CONSOLE_WHAT[letter], NOT_OBSERVED, None, "console", why)
        host = steps[index].host
        where = "console" if host is None else f"console:{host}"
        return Point(letter, CONSOLE_WHAT[letter], OBSERVED, onset(index), where)

    d = first("unavailable")
    f = first("connecting", host=new_host)
    g = None if f is None else first("black", after=f)
    h = first("desktop", after=-1 if g is None else g)
    return component, {
        "D": point("D", d, "the console had a screen at every sample of the episode"),
        "F": point(
            "F",
            f,
            "no 'Connecting to ...' screen from the new host (a mostly dark normal screen; "
            "it may have lasted less than a sample interval)",
        ),
        "G": point(
            "G", g, "no black screen after 'Connecting to ...'" if f is not None else "no F"
        ),
        "H": point("H", h, "the record ends before the desktop came back"),
    }


# -- counts ------------------------------------------------------------------


def _count(attempts: TargetAttempts, window: str, start: int, end: int) -> WindowCounts:
    lo = int(np.searchsorted(attempts.t_mono_ns, start, side="left"))
    hi = int(np.searchsorted(attempts.t_mono_ns, end, side="right"))
    counts = np.bincount(attempts.outcome[lo:hi], minlength=len(OUTCOME_CODE))
    return WindowCounts(
        window=window,
        target=attempts.target,
        start_mono_ns=start,
        end_mono_ns=end,
        sent=hi - lo,
        replies=int(counts[OUTCOME_CODE["reply"]]),
        timeouts=int(counts[OUTCOME_CODE["timeout"]]),
        unreachable=int(counts[OUTCOME_CODE["unreachable"]]),
        errors=int(counts[OUTCOME_CODE["error"]]),
        unresolved=int(counts[OUTCOME_CODE["unresolved"]]),
    )


def _counts(
    timeline: Timeline,
    target: str | None,
    hypervisor: Component | None,
    network: Component | None,
    around_s: float,
) -> tuple[WindowCounts, ...]:
    if target is None or not len(timeline.icmp):
        return ()
    attempts = target_attempts(timeline.icmp, target)
    windows: list[tuple[str, int, int]] = []
    starts, ends = [], []
    if hypervisor is not None and hypervisor.start is not None and hypervisor.end is not None:
        outer = (hypervisor.start.lo_mono_ns, hypervisor.end.hi_mono_ns)
        inner = (hypervisor.start.hi_mono_ns, hypervisor.end.lo_mono_ns)
        if outer[0] is not None and outer[1] is not None:
            windows.append(("hypervisor_blackout", outer[0], outer[1]))
            starts.append(outer[0])
            ends.append(outer[1])
        if inner[0] is not None and inner[1] is not None and inner[0] < inner[1]:
            windows.append(("hypervisor_blackout_lower", inner[0], inner[1]))
    if network is not None and network.start is not None and network.end is not None:
        first_lost, last_lost = network.start.hi_mono_ns, network.end.lo_mono_ns
        if first_lost is not None and last_lost is not None:
            windows.append(("network_outage", first_lost, last_lost))
        starts.append(network.start.earliest)
        ends.append(network.end.latest)
    if starts:
        reach = round(around_s * 1e9)
        windows.append(("around", min(starts) - reach, max(ends) + reach))
    return tuple(_count(attempts, name, lo, hi) for name, lo, hi in windows)


# -- the decomposition -------------------------------------------------------


QEMU_EVENTS_SOURCE = "qemu-events"  # the hypervisor blackout from QEMU's STOP and RESUME


def qemu_component(qemu: QemuRecords | None) -> Component | None:
    """QEMU's STOP (source) -> RESUME (destination), from ``raw/qemu_migration.jsonl``.

    QEMU stamps its events with this machine's clock to the microsecond, so
    both edges are exact on the harness timeline (see ``analysis.qemu``).
    """
    result = None if qemu is None else qemu.result
    if not result or not result.get("stop") or not result.get("resume"):
        return None
    stop, resume = int(result["stop"]["qemu_mono_ns"]), int(result["resume"]["qemu_mono_ns"])
    return Component(
        name="hypervisor_blackout",
        source=QEMU_EVENTS_SOURCE,
        lower_ms=(resume - stop) / NS_PER_MS,
        upper_ms=(resume - stop) / NS_PER_MS,
        start=Instant(stop, stop, stop),
        end=Instant(resume, resume, resume),
        detail={"downtime_ms": result.get("downtime_ms"), "downtime_measured_on": "source"},
    )


def decompose(
    timeline: Timeline,
    *,
    around_s: float = AROUND_S,
    hypervisor_events: Component | None = None,
    icmp: IcmpAnalysis | None = None,
    console: ConsoleAnalysis | None = None,
) -> Decomposition:
    """Split the run's downtime by witness and place the points A-H (module docstring).

    ``hypervisor_events``: the hypervisor's own pause and resume (QEMU's STOP
    and RESUME), used as the hypervisor blackout when no host was polled.
    ``icmp`` and ``console``: the run's analyses where they are made already
    (``analysis.derive``); else they are made here from the timeline."""
    notes: list[str] = list(timeline.warnings)
    source, destination = timeline.source_host, timeline.destination_host
    window = None
    if source and destination and len(timeline.polls):
        window = host_blackout(timeline.polls, source, destination)
    hypervisor = hypervisor_events if window is None else _hypervisor_component(window)

    network = None
    target = timeline.icmp_targets[0] if timeline.icmp_targets else None
    if len(timeline.icmp):
        analysis = icmp if icmp is not None else analyse_timeline_icmp(timeline)
        if analysis.blackout is not None:
            network = _network_component(analysis.blackout, timeline.clock)
            target = analysis.blackout.target

    reference = None
    for candidate in (hypervisor, network):
        if candidate is not None and candidate.start is not None and candidate.end is not None:
            reference = (candidate.start.earliest, candidate.end.latest)
            break
    guest, guest_usable, guest_notes = _guest_component(timeline, reference)
    notes.extend(guest_notes)
    console_blackout, console_points = _console(timeline, console)

    resume, resume_source = None, None
    if hypervisor is not None and hypervisor is hypervisor_events:
        # The hypervisor's own RESUME event is exact; a guest program's first
        # heartbeat may come tens of ms later (QEMU's TCG warms up again).
        resume, resume_source = hypervisor.end, hypervisor.source
    elif guest is not None and guest_usable:
        resume, resume_source = guest.end, guest.source
    elif hypervisor is not None:
        resume, resume_source = hypervisor.end, hypervisor.source

    return Decomposition(
        hypervisor_blackout=hypervisor,
        reported_blackout=_reported(timeline),
        guest_execution_gap=guest,
        network_outage=network,
        network_reconvergence=_reconvergence(network, resume, resume_source),
        console_blackout=console_blackout,
        points=_points(timeline, window, console_points),
        icmp_counts=_counts(timeline, target, hypervisor, network, around_s),
        notes=tuple(notes),
    )


# -- summary.json ------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def instant_json(instant: Instant | None, timeline: Timeline) -> dict[str, Any] | None:
    """An instant in summary.json: harness mono and UTC, with its bounds."""
    if instant is None:
        return None
    return {
        "t_mono_ns": instant.t_mono_ns,
        "lo_mono_ns": instant.lo_mono_ns,
        "hi_mono_ns": instant.hi_mono_ns,
        "t_utc": timeline.utc_iso(instant.t_mono_ns),
        "lo_utc": timeline.utc_iso(instant.lo_mono_ns),
        "hi_utc": timeline.utc_iso(instant.hi_mono_ns),
        "window_ms": _ms(instant.window_ms),
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    return value


def _component_json(component: Component | None, timeline: Timeline) -> dict[str, Any] | None:
    if component is None:
        return None
    return {
        "source": component.source,
        "lower_ms": _ms(component.lower_ms),
        "upper_ms": _ms(component.upper_ms),
        "estimate_ms": _ms(component.estimate_ms),
        "start": instant_json(component.start, timeline),
        "end": instant_json(component.end, timeline),
        "note": component.note,
        **{key: _json_value(value) for key, value in component.detail.items()},
    }


def _reported_json(reported: ReportedBlackout | None, timeline: Timeline) -> dict[str, Any] | None:
    if reported is None:
        return None
    return {
        "source": reported.source,
        "event_id": reported.event_id,
        "host": reported.host,
        "value_ms": _ms(reported.value_s * 1000),
        "resolution_ms": _ms(reported.resolution_s * 1000),
        "lower_ms": _ms(reported.lower_ms),
        "upper_ms": _ms(reported.upper_ms),
        "critical": reported.critical,
        "logged": instant_json(reported.logged, timeline),
        "brownout_ms": None if reported.brownout_s is None else _ms(reported.brownout_s * 1000),
        "dirty_pages": reported.dirty_pages,
    }


def _clock_json(timeline: Timeline) -> dict[str, Any]:
    polls = timeline.polls
    hosts: dict[str, Any] = {}
    for host, clock in timeline.host_clocks.items():
        entry: dict[str, Any] = {}
        for phase, estimate in (("before", clock.before), ("after", clock.after)):
            entry[phase] = (
                None
                if estimate is None
                else {
                    "offset_ms": _ms(estimate.offset_ns / NS_PER_MS),
                    "uncertainty_ms": _ms(estimate.uncertainty_ns / NS_PER_MS),
                    "at_mono_ns": estimate.at_mono_ns,
                }
            )
        mapped = (
            polls[(polls["host"] == host) & (polls["host_mono_ns"] >= 0)] if len(polls) else polls
        )
        if len(mapped):
            at = mapped["host_mono_ns"].to_numpy(np.int64)
            u = mapped["host_uncertainty_ns"].to_numpy(np.int64)
            early = mapped["send_mono_ns"].to_numpy(np.int64) - (at + u)
            late = (at - u) - mapped["recv_mono_ns"].to_numpy(np.int64)
            excess = np.maximum(early, late)
            entry["polls_mapped"] = len(mapped)
            entry["polls_inconsistent"] = int((excess > 0).sum())
            entry["worst_inconsistency_ms"] = _ms(max(0.0, float(excess.max()) / NS_PER_MS))
            entry["max_uncertainty_ms"] = _ms(float(u.max()) / NS_PER_MS)
        else:
            entry["polls_mapped"] = 0
            entry["polls_inconsistent"] = 0
            entry["worst_inconsistency_ms"] = None
            entry["max_uncertainty_ms"] = None
        hosts[host] = entry
    guests = {
        agent: {
            "anchor_source": guest.anchor_source,
            "anchors": guest.anchors,
            "segments": guest.segments,
            "delay_bound_ms": _ms(guest.delay_bound_ns / NS_PER_MS),
            "delay_bound_source": guest.delay_bound_source,
        }
        for agent, guest in timeline.guest_clocks.items()
    }
    return {
        "timeline": "harness CLOCK_MONOTONIC",
        "utc_minus_mono_ns": timeline.clock.utc_minus_mono_ns,
        "hosts": hosts,
        "guest": guests,
    }


def _point_json(point: Point, timeline: Timeline) -> dict[str, Any]:
    return {
        "what": point.what,
        "status": point.status,
        "at": instant_json(point.at, timeline),
        "source": point.source,
        "note": point.note,
    }


def _counts_json(counts: WindowCounts, timeline: Timeline) -> dict[str, Any]:
    return {
        "start_mono_ns": counts.start_mono_ns,
        "end_mono_ns": counts.end_mono_ns,
        "start_utc": timeline.utc_iso(counts.start_mono_ns),
        "end_utc": timeline.utc_iso(counts.end_mono_ns),
        "span_ms": _ms((counts.end_mono_ns - counts.start_mono_ns) / NS_PER_MS),
        "sent": counts.sent,
        "replies": counts.replies,
        "timeouts": counts.timeouts,
        "unreachable": counts.unreachable,
        "errors": counts.errors,
        "unresolved": counts.unresolved,
    }


def decomposition_to_json(decomposition: Decomposition, timeline: Timeline) -> dict[str, Any]:
    """The ``decomposition`` block of summary.json (docs/timeline.md describes every key)."""
    counts = decomposition.icmp_counts
    return {
        "clock": _clock_json(timeline),
        "hypervisor_blackout": _component_json(decomposition.hypervisor_blackout, timeline),
        "reported_blackout": _reported_json(decomposition.reported_blackout, timeline),
        "guest_execution_gap": _component_json(decomposition.guest_execution_gap, timeline),
        "network_outage": _component_json(decomposition.network_outage, timeline),
        "network_reconvergence": _component_json(decomposition.network_reconvergence, timeline),
        "inbound_reconvergence": _component_json(decomposition.inbound_reconvergence, timeline),
        "outbound_reconvergence": _component_json(decomposition.outbound_reconvergence, timeline),
        "console_blackout": _component_json(decomposition.console_blackout, timeline),
        "points": {p.letter: _point_json(p, timeline) for p in decomposition.points},
        "icmp_counts": None
        if not counts
        else {
            "target": counts[0].target,
            "windows": {c.window: _counts_json(c, timeline) for c in counts},
        },
        "notes": list(decomposition.notes),
    }


def has_witnesses(run: RunData) -> bool:
    """Whether the run has more than ICMP to decompose: host polls, guest agent records
    or the console view."""
    hosts = any(probe.startswith(HOST_PROBE_PREFIX) for probe in run.manifest.probes)
    guest = any((run.path / name).is_file() for name in _GUEST_FILES)
    probes = run.manifest.probes
    return hosts or guest or CONSOLE.probe in probes or QEMU_MIGRATION.probe in probes
