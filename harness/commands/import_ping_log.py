"""``measure import ping-log``: a ping log from another tool becomes a run folder.

The log is read in pieces and parsed completely first (``harness.importers``,
pure), so a file that cannot be imported leaves no run folder behind. Then
the run folder is created (``run_kind`` ``import``), ``raw/icmp.csv`` written
once through ``CsvSink`` as the records are made (never all held at once),
the manifest finalised (``completed``, or ``failed`` with the error if writing
fails) and ``derived/summary.json`` built. Memory holds the log's attempts
that have a line, not the file, not the rows, not the implicit timeouts a
summary counts (bench/bench_import.py).

What the import had to assume is recorded in the manifest's config: the time
zone of local stamps, where the date of time-of-day stamps came from, the
detected probe interval, and how send times were derived (docs/importers.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migration_blackout.analysis.summary import write_summary
from migration_blackout.probes.sink import CsvSink
from migration_blackout.runformat import ICMP, RunStatus, utc_iso

from ..importers import (
    UNRECOGNISED_QUOTED,
    ImportFormatError,
    ImportOptionError,
    LogLines,
    PingLogFileError,
    PingLogImport,
    PingRecord,
    parse_date,
    parse_ping_log,
    parse_timezone,
    utc_offset_name,
)
from ..runwriter import create_run_folder, redact

RUN_KIND = "import"
WRITE_BATCH = 10_000  # rows handed to the CSV writer at a time


class _SystemLocalZone(tzinfo):
    """The C library's local time zone (``mktime``), for machines without a zone name."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        if dt is None:
            dt = datetime.now()
        naive = dt.replace(tzinfo=None)
        stamp = naive.timestamp()  # the C library applies the local zone and its DST
        return datetime.fromtimestamp(stamp) - datetime.fromtimestamp(stamp, UTC).replace(
            tzinfo=None
        )

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return "system local time"


def machine_timezone() -> tuple[tzinfo, str, str]:
    """The machine's local zone: (zone, name, where the name came from).

    ``TZ`` if it names a zone, else the zone ``/etc/localtime`` links to (or
    ``/etc/timezone`` names), else the C library's local time without a name.
    """
    tz_env = os.environ.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return ZoneInfo(tz_env), tz_env, "machine local zone (TZ)"
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        resolved = str(localtime.resolve(strict=True))
    except OSError:
        resolved = ""
    if "/zoneinfo/" in resolved:
        name = resolved.split("/zoneinfo/", 1)[1]
        try:
            return ZoneInfo(name), name, "machine local zone (/etc/localtime)"
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        return ZoneInfo(name), name, "machine local zone (/etc/timezone)"
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    return _SystemLocalZone(), "system local time", "machine local zone (C library, no name)"


READ_CHUNK_BYTES = 1 << 20


def _log_lines(file: Path) -> tuple[LogLines, str, int]:
    """The log's lines, read in pieces (never whole), its SHA-256 and size."""

    def chunks() -> Iterator[bytes]:
        with open(file, "rb") as handle:
            while chunk := handle.read(READ_CHUNK_BYTES):
                yield chunk

    try:
        # First, what it is: a binary file or one endless line fails here, early.
        lines = LogLines(chunks)
        digest = hashlib.sha256()
        size = 0
        for chunk in chunks():
            digest.update(chunk)
            size += len(chunk)
    except FileNotFoundError:
        raise PingLogFileError(f"ping log {file} does not exist") from None
    except IsADirectoryError:
        raise PingLogFileError(f"ping log {file} is a folder, not a file") from None
    except OSError as exc:
        raise PingLogFileError(f"cannot read ping log {file}: {exc.strerror}") from None
    except ImportFormatError as exc:
        raise type(exc)(f"ping log {file.name}: {exc}") from None
    return lines, digest.hexdigest(), size


@dataclass
class _RecordStats:
    """What the manifest says about the records, counted as they are written."""

    records: int = 0
    first_send: int | None = None
    last_send: int | None = None
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, record: PingRecord) -> None:
        self.records += 1
        send = record.send_utc_ns
        self.first_send = send if self.first_send is None else min(self.first_send, send)
        self.last_send = send if self.last_send is None else max(self.last_send, send)
        self.outcomes[record.outcome] += 1


