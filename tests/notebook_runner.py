"""Execute a notebook top to bottom in a fresh ``python3`` kernel.

jupyter_client starts the ``python3`` kernel spec with this interpreter
(``sys.executable``), so the kernel sees exactly the packages the caller sees:
the repository's venv in the test suite, a fresh venv in the wheel test, which
runs this file as a script (``python notebook_runner.py NOTEBOOK WORKDIR``, exit
1 when a cell raises). The notebooks take their inputs from ``MB_*`` variables
in the environment, which the kernel inherits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, workdir: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` after running it in ``workdir``; raises when a cell does."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError when a cell raises
    return notebook


def outputs(notebook: nbformat.NotebookNode, kind: str) -> list[nbformat.NotebookNode]:
    """Every output of the code cells that is an ``error``, or carries ``kind`` data
    (``image/png``)."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == kind or kind in output.get("data", {}):
                found.append(output)
    return found


if __name__ == "__main__":
    done = execute(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{sys.argv[1]}: {len(outputs(done, 'image/png'))} images")
    sys.exit(1 if outputs(done, "error") else 0)
