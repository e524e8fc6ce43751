"""``measure analyze``: rebuild ``derived/`` from ``raw/`` and return the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.summary import write_summary


def run(*, run_dir: Path) -> dict[str, Any]:
    """Write ``run_dir/derived/summary.json`` and return it as a dict."""
    path = write_summary(Path(run_dir))
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document
