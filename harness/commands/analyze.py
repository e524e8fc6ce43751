"""``measure analyze``: rebuild ``derived/`` from ``raw/`` and return the summaries.

Takes what ``measure report`` takes (run folders, session folders, parents of
runs, globs, list files: ``analysis.report.find_run_folders``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.analysis.rebuild import rebuild_derived
from migration_blackout.analysis.report.runs import find_run_folders
from migration_blackout.runformat import RunFormatError

from ..runwriter import describe_error


@dataclass(frozen=True)
class Analysed:
    """One run folder: its summary document, or why it could not be analysed."""

    run_dir: Path
    summary: dict[str, Any] | None
    error: str | None = None


def run(*, run_dir: Path) -> dict[str, Any]:
    """Write ``run_dir/derived/summary.json`` (and the plots) and return the summary."""
    path = rebuild_derived(Path(run_dir))[0]
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def run_many(*, paths: Sequence[Path]) -> list[Analysed]:
    """Analyse every run folder ``paths`` name; a run that cannot be read does not stop
    the others. Raises ``RunFormatError`` when ``paths`` name no run folder at all."""
    analysed = []
    for run_dir in find_run_folders(paths):
        try:
            analysed.append(Analysed(run_dir, run(run_dir=run_dir)))
        except RunFormatError as exc:
            analysed.append(Analysed(run_dir, None, str(exc)))
        except OSError as exc:  # derived/ is not a folder of its own, or the disk is full
            error = f"cannot rebuild {run_dir / 'derived'}: {describe_error(exc)}"
            analysed.append(Analysed(run_dir, None, error))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            error = (
                f"run folder {run_dir}: a raw record this version cannot read "
                f"({type(exc).__name__}: {exc})"
            )
            analysed.append(Analysed(run_dir, None, error))
    return analysed
