"""``measure report`` and ``measure analyze`` over what users hold: session folders,
parents of runs, globs (quoted, or expanded by the shell after ``--baseline``),
list files; labels to group by; the comparison table and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from report_runs import write_run

from migration_blackout.analysis.report.model import build_report
from migration_blackout.analysis.report.runs import find_run_folders
from migration_blackout.harness.cli import _spread_option, main
from migration_blackout.runformat import RunFormatError

DATA = Path(__file__).parent / "data"


def session(parent: Path, name: str, blackouts_ms: list[float], **options: Any) -> Path:
    """A session folder as ``measure run --repeat`` leaves it: session.json and run folders."""
    folder = parent / name
    runs = [
        write_run(
            folder / f"20261125T13{i:02d}00Z-run-{name}{i}",
            blackout_ms=ms,
            phase_ms=i % 7,
            start_offset_s=60.0 * i,
            **options,
        )
        for i, ms in enumerate(blackouts_ms)
    ]
    (folder / "session.json").write_text(
        json.dumps({"schema_version": 1, "kind": "session", "runs": [r.name for r in runs]})
    )
    return folder


def test_find_run_folders_takes_runs_sessions_parents_globs_and_lists(tmp_path: Path) -> None:
    first = session(tmp_path / "results", "s1", [1000, 1010])
    second = session(tmp_path / "results", "s2", [1020])
    lone = write_run(tmp_path / "results" / "lone-run", blackout_ms=900)
    every = sorted([*first.glob("*-run-*"), *second.glob("*-run-*"), lone])

    assert find_run_folders([lone]) == [lone]
    assert find_run_folders([first]) == sorted(first.glob("*-run-*"))
    assert sorted(find_run_folders([tmp_path / "results"])) == every
    assert sorted(find_run_folders([str(tmp_path / "results" / "*")])) == every
    # The same run named twice (its session and itself) counts once.
    assert len(find_run_folders([first, next(first.glob("*-run-*"))])) == 2
    listing = tmp_path / "baseline.txt"
    listing.write_text("# last week's runs\nresults/s1\n\nresults/lone-*\n")
    assert find_run_folders([listing]) == [*sorted(first.glob("*-run-*")), lone]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "missing does not exist"),
        ("nothing-*", "no file or folder matches this pattern"),
        ("empty", "is not a run folder (it has no manifest.json) and holds none"),
        ("empty.txt", "lists no run folder"),
    ],
)
def test_find_run_folders_says_what_is_wrong(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(RunFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_run_folders([str(tmp_path / name)])


def test_spread_option_keeps_a_shell_expanded_glob_on_the_baseline_side() -> None:
    args = ["new1", "--baseline", "b1", "b2", "b3", "--html", "r.html", "new2"]
    assert _spread_option(args, "--baseline") == [
        "new1", "--baseline", "b1", "--baseline", "b2", "--baseline", "b3",
        "--html", "r.html", "new2",
    ]  # fmt: skip
    assert _spread_option(["--baseline", "b1", "b2", "--", "n1"], "--baseline") == [
        "--baseline", "b1", "--baseline", "b2", "--", "n1",
    ]  # fmt: skip


def test_report_over_sessions_with_a_shell_expanded_baseline(tmp_path: Path) -> None:
    baseline = [session(tmp_path / "old", f"b{i}", [1000 + 5 * i, 1010, 990]) for i in range(2)]
    candidate = session(tmp_path / "new", "c", [1300, 1310, 1290, 1320])
    # What the shell makes of `measure report new/c --baseline old/*`.
    result = CliRunner().invoke(main, ["report", str(candidate), "--baseline", *map(str, baseline)])
    assert result.exit_code == 1, result.output  # a regression
    lines = result.output.splitlines()
    assert lines[0].startswith("Blackout upper bound per direction")
    row = next(line for line in lines if line.startswith("HV-A -> HV-B")).split()
    # direction, runs, median, p95, max, baseline runs, baseline median, change, p, verdict
    assert row[3] == "4" and row[7] == "6"  # 6 baseline runs from two sessions
    assert row[-1] == "regression"
    assert lines[-1].startswith("FAIL: 1 of 1 check failed (regression)")


def test_the_same_folder_on_both_sides_is_an_error(tmp_path: Path) -> None:
    runs = session(tmp_path, "s", [1000, 1010, 1020])
    result = CliRunner().invoke(main, ["report", str(runs), "--baseline", str(tmp_path)])
    assert result.exit_code == 2
    assert "is given twice (as run and as baseline)" in result.output


def test_runs_after_the_baseline_need_a_double_dash(tmp_path: Path) -> None:
    runs = session(tmp_path, "s", [1000, 1010, 1020])
    base = session(tmp_path, "b", [1000, 1010, 1020])
    missing = CliRunner().invoke(main, ["report", "--baseline", str(base), str(runs)])
    assert missing.exit_code == 2
    assert "end the baseline with --" in missing.output
    ok = CliRunner().invoke(main, ["report", "--baseline", str(base), "--", str(runs)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[-1] == "PASS: 1 check passed"


def test_json_is_the_table_as_a_document(tmp_path: Path) -> None:
    runs = session(tmp_path, "s", [1000, 1010])
    result = CliRunner().invoke(main, ["report", str(runs), "--json", "--max-blackout-ms", "2000"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["kind"] == "report" and document["schema_version"] == 1
    assert document["verdict"] == "PASS: 2 checks passed"
    (group,) = document["groups"]
    assert group["group"] == "HV-A -> HV-B" and group["runs"]["upper"]["n"] == 2
    assert [r["path"] for r in document["runs"]] == [str(p) for p in sorted(runs.glob("*-run-*"))]


def test_verdict_says_why_checks_were_skipped(tmp_path: Path) -> None:
    runs = session(tmp_path, "s", [1000, 1010, 1020], source="HV-A", destination="HV-B")
    other = session(tmp_path, "o", [1000, 1010, 1020], source="HV-B", destination="HV-A")
    result = CliRunner().invoke(main, ["report", str(runs), str(other), "--baseline", str(other)])
    assert result.exit_code == 2  # "o" on both sides
    base = session(tmp_path, "b", [1000], source="HV-B", destination="HV-A")
    result = CliRunner().invoke(main, ["report", str(runs), str(other), "--baseline", str(base)])
    assert result.output.splitlines()[-1] == (
        "PASS: 1 check skipped: no baseline; 1 skipped: insufficient data"
    )


def test_labels_group_the_statistics_and_the_comparison(tmp_path: Path) -> None:
    small = [
        write_run(tmp_path / f"small-{i}", blackout_ms=500 + i, labels={"vm_memory": "1G"})
        for i in range(3)
    ]
    big = [
        write_run(tmp_path / f"big-{i}", blackout_ms=2000 + i, labels={"vm_memory": "8G"})
        for i in range(3)
    ]
    report = build_report([*small, *big], group_by=["vm_memory"])
    assert [(d.direction, d.upper.n) for d in report.directions] == [
        ("HV-A -> HV-B [vm_memory=1G]", 3),
        ("HV-A -> HV-B [vm_memory=8G]", 3),
    ]
    ungrouped = build_report([*small, *big])
    assert [(d.direction, d.upper.n) for d in ungrouped.directions] == [("HV-A -> HV-B", 6)]
    result = CliRunner().invoke(main, ["report", *map(str, small + big), "--group-by", "vm_memory"])
    assert "direction [vm_memory]" in result.output
    assert "vm_memory=8G" in result.output


def test_a_watch_ended_by_a_signal_before_this_version_counts(tmp_path: Path) -> None:
    run = write_run(tmp_path / "old-watch", blackout_ms=800, status="aborted")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["run_kind"] = "watch"
    manifest["error"] = {"type": "interrupted", "message": "stopped by a signal"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (reported,) = build_report([run]).runs
    assert reported.included and reported.status == "completed"
    assert reported.ended_by == "signal (recorded as aborted by an older version)"


def test_analyze_takes_a_session_and_says_when_a_path_does_not_exist(tmp_path: Path) -> None:
    runs = session(tmp_path, "s", [1000, 1010])
    result = CliRunner().invoke(main, ["analyze", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    documents = json.loads(result.output)
    assert [d["run_dir"] for d in documents] == [str(p) for p in sorted(runs.glob("*-run-*"))]
    one = CliRunner().invoke(main, ["analyze", documents[0]["run_dir"], "--json"])
    assert json.loads(one.output)["run_id"] == documents[0]["run_id"]
    missing = CliRunner().invoke(main, ["analyze", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.output.strip() == f"measure: error: {tmp_path / 'nope'} does not exist"
