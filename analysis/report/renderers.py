"""The report as text: one document of blocks rendered as Markdown (a CI summary) or
HTML (a page with the figures), the terminal's table, and the JSON document
(``measure report --json``; ``runformat.REPORT_SCHEMA_VERSION``).
"""

from __future__ import annotations

import base64
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from migration_blackout.analysis.compare import (
    format_ms,
    format_p,
    format_pct,
)
from migration_blackout.analysis.render import text_table
from migration_blackout.analysis.report.model import (
    Check,
    CheckOutcome,
    DirectionStats,
    FigureStats,
    Report,
    format_limit,
    regression_skip_reason,
)
from migration_blackout.analysis.report.plots import (
    figure_png,
    plot_direction_distributions,
    plot_run_blackouts,
)
from migration_blackout.analysis.report.runs import ReportedRun
from migration_blackout.runformat import (
    REPORT_SCHEMA_VERSION,
    Thresholds,
)

# Above this many runs the Markdown per-run table folds into <details>.
MARKDOWN_FOLD_RUNS = 20


# --- the document, rendered as Markdown or HTML ------------------------------------------


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Paragraph:
    text: str
    lead: str | None = None  # a bold word before the text ("PASS", "FAIL")
    lead_class: str | None = None


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Details:
    summary: str
    blocks: tuple[_Block, ...]


@dataclass(frozen=True)
class _Image:
    png: bytes
    alt: str
    caption: str


_Block = _Heading | _Paragraph | _Table | _Bullets | _Details | _Image


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _verdict_line(report: Report) -> tuple[str, str]:
    """("PASS" or "FAIL", the sentence after it), e.g. "4 checks passed; 2 skipped: no
    baseline" or "1 of 6 checks failed (max_blackout_ms); 5 passed"."""
    if not report.checks:
        return "PASS", "nothing to check: no threshold was set and no baseline given"
    failed = report.failed_checks
    passed = [c for c in report.checks if c.outcome is CheckOutcome.PASSED]
    skipped: dict[str, int] = {}
    for check in report.checks:
        if check.outcome is CheckOutcome.SKIPPED:
            reason = check.skip_reason or "not applicable"
            skipped[reason] = skipped.get(reason, 0) + 1
    parts: list[str] = []

    def add(count: int, what: str) -> None:
        # The first part names the checks ("2 checks skipped"), the others need not.
        parts.append(f"{count} {what}" if parts else f"{_plural(count, 'check')} {what}")

    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        parts.append(f"{len(failed)} of {_plural(len(report.checks), 'check')} failed ({names})")
    if passed:
        add(len(passed), "passed")
    for reason, count in skipped.items():
        add(count, f"skipped: {reason}")
    return ("FAIL" if failed else "PASS"), "; ".join(parts)


def _run_counts(runs: Sequence[ReportedRun]) -> str:
    included = sum(1 for r in runs if r.included)
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({included} in the statistics)"


def _thresholds_text(thresholds: Thresholds, has_baseline: bool) -> str:
    def show(value: float | int | None) -> str:
        return "not set" if value is None else format_limit(value)

    regression = (
        f"{format_limit(thresholds.regression_pct)} %"
        + (" (default)" if thresholds.max_regression_pct is None else "")
        + ("" if has_baseline else ", unused without a baseline")
    )
    tcp = (
        ""
        if thresholds.max_tcp_stall_ms is None
        else f", max_tcp_stall_ms {show(thresholds.max_tcp_stall_ms)}"
    )
    return (
        f"Thresholds: max_blackout_ms {show(thresholds.max_blackout_ms)}, "
        f"max_timeouts {show(thresholds.max_timeouts)}{tcp}, max_regression_pct {regression}."
    )


_FIGURE_NOTE = (
    "Blackouts in ms. Thresholds and the regression test use the upper bound (last reply "
    "before to first reply after the outage): the guest was silent for at most that long. "
    "The lower bound (first to last lost probe) is what the losses prove; the estimate is "
    'lost probes x probe interval. "open": a blackout without an upper bound.'
)


