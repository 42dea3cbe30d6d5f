"""The statistics behind drift: PSI over quantile bins, two-sample Kolmogorov-Smirnov, chi-square.

Plain numpy and `math`; p-values come from the asymptotic distributions (Kolmogorov's for KS,
the regularized incomplete gamma function for chi-square), good for the window sizes the monitor
uses (hundreds of rows and more).
"""

from __future__ import annotations

import math

import numpy as np

PSI_EPSILON = 1e-4
DEFAULT_BINS = 10


def quantile_edges(reference: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The inner bin edges that split `reference` into `bins` equal shares (fewer when values repeat)."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    cuts = np.quantile(np.asarray(reference, dtype=np.float64), np.arange(1, bins) / bins)
    return np.unique(cuts)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of `values` in each of the len(edges) + 1 bins; a value equal to an edge goes right."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two share vectors; empty bins count as `epsilon`."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(sorted_a: np.ndarray, sorted_b: np.ndarray) -> float:
    """The largest distance between the empirical CDFs of two sorted samples."""
    if len(sorted_a) == 0 or len(sorted_b) == 0:
        raise ValueError("both samples need at least one value")
    points = np.concatenate([sorted_a, sorted_b])
    cdf_a = np.searchsorted(sorted_a, points, side="right") / len(sorted_a)
    cdf_b = np.searchsorted(sorted_b, points, side="right") / len(sorted_b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for Kolmogorov's distribution K (the limit of sqrt(n) * D_n)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        # the theta-function form converges fast for small lam, where the alternating series does not
        base = math.exp(-(math.pi**2) / (8 * lam * lam))
        total = sum(base ** ((2 * j - 1) ** 2) for j in range(1, 8))
        return max(0.0, 1.0 - math.sqrt(2 * math.pi) / lam * total)
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * lam * lam)
        total += term if j % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic `d` for sample sizes n and m.

    Uses Stephens' small-sample correction of the effective size (as Numerical Recipes' kstwo).
    """
    if n <= 0 or m <= 0:
        raise ValueError("sample sizes must be positive")
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def ks_two_sample(sorted_a: np.ndarray, sorted_b: np.ndarray) -> tuple[float, float]:
    """(D, p-value) of the two-sample KS test on two sorted samples."""
    d = ks_statistic(sorted_a, sorted_b)
    return d, ks_p_value(d, len(sorted_a), len(sorted_b))


def _gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series (x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(1000):
        ap += 1
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by Lentz's continued fraction (x >= a + 1)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-square variable X with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError("dof must be at least 1")
    if x <= 0:
        return 1.0
    a, half = dof / 2.0, x / 2.0
    if half < a + 1.0:
        return min(1.0, max(0.0, 1.0 - _gamma_series(a, half)))
    return min(1.0, max(0.0, _gamma_continued_fraction(a, half)))


def chi2_goodness_of_fit(observed: np.ndarray, expected_shares: np.ndarray, floor: float = PSI_EPSILON) -> float:
    """p-value of Pearson's chi-square test of `observed` counts against expected shares.

    A share of zero counts as `floor`, so a category the reference never had makes the test fail
    loudly rather than divide by zero.
    """
    observed = np.asarray(observed, dtype=np.float64)
    n = observed.sum()
    if n <= 0 or len(observed) < 2:
        return 1.0
    shares = np.maximum(np.asarray(expected_shares, dtype=np.float64), floor)
    expected = n * shares / shares.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return chi2_sf(statistic, len(observed) - 1)
