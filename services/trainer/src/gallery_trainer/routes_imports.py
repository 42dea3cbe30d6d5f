"""REST adapter over `ModelImporter`: POST /api/v1/imports, a classifier trained elsewhere as a new version."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile

from gallery_common.audit import AuditAction, AuditChange
from gallery_common.auth import body_limit
from gallery_common.deps import CallerDep
from gallery_common.errors import Unavailable
from gallery_common.project_scope import ScopeDep

from .imports import ImportPublic, ImportRequest
from .onnx_adapt import ModelRefused, Scores, Task
from .routes_jobs import JobsDep

router = APIRouter(prefix="/api/v1", tags=["imports"])


async def _read(upload: UploadFile, what: str, limit: int) -> bytes:
    """The uploaded file's bytes, refused past `limit` without reading the rest."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ModelRefused(f"{what} is over the limit of {limit} bytes")
    if not data:
        raise ModelRefused(f"{what} is empty")
    return data


@router.post("/imports", status_code=201, response_model=ImportPublic)
@body_limit("max_import_bytes")
async def import_model(
    jobs: JobsDep,
    scope: ScopeDep,
    caller: CallerDep,
    model: Annotated[str, Form(description="the registered model's name (new or existing)")],
    onnx: Annotated[UploadFile, File(description="the classifier: one ONNX file, weights inside")],
    train: Annotated[UploadFile, File(description="NPZ (x, y): rows the model was trained on")],
    test: Annotated[UploadFile, File(description="NPZ (x, y): rows it never saw, which the gate evaluates")],
    validation: Annotated[UploadFile | None, File(description="NPZ (x, y): the canary's replay; default test")] = None,
    class_names: Annotated[list[str] | None, Form(description="one per class, in index order")] = None,
    feature_names: Annotated[
        list[str] | None, Form(description="one per feature, in column order (explanations name them)")
    ] = None,
    scores: Annotated[Scores, Form(description="what the output holds; auto: probabilities after a ZipMap")] = "auto",
    task: Annotated[Task, Form(description="a classifier's class scores, or a regressor's predictions")] = (
        "classification"
    ),
    project: Annotated[str | None, Form()] = None,
) -> ImportPublic:
    """Import a classifier (or, with task `regression`, a regressor) trained elsewhere (scikit-learn through
    skl2onnx, PyTorch, ...): adapted to the `features` / `logits` contract (a text classifier, whose one
    input takes strings, to `text` / `logits`, its splits' x one text per row), checked on the test rows in a
    sandbox, stored, and announced as `model.trained`, so that the gate validates it and the rest of the
    lifecycle takes it as any version.

    The answer lists every change made to the file. The same import sent again is the same run and
    event (`already_imported`). Needs the writer role in the project (the form's `project`, else the
    X-Gallery-Project header's, else the caller's home project)."""
    if jobs.importer is None:
        raise Unavailable("this trainer cannot import models (it has no artifact store or bus)")
    settings = jobs.importer.settings
    request = ImportRequest(
        model=model,
        onnx=await _read(onnx, "the ONNX file", settings.max_artifact_bytes),
        filename=onnx.filename or "model.onnx",
        train=await _read(train, "the train split", settings.max_split_bytes),
        test=await _read(test, "the test split", settings.max_split_bytes),
        validation=await _read(validation, "the validation split", settings.max_split_bytes) if validation else None,
        class_names=class_names or None,
        scores=scores,
        project=project,
        task=task,
        feature_names=feature_names or None,
    )
    imported = await anyio.to_thread.run_sync(jobs.importer.run, request, scope.home)
    if jobs.trail is not None and not imported.already_imported:
        change = AuditChange(
            project=imported.project,
            actor=caller.name,
            action=AuditAction.model_imported,
            target=f"run/{imported.run_id}",
            model=imported.model,
            after={"run_id": imported.run_id, "file": request.filename, "changes": imported.changes},
            dedupe_key=imported.event_id,
        )
        await jobs.trail.record(change)
    return imported
