"""The run as one picture: a swim lane per witness, on the harness clock.

``plot_timeline(run_dir)`` writes ``derived/timeline.png``, ``derived/timeline.svg``
(the whole run) and ``derived/timeline-zoom.png`` (a few seconds around the
blackout). ``timeline_figures(timeline, decomposition)`` returns the two
``matplotlib.figure.Figure`` objects for notebooks. Figures are built with the
object API and the Agg canvas: no pyplot, no global figure state.

Lanes, top to bottom: the blackout windows (each component's bounds: the
lower bound dark, the upper bound light) with the points A-H; one lane per
host (the VM state as coloured spans, the migration's percent complete as a
line); one lane per ICMP target (RTT of the replies, timeouts and
unreachables as distinct markers, the lost fraction); the guest heartbeat (its
step on the guest's clock and on arrival); the guest frames (with thumbnails of
the frames around the gap); and the events (Hyper-V's, the harness's, the
lab's ground truth), host events with their clock uncertainty as error bars.

Scale: every high-rate series is reduced to one value range per pixel column
(``numpy`` ``reduceat`` on time-sorted arrays) when it has more points than
twice the columns, so an hour at 1 kHz draws a few thousand artists, never
millions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox, blended_transform_factory
from PIL import Image

from migration_blackout.analysis.clocks import NS_PER_S
from migration_blackout.analysis.decompose import (
    QEMU_EVENTS_SOURCE,
    Component,
    Decomposition,
    Instant,
)
from migration_blackout.analysis.derive import Derived, derive
from migration_blackout.analysis.outputs import replace_file
from migration_blackout.analysis.timeline import (
    EVENTS_LANE,
    OUTCOME_CODE,
    Timeline,
    target_attempts,
)
from migration_blackout.analysis.witness_summary import WitnessBar, witness_bars
from migration_blackout.runformat import (
    DERIVED_DIR,
    TIMELINE_PNG,
    TIMELINE_SVG,
    TIMELINE_ZOOM_PNG,
    utc_iso,
)

# The files' names, in ``out_dir`` (``derived/`` of the run folder by default).
OVERVIEW_PNG = Path(TIMELINE_PNG).name
OVERVIEW_SVG = Path(TIMELINE_SVG).name
ZOOM_PNG = Path(TIMELINE_ZOOM_PNG).name

WIDTH_IN = 16.0
DPI = 100
# The lanes span LEFT..RIGHT of the figure's width; legends sit right of them.
LEFT, RIGHT = 0.1, 0.8
LEGEND_X = 1.06  # in axes widths: past a twin axis's tick labels
ZOOM_S = 3.0  # the zoom shows this much on each side of the blackout windows
THUMB_WIDTH_PX = 110

STATE_COLOURS = {
    "Running": "#43a047",
    "Paused": "#ffca28",
    "unlisted": "#eeeeee",
    "error": "#e53935",
}
OTHER_STATE_COLOUR = "#8e24aa"
WINDOW_COLOURS = {
    "hypervisor_blackout": "#bf360c",
    "guest_execution_gap": "#2e7d32",
    "network_outage": "#1565c0",
    "network_reconvergence": "#6a1b9a",
    "console_blackout": "#455a64",
}
WINDOW_LABELS = {  # one line each: five rows share the lane
    "hypervisor_blackout": "hypervisor (host polls)",
    "guest_execution_gap": "guest freeze",
    "network_outage": "network (ICMP)",
    "network_reconvergence": "reconvergence",
    "console_blackout": "console (thumbnail)",
}
LOST_MARKERS = {  # outcome: (marker, colour, y in axes fraction)
    "timeout": ("x", "#d32f2f", 0.92),
    "unreachable": ("v", "#c2185b", 0.80),
    "error": ("|", "#212121", 0.68),
}
HARNESS_KINDS = {
    "move_vm_start": ">",
    "move_vm_return": "<",
    "move_vm_error": "X",
    "move_vm_stopped": "X",
    "probes_ready": "^",
    "settled": "s",
    "settle_limit": "s",
    "end": "o",
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _View:
    """What one figure shows: ``[x0_ns, x1_ns]`` in ``bins`` pixel columns, seconds from origin."""

    x0_ns: int
    x1_ns: int
    origin_ns: int
    bins: int
    origin_label: str

    def x(self, t_ns: npt.ArrayLike) -> FloatArray:
        return (np.asarray(t_ns, dtype=np.int64) - self.origin_ns).astype(np.float64) / NS_PER_S

    def xs(self, t_ns: int) -> float:
        return (t_ns - self.origin_ns) / NS_PER_S

    @property
    def column_s(self) -> float:
        """Seconds per pixel column."""
        return (self.x1_ns - self.x0_ns) / NS_PER_S / self.bins

    def visible(self, lo_ns: int, hi_ns: int, columns: float = 3.0) -> tuple[float, float]:
        """``[lo, hi]`` in seconds, widened about its middle to at least ``columns`` columns
        (a 2 s blackout in an hour is a fraction of a pixel)."""
        lo, hi = self.xs(lo_ns), self.xs(hi_ns)
        least = columns * self.column_s
        if hi - lo < least:
            middle = (lo + hi) / 2
            return middle - least / 2, middle + least / 2
        return lo, hi

    def edges(self) -> IntArray:
        return np.linspace(self.x0_ns, self.x1_ns, self.bins + 1).astype(np.int64)

    def slice(self, t_sorted: IntArray) -> slice:
        lo, hi = np.searchsorted(t_sorted, [self.x0_ns, self.x1_ns], side="left")
        return slice(int(lo), int(hi))


def _bins(t_sorted: IntArray, view: _View) -> IntArray:
    """Index of the first element of each pixel column (and the end), on sorted stamps."""
    return np.searchsorted(t_sorted, view.edges(), side="left").astype(np.int64)


def _per_bin(values: FloatArray, index: IntArray, reducer: np.ufunc) -> FloatArray:
    """``reducer`` over each column's values (NaN for an empty column)."""
    counts = np.diff(index)
    out = np.full(len(counts), np.nan)
    nonempty = counts > 0
    if nonempty.any():
        sub = values[index[0] : index[-1]].astype(np.float64, copy=False)
        starts = index[:-1][nonempty] - index[0]
        out[nonempty] = reducer.reduceat(sub, starts)
    return out


