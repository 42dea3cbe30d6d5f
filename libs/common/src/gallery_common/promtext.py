"""Reading Prometheus figures the services export: a latency quantile from histogram buckets.

Read through `gallery_common.contracts.serving_metrics`, so the deployer's canary analysis and the
monitor compute p99 the same way.
"""

from __future__ import annotations

import math


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts (upper bound → count), interpolated inside its bucket.

    As Prometheus' histogram_quantile: the first bucket starts at 0, and a quantile that falls in
    the +Inf bucket is the highest finite bound. None when the buckets count nothing.
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be between 0 and 1")
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    target = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= target and count > 0:
            if math.isinf(bound):
                return lower_bound
            share = (target - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
