"""Fetching a version's artifacts for the gate, every one checked against its recorded sha256.

A missing, corrupt or out-of-store artifact is a reason to reject the version; an unreachable
store is not (it raises Unavailable, so the event is retried).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gallery_common.artifacts import ArtifactStore
from gallery_common.errors import ArtifactError, ArtifactNotFound, IntegrityError, InvalidKey

from ..schemas import ArtifactPublic, ArtifactRole

# What the gate itself loads; every other artifact is only verified.
EVALUATED_ROLES = ("onnx", "test_split")
# What explaining the version needs (gate/explainer.py), loaded when the version has them: the training
# split and the trainer's spec to build the explainer profile from, or the profile attached earlier.
EXPLAINED_ROLES = ("train_split", "spec", "explainer")


@dataclass
class FetchedArtifacts:
    """Local copies of the roles asked for, and what was wrong with any artifact."""

    files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def fetch_artifacts(
    store: ArtifactStore,
    artifacts: Mapping[ArtifactRole, ArtifactPublic] | Mapping[str, ArtifactPublic],
    dest: Path,
    *,
    download: Collection[str] = EVALUATED_ROLES,
    optional: Collection[str] = (),
) -> FetchedArtifacts:
    """Download the `download` roles (each one required) and the `optional` roles the version has into
    `dest`, and verify every other artifact in place.

    Raises Unavailable (from the store) when the store cannot be reached.
    """
    fetched = FetchedArtifacts()
    for key, artifact in sorted(artifacts.items()):
        role = str(key)
        try:
            if role in download or role in optional:
                fetched.files[role] = store.download(artifact.uri, dest / role, artifact.sha256)
            else:
                store.verify(artifact.uri, artifact.sha256)
        except ArtifactNotFound:
            fetched.problems.append(f"artifact {role} is missing: nothing is stored at {artifact.uri}")
        except IntegrityError as exc:
            fetched.problems.append(f"artifact {role} failed its sha256 check: {exc.message}")
        except InvalidKey as exc:
            fetched.problems.append(f"artifact {role} is outside the registry's artifact store: {exc.message}")
        except ArtifactError as exc:
            fetched.problems.append(f"artifact {role} cannot be read: {exc.message}")
    for role in download:
        if role not in artifacts:
            fetched.problems.append(f"no {role} artifact: the gate needs it to evaluate the model")
    return fetched
