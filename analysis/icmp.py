"""Outages and the blackout from ICMP probe attempts.

Pure functions from a table of probe records (the frame of
``rundata.read_icmp_csv``) to frozen dataclasses. Everything per record is
vectorised with numpy; Python loops run only over targets and over outages.

Definitions (docs/summary-format.md repeats them for readers of summary.json):

* An *attempt* is a row whose outcome is ``reply``, ``timeout``,
  ``unreachable``, ``error`` or ``unresolved``. ``duplicate`` and ``late``
  rows are extra replies, not attempts: they are counted and otherwise ignored
  (a late reply does not undo its timeout).
* Attempts are ordered by send time: ``send_mono_ns`` when every attempt of the
  target has one, else ``send_utc_ns`` (logs imported from other tools), ties
  broken by ``n``. ``seq`` is never used: it wraps at 65536.
* An attempt is *lost* when its outcome is ``timeout``, ``unreachable`` or
  ``error``. ``unresolved`` attempts (the run stopped before their deadline)
  are evidence of nothing: they are left out before outages are found, so they
  neither split an outage nor close one. An outage that runs into the
  unresolved tail of a run is therefore ``open_end``.
* An *outage* is a maximal run of consecutive lost attempts. Its bounds:
  ``lower`` = first lost send -> last lost send (0 for a single lost probe);
  ``upper`` = send of the last reply before -> send of the first reply after,
  None when the outage touches the start (``open_start``) or the end
  (``open_end``) of the target's attempts; ``estimate`` = lost x the achieved
  median interval (the requested interval when fewer than two attempts exist).
* The *blackout* is the longest outage over all targets, ranked by lower bound
  (the duration the evidence guarantees, comparable between targets probed at
  different rates), then by lost count, then by upper bound (unknown last),
  then earliest start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from migration_blackout.analysis.rundata import ICMP_OUTCOME_DTYPE
from migration_blackout.runformat import (
    DUPLICATE,
    ERROR,
    ICMP_ATTEMPT_OUTCOMES,
    LATE,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
    UNRESOLVED,
    RunFormatError,
    utc_iso,
)

# Codes of ICMP_OUTCOME_DTYPE's categories: attempts first, then the extra rows.
_CODE = {name: code for code, name in enumerate(ICMP_OUTCOME_DTYPE.categories)}
_REPLY, _TIMEOUT, _UNREACHABLE, _ERROR = (_CODE[n] for n in (REPLY, TIMEOUT, UNREACHABLE, ERROR))
_UNRESOLVED, _DUPLICATE, _LATE = (_CODE[n] for n in (UNRESOLVED, DUPLICATE, LATE))
_CODE_COUNT = len(_CODE)
_FIRST_EXTRA_CODE = len(ICMP_ATTEMPT_OUTCOMES)  # codes at or above it are not attempts

_NS_PER_MS = 1_000_000

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_Item = TypeVar("_Item", bound=np.generic)


def _iso_or_none(utc_ns: int | None) -> str | None:
    return None if utc_ns is None else utc_iso(utc_ns)


@dataclass(frozen=True)
class Outage:
    """A maximal run of consecutive lost attempts to one target.

    Durations are in milliseconds on the target's send clock (``send_clock`` of
    its summary). ``*_mono_ns`` stamps are CLOCK_MONOTONIC of the probing host
    (None for logs without one), ``*_utc_ns`` ns since the Unix epoch; "last
    reply before" / "first reply after" are the replies that bound the upper
    bound (None when the outage is open on that side).
    """

    target: str
    lost: int
    timeouts: int
    unreachable: int
    errors: int
    lower_ms: float
    upper_ms: float | None
    estimate_ms: float | None
    open_start: bool
    open_end: bool
    first_lost_n: int
    last_lost_n: int
    first_lost_send_mono_ns: int | None
    last_lost_send_mono_ns: int | None
    last_reply_before_send_mono_ns: int | None
    first_reply_after_send_mono_ns: int | None
    first_lost_send_utc_ns: int | None
    last_lost_send_utc_ns: int | None
    last_reply_before_send_utc_ns: int | None
    first_reply_after_send_utc_ns: int | None

    @property
    def start_utc(self) -> str | None:
        """Send time of the first lost attempt (ISO 8601 UTC)."""
        return _iso_or_none(self.first_lost_send_utc_ns)

    @property
    def end_utc(self) -> str | None:
        """Send time of the last lost attempt (ISO 8601 UTC)."""
        return _iso_or_none(self.last_lost_send_utc_ns)

    @property
    def upper_start_utc(self) -> str | None:
        """Send time of the last reply before the outage (ISO 8601 UTC)."""
        return _iso_or_none(self.last_reply_before_send_utc_ns)

    @property
    def upper_end_utc(self) -> str | None:
        """Send time of the first reply after the outage (ISO 8601 UTC)."""
        return _iso_or_none(self.first_reply_after_send_utc_ns)


@dataclass(frozen=True)
class TargetIcmpSummary:
    """Counts, send-interval statistics and outages of one target.

    ``sent`` counts attempts (replies + timeouts + unreachable + errors +
    unresolved); duplicates and late replies are extra rows counted apart.
    Interval statistics are over consecutive attempts in send order:
    ``achieved_median_interval_ms`` the median difference,
    ``achieved_mean_interval_ms`` (last send - first send) / (sent - 1),
    ``jitter_p99_ms`` the 99th percentile of |difference - median difference|,
    ``achieved_rate_ratio`` requested interval / achieved mean interval (1.0
    when the prober kept its schedule, 0.9 when it sent 10% slow).
    """

    target: str
    send_clock: str | None  # "mono", "utc", or None with no attempts
    sent: int
    replies: int
    timeouts: int
    unreachable: int
    errors: int
    unresolved: int
    duplicates: int
    late: int
    requested_interval_ms: float | None
    achieved_median_interval_ms: float | None
    achieved_mean_interval_ms: float | None
    jitter_p99_ms: float | None
    achieved_rate_ratio: float | None
    first_send_utc_ns: int | None
    last_send_utc_ns: int | None
    outages: tuple[Outage, ...]


@dataclass(frozen=True)
class BlackoutWindow:
    """The blackout: the longest outage over all targets, with where it came from.

    ``start``/``end`` are the send times (UTC ns) of the first and last lost
    probe, so ``end - start`` is the lower bound; ``upper_ms`` spans the
    replies around it. ``*_outside`` count the source target's failed attempts
    that are not part of the blackout.
    """

    start_utc_ns: int | None
    end_utc_ns: int | None
    lower_ms: float
    upper_ms: float | None
    source: str  # "icmp:<target>"
    outage: Outage
    timeouts_outside: int
    unreachable_outside: int
    errors_outside: int

    @property
    def target(self) -> str:
        return self.outage.target


@dataclass(frozen=True)
class IcmpAnalysis:
    targets: tuple[TargetIcmpSummary, ...]
    blackout: BlackoutWindow | None


def _nullable_ns(column: pd.Series) -> tuple[Int64Array, BoolArray | None]:
    """Values (0 where missing) and a mask of missing values, None when none is missing.

    Never goes through float64. A plain int64 column is used without a copy.
    """
    if column.dtype == np.int64:
        return column.to_numpy(), None
    missing = column.isna().to_numpy(dtype=bool)
    values = column.to_numpy(dtype=np.int64, na_value=0)
    return values, missing if missing.any() else None


def _outcome_codes(column: pd.Series) -> npt.NDArray[np.int8]:
    """Codes into ``ICMP_OUTCOME_DTYPE``'s categories; unknown or missing outcomes are refused."""
    categories = pd.Index(ICMP_OUTCOME_DTYPE.categories)
    if isinstance(column.dtype, pd.CategoricalDtype) and column.cat.categories.equals(categories):
        codes = column.cat.codes.to_numpy()
    else:
        codes = categories.get_indexer(column)
    if (codes < 0).any():
        bad = sorted({str(v) for v in column[codes < 0]})
        raise RunFormatError(f"unknown icmp outcomes {bad}; known: {list(categories)}")
    return codes.astype(np.int8, copy=False)