def _stats_rows(role: str, stats: Sequence[DirectionStats]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in stats:
        for label, figure in (
            ("upper (checked)", entry.upper),
            ("estimate", entry.estimate),
            ("lower", entry.lower),
        ):
            rows.append(
                (
                    entry.direction,
                    role,
                    str(figure.n),
                    label,
                    format_ms(figure.median_ms),
                    format_ms(figure.p95_ms),
                    format_ms(figure.max_ms),
                )
            )
    return rows


def _tcp_cell(run: ReportedRun) -> str:
    stall = run.tcp_stall
    if stall is None:
        return "-"
    broke = "" if stall.survived else ", broke"
    return f"{format_ms(stall.upper_ms)} ({stall.direction}{broke})"


def _brownout_cell(run: ReportedRun) -> str:
    brownout = run.brownout
    if brownout is None:
        return "-"
    beside = ""
    if brownout.hyperv_ms is not None:
        beside = f", Hyper-V {format_ms(brownout.hyperv_ms)}"
    elif brownout.qemu_throttle_pct is not None:
        beside = f", QEMU throttle {brownout.qemu_throttle_pct} %"
    return f"{format_ms(brownout.duration_ms)} (rate {brownout.work_rate:.2f}{beside})"


def _run_rows(
    runs: Sequence[ReportedRun],
    checks: Mapping[str, list[Check]],
    *,
    with_labels: bool = False,
    with_tcp: bool = False,
    with_brownout: bool = False,
) -> list[tuple[str, ...]]:
    rows = []
    for run in runs:
        blackout = run.blackout if run.included else None
        run_checks_ = checks.get(run.run_id, [])
        failed = [
            c.name for c in run_checks_ if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
        ]
        if not run_checks_:
            verdict = "-"
        elif failed:
            verdict = "FAIL: " + ", ".join(failed)
        elif all(c.outcome is CheckOutcome.SKIPPED for c in run_checks_):
            verdict = "skipped"
        else:
            verdict = "pass"
        status = run.status if run.included else f"{run.status} (excluded)"
        if blackout is None:
            figures: tuple[str, ...] = ("-",) * 6
        else:
            figures = (
                format_ms(blackout.lower_ms),
                format_ms(blackout.estimate_ms),
                "open" if blackout.upper_ms is None else format_ms(blackout.upper_ms),
                str(blackout.lost),
                f"{blackout.timeouts} / {blackout.timeouts_outside}",
                f"{blackout.unreachable} / {blackout.unreachable_outside}",
            )
        labels = (_labels_text(run.labels),) if with_labels else ()
        rows.append(
            (
                run.run_id,
                status,
                run.direction,
                *labels,
                *figures,
                *((_tcp_cell(run),) if with_tcp else ()),
                *((_brownout_cell(run),) if with_brownout else ()),
                run.hypervisor_says or "-",
                verdict,
            )
        )
    return rows


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items()) or "-"


def _has_labels(report: Report) -> bool:
    return any(r.labels for r in (*report.runs, *report.baseline_runs))


_RUN_HEADERS = (
    "run",
    "status",
    "direction",
    "lower ms",
    "estimate ms",
    "upper ms",
    "lost",
    "timeouts in / outside",
    "unreachable in / outside",
    "hypervisor says",
    "checks",
)
_RUN_NUMERIC = frozenset(range(3, 9))


def _stats_blocks(report: Report) -> list[_Block]:
    baseline_of = {stats.direction: stats for stats in report.baseline_directions}
    rows = []
    for stats in report.directions:
        rows += _stats_rows("runs", [stats])
        if stats.direction in baseline_of:
            rows += _stats_rows("baseline", [baseline_of.pop(stats.direction)])
    rows += _stats_rows("baseline", list(baseline_of.values()))
    headers = (report.group_title, "set", "runs", "figure", "median ms", "p95 ms", "max ms")
    return [
        _Heading(3, "Blackout per " + report.group_title),
        _Paragraph(_FIGURE_NOTE),
        _Table(headers, tuple(rows), frozenset({2, 4, 5, 6})),
    ]