def _count_per_bin(mask: npt.NDArray[np.bool_], index: IntArray) -> IntArray:
    """How many rows ``mask`` holds in each column (``index``: the columns' first rows).
    Summed per column (``_per_bin``'s way) with the cast done in buffers: no
    running count or list of positions of 3.6 M rows (29 MB)."""
    counts = np.diff(index)
    out = np.zeros(len(counts), dtype=np.int64)
    nonempty = counts > 0
    if nonempty.any():
        starts = index[:-1][nonempty] - index[0]
        out[nonempty] = np.add.reduceat(mask[index[0] : index[-1]], starts, dtype=np.int64)
    return out


def _centres(view: _View) -> FloatArray:
    edges = view.x(view.edges())
    return (edges[:-1] + edges[1:]) / 2


# -- labels that never collide -------------------------------------------------


@dataclass(frozen=True)
class _Label:
    """Text for ``ax`` at data point (``x``, ``y``), tried at each ``candidates`` offset
    (dx, dy in points, horizontal and vertical alignment) until one fits."""

    ax: Axes
    x: float
    y: float
    text: str
    candidates: tuple[tuple[float, float, str, str], ...]
    fontsize: float
    colour: str = "black"


# Beside a point, then above and below it, then further out; right-aligned when the
# left-aligned text would run off the lane.
_EVENT_OFFSETS = tuple(
    (dx, dy, ha, "baseline")
    for dy in (5.0, -10.0, 14.0, -19.0)
    for dx, ha in ((3.0, "left"), (-3.0, "right"))
)


