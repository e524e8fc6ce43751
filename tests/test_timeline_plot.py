"""analysis/plot.py: the files exist, decode, and stay small however long the run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from label_boxes import readability_problems
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox
from PIL import Image
from test_timeline_runs import Scenario, write_run

from migration_blackout.analysis.decompose import decompose
from migration_blackout.analysis.plot import (
    OVERVIEW_PNG,
    OVERVIEW_SVG,
    ZOOM_PNG,
    _bins_for,
    plot_timeline,
    timeline_figures,
)
from migration_blackout.analysis.timeline import build_timeline

DATA = Path(__file__).resolve().parent / "data" / "runs"
KIB = 1024


def _check_png(path: Path, min_kib: int) -> None:
    assert path.stat().st_size > min_kib * KIB, path
    with Image.open(path) as image:
        image.load()  # decodes every pixel
        assert image.format == "PNG"
        assert image.width == 1600 and image.height > 600
        # Not a blank canvas: many colours were drawn.
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50


def test_the_lab_sample_plots_to_png_svg_and_zoom(tmp_path: Path) -> None:
    written = plot_timeline(DATA / "lab-v1-sample", tmp_path / "out")
    assert [p.name for p in written] == [OVERVIEW_PNG, OVERVIEW_SVG, ZOOM_PNG]
    _check_png(tmp_path / "out" / OVERVIEW_PNG, 60)
    _check_png(tmp_path / "out" / ZOOM_PNG, 60)
    svg = tmp_path / "out" / OVERVIEW_SVG
    assert svg.stat().st_size > 100 * KIB
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    # Nothing was written into the frozen sample.
    assert not (DATA / "lab-v1-sample" / "derived" / OVERVIEW_PNG).exists()


def test_plot_timeline_defaults_to_the_run_folders_derived(tmp_path: Path) -> None:
    write_run(tmp_path / "run", Scenario(guest="both"))
    written = plot_timeline(tmp_path / "run")
    assert {p.parent for p in written} == {tmp_path / "run" / "derived"}
    _check_png(tmp_path / "run" / "derived" / ZOOM_PNG, 60)


def test_the_zoom_shows_thumbnails_of_the_frames_around_the_gap(tmp_path: Path) -> None:
    write_run(tmp_path / "run", Scenario(guest="both", console=True))
    timeline = build_timeline(tmp_path / "run")
    _whole, zoom = timeline_figures(timeline, decompose(timeline))
    assert zoom is not None
    thumbnails = [a for ax in zoom.axes for a in ax.artists if isinstance(a, AnnotationBbox)]
    assert len(thumbnails) >= 2
    lanes = [ax.get_ylabel() for ax in zoom.axes]
    assert {"heartbeat\nstep ms", "guest\nframes", "console\nview"} <= set(lanes)
    # Every thumbnail stays inside the lane.
    zoom.canvas.draw()
    for box in thumbnails:
        extent = box.get_window_extent()
        axes = box.axes.get_window_extent()
        assert axes.x0 - 1 <= extent.x0 and extent.x1 <= axes.x1 + 1


def test_a_long_fast_run_is_drawn_per_pixel_column_not_per_probe(tmp_path: Path) -> None:
    # 60 s at 1 kHz: 58 000 probes, far more than the figure has pixel columns.
    write_run(
        tmp_path / "run",
        Scenario(end_ms=60_000.0, icmp_interval_ms=1.0, guest="heartbeats"),
    )
    timeline = build_timeline(tmp_path / "run")
    assert len(timeline.icmp) > 50_000
    whole, zoom = timeline_figures(timeline, decompose(timeline))
    assert zoom is not None
    bins = _bins_for(16.0)
    for figure in (whole, zoom):
        points = sum(len(line.get_xdata()) for ax in figure.axes for line in ax.lines)
        assert points < 12 * bins
    whole.savefig(tmp_path / "whole.png")
    _check_png(tmp_path / "whole.png", 40)


def test_an_icmp_only_run_plots_its_lanes(tmp_path: Path) -> None:
    written = plot_timeline(DATA / "v1-small", tmp_path)
    assert len(written) == 3
    timeline = build_timeline(DATA / "v1-small")
    whole, _zoom = timeline_figures(timeline, decompose(timeline))
    labels = [ax.get_ylabel() for ax in whole.axes]
    assert labels[1:] == ["ICMP 10.0.0.2\nRTT ms", "ICMP 10.0.0.3\nRTT ms"]


def test_the_readability_check_catches_overlaps_and_covered_data() -> None:
    """The check below fails on what it is meant to catch."""
    figure = Figure(figsize=(4, 3))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], label="data")
    ax.annotate("move_vm_return settling", (0.5, 0.5))
    ax.annotate("network_restored", (0.55, 0.5))
    ax.annotate("runs off the right edge of the figure", (0.9, 0.2))
    ax.legend(loc="center")
    problems = readability_problems(figure)
    assert any("overlaps text 'network_restored'" in p for p in problems), problems
    assert any("runs off the figure" in p for p in problems), problems
    assert any("a legend covers the data area" in p for p in problems), problems


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(),
        Scenario(guest="both", console=True),
        Scenario(unreachable_ms=(4400.0, 4800.0), guest="heartbeats"),
    ],
    ids=["hosts-icmp", "guest-and-console", "unreachable"],
)
def test_labels_never_collide_run_off_or_cover_data(tmp_path: Path, scenario: Scenario) -> None:
    write_run(tmp_path / "run", scenario)
    timeline = build_timeline(tmp_path / "run")
    for figure in timeline_figures(timeline, decompose(timeline)):
        assert figure is not None
        assert readability_problems(figure) == []


def test_the_lab_sample_reads_without_collisions() -> None:
    timeline = build_timeline(DATA / "lab-v1-sample")
    whole, zoom = timeline_figures(timeline, decompose(timeline))
    assert zoom is not None
    for figure in (whole, zoom):
        assert readability_problems(figure) == []
    # The zoom says which window it shows, and shows that window.
    title = zoom.texts[0].get_text()
    assert "zoom: 3 s before the first blackout window to 3 s after the last" in title
    shown = zoom.axes[0].get_xlim()
    seconds = float(title.rsplit("(", 1)[1].split(" s)")[0])
    assert abs((shown[1] - shown[0]) - seconds) < 0.05