def _regression_blocks(report: Report) -> list[_Block]:
    rows = []
    for entry in report.regressions:
        result, test = entry.result, entry.result.test
        rows.append(
            (
                entry.direction,
                result.verdict.value,
                f"{result.n_candidate} / {result.n_baseline}",
                f"{format_ms(result.candidate_median_ms)} / {format_ms(result.baseline_median_ms)}",
                format_pct(result.median_increase_pct),
                "-" if test is None else f"{test.u:g} of {test.n_candidate * test.n_baseline}",
                "-" if test is None else f"{format_p(test.p_value)} ({test.method})",
            )
        )
    headers = (
        *(report.group_title, "verdict", "runs / baseline", "median upper ms: runs / baseline"),
        *("change", "U", "one-sided p"),
    )
    explanation = (
        "A regression needs both: the runs' upper bounds stochastically larger than the "
        "baseline's (one-sided Mann-Whitney U test, p <= alpha 0.05) and a median more than "
        f"{format_limit(report.thresholds.regression_pct)} % above the baseline's. "
        'With fewer than 3 runs on a side the verdict is "insufficient data".'
    )
    return [
        _Heading(3, "Regression against the baseline"),
        _Paragraph(explanation),
        _Table(headers, tuple(rows), frozenset({2, 3, 4, 5, 6})),
        _Bullets(tuple(f"{r.direction}: {r.result.reason}" for r in report.regressions)),
    ]


def _plot_blocks(report: Report) -> list[_Block]:
    blocks: list[_Block] = [
        _Heading(3, "Plots"),
        _Image(
            figure_png(plot_run_blackouts(report)),
            "blackout per run",
            "Per run: the bar is the estimate, the whisker runs from the lower to the upper "
            "bound. Runs left out of the statistics are not drawn.",
        ),
    ]
    distribution = plot_direction_distributions(report)
    if distribution is not None:
        beside = ", the baseline beside them." if report.baseline_runs else "."
        blocks.append(
            _Image(
                figure_png(distribution),
                "blackout upper bound per direction",
                f"Per direction: the upper bounds of the runs{beside}",
            )
        )
    return blocks


def _run_blocks(report: Report) -> list[_Block]:
    blocks: list[_Block] = []
    checks = report.checks_by_run()
    with_labels = _has_labels(report)
    headers: tuple[str, ...] = _RUN_HEADERS
    numeric = _RUN_NUMERIC
    if with_labels:
        headers = (*_RUN_HEADERS[:3], "labels", *_RUN_HEADERS[3:])
        numeric = frozenset(i + 1 for i in _RUN_NUMERIC)
    # A column for the TCP stream's stall when a run has one (--witnesses).
    with_tcp = any(r.tcp_stall for r in (*report.runs, *report.baseline_runs))
    if with_tcp:
        at = headers.index("hypervisor says")
        headers = (*headers[:at], "TCP stall ms", *headers[at:])
    # And one for the guest's brownout when a run measured one (guest agent 1.1).
    with_brownout = any(r.brownout for r in (*report.runs, *report.baseline_runs))
    if with_brownout:
        at = headers.index("hypervisor says")
        headers = (*headers[:at], "brownout ms", *headers[at:])
    for title, runs in (("Runs", report.runs), ("Baseline runs", report.baseline_runs)):
        if not runs:
            continue
        rows = _run_rows(
            runs, checks, with_labels=with_labels, with_tcp=with_tcp, with_brownout=with_brownout
        )
        table = _Table(headers, tuple(rows), numeric)
        blocks.append(_Heading(3, title))
        blocks.append(
            _Details(f"{len(runs)} runs", (table,)) if len(runs) > MARKDOWN_FOLD_RUNS else table
        )
    return blocks


def _document(report: Report, *, with_plots: bool) -> list[_Block]:
    lead, verdict = _verdict_line(report)
    runs = _run_counts(report.runs)
    if report.baseline_runs:
        runs += f"; baseline {_run_counts(report.baseline_runs)}"
    blocks: list[_Block] = [
        _Heading(2, "Migration blackout report"),
        _Paragraph(verdict, lead=lead, lead_class="pass" if lead == "PASS" else "fail"),
        _Paragraph(f"{runs}. {report.generated_by}, {report.generated_utc}."),
        _Paragraph(_thresholds_text(report.thresholds, bool(report.baseline_runs))),
    ]
    if report.failed_checks:
        rows = tuple((c.name, c.subject, c.outcome.value, c.message) for c in report.failed_checks)
        blocks.append(_Heading(3, "Failed checks"))
        blocks.append(_Table(("check", "run or direction", "outcome", "why"), rows))
    blocks += _stats_blocks(report)
    if report.regressions:
        blocks += _regression_blocks(report)
    if with_plots:
        blocks += _plot_blocks(report)
    blocks += _run_blocks(report)
    if report.notes:
        blocks += [_Heading(3, "Notes"), _Bullets(report.notes)]
    return blocks


