"""The plain-text table rendered from a summary document."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from migration_blackout.analysis.render import format_summary_table
from migration_blackout.analysis.summary import build_summary

V1_SMALL = Path(__file__).parent / "data" / "runs" / "v1-small"


def test_v1_small_table() -> None:
    text = format_summary_table(build_summary(V1_SMALL))
    lines = text.splitlines()
    assert lines[0] == "run v1-small  status completed  (migration-blackout " + lines[0].split()[-1]
    (guest,) = [line for line in lines if line.startswith("10.0.0.2 ")]
    assert guest.split() == [
        "10.0.0.2", "200", "182", "16", "0", "0", "2", "1", "1",
        "20.000", "20.000", "0.010", "1.000x",
    ]  # fmt: skip
    (marked,) = [line for line in lines if line.startswith(">>")]
    assert marked.split() == [
        ">>", "10.0.0.2", "2026-11-25T13:02:43.000000Z", "15", "15", "0", "0",
        "280.000", "320.000", "300.000", "BLACKOUT",
    ]  # fmt: skip
    assert sum(1 for line in lines if "2026-11-25T13:02:41" in line) == 2
    assert (
        "Blackout (icmp:10.0.0.2): lower 280.000 ms, upper 320.000 ms, estimate 300.000 ms" in text
    )
    assert "outside it on that target: 1 timeouts, 0 unreachable, 0 errors" in text


def test_columns_line_up() -> None:
    lines = format_summary_table(build_summary(V1_SMALL)).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    widths = {len(lines[header + k]) for k in range(3)}
    assert len(widths) == 1


def _summary_with(outages: list[dict[str, Any]], blackout: dict[str, Any] | None) -> dict[str, Any]:
    summary = copy.deepcopy(build_summary(V1_SMALL))
    summary["icmp"] = {"guest": summary["icmp"]["10.0.0.2"]}
    summary["icmp"]["guest"]["outages"] = outages
    summary["blackout"] = blackout
    return summary


def test_open_bounds_error_and_warnings_are_shown() -> None:
    base = build_summary(V1_SMALL)["blackout"]
    outage = dict(base, upper_ms=None, open_end=True, upper_end_utc=None)
    summary = _summary_with([outage], dict(outage, source="icmp:guest"))
    summary["status"] = "failed"
    summary["error"] = {"type": "MigrationFailed", "message": "protocol version 6.0"}
    summary["warnings"] = ["raw/icmp.csv ends in a partial line"]
    text = format_summary_table(summary)
    assert "error: MigrationFailed: protocol version 6.0" in text
    assert "warning: raw/icmp.csv ends in a partial line" in text
    (marked,) = [line for line in text.splitlines() if line.startswith(">>")]
    assert marked.split()[-5:] == ["-", "300.000", "BLACKOUT,", "open", "end"]
    assert "upper - ms" in text
    assert "[open end]" in text


def test_many_outages_show_the_longest_and_always_the_blackout() -> None:
    base = build_summary(V1_SMALL)["icmp"]["10.0.0.2"]["outages"][0]
    outages = [dict(base, first_lost_n=i, lower_ms=float(i)) for i in range(30)]
    # Mark a short one as the blackout: it must still be listed.
    outside = {"timeouts_outside": 0, "unreachable_outside": 0, "errors_outside": 0}
    summary = _summary_with(outages, dict(outages[3], source="icmp:guest", **outside))
    text = format_summary_table(summary, max_outages_per_target=5)
    rows = [line for line in text.splitlines() if " guest " in f" {line} " and "T13:" in line]
    assert len(rows) == 6
    assert "guest: 24 shorter outages not shown" in text
    assert any(line.startswith(">>") and " 3.000 " in line for line in rows)


def test_no_icmp_and_no_blackout() -> None:
    summary = _summary_with([], None)
    summary["icmp"] = {}
    text = format_summary_table(summary)
    assert "no ICMP records" in text
    assert text.endswith("Blackout: none found\n")


def test_every_witness_of_the_downtime_is_shown() -> None:
    from migration_blackout.analysis.render import format_summary_table

    summary = {
        "schema_version": 1,
        "kind": "summary",
        "run_id": "r",
        "status": "completed",
        "error": None,
        "generated_by": "x",
        "warnings": [],
        "icmp": {},
        "blackout": None,
        "hyperv": {
            "vm": "HVSW10Home",
            "source": "A",
            "destination": "B",
            "host_blackout": {"lower_ms": 2044.2, "upper_ms": 2356.6, "source": "host-polls"},
            "reported": {"blackout_s": 2.3, "resolution_s": 0.1, "source": "hyperv-event:20415"},
        },
        "guest": {
            "execution_gap": {"lower_ms": 2284.2, "upper_ms": 2298.2, "source": "guest_heartbeat"}
        },
        "ground_truth": {"pause_to_resume_ms": 2291.0, "pause_to_network_restored_ms": 4862.9},
        "decomposition": {
            "network_reconvergence": {"lower_ms": 2496.8, "upper_ms": 2654.0, "source": "icmp"},
            "points": {
                "A": {"status": "observed", "at": {"t_utc": "2026-11-25T23:32:05.652329Z"}},
                "D": {"status": "unknown", "at": None},
            },
        },
    }
    text = format_summary_table(summary)
    assert "hypervisor (host polls: Paused -> Running)  2044.200  2356.600  host-polls" in text
    assert "hypervisor (as Hyper-V reports it)              2250      2350" in text
    assert "guest execution gap (agent)" in text and "2298.200" in text
    assert "lab truth: pause -> resume 2291.000 ms" in text
    assert "migration HVSW10Home: A -> B" in text
    assert "network reconvergence (after the resume)    2496.800  2654.000" in text
    assert "points (UTC): A 23:32:05.652, B ?, C ?, D unknown," in text
