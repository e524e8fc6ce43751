"""The regression statistics: Mann-Whitney U by hand, exact against enumeration, verdicts."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from migration_blackout.analysis.compare import (
    ALPHA,
    Verdict,
    compare_blackouts,
    mann_whitney_u_greater,
)


def test_u_and_exact_p_by_hand() -> None:
    # Candidate 2, 4, 6 against baseline 1, 3: pairs with the candidate larger are
    # 2>1, 4>1, 4>3, 6>1, 6>3, so U = 5 of 3 x 2 = 6. Under the null hypothesis
    # each of the comb(5, 2) = 10 ways to pick which two ranks are the baseline's is
    # equally likely; U counts 0, 1, 2, 2, 3, 3, 4, 4, 5, 6 (baseline ranks {4,5},
    # {3,5}, {2,5}, {3,4}, {1,5}, {2,4}, {1,4}, {2,3}, {1,3}, {1,2}): P(U >= 5) = 2/10.
    test = mann_whitney_u_greater([2, 4, 6], [1, 3])
    assert test.u == 5
    assert (test.n_candidate, test.n_baseline) == (3, 2)
    assert test.method == "exact"
    assert test.p_value == pytest.approx(0.2, abs=1e-12)
    assert test.min_p_value == pytest.approx(1 / 10)


def test_u_and_exact_p_by_hand_with_a_tie() -> None:
    # Candidate 2, 3 against baseline 1, 2: 2>1 (1), 2=2 (1/2), 3>1 (1), 3>2 (1): U = 3.5.
    # The pooled values 1, 2a, 2b, 3 split into a candidate pair in comb(4, 2) = 6 ways:
    # {1,2a} 0.5, {1,2b} 0.5, {1,3} 2, {2a,2b} 2, {2a,3} 3.5, {2b,3} 3.5: P(U >= 3.5) = 2/6.
    test = mann_whitney_u_greater([2, 3], [1, 2])
    assert test.u == 3.5
    assert test.p_value == pytest.approx(1 / 3, abs=1e-12)


def _enumerated_p(candidate: list[float], baseline: list[float]) -> Fraction:
    """P(U >= u) by listing every split of the pooled values (ties kept as values)."""

    def u_of(xs: list[float], ys: list[float]) -> Fraction:
        pairs = [(x, y) for x in xs for y in ys]
        return sum((Fraction(int(x > y)) + Fraction(int(x == y), 2) for x, y in pairs), Fraction(0))

    pooled = candidate + baseline
    observed = u_of(candidate, baseline)
    splits = list(itertools.combinations(range(len(pooled)), len(candidate)))
    hits = 0
    for chosen in splits:
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += u_of(xs, ys) >= observed
    return Fraction(hits, len(splits))


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_equals_enumeration_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    # Whole multiples of a 10 ms interval, as upper bounds are: many ties.
    candidate = [float(v) for v in rng.integers(98, 104, m) * 10]
    baseline = [float(v) for v in rng.integers(97, 103, n) * 10]
    test = mann_whitney_u_greater(candidate, baseline)
    assert test.method == "exact"
    assert test.p_value == pytest.approx(float(_enumerated_p(candidate, baseline)), abs=1e-12)


def test_normal_approximation_by_hand() -> None:
    # Candidate 11..20 against baseline 1..10, no ties: U = 100, mean m n / 2 = 50,
    # variance m n (N + 1) / 12 = 10 x 10 x 21 / 12 = 175; with the continuity
    # correction z = (100 - 50 - 0.5) / sqrt(175) = 3.74185, p = 1 - Phi(z) = 9.1336e-5.
    test = mann_whitney_u_greater(list(range(11, 21)), list(range(1, 11)), exact_max_pairs=0)
    assert test.method == "normal"
    assert test.u == 100
    assert test.p_value == pytest.approx(9.1336e-5, rel=1e-4)
    # The exact value is 1 / comb(20, 10).
    exact = mann_whitney_u_greater(list(range(11, 21)), list(range(1, 11)))
    assert exact.method == "exact"
    assert exact.p_value == pytest.approx(1 / math.comb(20, 10))


def test_normal_approximation_is_close_to_exact_with_ties() -> None:
    rng = np.random.default_rng(7)
    candidate = list(np.round(rng.normal(1010, 30, 40), -1))
    baseline = list(np.round(rng.normal(1000, 30, 40), -1))
    exact = mann_whitney_u_greater(candidate, baseline)
    normal = mann_whitney_u_greater(candidate, baseline, exact_max_pairs=0)
    assert (exact.method, normal.method) == ("exact", "normal")
    assert exact.u == normal.u
    assert normal.p_value == pytest.approx(exact.p_value, abs=0.005)


def test_all_values_tied_gives_p_one() -> None:
    assert mann_whitney_u_greater([5, 5, 5], [5, 5, 5]).p_value == pytest.approx(1.0)
    assert mann_whitney_u_greater([5] * 60, [5] * 60).p_value == 1.0


def test_unbounded_blackout_ranks_above_all() -> None:
    test = mann_whitney_u_greater([math.inf, 2000, 1900], [1000, 1100, 1200])
    assert test.u == 9
    assert test.p_value == pytest.approx(1 / 20)


def test_nan_and_empty_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        mann_whitney_u_greater([1.0, math.nan], [1.0])
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u_greater([], [1.0])


def _runs(mean_ms: float, count: int, seed: int, noise_ms: float = 30.0) -> list[float]:
    return list(np.random.default_rng(seed).normal(mean_ms, noise_ms, count))


BASELINE = _runs(1000, 8, seed=1)


def test_regression_30_percent_slower() -> None:
    result = compare_blackouts(_runs(1300, 8, seed=2), BASELINE)
    assert result.verdict is Verdict.REGRESSION
    assert result.test is not None
    assert result.test.p_value <= ALPHA
    assert result.median_increase_pct == pytest.approx(
        (result.candidate_median_ms / result.baseline_median_ms - 1) * 100  # type: ignore[operator]
    )
    assert result.median_increase_pct > 10  # type: ignore[operator]
    assert "8 candidate and 8 baseline runs" in result.reason
    assert result.reason.startswith("regression: ")


def test_no_regression_within_noise() -> None:
    result = compare_blackouts(_runs(1010, 8, seed=3), BASELINE)
    assert result.verdict is Verdict.PASS
    assert result.reason.startswith("no regression")


def test_significant_but_small_increase_passes() -> None:
    # Every candidate run 5 % above every baseline run: as significant as 8 vs 8 gets,
    # but within the 10 % a user accepts.
    baseline = [1000.0 + i for i in range(8)]
    result = compare_blackouts([v * 1.05 + 20 for v in baseline], baseline)
    assert result.test is not None and result.test.p_value == pytest.approx(1 / math.comb(16, 8))
    assert result.verdict is Verdict.PASS
    assert "within the limit" in result.reason
    assert (
        compare_blackouts([v * 1.05 + 20 for v in baseline], baseline, max_regression_pct=4).verdict
        is Verdict.REGRESSION
    )


def test_two_against_two_is_insufficient_data() -> None:
    result = compare_blackouts(_runs(1300, 2, seed=4), _runs(1000, 2, seed=5))
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert result.test is None
    assert result.reason == (
        "insufficient data: 2 candidate and 2 baseline runs; at least 3 on each side are needed"
    )


def test_three_against_three_is_just_enough() -> None:
    # Smallest attainable one-sided p with 3 and 3 runs: 1 / comb(6, 3) = 0.05 <= alpha.
    result = compare_blackouts([1300.0, 1310.0, 1320.0], [1000.0, 1010.0, 1020.0])
    assert result.verdict is Verdict.REGRESSION
    assert result.test is not None and result.test.p_value == pytest.approx(0.05)
    # At alpha 0.01 no outcome of 3 vs 3 could be significant: claim nothing.
    strict = compare_blackouts([1300.0, 1310.0, 1320.0], [1000.0, 1010.0, 1020.0], alpha=0.01)
    assert strict.verdict is Verdict.INSUFFICIENT_DATA
    assert "smallest attainable p is 0.05 > alpha 0.01" in strict.reason


def test_faster_candidate_is_not_a_regression() -> None:
    result = compare_blackouts(_runs(700, 8, seed=6), BASELINE)
    assert result.verdict is Verdict.PASS
    assert result.median_increase_pct is not None and result.median_increase_pct < 0
