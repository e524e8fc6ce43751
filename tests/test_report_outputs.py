"""``measure report`` through ``harness.commands.report.run``: exit codes, JUnit XML,
Markdown and HTML, on run folders written with the prober's own CsvSink.

There is no lxml here (nor any XSD validator in the standard library), so the
JUnit output is checked by ``validate_junit`` below: a structural validator,
with xml.etree, of what the Jenkins xunit-plugin's junit-10.xsd requires
(elements, required and allowed attributes, the time pattern) plus the
attributes CI systems read (skipped, timestamp, classname, failure message and
type), and that every count matches the testcases.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from label_boxes import readability_problems
from matplotlib.patches import PathPatch
from report_runs import write_run

from migration_blackout.analysis.report.junit import render_junit
from migration_blackout.analysis.report.model import CheckOutcome, build_report, figure_stats
from migration_blackout.analysis.report.plots import (
    plot_direction_distributions,
    plot_run_blackouts,
)
from migration_blackout.harness.commands.report import run
from migration_blackout.runformat import SUMMARY_FILE, Thresholds

DATA = Path(__file__).parent / "data"
V1_SMALL = DATA / "runs" / "v1-small"


def make_runs(
    parent: Path, prefix: str, mean_ms: float, *, count: int, seed: int = 0, **options: Any
) -> list[Path]:
    """``count`` runs with blackouts drawn around ``mean_ms`` (30 ms noise) and a random phase."""
    rng = np.random.default_rng(seed)
    return [
        write_run(
            parent / f"{prefix}-{i}",
            blackout_ms=float(rng.normal(mean_ms, 30.0)),
            phase_ms=float(rng.uniform(0, 10)),
            start_offset_s=600.0 * i,
            **options,
        )
        for i in range(count)
    ]


# --- the JUnit validator -----------------------------------------------------------------

# junit-10.xsd, simpleType SUREFIRE_TIME.
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")
SUITES_ATTRIBUTES = {"name", "time", "tests", "failures", "errors"}
SUITE_REQUIRED = {"name", "tests", "failures", "errors"}
SUITE_ALLOWED = SUITE_REQUIRED | {"group", "time", "skipped", "timestamp", "hostname", "id"}
SUITE_ALLOWED |= {"package", "file", "log", "url"}
SUITE_CHILDREN = {"testsuite", "properties", "testcase", "system-out", "system-err"}
CASE_ALLOWED = {"name", "time", "classname", "group"}
CASE_CHILDREN = {"skipped", "error", "failure", "system-out", "system-err"}
CASE_CHILDREN |= {"rerunFailure", "rerunError", "flakyFailure", "flakyError"}


def _count(value: str | None, where: str) -> int:
    assert value is not None and value.isdigit(), f"{where}: {value!r} is not a count"
    return int(value)


def validate_junit(text: str) -> ET.Element:
    """Check ``text`` against junit-10.xsd's structure and our stricter promises."""
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    assert set(root.attrib) <= SUITES_ATTRIBUTES, set(root.attrib) - SUITES_ATTRIBUTES
    assert SUREFIRE_TIME.fullmatch(root.get("time", ""))
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        assert suite.tag == "testsuite"
        where = f"testsuite {suite.get('name')!r}"
        assert set(suite.attrib) >= SUITE_REQUIRED, where
        assert set(suite.attrib) <= SUITE_ALLOWED, (where, set(suite.attrib) - SUITE_ALLOWED)
        # Promised beyond the XSD: skipped, time and timestamp on every suite.
        assert {"skipped", "time", "timestamp"} <= set(suite.attrib), where
        assert SUREFIRE_TIME.fullmatch(suite.get("time", "")), where
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp", "")), where
        cases = []
        for child in suite:
            assert child.tag in SUITE_CHILDREN, (where, child.tag)
            if child.tag == "properties":
                for prop in child:
                    assert prop.tag == "property" and set(prop.attrib) == {"name", "value"}
            if child.tag == "testcase":
                cases.append(child)
        outcomes = {"failure": 0, "error": 0, "skipped": 0}
        for case in cases:
            assert "name" in case.attrib and set(case.attrib) <= CASE_ALLOWED, case.attrib
            assert {"classname", "time"} <= set(case.attrib)
            assert SUREFIRE_TIME.fullmatch(case.get("time", ""))
            for child in case:
                assert child.tag in CASE_CHILDREN, child.tag
                if child.tag in outcomes:
                    assert set(child.attrib) <= {"type", "message"}
                    outcomes[child.tag] += 1
                if child.tag in ("failure", "error"):
                    assert child.get("message") and child.get("type")
        assert _count(suite.get("tests"), where) == len(cases)
        assert _count(suite.get("failures"), where) == outcomes["failure"]
        assert _count(suite.get("errors"), where) == outcomes["error"]
        assert _count(suite.get("skipped"), where) == outcomes["skipped"]
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    for key, total in totals.items():
        assert _count(root.get(key), f"testsuites {key}") == total
    return root


