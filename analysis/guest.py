"""The guest's own evidence: when it stopped running, and when its deliveries stopped.

Input: ``raw/guest_heartbeat.csv`` (UDP heartbeats, 100 per second by default)
and ``raw/guest_frames.jsonl`` (numbered screenshots, one per second), both
written by ``probes/guest_receiver.py`` with the guest's stamps beside the
harness's arrival stamps. docs/guest-agent.md explains the method; in short,
for each stream:

* **execution gap**: the longest step between consecutive records of one
  agent on the *guest's* monotonic clock. Records are sent on a grid of
  nominal interval I; a guest frozen for F between two sends a, b (a paused
  VM, SIGSTOP in the lab) makes their gap G = t_b - t_a satisfy
  ``G - I - jitter <= F <= G``: the freeze lies between the two sends
  (upper), and it began no later than the slot after a, where the guest would
  have sent, and b was sent as soon as it ran again (lower). ``jitter`` is
  the 99th percentile of how late normal records are (gap - I over gaps
  shorter than 2 I). It needs the guest's monotonic clock to run while the
  guest is frozen (true for SIGSTOP; a paused VM's clock may stop, and then
  only the delivery gap and the wall-clock jump show the pause).
  Records lost between a and b (n sequence numbers missing: sent while the
  network was dark, so the guest ran then) took their slots of the step: the
  gap is ``G - n I`` and the bounds widen to ``G - (n+1)(I + jitter) <= F <=
  G - (n-1)(I - jitter)`` (the first send after a freeze falls anywhere
  between two slots). A step across lost records alone (an outage, no
  freeze) is about one interval, not an execution gap.
* **wall-clock jump** across that gap: guest UTC delta minus guest monotonic
  delta; a guest whose clock is corrected after resume shows it here.
* **delivery gap**: the longest step between consecutive arrivals on the
  *harness* monotonic clock, with the same bounds, and how many records sent
  in between never arrived (``missing_between``: heartbeats lost in the
  network, or frames dropped by the agent's queue). A frozen guest sends
  nothing (missing 0); a network outage loses what was sent (missing > 0).

All computations are vectorised over numpy arrays; only the few gaps that are
reported become Python objects. This module reads files, never talks to
probes or hosts.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from migration_blackout.analysis.outputs import replace_file
from migration_blackout.analysis.rundata import read_jsonl, warn_skipped
from migration_blackout.runformat import (
    FRAMES,
    HEARTBEAT,
    RAW_SCHEMA_VERSION,
    RunFormatError,
    check_schema_version,
    utc_iso,
)

# A figure from a guest stream names its probe as its source.
HEARTBEAT_SOURCE = HEARTBEAT.probe
FRAMES_SOURCE = FRAMES.probe

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000

# The columns every analysis needs, as both streams are normalised to them.
GUEST_RECORD_COLUMNS = (
    "agent_id",
    "seq",
    "guest_utc_ns",
    "guest_mono_ns",
    "interval_ns",
    "recv_mono_ns",
    "recv_utc_ns",
)

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ExecutionGap:
    """The longest step in one agent's own monotonic stamps: the guest ran nothing in it.

    ``lower_ms <= frozen time <= upper_ms`` (module docstring). Stamps are the
    guest's clocks at the record before and the record after the gap.
    """

    source: str  # "guest_heartbeat" or "guest_frames"
    agent_id: str
    before_seq: int
    after_seq: int
    gap_ms: float  # the step less the slots of the records lost in it
    interval_ms: float
    jitter_ms: float
    lower_ms: float
    upper_ms: float
    before_guest_mono_ns: int
    after_guest_mono_ns: int
    before_guest_utc_ns: int
    after_guest_utc_ns: int
    wall_clock_jump_ms: float  # guest UTC delta minus guest monotonic delta across the gap
    step_ms: float = 0.0  # the guest-monotonic step between the two records
    lost_between: int = 0  # records the guest sent between the two that never arrived


@dataclass(frozen=True)
class DeliveryGap:
    """The longest step between consecutive arrivals on the harness monotonic clock.

    ``missing_between``: records of the same agent whose seq lies between the
    two (sent, never arrived); 0 when the two belong to different agents.
    """

    source: str
    before_seq: int
    after_seq: int
    gap_ms: float
    interval_ms: float
    jitter_ms: float
    lower_ms: float
    upper_ms: float
    before_recv_mono_ns: int
    after_recv_mono_ns: int
    before_recv_utc_ns: int
    after_recv_utc_ns: int
    missing_between: int


@dataclass(frozen=True)
class ClockStep:
    """The largest step of the guest's wall clock against its monotonic clock, record to record."""

    source: str
    agent_id: str
    before_seq: int
    after_seq: int
    step_ms: float  # UTC delta minus monotonic delta; negative: the clock was set back
    after_guest_utc_ns: int


