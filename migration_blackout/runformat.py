"""The run format, defined once: what writers put in a run folder and readers take out.

Every writer (the probes, the harness's run folder and events, the importers,
the lab's ground truth) and every reader (``analysis``) imports the names
below; nothing here imports either side, nor pandas, so the lightest probe
process can use it. docs/run-format.md describes the same in prose; change
both together.

* **Versions**: one ``*_SCHEMA_VERSION`` per kind of document, each with its
  history beside it, and ``check_schema_version``, which refuses older and
  newer versions with a message that says what to do (asv's ``load_json``).
* **Layout**: the files of a run folder (``RawFile``: the probe name of its
  header line, its path, its encoding and, for CSV, its columns and dtypes).
* **Names**: run statuses, ICMP outcomes, host-poll and console outcomes.
* **Time**: ``utc_iso``, the one ISO 8601 form of every UTC stamp written.
* **Thresholds**: the limits in ``measure.toml`` ``[thresholds]`` that the
  manifest keeps in ``config.thresholds`` and ``measure report`` checks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from importlib import metadata
from typing import Any, Literal
from urllib.parse import quote

# -- versions ----------------------------------------------------------------

# manifest.json
#   1 (0.1.0): first version.
MANIFEST_SCHEMA_VERSION = 1

# Raw record files (raw/*.csv, raw/*.jsonl), each one's header line:
#   1 (0.1.0): first version.
RAW_SCHEMA_VERSION = 1

# The emulated lab's ground truth (lab/hyperv_emulator/groundtruth.py; copied
# into raw/ground_truth.jsonl below the raw header line):
#   1 (0.1.0): first version: header {"kind": "header", "schema_version": 1,
#      "writer", "created", "lab"}; events {"kind": "event", "event", "mono_ns",
#      "utc_ns", "utc", ...details}.
GROUND_TRUTH_SCHEMA_VERSION = 1

# derived/summary.json (docs/summary-format.md). Later versions only add keys;
# removing or redefining one bumps the version.
#   1 (0.1.0): first version.
SUMMARY_SCHEMA_VERSION = 1

# session.json of a session folder (measure run --repeat):
#   1 (0.1.0): first version.
SESSION_SCHEMA_VERSION = 1

# The JSON document of measure report --json (docs/reports.md):
#   1 (0.1.0): first version.
REPORT_SCHEMA_VERSION = 1

# The first release that wrote each version, to tell a user which release
# reads an old file while no upgrader exists. (Every document is at version 1
# so far; give each its own table when one moves on.)
FIRST_RELEASE_WRITING = {1: "0.1.0"}


class RunFormatError(ValueError):
    """A run folder or one of its files cannot be read by this version."""


def package_version() -> str:
    """The installed migration-blackout's version, or ``"unknown"`` from a bare checkout."""
    try:
        return metadata.version("migration-blackout")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_schema_version(found: object, *, supported: int, what: str) -> None:
    """Refuse a ``schema_version`` other than ``supported`` with a message that says what to do.

    ``what`` names the file for the message, e.g. ``"run folder /x (manifest.json)"``.
    """
    if isinstance(found, bool) or not isinstance(found, int):
        raise RunFormatError(f"{what} has schema_version {found!r}; expected an integer")
    if found == supported:
        return
    here = f"this migration-blackout ({package_version()}) reads schema_version {supported}"
    if found > supported:
        raise RunFormatError(
            f"{what} has schema_version {found}; {here}; upgrade migration-blackout to read it"
        )
    first = FIRST_RELEASE_WRITING.get(found)
    if first is None:
        oldest = min(FIRST_RELEASE_WRITING)
        raise RunFormatError(
            f"{what} has schema_version {found}, older than the first version "
            f"migration-blackout wrote ({oldest}, in {FIRST_RELEASE_WRITING[oldest]}); "
            "it was not written by migration-blackout"
        )
    later = [FIRST_RELEASE_WRITING[v] for v in sorted(FIRST_RELEASE_WRITING) if v > found]
    releases = f"releases {first} up to (not including) {later[0]}" if later else f"{first}"
    raise RunFormatError(
        f"{what} has schema_version {found}; {here} and has no upgrader from {found} yet; "
        f"read it with migration-blackout {releases}"
    )