# Escaped: what would start markup in the middle of a line; "<" only before what
# could open an HTML tag, so "->" and "<=" stay readable in the raw file.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*|]|<(?=[A-Za-z/!?]))")


def _md(text: str) -> str:
    """Text as literal Markdown (GitHub): special characters escaped, one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _markdown_blocks(blocks: Sequence[_Block]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            lines += ["#" * block.level + " " + _md(block.text), ""]
        elif isinstance(block, _Paragraph):
            lead = f"**{_md(block.lead)}**: " if block.lead else ""
            lines += [lead + _md(block.text), ""]
        elif isinstance(block, _Table):
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.headers))]
            lines.append("| " + " | ".join(_md(h) for h in block.headers) + " |")
            lines.append("| " + " | ".join(align) + " |")
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, _Bullets):
            lines += [f"- {_md(item)}" for item in block.items]
            lines.append("")
        elif isinstance(block, _Details):
            lines += ["<details>", f"<summary>{escape(block.summary)}</summary>", ""]
            lines += _markdown_blocks(block.blocks)
            lines += ["</details>", ""]
        # Images are left out: GitHub's job summary does not show data: URIs.
    return lines


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown, for a CI job summary ($GITHUB_STEP_SUMMARY)."""
    return "\n".join(_markdown_blocks(_document(report, with_plots=False))).rstrip("\n") + "\n"


