"""The drift statistics against hand computations and an independent implementation (scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from featurepipe.monitoring.stats import (
    EPSILON,
    bin_counts,
    js_distance,
    kolmogorov_sf,
    ks_2samp,
    proportion_pvalue,
    psi,
    quantile_edges,
)


def test_psi_hand_computed_on_a_small_table() -> None:
    """Four bins, the last one empty in the baseline (it counts as EPSILON = 1e-4):

    bin  baseline  current  (c - b) * ln(c / b)
    1    0.5       0.4      -0.1 * ln(0.8)        = 0.0223144
    2    0.3       0.4       0.1 * ln(4/3)        = 0.0287682
    3    0.2       0.1      -0.1 * ln(0.5)        = 0.0693147
    4    0 (1e-4)  0.1       0.0999 * ln(1000)    = 0.6900848
                                           PSI   = 0.8104821
    """
    assert EPSILON == 1e-4
    assert psi([0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.1, 0.1]) == pytest.approx(0.8104821, abs=1e-7)
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0  # an empty bin on both sides adds 0


def test_psi_from_counts_on_baseline_bins() -> None:
    """Bins right-closed at the edges, NaN in a bin of its own: the counts of a small table."""
    baseline = np.array([1, 2, 2, 3, 3, 3, 4, 4, 4, 4], dtype=np.float64)
    edges = quantile_edges(baseline, bins=4)  # 25/50/75% lower quantiles: 2, 3, 4 -> deduped
    assert edges == [2.0, 3.0, 4.0]
    assert bin_counts(baseline, edges).tolist() == [3, 3, 4, 0, 0]  # <=2, (2,3], (3,4], >4, NaN
    current = np.array([1, 2, 3, 4, 5, 5, 5, np.nan, 4, 4], dtype=np.float64)
    assert bin_counts(current, edges).tolist() == [2, 1, 3, 3, 1]
    b = [0.3, 0.3, 0.4, 0.0, 0.0]
    c = [0.2, 0.1, 0.3, 0.3, 0.1]
    by_hand = (
        (0.2 - 0.3) * math.log(0.2 / 0.3)
        + (0.1 - 0.3) * math.log(0.1 / 0.3)
        + (0.3 - 0.4) * math.log(0.3 / 0.4)
        + (0.3 - 1e-4) * math.log(0.3 / 1e-4)
        + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    )
    assert psi(b, c) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize(
    ("n1", "n2", "ties"),
    [(5, 7, False), (20, 20, True), (30, 45, True), (100, 80, False), (300, 400, True),
     (999, 1000, False), (64, 15_000, True)],
)  # fmt: skip
def test_ks_exact_matches_scipy(n1: int, n2: int, ties: bool) -> None:
    rng = np.random.default_rng(n1 * 31 + n2)
    a = rng.normal(0.0, 1.0, n1)
    b = rng.normal(0.15, 1.1, n2)
    if ties:  # few distinct values: the statistic must count ties as scipy does
        a, b = np.round(a, 1), np.round(b, 1)
    mine = ks_2samp(a, b)
    ref = sps.ks_2samp(a, b, method="exact")
    assert mine.method == "exact"
    assert mine.statistic == pytest.approx(float(ref.statistic), abs=1e-12)
    assert mine.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("n1", "n2", "shift", "ties"),
    [(2_000, 30_000, 0.05, False), (2_000, 5_000, 0.0, True), (5_000, 20_000, 0.02, False),
     (1_500, 40_000, 0.1, True), (3_000, 3_000, 0.06, False)],
)  # fmt: skip
def test_ks_asymptotic_close_to_scipy(n1: int, n2: int, shift: float, ties: bool) -> None:
    """Large samples: the Kolmogorov distribution with Stephens' correction; scipy's asymptotic
    method uses another approximation (the one-sample distribution at n = n1 n2/(n1 + n2)), so
    the p-values agree closely, not exactly; the statistic agrees exactly."""
    rng = np.random.default_rng(n1 + n2)
    a = rng.lognormal(3.0, 1.0, n1)
    b = rng.lognormal(3.0 + shift, 1.0, n2)
    if ties:
        a, b = np.round(a), np.round(b)
    mine = ks_2samp(a, b)
    ref = sps.ks_2samp(a, b, method="asymp")
    assert mine.method == "asymptotic"
    assert mine.statistic == pytest.approx(float(ref.statistic), abs=1e-12)
    assert mine.pvalue == pytest.approx(float(ref.pvalue), abs=0.01)
    if ref.pvalue > 1e-12:
        assert math.log(mine.pvalue) == pytest.approx(math.log(float(ref.pvalue)), rel=0.05)


def test_kolmogorov_distribution_matches_scipy() -> None:
    for lam in [0.2, 0.5, 0.8, 1.0, 1.17, 1.18, 1.36, 1.63, 2.0, 3.0]:
        assert kolmogorov_sf(lam) == pytest.approx(float(sps.kstwobign.sf(lam)), rel=1e-9)


def test_js_distance_hand_computed() -> None:
    """p = (0.5, 0.5), q = (1, 0): m = (0.75, 0.25);
    KL(p||m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = 0.2075187;
    KL(q||m) = log2(1/0.75) = 0.4150375; JS divergence = 0.3112781; distance = 0.5579230."""
    assert js_distance([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5579230, abs=1e-7)
    assert js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert js_distance([3, 1], [3, 1]) == 0.0
    rng = np.random.default_rng(3)
    for _ in range(5):
        p, q = rng.random(6), rng.random(6)
        p[2] = 0.0
        assert js_distance(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), rel=1e-9)


def test_two_proportion_pvalue_matches_chi_square() -> None:
    """The pooled z-test is the 2x2 chi-square test without continuity correction."""
    for k1, n1, k2, n2 in [(30, 1000, 55, 1000), (537, 10_000, 394, 5_000), (5, 200, 6, 300)]:
        table = [[k1, n1 - k1], [k2, n2 - k2]]
        ref = sps.chi2_contingency(table, correction=False).pvalue
        assert proportion_pvalue(k1, n1, k2, n2) == pytest.approx(float(ref), rel=1e-9)
    assert proportion_pvalue(0, 100, 0, 50) == 1.0
