"""The witnesses' analyses as pure functions: records made from a known truth
(random outages, inbound and outbound coming back apart, a slowed guest),
and the bounds must contain it every time."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from migration_blackout.analysis.brownout import NO_WORK_REASON, analyse_work
from migration_blackout.analysis.clocks import utc_iso
from migration_blackout.analysis.direction import analyse_direction
from migration_blackout.analysis.render import format_summary_table
from migration_blackout.analysis.report.model import build_report
from migration_blackout.analysis.report.renderers import (
    render_html,
    render_markdown,
    report_document,
)
from migration_blackout.analysis.summary import build_summary, read_summary, write_summary
from migration_blackout.analysis.tcp import analyse_connects, analyse_stream, beyond_blackout
from migration_blackout.probes.sink import CsvSink
from migration_blackout.runformat import HEARTBEAT, SUMMARY_FILE, TCP_CONNECT, TCP_STREAM

MS = 1_000_000
BASE = 5_000_000_000_000  # a monotonic clock reading, ns
EPOCH = 1_796_000_000_000_000_000


def connect_records(
    dark_from: int, back_at: int, *, interval: int, rtt: int, end: int, refused_at: set[int]
) -> pd.DataFrame:
    """One port probed every ``interval`` from BASE to ``end``: an attempt whose
    handshake meets the dark window times out after 500 ms."""
    rows = []
    for n, start in enumerate(range(BASE, end, interval)):
        dark = dark_from <= start + rtt // 2 and start < back_at
        outcome = "refused" if n in refused_at else ("timeout" if dark else "connected")
        done = start + (500 * MS if outcome == "timeout" else rtt)
        rows.append(("g", 3389, n, outcome, start, start + EPOCH, done, done + EPOCH))
    rows.append(("g", 3389, len(rows), "unresolved", end, end + EPOCH, end, end + EPOCH))
    # The contract's columns up to end_utc_ns; connect_ns follows (errno, detail unused).
    frame = pd.DataFrame(rows, columns=list(TCP_CONNECT.columns[:8]))
    frame["connect_ns"] = pd.array(
        [r[6] - r[4] if r[3] == "connected" else None for r in rows], dtype="Int64"
    )
    return frame.sample(frac=1, random_state=1)  # rows are written as attempts resolve


def test_connect_outage_bounds_contain_the_dark_window() -> None:
    rng = random.Random(3)
    for _ in range(50):
        interval = rng.choice([10, 20, 50]) * MS
        dark_from = BASE + rng.randrange(500, 900) * MS
        back_at = dark_from + rng.randrange(100, 4000) * MS
        records = connect_records(
            dark_from,
            back_at,
            interval=interval,
            rtt=rng.randrange(50_000, 2 * MS),
            end=back_at + 2_000 * MS,
            refused_at=set(),
        )
        (port,) = analyse_connects(records)
        outage = port.longest
        assert outage is not None and outage.upper_ms is not None
        truth_ms = (back_at - dark_from) / MS
        assert outage.lower_ms <= truth_ms <= outage.upper_ms
        assert truth_ms - outage.lower_ms <= 2 * interval / MS
        assert outage.outcomes == {"timeout": outage.failed}
        assert port.attempts == len(records) - 1  # the unresolved one is no attempt


def test_a_refused_connect_is_counted_and_splits_nothing_it_should_not() -> None:
    records = connect_records(
        BASE + 500 * MS,
        BASE + 900 * MS,
        interval=50 * MS,
        rtt=MS,
        end=BASE + 2000 * MS,
        refused_at={3},
    )
    (port,) = analyse_connects(records)
    assert port.outcomes["refused"] == 1 and port.outcomes["unresolved"] == 1
    first, longest = port.outages
    assert first.outcomes == {"refused": 1} and first.lower_ms == 0
    assert longest is port.longest and longest.outcomes == {"timeout": longest.failed}


def stream_records(
    dark_in: tuple[int, int], dark_out: tuple[int, int], *, interval: int, end: int
) -> tuple[pd.DataFrame, int, int]:
    """A stream that TCP carries through: what is sent into a dark direction is
    delivered at the next retransmission after it came back (backoff from 200 ms
    doubling, counted from the first loss). The guest's clock is the harness's
    plus an offset. Returns (rows, true inbound stall, true outbound stall)."""
    offset = 123 * MS

    def delivered(sent: int, dark: tuple[int, int]) -> int:
        if not dark[0] <= sent < dark[1]:
            return sent + MS // 10
        retry, rto = dark[0], 200 * MS
        while retry < dark[1]:
            retry += rto
            rto *= 2
        return retry

    rows = [("connected", 0, None, BASE - MS, EPOCH, None, None, BASE, EPOCH, "abc")]
    arrivals_in, arrivals_out = [], []
    for seq, sent in enumerate(range(BASE, end, interval)):
        at = delivered(sent, dark_in)
        arrivals_in.append(at)
        rows.append(("in", 0, seq, sent, sent + EPOCH, at + offset, None, at, at + EPOCH, None))
        back = delivered(sent + interval // 3, dark_out)
        arrivals_out.append(back)
        guest = sent + interval // 3 + offset
        rows.append(("out", 0, seq, None, None, guest, guest + EPOCH, back, back + EPOCH, None))
    rows.append(("closed", 0, None, None, None, None, None, end, end + EPOCH, "stopped"))
    columns = list(TCP_STREAM.columns)
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns[2:9]:
        frame[column] = frame[column].astype("Int64")
    stall_in = int(np.diff(np.maximum.accumulate(arrivals_in)).max())
    stall_out = int(np.diff(np.sort(arrivals_out)).max())
    return frame, stall_in, stall_out


def test_stream_stalls_per_direction_outlast_the_outage_by_tcp_backoff() -> None:
    interval = 10 * MS
    dark_in = (BASE + 1000 * MS, BASE + 2300 * MS)
    dark_out = (BASE + 1000 * MS, BASE + 2900 * MS)
    records, stall_in, stall_out = stream_records(
        dark_in, dark_out, interval=interval, end=BASE + 8000 * MS
    )
    stream = analyse_stream(records, interval_s=0.01)
    assert stream.survived and stream.connections == 1 and stream.inbound_undelivered == 0
    assert stream.inbound is not None and stream.outbound is not None
    assert stream.inbound.stall_ms == pytest.approx(stall_in / MS, abs=0.2)
    assert stream.outbound.stall_ms == pytest.approx(stall_out / MS, abs=0.2)
    # Backoff: retransmissions at 0.2, 0.6, 1.4, 3.0 s after the first loss.
    assert stream.inbound.stall_ms > (dark_in[1] - dark_in[0]) / MS
    assert stream.outbound.stall_ms > (dark_out[1] - dark_out[0]) / MS
    assert stream.inbound.lower_ms == stream.inbound.stall_ms - 10
    # Inbound is measured on the guest's clock, placed on the harness's.
    assert abs(stream.inbound.start_mono_ns - dark_in[0]) <= interval + MS
    assert stream.stall is stream.outbound
    beyond = beyond_blackout(stream.outbound, 1890.0, 1910.0, 1900.0)
    assert beyond.beyond_ms == pytest.approx(stream.outbound.stall_ms - 1900.0)
    assert beyond.lower_ms <= beyond.beyond_ms <= beyond.upper_ms  # type: ignore[operator]


def test_a_stream_that_had_to_reconnect_did_not_survive() -> None:
    records, _, _ = stream_records(
        (BASE + 500 * MS, BASE + 600 * MS),
        (BASE, BASE),
        interval=10 * MS,
        end=BASE + 1000 * MS,
    )
    extra = pd.DataFrame(
        [("closed", 0, None, None, None, None, None, BASE + 700 * MS, None, "ECONNRESET")],
        columns=records.columns,
    )
    stream = analyse_stream(pd.concat([records, extra]), interval_s=0.01)
    assert not stream.survived and "ECONNRESET" in stream.closed_reasons


def direction_records(
    dark_from: int,
    inbound_back: int,
    outbound_back: int,
    *,
    interval: int,
    end: int,
    queued: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probes every ``interval``; a probe reaches the guest 30 us after its send
    unless inbound is dark then, its answer comes back 30 us after that unless
    outbound is dark. The last ``queued`` probes before the dark edge reached a
    paused guest that answered them only after it (into the dark). Heartbeats
    every 10 ms from the guest, lost while outbound is dark."""
    one_way = 30_000
    rows, received, last_seq, run_start = [], 0, -2, 0
    sends = list(range(BASE, end, interval))
    queued_from = next(i for i, sent in enumerate(sends) if sent + one_way >= dark_from) - queued
    for seq, sent in enumerate(sends):
        at_guest = sent + one_way
        if dark_from <= at_guest < inbound_back:
            rows.append((seq, "timeout", sent, None, None, None, None, None))
            continue
        received += 1
        run_start = run_start if seq == last_seq + 1 else seq
        last_seq = seq
        back = at_guest + one_way
        if dark_from <= at_guest < outbound_back or queued_from <= seq < queued_from + queued:
            rows.append((seq, "timeout", sent, None, None, None, None, None))
            continue
        rows.append((seq, "reply", sent, back, back - sent, at_guest, received, run_start))
    records = pd.DataFrame(
        rows,
        columns=[
            "seq",
            "outcome",
            "send_mono_ns",
            "recv_mono_ns",
            "rtt_ns",
            "guest_recv_mono_ns",
            "received",
            "run_start_seq",
        ],
    )
    for column in ("recv_mono_ns", "rtt_ns", "guest_recv_mono_ns", "received", "run_start_seq"):
        records[column] = records[column].astype("Int64")
    beats = []
    for seq, sent in enumerate(range(BASE + 3 * MS, end, 10 * MS)):
        if not dark_from <= sent < outbound_back:
            beats.append(("a1", seq, sent + one_way, 10 * MS, 20_000))
    heartbeats = pd.DataFrame(
        beats, columns=["agent_id", "seq", "recv_mono_ns", "interval_ns", "late_ns"]
    )
    return records, heartbeats


