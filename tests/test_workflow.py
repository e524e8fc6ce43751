"""The workflow the tool exists for, as a user walks it: measure (a watch ended with
Ctrl-C, two ``--repeat`` sessions), look (analyze, both notebooks), compare and gate
CI (``report`` over a session with the baseline given as one glob: the terminal
table, Markdown, JUnit, HTML, JSON). The folders come from the session fixture
``workflow`` (tests/fixtures_workflow.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fixtures_workflow import Workflow, measure
from notebook_runner import execute, outputs
from test_report_outputs import validate_junit

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.root, pytest.mark.slow]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_a_watch_ended_with_ctrl_c_is_complete_and_counts(workflow: Workflow) -> None:
    watched = manifest(workflow.watch)
    assert watched["status"] == "completed" and watched["error"] is None
    assert watched["ended_by"] == "SIGINT"
    assert watched["labels"] == {"role": "observer"}
    assert watched["machine"]["kernel"]
    assert f"run folder: {workflow.watch}" in workflow.watch_stderr
    # It saw the baseline session's three migrations: the longest is its blackout.
    summary = json.loads((workflow.watch / "derived" / "summary.json").read_text())
    assert summary["blackout"]["lost"] > 0
    report = measure(workflow.home, workflow.env, "report", str(workflow.watch), "--json")
    (run,) = json.loads(report.stdout)["runs"]
    assert run["included"] and run["ended_by"] == "SIGINT"


def test_a_session_says_which_run_it_is_on(workflow: Workflow) -> None:
    stderr = workflow.session_stderr
    assert stderr.index("measure: warning: --repeat 3 --ping-pong gives 2 run(s)") < stderr.index(
        "== run 1/3 =="
    )
    for number in (1, 2, 3):
        assert f"== run {number}/3 ==" in stderr
        assert re.search(rf"^run {number}/3 \[ +\d+\.\d s\] migrating", stderr, re.MULTILINE)
    for run_dir in workflow.session.glob("*-run-*"):
        assert manifest(run_dir)["labels"] == {"build": "new"}


def test_report_over_the_session_against_a_glob(workflow: Workflow, tmp_path: Path) -> None:
    home, env = workflow.home, workflow.env
    files = {"markdown": tmp_path / "summary.md", "junit": tmp_path / "junit.xml"}
    files["html"] = tmp_path / "report.html"
    proc = measure(
        home,
        env,
        *("report", str(workflow.session.relative_to(home)), "--baseline", "results/old/*"),
        *("--markdown", str(files["markdown"]), "--junit", str(files["junit"])),
        *("--html", str(files["html"]), "--max-blackout-ms", "5000"),
    )
    # Exit 0: every run within 5 s; 2 + 1 runs per direction is too few for the
    # regression test, which says so rather than failing.
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Blackout upper bound per direction")
    table = lines[1 : lines.index("")]
    assert sorted(row.split()[0] for row in table[1:]) == ["WS16TP4DM1VML1b", "WS16TP4DM2VML1b"]
    assert all(
        row.split()[3] in ("1", "2") and row.endswith("insufficient data") for row in table[1:]
    )
    assert lines[-1] == "PASS: 3 checks passed; 2 skipped: insufficient data"
    markdown = files["markdown"].read_text()
    assert markdown.splitlines()[2] == "**PASS**: 3 checks passed; 2 skipped: insufficient data"
    assert "| WS16TP4DM1VML1b -> WS16TP4DM2VML1b | baseline |" in markdown
    root = validate_junit(files["junit"].read_text())
    assert root.get("tests") == "5" and root.get("failures") == "0"
    page = files["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert f"wrote {files['html']}" in proc.stderr

    document = json.loads(
        measure(
            home, env, "report", str(workflow.session), "--baseline", "results/old/*", "--json"
        ).stdout
    )
    assert {Path(r["path"]).parent for r in document["runs"]} == {workflow.session}
    # Paths as the user gave them: relative to where the glob was expanded.
    assert {(home / r["path"]).parent for r in document["baseline_runs"]} == {
        workflow.baseline_session
    }
    assert [g["regression"]["verdict"] for g in document["groups"]] == ["insufficient data"] * 2


def test_report_groups_every_run_in_results_by_label(workflow: Workflow) -> None:
    proc = measure(workflow.home, workflow.env, "report", "results", "--group-by", "build")
    assert proc.returncode == 0, proc.stderr
    groups = [line.split("  ")[0] for line in proc.stdout.splitlines()[2:7]]
    assert sorted(groups) == sorted(
        [
            "unknown [build=-]",  # the watch
            "WS16TP4DM1VML1b -> WS16TP4DM2VML1b [build=old]",
            "WS16TP4DM2VML1b -> WS16TP4DM1VML1b [build=old]",
            "WS16TP4DM1VML1b -> WS16TP4DM2VML1b [build=new]",
            "WS16TP4DM2VML1b -> WS16TP4DM1VML1b [build=new]",
        ]
    )


def test_analyze_the_session(workflow: Workflow) -> None:
    proc = measure(workflow.home, workflow.env, "analyze", str(workflow.session), "--json")
    assert proc.returncode == 0, proc.stderr
    documents = json.loads(proc.stdout)
    assert [Path(d["run_dir"]).parent for d in documents] == [workflow.session] * 3


@pytest.mark.parametrize("which", ["session", "watch"])
def test_the_timeline_notebook_on_the_workflow(
    workflow: Workflow, which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_RUN", str(getattr(workflow, which)))
    monkeypatch.setenv("MB_OUT", str(tmp_path))
    notebook = execute(REPO / "notebooks" / "01-timeline.ipynb", workflow.home)
    assert outputs(notebook, "error") == []
    assert len(outputs(notebook, "image/png")) == 2  # the whole run and the zoom


def test_the_comparison_notebook_on_the_workflow(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_RUNS", str(workflow.session))
    monkeypatch.setenv("MB_BASELINE", str(workflow.results / "old" / "*"))
    monkeypatch.delenv("MB_GROUP_BY", raising=False)
    notebook = execute(REPO / "notebooks" / "02-compare-runs.ipynb", workflow.home)
    assert outputs(notebook, "error") == []
    assert len(outputs(notebook, "image/png")) == 3
    text = "".join(o.get("text", "") for o in outputs(notebook, "stream"))
    assert "3 runs, 3 baseline runs" in text
