"""Global feature importance of a version the gate evaluated: mean |SHAP| per feature group (each feature
of a table, each patch of a picture) over a sample of its test split, for the predicted class.

The untrusted model runs in a sandboxed child (`gallery_common.sandbox`), as the evaluation does, under
the same limits: the child gets the ONNX bytes, the explainer profile and the rows, and answers JSON.
`shap` is imported once in the forkserver (`SANDBOX_PRELOAD`, passed to the first sandboxed run of the
gate), so a child does not pay its ~1.5 s import, and its ~500 MiB of mappings are not counted against
the child's memory limit (the limit counts from what a child maps at its start).

Nothing here rejects a version: whatever stops the importance (no training split, a model that breaks on
the rows Kernel SHAP composes, a limit) is the `error` of the report's `feature_importance`.

Blocking (child processes, k-means, file reads): call from a worker thread.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gallery_common.explain.attributions import Explainer, ExplainRefused, global_importance
from gallery_common.explain.profile import ExplainerProfile, decode_profile, encode_profile
from gallery_common.sandbox import Limits
from gallery_common.telemetry import get_logger

from ..schemas import VersionPublic
from .evaluation import EvaluationFailed, HeldOutSplit, ModelSession, OnnxModel, run_in_sandbox
from .explainer import ExplainerUnavailable, ImportanceConfig, version_profile

log = get_logger(__name__)

SANDBOX_PRELOAD = (__name__, "shap")
# Kernel SHAP's regression over more groups than this needs far more coalitions than the gate can afford
MAX_GROUPS = 256
# per-feature values past this many features would swell the report and the model.validated event
MAX_FEATURE_VALUES = 4096


class ImportanceFailed(Exception):
    """Importance could not be computed; the message is the reason the report gives."""


@dataclass(frozen=True)
class VersionImportance:
    """The report's `feature_importance` entry, and the explainer profile to attach when the gate built one."""

    report: dict[str, Any]
    explainer: bytes | None = None


def explain_version(
    version: VersionPublic,
    model: OnnxModel,
    split: HeldOutSplit,
    files: Mapping[str, Path],
    config: ImportanceConfig,
    limits: Limits | None = None,
) -> VersionImportance:
    """Feature importance of `model` on a sample of `split`, with the version's explainer profile (built
    from the fetched `files` unless the version has one). Never raises for the model's or the data's sake."""
    if model.is_text:
        # Kernel SHAP over k-means background rows has no meaning for one string per row: words are occluded
        from .word_importance import word_importance

        return VersionImportance(word_importance(model, split.x, config, limits))
    try:
        found = version_profile(version, files, split.x.shape[1], config.seed)
    except ExplainerUnavailable as exc:
        return VersionImportance({"error": f"no explainer profile: {exc}"})
    except Exception as exc:
        # k-means and numpy over untrusted data can fail in ways nobody listed; no reason to retry the event
        log.warning("explainer profile not built", model=version.name, version=version.version, exc_info=exc)
        return VersionImportance({"error": f"no explainer profile: {type(exc).__name__}: {exc}"})
    try:
        report = importance_in_sandbox(model, found.profile, sample_rows(split.x, config), config, limits)
    except ImportanceFailed as exc:
        return VersionImportance({"error": str(exc)}, found.built)
    return VersionImportance(report, found.built)


def sample_rows(x: np.ndarray, config: ImportanceConfig) -> np.ndarray:
    """Up to `config.rows` rows of `x`, drawn without replacement with the configured seed, in file order."""
    if len(x) <= config.rows:
        return np.ascontiguousarray(x, dtype=np.float32)
    picked = np.sort(np.random.default_rng(config.seed).choice(len(x), size=config.rows, replace=False))
    return np.ascontiguousarray(x[picked], dtype=np.float32)


def importance_in_sandbox(
    model: OnnxModel, profile: ExplainerProfile, rows: np.ndarray, config: ImportanceConfig, limits: Limits | None
) -> dict[str, Any]:
    """`global_importance` of the model over `rows`, computed in a child under `limits` (default: the
    settings'), with `seed` and the wall time it took added; ImportanceFailed with the reason."""
    groups = profile.layout.groups().count
    if groups > MAX_GROUPS:
        raise ImportanceFailed(f"{groups} feature groups; the gate computes importance for at most {MAX_GROUPS}")
    limits = limits or Limits.from_settings()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gallery-importance-") as tmp:
        folder = Path(tmp)
        (folder / "model.onnx").write_bytes(model.data)
        (folder / "explainer.npz").write_bytes(encode_profile(profile))
        np.save(folder / "rows.npy", rows, allow_pickle=False)
        job = (str(folder), model.input.name, model.width, model.output_name, config.nsamples, config.seed)
        answer = run_in_sandbox(
            _importance_in_child,
            job,
            limits,
            what="feature importance",
            preload=SANDBOX_PRELOAD,
            failure=ImportanceFailed,
            crashed="the model could not be explained",
        )
    report = dict(answer["importance"])
    if len(report["values"]) > MAX_FEATURE_VALUES:
        report["values"] = None  # the groups (patches) still say it; a row this wide is not drawn per value
    report["seed"] = config.seed
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _importance_in_child(folder: str, input_name: str, width: int, output_name: str, nsamples: int, seed: int) -> bytes:
    """Runs in the sandbox: `{"importance": ...}` as JSON, or `{"error": reason}`."""
    here = Path(folder)
    profile = decode_profile((here / "explainer.npz").read_bytes())
    rows = np.load(here / "rows.npy", allow_pickle=False)
    try:
        model = (here / "model.onnx").read_bytes()
        session = ModelSession(model, input_name, width, output_name, rows="the rows Kernel SHAP composes")
        found = global_importance(Explainer(session.predict, profile), rows, nsamples, seed)
    except (EvaluationFailed, ExplainRefused) as exc:
        return json.dumps({"error": str(exc)}).encode()
    numbers = [g["importance"] for g in found["groups"]]
    if not all(math.isfinite(n) for n in numbers):
        return json.dumps({"error": "the model's outputs on the rows Kernel SHAP composes are not finite"}).encode()
    return json.dumps({"importance": found}).encode()
