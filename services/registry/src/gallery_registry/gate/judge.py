"""The gate's verdict on one version: fetch, evaluate, compare with the champion, apply the policy, and
explain the model (global feature importance; never a reason to reject).

Blocking throughout (store I/O, ONNX Runtime): run it in a worker thread.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from gallery_common.artifacts import ArtifactStore
from gallery_common.telemetry import get_logger

from ..schemas import ValidationPolicy, VersionPublic
from .evaluation import EvaluationFailed, HeldOutSplit, LatencyConfig, OnnxModel, Task, evaluate
from .explainer import ImportanceConfig
from .fetch import EXPLAINED_ROLES, fetch_artifacts
from .importance import SANDBOX_PRELOAD, explain_version
from .policy import ChampionResult, champion_failure, metric_value, threshold_failures
from .signature import signature_mismatches

log = get_logger(__name__)


@dataclass
class Verdict:
    """The evaluation report, every failed criterion (none means the version passes) and the explainer
    profile the gate built for the version (None: it has one already, or none could be built)."""

    report: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    explainer: bytes | None = None

    @property
    def passed(self) -> bool:
        return not self.reasons


def judge_version(
    store: ArtifactStore,
    version: VersionPublic,
    policy: ValidationPolicy,
    champion: VersionPublic | None,
    latency: LatencyConfig,
    importance: ImportanceConfig | None = None,
) -> Verdict:
    """Evaluate `version` on its own test split, hold it to `policy` and to `champion`, and (with
    `importance` enabled, the default) add its `feature_importance` to the report.

    Raises Unavailable only when the artifact store cannot be reached; everything wrong with the
    model or its artifacts ends up in `Verdict.reasons`, and whatever stops the importance in its
    `error`.
    """
    importance = importance or ImportanceConfig()
    preload = SANDBOX_PRELOAD if importance.enabled else ()
    verdict = Verdict(report={"policy": policy.model_dump(mode="json", exclude={"updated_at"})})
    verdict.report["evaluator"] = f"onnxruntime {ort.__version__}"
    with tempfile.TemporaryDirectory(prefix="gallery-gate-") as tmp:
        optional = EXPLAINED_ROLES if importance.enabled else ()
        fetched = fetch_artifacts(store, version.artifacts, Path(tmp), optional=optional)
        if fetched.problems:
            verdict.reasons.extend(fetched.problems)
            return verdict
        test_split = version.artifacts["test_split"]  # type: ignore[index]
        verdict.report["test_split"] = {"uri": test_split.uri, "sha256": test_split.sha256}
        onnx_bytes = fetched.files["onnx"].read_bytes()
        try:
            model = OnnxModel(onnx_bytes, version.signature)
            if version.signature is not None:
                verdict.reasons.extend(signature_mismatches(version.signature, model.proto))
            split = HeldOutSplit.load(fetched.files["test_split"])
            task = _task(version)
            verdict.report.update(evaluate(model, split, task, version.class_names, latency, preload=preload))
        except EvaluationFailed as exc:
            verdict.reasons.append(str(exc))
            return verdict
        except Exception as exc:
            # Untrusted bytes can break numpy or ONNX Runtime in ways nobody listed; retrying will not
            # help, so this too is a reason to reject rather than a delivery to retry.
            log.warning("evaluation failed unexpectedly", model=version.name, version=version.version, exc_info=exc)
            verdict.reasons.append(f"the gate could not evaluate the model: {type(exc).__name__}: {exc}")
            return verdict
        verdict.reasons.extend(threshold_failures(policy, verdict.report))
        if champion is not None:
            _compare_with_champion(store, verdict, version, policy, champion, split, latency, Path(tmp))
        if importance.enabled:
            explained = explain_version(version, model, split, fetched.files, importance)
            verdict.report["feature_importance"] = explained.report
            verdict.explainer = explained.explainer
    return verdict


def _task(version: VersionPublic) -> Task:
    return "regression" if version.task == "regression" else "classification"


def _compare_with_champion(
    store: ArtifactStore,
    verdict: Verdict,
    version: VersionPublic,
    policy: ValidationPolicy,
    champion: VersionPublic,
    split: HeldOutSplit,
    latency: LatencyConfig,
    workdir: Path,
) -> None:
    """Evaluate the champion's ONNX on the challenger's split and add a reason if the challenger loses.

    A champion that cannot be evaluated blocks nothing (a broken production model must not stop
    its replacement); the report says why there was no comparison.
    """
    alias = policy.champion_alias
    entry: dict[str, Any] = {"alias": alias, "version": champion.version, "metric": policy.champion_metric}
    verdict.report["champion"] = entry
    if champion.version == version.version:
        entry["note"] = "this version is the champion"
        return
    problem: str | None = None
    champion_dir = workdir / "champion"
    champion_dir.mkdir()
    onnx_only = {role: a for role, a in champion.artifacts.items() if role == "onnx"}
    fetched = fetch_artifacts(store, onnx_only, champion_dir, download=("onnx",))
    if fetched.problems:
        problem = "; ".join(fetched.problems)
    else:
        onnx_bytes = fetched.files["onnx"].read_bytes()
        try:
            model = OnnxModel(onnx_bytes, champion.signature)
            metrics = evaluate(model, split, _task(version), version.class_names, latency)
        except EvaluationFailed as exc:
            problem = str(exc)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        entry["error"] = f"the champion could not be evaluated on this test split: {problem}"
        log.warning("champion not compared", model=version.name, champion=champion.version, reason=problem)
        return
    entry["value"] = metric_value(metrics, policy.champion_metric)
    entry["metrics"] = {k: v for k, v in metrics.items() if metric_value(metrics, k) is not None}
    result = ChampionResult(alias=alias, version=champion.version, metric=policy.champion_metric, value=entry["value"])
    failure = champion_failure(policy, verdict.report, result)
    if failure is not None:
        verdict.reasons.append(failure)
