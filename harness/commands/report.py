"""``measure report``: one report over many run folders, optionally against a baseline.

Finds the run folders (run folders, sessions, parents of runs, globs, list
files), reads each (building a missing ``derived/summary.json``), checks the
thresholds and, with a baseline, the regression verdict, and writes the
requested outputs. Returns the exit code instead of exiting: 0 every check
passed (or nothing to check), 1 a threshold was exceeded or a regression found,
2 bad input (a missing folder, an unreadable summary, an output that cannot be
written); nothing is written on bad input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from migration_blackout.analysis.report.junit import render_junit
from migration_blackout.analysis.report.model import Report, build_report
from migration_blackout.analysis.report.renderers import (
    format_report_table,
    render_html,
    render_markdown,
    report_document,
)
from migration_blackout.runformat import RunFormatError, Thresholds

from .. import exitcodes
from ..runwriter import describe_error


@dataclass(frozen=True)
class ReportResult:
    """What ``run`` did.

    ``text``: the comparison table for the terminal, ending with the verdict
    (or the error). ``markdown``: the Markdown report (also when it was not
    written to a file), None on bad input. ``document``: the report as JSON
    text (``--json``), None on bad input. ``written``: the files written.
    ``error``: the bad-input message when ``exit_code`` is 2.
    """

    exit_code: int
    report: Report | None
    text: str
    markdown: str | None
    written: tuple[Path, ...]
    error: str | None = None
    document: str | None = None


def _bad_input(message: str) -> ReportResult:
    return ReportResult(
        exit_code=exitcodes.USAGE,
        report=None,
        text=f"error: {message}\n",
        markdown=None,
        written=(),
        error=message,
    )


def run(
    *,
    run_dirs: Sequence[Path],
    baseline_dirs: Sequence[Path] = (),
    html: Path | None = None,
    markdown: Path | None = None,
    junit: Path | None = None,
    thresholds: Thresholds | None = None,
    group_by: Sequence[str] = (),
) -> ReportResult:
    """Report on ``run_dirs`` (against ``baseline_dirs``) and write the outputs asked for.

    Both take what ``analysis.report.find_run_folders`` takes; ``group_by``
    names labels whose values split the statistics beside the direction.
    """
    try:
        report = build_report(
            run_dirs, baseline_dirs=baseline_dirs, thresholds=thresholds, group_by=group_by
        )
    except RunFormatError as exc:
        return _bad_input(str(exc))
    except OSError as exc:  # derived/ could not be rebuilt (not a folder, a full disk)
        return _bad_input(f"cannot rebuild a run's derived files: {describe_error(exc)}")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        return _bad_input(f"a raw record this version cannot read: {type(exc).__name__}: {exc}")

    # Render everything before writing anything, so a failure leaves no partial set.
    markdown_text = render_markdown(report)
    outputs: list[tuple[Path, str]] = []
    if html is not None:
        outputs.append((Path(html), render_html(report)))
    if markdown is not None:
        outputs.append((Path(markdown), markdown_text))
    if junit is not None:
        outputs.append((Path(junit), render_junit(report)))
    written: list[Path] = []
    for path, text in outputs:
        try:
            # Plain write, not write-aside-and-rename: the target may be
            # $GITHUB_STEP_SUMMARY or /dev/stdout.
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            return _bad_input(f"cannot write {path}: {exc}")
        written.append(path)

    return ReportResult(
        exit_code=exitcodes.OK if report.passed else exitcodes.MIGRATION_FAILED,
        report=report,
        text=format_report_table(report),
        markdown=markdown_text,
        written=tuple(written),
        document=json.dumps(report_document(report), indent=2) + "\n",
    )