class _LabelPlacer:
    """Places labels so that no two overlap and none leaves its lane (measured with the
    renderer, after the axes' limits are final); a label that fits nowhere is not drawn
    and is returned, for the caption."""

    def __init__(self, figure: Figure) -> None:
        self.renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
        self.taken: list[Bbox] = []

    def place(self, label: _Label) -> bool:
        lane = label.ax.get_window_extent(self.renderer)
        for dx, dy, ha, va in label.candidates:
            artist = label.ax.annotate(
                label.text,
                (label.x, label.y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=label.fontsize,
                color=label.colour,
                annotation_clip=False,
            )
            box = artist.get_window_extent(self.renderer)
            inside = (
                box.x0 >= lane.x0 and box.x1 <= lane.x1 and box.y0 >= lane.y0 and box.y1 <= lane.y1
            )
            if inside and not any(box.overlaps(other) for other in self.taken):
                self.taken.append(box)
                return True
            artist.remove()
        return False

    def place_all(self, labels: Sequence[Sequence[_Label]]) -> list[str]:
        """Place each label (its alternatives in order of preference), left to right;
        return the texts that found no room."""
        unplaced = []
        for alternatives in sorted(labels, key=lambda item: item[0].x):
            if not any(self.place(label) for label in alternatives):
                unplaced.append(alternatives[0].text)
        return unplaced


# -- lanes -------------------------------------------------------------------


def _shade(ax: Axes, view: _View, component: Component | None, colour: str) -> None:
    """The component's upper bound light, its lower bound dark, across the lane."""
    if component is None or component.start is None or component.end is None:
        return
    start, end = component.start, component.end
    outer = view.visible(start.earliest, end.latest)
    ax.axvspan(*outer, color=colour, alpha=0.12, lw=0, zorder=0)
    inner = (start.hi_mono_ns, end.lo_mono_ns)
    if inner[0] is not None and inner[1] is not None and inner[0] < inner[1]:
        ax.axvspan(*view.visible(inner[0], inner[1], 1.0), color=colour, alpha=0.28, lw=0, zorder=0)


def _window_bar(
    ax: Axes, view: _View, y: float, start: Instant, end: Instant, colour: str, text: str
) -> list[_Label]:
    x0, x1 = view.visible(start.earliest, end.latest)
    ax.barh(y, x1 - x0, left=x0, height=0.6, color=colour, alpha=0.3, lw=0)
    inner = (start.hi_mono_ns, end.lo_mono_ns)
    if inner[0] is not None and inner[1] is not None and inner[0] < inner[1]:
        i0, i1 = view.visible(inner[0], inner[1], 2.0)
        ax.barh(y, i1 - i0, left=i0, height=0.6, color=colour, alpha=0.85, lw=0)
    # After the bar; before it when the lane ends there; on it as a last resort.
    return [
        _Label(ax, x1, y, text, ((4.0, 0.0, "left", "center"),), 8),
        _Label(ax, x0, y, text, ((-4.0, 0.0, "right", "center"),), 8),
        _Label(ax, (x0 + x1) / 2, y, text, ((0.0, 0.0, "center", "center"),), 8),
    ]


def _bounds_text(component: Component) -> str:
    lower = "?" if component.lower_ms is None else f"{component.lower_ms:.1f}"
    upper = "open" if component.upper_ms is None else f"{component.upper_ms:.1f}"
    return f"{lower} - {upper} ms"


def _window_label(component: Component) -> str:
    """The row's name; QEMU's own pause and resume stand in for the host polls."""
    if component.name == "hypervisor_blackout" and component.source == QEMU_EVENTS_SOURCE:
        return "hypervisor (QEMU events)"
    return WINDOW_LABELS.get(component.name, component.name)


def _draw_windows(ax: Axes, view: _View, decomposition: Decomposition) -> list[list[_Label]]:
    """The window bars; returns each bar's label with its fallback positions."""
    rows = [
        c
        for c in (
            decomposition.hypervisor_blackout,
            decomposition.guest_execution_gap,
            decomposition.network_outage,
            decomposition.network_reconvergence,
            decomposition.console_blackout,
        )
        if c is not None and c.start is not None and c.end is not None
    ]
    labels = []
    texts: list[list[_Label]] = []
    for y, component in enumerate(reversed(rows)):
        assert component.start is not None and component.end is not None
        colour = WINDOW_COLOURS.get(component.name, "#555555")
        texts.append(
            _window_bar(
                ax, view, y, component.start, component.end, colour, _bounds_text(component)
            )
        )
        labels.append(_window_label(component))
    reported = decomposition.reported_blackout
    if reported is not None and reported.logged is not None:
        y = len(rows)
        logged = reported.logged
        x = view.xs(logged.t_mono_ns)
        err = logged.latest - logged.t_mono_ns
        ax.errorbar(x, y, xerr=err / NS_PER_S, fmt="D", color="#37474f", ms=5, capsize=3)
        text = (
            f"{reported.event_id} logged: blackout {reported.value_s:g} s "
            f"({reported.lower_ms:.0f} - {reported.upper_ms:.0f} ms)"
        )
        texts.append(
            [
                _Label(ax, x + err / NS_PER_S, y, text, ((6.0, 0.0, "left", "center"),), 8),
                _Label(ax, x - err / NS_PER_S, y, text, ((-6.0, 0.0, "right", "center"),), 8),
            ]
        )
        labels.append(f"Hyper-V {reported.event_id}")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.7, max(len(labels), 1) - 0.3)
    if not labels:
        ax.text(0.5, 0.5, "no blackout seen", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
    return texts


def _legend(ax: Axes, handles: Sequence[Any]) -> None:
    """The lane's legend beside it, right of the plot (and of a twin axis's ticks), so it
    covers no data."""
    if handles:
        ax.legend(
            handles=list(handles),
            loc="upper left",
            bbox_to_anchor=(LEGEND_X, 1.0),
            borderaxespad=0.0,
            fontsize=7,
            frameon=False,
        )


def _state_runs(times: IntArray, states: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive polls of one state as spans; a change is drawn half-way between polls."""
    runs: list[tuple[str, int, int]] = []
    if not len(times):
        return runs
    change = [i for i in range(1, len(states)) if states[i] != states[i - 1]]
    starts = [0, *change]
    ends = [*change, len(states)]
    for a, b in zip(starts, ends, strict=True):
        lo = times[a] if a == 0 else (times[a - 1] + times[a]) // 2
        hi = times[b - 1] if b == len(states) else (times[b - 1] + times[b]) // 2
        runs.append((states[a], int(lo), int(hi)))
    return runs


def _draw_host(ax: Axes, view: _View, polls: pd.DataFrame, host: str, role: str | None) -> None:
    mine = polls[polls["host"] == host].sort_values("t_mono_ns", kind="stable")
    times = mine["t_mono_ns"].to_numpy(np.int64)
    states = mine["seen"].astype(str).tolist()
    by_state: dict[str, list[tuple[float, float]]] = {}
    for state, lo, hi in _state_runs(times, states):
        if hi < view.x0_ns or lo > view.x1_ns:
            continue
        x0 = view.xs(max(lo, view.x0_ns))
        by_state.setdefault(state, []).append((x0, view.xs(min(hi, view.x1_ns)) - x0))
    handles = []
    for state, spans in by_state.items():
        colour = STATE_COLOURS.get(state, OTHER_STATE_COLOUR)
        ax.broken_barh(spans, (0, 100), color=colour, alpha=0.45, lw=0)
        handles.append(Patch(color=colour, alpha=0.6, label=state))
    if "percent_complete" in mine:
        percent = pd.to_numeric(mine["percent_complete"], errors="coerce").to_numpy(np.float64)
        _line(ax, view, times, percent, colour="#263238", label="percent complete")
    ax.set_ylim(0, 105)
    ax.set_yticks([0, 50, 100])
    ax.set_ylabel(f"{host}\n{role or 'host'}, %", fontsize=7)
    if handles:
        _legend(ax, handles)


def _line(
    ax: Axes, view: _View, t: IntArray, values: FloatArray, *, colour: str, label: str
) -> None:
    """A series drawn as is when sparse, else as its per-column min-max band."""
    window = view.slice(t)
    t, values = t[window], values[window]
    if len(t) <= 2 * view.bins:
        ok = np.isfinite(values)
        ax.plot(view.x(t[ok]), values[ok], "-", color=colour, lw=1.2, label=label)
        return
    index = _bins(t, view)
    index = index - index[0]
    lo = _per_bin(values, index, np.fmin)
    hi = _per_bin(values, index, np.fmax)
    x = _centres(view)
    ax.fill_between(x, lo, hi, color=colour, alpha=0.6, step="mid", lw=0.8, label=label)


def _draw_icmp(ax: Axes, view: _View, icmp: pd.DataFrame, target: str) -> None:
    attempts = target_attempts(icmp, target)
    window = view.slice(attempts.t_mono_ns)
    t = attempts.t_mono_ns[window]
    outcome = attempts.outcome[window]
    rtt = attempts.rtt_ms[window]
    reply = outcome == OUTCOME_CODE["reply"]
    blended = blended_transform_factory(ax.transData, ax.transAxes)
    if len(t) <= 2 * view.bins:
        # NaN where a probe was lost breaks the line there: no line across the outage.
        known = outcome != OUTCOME_CODE["unresolved"]
        line = np.where(reply, rtt, np.nan)[known]
        ax.plot(view.x(t[known]), line, ".-", color="#1565c0", ms=2.5, lw=0.6)
        for kind, (marker, colour, y) in LOST_MARKERS.items():
            chosen = outcome == OUTCOME_CODE[kind]
            if chosen.any():
                ax.plot(
                    view.x(t[chosen]),
                    np.full(int(chosen.sum()), y),
                    marker,
                    color=colour,
                    ms=5,
                    ls="none",
                    transform=blended,
                )
    else:
        index = _bins(t, view)
        index = index - index[0]
        replies_rtt = np.where(reply, rtt, np.nan)
        lo = _per_bin(replies_rtt, index, np.fmin)
        hi = _per_bin(replies_rtt, index, np.fmax)
        replied = _count_per_bin(reply, index)
        replies_rtt[~reply] = 0.0  # the same array for the sums: 3.6 M values are 29 MB
        total = _per_bin(replies_rtt, index, np.add)
        del replies_rtt
        mean = np.divide(total, replied, out=np.full(len(replied), np.nan), where=replied > 0)
        x = _centres(view)
        ax.fill_between(x, lo, hi, color="#1565c0", alpha=0.2, step="mid", lw=0)
        ax.plot(x, mean, "-", color="#0d47a1", lw=0.7, drawstyle="steps-mid")
        sent = np.diff(index)
        lost = np.zeros(len(sent), dtype=np.int64)
        for kind, (marker, colour, y) in LOST_MARKERS.items():
            count = _count_per_bin(outcome == OUTCOME_CODE[kind], index)
            lost += count
            columns = count > 0
            if columns.any():
                ax.plot(
                    x[columns],
                    np.full(int(columns.sum()), y),
                    marker,
                    color=colour,
                    ms=5,
                    ls="none",
                    transform=blended,
                )
        twin = ax.twinx()
        fraction = np.divide(lost, sent, out=np.zeros(len(sent)), where=sent > 0)
        twin.fill_between(x, 0, fraction, step="mid", color="#d32f2f", alpha=0.25, lw=0)
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("lost\nper column", fontsize=7)
        twin.tick_params(labelsize=7)
    handles = [
        Line2D([], [], color="#1565c0", marker=".", label="reply RTT")
        if len(t) <= 2 * view.bins
        else Line2D([], [], color="#0d47a1", label="reply RTT: mean, min-max per column")
    ]
    for kind, (marker, colour, _y) in LOST_MARKERS.items():
        label = f"{kind} ({attempts.count(kind)} in the run)"
        handles.append(Line2D([], [], color=colour, marker=marker, ls="none", label=label))
    finite = rtt[reply & np.isfinite(rtt)]
    if len(finite) and float(finite.min()) > 0 and float(finite.max()) > 10 * float(finite.min()):
        # Spikes of 100x the usual RTT stay readable.
        _plain_log_axis(ax, float(finite.min()), float(finite.max()))
    ax.set_ylabel(f"ICMP {target}\nRTT ms", fontsize=8)
    _legend(ax, handles)


def _plain_log_axis(ax: Axes, low: float, high: float) -> None:
    """A log y axis labelled 0.5, 1, 2, 5, 10 (1, 10, 100 over more than two decades, so
    that the labels of a short lane do not run into each other), not 10^x."""
    ax.set_yscale("log")
    decades = np.log10(high / low) if low > 0 and high > low else 1.0
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _steps(records: pd.DataFrame, column: str) -> tuple[IntArray, FloatArray]:
    """Per record: its time and the step (ms) from the previous record of its agent."""
    ordered = records.sort_values(["agent_id", "seq"], kind="stable")
    stamp = ordered[column].to_numpy(np.int64)
    agent = ordered["agent_id"].astype(str).to_numpy()
    step = np.full(len(ordered), np.nan)
    if len(ordered) > 1:
        same = agent[1:] == agent[:-1]
        step[1:] = np.where(same, (stamp[1:] - stamp[:-1]) / 1e6, np.nan)
    t = ordered["t_mono_ns"].to_numpy(np.int64)
    order = np.argsort(t, kind="stable")
    return t[order], step[order]


CONSOLE_COLOURS = {
    "desktop": "#90caf9",
    "connecting": "#546e7a",
    "black": "#212121",
    "unavailable": "#ef9a9a",
}
HOST_COLOURS = ("#8d6e63", "#26a69a", "#7e57c2", "#c0ca33")


def _draw_console(ax: Axes, view: _View, console: pd.DataFrame, hosts: Sequence[str]) -> None:
    """The console's view as spans (top) and the host serving it, its title host (bottom)."""
    times = console["t_mono_ns"].to_numpy(np.int64)
    handles = []
    for rows, key, colours in (
        ((0.35, 0.65), "view", CONSOLE_COLOURS),
        ((0.0, 0.3), "host", None),
    ):
        values = console[key].fillna("none").astype(str).tolist()
        spans: dict[str, list[tuple[float, float]]] = {}
        for state, lo, hi in _state_runs(times, values):
            if hi < view.x0_ns or lo > view.x1_ns:
                continue
            x0 = view.xs(max(lo, view.x0_ns))
            spans.setdefault(state, []).append((x0, view.xs(min(hi, view.x1_ns)) - x0))
        for state, pieces in spans.items():
            if colours is not None:
                colour = colours.get(state, OTHER_STATE_COLOUR)
            elif state in hosts:
                colour = HOST_COLOURS[list(hosts).index(state) % len(HOST_COLOURS)]
            else:
                colour = "#e0e0e0"
            ax.broken_barh(pieces, rows, color=colour, lw=0)
            handles.append(Patch(color=colour, label=state))
    ax.set_ylim(0, 1)
    ax.set_yticks([0.15, 0.5], ["host", "screen"], fontsize=7)
    ax.set_ylabel("console\nview", fontsize=8)
    _legend(ax, handles)


def _draw_heartbeat(ax: Axes, view: _View, heartbeats: pd.DataFrame) -> None:
    t, guest_step = _steps(heartbeats, "guest_mono_ns")
    _, arrival_step = _steps(heartbeats, "recv_mono_ns")
    _series_max(ax, view, t, arrival_step, colour="#90a4ae", label="arrival step")
    _series_max(ax, view, t, guest_step, colour="#2e7d32", label="step on the guest's clock")
    steps = np.concatenate([guest_step, arrival_step])
    steps = steps[np.isfinite(steps) & (steps > 0)]
    _plain_log_axis(
        ax, float(steps.min()) if len(steps) else 1.0, float(steps.max()) if len(steps) else 10.0
    )
    ax.set_ylabel("heartbeat\nstep ms", fontsize=8)
    _legend(ax, ax.get_legend_handles_labels()[0])


def _series_max(
    ax: Axes, view: _View, t: IntArray, values: FloatArray, *, colour: str, label: str
) -> None:
    window = view.slice(t)
    t, values = t[window], values[window]
    if len(t) <= 2 * view.bins:
        # A record's step covers the time since the record before it: steps-pre.
        ok = np.isfinite(values)
        ax.plot(
            view.x(t[ok]),
            values[ok],
            ".-",
            color=colour,
            ms=2,
            lw=0.7,
            drawstyle="steps-pre",
            label=label,
        )
        return
    index = _bins(t, view)
    index = index - index[0]
    peak = _per_bin(values, index, np.fmax)
    ax.plot(_centres(view), peak, "-", color=colour, lw=0.9, label=f"{label} (max per column)")


def _draw_frames(
    figure: Figure, ax: Axes, view: _View, frames: pd.DataFrame, run_path: Path
) -> None:
    t_all = frames["t_mono_ns"].to_numpy(np.int64)
    window = view.slice(t_all)
    shown = frames.iloc[window]
    t = t_all[window]
    if len(t) <= 2 * view.bins:
        ax.vlines(view.x(t), 0.0, 0.15, color="#455a64", lw=0.8)
    else:
        # Too many to tell apart: the columns that hold frames, as runs (a gap shows).
        present = np.diff(_bins(t, view)) > 0
        edges = np.diff(present.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        x0 = view.xs(view.x0_ns)
        spans = [
            (x0 + a * view.column_s, (b - a) * view.column_s)
            for a, b in zip(starts, ends, strict=True)
        ]
        ax.broken_barh(spans, (0.0, 0.15), color="#90a4ae", lw=0)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("guest\nframes", fontsize=8)
    if len(shown) >= 2:
        _thumbnails(figure, ax, view, shown.reset_index(drop=True), t, run_path)


def _thumbnails(
    figure: Figure, ax: Axes, view: _View, frames: pd.DataFrame, t: IntArray, run_path: Path
) -> None:
    """The frames on each side of the longest gap between frames, those that fit.

    Frames before the gap hang to the left of their time, frames after it to
    the right, so the two that straddle the gap show side by side even when
    the gap is a fraction of a pixel.
    """
    gap = int(np.argmax(np.diff(t)))
    wanted = [*range(max(0, gap - 2), gap + 1), *range(gap + 1, min(len(t), gap + 4))]
    px_per_s = _px_per_s(figure, ax, view)
    # The two that straddle the gap first, then the others nearest to it while they fit.
    order = sorted(wanted, key=lambda i: (i not in (gap, gap + 1), abs(i - gap - 0.5)))
    taken: list[tuple[float, float]] = []
    left_px, right_px = view.xs(view.x0_ns) * px_per_s, view.xs(view.x1_ns) * px_per_s
    seqs = frames["seq"].to_numpy(np.int64)
    files = frames["file"].astype(str).to_numpy() if "file" in frames else None
    for i in order:
        x = view.xs(int(t[i]))
        before = i <= gap
        x_px = x * px_per_s
        extent = (x_px - THUMB_WIDTH_PX - 2, x_px) if before else (x_px, x_px + THUMB_WIDTH_PX + 2)
        if extent[0] < left_px or extent[1] > right_px:
            continue  # it would hang out of the lane
        if any(extent[0] < other[1] and other[0] < extent[1] for other in taken):
            continue
        relative = None if files is None else Path(files[i])
        if relative is None or relative.is_absolute() or ".." in relative.parts:
            continue  # only files inside the run folder
        path = run_path / relative
        if not path.is_file():
            continue
        with Image.open(path) as image:
            image.load()
            height = max(1, round(image.height * THUMB_WIDTH_PX / image.width))
            thumb = np.asarray(image.convert("RGB").resize((THUMB_WIDTH_PX, height)))
        box = AnnotationBbox(
            OffsetImage(thumb, zoom=1.0),
            (x, 0.6),
            xycoords=("data", "axes fraction"),
            box_alignment=(1.0, 0.5) if before else (0.0, 0.5),
            frameon=True,
            pad=0.1,
            annotation_clip=True,
        )
        ax.add_artist(box)
        ax.annotate(
            f"#{int(seqs[i])}",
            (x, 0.17),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if before else 3, 0),
            textcoords="offset points",
            ha="right" if before else "left",
            fontsize=7,
        )
        taken.append(extent)


def _px_per_s(figure: Figure, ax: Axes, view: _View) -> float:
    axes_px = ax.get_position().width * figure.get_figwidth() * figure.dpi
    return float(axes_px / ((view.x1_ns - view.x0_ns) / NS_PER_S))


def _event_marks(events: pd.DataFrame) -> list[tuple[int, str, int, int, int]]:
    """(row, label, t, lo, hi) of each event to draw; rows: 2 Hyper-V, 1 harness, 0 truth."""
    marks = []
    for kind, t, lo, hi in zip(
        events["kind"].astype(str),
        events["t_mono_ns"].to_numpy(np.int64),
        events["t_lo_ns"].to_numpy(np.int64),
        events["t_hi_ns"].to_numpy(np.int64),
        strict=True,
    ):
        if kind.startswith("event:"):
            marks.append((2, kind.removeprefix("event:"), int(t), int(lo), int(hi)))
        elif kind.startswith("truth:"):
            marks.append((0, kind.removeprefix("truth:"), int(t), int(t), int(t)))
        elif kind in HARNESS_KINDS or kind.startswith("phase:"):
            marks.append((1, kind.removeprefix("phase:"), int(t), int(t), int(t)))
    return marks


def _draw_events(figure: Figure, ax: Axes, view: _View, events: pd.DataFrame) -> list[_Label]:
    """Markers per row (Hyper-V events with their clock uncertainty, the harness, the lab's
    truth); returns their labels, events at one pixel sharing one."""
    mine = events[events["lane"] == EVENTS_LANE]
    mine = mine[(mine["t_mono_ns"] >= view.x0_ns) & (mine["t_mono_ns"] <= view.x1_ns)]
    rows = {"hypervisor events": 2, "harness": 1, "lab truth": 0}
    styles = {2: ("D", "#37474f", 4), 1: ("|", "#00838f", 9), 0: ("*", "#6d4c41", 7)}
    px_per_s = _px_per_s(figure, ax, view)
    marks = _event_marks(mine)
    labels: list[_Label] = []
    for row in rows.values():
        in_row = sorted((m for m in marks if m[0] == row), key=lambda m: m[2])
        if not in_row:
            continue
        marker, colour, size = styles[row]
        x = view.x(np.array([m[2] for m in in_row], dtype=np.int64))
        if row == 2:
            err = [
                [(m[2] - m[3]) / NS_PER_S for m in in_row],
                [(m[4] - m[2]) / NS_PER_S for m in in_row],
            ]
            ax.errorbar(
                x,
                np.full(len(x), row),
                xerr=err,
                fmt=marker,
                color=colour,
                ms=size,
                capsize=2,
                ls="none",
            )
        else:
            ax.plot(x, np.full(len(x), row), marker, color=colour, ms=size, ls="none")
        # Events within a few pixels of each other share one label.
        clusters: list[tuple[float, list[str]]] = []
        for xi, mark in zip(x, in_row, strict=True):
            if clusters and (xi - clusters[-1][0]) * px_per_s < 4:
                if mark[1] not in clusters[-1][1]:
                    clusters[-1][1].append(mark[1])
            else:
                clusters.append((float(xi), [mark[1]]))
        # In the row's colour: a label placed between two rows still says whose it is.
        labels += [
            _Label(ax, xi, row, " ".join(names), _EVENT_OFFSETS, 6.5, colour)
            for xi, names in clusters
        ]
    ax.set_yticks(list(rows.values()), list(rows), fontsize=8)
    ax.set_ylim(-0.8, 2.8)
    return labels


# -- figures -----------------------------------------------------------------


def _mark_points(
    figure: Figure, axes: Sequence[Axes], view: _View, decomposition: Decomposition
) -> str:
    """Vertical lines at the observed points A-H; returns the caption for the others.

    Points whose letters would touch share one label ("A B"), as in an hour's view.
    """
    top = axes[0]
    blended = blended_transform_factory(top.transData, top.transAxes)
    px_per_s = _px_per_s(figure, top, view)
    missing: dict[str, list[str]] = {}
    groups: list[tuple[list[float], list[str]]] = []
    for point in decomposition.points:
        if point.at is None:
            missing.setdefault(f"{point.status}: {point.note}", []).append(point.letter)
            continue
        x = view.xs(point.at.t_mono_ns)
        for ax in axes:
            ax.axvline(x, color="#424242", lw=0.7, ls=":", zorder=1)
        lo, hi = point.at.earliest, point.at.latest
        top.plot([view.xs(lo), view.xs(hi)], [1.02, 1.02], color="#424242", lw=2, transform=blended)
        groups.append(([x], [point.letter]))
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    font = FontProperties(size=9, weight="bold")

    def span_px(group: tuple[list[float], list[str]]) -> tuple[float, float]:
        width = renderer.get_text_width_height_descent(" ".join(group[1]), font, ismath=False)[0]
        centre = (group[0][0] + group[0][-1]) / 2 * px_per_s
        return centre - width / 2 - 2, centre + width / 2 + 2

    merged = True
    while merged:  # merge neighbours whose letters would touch, until none do
        merged = False
        for i in range(len(groups) - 1):
            if span_px(groups[i])[1] > span_px(groups[i + 1])[0]:
                first, second = groups[i], groups[i + 1]
                groups[i : i + 2] = [(first[0] + second[0], first[1] + second[1])]
                merged = True
                break
    for xs, letters in groups:
        top.text(
            (xs[0] + xs[-1]) / 2,
            1.04,
            " ".join(letters),
            transform=blended,
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
        )
    return "; ".join(f"{', '.join(letters)} {why}" for why, letters in missing.items())


def _draw_witnesses(ax: Axes, view: _View, bars: Sequence[WitnessBar]) -> None:
    """One row per witness bar: the upper bound light, the lower bound dark."""
    colour = WINDOW_COLOURS["network_reconvergence"]
    for row, bar in enumerate(bars):
        lo, hi = view.visible(bar.upper_start_ns, bar.upper_end_ns)
        ax.broken_barh([(lo, hi - lo)], (row - 0.3, 0.6), color=colour, alpha=0.3, lw=0)
        start, end = bar.lower_start_ns, bar.lower_end_ns
        if start is not None and end is not None and start < end:
            lo, hi = view.visible(start, end, 1.0)
            ax.broken_barh([(lo, hi - lo)], (row - 0.3, 0.6), color=colour, alpha=0.8, lw=0)
    ax.set_yticks(range(len(bars)), [bar.label for bar in bars], fontsize=7)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_ylabel("what\napplications\nfelt", fontsize=8)


def _lanes(timeline: Timeline, bars: Sequence[WitnessBar]) -> list[tuple[str, str, float]]:
    """(kind, name, height) of each lane in order."""
    lanes = [("windows", "", 1.3)]
    polls = timeline.polls
    if len(polls):
        hosts = list(dict.fromkeys(polls["host"].astype(str)))
        order = [timeline.source_host, timeline.destination_host]
        hosts.sort(key=lambda h: order.index(h) if h in order else len(order))
        lanes += [("host", host, 1.0) for host in hosts]
    if len(timeline.icmp):
        targets = [t for t in timeline.icmp_targets if (timeline.icmp["target"] == t).any()]
        lanes += [("icmp", target, 1.5) for target in targets]
    if len(timeline.console):
        lanes.append(("console", "", 1.0))
    if len(timeline.heartbeats):
        lanes.append(("heartbeat", "", 1.1))
    if len(timeline.frames):
        lanes.append(("frames", "", 1.6))
    if (timeline.events["lane"] == EVENTS_LANE).any():
        lanes.append(("events", "", 2.0))
    if bars:
        lanes.append(("witnesses", "", 0.25 + 0.2 * len(bars)))
    return lanes


def _figure(
    timeline: Timeline,
    decomposition: Decomposition,
    view: _View,
    title: str,
    bars: Sequence[WitnessBar] = (),
) -> Figure:
    lanes = _lanes(timeline, bars)
    heights = [h for _, _, h in lanes]
    height_in = 1.75 + 1.05 * sum(heights)
    figure = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(
        len(lanes),
        1,
        height_ratios=heights,
        left=LEFT,
        right=RIGHT,
        top=1 - 1.0 / height_in,
        bottom=0.75 / height_in,
    )
    axes: list[Axes] = []
    for i in range(len(lanes)):
        axes.append(figure.add_subplot(grid[i, 0], sharex=axes[0] if axes else None))
    roles = {timeline.source_host: "source", timeline.destination_host: "destination"}
    decomp = decomposition
    guest_or_host = decomp.guest_execution_gap or decomp.hypervisor_blackout
    labels: list[Sequence[_Label]] = []
    for ax, (kind, name, _h) in zip(axes, lanes, strict=True):
        if kind == "windows":
            labels += _draw_windows(ax, view, decomp)
        elif kind == "host":
            _shade(ax, view, decomp.hypervisor_blackout, WINDOW_COLOURS["hypervisor_blackout"])
            _draw_host(ax, view, timeline.polls, name, roles.get(name))
        elif kind == "icmp":
            outage = decomp.network_outage
            if outage is not None and outage.detail.get("target") == name:
                _shade(ax, view, outage, WINDOW_COLOURS["network_outage"])
            _draw_icmp(ax, view, timeline.icmp, name)
        elif kind == "console":
            _shade(ax, view, decomp.console_blackout, WINDOW_COLOURS["console_blackout"])
            hosts = [h for h in (timeline.source_host, timeline.destination_host) if h]
            _draw_console(ax, view, timeline.console, hosts)
        elif kind == "heartbeat":
            _shade(ax, view, guest_or_host, WINDOW_COLOURS["guest_execution_gap"])
            _draw_heartbeat(ax, view, timeline.heartbeats)
        elif kind == "frames":
            _shade(ax, view, guest_or_host, WINDOW_COLOURS["guest_execution_gap"])
        elif kind == "witnesses":
            _shade(ax, view, decomp.network_outage, WINDOW_COLOURS["network_outage"])
            _draw_witnesses(ax, view, bars)
        elif kind == "events":
            _shade(ax, view, decomp.hypervisor_blackout, WINDOW_COLOURS["hypervisor_blackout"])
            labels += [[label] for label in _draw_events(figure, ax, view, timeline.events)]
        ax.grid(axis="x", color="#e0e0e0", lw=0.5)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[:-1]:
        ax.tick_params(axis="x", labelbottom=False)
    axes[0].set_xlim(view.xs(view.x0_ns), view.xs(view.x1_ns))
    # Frames last: thumbnails are placed in pixels, which needs the final limits.
    for ax, (kind, _name, _h) in zip(axes, lanes, strict=True):
        if kind == "frames":
            _draw_frames(figure, ax, view, timeline.frames, timeline.run.path)
    axes[-1].set_xlabel(f"seconds from {view.origin_label}", fontsize=9)
    missing = _mark_points(figure, axes, view, decomp)
    # Labels last too: they are measured in pixels, so that none overlaps another.
    unplaced = _LabelPlacer(figure).place_all(labels)

    origin_utc = timeline.clock.utc_ns(view.origin_ns)
    top = axes[0].secondary_xaxis("top")
    digits = 23 if view.x1_ns - view.x0_ns < 120 * NS_PER_S else 19  # HH:MM:SS[.mmm]
    top.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: _utc_label(origin_utc + round(x * NS_PER_S), digits))
    )
    top.xaxis.set_major_locator(MaxNLocator(7))
    top.tick_params(labelsize=7, pad=18)
    figure.text(LEFT, 1 - 0.12 / height_in, title, fontsize=11, va="top")
    caption = "top axis: UTC (harness clock)"
    if missing:
        caption += "; not on the timeline: " + missing
    if unplaced:
        caption += "; labels without room here: " + ", ".join(unplaced)
    figure.text(LEFT, 0.08 / height_in, caption, fontsize=7, va="bottom", wrap=True)
    return figure