@dataclass(frozen=True, eq=False)
class _Records:
    """Record columns as numpy arrays, all rows of all targets in file order.

    ``*_missing`` marks rows without that stamp; None when no row lacks it.
    """

    n: Int64Array
    outcome: npt.NDArray[np.int8]
    mono: Int64Array
    mono_missing: BoolArray | None
    utc: Int64Array
    utc_missing: BoolArray | None

    def mono_at(self, row: int) -> int | None:
        missing = self.mono_missing is not None and self.mono_missing[row]
        return None if missing else int(self.mono[row])

    def utc_at(self, row: int) -> int | None:
        missing = self.utc_missing is not None and self.utc_missing[row]
        return None if missing else int(self.utc[row])


def analyse_icmp(
    records: pd.DataFrame,
    *,
    requested_interval_s: float | None = None,
    targets: Sequence[str] = (),
) -> IcmpAnalysis:
    """Per-target summaries and the blackout from ICMP records.

    ``records`` needs the columns ``target, n, outcome, send_mono_ns,
    send_utc_ns`` (``ICMP_ANALYSIS_COLUMNS``); rows may be in any order.
    ``requested_interval_s`` is the interval the prober was asked for.
    ``targets`` lists targets to report even without rows (e.g. from the file
    header); they come first, in that order, then the others sorted by name.
    """
    target_column = records["target"].astype("category")
    names = [str(name) for name in target_column.cat.categories]
    target_codes = target_column.cat.codes.to_numpy()
    if (target_codes < 0).any():
        raise RunFormatError(f"{int((target_codes < 0).sum())} icmp records have no target")
    mono, mono_missing = _nullable_ns(records["send_mono_ns"])
    utc, utc_missing = _nullable_ns(records["send_utc_ns"])
    columns = _Records(
        n=records["n"].to_numpy(dtype=np.int64),
        outcome=_outcome_codes(records["outcome"]),
        mono=mono,
        mono_missing=mono_missing,
        utc=utc,
        utc_missing=utc_missing,
    )
    requested_ms = None if requested_interval_s is None else requested_interval_s * 1000.0

    # Row indices of each target (one stable sort on small integer codes);
    # with a single target every row is its own and no index is built.
    rows_of: dict[str, npt.NDArray[np.intp] | None]
    if len(names) == 1:
        rows_of = {names[0]: None}
    else:
        by_target = np.argsort(target_codes, kind="stable")
        bounds = np.searchsorted(target_codes[by_target], np.arange(len(names) + 1))
        rows_of = {name: by_target[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}

    no_rows = np.zeros(0, dtype=np.intp)
    summaries = [
        _summarise_target(name, columns, rows_of.get(name, no_rows), requested_ms)
        for name in list(dict.fromkeys(targets)) + sorted(set(names) - set(targets))
    ]
    return IcmpAnalysis(targets=tuple(summaries), blackout=select_blackout(summaries))


def _summarise_target(
    target: str,
    records: _Records,
    rows: npt.NDArray[np.intp] | None,
    requested_ms: float | None,
) -> TargetIcmpSummary:
    """``rows``: the target's row indices into ``records``, None for all rows."""
    outcome = records.outcome if rows is None else records.outcome[rows]
    counts = np.bincount(outcome, minlength=_CODE_COUNT)
    if counts[_DUPLICATE] or counts[_LATE] or rows is None:
        attempt = outcome < _FIRST_EXTRA_CODE
        if rows is not None:
            rows = rows[attempt]
        elif not attempt.all():
            rows = np.flatnonzero(attempt)

    def take(values: npt.NDArray[_Item]) -> npt.NDArray[_Item]:
        return values if rows is None else values[rows]

    def count_missing(missing: BoolArray | None) -> int:
        return 0 if missing is None else int(take(missing).sum())

    send_clock: str | None
    if count_missing(records.mono_missing) == 0:
        clock, send_clock = records.mono, "mono"
    elif count_missing(records.utc_missing) == 0:
        clock, send_clock = records.utc, "utc"
    else:
        raise RunFormatError(
            f"target {target}: {count_missing(records.mono_missing)} attempts lack "
            f"send_mono_ns and {count_missing(records.utc_missing)} lack send_utc_ns; "
            "the analysis needs one clock that every attempt of a target has"
        )
    send = take(clock)
    sent = len(send)
    if sent == 0:
        send_clock = None

    # Send order, ties broken by n (imported logs may stamp whole seconds). The
    # timeline's rows are in send order already: then nothing is sorted or copied.
    step = np.diff(send)
    order: npt.NDArray[np.intp] | None = None
    if (step < 0).any():
        order = np.argsort(send, kind="stable")
        send = send[order]
        step = np.diff(send)
    if (step == 0).any():
        order = np.lexsort((take(records.n), take(clock)))
        send = take(clock)[order]
        step = np.diff(send)
    median_ms = mean_ms = jitter_ms = rate_ratio = None
    if sent > 1:
        mean_ms = float(send[-1] - send[0]) / (sent - 1) / _NS_PER_MS
        # Median and p99 in place on arrays this function owns (no hidden copies of
        # 3.6 M values); the order of `step` does not matter after this point.
        middle = (len(step) - 1) // 2
        if len(step) % 2:
            step.partition(middle)
            median_ns = float(step[middle])
        else:
            step.partition([middle, middle + 1])
            median_ns = (float(step[middle]) + float(step[middle + 1])) / 2
        median_ms = median_ns / _NS_PER_MS
        if median_ns.is_integer():
            # In place: the intervals are not needed after this (3.6 M of them: 29 MB).
            deviation = np.subtract(step, int(median_ns), out=step)
        else:
            deviation = step - median_ns
        np.abs(deviation, out=deviation)
        jitter_ms = float(np.percentile(deviation, 99, overwrite_input=True)) / _NS_PER_MS
        del deviation
        if requested_ms is not None and mean_ms > 0:
            rate_ratio = requested_ms / mean_ms
    interval_ms = median_ms if median_ms is not None else requested_ms
    del step  # 3.6 M intervals: gone before the row index is made

    # Row index of each attempt in send order.
    if order is None:
        index = np.arange(sent) if rows is None else rows
        n = records.n if rows is None else records.n[index]
    else:
        index = order if rows is None else rows[order]
        n = records.n[index]
    if sent > 1 and not (n[1:] > n[:-1]).all() and len(np.unique(n)) < sent:
        raise RunFormatError(f"target {target}: the attempt counter n repeats")

    return TargetIcmpSummary(
        target=target,
        send_clock=send_clock,
        sent=sent,
        replies=int(counts[_REPLY]),
        timeouts=int(counts[_TIMEOUT]),
        unreachable=int(counts[_UNREACHABLE]),
        errors=int(counts[_ERROR]),
        unresolved=int(counts[_UNRESOLVED]),
        duplicates=int(counts[_DUPLICATE]),
        late=int(counts[_LATE]),
        requested_interval_ms=requested_ms,
        achieved_median_interval_ms=median_ms,
        achieved_mean_interval_ms=mean_ms,
        jitter_p99_ms=jitter_ms,
        achieved_rate_ratio=rate_ratio,
        first_send_utc_ns=records.utc_at(int(index[0])) if sent else None,
        last_send_utc_ns=records.utc_at(int(index[-1])) if sent else None,
        outages=_find_outages(target, records, index, send, interval_ms),
    )


def _find_outages(
    target: str,
    records: _Records,
    index: npt.NDArray[np.intp],
    send: Int64Array,
    interval_ms: float | None,
) -> tuple[Outage, ...]:
    """Maximal runs of lost attempts among the known (not unresolved) attempts.

    ``index`` holds the row of each attempt of ``target`` in send order and
    ``send`` its send time on the target's clock.
    """
    outcome = records.outcome[index]
    known = outcome != _UNRESOLVED
    if not known.all():
        index, send, outcome = index[known], send[known], outcome[known]
    lost = outcome != _REPLY
    edges = np.diff(lost.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1  # inclusive
    lower_ns = send[ends] - send[starts]
    last = len(send) - 1

    outages = []
    for first_i, last_i, lower in zip(
        starts.tolist(), ends.tolist(), lower_ns.tolist(), strict=True
    ):
        open_start, open_end = first_i == 0, last_i == last
        first_row, last_row = int(index[first_i]), int(index[last_i])
        before = None if open_start else int(index[first_i - 1])
        after = None if open_end else int(index[last_i + 1])
        counts = np.bincount(outcome[first_i : last_i + 1], minlength=_CODE_COUNT)
        count = last_i - first_i + 1
        upper_ms = None
        if not (open_start or open_end):
            upper_ms = int(send[last_i + 1] - send[first_i - 1]) / _NS_PER_MS
        outages.append(
            Outage(
                target=target,
                lost=count,
                timeouts=int(counts[_TIMEOUT]),
                unreachable=int(counts[_UNREACHABLE]),
                errors=int(counts[_ERROR]),
                lower_ms=lower / _NS_PER_MS,
                upper_ms=upper_ms,
                estimate_ms=None if interval_ms is None else count * interval_ms,
                open_start=open_start,
                open_end=open_end,
                first_lost_n=int(records.n[first_row]),
                last_lost_n=int(records.n[last_row]),
                first_lost_send_mono_ns=records.mono_at(first_row),
                last_lost_send_mono_ns=records.mono_at(last_row),
                last_reply_before_send_mono_ns=None if before is None else records.mono_at(before),
                first_reply_after_send_mono_ns=None if after is None else records.mono_at(after),
                first_lost_send_utc_ns=records.utc_at(first_row),
                last_lost_send_utc_ns=records.utc_at(last_row),
                last_reply_before_send_utc_ns=None if before is None else records.utc_at(before),
                first_reply_after_send_utc_ns=None if after is None else records.utc_at(after),
            )
        )
    return tuple(outages)


def _blackout_rank(outage: Outage) -> tuple[float, int, float, int]:
    upper = outage.upper_ms if outage.upper_ms is not None else -1.0
    start = outage.first_lost_send_utc_ns
    return (outage.lower_ms, outage.lost, upper, -start if start is not None else 0)


def select_blackout(summaries: Iterable[TargetIcmpSummary]) -> BlackoutWindow | None:
    """The longest outage over all targets (ranking in the module docstring), or None."""
    best: tuple[TargetIcmpSummary, Outage] | None = None
    for summary in summaries:
        for outage in summary.outages:
            if best is None or _blackout_rank(outage) > _blackout_rank(best[1]):
                best = (summary, outage)
    if best is None:
        return None
    summary, outage = best
    return BlackoutWindow(
        start_utc_ns=outage.first_lost_send_utc_ns,
        end_utc_ns=outage.last_lost_send_utc_ns,
        lower_ms=outage.lower_ms,
        upper_ms=outage.upper_ms,
        source=f"icmp:{summary.target}",
        outage=outage,
        timeouts_outside=summary.timeouts - outage.timeouts,
        unreachable_outside=summary.unreachable - outage.unreachable,
        errors_outside=summary.errors - outage.errors,
    )
