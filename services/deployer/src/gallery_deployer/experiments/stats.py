"""The statistics of online experiments: a sequential test that may be looked at after every outcome, and
Thompson sampling for bandit routing. Pure functions over per-arm sums; nothing here does I/O.

**The sequential test** is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis
and Walsh, "Peeking at A/B Tests: Why it matters, and what to do about it" (KDD 2017) and Johari, Pekelis and
Walsh, "Always Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research 70(3), 2022), the
test behind Optimizely's stats engine. For the difference of two means (a proportion is the mean of 0/1
outcomes) with estimate ``d`` and estimated variance ``V = var_a / n_a + var_b / n_b`` (normal approximation),
the likelihood ratio of "difference ~ N(0, tau^2)" against "no difference" is

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))

``Lambda`` is a martingale under no difference, so by Ville's inequality P(Lambda ever reaches 1/alpha) <= alpha:
``min(1, 1/Lambda)`` is an always-valid p-value, and stopping the first time it drops below alpha keeps the
false-positive rate within alpha however often one looks. Inverting the test at every difference gives the
always-valid confidence interval ``d +- radius(V)`` (it covers the true difference at all looks at once with
probability >= 1 - alpha).

The variance is a plug-in: for a proportion ``p(1-p)`` with ``p = (successes + 1) / (n + 2)`` (so an arm with
all or no successes still has one), for a mean the arm's sample variance. Several challengers are each tested
against the control at ``alpha / challengers`` (Bonferroni): conservative, and valid whatever the
correlation between the comparisons.

**The mixing variance** ``tau^2`` comes from the minimum detectable effect. For a fixed ``V``, ``Lambda`` of an
observed difference of exactly ``mde`` is largest at ``tau^2 = mde^2 - V``; we take the ``V`` at which that
observation just reaches ``1/alpha``: with ``x = mde^2 / V``, ``x - 1 - ln x = 2 ln(1/alpha)`` and
``tau^2 = mde^2 (1 - 1/x)`` (about ``0.89 mde^2`` at alpha 0.05). The mixture thereby spends its weight on
differences the size of the mde, where Johari et al. show the mSPRT is most efficient.

**The planned sample size** is the per-arm size at which an arm truly better by ``mde`` gives an estimate
beyond the decision boundary with probability ``power`` at that last look alone: ``mde >= radius(V_n) +
z_power sqrt(V_n)``. The test may also have stopped at any earlier look, so this is an upper bound of the
size it needs; it is about twice the fixed-horizon size (the price of looking continuously), and the unit
tests check the promise by simulation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

MetricKind = Literal["proportion", "mean"]
VerdictStatus = Literal["running", "winner", "no_difference"]

# With max_samples_per_arm unset, the test stops at this many times the planned size: by then an effect of
# mde has been found in nearly every run, and an effect well below it is not worth waiting for.
MAX_SAMPLES_FACTOR = 2.0

# The plug-in variance of a handful of outcomes can be far too small (two rewards that happen to agree), and a
# variance too small makes evidence out of noise: no arm is judged before it has this many outcomes.
MIN_SAMPLES_PER_ARM = 30

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ArmOutcomes:
    """One arm's outcomes so far: their count, sum and sum of squares (for a proportion total = successes
    and total_sq = total)."""

    arm: str
    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if not self.arm:
            raise ValueError("an arm needs a name")
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise ValueError(f"arm {self.arm!r}: n must be a whole number >= 0, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))  # a numpy integer becomes a plain one (samples go to JSON)
        if not (math.isfinite(self.total) and math.isfinite(self.total_sq)):
            raise ValueError(f"arm {self.arm!r}: total and total_sq must be finite numbers")
        if self.total_sq < 0:
            raise ValueError(f"arm {self.arm!r}: total_sq is a sum of squares and cannot be negative")
        if self.n == 0 and (self.total != 0 or self.total_sq != 0):
            raise ValueError(f"arm {self.arm!r}: no outcomes (n = 0) cannot have a non-zero total")


@dataclass(frozen=True)
class TestDesign:
    """What the experiment tests: the metric's kind, the minimum detectable effect (an absolute difference
    of proportions or means), the significance level, the power the planned size promises, the direction
    that is better, and the cap on outcomes per arm (None: ``MAX_SAMPLES_FACTOR`` x the planned size, from
    the outcomes seen so far)."""

    __test__ = False  # not a pytest test class, though its name starts with "Test"

    kind: MetricKind
    mde: float
    alpha: float = 0.05
    power: float = 0.8
    higher_is_better: bool = True
    max_samples_per_arm: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("proportion", "mean"):
            raise ValueError(f"kind must be 'proportion' or 'mean', got {self.kind!r}")
        if not (0 < self.alpha < 1):
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if not (0 < self.power < 1):
            raise ValueError(f"power must lie strictly between 0 and 1, got {self.power}")
        if not (math.isfinite(self.mde) and self.mde > 0):
            raise ValueError(f"the minimum detectable effect must be a positive number, got {self.mde}")
        if self.kind == "proportion" and self.mde >= 1:
            raise ValueError(f"a difference of proportions is below 1; the mde {self.mde} cannot be detected")
        cap = self.max_samples_per_arm
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"max_samples_per_arm must be a whole number >= 1 or None, got {cap!r}")


@dataclass(frozen=True)
class Comparison:
    """One challenger against the control: the effect is challenger minus control; the p-value and the
    interval are always-valid and already corrected for the number of challengers."""

    challenger: str
    p_value: float
    effect: float
    interval: tuple[float, float]


@dataclass(frozen=True)
class Verdict:
    """Where the experiment stands. ``p_value``, ``effect`` and ``interval`` are those of the comparison that
    decided (or, while running, of the one closest to deciding); ``comparisons`` holds every challenger's."""

    status: VerdictStatus
    winner: str | None
    p_value: float
    effect: float
    interval: tuple[float, float]
    samples: dict[str, int]
    reason: str
    comparisons: tuple[Comparison, ...] = field(default=())


