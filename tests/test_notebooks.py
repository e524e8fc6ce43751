"""The notebooks run, top to bottom, against the sample run folders kept in the repository
and against freshly made runs of every kind.

Each is executed with nbclient in a fresh ``python3`` kernel
(tests/notebook_runner.py); a cell that raises fails the test. The committed
notebooks carry no outputs. The runs: the frozen samples (copied: reading a
run may write its derived summary), the workflow's Hyper-V lab session and
watch (tests/test_workflow.py), and one run each of the emulated lab with the
in-guest agent, the QEMU lab and an imported ping log (tests/fixtures_workflow.py).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
import nbformat
import pytest
from fixtures_workflow import OtherRuns, Workflow
from jupyter_client.manager import KernelManager
from matplotlib.text import Text
from notebook_runner import execute, outputs

from migration_blackout.analysis.derive import derive
from migration_blackout.analysis.plot import timeline_figures

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUNS = REPO / "tests" / "data" / "runs"
TIMELINE, COMPARE = (
    REPO / "notebooks" / "01-timeline.ipynb",
    REPO / "notebooks" / "02-compare-runs.ipynb",
)


def _frozen_files() -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in RUNS.rglob("*") if p.is_file()}


def test_both_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01-timeline.ipynb", "02-compare-runs.ipynb"]


def test_the_python3_kernel_is_this_interpreter() -> None:
    manager = KernelManager(kernel_name="python3")
    assert manager.format_kernel_cmd()[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_committed_notebook_has_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_notebook_needs_a_checkout(path: Path) -> None:
    """Installed from a wheel there is no repository: nothing may look for one."""
    source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    for needs_a_checkout in ("pyproject.toml", "tests/data", "repo_root"):
        assert needs_a_checkout not in source


def _run(
    notebook: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, **variables: str
) -> nbformat.NotebookNode:
    for name in ("MB_RUN", "MB_RUNS", "MB_BASELINE", "MB_GROUP_BY", "MB_OUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    done = execute(notebook, workdir)
    assert outputs(done, "error") == []
    assert outputs(done, "image/png"), "the notebook shows no plot"
    return done


@pytest.mark.slow
def test_both_notebooks_on_copies_of_the_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _frozen_files()
    samples = tmp_path / "results"
    shutil.copytree(RUNS, samples, ignore=shutil.ignore_patterns("derived"))
    # MB_RUN a folder of runs: the timeline notebook takes the newest one.
    _run(TIMELINE, tmp_path, monkeypatch, MB_RUN=str(samples / "lab-v1-sample"))
    # No MB_RUNS: every run under results/ here.
    done = _run(COMPARE, tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for o in outputs(done, "stream"))
    assert "2 runs, 0 baseline runs" in text
    # The samples in tests/data/runs are frozen: nothing was written there.
    assert _frozen_files() == before


KINDS = ["lab_with_agent", "qemu", "imported"]


@pytest.fixture(scope="module")
def timeline_of(
    other_runs: OtherRuns, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], nbformat.NotebookNode]:
    """The timeline notebook executed on the fresh run of a kind, once per kind
    for every test that reads it."""
    done: dict[str, nbformat.NotebookNode] = {}

    def of(kind: str) -> nbformat.NotebookNode:
        if kind not in done:
            out = tmp_path_factory.mktemp(f"timeline-{kind}")
            run_dir = getattr(other_runs, kind)
            with pytest.MonkeyPatch.context() as monkeypatch:
                done[kind] = _run(TIMELINE, out, monkeypatch, MB_RUN=str(run_dir), MB_OUT=str(out))
        return done[kind]

    return of


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_timeline_notebook_on_a_fresh_run_of_each_kind(
    other_runs: OtherRuns, kind: str, timeline_of: Callable[[str], nbformat.NotebookNode]
) -> None:
    run_dir = getattr(other_runs, kind)
    done = timeline_of(kind)
    assert len(outputs(done, "image/png")) == 2  # every kind has a blackout to zoom on
    text = "".join(o.get("text", "") for o in outputs(done, "stream"))
    assert str(run_dir) in text
    # What applications felt: shown for the run with every witness, said absent otherwise.
    [felt] = [c for c in done.cells if "What applications felt" in c.source]
    tables = [
        o["data"]["text/html"]
        for o in done.cells[done.cells.index(felt) + 1].outputs
        if "text/html" in o.get("data", {})
    ]
    if kind == "lab_with_agent":
        summary = json.loads((run_dir / "derived" / "summary.json").read_text(encoding="utf-8"))
        [html] = tables
        [connect] = summary["tcp"]["connect"]  # "address:3389"
        assert connect.endswith(":3389") and f"TCP connect {connect}" in html
        assert "TCP stream stall, inbound" in html and "inbound back after the resume" in html
        survived = "survived" if summary["tcp"]["stream"]["survived"] else "broke"
        assert f"the TCP stream {survived}" in text
    else:
        assert tables == [] and "no TCP or direction witnesses in this run" in text
    # The guest's brownout, the section's last line: summary.json's, as measure wrote it.
    [line] = [x for x in text.splitlines() if x.startswith("guest brownout:")]
    if kind == "lab_with_agent":
        brownout = summary["brownout"]
        measured = brownout["measured"]
        if measured is None:
            assert brownout["reason"] in line
        else:
            assert line.startswith(
                f"guest brownout: {measured['duration_ms']:.3f} ms ({measured['lower_ms']:.3f} .. "
                f"{measured['upper_ms']:.3f} ms), work rate {measured['work_rate']:.2f} of normal"
            )
        assert f"Hyper-V 22508: {brownout['hyperv']['brownout_ms']:.0f} ms" in line


@pytest.mark.root
@pytest.mark.slow
def test_the_comparison_notebook_on_runs_of_every_kind(
    workflow: Workflow, other_runs: OtherRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = [workflow.watch, workflow.session, *(getattr(other_runs, k) for k in KINDS)]
    done = _run(
        COMPARE,
        tmp_path,
        monkeypatch,
        MB_RUNS=":".join(map(str, every)),
        MB_BASELINE=str(workflow.baseline_session),
        MB_GROUP_BY="build",
    )
    text = "".join(o.get("text", "") for o in outputs(done, "stream"))
    assert "7 runs, 3 baseline runs" in text
    # The per-run table has the brownout, summary.json's, for the run with the agent.
    [cell] = [c for c in done.cells if "def describe(" in c.get("source", "")]
    [html] = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    assert "<th>brownout ms</th>" in html
    summary_file = other_runs.lab_with_agent / "derived" / "summary.json"
    measured = json.loads(summary_file.read_text(encoding="utf-8"))["brownout"]["measured"]
    if measured is not None:
        [row] = [r for r in html.split("<tr>") if other_runs.lab_with_agent.name in r]
        assert f"<td>{measured['duration_ms']:.3f}</td>" in row


COMPONENTS = (
    "hypervisor_blackout",
    "guest_execution_gap",
    "network_outage",
    "network_reconvergence",
    "console_blackout",
)


def _notebook_components(done: nbformat.NotebookNode) -> dict[str, tuple[str, ...]]:
    """The timeline notebook's table of the downtime split by witness, as shown:
    component -> (source, lower ms, upper ms, estimate ms)."""
    [cell] = [c for c in done.cells if '"estimate ms": c.estimate_ms' in c.get("source", "")]
    [html] = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
        if cells:
            rows[cells[0]] = tuple(cells[1:5])
    return rows


def _shown(value: float | None) -> str:
    return "None" if value is None else f"{value:.3f}"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lab_with_agent", "qemu"])
def test_plots_notebooks_and_summary_agree(
    other_runs: OtherRuns, kind: str, timeline_of: Callable[[str], nbformat.NotebookNode]
) -> None:
    """One derive feeds them all: every component of the downtime in the
    summary.json that ``measure run`` wrote is the one the timeline notebook
    shows and the one the timeline plot draws (its bar's label and its row),
    the hypervisor blackout of a QEMU run (QEMU's STOP -> RESUME) included."""
    run_dir = getattr(other_runs, kind)
    summary = json.loads((run_dir / "derived" / "summary.json").read_text(encoding="utf-8"))
    decomposition = summary["decomposition"]
    expected = {
        name: (
            decomposition[name]["source"],
            _shown(decomposition[name]["lower_ms"]),
            _shown(decomposition[name]["upper_ms"]),
            _shown(decomposition[name]["estimate_ms"]),
        )
        for name in COMPONENTS
        if decomposition[name] is not None
    }
    assert "hypervisor_blackout" in expected and "network_outage" in expected

    done = timeline_of(kind)
    shown = {
        name: (source, *(_shown(None if v in ("NaN", "None") else float(v)) for v in values))
        for name, (source, *values) in _notebook_components(done).items()
    }
    assert shown == expected

    # The figures the run wrote come from the same objects (analysis.rebuild):
    # the plot is drawn again here to read its texts.
    matplotlib.use("Agg")
    derived = derive(run_dir)
    whole, _zoom = timeline_figures(derived.timeline, derived.decomposition)
    texts = {text.get_text() for text in whole.findobj(Text)}
    # Each bar's label: its bounds to 0.1 ms ("?" and "open" for a missing one).
    bars = [
        (None if lo == "?" else float(lo), None if hi == "open" else float(hi))
        for lo, hi in (
            match.groups()
            for match in map(re.compile(r"([\d.]+|\?) - ([\d.]+|open) ms").fullmatch, texts)
            if match
        )
    ]

    def same(shown: float | None, summary: float | None) -> bool:
        if shown is None or summary is None:
            return shown is summary
        return abs(shown - summary) <= 0.0505  # summary: to 0.001 ms; the bar: to 0.1

    for name in expected:
        component = decomposition[name]
        if component["start"] is None or component["end"] is None:
            continue  # no bar without both edges
        lower, upper = component["lower_ms"], component["upper_ms"]
        assert any(same(lo, lower) and same(hi, upper) for lo, hi in bars), (name, bars)
    row = "hypervisor (QEMU events)" if kind == "qemu" else "hypervisor (host polls)"
    assert row in texts
