"""The drift statistics, as pure functions over NumPy arrays (docs/monitoring.md states them).

* ``psi``: population stability index of two share vectors over the same bins,
  ``sum_i (c_i - b_i) * ln(c_i / b_i)``, where a share of 0 (an empty bin, in either
  distribution) is replaced by ``EPSILON`` = 1e-4 before the formula (the shares are not
  renormalized afterwards). 0 means identical; 0.1 is usually read as a moderate change and 0.2
  as a significant one.
* ``ks_2samp``: the two-sample Kolmogorov-Smirnov statistic ``D = max_x |F_a(x) - F_b(x)|``
  over the pooled values (empirical CDFs right-continuous, so ties are handled exactly) and
  its two-sided p-value: exact (the share of lattice paths that leave the band ``|i/n_a -
  j/n_b| < D``, Hodges 1958) when ``n_a * n_b <= EXACT_KS_CELLS``, else the Kolmogorov
  distribution with Stephens' small-sample correction, ``Q((sqrt(n) + 0.12 + 0.11 / sqrt(n))
  * D)``, ``n = n_a n_b / (n_a + n_b)``.
* ``js_distance``: the Jensen-Shannon distance in bits, ``sqrt((KL(p || m) + KL(q || m)) / 2)``
  with ``m = (p + q) / 2`` and logarithms in base 2: between 0 (identical) and 1 (disjoint).
* ``proportion_pvalue``: the two-sided p-value of the pooled two-proportion z-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EPSILON = 1e-4  # the share an empty bin counts as in PSI
EXACT_KS_CELLS = 1_000_000  # n_a * n_b up to which the KS p-value is computed exactly

Floats = npt.NDArray[np.float64]


def psi(baseline: Floats | list[float], current: Floats | list[float]) -> float:
    """Population stability index of two share vectors over the same bins (see the module)."""
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if b.shape != c.shape:
        raise ValueError(f"share vectors of different lengths: {b.size} and {c.size}")
    b = np.where(b > 0, b, EPSILON)
    c = np.where(c > 0, c, EPSILON)
    return float(np.sum((c - b) * np.log(c / b)))


def quantile_edges(values: Floats, bins: int = 10) -> list[float]:
    """Interior bin edges at the ``1/bins, ..., (bins-1)/bins`` quantiles of finite ``values``
    (each an observed value: the lower one, no interpolation), duplicates dropped: a feature
    with few distinct values gets fewer, wider bins."""
    x = np.sort(values[np.isfinite(values)])
    if x.size == 0:
        return []
    idx = [max(math.ceil(x.size * i / bins) - 1, 0) for i in range(1, bins)]
    return sorted({float(x[i]) for i in idx})


def bin_counts(values: Floats, edges: list[float]) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the bins ``(-inf, e_0], (e_0, e_1], ..., (e_k, +inf)`` followed
    by the count of NaNs (a last bin of its own): ``len(edges) + 2`` counts."""
    nan = np.isnan(values)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values[~nan], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)
    return np.append(counts, np.int64(nan.sum()))


@dataclass(frozen=True)
class KS:
    statistic: float
    pvalue: float
    method: str  # "exact" or "asymptotic"


def ks_2samp(a: Floats | list[float], b: Floats | list[float]) -> KS:
    """Two-sample Kolmogorov-Smirnov test, two-sided (see the module docstring)."""
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    pooled = np.concatenate([x, y])
    cdf1 = np.searchsorted(x, pooled, side="right") / n1
    cdf2 = np.searchsorted(y, pooled, side="right") / n2
    d = float(np.max(np.abs(cdf1 - cdf2)))
    if n1 * n2 <= EXACT_KS_CELLS:
        return KS(d, _exact_pvalue(n1, n2, d), "exact")
    n = n1 * n2 / (n1 + n2)
    s = math.sqrt(n)
    return KS(d, kolmogorov_sf((s + 0.12 + 0.11 / s) * d), "asymptotic")


def _exact_pvalue(n1: int, n2: int, d: float) -> float:
    """P(D >= d) under the null for sample sizes n1, n2: one minus the share of monotone
    lattice paths from (0, 0) to (n1, n2) that stay strictly inside ``|i/n1 - j/n2| < d``.

    ``q[i, j]`` is the share of the paths to (i, j) that stayed inside; a path reaches (i, j)
    from (i-1, j) for a share i/(i+j) of them, so ``q[i, j] = q[i-1, j] i/(i+j) + q[i, j-1]
    j/(i+j)``, computed one anti-diagonal (i + j = k) at a time. Distances are compared in
    integer units of ``1/lcm(n1, n2)``, where D is exact."""
    lcm = n1 * n2 // math.gcd(n1, n2)
    h = round(d * lcm)
    if h == 0:
        return 1.0
    u1, u2 = lcm // n1, lcm // n2
    prev = np.ones(1)  # diagonal k = 0: the origin
    for k in range(1, n1 + n2 + 1):
        lo, hi = max(0, k - n2), min(k, n1)
        i = np.arange(lo, hi + 1)
        j = k - i
        cur = np.zeros(i.size)
        prev_lo = max(0, k - 1 - n2)
        # from (i-1, j): index (i-1) - prev_lo on the previous diagonal
        has = i >= 1
        src = i - 1 - prev_lo
        ok = has & (src >= 0) & (src < prev.size)
        cur[ok] += prev[src[ok]] * i[ok] / k
        # from (i, j-1): index i - prev_lo
        src = i - prev_lo
        ok = (j >= 1) & (src >= 0) & (src < prev.size)
        cur[ok] += prev[src[ok]] * j[ok] / k
        cur[np.abs(i * u1 - j * u2) >= h] = 0.0
        prev = cur
    return float(min(max(1.0 - prev[0], 0.0), 1.0))


def kolmogorov_sf(lam: float) -> float:
    """``Q(lam) = P(K > lam)`` of the Kolmogorov distribution: ``2 sum_k (-1)^(k-1)
    exp(-2 k^2 lam^2)`` for ``lam >= 1.18``, else one minus the theta-function form of the
    CDF, ``sqrt(2 pi)/lam sum_k exp(-(2k-1)^2 pi^2 / (8 lam^2))`` (both converge fast there)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        k = np.arange(1, 9)
        cdf = (
            math.sqrt(2 * math.pi)
            / lam
            * np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam * lam)))
        )
        return float(min(max(1.0 - cdf, 0.0), 1.0))
    k = np.arange(1, 21)
    q = 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k * k * lam * lam))
    return float(min(max(q, 0.0), 1.0))


def js_distance(p: Floats | list[float], q: Floats | list[float]) -> float:
    """Jensen-Shannon distance in bits of two distributions over the same categories (each
    normalized to sum 1 first; 0 * log 0 = 0)."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"distributions of different lengths: {a.size} and {b.size}")
    if a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("js_distance needs two non-empty distributions")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: Floats) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max((kl(a) + kl(b)) / 2, 0.0))


def proportion_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test of k1/n1 against k2/n2:
    ``z = (k2/n2 - k1/n1) / sqrt(p (1 - p) (1/n1 + 1/n2))``, ``p = (k1 + k2)/(n1 + n2)``,
    ``P = erfc(|z| / sqrt 2)``; 1 when either sample is empty or the pooled share is 0 or 1."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    if p <= 0 or p >= 1:
        return 1.0
    z = (k2 / n2 - k1 / n1) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return math.erfc(abs(z) / math.sqrt(2))