@pytest.mark.parametrize("order", ["inbound first", "outbound first", "together", "outbound only"])
def test_direction_edges_contain_when_each_direction_came_back(order: str) -> None:
    """Also when the guest answered some probes from before the outage only
    after it began (a paused guest's queue): they count as lost on the way
    out, and must not move the inbound edge."""
    rng = random.Random(order)
    for _ in range(40):
        interval = rng.choice([2, 5, 10]) * MS
        dark_from = BASE + rng.randrange(300, 700) * MS
        first = dark_from + rng.randrange(200, 3000) * MS
        second = first + (0 if order == "together" else rng.randrange(20, 1500) * MS)
        inbound, outbound = (second, first) if order == "outbound first" else (first, second)
        if order == "outbound only":
            inbound = dark_from
        queued = rng.choice([0, 0, 1, 3])
        records, heartbeats = direction_records(
            dark_from, inbound, outbound, interval=interval, end=second + 1000 * MS, queued=queued
        )
        analysis = analyse_direction(records, heartbeats=heartbeats)
        outage = analysis.longest
        assert outage is not None and outage.upper_ms is not None
        lost_out_truth = queued + sum(
            1 for s in records["send_mono_ns"] if max(dark_from, inbound) <= s + 30_000 < outbound
        )
        assert outage.lost_outbound == lost_out_truth
        assert outage.lost_inbound == outage.lost - lost_out_truth
        assert outage.outbound_restored is not None
        if order == "outbound only":
            assert outage.inbound_restored is None and outage.lost_inbound == 0
        else:
            assert outage.inbound_restored is not None
            edge = outage.inbound_restored
            assert edge.after_mono_ns < inbound <= edge.by_mono_ns
            assert edge.window_ms <= interval / MS + 0.1
        edge = outage.outbound_restored
        assert edge.after_mono_ns < outbound <= edge.by_mono_ns
        if order in ("inbound first", "outbound only"):
            assert edge.source == "udp_direction" and edge.window_ms <= interval / MS + 0.1
        else:
            assert edge.source == "guest_heartbeat" and edge.window_ms <= 10 + 0.1