def test_validator_rejects_what_the_schema_rejects() -> None:
    good = (
        '<testsuites tests="0" failures="0" errors="0" time="0"><testsuite name="a" tests="0" '
        'failures="0" errors="0" skipped="0" time="0" timestamp="2026-11-25T13:02:39"/>'
        "</testsuites>"
    )
    validate_junit(good)
    for bad in (
        good.replace('tests="0" ', ""),  # a required attribute missing
        good.replace("<testsuites ", '<testsuites skipped="0" '),  # not allowed on testsuites
        good.replace('time="0"', 'time="1.5s"'),  # not SUREFIRE_TIME
        good.replace('tests="0"', 'tests="1"'),  # count does not match
        good.replace("/></testsuites>", "><testcase/></testsuite></testsuites>"),  # no name
    ):
        with pytest.raises(AssertionError):
            validate_junit(bad)


# --- exit codes through run() ------------------------------------------------------------


def test_exit_0_when_every_threshold_holds(tmp_path: Path) -> None:
    runs = make_runs(tmp_path, "run", 1000, count=3)
    junit = tmp_path / "junit.xml"
    result = run(
        run_dirs=runs,
        junit=junit,
        thresholds=Thresholds(max_blackout_ms=1200, max_timeouts=150),
    )
    assert result.exit_code == 0, result.text
    assert result.report is not None and result.report.passed
    assert result.written == (junit,)
    assert result.text.splitlines()[-1] == "PASS: 6 checks passed"
    root = validate_junit(junit.read_text(encoding="utf-8"))
    assert [s.get("name") for s in root] == ["run-0", "run-1", "run-2"]
    assert [c.get("name") for c in root[0].iter("testcase")] == ["max_blackout_ms", "max_timeouts"]


def test_exit_1_when_the_blackout_exceeds_its_limit(tmp_path: Path) -> None:
    fast = write_run(tmp_path / "fast", blackout_ms=500)
    slow = write_run(tmp_path / "slow", blackout_ms=1500)
    junit = tmp_path / "junit.xml"
    result = run(run_dirs=[fast, slow], junit=junit, thresholds=Thresholds(max_blackout_ms=1000))
    assert result.exit_code == 1
    root = validate_junit(junit.read_text(encoding="utf-8"))
    (failure,) = root.iter("failure")
    # 150 probes lost at 10 ms: lower 1490, estimate 1500, upper 1510 ms.
    assert failure.get("message") == (
        "blackout upper bound 1510.0 ms > max_blackout_ms 1000 ms (lower 1490.0 ms, "
        "estimate 1500.0 ms, 150 probes lost, icmp:10.0.0.2)"
    )
    assert failure.get("type") == "threshold"
    assert root.get("failures") == "1"
    assert "FAIL: 1 of 2 checks failed" in result.text
    assert "max_blackout_ms [slow]" in result.text


