"""Reading a run folder: its manifest and its raw ICMP records.

A run folder (format v1) holds ``manifest.json`` and ``raw/<probe>.<ext>``;
everything under ``derived/`` is rebuilt from those. This module only reads:
it validates what it reads and raises ``RunFormatError`` with a message that
says what is wrong and, for a version it cannot read, what to do.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from migration_blackout.runformat import (
    ICMP,
    ICMP_OUTCOMES,
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    RAW_SCHEMA_VERSION,
    RUN_STATUSES,
    RunFormatError,
    check_schema_version,
)

# The columns the blackout analysis needs; reading only these takes about a
# third of the time of all 14 (the tokenizer still scans every field).
ICMP_ANALYSIS_COLUMNS = ("target", "n", "outcome", "send_mono_ns", "send_utc_ns")

# Outcomes as codes by position: attempts first, then the extra rows (runformat).
ICMP_OUTCOME_DTYPE = pd.CategoricalDtype(list(ICMP_OUTCOMES))

# ``runformat.ICMP.dtypes``; the C parser fills nullable Int64 values and a mask
# directly, without a float round trip (tests/test_analysis_rundata.py checks
# this at 2**63 - 1). The send stamps are complete in every file our prober
# writes but may be missing in imported logs: they are first parsed as plain
# int64, which is ~0.2-0.4 s faster per 3.6 M rows than Int64 for the two of
# them, and only a file with a missing one is parsed again with Int64
# (_SEND_COLUMNS).
_ICMP_DTYPES: dict[str, Any] = dict(ICMP.dtypes)
_SEND_COLUMNS = ("send_mono_ns", "send_utc_ns")
# Categorical columns whose values are names: pandas infers numbers from
# all-numeric categories, which would turn a target "1" into the integer 1.
_NAME_COLUMNS = ("target", "from_addr")


class RawDataWarning(UserWarning):
    """Lines of a raw file that are not records (invalid UTF-8, not JSON, a
    value out of range) were skipped, and counted. The summary lists these
    warnings; the analysis goes on without those lines."""


def warn_skipped(what: str, skipped: int, first: str) -> None:
    """Say that ``skipped`` lines of ``what`` were left out (``first``: which
    was the first, and why)."""
    warnings.warn(
        RawDataWarning(
            f"{what}: {skipped} line{'s' if skipped != 1 else ''} skipped, not valid records "
            f"(first: {first})"
        ),
        stacklevel=3,
    )


@contextlib.contextmanager
def raw_data_warnings() -> Iterator[list[str]]:
    """Collect the :class:`RawDataWarning` messages raised in the block (each once)."""
    collected: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RawDataWarning)
        try:
            yield collected
        finally:
            for item in caught:
                if issubclass(item.category, RawDataWarning):
                    text = str(item.message)
                    if text not in collected:
                        collected.append(text)
                else:  # not ours: let it through as it would have gone
                    warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


@dataclass(frozen=True)
class JsonlFile:
    """A raw JSON Lines file: its header and its records (JSON objects)."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    skipped: int  # complete lines that were not a JSON object


def read_jsonl(path: str | os.PathLike[str], *, what: str) -> JsonlFile:
    """Read a raw JSON Lines file: a header object with ``schema_version``, then
    one object per line.

    A last line without its newline (the writer stopped mid-line) is left out
    silently; any other line that is not a JSON object (invalid UTF-8, not
    JSON, an array) is counted and skipped with a :class:`RawDataWarning`.
    A file that cannot be read at all, or whose header is not a JSON object
    of a known version, is a :class:`RunFormatError`.
    """
    path = Path(path)
    header, lines = _jsonl_lines(path, what)
    skipped = _SkippedLines(what)
    records = list(skipped.records(lines))
    skipped.warn()
    return JsonlFile(path=path, header=header, records=records, skipped=skipped.count)


@dataclass(frozen=True)
class JsonlColumns:
    """The records of one event of a raw JSON Lines file, column by column:
    ``columns[key][i]`` is record i's value of ``key``, NaN where it has none
    (as ``pandas.DataFrame.from_records`` fills them)."""

    header: dict[str, Any]
    columns: dict[str, list[Any]]
    rows: int


