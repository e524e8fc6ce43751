"""analysis/guest.py on synthetic raw files written by the real sinks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from migration_blackout.analysis.guest import (
    FRAMES_SOURCE,
    HEARTBEAT_SOURCE,
    analyse_guest,
    analyse_stream,
    contact_sheet,
    execution_gaps,
    guest_summary,
    load_frames,
    load_heartbeats,
)
from migration_blackout.probes.sink import CsvSink, JsonlSink
from migration_blackout.runformat import FRAMES, HEARTBEAT, RunFormatError

MS = 1_000_000
UTC0 = 1_795_000_000_000_000_000  # guest wall clock at mono 0
MONO0 = 5_000_000_000
HARNESS_OFFSET = 123_456_789  # harness mono = guest mono + this (+ network delay)
AGENT = "00000000000000aa"
# agent_id, seq, guest_utc_ns, guest_mono_ns, interval_us, recv_mono_ns, recv_utc_ns, from_addr
Row = tuple[str, int, int, int, int, int, int, str]


def write_heartbeats(run_dir: Path, rows: list[Row]) -> None:
    sink = CsvSink(run_dir / HEARTBEAT.path, probe="guest_heartbeat", columns=HEARTBEAT.columns)
    sink.write_rows(rows)
    sink.close()


def heartbeat_rows(
    count: int,
    *,
    interval_ms: int = 10,
    freeze_after: int | None = None,
    freeze_ms: float = 0,
    lost: range = range(0),
    clock_jump_ms: float = 0,
    agent: str = AGENT,
    first_seq: int = 0,
) -> list[Row]:
    """Heartbeats on a 10 ms grid with 0.2 ms jitter; a freeze delays every send after it."""
    rng = np.random.default_rng(7)
    rows: list[Row] = []
    for seq in range(first_seq, first_seq + count):
        mono = MONO0 + seq * interval_ms * MS + int(rng.uniform(0, 0.2) * MS)
        utc = UTC0 + mono
        if freeze_after is not None and seq > freeze_after:
            mono += int(freeze_ms * MS)
            utc += int((freeze_ms + clock_jump_ms) * MS)
        recv = mono + HARNESS_OFFSET + int(rng.uniform(0.05, 0.3) * MS)
        if seq in lost:
            continue
        rows.append((agent, seq, utc, mono, interval_ms * 1000, recv, recv + 10**18, "192.0.2.10"))
    return rows


def test_a_freeze_shows_as_an_execution_gap_with_sound_bounds(tmp_path: Path) -> None:
    # The guest loses 1228.5 ms after heartbeat 300: every later send is that late.
    rows = heartbeat_rows(1000, freeze_after=300, freeze_ms=1228.5)
    write_heartbeats(tmp_path, rows)
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    gap = stream.execution_gap
    assert gap is not None
    assert (gap.before_seq, gap.after_seq) == (300, 301)
    assert gap.interval_ms == 10
    assert gap.lower_ms <= 1228.5 <= gap.upper_ms
    assert gap.upper_ms - gap.lower_ms <= 10 + gap.jitter_ms + 1e-9
    assert 0 < gap.jitter_ms < 0.25
    assert gap.wall_clock_jump_ms == pytest.approx(0, abs=1e-6)
    # Frozen, not lost: nothing was sent in the gap, so nothing is missing.
    assert stream.missing == 0
    assert stream.delivery_gap is not None
    assert (stream.delivery_gap.before_seq, stream.delivery_gap.after_seq) == (300, 301)
    assert stream.delivery_gap.missing_between == 0
    assert stream.records == 1000 and stream.agents == 1 and stream.duplicates == 0


def test_a_network_outage_shows_as_a_delivery_gap_with_lost_heartbeats(tmp_path: Path) -> None:
    write_heartbeats(tmp_path, heartbeat_rows(1000, lost=range(400, 520)))
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert stream.missing == 120
    delivery = stream.delivery_gap
    assert delivery is not None
    assert (delivery.before_seq, delivery.after_seq) == (399, 520)
    assert delivery.missing_between == 120
    assert delivery.lower_ms <= 1200 <= delivery.upper_ms + 0.3
    assert delivery.before_recv_utc_ns == delivery.before_recv_mono_ns + 10**18
    # The guest kept running: the step across the lost ones is their slots, not
    # a freeze, and its own stamps have no gap beyond the interval.
    assert stream.execution_gap is not None
    assert stream.execution_gap.gap_ms < 11
    assert execution_gaps(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE) == []


def test_a_freeze_followed_by_a_dark_network_keeps_sound_bounds(tmp_path: Path) -> None:
    # The lab's (and a real network's) reconvergence: frozen 700 ms after
    # heartbeat 300, then the first 45 heartbeats after the resume are lost.
    rows = heartbeat_rows(1000, freeze_after=300, freeze_ms=700, lost=range(301, 346))
    write_heartbeats(tmp_path, rows)
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    gap = stream.execution_gap
    assert gap is not None
    assert (gap.before_seq, gap.after_seq, gap.lost_between) == (300, 346, 45)
    assert gap.step_ms == pytest.approx(700 + 46 * 10, abs=0.3)
    assert gap.lower_ms <= 700 <= gap.upper_ms
    assert gap.gap_ms == pytest.approx(710, abs=0.3)
    # Two intervals plus twice the jitter of every lost slot: far tighter than the step.
    assert gap.upper_ms - gap.lower_ms <= 2 * 10 + 2 * 45 * gap.jitter_ms + 1e-6
    (listed,) = execution_gaps(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert listed == gap


def test_a_wall_clock_corrected_after_resume_shows_as_a_jump(tmp_path: Path) -> None:
    write_heartbeats(
        tmp_path, heartbeat_rows(500, freeze_after=200, freeze_ms=800, clock_jump_ms=-3000)
    )
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert stream.execution_gap is not None
    assert stream.execution_gap.wall_clock_jump_ms == pytest.approx(-3000, abs=0.001)
    assert stream.clock_step is not None
    assert stream.clock_step.step_ms == pytest.approx(-3000, abs=0.001)
    assert (stream.clock_step.before_seq, stream.clock_step.after_seq) == (200, 201)


def test_every_freeze_is_listed_in_time_order(tmp_path: Path) -> None:
    rows = heartbeat_rows(300, freeze_after=100, freeze_ms=500)
    later = heartbeat_rows(300, first_seq=300, freeze_after=450, freeze_ms=250)
    # The second block continues after the first freeze.
    later = [
        (a, s, u + 500 * MS, m + 500 * MS, i, r + 500 * MS, ru + 500 * MS, f)
        for a, s, u, m, i, r, ru, f in later
    ]
    write_heartbeats(tmp_path, rows + later)
    gaps = execution_gaps(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert [(g.before_seq, g.after_seq) for g in gaps] == [(100, 101), (450, 451)]
    assert gaps[0].upper_ms == pytest.approx(510, abs=0.3)
    assert gaps[1].upper_ms == pytest.approx(260, abs=0.3)


def test_duplicates_and_a_restarted_agent_do_not_make_gaps(tmp_path: Path) -> None:
    first = heartbeat_rows(200)
    replayed = first[50:60]
    # A second agent (the agent was restarted) counts its seq from 0 again.
    second = [
        ("00000000000000bb", s, u + 3000 * MS, m + 3000 * MS, i, r + 3000 * MS, ru, f)
        for (_, s, u, m, i, r, ru, f) in heartbeat_rows(200)
    ]
    write_heartbeats(tmp_path, first + replayed + second)
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert stream.duplicates == 10
    assert stream.agents == 2
    assert stream.records == 400
    assert stream.missing == 0
    assert stream.execution_gap is not None
    assert stream.execution_gap.gap_ms < 11  # never across the two agents
    assert stream.delivery_gap is not None
    assert stream.delivery_gap.missing_between == 0  # different agents on each side


def write_frames(
    run_dir: Path, count: int, *, freeze_after: int, freeze_ms: int, queued_ms: int = 0
) -> None:
    """Frames every 1000 ms, real PNGs; ``queued_ms`` delays arrivals after the freeze."""
    (run_dir / "frames").mkdir(parents=True)
    sink = JsonlSink(run_dir / FRAMES.path, probe="guest_frames", meta={"frames_dir": "frames"})
    for seq in range(count):
        mono = MONO0 + seq * 1000 * MS + (freeze_ms * MS if seq > freeze_after else 0)
        recv = mono + HARNESS_OFFSET + 3 * MS + (queued_ms * MS if seq > freeze_after else 0)
        name = f"frames/seq_{seq:06d}.png"
        Image.new("RGB", (160, 120), (seq * 40 % 256, 90, 200)).save(run_dir / name)
        sink.write(
            {
                "seq": seq,
                "file": name,
                "format": "png",
                "width": 160,
                "height": 120,
                "bytes": 100,
                "guest_utc_ns": UTC0 + mono,
                "guest_mono_ns": mono,
                "capture_ms": 7.5,
                "interval_ns": 1000 * MS,
                "agent_id": AGENT,
                "guest_send_mono_ns": mono + 8 * MS,
                "recv_mono_ns": recv,
                "recv_utc_ns": UTC0 + recv,
                "stored_mono_ns": recv + 2 * MS,
                "from_addr": "192.0.2.10",
            }
        )
    sink.close()


def test_frames_and_the_summary_block(tmp_path: Path) -> None:
    write_frames(tmp_path, 12, freeze_after=5, freeze_ms=2400)
    write_heartbeats(tmp_path, heartbeat_rows(2000, freeze_after=700, freeze_ms=2400))
    frames = load_frames(tmp_path)
    assert list(frames["seq"]) == list(range(12))
    assert frames["file"].iloc[3] == "frames/seq_000003.png"

    analysis = analyse_guest(tmp_path)
    assert analysis.frames is not None and analysis.heartbeat is not None
    frame_gap = analysis.frames.execution_gap
    assert frame_gap is not None and frame_gap.source == FRAMES_SOURCE
    assert (frame_gap.before_seq, frame_gap.after_seq) == (5, 6)
    assert frame_gap.upper_ms == 3400 and frame_gap.lower_ms == 2400

    summary = guest_summary(analysis)
    json.dumps(summary)  # plain JSON types only
    assert set(summary) == {"execution_gap", "delivery_gap", "heartbeat", "frames"}
    assert summary["execution_gap"]["source"] == HEARTBEAT_SOURCE
    assert summary["execution_gap"]["before_seq"] == 700
    assert summary["execution_gap"]["lower_ms"] <= 2400 <= summary["execution_gap"]["upper_ms"]
    assert summary["frames"]["file"] == "raw/guest_frames.jsonl"
    assert summary["frames"]["execution_gap"]["before_guest_utc"].endswith("Z")
    assert summary["frames"]["records"] == 12
    assert summary["heartbeat"]["missing"] == 0
    assert summary["heartbeat"]["largest_clock_step"]["step_ms"] == pytest.approx(0, abs=0.001)


def test_a_run_without_guest_files_has_an_empty_block(tmp_path: Path) -> None:
    summary = guest_summary(analyse_guest(tmp_path))
    assert summary == {
        "execution_gap": None,
        "delivery_gap": None,
        "heartbeat": None,
        "frames": None,
    }


def test_a_raw_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    write_heartbeats(tmp_path, heartbeat_rows(10))
    path = tmp_path / HEARTBEAT.path
    text = path.read_text().replace('"schema_version": 1', '"schema_version": 2')
    path.write_text(text)
    with pytest.raises(RunFormatError, match=r"schema_version 2.*upgrade"):
        load_heartbeats(tmp_path)


def test_contact_sheet_shows_the_frames_around_the_gap(tmp_path: Path) -> None:
    write_frames(tmp_path, 12, freeze_after=5, freeze_ms=2400, queued_ms=500)
    out = contact_sheet(tmp_path, tmp_path / "derived" / "contact.png", around=2, thumb_width=160)
    with Image.open(out) as sheet:
        sheet.load()
        # Four tiles (#4, #5 | gap | #6, #7) and the gap marker.
        assert sheet.width == 8 + 4 * (160 + 8) + 56
        pixels = np.asarray(sheet)
    thumb_colours = {tuple(pixels[60, 8 + 80 + i * 168]) for i in range(2)}
    assert thumb_colours == {(4 * 40 % 256, 90, 200), (5 * 40 % 256, 90, 200)}
    marker_x = 8 + 2 * 168
    assert tuple(pixels[60, marker_x + 5]) == (200, 30, 30)


def test_heartbeat_analysis_is_vectorised(tmp_path: Path) -> None:
    # An hour at 100 Hz: a per-row Python loop would take far longer than this budget.
    import time

    count = 360_000
    seq = np.arange(count, dtype=np.int64)
    mono = MONO0 + seq * 10 * MS
    mono[200_000:] += 1500 * MS
    rows = zip(
        [AGENT] * count,
        seq.tolist(),
        (mono + UTC0).tolist(),
        mono.tolist(),
        [10_000] * count,
        (mono + HARNESS_OFFSET).tolist(),
        (mono + UTC0).tolist(),
        ["192.0.2.10"] * count,
        strict=True,
    )
    write_heartbeats(tmp_path, list(rows))
    started = time.perf_counter()
    stream = analyse_stream(load_heartbeats(tmp_path), source=HEARTBEAT_SOURCE)
    assert time.perf_counter() - started < 5.0
    assert stream.execution_gap is not None
    assert stream.execution_gap.before_seq == 199_999