def test_the_limit_itself_passes(tmp_path: Path) -> None:
    at_limit = write_run(tmp_path / "at-limit", blackout_ms=1000)  # upper 1010 ms
    assert run(run_dirs=[at_limit], thresholds=Thresholds(max_blackout_ms=1010)).exit_code == 0
    assert run(run_dirs=[at_limit], thresholds=Thresholds(max_blackout_ms=1009.9)).exit_code == 1


def test_exit_1_when_timeouts_exceed_their_limit(tmp_path: Path) -> None:
    # 30 probes lost in the blackout, 2 lone timeouts before it (not counted).
    folder = write_run(tmp_path / "r", blackout_ms=300, lone_timeouts=2)
    assert run(run_dirs=[folder], thresholds=Thresholds(max_timeouts=30)).exit_code == 0
    result = run(run_dirs=[folder], thresholds=Thresholds(max_timeouts=29))
    assert result.exit_code == 1
    assert result.report is not None
    (check,) = result.report.failed_checks
    assert check.message == (
        "30 timeouts in the blackout > max_timeouts 29 (2 more outside it on icmp:10.0.0.2; "
        "destination unreachable counted apart: 0 in the blackout, 0 outside)"
    )


def test_an_open_blackout_fails_max_blackout_ms(tmp_path: Path) -> None:
    # The run stopped inside the blackout: no reply after it, no upper bound.
    folder = write_run(tmp_path / "open", blackout_ms=300, after_ms=0)
    result = run(run_dirs=[folder], thresholds=Thresholds(max_blackout_ms=5000))
    assert result.exit_code == 1
    assert result.report is not None
    (check,) = result.report.failed_checks
    assert check.message.startswith("blackout has no upper bound (the outage is open at its end")
    assert any("no upper bound" in note for note in result.report.notes)
    assert "| open |" in (result.markdown or "")


def test_no_thresholds_and_no_baseline_pass_with_nothing_to_check(tmp_path: Path) -> None:
    result = run(run_dirs=make_runs(tmp_path, "run", 1000, count=2))
    assert result.exit_code == 0
    last = result.text.splitlines()[-1]
    assert last == "PASS: nothing to check: no threshold was set and no baseline given"


# --- regression against a baseline -------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_runs(tmp_path_factory.mktemp("baseline"), "base", 1000, count=8, seed=1)


def test_regression_fails_with_exit_1(tmp_path: Path, baseline: list[Path]) -> None:
    candidate = make_runs(tmp_path, "cand", 1300, count=8, seed=2)
    junit, markdown = tmp_path / "junit.xml", tmp_path / "summary.md"
    result = run(run_dirs=candidate, baseline_dirs=baseline, junit=junit, markdown=markdown)
    assert result.exit_code == 1, result.text
    root = validate_junit(junit.read_text(encoding="utf-8"))
    suite = root.find("testsuite[@name='regression']")
    assert suite is not None
    (case,) = suite.iter("testcase")
    assert case.get("name") == "regression"
    assert case.get("classname") == "migration-blackout.regression.HV-A -> HV-B"
    failure = case.find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert message.startswith("regression: median 13")
    assert "8 candidate and 8 baseline runs" in message
    assert "one-sided p = 7.77e-05 (exact) <= alpha 0.05" in message  # 1 / comb(16, 8)
    text = markdown.read_text(encoding="utf-8")
    assert "| HV-A -> HV-B | regression | 8 / 8 |" in text


def test_small_change_passes(tmp_path: Path, baseline: list[Path]) -> None:
    candidate = make_runs(tmp_path, "cand", 1010, count=8, seed=3)
    junit = tmp_path / "junit.xml"
    result = run(run_dirs=candidate, baseline_dirs=baseline, junit=junit)
    assert result.exit_code == 0, result.text
    root = validate_junit(junit.read_text(encoding="utf-8"))
    suite = root.find("testsuite[@name='regression']")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    assert result.report is not None
    (regression,) = result.report.regressions
    assert regression.result.verdict.value == "pass"