@cache
def mixing_variance(mde: float, alpha: float) -> float:
    """The mSPRT's tau^2 for a minimum detectable effect at level alpha (derivation in the module's docstring)."""
    target = 2 * math.log(1 / alpha)
    low, high = 1.0, 2 * target + 2  # x - 1 - ln x is increasing above 1, below target at 1, above it here
    for _ in range(200):
        middle = (low + high) / 2
        if middle - 1 - math.log(middle) < target:
            low = middle
        else:
            high = middle
    return mde * mde * (1 - 1 / high)


def arm_moments(
    kind: MetricKind, n: npt.ArrayLike, total: npt.ArrayLike, total_sq: npt.ArrayLike
) -> tuple[_Array, _Array]:
    """Each arm's observed mean and the plug-in variance of one outcome (NaN where it cannot be estimated:
    no outcome, or a mean with fewer than two). Works elementwise on arrays."""
    count = np.asarray(n, dtype=np.float64)
    sums = np.asarray(total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, sums / count, np.nan)
        if kind == "proportion":
            smoothed = (sums + 1) / (count + 2)
            variance = np.where(count > 0, smoothed * (1 - smoothed), np.nan)
        else:
            squares = np.asarray(total_sq, dtype=np.float64)
            spread = np.maximum(squares - sums * mean, 0.0)
            variance = np.where(count > 1, spread / (count - 1), np.nan)
    return mean, variance


def log_mixture_ratio(effect: npt.ArrayLike, variance: npt.ArrayLike, tau2: float) -> _Array:
    """ln Lambda of the mSPRT; 0 (no evidence) where the variance of the effect is not a positive number."""
    d = np.asarray(effect, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    usable = np.isfinite(v) & (v > 0) & np.isfinite(d)
    v = np.where(usable, v, 1.0)
    ratio = 0.5 * np.log(v / (v + tau2)) + d * d * tau2 / (2 * v * (v + tau2))
    return np.where(usable, ratio, 0.0)


def confidence_radius(variance: npt.ArrayLike, tau2: float, alpha: float) -> _Array:
    """Half-width of the always-valid (1 - alpha) interval of the effect; infinite where the variance of the
    effect is not a positive number."""
    v = np.asarray(variance, dtype=np.float64)
    usable = np.isfinite(v) & (v > 0)
    v = np.where(usable, v, 1.0)
    radius = np.sqrt(2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * np.log((v + tau2) / v)))
    return np.where(usable, radius, np.inf)