def read_jsonl_columns(path: str | os.PathLike[str], *, what: str, event: str) -> JsonlColumns:
    """``read_jsonl``'s records whose ``event`` is ``event``, as columns.

    For files of many records (72 k host polls in an hour): each record's
    object is dropped once its values are in their columns, and equal strings
    ("poll", a host's name, "Running") are kept once, so the file is never held
    as a list of objects (~1 KiB each). Lines are checked and skipped exactly
    as ``read_jsonl`` does.
    """
    header, lines = _jsonl_lines(Path(path), what)
    skipped = _SkippedLines(what)
    columns: dict[str, list[Any]] = {}
    rows = 0
    strings: dict[str, str] = {}
    for record in skipped.records(lines):
        if record.get("event") != event:
            continue
        for key, value in record.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = [math.nan] * rows
            column.append(strings.setdefault(value, value) if isinstance(value, str) else value)
        rows += 1
        if len(record) != len(columns):  # keys this record lacks
            for column in columns.values():
                if len(column) < rows:
                    column.append(math.nan)
    skipped.warn()
    return JsonlColumns(header=header, columns=columns, rows=rows)


def _jsonl_lines(path: Path, what: str) -> tuple[dict[str, Any], Iterator[tuple[int, bytes]]]:
    """The checked header, and the numbered lines after it (``read_jsonl``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunFormatError(f"{what} cannot be read: {exc.strerror or exc}") from None
    lines = _complete_lines(data)
    first = next(lines, None)
    if first is None:
        raise RunFormatError(f"{what} is empty; expected a header line")
    header = _json_object(first[1])
    if header is None:
        raise RunFormatError(f"{what} does not start with a JSON header line")
    check_schema_version(header.get("schema_version"), supported=RAW_SCHEMA_VERSION, what=what)
    return header, lines


def _complete_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of ``data`` with their numbers (from 1), one at a time;
    a last line without its newline (a partial write) is not one."""
    for number, line in enumerate(io.BytesIO(data), 1):
        if not line.endswith(b"\n"):
            return
        if line.strip():
            yield number, line