def test_two_against_two_is_insufficient_data(tmp_path: Path) -> None:
    candidate = make_runs(tmp_path, "cand", 1300, count=2, seed=4)
    reference = make_runs(tmp_path, "base", 1000, count=2, seed=5)
    junit = tmp_path / "junit.xml"
    result = run(run_dirs=candidate, baseline_dirs=reference, junit=junit, markdown=tmp_path / "m")
    assert result.exit_code == 0
    root = validate_junit(junit.read_text(encoding="utf-8"))
    skipped = root.find("testsuite[@name='regression']/testcase/skipped")
    assert skipped is not None
    assert skipped.get("message") == (
        "insufficient data: 2 candidate and 2 baseline runs; at least 3 on each side are needed"
    )
    assert "| HV-A -> HV-B | insufficient data | 2 / 2 |" in (result.markdown or "")


def test_directions_are_compared_apart(tmp_path: Path, baseline: list[Path]) -> None:
    forward = make_runs(tmp_path, "fwd", 1005, count=4, seed=6)
    reverse = make_runs(tmp_path, "rev", 2000, count=4, seed=7, source="HV-B", destination="HV-A")
    result = run(run_dirs=forward + reverse, baseline_dirs=baseline)
    assert result.report is not None
    verdicts = {r.direction: r.result.verdict.value for r in result.report.regressions}
    # The reverse direction is slower, but has no baseline of its own.
    assert verdicts == {"HV-A -> HV-B": "pass", "HV-B -> HV-A": "insufficient data"}
    assert result.exit_code == 0
    stats = {s.direction: s for s in result.report.directions}
    assert stats["HV-B -> HV-A"].upper.n == 4
    assert stats["HV-B -> HV-A"].upper.median_ms == pytest.approx(2000, abs=60)


# --- which runs count --------------------------------------------------------------------


def test_failed_and_aborted_runs_are_listed_but_left_out(tmp_path: Path) -> None:
    good = make_runs(tmp_path, "ok", 1000, count=2)
    failed = write_run(tmp_path / "failed", blackout_ms=9000, status="failed")
    aborted = write_run(tmp_path / "aborted", blackout_ms=9000, status="aborted")
    junit = tmp_path / "junit.xml"
    result = run(
        run_dirs=[*good, failed, aborted],
        junit=junit,
        thresholds=Thresholds(max_blackout_ms=2000),
    )
    assert result.exit_code == 0, result.text
    report = result.report
    assert report is not None
    (stats,) = report.directions
    assert stats.run_ids == ("ok-0", "ok-1")
    assert stats.upper.max_ms is not None and stats.upper.max_ms < 2000
    excluded = "run failed is listed but left out of the statistics and checks: status failed"
    assert any(
        note.startswith(f"{excluded} (MigrationError: Move-VM failed") for note in report.notes
    )
    root = validate_junit(junit.read_text(encoding="utf-8"))
    suite = root.find("testsuite[@name='failed']")
    assert suite is not None and suite.get("skipped") == "1"
    assert "| failed | failed (excluded) |" in (result.markdown or "")


def test_a_completed_run_without_icmp_records_is_an_error(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "empty", blackout_ms=100)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["probes"] = {}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    junit = tmp_path / "junit.xml"
    result = run(run_dirs=[folder], junit=junit, thresholds=Thresholds(max_blackout_ms=1000))
    assert result.exit_code == 1
    root = validate_junit(junit.read_text(encoding="utf-8"))
    error = root.find("testsuite/testcase/error")
    assert error is not None and "nothing was measured" in error.get("message", "")


def test_a_run_without_loss_counts_as_zero(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "smooth", blackout_ms=0)
    result = run(run_dirs=[folder], thresholds=Thresholds(max_blackout_ms=0, max_timeouts=0))
    assert result.exit_code == 0, result.text