def planned_samples_per_arm(
    design: TestDesign, baseline: float | None = None, variance: float | None = None, *, challengers: int = 1
) -> int:
    """Outcomes per arm within which the test decides for an arm truly better by ``design.mde`` with
    probability at least ``design.power`` (an upper bound: see the module's docstring).

    A proportion needs the control's ``baseline`` rate (None: 0.5, the largest variance); a mean needs the
    ``variance`` of one outcome. ``challengers`` > 1 plans for the Bonferroni-corrected level."""
    if isinstance(challengers, bool) or not isinstance(challengers, int) or challengers < 1:
        raise ValueError(f"challengers must be a whole number >= 1, got {challengers!r}")
    if design.kind == "proportion":
        control = 0.5 if baseline is None else baseline
        if not (0 <= control <= 1):
            raise ValueError(f"a baseline proportion lies in [0, 1], got {control}")
        better = control + design.mde if design.higher_is_better else control - design.mde
        if not (0 <= better <= 1):
            raise ValueError(f"an arm better by {design.mde} than the baseline {control} would leave [0, 1]")
        outcome_variances = control * (1 - control) + better * (1 - better)
    else:
        if variance is None or not (math.isfinite(variance) and variance > 0):
            raise ValueError(f"planning a test of means needs the positive variance of one outcome, got {variance}")
        outcome_variances = 2 * variance
    planned = math.ceil(outcome_variances / _deciding_variance(design.mde, design.alpha / challengers, design.power))
    return max(planned, MIN_SAMPLES_PER_ARM)  # nothing is decided before every arm has MIN_SAMPLES_PER_ARM


@cache
def _deciding_variance(mde: float, alpha: float, power: float) -> float:
    """The largest variance of the effect at which an effect of mde lands beyond the boundary with
    probability ``power``: radius(V) + z_power sqrt(V) = mde (the left side grows with V; bisection on ln V)."""
    tau2 = mixing_variance(mde, alpha)
    z_power = NormalDist().inv_cdf(power)

    def excess(v: float) -> float:
        return float(confidence_radius(v, tau2, alpha)) + z_power * math.sqrt(v) - mde

    low, high = math.log(mde * mde) - 60, math.log(mde * mde) + 10
    for _ in range(200):
        middle = (low + high) / 2
        if excess(math.exp(middle)) <= 0:
            low = middle
        else:
            high = middle
    return math.exp(low)


