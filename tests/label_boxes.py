"""Where a figure's words are, in pixels: for tests that fail when labels overlap, leave
the figure, or a legend covers data (the plots must be readable, not just drawn)."""

from __future__ import annotations

from itertools import combinations

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.transforms import Bbox


def _shown(text: Text) -> bool:
    return text.get_visible() and bool(text.get_text().strip())


def label_boxes(figure: Figure) -> list[tuple[str, Bbox]]:
    """(description, box) of every text drawn: titles, annotations, tick labels of each
    axis, figure texts, and each legend as one box."""
    if not hasattr(figure.canvas, "get_renderer"):
        FigureCanvasAgg(figure)  # a Figure made without pyplot has no renderer yet
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    figure.draw_without_rendering()  # final tick labels and layout
    boxes: list[tuple[str, Bbox]] = []

    def add(what: str, text: Text) -> None:
        if _shown(text):
            boxes.append((f"{what} {text.get_text()!r}", text.get_window_extent(renderer)))

    for text in figure.texts:
        add("figure text", text)
    for legend in figure.legends:
        boxes.append(("figure legend", legend.get_window_extent(renderer)))
    # With their child axes: a secondary axis (the timeline's UTC axis) has tick labels too.
    axes: list[Axes] = [a for ax in figure.axes for a in (ax, *ax.child_axes)]
    for ax in axes:
        for text in ax.texts:
            add("text", text)
        add("title", ax.title)
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                # Ticks the locator made beyond the view interval are not drawn.
                if low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    add("tick label", tick.label1)
                    add("tick label", tick.label2)
        add("axis label", ax.xaxis.label)
        add("axis label", ax.yaxis.label)
        legend = ax.get_legend()
        if isinstance(legend, Legend):
            boxes.append(("legend", legend.get_window_extent(renderer)))
    return boxes


def readability_problems(figure: Figure) -> list[str]:
    """Overlapping label boxes, boxes outside the figure, legends over an axes' data area."""
    boxes = label_boxes(figure)
    problems = []
    whole = figure.bbox
    for what, box in boxes:
        if box.x0 < whole.x0 - 1 or box.x1 > whole.x1 + 1 or box.y0 < whole.y0 - 1:
            problems.append(f"{what} runs off the figure")
        if box.y1 > whole.y1 + 1:
            problems.append(f"{what} runs off the figure")
    for (first, a), (second, b) in combinations(boxes, 2):
        if a.overlaps(b) and a.intersection(a, b) is not None:
            overlap = Bbox.intersection(a, b)
            if overlap is not None and overlap.width > 0.5 and overlap.height > 0.5:
                problems.append(f"{first} overlaps {second}")
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes)]
    for legend in legends:
        if not isinstance(legend, Legend):
            continue
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            overlap = Bbox.intersection(box, ax.get_window_extent(renderer))
            if overlap is not None and overlap.width > 0.5 and overlap.height > 0.5:
                problems.append(f"a legend covers the data area of {ax.get_ylabel()!r}")
    return problems
