"""``write_run`` from tests/data/make_report_runs.py, loaded once for the report tests
(that file is also a script for bench/, so it is loaded by path, not imported)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_report_runs", DATA / "make_report_runs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_run: Callable[..., Path] = _load_generator().write_run
