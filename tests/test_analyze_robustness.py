"""``measure analyze`` and ``measure report`` on damaged or hostile run folders,
through the real command line: a bad line in a raw file is counted and
skipped with a warning, never the end of the analysis; a manifest or
``derived/`` that is not what it should be is one line and exit 2; derived
files are replaced, never written through a link."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from measure_cli import measure
from test_derived_files import copy_sample

BAD_LINES = [b"\xff\xfe\x00 not UTF-8", b"not JSON at all {", b"[1, 2, 3]"]
HEARTBEAT_COLUMNS = (
    "agent_id,seq,guest_utc_ns,guest_mono_ns,interval_us,recv_mono_ns,recv_utc_ns,from_addr"
)


def insert_after_header(path: Path, lines: list[bytes], header_lines: int = 1) -> None:
    content = path.read_bytes().split(b"\n")
    content[header_lines:header_lines] = lines
    path.write_bytes(b"\n".join(content))


def add_guest_streams(run: Path, heartbeat_v2: bool = False) -> None:
    """Heartbeats with an out-of-range seq and frames with a bad line, as a
    hostile guest or a torn write could leave them. ``heartbeat_v2``: the file
    has the agent 1.1's late_ns and work_ns too (empty for a v1 beat)."""
    start_mono, start_utc = 2_070_000_000_000, 1_795_646_705_000_000_000

    def v2(k: int) -> str:
        if not heartbeat_v2:
            return ""
        return ",," if k % 7 == 0 else f",{k * 1000},{50_000 + k}"

    rows = [
        f"00000000000000aa,{k},{start_utc + k * 10**7},{5 * 10**9 + k * 10**7},10000,"
        f"{start_mono + k * 10**7},{start_utc + k * 10**7},198.18.115.2{v2(k)}"
        for k in range(50)
    ]
    rows.insert(20, f"00000000000000aa,{2**64 - 1},1,2,10000,3,4,198.18.115.2{v2(1)}")
    columns = HEARTBEAT_COLUMNS + (",late_ns,work_ns" if heartbeat_v2 else "")
    header = {"schema_version": 1, "probe": "guest_heartbeat", "format": "csv"}
    (run / "raw" / "guest_heartbeat.csv").write_text(
        "# " + json.dumps(header) + "\n" + columns + "\n" + "\n".join(rows) + "\n"
    )
    frames = [{"schema_version": 1, "probe": "guest_frames", "header": True}]
    for k in range(3):
        frames.append(
            {
                "seq": k,
                "file": f"frames/seq_{k:06d}.png",
                "guest_utc_ns": start_utc + k * 10**9,
                "guest_mono_ns": 5 * 10**9 + k * 10**9,
                "recv_mono_ns": start_mono + k * 10**9,
                "recv_utc_ns": start_utc + k * 10**9,
                "agent_id": "00000000000000aa",
            }
        )
    frames.append({"seq": 2**70, "guest_utc_ns": "soon"})
    path = run / "raw" / "guest_frames.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in frames))
    insert_after_header(path, BAD_LINES)


@pytest.mark.parametrize("heartbeat_v2", [False, True], ids=["heartbeat-v1", "heartbeat-v2"])
def test_bad_lines_in_every_raw_file_are_skipped_with_a_warning(
    tmp_path: Path, heartbeat_v2: bool
) -> None:
    run = copy_sample(tmp_path)
    jsonl = sorted((run / "raw").glob("*.jsonl"))
    for path in jsonl:
        insert_after_header(path, BAD_LINES)
    insert_after_header(run / "raw" / "icmp.csv", [b"\xff,torn", b"198.18.115.2,12"], 2)
    add_guest_streams(run, heartbeat_v2)
    proc = measure("analyze", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    said = [line for line in proc.stderr.splitlines() if line.startswith("measure: warning:")]
    read = [p for p in jsonl if p.name != "clock.jsonl"]  # the manifest holds the offsets
    for path in [*read, run / "raw" / "guest_frames.jsonl"]:
        assert any(path.name in w and "3 lines skipped" in w for w in summary["warnings"]), path
    assert any("icmp.csv" in w and "2 lines skipped" in w for w in summary["warnings"])
    assert any("guest_heartbeat.csv" in w and "1 line skipped" in w for w in summary["warnings"])
    assert said, "the warnings are said on stderr too"
    # The good records are all there: the blackout stands.
    assert summary["blackout"] is not None
    assert summary["guest"]["heartbeat"]["records"] == 50


@pytest.mark.parametrize("damage", ["binary", "folder", "not-an-object", "deep"])
def test_a_damaged_manifest_is_one_line_and_exit_2(tmp_path: Path, damage: str) -> None:
    run = copy_sample(tmp_path)
    manifest = run / "manifest.json"
    manifest.unlink()
    if damage == "binary":
        manifest.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    elif damage == "folder":
        manifest.mkdir()
    elif damage == "not-an-object":
        manifest.write_text("[]")
    else:
        manifest.write_text("[" * 100_000)
    proc = measure("analyze", str(run))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("measure: error: ")


def test_report_over_a_run_with_a_corrupt_raw_file(tmp_path: Path) -> None:
    run = copy_sample(tmp_path)
    for path in (run / "raw").glob("*.jsonl"):
        insert_after_header(path, BAD_LINES)
    shutil.rmtree(run / "derived", ignore_errors=True)
    proc = measure("report", str(run), "--markdown", str(tmp_path / "report.md"))
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "report.md").read_text().strip()
