"""Online experiments' statistics over many simulated experiments (no services: the pure module).

1. The sequential test (mixture SPRT, `gallery_deployer.experiments.stats`) on accuracy (control 0.80, mde
   0.03) and on a mean reward (Normal, sd 1, mde 0.2), at several true effects, looked at after every 20
   outcomes per arm up to its cap (2 x the planned size): outcomes per arm to a decision (median, p90), the
   share of runs that chose the better arm, did so within the planned size, chose the worse arm, or found no
   difference. The peer is the fixed-horizon two-sided z-test at the same alpha and power: its sample size
   for that effect, and the ratio. At effect 0 (A/A) the "winner" column is the false-positive rate, beside
   the peer's when it is peeked at after every 20 outcomes (what the sequential test makes safe).
2. Thompson sampling (floor 5 %, shares recomputed after every 200 outcomes, accuracy 0.80 vs 0.83):
   outcomes until the better arm's share stays above 80 % (to 20,000), and the share of the first 10,000
   outcomes it served, beside a fixed 50/50 split.

    .venv/bin/python bench/experiments.py [--runs 2000] [--bandit-runs 300] [--seed 21]
"""

from __future__ import annotations

import argparse
import math
import time
from statistics import NormalDist

import numpy as np

from gallery_deployer.experiments.stats import (
    MAX_SAMPLES_FACTOR,
    ArmOutcomes,
    TestDesign,
    first_decisions,
    planned_samples_per_arm,
    sequential_verdict,
    thompson_shares,
)

BATCH = 20
Sums = tuple[np.ndarray, np.ndarray, np.ndarray]


def accuracy_sums(rng: np.random.Generator, rate: float, runs: int, looks: int) -> Sums:
    successes = rng.binomial(BATCH, rate, size=(runs, looks)).cumsum(axis=1).astype(np.float64)
    return looks_n(runs, looks), successes, successes


def reward_sums(rng: np.random.Generator, mean: float, runs: int, looks: int) -> Sums:
    # a batch of BATCH Normal(mean, 1) rewards: its sum, and its sum of squares = sum^2 / BATCH + chi2(BATCH - 1)
    sums = rng.normal(BATCH * mean, math.sqrt(BATCH), size=(runs, looks))
    squares = sums * sums / BATCH + rng.chisquare(BATCH - 1, size=(runs, looks))
    return looks_n(runs, looks), sums.cumsum(axis=1), squares.cumsum(axis=1)


def looks_n(runs: int, looks: int) -> np.ndarray:
    return np.broadcast_to(np.arange(1, looks + 1, dtype=np.float64) * BATCH, (runs, looks))


def fixed_horizon(outcome_variances: float, effect: float, design: TestDesign) -> int:
    z = NormalDist().inv_cdf
    return math.ceil((z(1 - design.alpha / 2) + z(design.power)) ** 2 * outcome_variances / effect**2)


def peeking_false_positives(a: Sums, b: Sums, alpha: float) -> float:
    """The fixed-horizon z-test (unpooled variance) looked at after every batch: share of A/A runs it ever rejects."""
    (n, ta, qa), (_, tb, qb) = a, b
    var_a, var_b = qa / n - (ta / n) ** 2, qb / n - (tb / n) ** 2
    z = (tb / n - ta / n) / np.sqrt(np.maximum(var_a + var_b, 1e-12) / n)
    return float((np.abs(z) > NormalDist().inv_cdf(1 - alpha / 2)).any(axis=1).mean())


def print_table(name: str, design: TestDesign, planned: int, rows: list[tuple[float, Sums, Sums, int]]) -> None:
    cap = design.max_samples_per_arm
    assert cap is not None, "the simulated designs set their cap"
    print(
        f"\n{name}: alpha {design.alpha}, power {design.power}, mde {design.mde}, planned {planned} per arm, "
        f"cap {cap}, a look every {BATCH} outcomes per arm"
    )
    print(
        f"{'effect':>7} {'runs':>6} {'median n':>9} {'p90 n':>7} {'fixed n':>8} {'median/fixed':>12} "
        f"{'winner':>7} {'in plan':>7} {'wrong':>6} {'no diff':>7}  peer"
    )
    for effect, a, b, fixed in rows:
        decisions = first_decisions(design, a, b)
        runs = len(decisions.look)
        n = np.where(decisions.look >= 0, (decisions.look + 1) * BATCH, cap)
        median, p90 = np.median(n), np.percentile(n, 90)
        if effect == 0:
            winner, wrong = float((decisions.winner != 0).mean()), 0.0
            peer = f"fixed-horizon z-test peeked at every look: {peeking_false_positives(a, b, design.alpha):.1%} FP"
            fixed_text, ratio = "-", "-"
        else:
            winner, wrong = float((decisions.winner == 1).mean()), float((decisions.winner == -1).mean())
            peer, fixed_text, ratio = "", str(fixed), f"{median / fixed:.2f}"
        in_plan = float(((decisions.winner == 1) & (n <= planned)).mean()) if effect else 0.0
        no_difference = float(((decisions.look >= 0) & (decisions.winner == 0)).mean())
        print(
            f"{effect:>7g} {runs:>6} {median:>9.0f} {p90:>7.0f} {fixed_text:>8} {ratio:>12} "
            f"{winner:>7.1%} {in_plan:>7.1%} {wrong:>6.1%} {no_difference:>7.1%}  {peer}"
        )