# -- statuses and outcomes ---------------------------------------------------


class RunStatus(StrEnum):
    """How a run ended (``manifest.json`` ``status``; a session's too)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


RUN_STATUSES = frozenset(str(status) for status in RunStatus)

# ICMP outcomes (raw/icmp.csv ``outcome``). An attempt's own row has one of
# the attempt outcomes; duplicate and late rows come on top of it.
REPLY = "reply"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
ERROR = "error"
UNRESOLVED = "unresolved"
DUPLICATE = "duplicate"
LATE = "late"
ICMP_ATTEMPT_OUTCOMES = (REPLY, TIMEOUT, UNREACHABLE, ERROR, UNRESOLVED)
ICMP_EXTRA_OUTCOMES = (DUPLICATE, LATE)
# Every outcome in this order: the analysis codes them by position.
ICMP_OUTCOMES = (*ICMP_ATTEMPT_OUTCOMES, *ICMP_EXTRA_OUTCOMES)

# A host poll's and a console poll's ``outcome``.
POLL_OK = "ok"
POLL_ERROR = "error"
CONSOLE_NOT_LISTED = "not_listed"

# A console sample's ``classification``.
CONSOLE_BLACK = "black"
CONSOLE_UNCHANGED = "unchanged"
CONSOLE_CHANGED = "changed"
CONSOLE_UNAVAILABLE = "unavailable"

# -- layout ------------------------------------------------------------------

MANIFEST_FILE = "manifest.json"
RAW_DIR = "raw"
DERIVED_DIR = "derived"
SESSION_FILE = "session.json"
FRAMES_DIR = "frames"  # the guest agent's captures
CONSOLE_IMAGE_DIR = "console"  # the console view's screens

# The manifest names a host poller ``host:<host>`` among its probes.
HOST_PROBE_PREFIX = "host:"


@dataclass(frozen=True)
class RawFile:
    """One raw record file: the probe named in its header line, where it lies, how it is encoded.

    ``path`` is relative to the run folder (the manifest's ``probes.<name>.file``).
    A CSV file has ``columns`` in this order and ``dtypes`` (pandas dtype names,
    as the analysis reads them: ``Int64`` for an integer column that may be
    empty, ``int64`` for one that never is).
    """

    probe: str
    path: str
    encoding: Literal["csv", "jsonl"]
    columns: tuple[str, ...] = ()
    dtypes: Mapping[str, str] = field(default_factory=dict)


ICMP = RawFile(
    "icmp",
    "raw/icmp.csv",
    "csv",
    columns=(
        "target",
        "n",
        "seq",
        "ident",
        "outcome",
        "send_mono_ns",
        "send_utc_ns",
        "recv_mono_ns",
        "recv_utc_ns",
        "rtt_ns",
        "icmp_type",
        "icmp_code",
        "from_addr",
        "detail",
    ),
    # Nanosecond stamps are 64-bit integers (UTC ns since 1970 is ~1.8e18, far
    # beyond float64's exact 2**53), never float64; nullable Int64 where a
    # field may be empty. ``n`` is never empty.
    dtypes={
        "target": "category",
        "n": "int64",
        "seq": "Int64",
        "ident": "Int64",
        "outcome": "category",
        "send_mono_ns": "Int64",
        "send_utc_ns": "Int64",
        "recv_mono_ns": "Int64",
        "recv_utc_ns": "Int64",
        "rtt_ns": "Int64",
        "icmp_type": "Int16",
        "icmp_code": "Int16",
        "from_addr": "category",
        "detail": "str",
    },
)
HEARTBEAT = RawFile(
    "guest_heartbeat",
    "raw/guest_heartbeat.csv",
    "csv",
    columns=(
        "agent_id",
        "seq",
        "guest_utc_ns",
        "guest_mono_ns",
        "interval_us",
        "recv_mono_ns",
        "recv_utc_ns",
        "from_addr",
        # Heartbeat version 2 (guest agent 1.1): how late the beat was and how
        # long the agent's fixed work unit took; empty for version 1. Files
        # written before them have only the columns above.
        "late_ns",
        "work_ns",
    ),
    dtypes={
        "agent_id": "str",
        "seq": "int64",
        "guest_utc_ns": "int64",
        "guest_mono_ns": "int64",
        "interval_us": "int64",
        "recv_mono_ns": "int64",
        "recv_utc_ns": "int64",
        "from_addr": "str",
        "late_ns": "Int64",
        "work_ns": "Int64",
    },
)
# The witnesses (measure run --tcp-connect / --witnesses; docs/run-format.md).
TCP_CONNECT = RawFile(
    "tcp_connect",
    "raw/tcp_connect.csv",
    "csv",
    columns=(
        "target",
        "port",
        "n",
        "outcome",
        "start_mono_ns",
        "start_utc_ns",
        "end_mono_ns",
        "end_utc_ns",
        "connect_ns",
        "errno",
        "detail",
    ),
    dtypes={
        "target": "str",
        "port": "int64",
        "n": "int64",
        "outcome": "str",
        "start_mono_ns": "int64",
        "start_utc_ns": "int64",
        "end_mono_ns": "int64",
        "end_utc_ns": "int64",
        "connect_ns": "Int64",
        "errno": "str",
        "detail": "str",
    },
)
TCP_STREAM = RawFile(
    "tcp_stream",
    "raw/tcp_stream.csv",
    "csv",
    columns=(
        "kind",
        "conn",
        "seq",
        "send_mono_ns",
        "send_utc_ns",
        "guest_mono_ns",
        "guest_utc_ns",
        "recv_mono_ns",
        "recv_utc_ns",
        "detail",
    ),
    dtypes={
        "kind": "str",
        "conn": "int64",
        "seq": "Int64",
        "send_mono_ns": "Int64",
        "send_utc_ns": "Int64",
        "guest_mono_ns": "Int64",
        "guest_utc_ns": "Int64",
        "recv_mono_ns": "Int64",
        "recv_utc_ns": "Int64",
        "detail": "str",
    },
)
UDP_DIRECTION = RawFile(
    "udp_direction",
    "raw/udp_direction.csv",
    "csv",
    columns=(
        "seq",
        "outcome",
        "send_mono_ns",
        "send_utc_ns",
        "recv_mono_ns",
        "recv_utc_ns",
        "rtt_ns",
        "guest_recv_mono_ns",
        "guest_recv_utc_ns",
        "received",
        "highest_seq",
        "run_start_seq",
        "agent_id",
        "detail",
    ),
    dtypes={
        "seq": "int64",
        "outcome": "str",
        "send_mono_ns": "int64",
        "send_utc_ns": "int64",
        "recv_mono_ns": "Int64",
        "recv_utc_ns": "Int64",
        "rtt_ns": "Int64",
        "guest_recv_mono_ns": "Int64",
        "guest_recv_utc_ns": "Int64",
        "received": "Int64",
        "highest_seq": "Int64",
        "run_start_seq": "Int64",
        "agent_id": "str",
        "detail": "str",
    },
)
FRAMES = RawFile("guest_frames", "raw/guest_frames.jsonl", "jsonl")
REJECTS = RawFile("guest_rejects", "raw/guest_rejects.jsonl", "jsonl")
HARNESS_EVENTS = RawFile("harness", "raw/events.jsonl", "jsonl")
CLOCK_SAMPLES = RawFile("clock", "raw/clock.jsonl", "jsonl")
HYPERV_EVENTS = RawFile("hyperv_events", "raw/hyperv_events.jsonl", "jsonl")
QEMU_MIGRATION = RawFile("qemu_migration", "raw/qemu_migration.jsonl", "jsonl")
GROUND_TRUTH = RawFile("ground_truth", "raw/ground_truth.jsonl", "jsonl")
CONSOLE = RawFile("console", "raw/console.jsonl", "jsonl")


def host_state_file(host: str) -> RawFile:
    """The poll record of one host (manifest probe ``host:<host>``):
    ``raw/host_<name>.jsonl``. A name from a configuration file is never
    trusted as a path: anything but letters, digits, ``.``, ``_`` and ``-`` is
    percent-encoded (``/`` is ``%2F``), so the file stays in ``raw/`` whatever
    the name; a very long name is cut and told apart by a hash of the whole."""
    encoded = quote(host, safe="")
    if len(encoded) > _MAX_ENCODED_HOST:
        digest = hashlib.blake2b(host.encode("utf-8"), digest_size=6).hexdigest()
        encoded = f"{encoded[: _MAX_ENCODED_HOST - 13]}~{digest}"
    return RawFile("host_state", f"{RAW_DIR}/host_{encoded}.jsonl", "jsonl")


_MAX_ENCODED_HOST = 160  # a file name is at most 255 bytes


# derived/: rebuilt from raw/ by ``measure analyze``.
SUMMARY_FILE = "derived/summary.json"
CONTACT_SHEET_FILE = "derived/contact-sheet.png"
TIMELINE_PNG = "derived/timeline.png"
TIMELINE_SVG = "derived/timeline.svg"
TIMELINE_ZOOM_PNG = "derived/timeline-zoom.png"

# -- time --------------------------------------------------------------------


def utc_iso(utc_ns: int) -> str:
    """ISO 8601 UTC with microseconds (truncated) and a ``Z``: ``2026-11-25T13:02:40.123456Z``."""
    seconds, ns = divmod(utc_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=ns // 1000)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- thresholds ----------------------------------------------------------------

DEFAULT_MAX_REGRESSION_PCT = 10.0


@dataclass(frozen=True)
class Thresholds:
    """Limits ``measure report`` checks; a limit left at None is not checked.

    ``max_blackout_ms``: each run's blackout upper bound, in ms (a run at the
    limit passes). ``max_timeouts``: timeouts inside each run's blackout
    ("Request timed out"; unreachable answers are counted apart and not
    limited). ``max_regression_pct``: how far the median upper bound may rise
    above the baseline's before a significant rise is a regression; None means
    10 %, and it only applies when there is a baseline. ``max_tcp_stall_ms``:
    each run's TCP stream stall (upper bound, the longer direction; runs with
    --witnesses). The manifest keeps
    them as ``config.thresholds`` (``as_json``).
    """

    max_blackout_ms: float | None = None
    max_timeouts: int | None = None
    max_regression_pct: float | None = None
    # Each run's TCP stream stall (upper bound, the longer direction), in ms.
    max_tcp_stall_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_blackout_ms", "max_regression_pct", "max_tcp_stall_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        timeouts = self.max_timeouts
        if timeouts is not None and (
            isinstance(timeouts, bool) or not isinstance(timeouts, int) or timeouts < 0
        ):
            raise ValueError(f"max_timeouts must be an integer >= 0, not {timeouts!r}")

    @property
    def regression_pct(self) -> float:
        """``max_regression_pct``, or its default of 10 %."""
        if self.max_regression_pct is None:
            return DEFAULT_MAX_REGRESSION_PCT
        return float(self.max_regression_pct)

    def as_json(self) -> dict[str, Any]:
        return {
            "max_blackout_ms": self.max_blackout_ms,
            "max_timeouts": self.max_timeouts,
            "max_regression_pct": self.max_regression_pct,
            "max_tcp_stall_ms": self.max_tcp_stall_ms,
        }
