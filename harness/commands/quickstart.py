"""``measure quickstart [DIR]``: what a user of an installed package needs beside the
command: the commented example configuration and the two notebooks.

They ship inside the package (``migration_blackout/measure.example.toml`` and
``migration_blackout/notebooks/``; in a checkout these are links to the
repository's own files), so a wheel installed anywhere can hand them out.
Files already in ``DIR`` are kept, never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

EXAMPLE_CONFIG = "measure.example.toml"
NOTEBOOKS = ("01-timeline.ipynb", "02-compare-runs.ipynb")


@dataclass(frozen=True)
class QuickstartFile:
    path: Path
    written: bool  # False: a file of that name was already there and is kept


def shipped_files() -> list[tuple[str, bytes]]:
    """(relative path, content) of every file quickstart writes, from the package."""
    package = resources.files("migration_blackout")
    files = [(EXAMPLE_CONFIG, (package / EXAMPLE_CONFIG).read_bytes())]
    files += [
        (f"notebooks/{name}", (package / "notebooks" / name).read_bytes()) for name in NOTEBOOKS
    ]
    return files


def run(*, directory: Path) -> list[QuickstartFile]:
    """Write the example configuration and the notebooks into ``directory``.

    Raises ``OSError`` when ``directory`` cannot be written.
    """
    done = []
    for relative, content in shipped_files():
        path = Path(directory) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as handle:
                handle.write(content)
        except FileExistsError:
            done.append(QuickstartFile(path, written=False))
            continue
        done.append(QuickstartFile(path, written=True))
    return done
