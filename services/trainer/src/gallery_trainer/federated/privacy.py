"""The privacy budget of a federated job trained with Flower's server-side differential privacy.

Each round the coordinator clips every site's update to `clipping_norm` (L2), averages the sites'
updates with equal weights and adds Gaussian noise of standard deviation `noise_multiplier *
clipping_norm / min_sites` (Flower's `DifferentialPrivacyServerSideFixedClipping`). A round is then a
Gaussian mechanism on the sites' contributions with noise multiplier at least `noise_multiplier`
(more sites than `min_sites` only lower the sensitivity), so `rounds` of them are `(epsilon, delta)`
differentially private at the site level by Rényi DP composition (Mironov 2017): epsilon is the
minimum over orders a > 1 of `rounds * a / (2 z^2) + log(1 / delta) / (a - 1)`, which is
`c + 2 sqrt(c log(1 / delta))` with `c = rounds / (2 z^2)`. No amplification by sampling sites is
counted (`fraction_fit` below 1 makes the true budget smaller): the figure is an upper bound.

Stdlib only: Flower's interpreter computes it round by round.
"""

from __future__ import annotations

import math


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The epsilon of `rounds` Gaussian mechanisms of `noise_multiplier` at `delta` (0 for no round)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0 or not 0 < delta < 1:
        raise ValueError("a Gaussian mechanism needs noise_multiplier > 0 and 0 < delta < 1")
    c = rounds / (2 * noise_multiplier**2)
    return c + 2 * math.sqrt(c * math.log(1 / delta))
