"""The report's two figures: every run's blackout as a bar with its bounds, and the
distribution per group beside the baseline's.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from migration_blackout.analysis.report.model import (
    Report,
    directions_in_order,
    format_limit,
    included_blackouts,
)

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
    directions = directions_in_order(report.runs, report.baseline_runs)
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
                label=f"max {format_limit(limit)} ms",
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
    directions = directions_in_order(report.runs, report.baseline_runs)
    rows: list[tuple[str, str, list[float], int]] = []  # (direction, role, values, open)
    for direction in directions:
        for role, runs in (("baseline", report.baseline_runs), ("runs", report.runs)):
            upper = [
                r.blackout.conservative_ms
                for r in included_blackouts(runs, direction)
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
        f"Blackout upper bound per {report.group_title}\n(points: runs; box: quartiles, "
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
            limit,
            color=_OPEN_COLOUR,
            linestyle="--",
            linewidth=1,
            label=f"max {format_limit(limit)} ms",
        )
        figure.legend(fontsize=8, loc="outside lower center", frameon=False)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG (Agg, through the Figure itself: no pyplot, no global backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
