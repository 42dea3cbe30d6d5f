"""Evidence of a decision with an unbounded interval (rewards that never varied) is kept as JSON can
hold it: infinite bounds become None in the stored verdict and in `model.experiment_concluded`."""

import json
import math
from dataclasses import asdict

from gallery_common.events import ModelExperimentConcluded
from gallery_deployer.experiments.controller import _finite
from gallery_deployer.experiments.stats import ArmOutcomes, TestDesign, sequential_verdict


def test_a_verdict_on_constant_rewards_is_stored_and_published_without_infinities() -> None:
    control, challenger = ArmOutcomes("1", 200, 200.0, 200.0), ArmOutcomes("2", 200, 200.0, 200.0)
    verdict = sequential_verdict(control, [challenger], TestDesign("mean", 0.2, max_samples_per_arm=200))
    assert verdict.status == "no_difference"
    assert not all(math.isfinite(bound) for bound in verdict.interval)  # nothing bounds it yet
    stored = _finite(asdict(verdict))
    json.dumps(stored, allow_nan=False)  # PostgreSQL's json rejects Infinity
    low, high = stored["interval"]
    event = ModelExperimentConcluded(
        model="m",
        experiment_id="e1",
        outcome="no_difference",
        control=1,
        versions=[1, 2],
        metric="reward",
        effect=verdict.effect,
        interval=(low, high),
        p_value=verdict.p_value,
        samples={"1": 200, "2": 200},
        traffic_moved=False,
        reason="no difference",
    )
    sent = event.model_dump_json()
    assert ModelExperimentConcluded.model_validate_json(sent).interval == (low, high)
    assert "Infinity" not in sent