def work_records(
    slow_from: int, slow_to: int, *, share: float, rng: random.Random, gap_after: bool
) -> tuple[pd.DataFrame, int | None]:
    """Heartbeats every 10 ms with a work time of ~0.2 ms (a busy machine now
    and then adds a few ms); between ``slow_from`` and ``slow_to`` the guest
    has ``share`` of a CPU in periods of 13 ms: a wake-up falling in the
    throttled part waits for the next period. Optionally the guest freezes
    at ``slow_to`` for a second (the blackout). Returns (rows, the gap's start)."""
    rows, seq, t = [], 0, BASE
    gap_start = None
    period = 13 * MS
    while t < slow_to + 3000 * MS:
        if gap_after and gap_start is None and t >= slow_to:
            gap_start = rows[-1][2]
            t += 1000 * MS
        work = 200_000 + (rng.randrange(1, 5) * MS if rng.random() < 0.05 else 0)
        if slow_from <= t < slow_to:
            phase = (t - slow_from) % period
            if phase >= share * period:
                work += period - phase
        rows.append(("a1", seq, t, t + 50_000, 10_000, work))
        seq += 1
        t += 10 * MS
    frame = pd.DataFrame(
        rows,
        columns=["agent_id", "seq", "guest_mono_ns", "recv_mono_ns", "interval_us", "work_ns"],
    )
    return frame, gap_start


