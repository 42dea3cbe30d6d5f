"""A finished run's outputs: uploaded under `runs/<run_id>/`, then announced as `model.trained`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gallery_common.artifacts import ArtifactStore
from gallery_common.events import ArtifactRef, Lineage, ModelTrained

if TYPE_CHECKING:
    from .pipeline import JobOutputs

PublishFn = Callable[[ModelTrained, str], object]
"""Publishes a payload under an event id, blocking until JetStream stored it."""

CURVES_ROLE = "curves"


def event_id_for(job_id: str) -> str:
    """The event id of a job's `model.trained`: fixed by the job, so a retried publish, or the publish of
    a replica that took the job over, is stored once (JetStream's duplicate window, then the registry's
    source_event_id)."""
    return f"trained:{job_id}"


def run_key(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{name}"


def upload_outputs(
    store: ArtifactStore, run_id: str, files: Mapping[str, Path], extra: Mapping[str, tuple[str, bytes]]
) -> dict[str, ArtifactRef]:
    """Store every output file (role -> path) and every extra (role -> (file name, bytes)).

    Keys keep the file names training chose; two roles with one file name get the role prefixed.
    """
    refs: dict[str, ArtifactRef] = {}
    used: set[str] = set()

    def key_for(role: str, name: str) -> str:
        if name in used:
            name = f"{role}-{name}"
        used.add(name)
        return run_key(run_id, name)

    for role, path in sorted(files.items()):
        ref = store.put(key_for(role, path.name), Path(path))
        refs[role] = ref.model_copy(update={"format": path.suffix.lstrip(".") or None})
    for role, (name, content) in sorted(extra.items()):
        ref = store.put(key_for(role, name), content)
        refs[role] = ref.model_copy(update={"format": Path(name).suffix.lstrip(".") or None})
    return refs


def trained_payload(
    *,
    model: str,
    project: str,
    run_id: str,
    job_id: str,
    outputs: JobOutputs,
    artifacts: Mapping[str, ArtifactRef],
) -> ModelTrained:
    """The `model.trained` payload of a finished run, in the job's project (where the registry
    registers the model)."""
    return ModelTrained(
        model=model,
        project=project,
        run_id=run_id,
        artifacts=dict(artifacts),
        task=outputs.task,  # type: ignore[arg-type]
        class_names=list(outputs.class_names) if outputs.class_names is not None else None,
        signature=outputs.signature,
        metrics={k: float(v) for k, v in outputs.metrics.items()},
        lineage=Lineage(
            training_job_id=job_id,
            dataset_fingerprint=outputs.dataset_fingerprint,
            config_hash=outputs.config_hash,
            federation=outputs.federation,
        ),
    )


def artifacts_json(refs: Mapping[str, ArtifactRef]) -> dict[str, Any]:
    return {role: ref.model_dump(mode="json", exclude_none=True) for role, ref in refs.items()}