def sequential_verdict(control: ArmOutcomes, challengers: Sequence[ArmOutcomes], design: TestDesign) -> Verdict:
    """Decide an experiment from its outcomes so far; safe to call after every outcome.

    "winner" as soon as a challenger's corrected always-valid p-value is below alpha (the winner is the
    better arm of that comparison by the effect's sign and ``higher_is_better``; the control wins when it is
    significantly better than every challenger). "no_difference" when the smallest arm reaches the cap of
    outcomes per arm, or earlier when every challenger's always-valid interval lies within (-mde, +mde) or
    shows it significantly worse. Otherwise "running"."""
    rivals = list(challengers)
    if not rivals:
        raise ValueError("an experiment needs at least one challenger beside the control")
    arms = [control, *rivals]
    names = [arm.arm for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    for arm in arms:
        _check_arm(arm, design.kind)

    k = len(rivals)
    effects, p_values, radii = _evidence(design, _sums([control]), _sums(rivals), k)
    bound = 1.0 if design.kind == "proportion" else math.inf  # a difference of proportions lies in [-1, 1]
    comparisons = tuple(
        Comparison(
            challenger=arm.arm,
            p_value=float(p),
            effect=float(d),
            interval=(max(float(d - r), -bound), min(float(d + r), bound)),
        )
        for arm, p, d, r in zip(rivals, p_values, effects, radii, strict=True)
    )
    samples = {arm.arm: arm.n for arm in arms}
    judged = bool(np.isfinite(radii).any())
    return _decide(control, comparisons, samples, design, _cap(control, rivals, design), judged)


@dataclass(frozen=True)
class SimulatedDecisions:
    """Per simulated run: the index of the first look that decided (-1: none) and who won there (+1 the
    challenger, -1 the control, 0 nobody: no difference, or no decision)."""

    look: npt.NDArray[np.int64]
    winner: npt.NDArray[np.int64]


def first_decisions(
    design: TestDesign,
    control: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
    challenger: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
) -> SimulatedDecisions:
    """The rule of ``sequential_verdict`` for one challenger, over many simulated runs at once: ``control``
    and ``challenger`` are (n, total, total_sq) arrays of shape (runs, looks), cumulative at each look.
    For simulations; needs ``design.max_samples_per_arm``."""
    cap = design.max_samples_per_arm
    if cap is None:
        raise ValueError("simulating the test needs design.max_samples_per_arm")
    effects, p_values, radii = _evidence(design, control, challenger, 1)
    sign = 1.0 if design.higher_is_better else -1.0
    significant = p_values < design.alpha
    winner = np.where(significant, np.where(sign * effects > 0, 1, -1), 0)
    capped = np.minimum(np.asarray(control[0]), np.asarray(challenger[0])) >= cap
    inside = (effects - radii > -design.mde) & (effects + radii < design.mde)  # clipping to [-1, 1] changes nothing
    decided = significant | capped | inside
    first = np.argmax(decided, axis=1)
    rows = np.arange(decided.shape[0])
    any_decision = decided[rows, first]
    return SimulatedDecisions(
        look=np.where(any_decision, first, -1).astype(np.int64),
        winner=np.where(any_decision, winner[rows, first], 0).astype(np.int64),
    )


def _sums(arms: Sequence[ArmOutcomes]) -> tuple[_Array, _Array, _Array]:
    return (
        np.array([a.n for a in arms], dtype=np.float64),
        np.array([a.total for a in arms], dtype=np.float64),
        np.array([a.total_sq for a in arms], dtype=np.float64),
    )


def _evidence(
    design: TestDesign,
    control: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
    challengers: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
    k: int,
) -> tuple[_Array, _Array, _Array]:
    """Effect (challenger - control), corrected always-valid p-value and interval radius, elementwise."""
    alpha = design.alpha / k
    tau2 = mixing_variance(design.mde, alpha)
    control_mean, control_var = arm_moments(design.kind, *control)
    mean, var = arm_moments(design.kind, *challengers)
    control_n, n = np.asarray(control[0], dtype=np.float64), np.asarray(challengers[0], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect_variance = var / n + control_var / control_n
    effect_variance = np.where(np.minimum(n, control_n) >= MIN_SAMPLES_PER_ARM, effect_variance, np.nan)
    effects = np.where(np.isfinite(mean) & np.isfinite(control_mean), mean - control_mean, 0.0)
    p_values = np.minimum(1.0, k * np.exp(-log_mixture_ratio(effects, effect_variance, tau2)))
    return effects, p_values, confidence_radius(effect_variance, tau2, alpha)


def thompson_shares(
    arms: Sequence[ArmOutcomes],
    kind: MetricKind,
    *,
    floor: float,
    higher_is_better: bool = True,
    rng: np.random.Generator,
    draws: int = 4000,
) -> dict[str, float]:
    """Traffic shares for Thompson sampling: each arm's posterior probability of being the best (Monte Carlo
    over ``draws`` posterior draws), then ``floor`` for every arm and the rest in proportion. Sum to 1.

    A proportion's posterior is Beta(1 + successes, 1 + failures); a mean's is Normal(mean, pooled
    variance / n), the variance pooled over the arms. While an arm of a mean has no outcome, or the
    outcomes give no variance yet, every arm is equally likely the best."""
    arms = list(arms)
    if not arms:
        raise ValueError("thompson_shares needs at least one arm")
    if kind not in ("proportion", "mean"):
        raise ValueError(f"kind must be 'proportion' or 'mean', got {kind!r}")
    names = [arm.arm for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    if not (math.isfinite(floor) and floor >= 0 and floor * len(arms) <= 1):
        raise ValueError(f"the floor share {floor} x {len(arms)} arms must lie in [0, 1]")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a whole number >= 1, got {draws!r}")
    for arm in arms:
        _check_arm(arm, kind)
    best = _probability_best(arms, kind, higher_is_better, rng, draws)
    spare = 1 - floor * len(arms)
    return {name: floor + spare * float(p) for name, p in zip(names, best, strict=True)}


def _check_arm(arm: ArmOutcomes, kind: MetricKind) -> None:
    if kind == "proportion" and not (0 <= arm.total <= arm.n):
        raise ValueError(f"arm {arm.arm!r}: successes must lie in [0, n = {arm.n}], got {arm.total}")


def _cap(control: ArmOutcomes, rivals: list[ArmOutcomes], design: TestDesign) -> int | None:
    """The cap of outcomes per arm: the design's, or MAX_SAMPLES_FACTOR x the size planned from the outcomes
    so far (None while they give no variance to plan with)."""
    if design.max_samples_per_arm is not None:
        return design.max_samples_per_arm
    arms = [control, *rivals]
    if design.kind == "proportion":
        rate = control.total / control.n if control.n else 0.5
        low, high = (0.0, 1 - design.mde) if design.higher_is_better else (design.mde, 1.0)
        planned = planned_samples_per_arm(design, baseline=min(max(rate, low), high), challengers=len(rivals))
    else:
        pooled = _pooled_variance(arms)
        if pooled is None or pooled <= 0:
            return None
        planned = planned_samples_per_arm(design, variance=pooled, challengers=len(rivals))
    return math.ceil(planned * MAX_SAMPLES_FACTOR)


def _pooled_variance(arms: Sequence[ArmOutcomes]) -> float | None:
    """The variance of one outcome of a mean, pooled over the arms (None while no arm has two outcomes)."""
    _, variances = arm_moments("mean", [a.n for a in arms], [a.total for a in arms], [a.total_sq for a in arms])
    weights = np.array([max(a.n - 1, 0) for a in arms], dtype=np.float64)
    if weights.sum() == 0:
        return None
    return float(np.nansum(variances * weights) / weights.sum())


def _decide(
    control: ArmOutcomes,
    comparisons: tuple[Comparison, ...],
    samples: dict[str, int],
    design: TestDesign,
    cap: int | None,
    judged: bool,
) -> Verdict:
    sign = 1.0 if design.higher_is_better else -1.0
    k = len(comparisons)
    level = f"alpha {design.alpha}" + (f", Bonferroni over {k} challengers" if k > 1 else "")
    significant = [c for c in comparisons if c.p_value < design.alpha]
    better = [c for c in significant if sign * c.effect > 0]

    def verdict(status: VerdictStatus, winner: str | None, shown: Comparison, reason: str) -> Verdict:
        return Verdict(status, winner, shown.p_value, shown.effect, shown.interval, samples, reason, comparisons)

    if better:
        top = max(better, key=lambda c: sign * c.effect)
        reason = (
            f"{top.challenger} beats {control.arm} by {top.effect:+.4g} (always-valid p = {top.p_value:.3g} < {level})"
        )
        return verdict("winner", top.challenger, top, reason)
    if len(significant) == k:
        weakest = max(comparisons, key=lambda c: c.p_value)
        reason = (
            f"{control.arm} beats every challenger; the closest, {weakest.challenger}, by {-weakest.effect:+.4g} "
            f"(always-valid p = {weakest.p_value:.3g} < {level})"
        )
        return verdict("winner", control.arm, weakest, reason)
    leading = min(comparisons, key=lambda c: c.p_value)
    smallest = min(samples.values())
    if cap is not None and smallest >= cap:
        reason = f"no decision within {cap} outcomes per arm (the cap); no difference of {design.mde} or more was shown"
        return verdict("no_difference", None, leading, reason)
    if all(c in significant or (-design.mde < c.interval[0] and c.interval[1] < design.mde) for c in comparisons):
        reason = (
            f"the always-valid {1 - design.alpha:.0%} interval of every challenger's effect lies within "
            f"+-{design.mde}" + (" or shows it worse" if significant else "") + f" after {smallest} outcomes per arm"
        )
        return verdict("no_difference", None, leading, reason)
    if not judged:
        reason = (
            f"no evidence yet: each arm needs {MIN_SAMPLES_PER_ARM} outcomes before it is judged (the smallest has "
            f"{smallest})"
            if smallest < MIN_SAMPLES_PER_ARM
            else "no evidence yet: the outcomes do not vary, so there is no variance to judge a difference by"
        )
        return verdict("running", None, leading, reason)
    reason = f"{smallest} outcomes per arm" + (f" of at most {cap}" if cap is not None else "")
    reason += f"; the best comparison has always-valid p = {leading.p_value:.3g}, a decision needs < {design.alpha}"
    return verdict("running", None, leading, reason)


def _probability_best(
    arms: list[ArmOutcomes], kind: MetricKind, higher_is_better: bool, rng: np.random.Generator, draws: int
) -> _Array:
    k = len(arms)
    n = np.array([a.n for a in arms], dtype=np.float64)
    totals = np.array([a.total for a in arms], dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    if kind == "proportion":
        samples = rng.beta(1 + totals, 1 + n - totals, size=(draws, k))
    else:
        if (n == 0).any():
            return np.full(k, 1 / k)
        means, _ = arm_moments("mean", n, totals, [a.total_sq for a in arms])
        pooled = _pooled_variance(arms)
        if pooled is None:
            return np.full(k, 1 / k)
        if pooled <= 0:  # no noise: the best observed mean is the best (ties share)
            top = sign * means == (sign * means).max()
            return top / top.sum()
        samples = rng.normal(means, np.sqrt(pooled / n), size=(draws, k))
    wins = np.bincount(np.argmax(sign * samples, axis=1), minlength=k)
    return wins / draws
