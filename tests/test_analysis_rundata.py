"""Reading run folders: manifest validation, schema versions, the raw ICMP file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from migration_blackout import runformat
from migration_blackout.analysis import rundata
from migration_blackout.analysis.icmp import analyse_icmp
from migration_blackout.analysis.rundata import (
    RawDataWarning,
    load_icmp,
    load_run,
    read_icmp_csv,
    requested_icmp_interval_s,
)
from migration_blackout.runformat import ICMP, RunFormatError, check_schema_version

HEADER = {"format": "csv", "probe": "icmp", "schema_version": 1, "interval_s": 0.01}
COLUMN_LINE = ",".join(ICMP.columns)
REPLY = "guest,{n},{n},7,reply,{mono},{utc},{mono},{utc},400000,0,0,guest,"
TIMEOUT = "guest,{n},{n},7,timeout,{mono},{utc},,,,,,,"


def row(template: str, n: int) -> str:
    mono = 5_000_000_000_000 + n * 10_000_000
    return template.format(n=n, mono=mono, utc=mono + 1_790_000_000_000_000_000)


def manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema_version": 1,
        "run_id": "r1",
        "status": "completed",
        "error": None,
        "started_utc": "2026-11-25T13:02:30.000000Z",
        "ended_utc": "2026-11-25T13:03:00.000000Z",
        "targets": ["guest"],
        "config": {"icmp": {"interval_s": 0.01, "timeout_s": 0.5}},
        "probes": {"icmp": {"file": "raw/icmp.csv"}},
    }
    document.update(changes)
    return document


def write_run(
    run: Path,
    lines: list[str],
    *,
    header: dict[str, Any] | None = None,
    column_line: str = COLUMN_LINE,
    **manifest_changes: Any,
) -> Path:
    (run / "raw").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(manifest(**manifest_changes)))
    text = "# " + json.dumps(header or HEADER) + "\n" + column_line + "\n"
    text += "".join(line + "\n" for line in lines)
    (run / "raw" / "icmp.csv").write_text(text)
    return run / "raw" / "icmp.csv"


def test_load_run_reads_the_manifest(tmp_path: Path) -> None:
    write_run(tmp_path, [row(REPLY, 0)], status="failed", error={"type": "X", "message": "m"})
    run = load_run(tmp_path)
    assert (run.manifest.run_id, run.manifest.status) == ("r1", "failed")
    assert run.manifest.error is not None and run.manifest.error.message == "m"
    assert run.probe_file("icmp") == tmp_path / "raw" / "icmp.csv"
    assert run.probe_file("screenshots") is None


def test_newer_manifest_is_refused_with_what_to_do(tmp_path: Path) -> None:
    write_run(tmp_path, [], schema_version=7)
    with pytest.raises(RunFormatError) as caught:
        load_run(tmp_path)
    message = str(caught.value)
    assert f"run folder {tmp_path} (manifest.json) has schema_version 7" in message
    assert "reads schema_version 1" in message
    assert "upgrade migration-blackout" in message


def test_older_manifest_than_any_release_wrote_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path, [], schema_version=0)
    with pytest.raises(RunFormatError, match=r"schema_version 0, older than the first version"):
        load_run(tmp_path)


def test_an_older_known_version_names_the_releases_that_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runformat, "FIRST_RELEASE_WRITING", {1: "0.1.0", 2: "0.4.0"})
    with pytest.raises(RunFormatError) as caught:
        check_schema_version(1, supported=2, what="run folder X (manifest.json)")
    message = str(caught.value)
    assert "has schema_version 1" in message
    assert "no upgrader from 1 yet" in message
    assert "read it with migration-blackout releases 0.1.0 up to (not including) 0.4.0" in message


@pytest.mark.parametrize("version", ["1", True, None, 1.0])
def test_schema_version_must_be_an_integer(tmp_path: Path, version: object) -> None:
    write_run(tmp_path, [], schema_version=version)
    with pytest.raises(RunFormatError, match="expected an integer"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"status": "done"}, "status 'done'"),
        ({"kind": "summary"}, "kind 'summary'; expected 'run'"),
        ({"run_id": 3}, "'run_id'"),
        ({"error": "boom"}, "'error'"),
        ({"error": {"type": "X"}}, "'message'"),
        ({"started_utc": "yesterday"}, "not an ISO 8601 time"),
        ({"started_utc": "2026-11-25T13:02:30"}, "no UTC offset"),
        ({"probes": []}, "'probes'"),
    ],
)
def test_invalid_manifest_fields_are_refused(
    tmp_path: Path, changes: dict[str, Any], complaint: str
) -> None:
    write_run(tmp_path, [], **changes)
    with pytest.raises(RunFormatError, match=re.escape(complaint)):
        load_run(tmp_path)


def test_missing_key_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(RunFormatError, match=r"no manifest\.json"):
        load_run(tmp_path)
    document = manifest()
    del document["status"]
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(RunFormatError, match="lacks the key 'status'"):
        load_run(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="not valid JSON"):
        load_run(tmp_path)


@pytest.mark.parametrize(("version", "hint"), [(2, "upgrade migration-blackout"), (0, "older")])
def test_raw_header_version_other_than_1_is_refused(
    tmp_path: Path, version: int, hint: str
) -> None:
    path = write_run(tmp_path, [row(REPLY, 0)], header={**HEADER, "schema_version": version})
    with pytest.raises(RunFormatError) as caught:
        read_icmp_csv(path)
    assert f"raw file {path} has schema_version {version}" in str(caught.value)
    assert hint in str(caught.value)


@pytest.mark.parametrize(
    ("column_line", "complaint"),
    [
        (COLUMN_LINE.replace(",detail", ""), "missing: ['detail']"),
        (COLUMN_LINE + ",extra", "unexpected: ['extra']"),
        (COLUMN_LINE.replace("target,n,", "n,target,"), "in that order"),
    ],
)
def test_wrong_columns_are_refused(tmp_path: Path, column_line: str, complaint: str) -> None:
    path = write_run(tmp_path, [], column_line=column_line)
    with pytest.raises(RunFormatError, match=re.escape(complaint)):
        read_icmp_csv(path)


def test_header_must_name_an_icmp_csv_file(tmp_path: Path) -> None:
    path = write_run(tmp_path, [], header={**HEADER, "probe": "screenshots"})
    with pytest.raises(RunFormatError, match="expected an icmp csv file"):
        read_icmp_csv(path)
    path.write_text(COLUMN_LINE + "\n")
    with pytest.raises(RunFormatError, match="header line"):
        read_icmp_csv(path)


def test_nanoseconds_keep_full_precision_next_to_missing_values(tmp_path: Path) -> None:
    big = 2**63 - 1
    lines = [
        f"guest,0,0,7,reply,{big},{big - 1},{big},1790000000000000001,1,0,0,guest,",
        "guest,1,1,7,timeout,4611686018427387905,1790000000000000003,,,,,,,",
    ]
    frame = read_icmp_csv(write_run(tmp_path / "a", lines), columns=ICMP.columns).frame
    assert frame["send_mono_ns"].tolist() == [big, 4611686018427387905]
    assert frame["send_utc_ns"].tolist() == [big - 1, 1790000000000000003]
    assert frame["recv_utc_ns"].iloc[0] == 1790000000000000001
    assert frame["recv_utc_ns"].isna().tolist() == [False, True]
    # Complete send stamps are plain int64; the rest are nullable.
    assert [str(frame[c].dtype) for c in ("n", "send_mono_ns", "recv_mono_ns")] == [
        "int64",
        "int64",
        "Int64",
    ]
    assert frame["outcome"].cat.categories.tolist()[:2] == ["reply", "timeout"]

    # A file with a send stamp missing (an imported log) is read as Int64, exactly.
    lines = [
        f"guest,0,0,7,reply,,{big - 1},,,,,,,",
        "guest,1,1,7,timeout,4611686018427387905,1790000000000000003,,,,,,,",
    ]
    frame = read_icmp_csv(write_run(tmp_path / "b", lines)).frame
    assert str(frame["send_mono_ns"].dtype) == "Int64"
    assert frame["send_mono_ns"].isna().tolist() == [True, False]
    assert frame["send_mono_ns"].iloc[1] == 4611686018427387905
    assert frame["send_utc_ns"].tolist() == [big - 1, 1790000000000000003]


def test_default_columns_are_what_the_analysis_needs(tmp_path: Path) -> None:
    path = write_run(tmp_path, [row(REPLY, 0)])
    records = read_icmp_csv(path)
    assert list(records.frame.columns) == ["target", "n", "outcome", "send_mono_ns", "send_utc_ns"]
    assert records.interval_s == 0.01
    assert not records.dropped_partial_last_line


@pytest.mark.parametrize("partial", ["guest,3,3,7,rep", "guest,", "gu"])
def test_a_partial_last_line_is_dropped_and_reported(tmp_path: Path, partial: str) -> None:
    path = write_run(tmp_path, [row(REPLY, 0), row(TIMEOUT, 1), row(REPLY, 2)])
    with open(path, "a") as raw:
        raw.write(partial)
    records = read_icmp_csv(path)
    assert records.dropped_partial_last_line
    assert records.frame["n"].tolist() == [0, 1, 2]


def test_a_row_without_its_attempt_counter_is_skipped_with_a_warning(tmp_path: Path) -> None:
    lines = [row(REPLY, 0), row(REPLY, 1).replace("guest,1,", "guest,,", 1), row(REPLY, 2)]
    path = write_run(tmp_path, lines)
    with pytest.warns(RawDataWarning, match=r"1 line skipped.*first: line 4"):
        records = read_icmp_csv(path)
    assert records.frame["n"].tolist() == [0, 2]


def test_rows_with_unknown_or_empty_outcomes_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path, [row(REPLY, 0), row(REPLY, 1).replace("reply", "pong")])
    with pytest.warns(RawDataWarning, match="unknown outcome"):
        records = read_icmp_csv(path)
    assert records.frame["n"].tolist() == [0]
    empty_outcome = row(TIMEOUT, 1).replace("timeout", "")
    path = write_run(tmp_path / "second", [row(REPLY, 0), empty_outcome])
    with pytest.warns(RawDataWarning, match="1 line skipped"):
        records = read_icmp_csv(path)
    assert records.frame["outcome"].tolist() == ["reply"]


def test_bad_bytes_and_torn_rows_are_skipped_with_a_warning(tmp_path: Path) -> None:
    lines = [row(REPLY, 0), "NOT-UTF-8,garbage", row(REPLY, 1)[:20], row(REPLY, 2)]
    path = write_run(tmp_path, lines)
    path.write_bytes(path.read_bytes().replace(b"NOT-UTF-8", b"\xff\xfe"))
    with pytest.warns(RawDataWarning, match="2 lines skipped"):
        records = read_icmp_csv(path)
    assert records.frame["n"].tolist() == [0, 2]


def test_numeric_looking_target_names_stay_text(tmp_path: Path) -> None:
    lines = [row(REPLY, 0).replace("guest", "01"), row(REPLY, 0).replace("guest", "1")]
    records = read_icmp_csv(write_run(tmp_path, lines), columns=ICMP.columns)
    assert records.frame["target"].tolist() == ["01", "1"]
    assert records.frame["from_addr"].tolist() == ["01", "1"]


def test_probe_file_must_stay_inside_the_run_folder(tmp_path: Path) -> None:
    write_run(tmp_path, [], probes={"icmp": {"file": "../elsewhere.csv"}})
    with pytest.raises(RunFormatError, match="inside the run folder"):
        load_icmp(load_run(tmp_path))


def test_a_run_without_icmp_and_a_missing_icmp_file(tmp_path: Path) -> None:
    write_run(tmp_path / "a", [], probes={})
    assert load_icmp(load_run(tmp_path / "a")) is None
    write_run(tmp_path / "b", [], probes={"icmp": {"file": "raw/other.csv"}})
    with pytest.raises(RunFormatError, match="no such file"):
        load_icmp(load_run(tmp_path / "b"))


def test_a_header_only_file_reports_its_targets_with_zero_attempts(tmp_path: Path) -> None:
    path = write_run(tmp_path, [], header={**HEADER, "targets": ["guest", "host"]})
    records = read_icmp_csv(path)
    assert len(records.frame) == 0
    analysis = analyse_icmp(records.frame, targets=records.targets)
    assert [(t.target, t.sent) for t in analysis.targets] == [("guest", 0), ("host", 0)]
    assert analysis.blackout is None


def test_requested_interval_comes_from_the_header_then_the_config(tmp_path: Path) -> None:
    header = {**HEADER, "interval_s": 0.002}
    path = write_run(tmp_path / "a", [], header=header)
    assert requested_icmp_interval_s(load_run(tmp_path / "a"), read_icmp_csv(path)) == 0.002
    header = {k: v for k, v in HEADER.items() if k != "interval_s"}
    path = write_run(tmp_path / "b", [], header=header)
    assert requested_icmp_interval_s(load_run(tmp_path / "b"), read_icmp_csv(path)) == 0.01


def _mixed_rows(count: int, *, missing_mono_from: int | None = None) -> list[str]:
    """Rows whose targets, outcomes and missing values differ between parts of the file."""
    lines = []
    for n in range(count):
        target = "1" if n < count // 4 else ("host" if n < count // 2 else "guest")
        template = TIMEOUT if n % 7 == 3 else REPLY
        line = row(template, n).replace("guest", target)
        if n % 11 == 5:
            line = line.replace(",timeout,", ",unreachable,").replace(",reply,", ",error,")
        if missing_mono_from is not None and n >= missing_mono_from:
            fields = line.split(",")
            fields[5] = ""
            line = ",".join(fields)
        lines.append(line)
    return lines


@pytest.mark.parametrize("missing_mono_from", [None, 390])
def test_parsing_in_chunks_gives_the_same_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_mono_from: int | None
) -> None:
    path = write_run(tmp_path, _mixed_rows(400, missing_mono_from=missing_mono_from))
    one_chunk = read_icmp_csv(path, columns=ICMP.columns).frame
    monkeypatch.setattr(rundata, "_CHUNK_ROWS", 37)  # 11 chunks, with their own categories
    in_chunks = read_icmp_csv(path, columns=ICMP.columns).frame
    pd.testing.assert_frame_equal(in_chunks, one_chunk)
    assert in_chunks["target"].tolist()[:2] == ["1", "1"]
    assert str(in_chunks["send_mono_ns"].dtype) == (
        "int64" if missing_mono_from is None else "Int64"
    )
    expected = analyse_icmp(one_chunk, requested_interval_s=0.01)
    assert analyse_icmp(in_chunks, requested_interval_s=0.01) == expected


def test_a_quoted_field_with_a_newline_is_read_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _mixed_rows(40)
    lines[20] = row(TIMEOUT, 20).replace("guest,20,20,7,timeout", "guest,20,20,7,error")
    lines[20] += '"send failed:\nENOBUFS, twice"'
    path = write_run(tmp_path, lines)
    monkeypatch.setattr(rundata, "_CHUNK_ROWS", 7)
    frame = read_icmp_csv(path, columns=ICMP.columns).frame
    assert len(frame) == 40
    assert frame["detail"].iloc[20] == "send failed:\nENOBUFS, twice"
    assert frame["n"].tolist() == list(range(40))


def test_analysis_imports_neither_probes_nor_harness() -> None:
    code = (
        "import sys, analysis.rundata, analysis.icmp, analysis.summary, analysis.render\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('probes', 'harness')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_jsonl_columns_are_the_records_of_one_event_as_from_records_gives_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "host.jsonl"
    records = [
        {"event": "poll", "k": 0, "state": "Running", "listed": True, "errors": []},
        {"event": "note", "text": "not a poll"},
        {"event": "poll", "k": 1, "state": None, "percent_complete": 40},
        {"event": "poll", "state": "Paused", "listed": False},
    ]
    lines = [json.dumps({"schema_version": 1, "host": "h"}), *map(json.dumps, records)]
    lines.insert(3, '{"event": "poll", "k": 9')  # torn: not a record
    lines.insert(4, "[1, 2]")  # JSON, not an object
    path.write_text("\n".join(lines) + '\n{"event": "poll", "k": 7')  # partial last line
    with pytest.warns(RawDataWarning, match=r"2 lines skipped.*first: line 4, not JSON"):
        raw = rundata.read_jsonl_columns(path, what="host.jsonl", event="poll")
    assert raw.header == {"schema_version": 1, "host": "h"}
    assert raw.rows == 3
    polls = [r for r in records if r["event"] == "poll"]
    pd.testing.assert_frame_equal(pd.DataFrame(raw.columns), pd.DataFrame.from_records(polls))
    with pytest.warns(RawDataWarning, match=r"2 lines skipped.*first: line 4, not JSON"):
        assert rundata.read_jsonl(path, what="host.jsonl").records == records
