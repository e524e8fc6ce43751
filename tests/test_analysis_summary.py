"""summary.json: its shape and numbers, on the frozen v1-small run and on tiny runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from migration_blackout.analysis.summary import build_summary, read_summary, write_summary
from migration_blackout.probes.sink import CsvSink
from migration_blackout.runformat import ICMP, SUMMARY_FILE, RunFormatError

V1_SMALL = Path(__file__).parent / "data" / "runs" / "v1-small"
MONO0 = 9_000_000_000_000
UTC0 = 1_795_611_760_000_000_000  # 2026-11-25T13:02:40Z


def assert_contains(actual: Any, expected: Any, where: str = "summary") -> None:
    """``actual`` has every key and value of ``expected`` (later versions only add keys)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where} lacks {key!r}"
            assert_contains(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_contains(got, want, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def make_run(
    run: Path,
    attempts: list[tuple[str, int, str, int]],
    *,
    status: str = "completed",
    interval_s: float = 0.01,
    config_interval_s: float | None = None,
) -> Path:
    """attempts: (target, n, outcome, send offset ns); rows written with CsvSink."""
    sink = CsvSink(
        run / "raw" / "icmp.csv",
        probe="icmp",
        columns=ICMP.columns,
        meta={"interval_s": interval_s, "timeout_s": 0.5, "targets": ["guest"]},
    )
    for target, n, outcome, offset in attempts:
        send = MONO0 + offset
        fields = {"target": target, "n": n, "seq": n & 0xFFFF, "ident": 1, "outcome": outcome}
        fields |= {"send_mono_ns": send, "send_utc_ns": send - MONO0 + UTC0}
        if outcome == "reply":
            fields |= {"recv_mono_ns": send + 300_000, "rtt_ns": 300_000, "icmp_type": 0}
            fields |= {"recv_utc_ns": send + 300_000 - MONO0 + UTC0, "from_addr": target}
        sink.write_row([fields.get(column) for column in ICMP.columns])
    sink.close()
    manifest = {
        "schema_version": 1,
        "run_id": run.name,
        "status": status,
        "error": None if status == "completed" else {"type": "Boom", "message": "it broke"},
        "started_utc": "2026-11-25T13:02:39Z",
        "ended_utc": None,
        "targets": ["guest"],
        "config": {"icmp": {"interval_s": config_interval_s or interval_s, "timeout_s": 0.5}},
        "probes": {"icmp": {"file": "raw/icmp.csv"}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


# Every number below follows from tests/data/make_v1_small.py and was checked by hand.
V1_SMALL_EXPECTED: dict[str, Any] = {
    "schema_version": 1,
    "kind": "summary",
    "run_id": "v1-small",
    "status": "completed",
    "error": None,
    "warnings": [],
    "icmp": {
        "10.0.0.2": {
            "send_clock": "mono",
            "sent": 200,
            "replies": 182,
            "timeouts": 16,
            "unreachable": 0,
            "errors": 0,
            "unresolved": 2,
            "duplicates": 1,
            "late": 1,
            "first_send_utc": "2026-11-25T13:02:40.000000Z",
            "last_send_utc": "2026-11-25T13:02:43.980000Z",
            # 199 steps of 20 ms except 20.5 and 19.5 around attempt 10: |step - 20|
            # sorted ends in 0, 0.5, 0.5; p99 sits at rank 196.02 -> 0.02 x 0.5 = 0.01.
            "interval_ms": {
                "requested": 20.0,
                "achieved_median": 20.0,
                "achieved_mean": 20.0,
                "jitter_p99": 0.01,
            },
            "achieved_rate_ratio": 1.0,
            "outages": [
                {
                    "start_utc": "2026-11-25T13:02:41.200000Z",
                    "end_utc": "2026-11-25T13:02:41.200000Z",
                    "upper_start_utc": "2026-11-25T13:02:41.180000Z",
                    "upper_end_utc": "2026-11-25T13:02:41.220000Z",
                    "lower_ms": 0.0,
                    "upper_ms": 40.0,
                    "estimate_ms": 20.0,
                    "lost": 1,
                    "timeouts": 1,
                    "unreachable": 0,
                    "errors": 0,
                    "open_start": False,
                    "open_end": False,
                    "first_lost_n": 60,
                    "last_lost_n": 60,
                    "first_lost_send_mono_ns": 5_001_200_000_000,
                    "last_lost_send_mono_ns": 5_001_200_000_000,
                    "last_reply_before_send_mono_ns": 5_001_180_000_000,
                    "first_reply_after_send_mono_ns": 5_001_220_000_000,
                },
                {
                    "start_utc": "2026-11-25T13:02:43.000000Z",
                    "end_utc": "2026-11-25T13:02:43.280000Z",
                    "upper_start_utc": "2026-11-25T13:02:42.980000Z",
                    "upper_end_utc": "2026-11-25T13:02:43.300000Z",
                    "lower_ms": 280.0,
                    "upper_ms": 320.0,
                    "estimate_ms": 300.0,
                    "lost": 15,
                    "timeouts": 15,
                    "unreachable": 0,
                    "errors": 0,
                    "open_start": False,
                    "open_end": False,
                    "first_lost_n": 150,
                    "last_lost_n": 164,
                    "first_lost_send_mono_ns": 5_003_000_000_000,
                    "last_lost_send_mono_ns": 5_003_280_000_000,
                    "last_reply_before_send_mono_ns": 5_002_980_000_000,
                    "first_reply_after_send_mono_ns": 5_003_300_000_000,
                },
            ],
        },
        "10.0.0.3": {
            "send_clock": "mono",
            "sent": 200,
            "replies": 198,
            "timeouts": 0,
            "unreachable": 1,
            "errors": 1,
            "unresolved": 0,
            "duplicates": 0,
            "late": 0,
            "first_send_utc": "2026-11-25T13:02:40.010000Z",
            "last_send_utc": "2026-11-25T13:02:43.990000Z",
            "interval_ms": {
                "requested": 20.0,
                "achieved_median": 20.0,
                "achieved_mean": 20.0,
                "jitter_p99": 0.0,
            },
            "achieved_rate_ratio": 1.0,
            "outages": [
                {
                    "start_utc": "2026-11-25T13:02:41.610000Z",
                    "end_utc": "2026-11-25T13:02:41.630000Z",
                    "upper_start_utc": "2026-11-25T13:02:41.590000Z",
                    "upper_end_utc": "2026-11-25T13:02:41.650000Z",
                    "lower_ms": 20.0,
                    "upper_ms": 60.0,
                    "estimate_ms": 40.0,
                    "lost": 2,
                    "timeouts": 0,
                    "unreachable": 1,
                    "errors": 1,
                    "open_start": False,
                    "open_end": False,
                    "first_lost_n": 80,
                    "last_lost_n": 81,
                }
            ],
        },
    },
    "blackout": {
        "source": "icmp:10.0.0.2",
        "start_utc": "2026-11-25T13:02:43.000000Z",
        "end_utc": "2026-11-25T13:02:43.280000Z",
        "upper_start_utc": "2026-11-25T13:02:42.980000Z",
        "upper_end_utc": "2026-11-25T13:02:43.300000Z",
        "lower_ms": 280.0,
        "upper_ms": 320.0,
        "estimate_ms": 300.0,
        "lost": 15,
        "timeouts": 15,
        "unreachable": 0,
        "errors": 0,
        "open_start": False,
        "open_end": False,
        "first_lost_n": 150,
        "last_lost_n": 164,
        "timeouts_outside": 1,
        "unreachable_outside": 0,
        "errors_outside": 0,
    },
}


def test_frozen_v1_small_run_summary() -> None:
    summary = build_summary(V1_SMALL)
    assert_contains(summary, V1_SMALL_EXPECTED)
    assert summary["generated_by"].startswith("migration-blackout ")
    assert list(summary["icmp"]) == ["10.0.0.2", "10.0.0.3"]


def test_write_summary_writes_derived_and_never_touches_raw(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(
        run, [("guest", n, "timeout" if n == 2 else "reply", n * 10_000_000) for n in range(5)]
    )
    raw_before = (run / "raw" / "icmp.csv").read_bytes()
    path = write_summary(run)
    assert path == run / SUMMARY_FILE
    assert json.loads(path.read_text()) == build_summary(run)
    (run / "derived" / "summary.json").write_text("stale")
    assert write_summary(run) == path
    assert read_summary(path)["blackout"]["lost"] == 1
    assert sorted(p.name for p in (run / "derived").iterdir()) == ["summary.json"]
    assert (run / "raw" / "icmp.csv").read_bytes() == raw_before


def test_milliseconds_are_rounded_to_microseconds(tmp_path: Path) -> None:
    make_run(
        tmp_path,
        [
            ("guest", 0, "reply", 0),
            ("guest", 1, "timeout", 1_234_567),
            ("guest", 2, "reply", 2_469_134),
        ],
    )
    summary = build_summary(tmp_path)
    outage = summary["icmp"]["guest"]["outages"][0]
    assert (outage["lower_ms"], outage["upper_ms"], outage["estimate_ms"]) == (0.0, 2.469, 1.235)
    assert summary["icmp"]["guest"]["interval_ms"]["achieved_median"] == 1.235
    assert outage["first_lost_send_mono_ns"] == MONO0 + 1_234_567
    assert outage["start_utc"] == "2026-11-25T13:02:40.001234Z"


def test_open_outage_bounds_are_null(tmp_path: Path) -> None:
    make_run(
        tmp_path, [("guest", n, "reply" if n < 3 else "timeout", n * 10_000_000) for n in range(6)]
    )
    blackout = build_summary(tmp_path)["blackout"]
    assert (blackout["open_start"], blackout["open_end"]) == (False, True)
    assert (blackout["upper_ms"], blackout["upper_end_utc"]) == (None, None)
    assert blackout["first_reply_after_send_mono_ns"] is None
    assert (blackout["lower_ms"], blackout["estimate_ms"]) == (20.0, 30.0)


def test_no_loss_means_no_blackout(tmp_path: Path) -> None:
    make_run(tmp_path, [("guest", n, "reply", n * 10_000_000) for n in range(4)])
    summary = build_summary(tmp_path)
    assert summary["blackout"] is None
    assert summary["icmp"]["guest"]["outages"] == []


def test_failed_run_without_its_raw_file_still_summarises(tmp_path: Path) -> None:
    make_run(tmp_path, [], status="failed")
    (tmp_path / "raw" / "icmp.csv").unlink()
    summary = build_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"] == {"type": "Boom", "message": "it broke"}
    assert summary["icmp"] == {}
    assert summary["blackout"] is None
    assert "raw/icmp.csv does not exist" in summary["warnings"][0]


def test_completed_run_without_its_raw_file_is_an_error(tmp_path: Path) -> None:
    make_run(tmp_path, [])
    (tmp_path / "raw" / "icmp.csv").unlink()
    with pytest.raises(RunFormatError, match="no such file"):
        build_summary(tmp_path)


def test_warnings_for_a_partial_line_and_disagreeing_intervals(tmp_path: Path) -> None:
    make_run(tmp_path, [("guest", 0, "reply", 0)], status="aborted", config_interval_s=0.02)
    with open(tmp_path / "raw" / "icmp.csv", "a") as raw:
        raw.write("guest,1,1,1,rep")
    summary = build_summary(tmp_path)
    assert len(summary["warnings"]) == 2
    assert "partial line" in summary["warnings"][0]
    assert "0.01 in the raw header, 0.02 in the manifest" in summary["warnings"][1]
    assert summary["icmp"]["guest"]["sent"] == 1
    assert summary["icmp"]["guest"]["interval_ms"]["requested"] == 10.0


def test_disagreeing_intervals_are_found_in_a_measure_run_manifest(tmp_path: Path) -> None:
    """``measure run`` keeps the requested interval in the probe's own manifest entry
    (``probes.icmp``) and its configuration under ``config.probes``, not ``config.icmp``."""
    make_run(tmp_path, [("guest", 0, "reply", 0), ("guest", 1, "reply", 10_000_000)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["config"] = {"probes": {"icmp_interval_s": 0.005}}
    manifest["probes"]["icmp"] |= {"format": "csv", "interval_s": 0.005, "process": True}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    warnings = build_summary(tmp_path)["warnings"]
    assert warnings == [
        "icmp interval_s differs: 0.01 in the raw header, 0.005 in the manifest; "
        "the raw header's is used"
    ]
    manifest["probes"]["icmp"]["interval_s"] = 0.01
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert build_summary(tmp_path)["warnings"] == []


def test_summary_is_strict_json(tmp_path: Path) -> None:
    make_run(tmp_path, [("guest", 0, "timeout", 0)])
    text = json.dumps(build_summary(tmp_path), allow_nan=False)
    summary = json.loads(text)
    stats = summary["icmp"]["guest"]
    assert stats["interval_ms"]["achieved_median"] is None
    assert stats["interval_ms"]["requested"] == 10.0
    # A lone attempt: the estimate falls back to the requested interval.
    assert summary["blackout"]["estimate_ms"] == 10.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in stats["interval_ms"].values())


def test_read_summary_refuses_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"kind": "summary", "schema_version": 2}))
    with pytest.raises(RunFormatError, match="upgrade migration-blackout"):
        read_summary(path)
    path.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(RunFormatError, match="not a migration-blackout summary"):
        read_summary(path)


@pytest.mark.parametrize("name", ["v1-small", "lab-v1-sample"])
def test_the_frozen_runs_analyse_as_they_did_before_one_derive(name: str) -> None:
    """tests/data/summaries/<name>.json: the summary of the frozen run made by
    63b306f, before the run format moved into one contract and the derive
    pipeline read each run once (generated_by left out). Every key and value
    is still there (later versions only add keys)."""
    data = Path(__file__).parent / "data"
    expected = json.loads((data / "summaries" / f"{name}.json").read_text(encoding="utf-8"))
    actual = build_summary(data / "runs" / name)
    assert "generated_by" not in expected
    assert_contains(actual, expected)