def _utc_label(utc_ns: int, digits: int) -> str:
    return utc_iso(utc_ns)[11:digits]


def _blackout_span(decomposition: Decomposition) -> tuple[int, int] | None:
    lows, highs = [], []
    for component in decomposition.components():
        if component.start is not None:
            lows.append(component.start.earliest)
        if component.end is not None:
            highs.append(component.end.latest)
    if not lows or not highs:
        return None
    return min(lows), max(highs)


def _bins_for(width_in: float) -> int:
    return max(100, int(width_in * DPI * (RIGHT - LEFT)))


def timeline_figures(
    timeline: Timeline,
    decomposition: Decomposition,
    *,
    zoom_s: float = ZOOM_S,
    bars: Sequence[WitnessBar] = (),
) -> tuple[Figure, Figure | None]:
    """The whole-run figure and the zoom on the blackout (None without a blackout);
    ``bars``: the lane 'what applications felt' (``witness_bars``), none by default."""
    first, last = timeline.span_ns()
    if last <= first:
        last = first + NS_PER_S
    bins = _bins_for(WIDTH_IN)
    start_label = timeline.utc_iso(first) or ""
    overview = _View(first, last, first, bins, f"the first record ({start_label[:19]}Z)")
    hosts = ""
    if timeline.source_host and timeline.destination_host:
        hosts = f"{timeline.source_host} -> {timeline.destination_host}"
    what = " ".join(part for part in (timeline.vm, hosts) if part)
    title = f"{timeline.run.manifest.run_id}: {what}" if what else timeline.run.manifest.run_id
    whole = _figure(timeline, decomposition, overview, title, bars)

    span = _blackout_span(decomposition)
    if span is None:
        return whole, None
    reach = round(zoom_s * NS_PER_S)
    pause = decomposition.point("B").at
    origin, label = (
        (pause.t_mono_ns, "B (the source paused the VM, best guess)")
        if pause is not None
        else (span[0], "the start of the blackout windows")
    )
    zoom = _View(span[0] - reach, span[1] + reach, origin, bins, label)
    window = (
        f"zoom: {zoom_s:g} s before the first blackout window to {zoom_s:g} s after the last, "
        f"{_utc_label(timeline.clock.utc_ns(zoom.x0_ns), 23)} - "
        f"{_utc_label(timeline.clock.utc_ns(zoom.x1_ns), 23)} UTC "
        f"({(zoom.x1_ns - zoom.x0_ns) / NS_PER_S:.1f} s)"
    )
    return whole, _figure(timeline, decomposition, zoom, f"{title}\n{window}", bars)