@dataclass(frozen=True)
class StreamAnalysis:
    """One stream (heartbeats or frames): counts, and its largest gaps."""

    source: str
    records: int
    agents: int
    interval_ms: float | None
    first_guest_utc_ns: int | None
    last_guest_utc_ns: int | None
    missing: int  # seq numbers never received, within each agent's first..last
    duplicates: int  # records of a (agent, seq) already seen, left out of the analysis
    execution_gap: ExecutionGap | None
    delivery_gap: DeliveryGap | None
    clock_step: ClockStep | None


@dataclass(frozen=True)
class GuestAnalysis:
    heartbeat: StreamAnalysis | None  # None: the run has no heartbeat file
    frames: StreamAnalysis | None


# -- reading ---------------------------------------------------------------


def _check_header(header: Any, path: Path, probe: str) -> None:
    where = f"{path}"
    if not isinstance(header, dict) or header.get("probe") != probe:
        raise RunFormatError(f"{where} does not start with a {probe} header line")
    check_schema_version(header.get("schema_version"), supported=RAW_SCHEMA_VERSION, what=where)


def _normalise(records: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "agent_id": records["agent_id"].fillna("").astype(str),
            **{
                c: records[c].astype("int64")
                for c in GUEST_RECORD_COLUMNS
                if c not in ("agent_id", "interval_ns")
            },
            "interval_ns": records["interval_ns"].astype("Int64"),
        }
    )
    return out[list(GUEST_RECORD_COLUMNS)]


_INT64 = (-(2**63), 2**63 - 1)


