"""Outages and the blackout on small synthetic record tables with hand-checked answers.

Attempts are written as a string, one letter per attempt n = 0, 1, 2, ...
sent ``interval_ms`` apart: R reply, T timeout, U unreachable, E error,
? unresolved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pytest

from migration_blackout.analysis.icmp import (
    BlackoutWindow,
    Outage,
    TargetIcmpSummary,
    analyse_icmp,
    select_blackout,
)
from migration_blackout.runformat import RunFormatError, utc_iso

MS = 1_000_000
MONO0 = 7_000_000 * MS
UTC0 = 1_795_611_760_000_000_000  # 2026-11-25T13:02:40Z
LETTERS = {"R": "reply", "T": "timeout", "U": "unreachable", "E": "error", "?": "unresolved"}


def attempts(
    pattern: str,
    *,
    target: str = "guest",
    interval_ms: float = 10,
    first_n: int = 0,
    offset_ms: float = 0,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i, letter in enumerate(pattern):
        n = first_n + i
        send = MONO0 + round((offset_ms + i * interval_ms) * MS)
        rows.append(
            {
                "target": target,
                "n": n,
                "seq": n & 0xFFFF,
                "outcome": LETTERS[letter],
                "send_mono_ns": send,
                "send_utc_ns": send - MONO0 + UTC0,
            }
        )
    return rows


def table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """The records as ``read_icmp_csv`` types them (nullable Int64 ns columns)."""
    ns_columns = ["send_mono_ns", "send_utc_ns"]
    frame = pd.DataFrame(list(rows), columns=["target", "n", "seq", "outcome", *ns_columns])
    return frame.astype({"n": "int64", **dict.fromkeys(ns_columns, "Int64")})


def only_target(
    frame: pd.DataFrame, *, requested_interval_s: float | None = None
) -> tuple[TargetIcmpSummary, BlackoutWindow | None]:
    analysis = analyse_icmp(frame, requested_interval_s=requested_interval_s)
    (summary,) = analysis.targets
    return summary, analysis.blackout


def bounds(outage: Outage) -> tuple[int, int, float, float | None, float | None]:
    return (
        outage.first_lost_n,
        outage.last_lost_n,
        outage.lower_ms,
        outage.upper_ms,
        outage.estimate_ms,
    )


def test_no_loss() -> None:
    summary, blackout = only_target(table(attempts("RRRRRRRRRR")), requested_interval_s=0.01)
    assert (summary.sent, summary.replies, summary.timeouts, summary.unreachable) == (10, 10, 0, 0)
    assert summary.outages == ()
    assert blackout is None
    assert summary.achieved_median_interval_ms == 10.0
    assert summary.achieved_mean_interval_ms == 10.0
    assert summary.jitter_p99_ms == 0.0
    assert summary.achieved_rate_ratio == 1.0
    assert summary.send_clock == "mono"
    assert summary.first_send_utc_ns == UTC0
    assert summary.last_send_utc_ns == UTC0 + 90 * MS


def test_loss_at_the_start_is_open_with_no_upper_bound() -> None:
    summary, blackout = only_target(table(attempts("TTRRRR")))
    (outage,) = summary.outages
    assert bounds(outage) == (0, 1, 10.0, None, 20.0)
    assert (outage.open_start, outage.open_end) == (True, False)
    assert outage.last_reply_before_send_mono_ns is None
    assert outage.first_reply_after_send_mono_ns == MONO0 + 20 * MS
    assert outage.upper_start_utc is None
    assert outage.upper_end_utc == "2026-11-25T13:02:40.020000Z"
    assert blackout is not None and blackout.outage == outage and blackout.upper_ms is None


def test_loss_at_the_end_is_open_with_no_upper_bound() -> None:
    summary, _ = only_target(table(attempts("RRRTTT")))
    (outage,) = summary.outages
    assert bounds(outage) == (3, 5, 20.0, None, 30.0)
    assert (outage.open_start, outage.open_end) == (False, True)
    assert outage.last_reply_before_send_mono_ns == MONO0 + 20 * MS
    assert outage.first_reply_after_send_mono_ns is None


def test_several_outages_and_the_longest_is_the_blackout() -> None:
    #                                  0123456789A
    summary, blackout = only_target(table(attempts("RRTRTTTRURR")))
    assert [bounds(o) for o in summary.outages] == [
        (2, 2, 0.0, 20.0, 10.0),
        (4, 6, 20.0, 40.0, 30.0),
        (8, 8, 0.0, 20.0, 10.0),
    ]
    middle = summary.outages[1]
    assert middle.start_utc == "2026-11-25T13:02:40.040000Z"
    assert middle.end_utc == "2026-11-25T13:02:40.060000Z"
    assert middle.upper_start_utc == "2026-11-25T13:02:40.030000Z"
    assert middle.upper_end_utc == "2026-11-25T13:02:40.070000Z"
    assert middle.first_lost_send_mono_ns == MONO0 + 40 * MS
    assert middle.last_lost_send_mono_ns == MONO0 + 60 * MS
    assert middle.last_reply_before_send_mono_ns == MONO0 + 30 * MS
    assert middle.first_reply_after_send_mono_ns == MONO0 + 70 * MS
    assert blackout is not None
    assert blackout.outage == middle
    assert blackout.source == "icmp:guest"
    assert (blackout.lower_ms, blackout.upper_ms) == (20.0, 40.0)
    assert (blackout.start_utc_ns, blackout.end_utc_ns) == (UTC0 + 40 * MS, UTC0 + 60 * MS)
    assert (blackout.timeouts_outside, blackout.unreachable_outside) == (1, 1)


def test_row_order_does_not_matter() -> None:
    rows = attempts("RRTRTTTRURR") + attempts("RTTR", target="host", offset_ms=5)
    in_order = analyse_icmp(table(rows))
    shuffled = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    assert analyse_icmp(table(shuffled)) == in_order
    assert analyse_icmp(table(reversed(rows))) == in_order


def test_duplicate_replies_are_counted_but_are_not_attempts() -> None:
    rows = attempts("RRTTRR")
    duplicate = dict(rows[1], outcome="duplicate")
    # An extra row may lack send stamps; it must not disturb the clock choice.
    unstamped = dict(rows[4], outcome="duplicate", send_mono_ns=None, send_utc_ns=None)
    summary, _ = only_target(table([*rows, duplicate, unstamped]))
    assert (summary.sent, summary.replies, summary.duplicates) == (6, 4, 2)
    assert [bounds(o) for o in summary.outages] == [(2, 3, 10.0, 30.0, 20.0)]
    assert summary.achieved_median_interval_ms == 10.0


def test_a_late_reply_does_not_undo_its_timeout() -> None:
    rows = attempts("RRTTTRR")
    late = dict(rows[3], outcome="late")
    summary, _ = only_target(table([*rows, late]))
    assert (summary.sent, summary.timeouts, summary.late) == (7, 3, 1)
    assert [bounds(o) for o in summary.outages] == [(2, 4, 20.0, 40.0, 30.0)]


def test_sequence_numbers_wrap_but_n_does_not() -> None:
    count = 65_600
    n = np.arange(count, dtype=np.int64)
    outcome = np.full(count, "reply", dtype=object)
    outcome[65_535:65_538] = "timeout"  # seq 65535, 0, 1
    send = MONO0 + n * MS
    frame = pd.DataFrame(
        {
            "target": "guest",
            "n": n,
            "seq": n & 0xFFFF,
            "outcome": outcome,
            "send_mono_ns": pd.array(send, dtype="Int64"),
            "send_utc_ns": pd.array(send - MONO0 + UTC0, dtype="Int64"),
        }
    ).sample(frac=1.0, random_state=3)
    assert frame["seq"].duplicated().any()
    summary, blackout = only_target(frame, requested_interval_s=0.001)
    (outage,) = summary.outages
    assert bounds(outage) == (65_535, 65_537, 2.0, 4.0, 3.0)
    assert blackout is not None and blackout.outage == outage
    assert summary.sent == count


def test_unreachable_errors_and_timeouts_are_counted_apart() -> None:
    summary, blackout = only_target(table(attempts("RTUTERRUR")))
    assert (summary.timeouts, summary.unreachable, summary.errors) == (2, 2, 1)
    first, second = summary.outages
    assert (first.lost, first.timeouts, first.unreachable, first.errors) == (4, 2, 1, 1)
    assert (second.lost, second.timeouts, second.unreachable, second.errors) == (1, 0, 1, 0)
    assert blackout is not None and blackout.outage == first
    assert (blackout.timeouts_outside, blackout.unreachable_outside) == (0, 1)
    assert blackout.errors_outside == 0


def test_two_targets_blackout_ranked_by_lower_bound_not_lost_count() -> None:
    # fast: 5 lost at 10 ms, lower 40 ms; slow: 2 lost at 100 ms, lower 100 ms.
    rows = attempts("RRTTTTTRR", target="fast") + attempts("RRTTRR", target="slow", interval_ms=100)
    analysis = analyse_icmp(table(rows), targets=["slow", "never-answered", "fast"])
    assert [t.target for t in analysis.targets] == ["slow", "never-answered", "fast"]
    slow, silent, fast = analysis.targets
    assert bounds(fast.outages[0]) == (2, 6, 40.0, 60.0, 50.0)
    assert bounds(slow.outages[0]) == (2, 3, 100.0, 300.0, 200.0)
    assert (silent.sent, silent.send_clock, silent.outages) == (0, None, ())
    assert silent.achieved_median_interval_ms is None
    assert analysis.blackout is not None
    assert analysis.blackout.source == "icmp:slow"
    assert analysis.blackout.outage == slow.outages[0]


def test_targets_not_listed_follow_in_name_order() -> None:
    rows = attempts("R", target="b") + attempts("R", target="c") + attempts("R", target="a")
    assert [t.target for t in analyse_icmp(table(rows), targets=["c"]).targets] == ["c", "a", "b"]


def test_a_single_lost_probe_has_lower_bound_zero() -> None:
    summary, blackout = only_target(table(attempts("RRTRR", interval_ms=20)))
    (outage,) = summary.outages
    assert bounds(outage) == (2, 2, 0.0, 40.0, 20.0)
    assert outage.start_utc == outage.end_utc
    assert blackout is not None and blackout.lower_ms == 0.0


def test_unresolved_attempts_are_neither_lost_nor_replies() -> None:
    # The tail is unresolved: the outage before it has no reply after -> open end.
    summary, _ = only_target(table(attempts("RRTT??")))
    (outage,) = summary.outages
    assert (summary.sent, summary.unresolved, summary.timeouts) == (6, 2, 2)
    assert bounds(outage) == (2, 3, 10.0, None, 20.0)
    assert outage.open_end
    # An unresolved attempt inside a run of losses neither splits nor counts.
    summary, _ = only_target(table(attempts("RT?TR")))
    (outage,) = summary.outages
    assert (outage.lost, outage.first_lost_n, outage.last_lost_n) == (2, 1, 3)
    assert (outage.lower_ms, outage.upper_ms) == (20.0, 40.0)


def test_estimate_uses_the_achieved_interval_not_the_requested_one() -> None:
    summary, _ = only_target(table(attempts("RTTTR", interval_ms=20)), requested_interval_s=0.01)
    assert summary.requested_interval_ms == 10.0
    assert summary.achieved_median_interval_ms == 20.0
    assert summary.achieved_rate_ratio == 0.5
    assert summary.outages[0].estimate_ms == 60.0


def test_interval_statistics_by_hand() -> None:
    rows = attempts("RRRRRR")
    rows[2]["send_mono_ns"] = MONO0 + 21 * MS  # steps 10, 11, 9, 10, 10
    summary, _ = only_target(table(rows), requested_interval_s=0.009)
    assert summary.achieved_median_interval_ms == 10.0
    # |step - median| = 0, 1, 1, 0, 0; p99 interpolates between the two 1s.
    assert summary.jitter_p99_ms == pytest.approx(1.0)
    assert summary.achieved_mean_interval_ms == 10.0
    assert summary.achieved_rate_ratio == pytest.approx(0.9)


def test_utc_is_the_send_clock_when_monotonic_stamps_are_missing() -> None:
    rows = [dict(row, send_mono_ns=None) for row in attempts("RRTTR")]
    summary, _ = only_target(table(rows))
    assert summary.send_clock == "utc"
    (outage,) = summary.outages
    assert bounds(outage) == (2, 3, 10.0, 30.0, 20.0)
    assert outage.first_lost_send_mono_ns is None
    assert outage.first_lost_send_utc_ns == UTC0 + 20 * MS


def test_ties_in_send_time_are_ordered_by_n() -> None:
    # An imported log stamped in whole seconds, two attempts per second.
    rows = attempts("RTRTR", interval_ms=1000)
    for row in rows:
        row["send_mono_ns"] = None
        row["send_utc_ns"] = UTC0 + (int(row["n"]) // 2) * 1000 * MS  # type: ignore[call-overload]
    summary, _ = only_target(table(reversed(rows)))
    assert [bounds(o)[:4] for o in summary.outages] == [(1, 1, 0.0, 1000.0), (3, 3, 0.0, 1000.0)]


def test_an_attempt_without_any_send_time_is_refused() -> None:
    rows = attempts("RRR")
    rows[1]["send_mono_ns"] = None
    rows[2]["send_utc_ns"] = None
    with pytest.raises(RunFormatError, match="one clock"):
        analyse_icmp(table(rows))


def test_a_repeated_attempt_counter_is_refused() -> None:
    rows = attempts("RRR")
    rows[2]["n"] = 0
    with pytest.raises(RunFormatError, match="n repeats"):
        analyse_icmp(table(rows))


def test_unknown_outcome_is_refused() -> None:
    rows = attempts("RR")
    rows[1]["outcome"] = "lost"
    with pytest.raises(RunFormatError, match="lost"):
        analyse_icmp(table(rows))


def test_empty_table() -> None:
    analysis = analyse_icmp(table([]), targets=["guest"])
    (summary,) = analysis.targets
    assert (summary.sent, summary.outages, analysis.blackout) == (0, (), None)
    assert summary.first_send_utc_ns is None


def test_blackout_ties_prefer_more_lost_then_larger_upper_then_earliest() -> None:
    # Same lower bound (10 ms): "slow" lost 2 at 10 ms, "fast" lost 3 at 5 ms.
    rows = attempts("RTTR", target="slow") + attempts("RTTTR", target="fast", interval_ms=5)
    assert analyse_icmp(table(rows)).blackout.source == "icmp:fast"  # type: ignore[union-attr]
    # Same lower and lost: the closed outage (upper known) beats the open one.
    rows = attempts("RTTR", target="closed") + attempts("RTT", target="open")
    assert analyse_icmp(table(rows)).blackout.source == "icmp:closed"  # type: ignore[union-attr]
    # All equal: the earliest.
    summary, _ = only_target(table(attempts("RTTRTTR")))
    blackout = select_blackout([summary])
    assert blackout is not None and blackout.outage.first_lost_n == 1


def test_utc_iso_truncates_to_microseconds() -> None:
    assert utc_iso(UTC0 + 123_456_789) == "2026-11-25T13:02:40.123456Z"
