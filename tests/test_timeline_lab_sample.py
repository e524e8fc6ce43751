"""The decomposition of a real run against the emulated lab (tests/data/runs/lab-v1-sample).

The lab's hosts had their clocks set 1.5 s ahead and 0.7 s behind the harness;
``raw/ground_truth.jsonl`` holds what really happened, on the harness clock.
Every component must contain the lab's true value within its bounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migration_blackout.analysis.decompose import (
    Decomposition,
    Instant,
    decompose,
)
from migration_blackout.analysis.hyperv_figures import load_ground_truth, truth_summary
from migration_blackout.analysis.rundata import load_run
from migration_blackout.analysis.summary import build_summary
from migration_blackout.analysis.timeline import Timeline, build_timeline

SAMPLE = Path(__file__).resolve().parent / "data" / "runs" / "lab-v1-sample"
SOURCE, DESTINATION = "WS16TP4DM1VML1b", "WS16TP4DM2VML1b"


@pytest.fixture(scope="module")
def sample() -> tuple[Timeline, Decomposition]:
    timeline = build_timeline(SAMPLE)
    return timeline, decompose(timeline)


@pytest.fixture(scope="module")
def truth() -> dict[str, int]:
    events = load_ground_truth(load_run(SAMPLE))
    assert events is not None
    first: dict[str, int] = {}
    for event in events:
        first.setdefault(str(event["event"]), int(event["mono_ns"]))
    return first


def test_each_component_contains_the_labs_true_value(
    sample: tuple[Timeline, Decomposition], truth: dict[str, int]
) -> None:
    _, result = sample
    spans = truth_summary(load_ground_truth(load_run(SAMPLE)) or [])
    expected = {
        "hypervisor_blackout": spans["pause_to_resume_ms"],
        "network_outage": spans["pause_to_network_restored_ms"],
        "network_reconvergence": spans["resume_to_network_restored_ms"],
    }
    assert expected == {
        "hypervisor_blackout": 1109.198,
        "network_outage": 1911.544,
        "network_reconvergence": 802.346,
    }
    for component in result.components():
        value = expected[component.name]
        assert component.lower_ms is not None and component.upper_ms is not None
        assert component.lower_ms <= value <= component.upper_ms, component.name
    reported = result.reported_blackout
    assert reported is not None
    assert reported.lower_ms <= expected["hypervisor_blackout"] <= reported.upper_ms
    assert result.guest_execution_gap is None  # the sample has no guest agent
    reconvergence = result.network_reconvergence
    assert reconvergence is not None
    assert reconvergence.detail["resume_source"] == "host-polls"


def test_the_edges_bracket_the_true_instants(
    sample: tuple[Timeline, Decomposition], truth: dict[str, int]
) -> None:
    _, result = sample
    for letter, event in (("B", "pause"), ("C", "gone_from_source"), ("E", "resume")):
        assert within(result.point(letter).at, truth[event]), letter
    network = result.network_outage
    assert network is not None
    assert within(network.start, truth["pause"])
    assert within(network.end, truth["network_restored"])
    statuses = "".join(p.status[0] for p in result.points)  # observed / unknown
    assert statuses == "ooououuu"


def within(instant: Instant | None, t: int) -> bool:
    assert instant is not None and instant.lo_mono_ns is not None
    assert instant.hi_mono_ns is not None
    return instant.lo_mono_ns <= t <= instant.hi_mono_ns


def test_host_clocks_seconds_apart_map_consistently(
    sample: tuple[Timeline, Decomposition], truth: dict[str, int]
) -> None:
    timeline, result = sample
    assert timeline.host_clocks[SOURCE].before is not None
    document = build_summary(SAMPLE)["decomposition"]
    assert document is not None
    for host in (SOURCE, DESTINATION):
        check = document["clock"]["hosts"][host]
        assert check["polls_mapped"] == 61
        # Every poll's mapped Get-Date lies within its round trip, give or take the uncertainty.
        assert check["polls_inconsistent"] == 0
    # The lab logs 20415 as the VM resumes (its clock 1.5 s ahead): mapped, it lands there.
    reported = result.reported_blackout
    assert reported is not None
    assert within(reported.logged, truth["resume"])
    polls = timeline.polls
    unmapped_gap = polls["host_mono_ns"] - polls["t_mono_ns"]
    assert (unmapped_gap.abs() < 10_000_000).all()


def test_the_counts_in_and_around_the_blackout(sample: tuple[Timeline, Decomposition]) -> None:
    _, result = sample
    counts = {c.window: c for c in result.icmp_counts}
    network = counts["network_outage"]
    assert (network.sent, network.timeouts, network.unreachable) == (382, 382, 0)
    hypervisor = counts["hypervisor_blackout_lower"]
    assert hypervisor.replies == 0 and hypervisor.timeouts == hypervisor.sent > 150
    around = counts["around"]
    assert (around.timeouts, around.unreachable) == (382, 0)


def test_the_summary_block_round_trips_as_json() -> None:
    document = build_summary(SAMPLE)["decomposition"]
    assert document is not None
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    block = document["hypervisor_blackout"]
    assert (block["lower_ms"], block["upper_ms"], block["source"]) == (
        941.947,
        1274.498,
        "host-polls",
    )
    assert block["start"]["lo_utc"] == "2026-11-25T22:45:06.809771Z"
    assert document["reported_blackout"]["value_ms"] == 1100.0
    assert document["network_outage"]["lower_ms"] == 1906.698
    assert not (SAMPLE / "raw" / "console.jsonl").exists()
