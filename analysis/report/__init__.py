"""The report over many run folders: blackouts per direction, threshold checks and a
regression verdict against a baseline, as a table, HTML, Markdown, JSON and JUnit XML.

``runs`` reads run folders into ``ReportedRun`` (building a missing
``derived/summary.json``) and finds them from what a user types; ``model``
builds the ``Report`` (statistics, checks, the regression verdict); ``plots``
draws its figures; ``renderers`` turns it into Markdown, HTML, the terminal's
table and the JSON document; ``junit`` into JUnit XML. Nothing here prints,
exits or talks to a host. docs/reports.md describes the outputs; the names
below are its Python API (and ``model``'s docstring which figure counts).
"""

from migration_blackout.analysis.report.junit import render_junit
from migration_blackout.analysis.report.model import Report, build_report, direction_stats
from migration_blackout.analysis.report.plots import (
    figure_png,
    plot_direction_distributions,
    plot_run_blackouts,
)
from migration_blackout.analysis.report.renderers import (
    direction_stats_json,
    format_report_table,
    render_html,
    render_markdown,
    report_document,
)
from migration_blackout.analysis.report.runs import find_run_folders, is_run_folder, read_run
from migration_blackout.runformat import Thresholds

__all__ = [
    "Report",
    "Thresholds",
    "build_report",
    "direction_stats",
    "direction_stats_json",
    "figure_png",
    "find_run_folders",
    "format_report_table",
    "is_run_folder",
    "plot_direction_distributions",
    "plot_run_blackouts",
    "read_run",
    "render_html",
    "render_junit",
    "render_markdown",
    "report_document",
]