@pytest.mark.parametrize("gap_after", [True, False])
def test_brownout_bounds_contain_the_slowed_stretch(gap_after: bool) -> None:
    rng = random.Random(gap_after)
    for _ in range(30):
        slow_from = BASE + rng.randrange(1000, 3000) * MS
        slow_to = slow_from + rng.randrange(500, 4000) * MS
        share = rng.choice([0.1, 0.2, 0.3])
        records, gap_start = work_records(
            slow_from, slow_to, share=share, rng=rng, gap_after=gap_after
        )
        work = analyse_work(records, gap_start_guest_mono_ns=gap_start)
        assert work is not None and work.brownout is not None
        brownout = work.brownout
        truth_ms = (slow_to - slow_from) / MS
        assert brownout.lower_ms <= truth_ms <= brownout.upper_ms
        assert brownout.ends_at_gap == gap_after
        assert brownout.rate < 0.5 and 0.15 < work.baseline_work_ms < 0.5


def test_one_stall_before_the_brownout_does_not_start_it_early() -> None:
    # A loaded host stalls the whole guest for ~120 ms now and then (seen in the
    # lab's witness run, 120 ms before pre-copy began): a stall, not a slower
    # pace, and no part of the brownout.
    rng = random.Random(7)
    slow_from = BASE + 2000 * MS
    slow_to = slow_from + 1400 * MS
    records, gap_start = work_records(slow_from, slow_to, share=0.2, rng=rng, gap_after=True)
    before = records["guest_mono_ns"] < slow_from - 120 * MS
    records.loc[records.index[before][-1], "work_ns"] = 122 * MS
    work = analyse_work(records, gap_start_guest_mono_ns=gap_start)
    assert work is not None and work.brownout is not None
    brownout = work.brownout
    assert brownout.lower_ms <= (slow_to - slow_from) / MS <= brownout.upper_ms


def test_no_brownout_on_a_guest_that_was_never_slowed() -> None:
    records, _ = work_records(BASE, BASE, share=1.0, rng=random.Random(5), gap_after=False)
    work = analyse_work(records)
    assert work is not None and work.brownout is None and work.brownouts == ()


UTC_AT_BASE = 1_796_000_000_000_000_000  # the wall clock at BASE


