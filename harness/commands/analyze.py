"""``measure analyze``: rebuild ``derived/`` from ``raw/`` and return the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from migration_blackout.analysis.derive import rebuild_derived


def run(*, run_dir: Path) -> dict[str, Any]:
    """Write ``run_dir/derived/summary.json`` and return it as a dict."""
    path = rebuild_derived(Path(run_dir))[0]
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document