def sequential_figures(runs: int, rng: np.random.Generator) -> None:
    base = TestDesign("proportion", mde=0.03)
    planned = planned_samples_per_arm(base, baseline=0.80)
    cap = math.ceil(planned * MAX_SAMPLES_FACTOR)
    design = TestDesign("proportion", mde=0.03, max_samples_per_arm=cap)
    looks = math.ceil(cap / BATCH)
    rows = []
    for effect in (0.0, 0.015, 0.03, 0.045, 0.06):
        fixed = fixed_horizon(0.8 * 0.2 + (0.8 + effect) * (0.2 - effect), effect, design) if effect else 0
        rows.append(
            (effect, accuracy_sums(rng, 0.80, runs, looks), accuracy_sums(rng, 0.80 + effect, runs, looks), fixed)
        )
    print_table("accuracy 0.80 + effect", design, planned, rows)

    planned = planned_samples_per_arm(TestDesign("mean", mde=0.2), variance=1.0)
    cap = math.ceil(planned * MAX_SAMPLES_FACTOR)
    design = TestDesign("mean", mde=0.2, max_samples_per_arm=cap)
    looks = math.ceil(cap / BATCH)
    rows = []
    for effect in (0.0, 0.1, 0.2, 0.3, 0.4):
        fixed = fixed_horizon(2.0, effect, design) if effect else 0
        rows.append((effect, reward_sums(rng, 1.0, runs, looks), reward_sums(rng, 1.0 + effect, runs, looks), fixed))
    print_table("mean reward, Normal(1 + effect, 1)", design, planned, rows)


def bandit_run(rng: np.random.Generator, horizon: int, batch: int) -> tuple[int, float]:
    """Outcomes until B's share stays above 80 % (to `horizon`), and B's share of the first 10,000 outcomes."""
    successes, counts = np.zeros(2), np.zeros(2, dtype=np.int64)
    shares, settled, served_b = {"A": 0.5, "B": 0.5}, 0, 0
    for seen in range(batch, horizon + 1, batch):
        sent = rng.multinomial(batch, [shares["A"], shares["B"]])
        successes += rng.binomial(sent, [0.80, 0.83])
        counts += sent
        if seen <= 10_000:
            served_b += int(sent[1])
        arms = [ArmOutcomes(name, int(counts[i]), successes[i], successes[i]) for i, name in enumerate("AB")]
        shares = thompson_shares(arms, "proportion", floor=0.05, rng=rng)
        if shares["B"] <= 0.8:
            settled = seen
    return settled, served_b / 10_000


def bandit_figures(runs: int, rng: np.random.Generator) -> None:
    horizon, batch = 20_000, 200
    results = [bandit_run(rng, horizon, batch) for _ in range(runs)]
    settled = np.array([r[0] for r in results])
    served = np.array([r[1] for r in results])
    print(
        f"\nThompson sampling, accuracy 0.80 (A) vs 0.83 (B), floor 5 %, shares recomputed every {batch} outcomes, "
        f"{runs} runs"
    )
    print(
        f"  outcomes until B's share stays above 80 % (to {horizon}): median {np.median(settled):.0f}, "
        f"p90 {np.percentile(settled, 90):.0f}, max {settled.max()}; "
        f"settled by 6,000: {np.mean(settled <= 6000):.0%}, by 8,000: {np.mean(settled <= 8000):.0%}"
    )
    print(
        f"  B's share of the first 10,000 outcomes: median {np.median(served):.1%} (a fixed 50/50 split: 50.0 %), "
        f"ratio {np.median(served) / 0.5:.2f}"
    )


def call_costs() -> None:
    design = TestDesign("proportion", mde=0.03)
    arms = [ArmOutcomes("A", 5000, 4000, 4000), ArmOutcomes("B", 5000, 4100, 4100)]
    rng = np.random.default_rng(0)
    for name, call, repeats in (
        ("sequential_verdict", lambda: sequential_verdict(arms[0], arms[1:], design), 2000),
        ("thompson_shares (2 arms, 4000 draws)", lambda: thompson_shares(arms, "proportion", floor=0.05, rng=rng), 500),
    ):
        cpu = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(repeats):
                call()
            cpu.append((time.process_time() - start) / repeats * 1e6)
        print(f"  {name}: {min(cpu):.0f}-{max(cpu):.0f} us CPU per call (5 rounds of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated experiments per effect")
    parser.add_argument("--bandit-runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    sequential_figures(args.runs, rng)
    bandit_figures(args.bandit_runs, rng)
    print("\ncost per call (what the experiments controller pays per look):")
    call_costs()
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