def test_missing_summary_is_built_and_written(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    assert not (folder / SUMMARY_FILE).exists()
    result = run(run_dirs=[folder])
    assert result.exit_code == 0
    assert (folder / SUMMARY_FILE).is_file()
    assert result.report is not None
    assert "derived/summary.json was missing; rebuilt it from raw/: 1 run (v1-small)" in (
        result.report.notes
    )
    # The second time it is read, not rebuilt.
    again = run(run_dirs=[folder])
    assert again.report is not None and not any("rebuilt" in n for n in again.report.notes)


def test_a_stale_summary_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    run(run_dirs=[folder])
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    summary["status"] = "running"  # written before the run ended
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    result = run(run_dirs=[folder])
    assert result.report is not None
    assert any("disagreed with manifest.json" in n for n in result.report.notes)
    assert json.loads((folder / SUMMARY_FILE).read_text())["status"] == "completed"


def test_v1_small_figures(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    report = build_report([folder], thresholds=Thresholds(max_blackout_ms=320, max_timeouts=15))
    (reported,) = report.runs
    assert reported.direction == "unknown"  # the v1-small manifest has no hyperv object
    blackout = reported.blackout
    assert blackout is not None
    assert (blackout.lower_ms, blackout.estimate_ms, blackout.upper_ms) == (280.0, 300.0, 320.0)
    assert (blackout.timeouts, blackout.timeouts_outside) == (15, 1)
    assert [c.outcome for c in report.checks] == [CheckOutcome.PASSED, CheckOutcome.PASSED]


# --- bad input: exit 2, nothing written ---------------------------------------------------


def _assert_bad_input(result: Any, fragment: str, outputs: list[Path]) -> None:
    assert result.exit_code == 2
    assert result.report is None and result.written == ()
    assert fragment in result.error, result.error
    assert result.text == f"error: {result.error}\n"
    assert not any(path.exists() for path in outputs)


def test_exit_2_for_a_missing_folder(tmp_path: Path) -> None:
    good = write_run(tmp_path / "good", blackout_ms=100)
    junit = tmp_path / "junit.xml"
    result = run(run_dirs=[good, tmp_path / "nope"], junit=junit)
    _assert_bad_input(result, f"{tmp_path / 'nope'} does not exist", [junit])


def test_exit_2_for_a_missing_baseline_folder(tmp_path: Path) -> None:
    good = write_run(tmp_path / "good", blackout_ms=100)
    result = run(run_dirs=[good], baseline_dirs=[tmp_path / "nope"])
    _assert_bad_input(result, "does not exist", [])


def test_exit_2_for_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_bad_input(run(run_dirs=[tmp_path / "empty"]), "has no manifest.json", [])


def test_exit_2_for_a_summary_of_unknown_version(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    (folder / "derived").mkdir()
    (folder / SUMMARY_FILE).write_text(json.dumps({"kind": "summary", "schema_version": 99}))
    html = tmp_path / "report.html"
    result = run(run_dirs=[folder], html=html)
    _assert_bad_input(result, "has schema_version 99", [html])
    assert "upgrade migration-blackout" in (result.error or "")


def test_exit_2_for_an_unreadable_summary(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    (folder / "derived").mkdir()
    (folder / SUMMARY_FILE).write_text('{"kind": "summary", "schema_')
    result = run(run_dirs=[folder])
    _assert_bad_input(result, "is not valid JSON", [])
    assert f"`measure analyze {folder}` rebuilds it" in (result.error or "")


def test_exit_2_for_a_summary_missing_a_key(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    run(run_dirs=[folder])
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    del summary["blackout"]["upper_ms"]
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    _assert_bad_input(run(run_dirs=[folder]), "key 'upper_ms' is missing", [])


def test_exit_2_for_a_run_given_twice(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", blackout_ms=100)
    result = run(run_dirs=[folder], baseline_dirs=[tmp_path / "." / "r"])
    _assert_bad_input(result, "is given twice (as run and as baseline)", [])


def test_exit_2_for_no_run_folder() -> None:
    _assert_bad_input(run(run_dirs=[]), "no run folder given", [])


def test_exit_2_when_an_output_cannot_be_written(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", blackout_ms=100)
    result = run(run_dirs=[folder], junit=tmp_path / "missing-dir" / "junit.xml")
    assert result.exit_code == 2
    assert (result.error or "").startswith(f"cannot write {tmp_path / 'missing-dir'}")


def test_thresholds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_blackout_ms must be a finite number >= 0"):
        Thresholds(max_blackout_ms=-1)
    with pytest.raises(ValueError, match="max_timeouts must be an integer >= 0"):
        Thresholds(max_timeouts=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_regression_pct must be a finite number"):
        Thresholds(max_regression_pct=float("nan"))
    assert Thresholds().regression_pct == 10.0


# --- Markdown and HTML -------------------------------------------------------------------


def test_markdown_tables(tmp_path: Path, baseline: list[Path]) -> None:
    candidate = make_runs(tmp_path, "cand", 1300, count=3, seed=8)
    markdown = tmp_path / "summary.md"
    result = run(
        run_dirs=candidate,
        baseline_dirs=baseline,
        markdown=markdown,
        thresholds=Thresholds(max_blackout_ms=1500),
    )
    text = markdown.read_text(encoding="utf-8")
    assert text == result.markdown
    lines = text.splitlines()
    assert lines[0] == "## Migration blackout report"
    assert lines[2] == "**FAIL**: 1 of 4 checks failed (regression); 3 passed"
    header = lines.index("| direction | set | runs | figure | median ms | p95 ms | max ms |")
    assert lines[header + 1] == "| --- | --- | ---: | --- | ---: | ---: | ---: |"
    rows = [line.split(" | ") for line in lines[header + 2 : header + 8]]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("runs", "3", "upper (checked)"), ("runs", "3", "estimate"), ("runs", "3", "lower"),
        ("baseline", "8", "upper (checked)"), ("baseline", "8", "estimate"),
        ("baseline", "8", "lower"),
    ]  # fmt: skip
    # Per run: the three figures, 10 ms apart (one probe interval either side).
    report = result.report
    assert report is not None
    first = report.runs[0].blackout
    assert first is not None
    row = next(line for line in lines if line.startswith("| cand-0 |"))
    assert row == (
        f"| cand-0 | completed | HV-A -> HV-B | {first.lower_ms:.1f} | {first.estimate_ms:.1f} | "
        f"{first.upper_ms:.1f} | {first.lost} | {first.timeouts} / 0 | 0 / 0 | - | pass |"
    )
    assert first.upper_ms == first.lower_ms + 20
    # Every table row has as many cells as its header.
    for i, line in enumerate(lines):
        if line.startswith("| ---"):
            width = lines[i - 1].count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count(" | ") == width, lines[j]
                j += 1


def test_markdown_escapes_table_breakers(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", blackout_ms=100, status="failed")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["error"]["message"] = "a | b <script>\nsecond line"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    text = run(run_dirs=[folder]).markdown or ""
    assert "a \\| b \\<script> second line" in text
    assert "<script>" not in text.replace("\\<script>", "")


def test_many_runs_fold_the_run_table(tmp_path: Path) -> None:
    runs = make_runs(tmp_path, "r", 500, count=21)
    text = run(run_dirs=runs).markdown or ""
    assert "<details>\n<summary>21 runs</summary>" in text


def test_html_is_self_contained_and_has_the_plots(tmp_path: Path, baseline: list[Path]) -> None:
    candidate = make_runs(tmp_path, "cand", 1300, count=4, seed=9)
    candidate.append(write_run(tmp_path / "open", blackout_ms=300, after_ms=0))
    html = tmp_path / "report.html"
    result = run(
        run_dirs=candidate,
        baseline_dirs=baseline,
        html=html,
        thresholds=Thresholds(max_blackout_ms=1200),
    )
    assert result.exit_code == 1
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Migration blackout report: FAIL</title>" in page
    # No external resource: every src/href is inline data, and no URL at all.
    for attribute in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page):
        assert attribute.startswith("data:"), attribute
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [alt for alt, _ in images] == [
        "blackout per run",
        "blackout upper bound per direction",
    ]
    for _, data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert b"matplotlib.org" not in png  # no Software chunk with a URL
    assert "<td>HV-A -&gt; HV-B</td>" in page


def test_single_run_html_has_the_run_plot_only(tmp_path: Path) -> None:
    folder = tmp_path / "v1-small"
    shutil.copytree(V1_SMALL, folder)
    html = tmp_path / "r.html"
    run(run_dirs=[folder], html=html)
    page = html.read_text(encoding="utf-8")
    assert page.count("<img ") == 1


def test_junit_marks_up_hostile_text(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r", blackout_ms=100, status="aborted")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["error"]["message"] = 'bell \x07 "quoted" <tag> & more'
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = build_report([folder], thresholds=Thresholds(max_timeouts=0))
    root = validate_junit(render_junit(report))
    skipped = root.find("testsuite/testcase/skipped")
    assert skipped is not None
    assert 'bell ? "quoted" <tag> & more' in skipped.get("message", "")


def test_figure_stats_match_numpy_and_show_open_blackouts() -> None:
    values = [1010.0, 990.0, 1030.0, 1000.0, 1200.0]
    stats = figure_stats(values)
    assert stats.n == 5
    assert stats.median_ms == pytest.approx(np.median(values))
    assert stats.p95_ms == pytest.approx(np.percentile(values, 95))
    assert stats.max_ms == 1200.0
    # A blackout without an upper bound (inf) reaches the maximum and, here, the p95.
    stats = figure_stats([*values[:4], math.inf])
    assert stats.median_ms == pytest.approx(1010.0)
    assert (stats.p95_ms, stats.max_ms) == (math.inf, math.inf)
    assert figure_stats([]).median_ms is None


def test_the_hypervisor_figure_stands_beside_the_measured_one() -> None:
    from migration_blackout.analysis.report.runs import hypervisor_figure

    hyperv = {"hyperv": {"reported": {"blackout_s": 2.3, "event_id": 20415}}}
    assert hypervisor_figure(hyperv) == "2.3 s (event 20415)"
    qemu = {"hyperv": None, "qemu": {"stop_to_resume_ms": 10.11, "downtime_ms": 6}}
    assert hypervisor_figure(qemu) == "STOP->RESUME 10.1 ms, downtime 6 ms (source)"
    assert hypervisor_figure({"hyperv": None, "qemu": None}) is None


def test_report_plots_stay_readable_at_ten_runs_per_direction(tmp_path: Path) -> None:
    hosts = ("WS16TP4DM1VML1b", "WS16TP4DM2VML1b")
    runs = [
        write_run(
            tmp_path / f"20261125T13{i:02d}00Z-run-{i:04x}",
            blackout_ms=1200.0 + 7 * i,
            phase_ms=i % 7,
            source=hosts[i % 2],
            destination=hosts[1 - i % 2],
            start_offset_s=60.0 * i,
        )
        for i in range(20)
    ]
    baseline = [
        write_run(
            tmp_path / f"base-{i}",
            blackout_ms=1000.0 + 5 * i,
            source=hosts[0],
            destination=hosts[1],
            start_offset_s=60.0 * i,
        )
        for i in range(3)
    ]
    report = build_report(runs, baseline_dirs=baseline, thresholds=Thresholds(max_blackout_ms=1500))
    for figure in (plot_run_blackouts(report), plot_direction_distributions(report)):
        assert figure is not None
        assert readability_problems(figure) == []
    distribution = plot_direction_distributions(report)
    assert distribution is not None
    rows = [label.get_text() for label in distribution.axes[0].get_yticklabels()]
    # No row for the baseline of the direction that has none.
    assert rows == [
        f"{hosts[0]} -> {hosts[1]}\nbaseline, n=3",
        f"{hosts[0]} -> {hosts[1]}\nruns, n=10",
        f"{hosts[1]} -> {hosts[0]}\nruns, n=10",
    ]
    # Boxes for the two sets of 10, a median tick (no box) for the 3 baseline runs.
    boxes = [p for p in distribution.axes[0].patches if isinstance(p, PathPatch)]
    assert len(boxes) == 2
