"""Importing ping logs of other tools (harness/importers.py, docs/importers.md).

The sample logs in tests/data/ping-logs/ are frozen; make_samples.py there is
the record of how they were written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import resource
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from migration_blackout.analysis.summary import build_summary
from migration_blackout.harness.commands import import_ping_log
from migration_blackout.harness.importers import (
    ImportFormatError,
    ImportOptionError,
    PingLogFileError,
    PingRecord,
    decode_log,
    parse_fping,
    parse_iputils,
    parse_ping_log,
    parse_timezone,
    parse_windows,
    split_lines,
)
from migration_blackout.runformat import ICMP

LOGS = Path(__file__).parent / "data" / "ping-logs"
JST = timezone(timedelta(hours=9))
NS = 1_000_000_000
COMMAND = ["measure", "import", "ping-log"]


def utc_ns(text: str, zone: timezone = JST) -> int:
    """``2016-01-23 13:02:39`` in ``zone`` -> UTC ns."""
    stamp = datetime.fromisoformat(text).replace(tzinfo=zone)
    return int(stamp.timestamp()) * NS + stamp.microsecond * 1000


def iso_z(text: str, zone: timezone = JST) -> str:
    """``2016-01-23 13:02:39`` in ``zone`` -> the summary's ISO 8601 UTC form."""
    stamp = datetime.fromisoformat(text).replace(tzinfo=zone).astimezone(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_rows(run_dir: Path) -> tuple[dict[str, object], list[dict[str, str]]]:
    with open(run_dir / "raw" / "icmp.csv", encoding="utf-8", newline="") as handle:
        header = json.loads(handle.readline()[2:])
        return header, list(csv.DictReader(handle))


def import_log(tmp_path: Path, name: str, fmt: str, *, zone: str | None = "+09:00") -> Path:
    return import_ping_log.run(
        file=LOGS / name, fmt=fmt, out=tmp_path / "results", command=COMMAND, timezone=zone
    )


def outcomes(rows: list[dict[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def lines(text: str) -> list[str]:
    return split_lines(text)


# -- the write-up: Japanese Windows log --------------------------------------------------


@pytest.mark.parametrize("name", ["windows-ja.cp932.log", "windows-ja.utf16le.log"])
def test_japanese_windows_log_reproduces_the_write_up(tmp_path: Path, name: str) -> None:
    run_dir = import_log(tmp_path, name, "windows")

    header, rows = read_rows(run_dir)
    assert header["probe"] == "icmp" and header["schema_version"] == 1
    assert list(rows[0]) == list(ICMP.columns)
    assert header["targets"] == ["192.168.1.5"]
    assert outcomes(rows) == {"reply": 18, "timeout": 3}
    timeouts = [row for row in rows if row["outcome"] == "timeout"]
    assert [int(row["send_utc_ns"]) for row in timeouts] == [
        utc_ns("2016-01-23 13:02:39"),
        utc_ns("2016-01-23 13:02:40"),
        utc_ns("2016-01-23 13:02:41"),
    ]
    assert all(row["send_mono_ns"] == "" and row["recv_mono_ns"] == "" for row in rows)

    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run_kind"] == "import"
    assert manifest["status"] == "completed"
    assert manifest["targets"] == ["192.168.1.5"]
    config = manifest["config"]["import"]
    assert config["source_file"] == name
    assert config["format"] == "windows"
    assert config["encoding"] == ("cp932" if "cp932" in name else "utf-16-le (BOM)")
    assert config["lines"] == 162
    assert config["skipped_banner"] == 99  # banner + statistics of 21 pings
    assert config["skipped_blank"] == 42
    assert config["unrecognised"] == 0
    assert config["timezone"] == "+09:00"
    assert config["timezone_source"] == "option --timezone"
    assert config["date_source"] == "stamps"
    assert manifest["config"]["icmp"] == {
        "interval_s": 1.0,
        "interval_source": "median spacing of the logged send times",
        "timeout_s": None,
    }

    # The analysis orders by send_utc_ns when send_mono_ns is empty.
    summary = build_summary(run_dir)
    target = summary["icmp"]["192.168.1.5"]
    assert target["send_clock"] == "utc"
    assert (target["sent"], target["replies"], target["timeouts"], target["unreachable"]) == (
        21,
        18,
        3,
        0,
    )
    blackout = summary["blackout"]
    assert (blackout["lost"], blackout["timeouts"], blackout["unreachable"]) == (3, 3, 0)
    assert blackout["start_utc"] == iso_z("2016-01-23 13:02:39")
    assert blackout["end_utc"] == iso_z("2016-01-23 13:02:41")
    assert blackout["upper_start_utc"] == iso_z("2016-01-23 13:02:38")
    assert blackout["upper_end_utc"] == iso_z("2016-01-23 13:02:42")
    assert blackout["lower_ms"] == 2000.0
    assert blackout["upper_ms"] == 4000.0
    # run() already wrote derived/summary.json.
    written = json.loads((run_dir / "derived" / "summary.json").read_text(encoding="utf-8"))
    assert written["blackout"] == blackout


def test_the_encoded_samples_hold_the_same_text() -> None:
    source = (LOGS / "windows-ja.utf8.log").read_bytes()
    expected = decode_log(source)
    for name, encoding in (
        ("windows-ja.cp932.log", "cp932"),
        ("windows-ja.utf16le.log", "utf-16-le (BOM)"),
    ):
        decoded = decode_log((LOGS / name).read_bytes())
        assert decoded.encoding == encoding
        assert decoded.lines == expected.lines
    assert b"\r\n" in source


# -- English Windows log ---------------------------------------------------------------


def test_english_windows_log_counts_each_failure_apart(tmp_path: Path) -> None:
    run_dir = import_log(tmp_path, "windows-en.log", "windows")
    _header, rows = read_rows(run_dir)
    assert outcomes(rows) == {"reply": 6, "timeout": 2, "unreachable": 2, "error": 2}
    assert [row["n"] for row in rows] == [str(n) for n in range(12)]
    assert {row["target"] for row in rows} == {"10.0.0.5"}

    below_1ms = [row for row in rows if row["detail"].startswith("rtt below 1 ms")]
    assert [row["n"] for row in below_1ms] == ["1", "10"]
    assert all(row["rtt_ns"] == "0" for row in below_1ms)
    first = rows[0]
    assert int(first["send_utc_ns"]) == utc_ns("2016-01-23 13:02:30.015")
    assert int(first["recv_utc_ns"]) - int(first["send_utc_ns"]) == 1_000_000
    assert (first["icmp_type"], first["icmp_code"], first["from_addr"]) == ("0", "0", "10.0.0.5")

    unreachable = [row for row in rows if row["outcome"] == "unreachable"]
    assert [(r["from_addr"], r["icmp_type"], r["icmp_code"]) for r in unreachable] == [
        ("10.0.0.1", "3", "1"),
        ("10.0.0.1", "3", "1"),
    ]
    assert "Destination host unreachable." in unreachable[0]["detail"]
    errors = [row for row in rows if row["outcome"] == "error"]
    assert "PING: transmit failed. General failure." in errors[0]["detail"]
    assert errors[1]["detail"].endswith("General failure.")
    assert all(row["recv_utc_ns"] == "" for row in unreachable + errors)

    config = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["config"]
    assert config["import"]["unrecognised"] == 1
    assert config["import"]["unrecognised_first"] == [
        {
            "line": 13,
            "text": "2016/01/23 13:02:41.500 migration finished?",
            "reason": "not a ping result",
        }
    ]
    assert config["import"]["skipped_banner"] == 1  # "Ping statistics for 10.0.0.5:"
    assert config["icmp"]["interval_s"] == pytest.approx(1.008)

    blackout = build_summary(run_dir)["blackout"]
    assert (blackout["lost"], blackout["timeouts"], blackout["unreachable"]) == (6, 2, 2)
    assert blackout["errors"] == 2


# -- Windows stamp variants and messages (pure parser) ------------------------------------


def only(records: tuple[PingRecord, ...]) -> PingRecord:
    assert len(records) == 1
    return records[0]


def test_windows_iso_stamps_with_offset_ignore_the_zone() -> None:
    parsed = parse_windows(
        ["2016-01-23T13:02:38.1234567+09:00 Reply from 10.0.0.5: bytes=32 time=4ms TTL=128"],
        zone=UTC,
    )
    record = only(parsed.records)
    assert record.send_utc_ns == utc_ns("2016-01-23 13:02:38") + 123_456_700
    assert record.rtt_ns == 4_000_000
    assert not parsed.local_time_used


def test_windows_time_of_day_stamps_take_the_date_option() -> None:
    parsed = parse_windows(
        ["13:02:38.5 Request timed out.", "13:02:39.5 Request timed out."],
        zone=JST,
        start_date=date(2016, 1, 23),
        target="10.0.0.5",
    )
    assert [r.send_utc_ns for r in parsed.records] == [
        utc_ns("2016-01-23 13:02:38.5"),
        utc_ns("2016-01-23 13:02:39.5"),
    ]
    assert parsed.date_source == "option --date"


def test_windows_time_of_day_stamps_take_the_date_from_the_transcript_and_roll_over() -> None:
    log = [
        "**********************",
        "Windows PowerShell transcript start",
        "Start time: 20160123235958",
        "Username: LAB\\admin",
        "Machine: HVSW10PRODM (Microsoft Windows NT 6.3.9600.0)",
        "**********************",
        "23:59:58 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
        "23:59:59 Request timed out.",
        "00:00:00 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
    ]
    parsed = parse_windows(log, zone=JST)
    assert [r.send_utc_ns for r in parsed.records] == [
        utc_ns("2016-01-23 23:59:58"),
        utc_ns("2016-01-23 23:59:59"),
        utc_ns("2016-01-24 00:00:00"),
    ]
    assert parsed.date_source == "line 3"
    assert parsed.line_kinds["banner"] == 6
    assert parsed.line_kinds["unrecognised"] == 0


def test_windows_time_of_day_without_any_date_is_refused() -> None:
    with pytest.raises(ImportFormatError, match=r"line 1 .*time of day only.*--date"):
        parse_windows(["13:02:38 Request timed out."], zone=JST, target="10.0.0.5")


def test_windows_powershell_invariant_and_day_first_dates() -> None:
    # "$(Get-Date)" in PowerShell: invariant culture, MM/dd/yyyy HH:mm:ss.
    invariant = parse_windows(["01/02/2016 13:02:38 Request timed out."], zone=JST, target="x")
    assert only(invariant.records).send_utc_ns == utc_ns("2016-01-02 13:02:38")
    # en-GB: a first field above 12 shows the file is dd/MM/yyyy.
    day_first = parse_windows(
        ["23/01/2016 13:02:38 Request timed out.", "01/02/2016 13:02:39 Request timed out."],
        zone=JST,
        target="x",
    )
    assert [r.send_utc_ns for r in day_first.records] == [
        utc_ns("2016-01-23 13:02:38"),
        utc_ns("2016-02-01 13:02:39"),
    ]
    us = parse_windows(["1/23/2016 1:02:38 PM Request timed out."], zone=JST, target="x")
    assert only(us.records).send_utc_ns == utc_ns("2016-01-23 13:02:38")
    ja_long = parse_windows(
        ["2016年1月23日 13:02:38 要求がタイムアウトしました。"], zone=JST, target="x"
    )
    assert only(ja_long.records).send_utc_ns == utc_ns("2016-01-23 13:02:38")


def test_windows_joined_output_of_one_ping_on_one_line() -> None:
    # "$t $(ping -n 1 10.0.0.5)": PowerShell joins the output lines with spaces.
    log = [
        "2016-01-23 13:02:38.120  Pinging 10.0.0.5 with 32 bytes of data: Reply from 10.0.0.5: "
        "bytes=32 time=1ms TTL=128  Ping statistics for 10.0.0.5:     Packets: Sent = 1, "
        "Received = 1, Lost = 0 (0% loss), Approximate round trip times in milli-seconds:     "
        "Minimum = 1ms, Maximum = 1ms, Average = 1ms",
        "2016-01-23 13:02:39.125  Pinging 10.0.0.5 with 32 bytes of data: Request timed out.  "
        "Ping statistics for 10.0.0.5:     Packets: Sent = 1, Received = 0, Lost = 1 (100% loss),",
    ]
    parsed = parse_windows(log, zone=JST)
    assert [r.outcome for r in parsed.records] == ["reply", "timeout"]
    assert parsed.targets == ("10.0.0.5",)


def test_windows_japanese_messages_and_ipv6() -> None:
    log = [
        "2016/01/23 13:02:30 fe80::5%12 からの応答: 時間 <1ms",
        "2016/01/23 13:02:31 fe80::1%12 からの応答: 宛先ホストに到達できません。",
        "2016/01/23 13:02:32 PING: 転送に失敗しました。一般エラーです。",
        "2016/01/23 13:02:33 一般エラーです。",
        "2016/01/23 13:02:34 fe80::1%12 からの応答: 転送中に TTL が期限切れになりました。",
        "2016/01/23 13:02:35 Reply from fe80::5%12: time=2ms",
    ]
    parsed = parse_windows(log, zone=JST)
    assert parsed.targets == ("fe80::5%12",)
    got = [(r.outcome, r.from_addr, r.icmp_type, r.icmp_code) for r in parsed.records]
    assert got == [
        ("reply", "fe80::5%12", 0, 0),
        ("unreachable", "fe80::1%12", 3, 1),
        ("error", None, None, None),
        ("error", None, None, None),
        ("error", "fe80::1%12", 11, 0),
        ("reply", "fe80::5%12", 0, 0),
    ]


def test_windows_results_without_a_stamp_are_reported_not_dropped() -> None:
    log = [
        "2016/01/23 13:02:30 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
        "Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
    ]
    parsed = parse_windows(log, zone=JST)
    assert len(parsed.records) == 1
    assert [(u.line, u.reason) for u in parsed.unrecognised] == [
        (2, "ping result without a timestamp")
    ]


def test_windows_plain_ping_output_without_stamps_is_refused() -> None:
    log = [
        "Pinging 10.0.0.5 with 32 bytes of data:",
        "Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
    ]
    with pytest.raises(ImportFormatError, match="carry no timestamp"):
        parse_windows(log, zone=JST)


def test_windows_several_addresses_need_a_target() -> None:
    log = [
        "2016/01/23 13:02:30 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128",
        "2016/01/23 13:02:31 Reply from 10.0.0.6: bytes=32 time=1ms TTL=128",
    ]
    with pytest.raises(ImportFormatError, match=r"several addresses \(10.0.0.5, 10.0.0.6\)"):
        parse_windows(log, zone=JST)
    assert parse_windows(log, zone=JST, target="10.0.0.5").targets == ("10.0.0.5",)


# -- iputils ---------------------------------------------------------------------------


def test_iputils_implicit_timeouts_unreachable_duplicate_and_seq_wrap(tmp_path: Path) -> None:
    run_dir = import_log(tmp_path, "iputils-D-wrap.log", "iputils")
    header, rows = read_rows(run_dir)
    attempts = [row for row in rows if row["outcome"] != "duplicate"]
    assert [int(r["n"]) for r in attempts] == list(range(16))
    assert [int(r["seq"]) for r in attempts] == [*range(65530, 65536), *range(10)]
    assert outcomes(rows) == {"reply": 11, "timeout": 4, "unreachable": 1, "duplicate": 1}
    timeouts = [int(r["seq"]) for r in rows if r["outcome"] == "timeout"]
    assert timeouts == [65534, 65535, 0, 4]
    assert all("implicit timeout" in r["detail"] for r in rows if r["outcome"] == "timeout")

    (unreachable,) = [r for r in rows if r["outcome"] == "unreachable"]
    assert (unreachable["seq"], unreachable["from_addr"]) == ("3", "10.0.0.1")
    assert (unreachable["icmp_type"], unreachable["icmp_code"]) == ("3", "1")
    assert unreachable["recv_utc_ns"] == "1700000001801893000"
    (duplicate,) = [r for r in rows if r["outcome"] == "duplicate"]
    assert duplicate["seq"] == "7"

    # Replies: send = printed stamp - rtt. The sample's sends are t0 + k * 200.007 ms
    # (+25 us print latency in each anchor): every interpolated send lands on that schedule.
    first = rows[0]
    assert int(first["send_utc_ns"]) == 1_700_000_000_000_337_000 - 312_000
    t0 = 1_700_000_000_000_000_000 + 25_000
    for row in attempts:
        k = int(row["n"])
        assert abs(int(row["send_utc_ns"]) - (t0 + k * 200_007_000)) <= 1_000, row
    assert header["interval_s"] == pytest.approx(0.200007)

    blackout = build_summary(run_dir)["blackout"]
    assert (blackout["lost"], blackout["timeouts"], blackout["first_lost_n"]) == (3, 3, 4)


def test_iputils_outstanding_late_reply_and_the_tail_after_ctrl_c(tmp_path: Path) -> None:
    run_dir = import_log(tmp_path, "iputils-D-O.log", "iputils")
    _header, rows = read_rows(run_dir)
    got = [(int(r["seq"]), r["outcome"]) for r in rows]
    assert got == [
        (1, "reply"),
        (2, "reply"),
        (3, "reply"),
        (4, "timeout"),
        (5, "timeout"),
        (5, "late"),
        (6, "reply"),
        (7, "reply"),
        (8, "reply"),
        (9, "timeout"),
        (10, "unresolved"),  # counted by ping's summary, sent just before Ctrl-C
    ]
    late = rows[5]
    assert int(late["rtt_ns"]) == 1_250_000_000
    # The late reply's own row does not move the timeout's send time.
    assert late["send_utc_ns"] == rows[4]["send_utc_ns"]
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["import"]["timezone"] is None
    assert manifest["config"]["import"]["skipped_banner"] == 5
    assert manifest["config"]["import"]["unrecognised"] == 0


def test_iputils_interval_option_and_send_errors() -> None:
    log = [
        "PING 10.0.0.5 (10.0.0.5) 56(84) bytes of data.",
        "[1700000000.000400] 64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.400 ms",
        "ping: sendmsg: Network is unreachable",
        "[1700000002.000400] 64 bytes from 10.0.0.5: icmp_seq=3 ttl=64 time=0.400 ms",
    ]
    parsed = parse_iputils(log, interval_s=1.0)
    assert parsed.interval_source == "option (ping -i)"
    assert [(r.seq, r.outcome) for r in parsed.records] == [
        (1, "reply"),
        (2, "error"),
        (3, "reply"),
    ]
    assert "sendmsg" in (parsed.records[1].detail or "")
    assert parsed.records[1].send_utc_ns == 1_700_000_001_000_000_000


def test_iputils_without_timestamps_is_refused() -> None:
    with pytest.raises(ImportFormatError, match="-D"):
        parse_iputils(["64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.4 ms"])


# -- fping -----------------------------------------------------------------------------


def test_fping_timeouts_and_host_unreachable(tmp_path: Path) -> None:
    run_dir = import_log(tmp_path, "fping-D-l.log", "fping")
    header, rows = read_rows(run_dir)
    assert header["targets"] == ["10.0.0.5", "10.0.0.6"]
    guest = [r for r in rows if r["target"] == "10.0.0.5"]
    other = [r for r in rows if r["target"] == "10.0.0.6"]
    assert outcomes(other) == {"reply": 12}
    assert [(int(r["n"]), r["outcome"]) for r in guest[5:9]] == [
        (5, "timeout"),
        (6, "unreachable"),
        (7, "unreachable"),
        (8, "timeout"),
    ]
    for row in guest[6:8]:
        assert (row["from_addr"], row["icmp_type"], row["icmp_code"]) == ("10.0.0.1", "3", "1")
        assert "ICMP Host Unreachable from 10.0.0.1" in row["detail"]
    # Reply: send = receive stamp - rtt; timed out: interpolated between the replies.
    # The sample sends 10.0.0.5's echo k at t0 + k * 500 ms.
    t0 = 1_700_000_200_000_000_000
    for row in guest:
        assert abs(int(row["send_utc_ns"]) - (t0 + int(row["n"]) * 500_000_000)) <= 20_000
    assert header["interval_s"] == pytest.approx(0.5, abs=1e-5)

    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    config = manifest["config"]["import"]
    assert config["line_kinds"]["icmp_error"] == 2
    assert config["unmatched_icmp_errors"] == 0
    assert config["skipped_banner"] == 2
    blackout = build_summary(run_dir)["blackout"]
    assert blackout["source"] == "icmp:10.0.0.5"
    assert (blackout["lost"], blackout["timeouts"], blackout["unreachable"]) == (4, 2, 2)


def test_fping_target_option_keeps_one_target() -> None:
    log = (LOGS / "fping-D-l.log").read_text(encoding="ascii").splitlines()
    parsed = parse_fping(log, target="10.0.0.6")
    assert parsed.targets == ("10.0.0.6",)
    assert any("other targets" in note for note in parsed.notes)
    with pytest.raises(ImportFormatError, match=r"--target 10\.0\.0\.9"):
        parse_fping(log, target="10.0.0.9")


def test_fping_unreachable_without_a_timeout_is_reported() -> None:
    log = [
        "[1700000200.00031] 10.0.0.5 : [0], 64 bytes, 0.310 ms (0.31 avg, 0% loss)",
        "ICMP Host Unreachable from 10.0.0.1 for ICMP Echo sent to 10.0.0.5",
        "[1700000201.00031] 10.0.0.5 : [1], 64 bytes, 0.310 ms (0.31 avg, 0% loss)",
    ]
    parsed = parse_fping(log)
    assert [r.outcome for r in parsed.records] == ["reply", "reply"]
    assert [u.line for u in parsed.unmatched_icmp_errors] == [2]


# -- bad input -------------------------------------------------------------------------


def assert_one_line(error: BaseException) -> None:
    assert "\n" not in str(error)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    with pytest.raises(ImportFormatError, match=r"empty\.log: the file is empty") as caught:
        import_ping_log.run(
            file=empty, fmt="windows", out=tmp_path / "results", command=COMMAND, timezone="Z"
        )
    assert_one_line(caught.value)
    assert not (tmp_path / "results").exists()  # nothing is created for a refused file


def test_blank_file(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="no text"):
        parse_ping_log(b"\r\n\r\n", fmt="iputils")


def test_wrong_format_names_the_lines_and_the_likely_format(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError) as caught:
        import_log(tmp_path, "fping-D-l.log", "windows")
    message = str(caught.value)
    assert_one_line(caught.value)
    assert message.startswith("ping log fping-D-l.log: no windows ping result in its 29 lines")
    assert "try --format fping" in message
    assert not (tmp_path / "results").exists()

    with pytest.raises(ImportFormatError, match=r"no iputils ping result.*try --format windows"):
        import_log(tmp_path, "windows-en.log", "iputils")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PingLogFileError, match=r"nope\.log does not exist") as caught:
        import_ping_log.run(
            file=tmp_path / "nope.log", fmt="windows", out=tmp_path, command=COMMAND
        )
    assert_one_line(caught.value)
    assert isinstance(caught.value, ImportFormatError)
    with pytest.raises(PingLogFileError, match="is a folder"):
        import_ping_log.run(file=tmp_path, fmt="windows", out=tmp_path, command=COMMAND)


def test_undecodable_bytes() -> None:
    with pytest.raises(ImportFormatError, match="cannot decode"):
        parse_ping_log(b"13:02:38 \x82\xff Reply\r\n", fmt="windows", zone=JST)


def test_bad_options() -> None:
    with pytest.raises(ImportOptionError, match="unknown format"):
        parse_ping_log(b"x", fmt="cisco")
    with pytest.raises(ImportOptionError, match="neither a UTC offset"):
        parse_timezone("Mars/Olympus")
    with pytest.raises(ImportOptionError, match="not a date"):
        import_ping_log.run(
            file=LOGS / "windows-en.log",
            fmt="windows",
            out=Path("unused"),
            command=COMMAND,
            start_date="23.01.2016",
        )


# -- time zones and encodings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "offset_h"),
    [
        ("+09:00", "+09:00", 9),
        ("+0900", "+09:00", 9),
        ("UTC+9", "+09:00", 9),
        ("-05:30", "-05:30", -5.5),
        ("Z", "+00:00", 0),
        ("Asia/Tokyo", "Asia/Tokyo", 9),
    ],
)
def test_parse_timezone(text: str, name: str, offset_h: float) -> None:
    zone, canonical = parse_timezone(text)
    assert canonical == name
    assert zone.utcoffset(datetime(2016, 1, 23)) == timedelta(hours=offset_h)


def test_default_timezone_is_the_machine_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    run_dir = import_log(tmp_path, "windows-ja.utf8.log", "windows", zone=None)
    config = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["config"]
    assert config["import"]["timezone"] == "Asia/Tokyo"
    assert config["import"]["timezone_source"] == "machine local zone (TZ)"
    assert config["import"]["utc_offset_at_first_send"] == "+09:00"
    _header, rows = read_rows(run_dir)
    assert int(rows[0]["send_utc_ns"]) == utc_ns("2016-01-23 13:02:30")


def test_decoding_variants() -> None:
    text = "2016/01/23 13:02:30 要求がタイムアウトしました。\r\r\n次\r最後\n"
    assert decode_log(text.encode("utf-8")).lines == (
        "2016/01/23 13:02:30 要求がタイムアウトしました。",
        "次",
        "最後",
    )
    assert decode_log(b"\xef\xbb\xbf" + text.encode("utf-8")).encoding == "utf-8 (BOM)"
    assert decode_log(text.encode("utf-16-le")).encoding == "utf-16-le (no BOM)"
    assert decode_log(b"\xfe\xff" + text.encode("utf-16-be")).encoding == "utf-16-be (BOM)"
    assert decode_log(text.encode("cp932")).encoding == "cp932"


def test_make_samples_reproduces_the_frozen_logs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_samples", LOGS / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(path.name for path in LOGS.glob("*.log"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (LOGS / name).read_bytes(), name


# -- hostile or huge logs: streamed, bounded, one line when refused --------------------


def import_cli(
    tmp_path: Path, log: Path, *, address_space: int | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``measure import ping-log``, optionally in a limited address space."""

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "import",
            "ping-log",
            str(log),
            "--format",
            "iputils",
            "--out",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def test_a_summary_claiming_more_sends_than_the_elapsed_time_allows(tmp_path: Path) -> None:
    """Four lines whose summary says 100000000 packets: neither 100 million rows nor
    5 GB of memory (run in a 2 GiB address space), and the manifest says why."""
    log = tmp_path / "claims.log"
    log.write_text(
        "PING 10.0.0.5 (10.0.0.5) 56(84) bytes of data.\n"
        "[1700000000.000400] 64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.4 ms\n"
        "[1700000001.000400] 64 bytes from 10.0.0.5: icmp_seq=2 ttl=64 time=0.4 ms\n"
        "100000000 packets transmitted, 2 received, 99% packet loss, time 2000ms\n"
    )
    proc = import_cli(tmp_path, log, address_space=2 << 30)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "results").glob("*-import-*")
    _header, rows = read_rows(run_dir)
    assert len(rows) == 3  # two replies, and the one more echo 2000 ms allow at 1 s
    notes = json.loads((run_dir / "manifest.json").read_text())["config"]["import"]["notes"]
    assert any("100000000 packets transmitted" in note for note in notes)


def test_a_summary_counting_many_implicit_timeouts_is_streamed() -> None:
    """A long outage after the last line (consistent with the elapsed time) is
    made one row at a time: the records are iterated, never all held."""
    lines = [
        "PING 10.0.0.5 (10.0.0.5) 56(84) bytes of data.",
        "[1700000000.000400] 64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.4 ms",
        "[1700000000.001400] 64 bytes from 10.0.0.5: icmp_seq=2 ttl=64 time=0.4 ms",
        "1000000 packets transmitted, 2 received, 99% packet loss, time 1000000ms",
    ]
    parsed = parse_iputils(lines)
    counts = Counter(record.outcome for record in parsed.records)  # streamed, not kept
    assert counts["reply"] == 2 and counts["timeout"] + counts["unresolved"] == 999_998


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not a text log: it holds NUL bytes"),  # /dev/zero
        (b"x" * 200_000 + b"\n", "longer than 4096 characters"),
        (b"", "the file is empty"),
    ],
)
def test_a_file_that_is_no_ping_log_is_refused_in_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    if content is None:
        log = Path("/dev/zero")
    else:
        log = tmp_path / "not-a-log"
        log.write_bytes(content)
    proc = import_cli(tmp_path, log, address_space=2 << 30)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "results").exists()


def test_an_out_of_range_timestamp_is_an_unrecognised_line(tmp_path: Path) -> None:
    log = tmp_path / "far.log"
    log.write_text(
        "[99999999999999999999.123456] 64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.4 ms\n"
        "[1700000000.000400] 64 bytes from 10.0.0.5: icmp_seq=2 ttl=64 time=0.4 ms\n"
        "[1700000001.000400] 64 bytes from 10.0.0.5: icmp_seq=3 ttl=64 time=0.4 ms\n"
    )
    proc = import_cli(tmp_path, log)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (run_dir,) = (tmp_path / "results").glob("*-import-*")
    config = json.loads((run_dir / "manifest.json").read_text())["config"]["import"]
    assert config["unrecognised"] == 1
    assert "out of range" in config["unrecognised_first"][0]["reason"]