def load_heartbeats(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The heartbeats in the normalised columns (``interval_ns`` from ``interval_us``)
    and ``work_ns`` (NA in a heartbeat before version 2).

    A row that is not a heartbeat (invalid UTF-8, the wrong number of fields,
    a number that is not a 64-bit integer) is counted and skipped with a
    ``RawDataWarning``; a partial last line is left out.
    """
    path = Path(run_dir) / HEARTBEAT.path
    with open(path, "rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace")
        if not first.startswith("# "):
            raise RunFormatError(f"{path} does not start with a '# ' header line")
        try:
            header = json.loads(first[2:])
        except json.JSONDecodeError:
            raise RunFormatError(f"{path} has a header line that is not JSON") from None
        _check_header(header, path, HEARTBEAT_SOURCE)
        body = handle.read()
    complete = body[: body.rfind(b"\n") + 1]  # a partial last line is not a record
    try:
        raw = pd.read_csv(
            io.BytesIO(complete),
            dtype=dict(HEARTBEAT.dtypes),
            keep_default_na=False,
            encoding="utf-8",
        )
    except (ValueError, OverflowError, UnicodeDecodeError, pd.errors.ParserError):
        raw = _heartbeats_row_by_row(path, complete)
    raw["interval_ns"] = raw["interval_us"] * 1000
    heartbeats = _normalise(raw)
    # The work time (heartbeat version 2; NA before it), kept for the brownout
    # (analysis.brownout) so that nothing reads the file a second time.
    heartbeats["work_ns"] = pd.Series(raw.get("work_ns", pd.NA), index=raw.index, dtype="Int64")
    return heartbeats


def _heartbeats_row_by_row(path: Path, data: bytes) -> pd.DataFrame:
    """The slow path for a file with bad rows: each row checked, bad ones skipped."""
    lines = data.split(b"\n")[:-1]
    names = lines[0].decode("utf-8", errors="replace").strip().split(",") if lines else []
    # Files before heartbeat version 2 lack its last two columns (late_ns, work_ns).
    if names not in (list(HEARTBEAT.columns), list(HEARTBEAT.columns[:-2])):
        raise RunFormatError(f"{path} has columns {names}; expected {list(HEARTBEAT.columns)}")
    rows: list[list[Any]] = []
    skipped, first = 0, ""
    for number, line in enumerate(lines[1:], 3):
        try:
            fields = next(csv.reader([line.decode("utf-8")]))
            if len(fields) != len(names):
                raise ValueError(f"{len(fields)} fields")
            row: list[Any] = []
            for name, text in zip(names, fields, strict=True):
                dtype = HEARTBEAT.dtypes[name]
                if dtype == "Int64" and text == "":
                    row.append(None)  # a version 1 heartbeat in a version 2 file
                elif dtype in ("int64", "Int64"):
                    value = int(text)
                    if not _INT64[0] <= value <= _INT64[1]:
                        raise ValueError(f"{name} out of range")
                    row.append(value)
                else:
                    row.append(text)
        except (UnicodeDecodeError, ValueError, StopIteration, csv.Error) as error:
            skipped += 1
            first = first or f"line {number}, {error}"
            continue
        rows.append(row)
    if skipped:
        warn_skipped(str(path), skipped, first)
    frame = pd.DataFrame(rows, columns=names)
    return frame.astype({name: HEARTBEAT.dtypes[name] for name in names})


def load_frames(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``raw/guest_frames.jsonl``: the normalised columns plus every other recorded field.

    A record without a guest stamp or seq that is a 64-bit integer is counted
    and skipped with a ``RawDataWarning``.
    """
    path = Path(run_dir) / FRAMES.path
    raw_file = read_jsonl(path, what=str(path))
    _check_header(raw_file.header, path, FRAMES_SOURCE)
    rows = []
    skipped, first = 0, ""
    for record in raw_file.records:
        if all(
            isinstance(record.get(key), int) and _INT64[0] <= record[key] <= _INT64[1]
            for key in ("seq", "guest_utc_ns", "guest_mono_ns", "recv_mono_ns", "recv_utc_ns")
        ):
            rows.append(record)
        else:
            skipped += 1
            first = first or f"seq {record.get('seq')!r}, a stamp missing or out of range"
    if skipped:
        warn_skipped(str(path), skipped, first)
    raw = pd.DataFrame.from_records(rows, columns=None if rows else [*GUEST_RECORD_COLUMNS, "file"])
    if "interval_ns" not in raw:
        raw["interval_ns"] = pd.NA
    if "agent_id" not in raw:
        raw["agent_id"] = ""
    normalised = _normalise(raw)
    extra = raw.drop(columns=[c for c in GUEST_RECORD_COLUMNS if c in raw.columns])
    return pd.concat([normalised, extra], axis=1)


# -- analysis --------------------------------------------------------------


def _nominal_interval_ns(records: pd.DataFrame, steps_ns: Int64Array) -> float | None:
    stated = records["interval_ns"].dropna()
    if len(stated):
        return float(stated.median())
    positive = steps_ns[steps_ns > 0]
    return float(np.median(positive)) if len(positive) else None


def _jitter_ns(steps_ns: Int64Array, interval_ns: float) -> float:
    """99th percentile of lateness (step - interval, >= 0) over normal steps (< 2 intervals)."""
    normal = steps_ns[steps_ns < 2 * interval_ns].astype(np.float64)
    if not len(normal):
        return 0.0
    return float(np.percentile(np.clip(normal - interval_ns, 0.0, None), 99))


def _bounds_ms(
    gap_ns: int, interval_ns: float, jitter_ns: float, lost: int = 0
) -> tuple[float, float]:
    """Bounds of the time frozen in a step of ``gap_ns`` across ``lost`` lost records."""
    if lost == 0:
        lower = max(0.0, gap_ns - interval_ns - jitter_ns)
        return lower / _NS_PER_MS, gap_ns / _NS_PER_MS
    # The lost records went out after the freeze: the first as soon as the guest
    # ran, the rest and b on slots of the grid, exact multiples of I apart, so
    # the guest ran again by t_b - (n - 1) I. How early it ran again depends on
    # its keeping to the grid after the resume (a stall skips slots): the lower
    # bound allows each of the n + 1 steps its jitter.
    lower = max(0.0, gap_ns - (lost + 1) * (interval_ns + jitter_ns))
    upper = max(lower, gap_ns - (lost - 1) * interval_ns)
    return lower / _NS_PER_MS, upper / _NS_PER_MS


def _in_send_order(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One record per (agent, seq), sorted by agent then seq; and how many duplicates went."""
    unique = records.drop_duplicates(["agent_id", "seq"], keep="first")
    ordered = unique.sort_values(["agent_id", "seq"], kind="stable").reset_index(drop=True)
    return ordered, len(records) - len(unique)


def _execution_steps(ordered: pd.DataFrame) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Positions ``i`` (pairs i, i+1 of one agent), their guest-monotonic steps,
    and how many records were lost between them (sequence numbers missing)."""
    agent = ordered["agent_id"].to_numpy()
    mono = ordered["guest_mono_ns"].to_numpy(np.int64)
    seq = ordered["seq"].to_numpy(np.int64)
    same_agent = agent[1:] == agent[:-1]
    positions = np.flatnonzero(same_agent).astype(np.int64)
    lost = np.clip(seq[positions + 1] - seq[positions] - 1, 0, None)
    return positions, mono[positions + 1] - mono[positions], lost


def _frozen_steps(steps_ns: Int64Array, lost: Int64Array, interval_ns: float) -> Int64Array:
    """Each step less the slots of the records lost in it: what a freeze can explain."""
    return (steps_ns - lost * interval_ns).astype(np.int64)


def _execution_gap(
    source: str,
    ordered: pd.DataFrame,
    at: int,
    step_ns: int,
    interval_ns: float,
    jitter_ns: float,
    lost: int = 0,
) -> ExecutionGap:
    before, after = ordered.iloc[at], ordered.iloc[at + 1]
    lower, upper = _bounds_ms(step_ns, interval_ns, jitter_ns, lost)
    utc_step = int(after["guest_utc_ns"]) - int(before["guest_utc_ns"])
    return ExecutionGap(
        source=source,
        agent_id=str(before["agent_id"]),
        before_seq=int(before["seq"]),
        after_seq=int(after["seq"]),
        gap_ms=(step_ns - lost * interval_ns) / _NS_PER_MS,
        interval_ms=interval_ns / _NS_PER_MS,
        jitter_ms=jitter_ns / _NS_PER_MS,
        lower_ms=lower,
        upper_ms=upper,
        before_guest_mono_ns=int(before["guest_mono_ns"]),
        after_guest_mono_ns=int(after["guest_mono_ns"]),
        before_guest_utc_ns=int(before["guest_utc_ns"]),
        after_guest_utc_ns=int(after["guest_utc_ns"]),
        wall_clock_jump_ms=(utc_step - step_ns) / _NS_PER_MS,
        step_ms=step_ns / _NS_PER_MS,
        lost_between=lost,
    )


def execution_gaps(
    records: pd.DataFrame, *, source: str, min_gap_ms: float | None = None
) -> list[ExecutionGap]:
    """Every step in the guest's monotonic stamps longer than ``min_gap_ms``, in time order.

    Default threshold: three nominal intervals. ``records``: the columns of
    ``load_heartbeats`` / ``load_frames``.
    """
    ordered, _ = _in_send_order(records)
    positions, steps, lost = _execution_steps(ordered)
    interval_ns = _nominal_interval_ns(ordered, steps)
    if interval_ns is None:
        return []
    jitter_ns = _jitter_ns(steps, interval_ns)
    threshold_ns = 3 * interval_ns if min_gap_ms is None else min_gap_ms * _NS_PER_MS
    chosen = np.flatnonzero(_frozen_steps(steps, lost, interval_ns) > threshold_ns)
    gaps = [
        _execution_gap(
            source,
            ordered,
            int(positions[i]),
            int(steps[i]),
            interval_ns,
            jitter_ns,
            int(lost[i]),
        )
        for i in chosen
    ]
    return sorted(gaps, key=lambda gap: gap.before_guest_mono_ns)


def analyse_stream(
    records: pd.DataFrame, *, source: str, duplicates_dropped: int = 0
) -> StreamAnalysis:
    """Counts and largest gaps of one stream (``source``: ``guest_heartbeat``, ``guest_frames``).

    ``duplicates_dropped``: duplicate records the caller left out of ``records``
    already (``Timeline.guest_streams``); they are counted with any left in."""
    ordered, duplicates = _in_send_order(records)
    duplicates += duplicates_dropped
    positions, steps, lost = _execution_steps(ordered)
    interval_ns = _nominal_interval_ns(ordered, steps)

    per_agent = ordered.groupby("agent_id", sort=False)["seq"].agg(["min", "max", "count"])
    missing = int((per_agent["max"] - per_agent["min"] + 1 - per_agent["count"]).sum())

    execution_gap = None
    clock_step = None
    if len(steps) and interval_ns is not None:
        jitter_ns = _jitter_ns(steps, interval_ns)
        at = int(np.argmax(_frozen_steps(steps, lost, interval_ns)))
        execution_gap = _execution_gap(
            source,
            ordered,
            int(positions[at]),
            int(steps[at]),
            interval_ns,
            jitter_ns,
            int(lost[at]),
        )
        utc = ordered["guest_utc_ns"].to_numpy(np.int64)
        clock_steps = (utc[positions + 1] - utc[positions]) - steps
        k = int(np.argmax(np.abs(clock_steps)))
        after = ordered.iloc[int(positions[k]) + 1]
        clock_step = ClockStep(
            source=source,
            agent_id=str(after["agent_id"]),
            before_seq=int(ordered.iloc[int(positions[k])]["seq"]),
            after_seq=int(after["seq"]),
            step_ms=int(clock_steps[k]) / _NS_PER_MS,
            after_guest_utc_ns=int(after["guest_utc_ns"]),
        )

    delivery_gap = None
    if len(ordered) >= 2 and interval_ns is not None:
        delivery_gap = _delivery_gap(source, ordered, interval_ns)

    utc_all = ordered["guest_utc_ns"]
    return StreamAnalysis(
        source=source,
        records=len(ordered),
        agents=len(per_agent),
        interval_ms=None if interval_ns is None else interval_ns / _NS_PER_MS,
        first_guest_utc_ns=int(utc_all.min()) if len(ordered) else None,
        last_guest_utc_ns=int(utc_all.max()) if len(ordered) else None,
        missing=missing,
        duplicates=duplicates,
        execution_gap=execution_gap,
        delivery_gap=delivery_gap,
        clock_step=clock_step,
    )


def _delivery_gap(source: str, ordered: pd.DataFrame, interval_ns: float) -> DeliveryGap:
    arrivals = ordered.sort_values("recv_mono_ns", kind="stable").reset_index(drop=True)
    recv = arrivals["recv_mono_ns"].to_numpy(np.int64)
    steps = recv[1:] - recv[:-1]
    at = int(np.argmax(steps))
    before, after = arrivals.iloc[at], arrivals.iloc[at + 1]
    jitter_ns = _jitter_ns(steps, interval_ns)
    lower, upper = _bounds_ms(int(steps[at]), interval_ns, jitter_ns)
    same_agent = before["agent_id"] == after["agent_id"]
    between = ordered[
        (ordered["agent_id"] == before["agent_id"])
        & (ordered["seq"] > before["seq"])
        & (ordered["seq"] < after["seq"])
    ]
    missing_between = (
        max(0, int(after["seq"]) - int(before["seq"]) - 1 - len(between)) if same_agent else 0
    )
    return DeliveryGap(
        source=source,
        before_seq=int(before["seq"]),
        after_seq=int(after["seq"]),
        gap_ms=int(steps[at]) / _NS_PER_MS,
        interval_ms=interval_ns / _NS_PER_MS,
        jitter_ms=jitter_ns / _NS_PER_MS,
        lower_ms=lower,
        upper_ms=upper,
        before_recv_mono_ns=int(before["recv_mono_ns"]),
        after_recv_mono_ns=int(after["recv_mono_ns"]),
        before_recv_utc_ns=int(before["recv_utc_ns"]),
        after_recv_utc_ns=int(after["recv_utc_ns"]),
        missing_between=missing_between,
    )


def analyse_guest(run_dir: str | os.PathLike[str]) -> GuestAnalysis:
    """Both streams of a run folder; a stream whose file is absent is None."""
    path = Path(run_dir)
    heartbeat = None
    if (path / HEARTBEAT.path).is_file():
        heartbeat = analyse_stream(load_heartbeats(path), source=HEARTBEAT_SOURCE)
    frames = None
    if (path / FRAMES.path).is_file():
        frames = analyse_stream(load_frames(path), source=FRAMES_SOURCE)
    return GuestAnalysis(heartbeat=heartbeat, frames=frames)


# -- summary ---------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _execution_gap_json(gap: ExecutionGap | None) -> dict[str, Any] | None:
    if gap is None:
        return None
    return {
        "source": gap.source,
        "lower_ms": _ms(gap.lower_ms),
        "upper_ms": _ms(gap.upper_ms),
        "gap_ms": _ms(gap.gap_ms),
        "interval_ms": _ms(gap.interval_ms),
        "jitter_ms": _ms(gap.jitter_ms),
        "agent_id": gap.agent_id,
        "before_seq": gap.before_seq,
        "after_seq": gap.after_seq,
        "before_guest_utc": utc_iso(gap.before_guest_utc_ns),
        "after_guest_utc": utc_iso(gap.after_guest_utc_ns),
        "before_guest_mono_ns": gap.before_guest_mono_ns,
        "after_guest_mono_ns": gap.after_guest_mono_ns,
        "wall_clock_jump_ms": _ms(gap.wall_clock_jump_ms),
        "step_ms": _ms(gap.step_ms),
        "lost_between": gap.lost_between,
    }


def _delivery_gap_json(gap: DeliveryGap | None) -> dict[str, Any] | None:
    if gap is None:
        return None
    return {
        "source": gap.source,
        "lower_ms": _ms(gap.lower_ms),
        "upper_ms": _ms(gap.upper_ms),
        "gap_ms": _ms(gap.gap_ms),
        "interval_ms": _ms(gap.interval_ms),
        "jitter_ms": _ms(gap.jitter_ms),
        "before_seq": gap.before_seq,
        "after_seq": gap.after_seq,
        "before_recv_utc": utc_iso(gap.before_recv_utc_ns),
        "after_recv_utc": utc_iso(gap.after_recv_utc_ns),
        "before_recv_mono_ns": gap.before_recv_mono_ns,
        "after_recv_mono_ns": gap.after_recv_mono_ns,
        "missing_between": gap.missing_between,
    }


def _stream_json(stream: StreamAnalysis | None, file: str) -> dict[str, Any] | None:
    if stream is None:
        return None
    step = stream.clock_step
    return {
        "file": file,
        "records": stream.records,
        "agents": stream.agents,
        "interval_ms": _ms(stream.interval_ms),
        "first_guest_utc": None
        if stream.first_guest_utc_ns is None
        else utc_iso(stream.first_guest_utc_ns),
        "last_guest_utc": None
        if stream.last_guest_utc_ns is None
        else utc_iso(stream.last_guest_utc_ns),
        "missing": stream.missing,
        "duplicates": stream.duplicates,
        "execution_gap": _execution_gap_json(stream.execution_gap),
        "delivery_gap": _delivery_gap_json(stream.delivery_gap),
        "largest_clock_step": None
        if step is None
        else {
            "step_ms": _ms(step.step_ms),
            "agent_id": step.agent_id,
            "before_seq": step.before_seq,
            "after_seq": step.after_seq,
            "after_guest_utc": utc_iso(step.after_guest_utc_ns),
        },
    }


def guest_summary(analysis: GuestAnalysis) -> dict[str, Any]:
    """The ``guest`` block of derived/summary.json (docs/guest-agent.md describes every key).

    ``execution_gap`` and ``delivery_gap`` at the top are the heartbeat's when
    the run has heartbeats (finer: 10 ms), else the frames'.
    """
    preferred = analysis.heartbeat if analysis.heartbeat is not None else analysis.frames
    return {
        "execution_gap": _execution_gap_json(preferred.execution_gap if preferred else None),
        "delivery_gap": _delivery_gap_json(preferred.delivery_gap if preferred else None),
        "heartbeat": _stream_json(analysis.heartbeat, HEARTBEAT.path),
        "frames": _stream_json(analysis.frames, FRAMES.path),
    }


# -- contact sheet ---------------------------------------------------------


_MAX_FRAME_PIXELS = 40_000_000  # the receiver's own limit (probes/guest_receiver.py)


def _thumbnail(run_path: Path, file: Any, width: int) -> Image.Image:
    """The frame's image as a thumbnail; a grey tile when the record names no
    stored frame (a path outside ``frames/``, a file gone or not an image)."""
    relative = Path(str(file)) if isinstance(file, str) else None
    if relative is not None and (
        relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != ("frames",)
    ):
        relative = None
    try:
        if relative is None:
            raise FileNotFoundError(file)
        with Image.open(run_path / relative) as image:
            if image.width * image.height > _MAX_FRAME_PIXELS:
                raise ValueError("too many pixels")
            image.load()
            height = max(1, round(image.height * width / image.width))
            return image.convert("RGB").resize((width, height))
    except (OSError, ValueError, Image.DecompressionBombError):
        return Image.new("RGB", (width, max(1, width * 3 // 4)), (160, 160, 160))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _clock_label(utc_ns: int) -> str:
    return utc_iso(utc_ns)[11:23]  # HH:MM:SS.mmm


def contact_sheet(
    run_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    frames: pd.DataFrame | None = None,
    around: int = 3,
    thumb_width: int = 320,
) -> Path:
    """A PNG of the frames around the largest frame gap, like the write-up's table.

    ``around`` frames on each side of the gap (the last before it and the
    first after it included), each labelled with its sequence number, the
    guest's capture time and the harness's arrival time (UTC), and a marker
    between the two frames that straddle the gap. ``frames``: the run's
    frames where they are read already (``load_frames``, or the timeline's).
    Returns ``out_path``.
    """
    run_path = Path(run_dir)
    if frames is None:
        frames = load_frames(run_path)
    ordered, _ = _in_send_order(frames)
    positions, steps, _lost = _execution_steps(ordered)
    if not len(steps):
        raise ValueError(f"{run_path / FRAMES.path} has fewer than two frames of one agent")
    gap_at = int(positions[int(np.argmax(steps))])
    agent = ordered.iloc[gap_at]["agent_id"]
    lo = max(gap_at - around + 1, 0)
    hi = min(gap_at + around, len(ordered) - 1)
    window = ordered.iloc[lo : hi + 1]
    window = window[window["agent_id"] == agent]

    font = _font(15)
    small = _font(13)
    label_height = 64
    pad = 8
    marker = 56
    thumbs: list[tuple[Image.Image, pd.Series]] = []
    for _, row in window.iterrows():
        thumbs.append((_thumbnail(run_path, row.get("file"), thumb_width), row))
    tile_height = max(thumb.height for thumb, _ in thumbs) + label_height
    title_height = 48
    width = pad + len(thumbs) * (thumb_width + pad) + marker
    sheet = Image.new("RGB", (width, title_height + tile_height + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    gap_ms = int(steps[int(np.argmax(steps))]) / _NS_PER_MS
    before_seq = int(ordered.iloc[gap_at]["seq"])
    after_seq = int(ordered.iloc[gap_at + 1]["seq"])
    draw.text(
        (pad, 6),
        f"{run_path.name}: largest gap between captures #{before_seq} and #{after_seq}: "
        f"{gap_ms / 1000:.3f} s on the guest's clock",
        fill=(0, 0, 0),
        font=font,
    )
    draw.text(
        (pad, 26),
        "times UTC: guest = captured (guest clock), harness = arrived (harness clock)",
        fill=(90, 90, 90),
        font=small,
    )
    x = pad
    for thumb, row in thumbs:
        y = title_height
        sheet.paste(thumb, (x, y))
        text_y = y + thumb.height + 4
        draw.text((x, text_y), f"#{int(row['seq'])}", fill=(0, 0, 0), font=font)
        draw.text(
            (x, text_y + 20),
            f"guest   {_clock_label(int(row['guest_utc_ns']))}",
            fill=(0, 0, 0),
            font=small,
        )
        draw.text(
            (x, text_y + 38),
            f"harness {_clock_label(int(row['recv_utc_ns']))}",
            fill=(0, 0, 0),
            font=small,
        )
        x += thumb_width + pad
        if int(row["seq"]) == before_seq:
            draw.rectangle(
                (x, title_height, x + marker - pad, title_height + tile_height), fill=(200, 30, 30)
            )
            draw.text(
                (x + 2, title_height + tile_height // 2),
                f"{gap_ms / 1000:.1f}s",
                fill=(255, 255, 255),
                font=small,
            )
            x += marker
    return replace_file(out_path, lambda handle: sheet.save(handle, "PNG"))