class _SkippedLines:
    """The lines of one file that were not records: how many, and the first."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.first: str | None = None

    def records(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[dict[str, Any]]:
        for number, line in lines:
            record = _json_object(line)
            if record is None:
                self.count += 1
                self.first = self.first or f"line {number}, {_why_not_a_record(line)}"
                continue
            yield record

    def warn(self) -> None:
        if self.first is not None:
            warn_skipped(self.what, self.count, self.first)


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _why_not_a_record(line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    return "not a JSON object"


@dataclass(frozen=True)
class RunError:
    type: str
    message: str


@dataclass(frozen=True)
class Manifest:
    """The validated fields of ``manifest.json``; ``document`` keeps all of it."""

    run_id: str
    status: str
    error: RunError | None
    started_utc: str
    ended_utc: str | None
    targets: tuple[Any, ...]
    config: Mapping[str, Any]
    probes: Mapping[str, Any]
    document: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RunData:
    """A run folder as the analysis reads it: its path and its checked manifest
    (``load_run``); the raw files are read on demand. The harness writes one
    with ``harness.runwriter.RunWriter``."""

    path: Path
    manifest: Manifest

    def probe_file(self, probe: str) -> Path | None:
        """The raw file the manifest names for ``probe``, or None if the run has no such probe."""
        entry = self.manifest.probes.get(probe)
        if entry is None:
            return None
        where = f"run folder {self.path} (manifest.json probes.{probe}.file)"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise RunFormatError(f"{where} is missing or not a string")
        relative = Path(entry["file"])
        if relative.is_absolute() or ".." in relative.parts:
            raise RunFormatError(f"{where} must be a path inside the run folder, got {relative}")
        return self.path / relative


_JSON_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", type(None): "null"}


def _require(doc: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise RunFormatError(f"{where} lacks the key {key!r}")
    value = doc[key]
    if not isinstance(value, types):
        wanted = " or ".join(
            _JSON_TYPE_NAMES.get(t, t.__name__)
            for t in (types if isinstance(types, tuple) else (types,))
        )
        raise RunFormatError(f"{where} key {key!r} has {value!r}; expected {wanted}")
    return value


def _check_utc(value: str | None, key: str, where: str) -> None:
    if value is None:
        return
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise RunFormatError(f"{where} key {key!r} is not an ISO 8601 time: {value!r}") from None
    if stamp.utcoffset() is None:
        raise RunFormatError(f"{where} key {key!r} has no UTC offset: {value!r}")


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read and validate ``run_dir/manifest.json``."""
    path = Path(run_dir)
    manifest_path = path / MANIFEST_FILE
    where = f"run folder {path} (manifest.json)"
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFormatError(f"{path} is not a run folder: it has no manifest.json") from None
    except UnicodeDecodeError:
        raise RunFormatError(f"{where} is not UTF-8 text") from None
    except OSError as exc:
        raise RunFormatError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RunFormatError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RunFormatError(f"{where} is not a JSON object")
    # The version first: any other check would judge a newer file by old rules.
    if "schema_version" not in doc:
        raise RunFormatError(f"{where} has no schema_version")
    check_schema_version(doc["schema_version"], supported=MANIFEST_SCHEMA_VERSION, what=where)

    if doc.get("kind", "run") != "run":
        raise RunFormatError(f"{where} has kind {doc['kind']!r}; expected 'run'")
    run_id = _require(doc, "run_id", str, where)
    status = _require(doc, "status", str, where)
    if status not in RUN_STATUSES:
        raise RunFormatError(
            f"{where} has status {status!r}; expected one of {sorted(RUN_STATUSES)}"
        )
    error_doc = _require(doc, "error", (dict, type(None)), where)
    error = None
    if error_doc is not None:
        error = RunError(
            type=_require(error_doc, "type", str, f"{where} error"),
            message=_require(error_doc, "message", str, f"{where} error"),
        )
    started = _require(doc, "started_utc", str, where)
    ended = _require(doc, "ended_utc", (str, type(None)), where)
    _check_utc(started, "started_utc", where)
    _check_utc(ended, "ended_utc", where)
    return RunData(
        path=path,
        manifest=Manifest(
            run_id=run_id,
            status=status,
            error=error,
            started_utc=started,
            ended_utc=ended,
            targets=tuple(_require(doc, "targets", list, where)),
            config=_require(doc, "config", dict, where),
            probes=_require(doc, "probes", dict, where),
            document=doc,
        ),
    )


@dataclass(frozen=True, eq=False)
class IcmpRecords:
    """The rows of one ``raw/icmp.csv``.

    ``frame`` has the requested columns with the dtypes above (``send_*_ns``
    are int64 when no value is missing, else nullable Int64); ``outcome`` is a
    categorical with the fixed categories ``ICMP_OUTCOME_DTYPE``. Row order is
    file order (the order attempts resolved, not send order).
    ``dropped_partial_last_line`` is true when the file did not end with a
    newline, i.e. the writer stopped mid-row (a crash); that row was dropped.
    """

    path: Path
    header: Mapping[str, Any]
    frame: pd.DataFrame
    dropped_partial_last_line: bool

    @property
    def interval_s(self) -> float | None:
        """The requested probe interval from the file header, in seconds."""
        return _positive_number(self.header.get("interval_s"))

    @property
    def targets(self) -> tuple[str, ...]:
        """The targets the file header names (those with no row at all included)."""
        targets = self.header.get("targets")
        if isinstance(targets, list):
            return tuple(t for t in targets if isinstance(t, str))
        return ()


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class _CsvLayout:
    header: dict[str, Any]
    columns: list[str]
    data_start: int  # byte offset of the first record row
    data_end: int  # byte offset after the last complete row
    partial_last_line: bool  # the file does not end with a newline