def write_heartbeat_run(run: Path, records: pd.DataFrame, *, version: int = 2) -> Path:
    """A run folder holding only these heartbeats (the real sink), as an agent
    of heartbeat ``version`` wrote them (1: without late_ns and work_ns)."""
    columns = HEARTBEAT.columns if version == 2 else HEARTBEAT.columns[:-2]
    sink = CsvSink(run / HEARTBEAT.path, probe="guest_heartbeat", columns=columns)
    for row in records.itertuples():
        utc = UTC_AT_BASE - BASE
        fields = [row.agent_id, row.seq, utc + row.guest_mono_ns, row.guest_mono_ns]
        fields += [row.interval_us, row.recv_mono_ns, utc + row.recv_mono_ns, "198.18.0.2"]
        sink.write_row([*fields, 0, row.work_ns] if version == 2 else fields)
    sink.close()
    manifest = {
        "schema_version": 1,
        "run_id": run.name,
        "status": "completed",
        "error": None,
        "started_utc": "2026-12-01T00:00:00Z",
        "ended_utc": None,
        "targets": [],
        "config": {},
        "probes": {},
        "clock": {"start": {"mono_ns": BASE, "utc_ns": UTC_AT_BASE}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_the_summary_block_holds_the_slowed_stretch_on_the_harness_clock(tmp_path: Path) -> None:
    rng = random.Random(11)
    slow_from, slow_to = BASE + 2000 * MS, BASE + 3700 * MS
    records, _ = work_records(slow_from, slow_to, share=0.2, rng=rng, gap_after=True)
    summary = build_summary(write_heartbeat_run(tmp_path / "run", records))
    block = summary["brownout"]
    measured = block["measured"]
    assert block["reason"] is None and measured["ends_at_blackout"]
    assert measured["lower_ms"] <= (slow_to - slow_from) / MS <= measured["upper_ms"]
    # The heartbeats arrive 50 us after their guest stamp: the truth on the
    # harness clock is the guest's, 50 us later, within each edge's bounds.
    start, end = measured["start"], measured["end"]
    assert start["lo_mono_ns"] <= slow_from + 50_000 <= start["hi_mono_ns"]
    assert end["lo_mono_ns"] <= slow_to + 50_000 <= end["hi_mono_ns"]
    assert start["t_utc"] == utc_iso(UTC_AT_BASE - BASE + start["t_mono_ns"])
    assert end["hi_utc"] > end["t_utc"] > start["t_utc"] > start["lo_utc"]
    assert measured["work_rate"] < 0.5 and 0.15 < block["baseline_work_ms"] < 0.5
    assert block["heartbeats_with_work"] == len(records)
    assert block["hyperv"] is None and block["qemu"] is None
    # The terminal: one line in what applications felt, its bounds and rate.
    (line,) = [x for x in format_summary_table(summary).splitlines() if "guest brownout" in x]
    assert line.split()[2:4] == [f"{measured['lower_ms']:.3f}", f"{measured['upper_ms']:.3f}"]
    assert f"work rate {measured['work_rate']:.2f} of normal" in line


def test_the_report_has_a_brownout_column(tmp_path: Path) -> None:
    slowed = (BASE + 2000 * MS, BASE + 3000 * MS)
    records, _ = work_records(*slowed, share=0.2, rng=random.Random(3), gap_after=True)
    run = write_heartbeat_run(tmp_path / "run", records)
    write_summary(run)
    measured = read_summary(run / SUMMARY_FILE)["brownout"]["measured"]
    report = build_report([run])
    cell = f"{measured['duration_ms']:.1f} (rate {measured['work_rate']:.2f})"
    assert "| brownout ms |" in render_markdown(report) and f"| {cell} |" in render_markdown(report)
    assert "<th>brownout ms</th>" in render_html(report) and cell in render_html(report)
    (shown,) = report_document(report)["runs"]
    assert shown["brownout"]["duration_ms"] == measured["duration_ms"]
    assert shown["brownout"]["work_rate"] == measured["work_rate"]


def test_the_terminal_sets_hyperv_s_brownout_beside_a_run_without_work_times() -> None:
    summary = build_summary(Path(__file__).parent / "data" / "runs" / "lab-v1-sample")
    (line,) = [x for x in format_summary_table(summary).splitlines() if "guest brownout" in x]
    assert NO_WORK_REASON in line and "Hyper-V 22508: 1900 ms" in line


@pytest.mark.parametrize("version", [1, 2])
def test_the_summary_block_says_why_there_is_no_brownout(tmp_path: Path, version: int) -> None:
    records, _ = work_records(BASE, BASE, share=1.0, rng=random.Random(5), gap_after=False)
    block = build_summary(write_heartbeat_run(tmp_path / "run", records, version=version))
    brownout = block["brownout"]
    assert brownout["measured"] is None
    if version == 1:  # an agent before heartbeat version 2
        assert brownout["reason"] == NO_WORK_REASON and brownout["baseline_work_ms"] is None
    else:
        assert "no brownout" in brownout["reason"] and brownout["baseline_work_ms"] > 0


def test_a_stall_still_on_when_the_record_ends_is_open() -> None:
    """Frames sent into an outage that lasted past the end of the run were never
    delivered: the stall is at least from the last delivery to the record's end."""
    end = BASE + 3000 * MS
    records, _, _ = stream_records(
        (BASE + 1000 * MS, end + 60_000 * MS),
        (BASE + 1000 * MS, end + 60_000 * MS),
        interval=10 * MS,
        end=end,
    )
    # What was not delivered by the end never was: the probe wrote those rows
    # without guest or arrival stamps when the run stopped.
    late = records["recv_mono_ns"] > end
    records.loc[late & (records["kind"] == "in"), ["guest_mono_ns", "recv_mono_ns"]] = pd.NA
    records = records[~(late & (records["kind"] == "out"))]
    stream = analyse_stream(records, interval_s=0.01)
    for stall in (stream.inbound, stream.outbound):
        assert stall is not None and stall.open_end
        assert stall.stall_ms == pytest.approx(2000, abs=15)
        assert stall.end_mono_ns == end
