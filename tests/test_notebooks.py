"""The notebooks run, top to bottom, against the sample run folders kept in the repository.

Each is executed with nbclient in a fresh ``python3`` kernel; jupyter_client
starts a kernel spec whose command is ``python`` with this interpreter
(``sys.executable``), so the kernel is the venv's. A cell that raises fails
the test. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUNS = REPO / "tests" / "data" / "runs"


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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_against_the_sample_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_OUT", str(tmp_path / "out"))
    for name in ("MB_RUN", "MB_RUNS", "MB_BASELINE"):
        monkeypatch.delenv(name, raising=False)
    before = _frozen_files()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError when a cell raises
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == []
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, "the notebook shows no plot"
    # The samples in tests/data/runs are frozen: running a notebook writes nothing there.
    assert _frozen_files() == before