def _read_head(path: Path) -> _CsvLayout:
    """The JSON header, the column names and where the complete record rows lie."""
    with open(path, "rb") as raw:
        first = raw.readline()
        second = raw.readline()
        data_start = raw.tell()
        partial_from = _partial_last_line_offset(raw)
        size = raw.seek(0, os.SEEK_END)
    where = f"raw file {path}"
    line = first.decode("utf-8", errors="replace").rstrip("\r\n")
    if not line.startswith("# "):
        raise RunFormatError(f"{where} does not start with a '# {{...}}' header line")
    try:
        header = json.loads(line[2:])
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{where} header line is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RunFormatError(f"{where} header line is not a JSON object")
    if "schema_version" not in header:
        raise RunFormatError(f"{where} header has no schema_version")
    check_schema_version(header["schema_version"], supported=RAW_SCHEMA_VERSION, what=where)
    if not second.endswith(b"\n"):
        raise RunFormatError(f"{where} has no complete column-name line (line 2)")
    return _CsvLayout(
        header=header,
        columns=second.decode("utf-8", errors="replace").rstrip("\r\n").split(","),
        data_start=data_start,
        data_end=size if partial_from is None else max(partial_from, data_start),
        partial_last_line=partial_from is not None,
    )


def _partial_last_line_offset(raw: io.BufferedReader) -> int | None:
    """None when the file ends with a newline, else the offset just after the last one."""
    size = raw.seek(0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - 65536)
        raw.seek(start)
        chunk = raw.read(end - start)
        if end == size and chunk.endswith(b"\n"):
            return None
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


