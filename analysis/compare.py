"""Is a set of candidate runs' blackout longer than a baseline set's, beyond run-to-run noise?

Blackouts vary from run to run (how much memory was dirtied in the last
pre-copy pass, the hosts' load, the probe phase), so one candidate run longer
than one baseline run says nothing. The verdict needs two things at once:

* **evidence**: a one-sided Mann-Whitney U test that the candidate blackouts
  are stochastically larger than the baseline's, at ``alpha`` (0.05). It uses
  ranks only, so it assumes no distribution, and it is unaffected by one wild
  run or by a blackout without an upper bound (ranked above every other);
* **practical size**: the candidate median is more than ``max_regression_pct``
  (10 %) above the baseline median. With many runs a 1 % change becomes
  significant; that is not a regression anyone should be paged for.

With fewer than ``min_runs`` (3) runs on either side, or when no outcome at
these sample sizes could reach ``alpha`` (the smallest one-sided p is
``1 / comb(m + n, m)``: 1/20 = 0.05 for 3 vs 3, so three candidate runs all
above three baseline runs are just enough at 0.05), the verdict is
"insufficient data" and claims nothing either way.

The p-value is exact (the permutation distribution of U, conditional on
ties) when ``n_candidate * n_baseline <= EXACT_MAX_PAIRS``, else the normal
approximation with tie correction and continuity correction. Ties are common
here: the upper bound of a blackout is a whole number of probe intervals when
the prober keeps its schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from migration_blackout.runformat import DEFAULT_MAX_REGRESSION_PCT

ALPHA = 0.05
MIN_RUNS = 3
# The exact distribution costs about n_candidate x (n_candidate + n_baseline) array
# operations of length 2 x n_candidate x n_baseline: ~0.1 s at 50 x 50. Beyond that
# the normal approximation is within ~1e-3 of it.
EXACT_MAX_PAIRS = 2500


@dataclass(frozen=True)
class MannWhitneyU:
    """One-sided Mann-Whitney U test of "candidate stochastically larger than baseline".

    ``u`` is the candidate's statistic: the number of (candidate, baseline)
    pairs in which the candidate is larger, ties counting one half; it runs
    from 0 to ``n_candidate * n_baseline``. ``p_value`` is P(U >= u) when both
    samples come from one distribution. ``method`` is ``"exact"`` or
    ``"normal"``. ``min_p_value`` is the smallest p-value these sample sizes
    can give, ``1 / comb(m + n, m)`` (every candidate above every baseline
    value, no ties): above ``alpha``, no result could be significant.
    """

    u: float
    n_candidate: int
    n_baseline: int
    p_value: float
    min_p_value: float
    method: str


def mann_whitney_u_greater(
    candidate: Sequence[float], baseline: Sequence[float], *, exact_max_pairs: int = EXACT_MAX_PAIRS
) -> MannWhitneyU:
    """The one-sided test; values may be ``inf`` (ranked above all others), not NaN."""
    x = np.asarray(candidate, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("the Mann-Whitney U test needs at least one value on each side")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("the Mann-Whitney U test cannot rank NaN")
    greater = int((x[:, None] > y[None, :]).sum())
    ties = int((x[:, None] == y[None, :]).sum())
    u_twice = 2 * greater + ties
    m, n = x.size, y.size
    _, group_sizes = np.unique(np.concatenate([x, y]), return_counts=True)
    if m * n <= exact_max_pairs:
        p_value = _exact_tail(m, n, [int(t) for t in group_sizes], u_twice)
        method = "exact"
    else:
        p_value = _normal_tail(u_twice, m, n, group_sizes)
        method = "normal"
    return MannWhitneyU(
        u=u_twice / 2,
        n_candidate=m,
        n_baseline=n,
        p_value=p_value,
        min_p_value=1.0 / math.comb(m + n, m),
        method=method,
    )


def _exact_tail(m: int, n: int, group_sizes: list[int], u_twice: int) -> float:
    """P(2U >= u_twice) under the exact null distribution, given the tie groups (ascending).

    Under the null hypothesis every choice of which ``m`` of the ``m + n``
    pooled values are the candidate's is equally likely. Walking the tie
    groups from the smallest value up, with ``c`` candidates placed so far
    among ``before`` values, putting ``k`` of a group of ``t`` to the
    candidate adds ``k x 2 x (before - c)`` to 2U (the baseline values below)
    plus ``k x (t - k)`` (half a pair for each tie with a baseline value), in
    ``comb(t, k)`` ways. Counts are float64: all additions of positive terms,
    and comb(200, 100) ~ 9e58 is far inside its range.
    """
    width = 2 * m * n + 1
    counts = np.zeros((m + 1, width))
    counts[0, 0] = 1.0
    before = 0
    for t in group_sizes:
        new = np.zeros_like(counts)
        for c in range(min(m, before) + 1):
            row = counts[c]
            baseline_below = before - c
            if baseline_below > n or not row.any():
                continue
            for k in range(min(t, m - c) + 1):
                if t - k > n - baseline_below:
                    continue  # more baseline values than there are
                shift = k * 2 * baseline_below + k * (t - k)
                new[c + k, shift:] += math.comb(t, k) * row[: width - shift]
        counts = new
        before += t
    distribution = counts[m]
    total = float(distribution.sum())  # comb(m + n, m)
    return min(1.0, float(distribution[u_twice:].sum()) / total)


def _normal_tail(u_twice: int, m: int, n: int, group_sizes: np.ndarray) -> float:
    """P(U >= u) by the normal approximation, with tie and continuity correction."""
    total = m + n
    sizes = group_sizes.astype(float)
    tie_term = float((sizes**3 - sizes).sum()) / (total * (total - 1)) if total > 1 else 0.0
    variance = m * n / 12.0 * ((total + 1) - tie_term)
    if variance <= 0:
        return 1.0  # every value tied: U is its mean and nothing is larger
    z = (u_twice / 2 - m * n / 2 - 0.5) / math.sqrt(variance)
    return min(1.0, 0.5 * math.erfc(z / math.sqrt(2)))


class Verdict(StrEnum):
    PASS = "pass"
    REGRESSION = "regression"
    INSUFFICIENT_DATA = "insufficient data"


@dataclass(frozen=True)
class RegressionVerdict:
    """The comparison of two samples of blackouts (milliseconds).

    ``median_increase_pct`` is ``(candidate median / baseline median - 1) x
    100``; ``inf`` when the baseline median is 0 and the candidate's is not,
    or the candidate median is unbounded. ``test`` is None with insufficient
    data. ``reason`` says why, with the numbers.
    """

    verdict: Verdict
    n_candidate: int
    n_baseline: int
    candidate_median_ms: float | None
    baseline_median_ms: float | None
    median_increase_pct: float | None
    test: MannWhitneyU | None
    alpha: float
    max_regression_pct: float
    min_runs: int
    reason: str


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else None


def _increase_pct(candidate: float, baseline: float) -> float:
    if math.isinf(baseline):  # half the baseline runs or more have no upper bound
        return 0.0 if math.isinf(candidate) else -100.0
    if baseline == 0:
        return 0.0 if candidate == 0 else math.inf
    return (candidate / baseline - 1.0) * 100.0


def format_ms(value: float | None) -> str:
    """Milliseconds for people: one decimal; "open" for a value without an upper bound."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "open"
    return f"{value:.1f}"