def write_timeline_figures(
    derived: Derived, out_dir: str | os.PathLike[str] | None = None, *, zoom_s: float = ZOOM_S
) -> list[Path]:
    """Write ``timeline.png``, ``timeline.svg`` and ``timeline-zoom.png`` of a derived run
    into ``out_dir`` (default: the run folder's ``derived/``); return the paths written
    (no zoom without a blackout)."""
    # The witnesses no peer has (TCP, direction of loss), one row each.
    bars = witness_bars(derived.witnesses)
    whole, zoom = timeline_figures(
        derived.timeline, derived.decomposition, zoom_s=zoom_s, bars=bars
    )
    out = derived.run.path / DERIVED_DIR if out_dir is None else Path(out_dir)
    written = [
        replace_file(out / OVERVIEW_PNG, _saver(whole, "png", {"Software": None})),
        replace_file(out / OVERVIEW_SVG, _saver(whole, "svg", {"Date": None})),
    ]
    if zoom is not None:
        written.append(replace_file(out / ZOOM_PNG, _saver(zoom, "png", {"Software": None})))
    return written


def _saver(figure: Any, fmt: str, metadata: dict[str, Any]) -> Callable[[BinaryIO], None]:
    def save(handle: BinaryIO) -> None:
        figure.savefig(handle, format=fmt, metadata=metadata)

    return save


def plot_timeline(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    zoom_s: float = ZOOM_S,
) -> list[Path]:
    """``write_timeline_figures`` of ``derive(run_dir)``: the figures of a run folder."""
    return write_timeline_figures(derive(run_dir), out_dir, zoom_s=zoom_s)
