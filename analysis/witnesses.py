"""What the analyses of the newer witnesses share: reading their raw CSV files,
and finding runs of failed attempts.

The witnesses (``analysis/tcp.py``, ``analysis/direction.py``,
``analysis/brownout.py``) are pure functions over the raw records; this module
reads a raw CSV (``# {header}`` line, column names, rows; docs/run-format.md)
refusing unknown schema versions, and finds the maximal runs of failures in
a sequence of attempts, which every outage is made of.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from migration_blackout.runformat import (
    RAW_SCHEMA_VERSION,
    RawFile,
    RunFormatError,
    check_schema_version,
)

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class RawCsv:
    """A raw CSV file: its header line (the probe's settings) and its rows."""

    header: dict[str, Any]
    rows: pd.DataFrame


def read_raw_csv(run_dir: str | os.PathLike[str], raw_file: RawFile) -> RawCsv:
    """Read the run folder's ``raw_file`` (the contract's path, probe and
    dtypes); nullable integer columns (``Int64``) stay integers. Raises
    ``RunFormatError`` for another probe's file or a schema version this
    version cannot read."""
    path = Path(run_dir) / raw_file.path
    probe = raw_file.probe
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        if not first.startswith("# "):
            raise RunFormatError(f"{path} does not start with a '# ' header line")
        try:
            header = json.loads(first[2:])
        except json.JSONDecodeError:
            raise RunFormatError(f"{path} has a header line that is not JSON") from None
        if not isinstance(header, dict) or header.get("probe") != probe:
            raise RunFormatError(f"{path} does not start with a {probe} header line")
        check_schema_version(
            header.get("schema_version"), supported=RAW_SCHEMA_VERSION, what=str(path)
        )
        rows = pd.read_csv(
            handle, dtype=dict(raw_file.dtypes), keep_default_na=False, na_values=[""]
        )
    return RawCsv(header, rows)


def failure_runs(failed: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(first, last)`` positions (inclusive) of every maximal run of True."""
    edges = np.diff(failed.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def ms(ns: float | int | None) -> float | None:
    """Nanoseconds to milliseconds rounded to the microsecond (None stays None)."""
    return None if ns is None else round(ns / NS_PER_MS, 3)
