"""The clocks of a run and how each maps onto the harness's CLOCK_MONOTONIC.

``analysis.timeline`` puts every record of a run on the harness monotonic
clock with these: the harness's own pair of clocks from the manifest
(``HarnessClock``), each Hyper-V host's wall clock (``HostClock``, from the
manifest's ``hyperv.clock`` estimates) and each guest agent's monotonic clock
(``GuestEnvelope``, fitted to the arrivals). docs/timeline.md explains the
reasoning at more length.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from migration_blackout.analysis.rundata import RunData
from migration_blackout.runformat import utc_iso

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

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


def json_int(value: object) -> int | None:
    """``value`` if it is a JSON integer (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def harness_clock(run: RunData, fallback_pairs: Sequence[tuple[int, int]] = ()) -> HarnessClock:
    """The manifest's clock pairs; without ``clock.start``, the first ``(mono, utc)`` fallback."""
    clock = run.manifest.document.get("clock")
    start = clock.get("start") if isinstance(clock, Mapping) else None
    end = clock.get("end") if isinstance(clock, Mapping) else None
    if isinstance(start, Mapping):
        mono, utc = json_int(start.get("mono_ns")), json_int(start.get("utc_ns"))
        if mono is not None and utc is not None:
            end_mono = json_int(end.get("mono_ns")) if isinstance(end, Mapping) else None
            end_utc = json_int(end.get("utc_ns")) if isinstance(end, Mapping) else None
            return HarnessClock(mono, utc, end_mono, end_utc)
    for mono, utc in fallback_pairs:
        return HarnessClock(mono, utc)
    return HarnessClock(0, 0)


def host_clocks(run: RunData, clock: HarnessClock) -> dict[str, HostClock]:
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
                [json_int(doc.get(k)) for k in ("offset_ns", "uncertainty_ns", "at_mono_ns")]
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


@dataclass(frozen=True, eq=False)
class GuestEnvelope:
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
    def fit(cls, guest: IntArray, recv: IntArray, interval_ns: float | None) -> GuestEnvelope:
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