class _FileRange(io.RawIOBase):
    """Bytes ``start`` to ``end`` of a file: the complete record rows, for the parser."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        count = self._file.readinto(view)
        self._left -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


# Rows are parsed a chunk at a time and each chunk's columns kept as they are
# (one compact array each; the parser's buffers for a chunk are reused for the
# next), then joined column by column: an hour at 1 kHz never holds the file's
# rows in two forms at once. One thread: slices of the file parsed in threads
# were ~0.4 s faster on an idle 2-core machine, but each thread's parser and
# malloc arena stayed in the process (peak RSS of `measure analyze` of the
# hour-long run 680 MiB, against 552-578 with one), and the cores are shared.
_CHUNK_ROWS = 1 << 18


def _parse_icmp_chunks(
    source: io.BufferedIOBase, usecols: list[str], dtype: Mapping[str, Any]
) -> dict[str, list[pd.Series]]:
    """The rows of ``source``: each column as its pieces, one per chunk of rows."""
    pieces: dict[str, list[pd.Series]] = {name: [] for name in usecols}
    with pd.read_csv(
        source,
        engine="c",
        header=None,
        names=list(ICMP.columns),
        usecols=usecols,
        dtype=dict(dtype),
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8",
        chunksize=_CHUNK_ROWS,
    ) as chunks:
        for chunk in chunks:
            for name in usecols:
                pieces[name].append(chunk[name])
    return pieces


def _join_pieces(pieces: list[pd.Series], dtype: Any) -> pd.Series:
    """One column from its pieces (in file order)."""
    if not pieces:
        return pd.Series([], dtype=dtype)
    if len(pieces) == 1:
        return pieces[0].reset_index(drop=True)
    if isinstance(pieces[0].dtype, pd.CategoricalDtype):
        # Each piece has its own categories: put all on their union first,
        # so that concat keeps the column categorical.
        union = pd.unique(
            np.concatenate([piece.cat.categories.to_numpy(object) for piece in pieces])
        )
        # Sorted, as pandas orders the categories it infers from one parser.
        common = pd.CategoricalDtype(pd.Index(union).astype(str).sort_values())
        pieces = [piece if piece.dtype == common else piece.astype(common) for piece in pieces]
    # One copy of the column; the exact values of nullable columns.
    return pd.concat(pieces, ignore_index=True)


def _join_columns(usecols: list[str], pieces: dict[str, list[pd.Series]]) -> pd.DataFrame:
    """The frame of ``usecols`` from their pieces; each column's pieces are freed
    as soon as it is joined, and the columns are not consolidated (copied into
    one block), so a column dropped later frees its memory."""
    columns: dict[str, pd.Series] = {}
    for name in usecols:
        columns[name] = _join_pieces(pieces.pop(name), _ICMP_DTYPES[name])
    return pd.DataFrame(columns, copy=False)


def _parse_range(
    path: Path, layout: _CsvLayout, usecols: list[str], dtype: Mapping[str, Any]
) -> dict[str, list[pd.Series]]:
    """The complete record rows of the file (``layout``), as column pieces."""
    with io.BufferedReader(
        _FileRange(path, layout.data_start, layout.data_end), buffer_size=1 << 20
    ) as source:
        return _parse_icmp_chunks(source, usecols, dtype)


def _parse_icmp_rows(
    source: io.BufferedIOBase, usecols: list[str], dtype: Mapping[str, Any]
) -> pd.DataFrame:
    return _join_columns(usecols, _parse_icmp_chunks(source, usecols, dtype))


def _read_columns(
    path: Path, layout: _CsvLayout, usecols: list[str], dtype: Mapping[str, Any]
) -> pd.DataFrame:
    pieces = _parse_range(path, layout, usecols, dtype)
    for column in _NAME_COLUMNS:
        if column in usecols and any(
            piece.cat.categories.dtype.kind not in "OUT" for piece in pieces[column]
        ):
            # Values that all looked like numbers: read that column again as text.
            texts = _parse_range(path, layout, [column], {column: "str"})
            pieces[column] = [piece.astype("category") for piece in texts[column]]
    return _join_columns(usecols, pieces)


def read_icmp_csv(
    path: str | os.PathLike[str], *, columns: Sequence[str] = ICMP_ANALYSIS_COLUMNS
) -> IcmpRecords:
    """Read a raw ICMP record file (format v1) with the C parser and explicit dtypes.

    ``columns`` selects what to keep (default: what the analysis needs; pass
    ``runformat.ICMP.columns`` for all). The header's schema version, probe name and the
    full column list are always checked. A partial last line (the writer
    stopped mid-row) is left out and reported in ``dropped_partial_last_line``.
    """
    path = Path(path)
    where = f"raw file {path}"
    layout = _read_head(path)
    header = layout.header
    if header.get("probe") != ICMP.probe or header.get("format") != ICMP.encoding:
        raise RunFormatError(
            f"{where} has probe={header.get('probe')!r}, format={header.get('format')!r}; "
            "expected an icmp csv file"
        )
    if layout.columns != list(ICMP.columns):
        missing = [c for c in ICMP.columns if c not in layout.columns]
        extra = [c for c in layout.columns if c not in ICMP.columns]
        raise RunFormatError(
            f"{where} has columns {layout.columns}; schema_version 1 has exactly "
            f"{list(ICMP.columns)} in that order (missing: {missing}, unexpected: {extra})"
        )
    unknown = [c for c in columns if c not in ICMP.columns]
    if unknown:
        raise ValueError(f"unknown icmp columns requested: {unknown}")
    usecols = list(dict.fromkeys(columns))
    dtypes = {c: _ICMP_DTYPES[c] for c in usecols}
    try:
        complete = dtypes | {c: "int64" for c in _SEND_COLUMNS if c in dtypes}
        try:
            frame = _read_columns(path, layout, usecols, complete)
        except ValueError:
            # A send stamp is missing (or the file is broken: then this raises too).
            frame = _read_columns(path, layout, usecols, dtypes)
    except (ValueError, OverflowError, UnicodeDecodeError, pd.errors.ParserError):
        # Some rows are not records (a torn write, a byte flipped): check each
        # row, skip and count the bad ones, parse the rest.
        frame = _read_icmp_row_by_row(path, layout, usecols, dtypes, where)
    bad = np.zeros(len(frame), dtype=bool)
    if "target" in frame:
        bad |= frame["target"].isna().to_numpy()
    if "outcome" in frame:
        outcome = frame["outcome"]
        unknown = [c for c in outcome.cat.categories if str(c) not in ICMP_OUTCOME_DTYPE.categories]
        bad |= (outcome.isna() | outcome.isin(unknown)).to_numpy()
    if bad.any():
        first = int(bad.nonzero()[0][0])
        warn_skipped(where, int(bad.sum()), f"record {first + 1}, no target or an unknown outcome")
        frame = frame[~bad].reset_index(drop=True)
    if "outcome" in frame:
        frame["outcome"] = frame["outcome"].cat.set_categories(ICMP_OUTCOME_DTYPE.categories)
    return IcmpRecords(
        path=path, header=header, frame=frame, dropped_partial_last_line=layout.partial_last_line
    )


def _read_icmp_row_by_row(
    path: Path,
    layout: _CsvLayout,
    usecols: list[str],
    dtypes: Mapping[str, Any],
    where: str,
) -> pd.DataFrame:
    """The slow path for a file with bad rows: each row checked against the
    column types (integers within 64 bits), bad ones skipped with a warning."""
    integers = {name for name, kind in _ICMP_DTYPES.items() if kind in ("int64", "Int64", "Int16")}
    required = {name for name, kind in _ICMP_DTYPES.items() if kind == "int64"}
    good = io.BytesIO()
    skipped, first = 0, ""
    with open(path, "rb") as raw:
        raw.seek(layout.data_start)
        data = raw.read(layout.data_end - layout.data_start)
    for number, line in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n") else [], 3):
        try:
            fields = next(csv.reader([line.decode("utf-8")]))
            if len(fields) != len(ICMP.columns):
                raise ValueError(f"{len(fields)} fields, not {len(ICMP.columns)}")
            for name, text in zip(ICMP.columns, fields, strict=True):
                if name in integers and (text or name in required):
                    value = int(text)
                    limit = 2**15 if _ICMP_DTYPES[name] == "Int16" else 2**63
                    if not -limit <= value < limit:
                        raise ValueError(f"{name} out of range")
        except (UnicodeDecodeError, ValueError, StopIteration, csv.Error) as error:
            skipped += 1
            first = first or f"line {number}, {error}"
            continue
        good.write(line + b"\n")
    if skipped:
        warn_skipped(where, skipped, first)
    good.seek(0)
    try:
        return _parse_icmp_rows(good, usecols, dtypes)
    except (ValueError, pd.errors.ParserError) as exc:
        raise RunFormatError(f"{where} cannot be parsed as icmp records: {exc}") from None


def load_icmp(
    run: RunData, *, columns: Sequence[str] = ICMP_ANALYSIS_COLUMNS
) -> IcmpRecords | None:
    """The run's ICMP records, or None if its manifest lists no ICMP probe."""
    path = run.probe_file(ICMP.probe)
    if path is None:
        return None
    if not path.is_file():
        raise RunFormatError(
            f"run folder {run.path}: the manifest names {path.relative_to(run.path)} "
            "for the icmp probe, but there is no such file"
        )
    return read_icmp_csv(path, columns=columns)


def manifest_icmp_interval_s(run: RunData) -> float | None:
    """The requested ICMP interval in seconds as the manifest records it.

    The probe's settings are in ``probes.icmp`` (``measure run`` and ``measure
    watch`` alike); folders whose ``probes.icmp`` names only the file keep it in
    their configuration: ``config.icmp.interval_s`` (watch, import) or
    ``config.probes.icmp_interval_s`` (run).
    """
    config = run.manifest.config
    places = (
        (run.manifest.probes.get(ICMP.probe), "interval_s"),
        (config.get("icmp"), "interval_s"),
        (config.get("probes"), "icmp_interval_s"),
    )
    for place, key in places:
        if isinstance(place, Mapping) and key in place:
            return _positive_number(place[key])
    return None


def requested_icmp_interval_s(run: RunData, records: IcmpRecords | None) -> float | None:
    """The requested ICMP interval in seconds: the raw header's, else the manifest's."""
    if records is not None and records.interval_s is not None:
        return records.interval_s
    return manifest_icmp_interval_s(run)
