"""analysis/timeline.py: every clock mapped onto the harness's, with bounds that hold."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_timeline_runs import (
    DESTINATION,
    MONO0,
    MS,
    SOURCE,
    UTC0,
    Scenario,
    write_run,
)

from migration_blackout.analysis.clocks import ClockEstimate, HostClock, parse_utc_ns
from migration_blackout.analysis.timeline import TIDY_COLUMNS, build_timeline

S = 1_000_000_000


def test_the_offset_is_interpolated_and_its_uncertainty_mixed_linearly() -> None:
    before = ClockEstimate(offset_ns=1_500 * MS, uncertainty_ns=6 * MS, at_mono_ns=100 * S)
    after = ClockEstimate(offset_ns=1_510 * MS, uncertainty_ns=8 * MS, at_mono_ns=200 * S)
    clock = HostClock("h", before, after, utc_minus_mono_ns=0)
    offset, uncertainty = clock.offset_at([100 * S, 150 * S, 200 * S, 250 * S, 50 * S])
    assert offset.tolist() == pytest.approx([1_500e6, 1_505e6, 1_510e6, 1_515e6, 1_495e6])
    # Inside: the interpolated uncertainty (at most the larger one); outside it grows.
    assert uncertainty.tolist() == pytest.approx(
        [6e6, 7e6, 8e6, 0.5 * 6e6 + 1.5 * 8e6, 1.5 * 6e6 + 0.5 * 8e6]
    )


def test_one_estimate_gives_a_constant_offset() -> None:
    only = ClockEstimate(offset_ns=-700 * MS, uncertainty_ns=7 * MS, at_mono_ns=10 * S)
    clock = HostClock("h", None, only, utc_minus_mono_ns=UTC0 - MONO0)
    host_utc = UTC0 + 5 * S - 700 * MS  # the host's clock 0.7 s behind at harness MONO0 + 5 s
    mono, uncertainty = clock.to_harness([host_utc])
    assert mono.tolist() == [MONO0 + 5 * S]
    assert uncertainty.tolist() == [7 * MS]


def test_host_stamps_parse_to_the_nanosecond_whatever_their_zone() -> None:
    values, ok = parse_utc_ns(
        [
            "2026-11-25T22:45:09.5174015Z",  # Get-WinEvent: 100 ns ticks
            "2026-11-25T23:45:09.517401+01:00",  # Get-Date with the host's offset
            "2026-11-25T22:45:09.517401",  # no zone: ambiguous, refused
            "not a time",
            None,
        ]
    )
    base = 1_795_646_709 * S
    assert values[:2].tolist() == [base + 517_401_500, base + 517_401_000]
    assert ok.tolist() == [True, True, False, False, False]


def test_host_polls_land_where_the_host_observed_within_their_uncertainty(
    tmp_path: Path,
) -> None:
    # Host clocks 2.5 s ahead (drifting 200 ppm) and 3.2 s behind the harness.
    truth = write_run(tmp_path / "run", Scenario())
    timeline = build_timeline(tmp_path / "run")
    polls = timeline.polls
    assert len(polls) > 150
    for host, k, mapped, uncertainty in zip(
        polls["host"], polls["k"], polls["host_mono_ns"], polls["host_uncertainty_ns"], strict=True
    ):
        observed = truth.poll_observed[(host, int(k))]
        assert 0 < uncertainty <= 7 * MS
        assert abs(int(mapped) - observed) <= uncertainty, (host, k)
    # Without the mapping the host times are seconds off.
    assert {SOURCE, DESTINATION} == set(timeline.host_clocks)
    assert timeline.warnings == ()


def test_a_hyperv_event_lands_at_its_harness_time(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(source_offset_s=-4.75, source_drift_ppm=-150))
    timeline = build_timeline(tmp_path / "run")
    events = timeline.events[timeline.events["kind"] == "event:20415"]
    assert len(events) == 1
    event = events.iloc[0]
    assert event["lane"] == "events" and event["source"] == f"host:{SOURCE}"
    assert event["t_lo_ns"] <= truth.event_20415 <= event["t_hi_ns"]
    assert event["t_hi_ns"] - event["t_lo_ns"] <= 14 * MS
    assert event["t_utc_ns"] == event["t_mono_ns"] + (UTC0 - MONO0)


def test_without_clock_estimates_polls_sit_mid_round_trip_and_events_are_left_out(
    tmp_path: Path,
) -> None:
    write_run(tmp_path / "run")
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["hyperv"]["clock"]
    manifest_path.write_text(json.dumps(manifest))
    timeline = build_timeline(tmp_path / "run")
    polls = timeline.polls
    middle = polls["send_mono_ns"] + (polls["recv_mono_ns"] - polls["send_mono_ns"]) // 2
    assert (polls["t_mono_ns"] == middle).all()
    assert (polls["host_mono_ns"] == -1).all()
    assert not (timeline.events["kind"] == "event:20415").any()
    assert any("no clock estimate" in w for w in timeline.warnings)
    assert any("could not be placed" in w for w in timeline.warnings)


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(guest="both"),
        Scenario(guest="both", guest_clock_stops=True),
        Scenario(guest="both", heartbeats_lost_until_network=True, guest_drift_ppm=-120),
        Scenario(guest="frames"),
    ],
    ids=["running-clock", "clock-stops-while-paused", "heartbeats-lost", "frames-only"],
)
def test_guest_stamps_map_onto_the_harness_clock_within_their_bounds(
    tmp_path: Path, scenario: Scenario
) -> None:
    truth = write_run(tmp_path / "run", scenario)
    timeline = build_timeline(tmp_path / "run")
    heartbeats = timeline.heartbeats
    for seq, lo, hi in zip(
        heartbeats["seq"], heartbeats["t_lo_ns"], heartbeats["t_hi_ns"], strict=True
    ):
        assert lo <= truth.heartbeat_send[int(seq)] <= hi, seq
    assert (heartbeats["t_hi_ns"] <= heartbeats["recv_mono_ns"]).all()
    frames = timeline.frames
    assert len(frames) > 5
    for seq, lo, hi in zip(frames["seq"], frames["t_lo_ns"], frames["t_hi_ns"], strict=True):
        assert lo <= truth.frame_capture[int(seq)] <= hi, seq
    (clock,) = timeline.guest_clocks.values()
    assert clock.delay_bound_source == "icmp_min_rtt"
    assert clock.delay_bound_ns <= MS
    expected = "guest_frames" if scenario.guest == "frames" else "guest_heartbeat"
    assert clock.anchor_source == expected


def test_the_tidy_table_holds_every_record_in_time_order(tmp_path: Path) -> None:
    write_run(tmp_path / "run", Scenario(guest="both"))
    timeline = build_timeline(tmp_path / "run")
    tidy = timeline.tidy()
    assert list(tidy.columns) == [*TIDY_COLUMNS, "t_utc_ns"]
    assert len(tidy) == len(timeline.events) + len(timeline.icmp) + len(timeline.heartbeats)
    assert (np.diff(tidy["t_mono_ns"].to_numpy()) >= 0).all()
    assert (tidy["t_lo_ns"] <= tidy["t_mono_ns"]).all()
    assert (tidy["t_mono_ns"] <= tidy["t_hi_ns"]).all()
    lanes = set(tidy["lane"])
    assert {f"host:{SOURCE}", f"host:{DESTINATION}", "icmp:10.0.0.2", "events"} <= lanes
    assert {"guest_heartbeat", "guest_frames"} <= lanes
    assert {"truth:pause", "move_vm_start", "event:20415", "Paused", "timeout"} <= set(tidy["kind"])


def test_a_harness_wall_clock_step_is_reported(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["clock"]["end"]["utc_ns"] += 250 * MS  # NTP stepped the harness clock
    manifest_path.write_text(json.dumps(manifest))
    timeline = build_timeline(tmp_path / "run")
    assert timeline.clock.step_ns == 250 * MS
    assert any("250.000 ms" in w for w in timeline.warnings)
    assert replace(timeline.clock, end_mono_ns=None).step_ns is None