def import_config(
    parsed: PingLogImport,
    *,
    file: Path,
    sha256: str,
    size: int,
    zone_name: str,
    zone_source: str,
    zone: tzinfo,
    stats: _RecordStats,
) -> dict[str, Any]:
    """The manifest ``config`` of an import: source, assumptions and line counts."""
    kinds = parsed.line_kinds
    first_send = stats.first_send
    return {
        "import": {
            "source_file": file.name,
            "sha256": sha256,
            "bytes": size,
            "format": parsed.format,
            "encoding": parsed.encoding,
            "lines": parsed.line_count,
            "line_kinds": dict(kinds),
            "skipped_banner": kinds.get("banner", 0),
            "skipped_blank": kinds.get("blank", 0),
            "unrecognised": kinds.get("unrecognised", 0),
            "unrecognised_first": [
                line.to_json() for line in parsed.unrecognised[:UNRECOGNISED_QUOTED]
            ],
            "unmatched_icmp_errors": len(parsed.unmatched_icmp_errors),
            "unmatched_icmp_errors_first": [
                line.to_json() for line in parsed.unmatched_icmp_errors[:UNRECOGNISED_QUOTED]
            ],
            "records": stats.records,
            "first_send_utc": None if first_send is None else utc_iso(first_send),
            "last_send_utc": None if stats.last_send is None else utc_iso(stats.last_send),
            "outcomes": {outcome: stats.outcomes[outcome] for outcome in sorted(stats.outcomes)},
            "timezone": zone_name if parsed.local_time_used else None,
            "timezone_source": (
                zone_source if parsed.local_time_used else "not used: the stamps are UTC-based"
            ),
            "utc_offset_at_first_send": (
                utc_offset_name(zone, first_send)
                if parsed.local_time_used and first_send is not None
                else None
            ),
            "date_source": parsed.date_source,
            "send_times": parsed.send_times,
            "notes": list(parsed.notes),
        },
        "icmp": {
            "interval_s": parsed.interval_s,
            "interval_source": parsed.interval_source,
            "timeout_s": None,
        },
    }


def run(
    *,
    file: Path,
    fmt: str,
    out: Path,
    command: Sequence[str],
    target: str | None = None,
    timezone: str | None = None,
    start_date: str | date | None = None,
    interval_s: float | None = None,
) -> Path:
    """Import ``file`` (format ``fmt``) into a new run folder under ``out``; return its path.

    ``timezone`` (``+09:00``, ``Asia/Tokyo``; default: the machine's zone)
    places stamps that carry no UTC offset; ``start_date`` dates time-of-day
    stamps until the log gives a date; ``interval_s`` is the probe interval in
    seconds (ping ``-i``, fping ``-p``) when it should not be detected.
    Raises ``ImportFormatError`` (or its subclasses ``PingLogFileError``,
    ``ImportOptionError``) before creating anything when the file cannot be
    imported.
    """
    file = Path(file)
    if timezone is None:
        zone, zone_name, zone_source = machine_timezone()
    else:
        zone, zone_name = parse_timezone(timezone)
        zone_source = "option --timezone"
    day = parse_date(start_date) if isinstance(start_date, str) else start_date
    lines, sha256, size = _log_lines(file)
    try:
        parsed = parse_ping_log(
            lines, fmt=fmt, zone=zone, start_date=day, target=target, interval_s=interval_s
        )
    except ImportOptionError:
        raise
    except ImportFormatError as exc:
        raise type(exc)(f"ping log {file.name}: {exc}") from None

    stats = _RecordStats()

    def config() -> dict[str, Any]:
        return import_config(
            parsed,
            file=file,
            sha256=sha256,
            size=size,
            zone_name=zone_name,
            zone_source=zone_source,
            zone=zone,
            stats=stats,
        )

    folder = create_run_folder(
        out, kind=RUN_KIND, command=command, config=config(), targets=list(parsed.targets)
    )
    status = RunStatus.FAILED
    error: BaseException | None = None
    try:
        sink = CsvSink(
            folder.path / ICMP.path,
            probe=ICMP.probe,
            columns=ICMP.columns,
            meta={
                "interval_s": parsed.interval_s,
                "timeout_s": None,
                "targets": list(parsed.targets),
                "privileged": None,
                "identifiers": None,
                "imported_from": {"file": file.name, "format": parsed.format},
            },
        )
        try:
            folder.register_probe(ICMP.probe, ICMP.path, format="csv", imported=True)
            # Streamed: the records are made, counted and written a batch at a time.
            batch: list[tuple[object, ...]] = []
            for record in parsed.records:
                stats.add(record)
                batch.append(record.csv_row())
                if len(batch) >= WRITE_BATCH:
                    sink.write_rows(batch)
                    batch = []
            sink.write_rows(batch)
        finally:
            sink.close()
        folder.manifest["config"] = redact(config())
        status = RunStatus.COMPLETED
    except ImportFormatError:
        # Found only while the records were made: nothing is left behind either.
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    except BaseException as exc:
        error = exc
        if isinstance(exc, KeyboardInterrupt):
            status = RunStatus.ABORTED
        raise
    finally:
        if folder.path.exists():
            folder.finalize(status, error)
    write_summary(folder.path)
    return folder.path
