"""The report as JUnit XML: one test case per check, grouped per run and group, so
that a CI system shows which run failed which limit.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime

from migration_blackout.analysis.report.model import Check, CheckOutcome, Report, format_limit
from migration_blackout.analysis.report.runs import ReportedRun

JUNIT_PACKAGE = "migration-blackout"


# --- JUnit XML ---------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all (control characters in an error message).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("?", text)


def _junit_timestamp(iso: str | None) -> str | None:
    """``2026-11-25T13:02:39`` (UTC, seconds, no zone: the Ant/Jenkins shape)."""
    if iso is None:
        return None
    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def _duration_s(run: ReportedRun) -> float:
    start, end = run.started_utc, run.ended_utc
    if end is None:
        return 0.0
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):
        return 0.0
    return max(0.0, seconds)


def _classname(*parts: str) -> str:
    # Jenkins splits a classname at its dots into package and class; keep ours whole.
    return ".".join([JUNIT_PACKAGE, *(p.replace(".", "_") for p in parts)])


def _testcase(parent: ET.Element, check: Check, classname: str) -> None:
    case = ET.SubElement(parent, "testcase", name=check.name, classname=classname, time="0")
    message = _xml_text(check.message)
    if check.outcome is CheckOutcome.FAILED:
        ET.SubElement(case, "failure", message=message, type="threshold").text = message
    elif check.outcome is CheckOutcome.ERROR:
        ET.SubElement(case, "error", message=message, type="no-data").text = message
    elif check.outcome is CheckOutcome.SKIPPED:
        ET.SubElement(case, "skipped", message=message)


def _suite_counts(suite: ET.Element, checks: Sequence[Check]) -> None:
    def count(outcome: CheckOutcome) -> str:
        return str(sum(1 for c in checks if c.outcome is outcome))

    suite.set("tests", str(len(checks)))
    suite.set("failures", count(CheckOutcome.FAILED))
    suite.set("errors", count(CheckOutcome.ERROR))
    suite.set("skipped", count(CheckOutcome.SKIPPED))


def _properties(parent: ET.Element, values: Sequence[tuple[str, object]]) -> None:
    properties = ET.SubElement(parent, "properties")
    for name, value in values:
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=_xml_text(str(value)))


def render_junit(report: Report) -> str:
    """JUnit XML (the Jenkins junit-10.xsd shape): one testsuite per run, its threshold
    checks as testcases, and with a baseline one more testsuite ``regression`` with a
    testcase ``regression`` per direction. Skipped checks are ``<skipped>``; a run that
    measured nothing gives ``<error>``."""
    root = ET.Element("testsuites", name="migration-blackout report")
    by_run = report.checks_by_run()
    suite_id = 0
    for run in report.runs:
        checks = by_run.get(run.run_id, [])
        suite = ET.Element("testsuite", name=run.run_id)
        _suite_counts(suite, checks)
        suite.set("time", f"{_duration_s(run):.3f}")
        timestamp = _junit_timestamp(run.started_utc)
        if timestamp:
            suite.set("timestamp", timestamp)
        suite.set("hostname", run.hostname or "localhost")
        suite.set("id", str(suite_id))
        suite.set("package", JUNIT_PACKAGE)
        suite_id += 1
        blackout = run.blackout
        _properties(
            suite,
            [
                ("run_dir", run.path),
                ("status", run.status),
                ("direction", run.direction),
                ("excluded", run.excluded_because),
                ("blackout_source", None if blackout is None else blackout.source),
                ("blackout_lower_ms", None if blackout is None else blackout.lower_ms),
                ("blackout_estimate_ms", None if blackout is None else blackout.estimate_ms),
                ("blackout_upper_ms", None if blackout is None else blackout.upper_ms),
                ("blackout_timeouts", None if blackout is None else blackout.timeouts),
            ],
        )
        for check in checks:
            _testcase(suite, check, _classname(run.run_id))
        root.append(suite)
    regression = [c for c in report.checks if c.name == "regression"]
    if regression:
        suite = ET.Element("testsuite", name="regression")
        _suite_counts(suite, regression)
        suite.set("time", "0")
        suite.set("timestamp", report.generated_utc.rstrip("Z"))
        suite.set("hostname", "localhost")
        suite.set("id", str(suite_id))
        suite.set("package", JUNIT_PACKAGE)
        _properties(
            suite,
            [
                ("max_regression_pct", format_limit(report.thresholds.regression_pct)),
                ("baseline_runs", len(report.baseline_runs)),
            ],
        )
        for check in regression:
            _testcase(suite, check, _classname("regression", check.subject))
        root.append(suite)

    suites = list(root)
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in suites):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
