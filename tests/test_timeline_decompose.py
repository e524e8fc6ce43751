"""analysis/decompose.py on hand-built runs whose true timeline is known."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from test_timeline_runs import DESTINATION, MS, SOURCE, Scenario, Truth, write_run

from migration_blackout.analysis.decompose import (
    NOT_OBSERVED,
    OBSERVED,
    UNKNOWN,
    Component,
    Instant,
    decompose,
)
from migration_blackout.analysis.derive import derive
from migration_blackout.analysis.hyperv_figures import host_blackout
from migration_blackout.analysis.summary import build_summary
from migration_blackout.analysis.timeline import build_timeline

REPO = Path(__file__).resolve().parent.parent


def contains(component: Component | None, value_ms: float) -> bool:
    assert component is not None
    assert component.lower_ms is not None and component.upper_ms is not None
    return component.lower_ms <= value_ms <= component.upper_ms


def within(instant: Instant | None, t: int) -> bool:
    assert instant is not None and instant.lo_mono_ns is not None
    assert instant.hi_mono_ns is not None
    return instant.lo_mono_ns <= t <= instant.hi_mono_ns


def test_without_a_guest_agent_each_component_holds_the_truth(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario())
    derived = derive(tmp_path / "run")
    timeline, result = derived.timeline, derived.decomposition

    hypervisor = result.hypervisor_blackout
    assert hypervisor is not None and hypervisor.source == "host-polls"
    assert contains(hypervisor, truth.pause_to_resume_ms)
    assert within(hypervisor.start, truth.pause) and within(hypervisor.end, truth.resume)
    # It is analysis.hyperv_figures.host_blackout's window, unchanged.
    window = host_blackout(timeline.polls, SOURCE, DESTINATION)
    assert window is not None
    assert (hypervisor.lower_ms, hypervisor.upper_ms) == (window.lower_ms, window.upper_ms)

    network = result.network_outage
    assert network is not None and network.source == "icmp:10.0.0.2"
    assert contains(network, truth.pause_to_network_ms)
    assert within(network.start, truth.pause) and within(network.end, truth.network)

    assert result.guest_execution_gap is None
    reconvergence = result.network_reconvergence
    assert reconvergence is not None
    assert reconvergence.detail["resume_source"] == "host-polls"
    assert reconvergence.start == hypervisor.end
    assert contains(reconvergence, truth.resume_to_network_ms)

    reported = result.reported_blackout
    assert reported is not None and reported.source == "hyperv-event:20415"
    assert reported.value_s == truth.reported_blackout_s
    assert reported.lower_ms <= truth.pause_to_resume_ms <= reported.upper_ms
    assert within(reported.logged, truth.event_20415)


def test_points_a_to_h_sit_where_the_hosts_saw_them(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario())
    derived = derive(tmp_path / "run")
    _timeline, result = derived.timeline, derived.decomposition
    status = {p.letter: p.status for p in result.points}
    assert status == {
        "A": OBSERVED,
        "B": OBSERVED,
        "C": OBSERVED,
        "D": UNKNOWN,
        "E": OBSERVED,
        "F": UNKNOWN,
        "G": UNKNOWN,
        "H": UNKNOWN,
    }
    a, b, c, e = (result.point(x).at for x in "ABCE")
    # A: the source's last observation of Running, which came before the pause.
    assert a is not None and a.lo_mono_ns is not None and a.hi_mono_ns is not None
    seen = [t for (host, _k), t in truth.poll_observed.items() if host == SOURCE]
    assert max(t for t in seen if t < truth.pause) in range(a.lo_mono_ns, a.hi_mono_ns + 1)
    assert abs(a.t_mono_ns - max(t for t in seen if t < truth.pause)) <= 7 * MS
    assert within(b, truth.pause)
    assert within(c, truth.gone)
    assert within(e, truth.resume)
    assert result.point("B").source == f"host:{SOURCE}"
    assert result.point("E").source == f"host:{DESTINATION}"
    assert result.point("B").at == result.hypervisor_blackout.start  # type: ignore[union-attr]
    assert "console" in (result.point("D").note or "")


def test_unreachables_and_timeouts_are_counted_apart_in_each_window(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(unreachable_ms=(5000.0, 5100.0)))
    result = decompose(build_timeline(tmp_path / "run"))
    counts = {c.window: c for c in result.icmp_counts}
    assert set(counts) == {
        "hypervisor_blackout",
        "hypervisor_blackout_lower",
        "network_outage",
        "around",
    }
    network = counts["network_outage"]
    assert network.unreachable == 20  # 100 ms at 5 ms
    assert network.replies == 0
    assert network.timeouts + network.unreachable == network.sent
    assert network.timeouts == pytest.approx((truth.network - truth.pause) / (5 * MS) - 20, abs=1)
    outage = result.network_outage
    assert outage is not None and outage.detail["unreachable"] == 20
    around = counts["around"]
    assert around.timeouts == network.timeouts and around.unreachable == 20
    assert around.replies > 1500  # +/- 5 s of replies around it
    assert around.end_mono_ns - around.start_mono_ns > 10_000 * MS
    inner = counts["hypervisor_blackout_lower"]
    assert inner.replies == 0 and inner.sent == inner.timeouts + inner.unreachable


def test_a_source_not_polled_through_the_pause_widens_b_and_says_so(tmp_path: Path) -> None:
    # Every poll of the source fails from before the pause until after it drops the VM:
    # Paused is never seen, and B lies between the last Running and the first unlisted poll.
    truth = write_run(tmp_path / "run", Scenario(source_failures_ms=(4100.0, 5100.0)))
    result = decompose(build_timeline(tmp_path / "run"))
    b = result.point("B")
    assert b.status == OBSERVED
    assert within(b.at, truth.pause)
    assert b.at is not None and b.at.window_ms is not None and b.at.window_ms > 900
    assert b.note is not None
    assert "10 polls of HV-SRC failed" in b.note
    assert "Paused was never seen" in b.note
    assert contains(result.hypervisor_blackout, truth.pause_to_resume_ms)
    # The source was not seen dropping the VM either: C's bounds widen the same way.
    assert within(result.point("C").at, truth.gone)


def test_a_gap_in_the_poll_schedule_widens_b_too(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(source_skipped_ms=(4200.0, 4500.0)))
    result = decompose(build_timeline(tmp_path / "run"))
    b = result.point("B")
    assert within(b.at, truth.pause)
    assert b.note is not None and "3 poll slots were skipped" in b.note
    assert "Paused was never seen" not in b.note


def test_the_guest_heartbeat_gives_the_freeze_and_a_tighter_resume(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(guest="both"))
    result = decompose(build_timeline(tmp_path / "run"))
    guest = result.guest_execution_gap
    assert guest is not None and guest.source == "guest_heartbeat"
    assert contains(guest, truth.pause_to_resume_ms)
    assert guest.upper_ms is not None and guest.lower_ms is not None
    assert guest.upper_ms - guest.lower_ms < 12
    assert within(guest.start, truth.pause) and within(guest.end, truth.resume)
    assert guest.detail["after_seq"] == guest.detail["before_seq"] + 1

    reconvergence = result.network_reconvergence
    assert reconvergence is not None
    assert reconvergence.detail["resume_source"] == "guest_heartbeat"
    assert reconvergence.source == "icmp:10.0.0.2 end - guest_heartbeat resume"
    assert contains(reconvergence, truth.resume_to_network_ms)
    hypervisor_end = result.hypervisor_blackout.end  # type: ignore[union-attr]
    assert guest.end is not None and guest.end.window_ms is not None
    assert hypervisor_end is not None and hypervisor_end.window_ms is not None
    assert guest.end.window_ms < hypervisor_end.window_ms / 10


def test_heartbeats_lost_after_the_resume_leave_the_resume_to_the_frames(tmp_path: Path) -> None:
    # Real Hyper-V: the guest runs again, but its datagrams die until the network
    # converges. The heartbeat's freeze spans lost heartbeats; the frames, queued
    # and sent later, saw it between consecutive captures and give the resume.
    truth = write_run(tmp_path / "run", Scenario(guest="both", heartbeats_lost_until_network=True))
    result = decompose(build_timeline(tmp_path / "run"))
    guest = result.guest_execution_gap
    assert guest is not None and guest.source == "guest_frames"
    assert contains(guest, truth.pause_to_resume_ms)
    assert contains(result.network_reconvergence, truth.resume_to_network_ms)


def test_heartbeats_lost_after_the_resume_still_place_the_resume(tmp_path: Path) -> None:
    # Without frames (or before the first capture after the resume arrived): the
    # heartbeat's longest step spans the lost heartbeats; the guest sent them on
    # its grid after resuming, so it resumed that many intervals before the first
    # one that arrived. Before, the step was no freeze and a shorter stall (a
    # brownout's, before the pause) was taken for the resume.
    truth = write_run(
        tmp_path / "run", Scenario(guest="heartbeats", heartbeats_lost_until_network=True)
    )
    result = decompose(build_timeline(tmp_path / "run"))
    guest = result.guest_execution_gap
    assert guest is not None and guest.source == "guest_heartbeat"
    assert guest.detail["lost_between"] > 0
    assert contains(guest, truth.pause_to_resume_ms)
    assert within(guest.start, truth.pause) and within(guest.end, truth.resume)
    reconvergence = result.network_reconvergence
    assert reconvergence is not None
    assert reconvergence.detail["resume_source"] == "guest_heartbeat"
    assert contains(reconvergence, truth.resume_to_network_ms)


def test_a_guest_whose_clock_stops_while_paused_leaves_the_resume_to_the_hosts(
    tmp_path: Path,
) -> None:
    truth = write_run(tmp_path / "run", Scenario(guest="heartbeats", guest_clock_stops=True))
    result = decompose(build_timeline(tmp_path / "run"))
    assert result.guest_execution_gap is None
    assert any("clock may have stopped" in n for n in result.notes)
    reconvergence = result.network_reconvergence
    assert reconvergence is not None and reconvergence.detail["resume_source"] == "host-polls"
    assert contains(reconvergence, truth.resume_to_network_ms)


def test_the_console_view_places_d_and_f_to_h(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(console=True))
    result = decompose(build_timeline(tmp_path / "run"))
    points = {p.letter: p for p in result.points}
    assert {p.status for p in points.values()} == {OBSERVED}
    assert within(points["D"].at, truth.gone)  # no host lists the VM: no screen
    assert within(points["F"].at, truth.console_connecting)
    assert within(points["G"].at, truth.console_black_again)
    assert within(points["H"].at, truth.console_desktop)
    assert points["F"].source == f"console:{DESTINATION}"
    assert points["D"].source == "console"
    console = result.console_blackout
    assert console is not None and console.source == "console-thumbnail"
    assert contains(console, (truth.console_desktop - truth.pause) / MS)
    assert within(console.start, truth.pause) and within(console.end, truth.console_desktop)
    assert console.detail["host_before"] == SOURCE
    assert console.detail["host_after"] == DESTINATION
    document = build_summary(tmp_path / "run")["decomposition"]
    assert document is not None
    assert document["console_blackout"]["source"] == "console-thumbnail"
    assert document["points"]["H"]["status"] == "observed"


def test_without_a_console_probe_d_and_f_to_h_are_unknown(tmp_path: Path) -> None:
    write_run(tmp_path / "run", Scenario())
    result = decompose(build_timeline(tmp_path / "run"))
    assert result.console_blackout is None
    for letter in "DFGH":
        point = result.point(letter)
        assert point.status == UNKNOWN and point.at is None
        assert point.note == "no console probe in this run (raw/console.jsonl absent)"


def test_the_destination_listing_the_vm_first_means_c_did_not_happen(tmp_path: Path) -> None:
    # The source drops the VM only after the destination runs it: never on neither list.
    truth = write_run(tmp_path / "run", Scenario(gone_ms=6000.0))
    result = decompose(build_timeline(tmp_path / "run"))
    c = result.point("C")
    assert c.status == NOT_OBSERVED and c.at is None
    assert "listed on both" in (c.note or "")
    assert within(result.point("E").at, truth.resume)


def _floats(document: Any) -> list[float]:
    if isinstance(document, float):
        return [document]
    if isinstance(document, dict):
        return [f for value in document.values() for f in _floats(value)]
    if isinstance(document, list):
        return [f for value in document for f in _floats(value)]
    return []


def test_the_summary_block_is_json_with_ms_to_three_decimals(tmp_path: Path) -> None:
    truth: Truth = write_run(tmp_path / "run", Scenario(guest="both"))
    document = build_summary(tmp_path / "run")["decomposition"]
    assert document is not None
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text) == document
    assert set(document) == {
        "clock",
        "hypervisor_blackout",
        "reported_blackout",
        "guest_execution_gap",
        "network_outage",
        "network_reconvergence",
        "inbound_reconvergence",
        "outbound_reconvergence",
        "console_blackout",
        "points",
        "icmp_counts",
        "notes",
    }
    # Without the direction probe there is no split.
    assert document["inbound_reconvergence"] is None
    assert document["outbound_reconvergence"] is None
    for value in _floats(document):
        assert math.isfinite(value) and round(value, 3) == value
    for name in ("hypervisor_blackout", "guest_execution_gap", "network_reconvergence"):
        block = document[name]
        assert block["lower_ms"] <= block["upper_ms"]
        assert block["start"]["lo_mono_ns"] <= block["start"]["hi_mono_ns"]
        assert block["end"]["t_utc"].endswith("Z") and block["end"]["lo_utc"].endswith("Z")
    guest = document["guest_execution_gap"]
    assert guest["lower_ms"] <= truth.pause_to_resume_ms <= guest["upper_ms"]
    assert document["points"]["D"] == {
        "what": "console without a screen ('not responding')",
        "status": "unknown",
        "at": None,
        "source": None,
        "note": "no console probe in this run (raw/console.jsonl absent)",
    }
    hosts = document["clock"]["hosts"]
    assert hosts[SOURCE]["polls_inconsistent"] == 0
    assert hosts[SOURCE]["before"]["offset_ms"] == pytest.approx(2502.0, abs=0.1)
    assert document["clock"]["guest"]["0123456789abcdef"]["delay_bound_source"] == "icmp_min_rtt"
    windows = document["icmp_counts"]["windows"]
    assert windows["network_outage"]["timeouts"] == document["network_outage"]["timeouts"]


def test_an_icmp_only_run_has_nothing_to_decompose() -> None:
    assert build_summary(REPO / "tests" / "data" / "runs" / "v1-small")["decomposition"] is None


def test_an_icmp_only_run_still_decomposes_when_asked() -> None:
    derived = derive(REPO / "tests" / "data" / "runs" / "v1-small")
    _timeline, result = derived.timeline, derived.decomposition
    assert result.hypervisor_blackout is None and result.guest_execution_gap is None
    assert result.network_reconvergence is None
    network = result.network_outage
    assert network is not None and network.source == "icmp:10.0.0.2"
    assert (network.lower_ms, network.upper_ms) == (280.0, 320.0)
    assert {p.status for p in result.points} == {UNKNOWN}
    assert result.point("B").note == "the run has no host polls"
    assert [c.window for c in result.icmp_counts] == ["network_outage", "around"]
    assert result.icmp_counts[0].timeouts == 15
