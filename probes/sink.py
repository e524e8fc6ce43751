"""Raw record files: append-only, flushed as events happen, versioned.

Two formats, both starting with one header line that names the schema version:

* ``CsvSink`` for high-rate numeric probes (ICMP at up to 20 kHz): line 1 is
  ``# {"schema_version": 1, "probe": ..., ...}``, line 2 the column names,
  then one row per record. pandas reads it with ``comment=None, skiprows=1``.
* ``JsonlSink`` for structured low-rate events: line 1 is
  ``{"schema_version": 1, "probe": ..., "header": true, ...}``, then one JSON
  object per line.

The version and its history: ``runformat.RAW_SCHEMA_VERSION``.

A sink refuses to open an existing file: raw data is written once. Writes go
to a buffer; callers call ``flush()`` after each batch (the ICMP receiver
flushes once per drained batch), so a crash loses at most the batch in hand.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from migration_blackout.runformat import RAW_SCHEMA_VERSION

_Built = TypeVar("_Built")


class RecordSink(Protocol):
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _open_new(path: Path) -> io.TextIOWrapper:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "x": refuse to overwrite raw data.
    return open(path, "x", encoding="utf-8", newline="")


class CsvSink:
    """Rows of a fixed column set; ``None`` is written as an empty field."""

    def __init__(
        self,
        path: Path,
        *,
        probe: str,
        columns: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._file = _open_new(self.path)
        header = {"schema_version": RAW_SCHEMA_VERSION, "probe": probe, "format": "csv"}
        header.update(meta or {})
        self._file.write("# " + json.dumps(header, sort_keys=True) + "\n")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(self.columns)
        self.rows_written = 0
        self.flush()

    def write_row(self, row: Sequence[Any]) -> None:
        self._writer.writerow(row)
        self.rows_written += 1

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        batch = rows if isinstance(rows, list) else list(rows)
        self._writer.writerows(batch)
        self.rows_written += len(batch)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


class JsonlSink:
    """One JSON object per line."""

    def __init__(self, path: Path, *, probe: str, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._file = _open_new(self.path)
        header = {"schema_version": RAW_SCHEMA_VERSION, "probe": probe, "header": True}
        header.update(meta or {})
        self._file.write(json.dumps(header, sort_keys=True) + "\n")
        self.records_written = 0
        self.flush()

    def write(self, record: Mapping[str, Any], *, flush: bool = True) -> None:
        self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        self.records_written += 1
        if flush:
            self._file.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def with_new_csv(
    path: Path,
    build: Callable[[CsvSink], _Built],
    *,
    probe: str,
    columns: Sequence[str],
    meta: Mapping[str, Any],
) -> _Built:
    """``build(sink)`` with a new ``CsvSink`` at ``path``; the sink is closed
    again if ``build`` fails (a probe's ``create`` and its raw file)."""
    sink = CsvSink(path, probe=probe, columns=columns, meta=meta)
    try:
        return build(sink)
    except BaseException:
        sink.close()
        raise