def _html_blocks(blocks: Sequence[_Block]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            lead = ""
            if block.lead:
                css = f' class="verdict {block.lead_class}"' if block.lead_class else ""
                lead = f"<strong{css}>{escape(block.lead)}</strong> "
            out.append(f"<p>{lead}{escape(block.text)}</p>")
        elif isinstance(block, _Table):
            out.append("<table>")
            out.append(
                "<thead><tr>"
                + "".join(f"<th>{escape(h)}</th>" for h in block.headers)
                + "</tr></thead>"
            )
            out.append("<tbody>")
            for row in block.rows:
                cells = "".join(
                    f'<td class="num">{escape(cell)}</td>'
                    if i in block.numeric
                    else f"<td>{escape(cell)}</td>"
                    for i, cell in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, _Bullets):
            out.append(
                "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
            )
        elif isinstance(block, _Details):
            out.append(f"<details open><summary>{escape(block.summary)}</summary>")
            out += _html_blocks(block.blocks)
            out.append("</details>")
        elif isinstance(block, _Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure><img alt="{escape(block.alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>"
            )
    return out


_HTML_PAGE = string.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 90em;
       color: #202124; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #dadce0; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f1f3f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { padding: 0.15em 0.6em; border-radius: 0.2em; }
.pass { background: #e6f4ea; color: #137333; }
.fail { background: #fce8e6; color: #a50e0e; }
figure { margin: 1em 0; }
img { max-width: 100%; height: auto; }
figcaption { color: #5f6368; font-size: 0.9em; }
</style>
</head>
<body>
$body
</body>
</html>
"""
)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: plots inline as PNG data URIs, no links out."""
    lead, _ = _verdict_line(report)
    return _HTML_PAGE.substitute(
        title=escape(f"Migration blackout report: {lead}"),
        body="\n".join(_html_blocks(_document(report, with_plots=True))),
    )


def format_verdict(report: Report) -> str:
    """A few plain-text lines for the terminal: the verdict and every failed check."""
    lead, verdict = _verdict_line(report)
    lines = [f"{lead}: {verdict}"]
    lines += [
        f"  {c.outcome.value} {c.name} [{c.subject}]: {c.message}" for c in report.failed_checks
    ]
    return "\n".join(lines) + "\n"


def format_report_table(report: Report) -> str:
    """The comparison as plain text for a terminal or a CI log (like pyperf's
    ``compare_to``): per group the runs' blackout upper bounds beside the
    baseline's with the change and the verdict; then every run, the runs left
    out and why, the notes, and the verdict as the last line."""
    regression_of = {r.direction: r.result for r in report.regressions}
    baseline_of = {s.direction: s for s in report.baseline_directions}
    with_baseline = bool(report.baseline_runs)
    headers = [report.group_title, "runs", "median", "p95", "max"]
    if with_baseline:
        headers += ["baseline runs", "baseline median", "change", "p", "verdict"]
    rows = []
    for stats in report.directions:
        row = [
            stats.direction,
            str(stats.upper.n),
            format_ms(stats.upper.median_ms),
            format_ms(stats.upper.p95_ms),
            format_ms(stats.upper.max_ms),
        ]
        if with_baseline:
            reference = baseline_of.get(stats.direction)
            result = regression_of.get(stats.direction)
            test = None if result is None else result.test
            row += [
                "0" if reference is None else str(reference.upper.n),
                "-" if reference is None else format_ms(reference.upper.median_ms),
                "-" if result is None else format_pct(result.median_increase_pct),
                "-" if test is None else format_p(test.p_value),
                "-" if result is None else (regression_skip_reason(result) or result.verdict.value),
            ]
        rows.append(row)
    lines = [
        "Blackout upper bound per " + report.group_title + " (ms: the guest was silent at "
        "most this long; thresholds and the regression test use it)"
    ]
    lines += text_table(headers, rows, align="l" + "r" * (len(headers) - 2) + "l")

    checks = report.checks_by_run()
    with_labels = _has_labels(report)
    for title, runs in (("Runs", report.runs), ("Baseline runs", report.baseline_runs)):
        if not runs:
            continue
        run_rows = []
        for run in runs:
            blackout = run.blackout if run.included else None
            failed = [
                c.name
                for c in checks.get(run.run_id, [])
                if c.outcome in (CheckOutcome.FAILED, CheckOutcome.ERROR)
            ]
            run_rows.append(
                [
                    run.run_id,
                    run.status if run.included else f"{run.status}, left out",
                    run.direction,
                    *([_labels_text(run.labels)] if with_labels else []),
                    "-" if blackout is None else format_ms(blackout.lower_ms),
                    "-" if blackout is None else format_ms(blackout.estimate_ms),
                    "-" if blackout is None else format_ms(blackout.conservative_ms),
                    "-" if blackout is None else str(blackout.timeouts),
                    run.hypervisor_says or "-",
                    ("FAIL: " + ", ".join(failed)) if failed else "",
                ]
            )
        run_headers = ["run", "status", "direction", *(["labels"] if with_labels else [])]
        run_headers += ["lower", "estimate", "upper", "timeouts", "hypervisor says", ""]
        align = "lll" + ("l" if with_labels else "") + "rrrrll"
        lines += ["", f"{title} (ms)", *text_table(run_headers, run_rows, align=align)]
        left_out = [r for r in runs if not r.included]
        lines += [f"  left out: {r.run_id}: {r.excluded_because}" for r in left_out]
    reasons = [f"  {r.direction}: {r.result.reason}" for r in report.regressions]
    if reasons:
        lines += ["", "Regression against the baseline", *reasons]
    notes = [n for n in report.notes if "left out of the statistics" not in n]
    if notes:
        lines += ["", "Notes", *(f"  {note}" for note in notes)]
    if report.failed_checks:
        lines += ["", "Failed checks"]
        lines += [
            f"  {c.outcome.value} {c.name} [{c.subject}]: {c.message}" for c in report.failed_checks
        ]
    lead, verdict = _verdict_line(report)
    lines += ["", f"{lead}: {verdict}"]
    return "\n".join(lines) + "\n"


def _ms_or_none(value: float | None) -> float | None:
    """A figure for JSON: rounded to the microsecond; None for none or open (inf)."""
    return None if value is None or math.isinf(value) else round(value, 3)


def direction_stats_json(stats: DirectionStats) -> dict[str, Any]:
    """One group's statistics as JSON (``session.json`` and ``measure report --json``);
    an open figure (a blackout without an upper bound) is null, counted in ``open_upper``."""

    def figure(f: FigureStats) -> dict[str, Any]:
        return {
            "n": f.n,
            "median_ms": _ms_or_none(f.median_ms),
            "p95_ms": _ms_or_none(f.p95_ms),
            "max_ms": _ms_or_none(f.max_ms),
        }

    return {
        "direction": stats.direction,
        "runs": list(stats.run_ids),
        "lower": figure(stats.lower),
        "estimate": figure(stats.estimate),
        "upper": figure(stats.upper),
        "open_upper": stats.open_upper,
    }


def _run_json(run: ReportedRun) -> dict[str, Any]:
    blackout = run.blackout
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "status": run.status,
        "included": run.included,
        "excluded_because": run.excluded_because,
        "ended_by": run.ended_by,
        "direction": run.direction,
        "group": run.in_group,
        "labels": dict(run.labels),
        "started_utc": run.started_utc,
        "ended_utc": run.ended_utc,
        "blackout": None
        if blackout is None
        else {
            "source": blackout.source,
            "lower_ms": _ms_or_none(blackout.lower_ms),
            "estimate_ms": _ms_or_none(blackout.estimate_ms),
            "upper_ms": _ms_or_none(blackout.upper_ms),
            "lost": blackout.lost,
            "timeouts": blackout.timeouts,
            "unreachable": blackout.unreachable,
            "open_start": blackout.open_start,
            "open_end": blackout.open_end,
        },
        "hypervisor_says": run.hypervisor_says,
        "tcp_stall": None
        if run.tcp_stall is None
        else {
            "stall_ms": _ms_or_none(run.tcp_stall.stall_ms),
            "upper_ms": _ms_or_none(run.tcp_stall.upper_ms),
            "direction": run.tcp_stall.direction,
            "survived": run.tcp_stall.survived,
            "beyond_blackout_ms": _ms_or_none(run.tcp_stall.beyond_ms),
            "explanation": run.tcp_stall.explanation,
        },
        "brownout": None
        if run.brownout is None
        else {
            "duration_ms": _ms_or_none(run.brownout.duration_ms),
            "lower_ms": _ms_or_none(run.brownout.lower_ms),
            "upper_ms": _ms_or_none(run.brownout.upper_ms),
            "work_rate": run.brownout.work_rate,
            "hyperv_brownout_ms": _ms_or_none(run.brownout.hyperv_ms),
            "qemu_max_cpu_throttle_percentage": run.brownout.qemu_throttle_pct,
        },
        "context": dict(run.context),
        "cpu_steal_pct": run.cpu_steal_pct,
    }


def report_document(report: Report) -> dict[str, Any]:
    """The report as one JSON document (``measure report --json``; docs/reports.md)."""
    lead, verdict = _verdict_line(report)
    regression_of = {r.direction: r.result for r in report.regressions}
    baseline_of = {s.direction: s for s in report.baseline_directions}
    groups = []
    for stats in report.directions:
        result = regression_of.get(stats.direction)
        reference = baseline_of.get(stats.direction)
        groups.append(
            {
                "group": stats.direction,
                "runs": direction_stats_json(stats),
                "baseline": None if reference is None else direction_stats_json(reference),
                "regression": None
                if result is None
                else {
                    "verdict": result.verdict.value,
                    "median_increase_pct": None
                    if result.median_increase_pct is None or math.isinf(result.median_increase_pct)
                    else round(result.median_increase_pct, 3),
                    "u": None if result.test is None else result.test.u,
                    "p_value": None if result.test is None else result.test.p_value,
                    "method": None if result.test is None else result.test.method,
                    "reason": result.reason,
                },
            }
        )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "report",
        "generated_by": report.generated_by,
        "generated_utc": report.generated_utc,
        "passed": report.passed,
        "verdict": f"{lead}: {verdict}",
        "thresholds": {
            "max_blackout_ms": report.thresholds.max_blackout_ms,
            "max_timeouts": report.thresholds.max_timeouts,
            "max_regression_pct": report.thresholds.regression_pct,
            "max_tcp_stall_ms": report.thresholds.max_tcp_stall_ms,
        },
        "group_by": list(report.group_by),
        "groups": groups,
        "baseline_only_groups": [
            direction_stats_json(s)
            for s in report.baseline_directions
            if s.direction not in {d.direction for d in report.directions}
        ],
        "runs": [_run_json(r) for r in report.runs],
        "baseline_runs": [_run_json(r) for r in report.baseline_runs],
        "checks": [
            {
                "name": c.name,
                "subject": c.subject,
                "outcome": c.outcome.value,
                "message": c.message,
                "skip_reason": c.skip_reason,
            }
            for c in report.checks
        ],
        "notes": list(report.notes),
    }
