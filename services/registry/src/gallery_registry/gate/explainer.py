"""The explainer profile of a version (`gallery_common.explain.profile`): built by the gate from the
version's training split and the trainer's spec, attached as the `explainer` artifact before the version
is marked validated, so `model.validated` names it and every model-server replica loads it as it is.

Building a profile reads data only (numpy, k-means): it is safe in the gate's own process; nothing here
runs the model. A version that already has an `explainer` (a redelivered `model.trained`, a revalidation)
keeps it: artifacts are immutable, and the gate explains with the profile the servers load.

Blocking (file reads, k-means, store I/O, SQL): call from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import NpzRefused, read_features
from gallery_common.errors import Conflict
from gallery_common.explain.layout import InputLayout
from gallery_common.explain.profile import (
    ExplainerProfile,
    ProfileRefused,
    build_profile,
    decode_profile,
    encode_profile,
)
from gallery_common.telemetry import get_logger

from ..schemas import ArtifactPublic, ArtifactRole, VersionPublic

if TYPE_CHECKING:
    from ..store import RegistryStore

log = get_logger(__name__)

ROLE = ArtifactRole.explainer
# k-means over more rows than this costs seconds and changes little: the profile summarises an even sample
PROFILE_MAX_ROWS = 20_000
# the trainer's spec is a few KiB (feature names included); a larger file is not read
SPEC_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ImportanceConfig:
    """Whether and how the gate computes global feature importance (GALLERY_GATE_IMPORTANCE*)."""

    enabled: bool = True
    rows: int = 32  # test-split rows explained
    nsamples: int = 400  # Kernel SHAP coalitions per row
    seed: int = 0


class ExplainerUnavailable(Exception):
    """The version cannot be given an explainer profile; the message says why (never a rejection)."""


@dataclass(frozen=True)
class VersionProfile:
    """The profile the gate explains the version with, and its NPZ bytes when the gate built it (to attach)."""

    profile: ExplainerProfile
    built: bytes | None


def version_profile(version: VersionPublic, files: Mapping[str, Path], features: int, seed: int = 0) -> VersionProfile:
    """The version's `explainer` if it has one, else a profile of its `train_split` (rows of `features`
    values), laid out by its signature and the trainer's `spec`. ExplainerUnavailable says why not."""
    if ROLE.value in files:
        try:
            profile = decode_profile(files[ROLE.value].read_bytes(), name="the version's explainer artifact")
        except ProfileRefused as exc:
            raise ExplainerUnavailable(str(exc)) from None
        if profile.layout.features != features:
            raise ExplainerUnavailable(
                f"the version's explainer artifact describes rows of {profile.layout.features} values; "
                f"the model takes {features}"
            )
        return VersionProfile(profile, None)
    if ArtifactRole.train_split.value not in files:
        raise ExplainerUnavailable("the version has no train_split artifact to summarise as the explainer's background")
    try:
        x, _ = read_features(files[ArtifactRole.train_split.value], name="train split")
    except NpzRefused as exc:
        raise ExplainerUnavailable(str(exc)) from None
    if x.shape[1] != features:
        raise ExplainerUnavailable(f"the train split has {x.shape[1]} features; the model takes {features}")
    if not np.isfinite(x).all():
        raise ExplainerUnavailable("the train split holds NaN or infinite values")
    layout = version_layout(version, features, read_spec(files.get(ArtifactRole.spec.value)))
    train_split = version.artifacts[ArtifactRole.train_split]  # type: ignore[index]
    profile = build_profile(
        _even_sample(x, PROFILE_MAX_ROWS, seed),
        layout,
        task="regression" if version.task == "regression" else "classification",
        class_names=version.class_names,
        source_sha256=train_split.sha256,
        seed=seed,
    )
    return VersionProfile(profile, encode_profile(profile))


def read_spec(path: Path | None) -> dict[str, Any] | None:
    """The trainer's spec (JSON object) for the layout; None when absent, too large or not one."""
    if path is None or path.stat().st_size > SPEC_MAX_BYTES:
        return None
    try:
        spec = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None
    return spec if isinstance(spec, dict) else None


def version_layout(version: VersionPublic, features: int, spec: dict[str, Any] | None) -> InputLayout:
    """How a row of the version is laid out: its signature's input shape, and what the trainer's spec says
    (picture shape, feature names). A spec whose fields are not the types the trainer writes is the
    producer's mistake, not the model's: the layout is then read from the signature alone."""
    signature = version.signature
    shape = list(signature.inputs[0].shape) if signature is not None and signature.inputs else None
    try:
        return InputLayout.of(features, shape, spec)
    except (AttributeError, TypeError, ValueError) as exc:
        log.info("spec not used for the layout", model=version.name, version=version.version, reason=str(exc))
        return InputLayout.of(features, shape, None)


def _even_sample(x: np.ndarray, rows: int, seed: int) -> np.ndarray:
    if len(x) <= rows:
        return x
    picked = np.sort(np.random.default_rng(seed).choice(len(x), size=rows, replace=False))
    return x[picked]


def explainer_key(name: str, version: int, sha256: str) -> str:
    """Beside the version's generated card (`model_card.card_key`), content-addressed the same way."""
    return f"explainers/{name}/{version}/explainer-{sha256[:16]}.npz"


def attach_explainer(
    registry: RegistryStore, store: ArtifactStore, version: VersionPublic, data: bytes
) -> ArtifactPublic:
    """Store `data` and record it as the version's `explainer`; a version that has one keeps it.

    Raises Unavailable (from the store or the database) when either cannot be reached, so the event is
    retried; the same bytes stored again land on the same key.
    """
    found = version.artifacts.get(ROLE)
    if found is not None:
        return found
    ref = store.put(explainer_key(version.name, version.version, hashlib.sha256(data).hexdigest()), data)
    try:
        return registry.attach_artifact(version.name, version.version, ROLE, ref.model_copy(update={"format": "npz"}))
    except Conflict:
        # another gate replica attached its own profile first: artifacts are immutable, keep that one
        kept = registry.get_version(version.name, version.version).artifacts[ROLE]
        log.info("explainer already attached", model=version.name, version=version.version, uri=kept.uri)
        return kept
