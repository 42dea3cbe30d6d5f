"""PSI, KS and chi-square against values worked out by hand or taken from published tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gallery_monitor.drift_stats import (
    bin_shares,
    chi2_goodness_of_fit,
    chi2_sf,
    kolmogorov_sf,
    ks_p_value,
    ks_statistic,
    ks_two_sample,
    psi,
    quantile_edges,
)


def test_psi_of_two_share_vectors_matches_the_formula() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.27465, abs=1e-5)
    assert psi([0.1] * 10, [0.1] * 10) == 0.0


def test_psi_counts_an_empty_bin_as_epsilon_instead_of_dividing_by_zero() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0], epsilon=1e-4)
    assert value == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5), rel=1e-12)
    assert math.isfinite(value)


def test_quantile_bins_split_the_reference_into_equal_shares() -> None:
    reference = np.arange(1000, dtype=np.float32)
    edges = quantile_edges(reference, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(bin_shares(reference, edges), np.full(10, 0.1))
    # everything above the top edge lands in the last bin
    np.testing.assert_allclose(bin_shares(np.array([5000.0, 6000.0]), edges), [0] * 9 + [1])


def test_repeated_values_collapse_bins_instead_of_making_empty_ones() -> None:
    reference = np.array([0.0] * 80 + [1.0] * 10 + [2.0] * 10)
    edges = quantile_edges(reference, 10)
    # deciles 1-7 are all 0; the 8th interpolates to 0.2 and the 9th to 1.1
    np.testing.assert_allclose(edges, [0.0, 0.2, 1.1])
    np.testing.assert_allclose(bin_shares(reference, edges), [0.0, 0.8, 0.1, 0.1])


def test_ks_statistic_of_known_samples() -> None:
    assert ks_statistic(np.array([1.0, 2, 3]), np.array([4.0, 5, 6])) == 1.0
    assert ks_statistic(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == 0.0
    # CDFs at 2: 2/4 vs 0/2 → 0.5; at 3: 3/4 vs 1/2 → 0.25
    assert ks_statistic(np.array([1.0, 2, 3, 4]), np.array([3.0, 4])) == 0.5


def test_kolmogorov_distribution_matches_its_tables() -> None:
    # P(K > 1.358) = 0.05 and P(K > 1.628) = 0.01: the classic critical values
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=2e-4)
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=2e-4)
    # values of scipy.special.kolmogorov, both sides of the switch between the two series
    assert kolmogorov_sf(0.5) == pytest.approx(0.9639452436648751, rel=1e-9)
    assert kolmogorov_sf(1.0) == pytest.approx(0.26999967167735456, rel=1e-9)
    assert kolmogorov_sf(2.0) == pytest.approx(0.0006709252557796953, rel=1e-9)
    assert kolmogorov_sf(0.0) == 1.0
    lams = np.linspace(0.05, 4, 200)
    values = [kolmogorov_sf(x) for x in lams]
    assert all(a >= b for a, b in itertools.pairwise(values)), "the survival function must fall"


def test_ks_p_value_separates_shifted_from_equal_samples() -> None:
    rng = np.random.default_rng(0)
    same_d, same_p = ks_two_sample(np.sort(rng.normal(size=500)), np.sort(rng.normal(size=5000)))
    shifted_d, shifted_p = ks_two_sample(np.sort(rng.normal(0.5, 1, size=500)), np.sort(rng.normal(size=5000)))
    assert same_p > 0.01 and same_d < 0.08
    assert shifted_p < 1e-10 and shifted_d > 0.15
    # D = 0.1 between 300 and 2000 rows: en = 16.151, lam = (en + 0.12 + 0.11/en) D = 1.62783
    assert ks_p_value(0.1, 300, 2000) == pytest.approx(kolmogorov_sf(1.62783), rel=1e-4)


def test_chi_square_survival_function_matches_its_tables() -> None:
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-4)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, abs=1e-4)
    assert chi2_sf(2.0, 2) == pytest.approx(math.exp(-1), rel=1e-12)  # with 2 dof it is exp(-x/2)
    assert chi2_sf(90.0, 64) == pytest.approx(0.017782370221741325, rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0


def test_chi_square_goodness_of_fit() -> None:
    assert chi2_goodness_of_fit(np.array([50, 50]), np.array([0.5, 0.5])) == 1.0
    # statistic (60-50)^2/50 * 2 = 4 with 1 dof
    assert chi2_goodness_of_fit(np.array([60, 40]), np.array([0.5, 0.5])) == pytest.approx(chi2_sf(4.0, 1))
    assert chi2_goodness_of_fit(np.array([0, 100]), np.array([0.5, 0.5])) < 1e-20