def format_pct(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf %"
    return f"{value:+.1f} %"


def format_p(value: float) -> str:
    return f"{value:.3g}"


def compare_blackouts(
    candidate_ms: Sequence[float],
    baseline_ms: Sequence[float],
    *,
    max_regression_pct: float = DEFAULT_MAX_REGRESSION_PCT,
    alpha: float = ALPHA,
    min_runs: int = MIN_RUNS,
) -> RegressionVerdict:
    """Regression when U's one-sided p <= ``alpha`` and the median rose > ``max_regression_pct``.

    Values are blackout durations in ms, one per run; ``inf`` marks a
    blackout without an upper bound (it ranks above every finite value).
    """
    m, n = len(candidate_ms), len(baseline_ms)
    candidate_median, baseline_median = _median(candidate_ms), _median(baseline_ms)
    increase = (
        None
        if candidate_median is None or baseline_median is None
        else _increase_pct(candidate_median, baseline_median)
    )
    sizes = f"{m} candidate and {n} baseline runs"
    test: MannWhitneyU | None = None
    if n == 0:
        verdict = Verdict.INSUFFICIENT_DATA
        reason = f"no baseline: {sizes}; nothing to compare with"
    elif m < min_runs or n < min_runs:
        verdict = Verdict.INSUFFICIENT_DATA
        reason = f"insufficient data: {sizes}; at least {min_runs} on each side are needed"
    else:
        assert increase is not None
        test = mann_whitney_u_greater(candidate_ms, baseline_ms)
        medians = (
            f"median {format_ms(candidate_median)} ms vs baseline {format_ms(baseline_median)} ms "
            f"({format_pct(increase)}, limit +{max_regression_pct:g} %)"
        )
        statistics = (
            f"Mann-Whitney U = {test.u:g} of {m * n}, {sizes}, "
            f"one-sided p = {format_p(test.p_value)} ({test.method})"
        )
        if test.min_p_value > alpha:
            verdict = Verdict.INSUFFICIENT_DATA
            reason = (
                f"insufficient data: with {sizes} the smallest attainable p is "
                f"{format_p(test.min_p_value)} > alpha {alpha:g}; {medians}"
            )
        elif test.p_value <= alpha and increase > max_regression_pct:
            verdict = Verdict.REGRESSION
            reason = f"regression: {medians}; {statistics} <= alpha {alpha:g}"
        elif test.p_value <= alpha:
            verdict = Verdict.PASS
            reason = (
                f"no regression: larger than the baseline ({statistics} <= alpha {alpha:g}) "
                f"but within the limit: {medians}"
            )
        else:
            verdict = Verdict.PASS
            reason = (
                f"no regression: not significantly larger ({statistics} > alpha {alpha:g}); "
                f"{medians}"
            )
    return RegressionVerdict(
        verdict=verdict,
        n_candidate=m,
        n_baseline=n,
        candidate_median_ms=candidate_median,
        baseline_median_ms=baseline_median,
        median_increase_pct=increase,
        test=test,
        alpha=alpha,
        max_regression_pct=max_regression_pct,
        min_runs=min_runs,
        reason=reason,
    )
