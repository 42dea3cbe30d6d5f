"""The model server's explain path: read an explain request, hold it to the policy's caps, have the explain
pool (`explain_pool.py`) compute it, and answer `gallery_common.explain.answer.ExplainAnswer`.

Transport-agnostic like `DataPlane.infer`: the REST app hands over a body as received and turns the answer's
bytes, or the GalleryError raised instead, into its reply. The request is an OIP v2 infer request, parsed
by the same codec, plus top-level `parameters`: `method` (`shap` or `lime`, default `shap`), `target`
(a class index; default each row's predicted class), `nsamples` (default per method), `seed` (default 0)
and `patch` (the side of a picture's square patches). Other parameters are left to the OIP.

What a client gets instead of an answer:

- 400: the body is not an infer request for this model, a parameter is unknown in kind or over a cap
  (`GALLERY_EXPLAIN_MAX_NSAMPLES`, `GALLERY_EXPLAIN_MAX_ROWS`), a target the model does not have, rows of
  another width than the explainer's;
- 404: the model or version is not served here, or the version has no explainer data. A version validated
  before explanations existed has none; 404 says the explain resource of that version does not exist, as
  an OIP client is told for a model that does not. (KServe answers 501 for a model without an explainer,
  but a 5xx tells the gateway the backend failed: it would count against its circuit breaker and fall
  back to another version, which would then explain a model the client did not ask about.)
- 503 with Retry-After: the explain queue is full (`GALLERY_EXPLAIN_MAX_QUEUE`), or the explanation ran
  past `GALLERY_EXPLAIN_TIMEOUT_S` and was stopped;
- 500: the explainer artifact cannot be read or used, or a worker cannot start (the reason says which).

The explainer artifact (and the model's bytes, for the workers) are fetched from the artifact store by
the first explain request, sha256-checked, and kept; the profile is decoded under GALLERY_MAX_SPLIT_BYTES.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts.oip import InferRequest, TensorSpec, parse_infer_request
from gallery_common.errors import ArtifactError, BadRequest, GalleryError, NotFound
from gallery_common.explain.answer import ExplainAnswer, ExplainParameters, RowAttributions, explainer_name
from gallery_common.explain.attributions import DEFAULT_NSAMPLES, METHODS, ExplainSettings
from gallery_common.explain.layout import FeatureGroups
from gallery_common.explain.profile import ExplainerProfile, ProfileRefused, decode_profile

from .dataplane import DataPlane, outcome_of
from .explain_pool import ExplainedRow, ExplainPool, ExplainTimedOut, WorkerFailed, WorkerSetup
from .metrics import EXPLAIN_TIMEOUT
from .settings import ModelServerSettings

MAX_SEED = 2**32 - 1  # numpy's legacy global generator, which Kernel SHAP samples from, takes no more


class NoExplainer(NotFound):
    """The served version cannot be explained: it has no explainer data, or a model explanations cannot feed."""


class ExplainerUnusable(GalleryError):
    """The explainer artifact cannot be fetched or decoded (500); the message says why."""


class ExplainObserver(Protocol):
    """Told how each explain request ended and how long it took (`metrics.ExplainMetrics`)."""

    def explained(self, method: str, outcome: str, seconds: float) -> None: ...


def read_settings(parameters: Mapping[str, Any] | None, max_nsamples: int) -> ExplainSettings:
    """The explanation a request's `parameters` ask for, defaults filled in; BadRequest says what is wrong."""
    given = parameters or {}
    method = given.get("method", "shap")
    if method not in METHODS:
        raise BadRequest(f"parameters.method {method!r} is not an explanation method here; use 'shap' or 'lime'")
    nsamples = _whole(given, "nsamples", 1)
    if nsamples is None:
        nsamples = min(DEFAULT_NSAMPLES[method], max_nsamples)
    elif nsamples > max_nsamples:
        raise BadRequest(
            f"parameters.nsamples {nsamples} is over this server's cap of {max_nsamples} (GALLERY_EXPLAIN_MAX_NSAMPLES)"
        )
    seed = _whole(given, "seed", 0, MAX_SEED)
    return ExplainSettings(method, _whole(given, "target", 0), nsamples, seed or 0, _whole(given, "patch", 1))


def _whole(given: Mapping[str, Any], key: str, minimum: int, maximum: int | None = None) -> int | None:
    value = given.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"parameters.{key} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise BadRequest(f"parameters.{key} must be {bounds}, got {value}")
    return value


@dataclass(frozen=True)
class _Loaded:
    profile: ExplainerProfile
    pool: ExplainPool


class Explanations:
    """Explains requests for the model `plane` serves, under `settings`' caps, with artifacts from `store`."""

    def __init__(
        self,
        plane: DataPlane,
        settings: ModelServerSettings,
        store: ArtifactStore,
        observer: ExplainObserver | None = None,
    ) -> None:
        self._plane = plane
        self._settings = settings
        self._store = store
        self._observer = observer
        self._lock = asyncio.Lock()
        self._loaded: _Loaded | None = None

    async def explain(
        self,
        body: bytes,
        header_length: str | None = None,
        *,
        name: str,
        version: str | None = None,
        started: float | None = None,
    ) -> bytes:
        """The JSON `ExplainAnswer` to one explain request body; raises the GalleryError it ended with."""
        started = time.perf_counter() if started is None else started
        method = "unknown"
        try:
            self._plane.check_model(name, version)
            model = self._plane.model
            if model.inputs and model.inputs[0].datatype == "BYTES":
                # attributions per feature have no meaning for one raw text per row; the gate ranks words instead
                raise NoExplainer(
                    f"model {model.name!r} takes texts: per-request explanations are not available for text "
                    "models; the validation gate's word importance is in the version's evaluation report"
                )
            if not self._settings.explainer_uri:
                raise NoExplainer(
                    f"model {model.name!r} version {model.version!r} has no explainer data (it was validated "
                    "before explanations existed; validate it again)"
                )
            request = parse_infer_request(body, model.inputs, model.outputs, header_length)
            settings = read_settings(request.parameters, self._settings.explain_max_nsamples)
            method = settings.method
            answer = await self._explain(request, settings)
        except GalleryError as exc:
            self._observe(method, EXPLAIN_TIMEOUT if isinstance(exc, ExplainTimedOut) else outcome_of(exc), started)
            raise
        self._observe(method, "ok", started)
        return answer

    async def close(self) -> None:
        """Stop the workers; what still waits is answered 503."""
        if self._loaded is not None:
            await self._loaded.pool.close()

    async def _explain(self, request: InferRequest, settings: ExplainSettings) -> bytes:
        spec = _explained_input(self._plane.model.inputs)
        array = request.inputs[spec.name]
        rows = array.reshape(len(array), -1)
        if not 0 < len(rows) <= self._settings.explain_max_rows:
            raise BadRequest(
                f"{len(rows)} rows to explain; this server explains 1 to {self._settings.explain_max_rows} rows "
                "per request (GALLERY_EXPLAIN_MAX_ROWS)"
            )
        loaded = await self._load()
        layout = loaded.profile.layout
        if rows.shape[1] != layout.features:
            raise BadRequest(
                f"a row of input {spec.name!r} holds {rows.shape[1]} values; this version's explainer expects "
                f"{layout.features}"
            )
        groups = _groups(loaded.profile, settings.patch)
        explained = await loaded.pool.explain(rows, array.shape[1:], settings, groups.count)
        shape = list(array.shape[1:]) or [1]  # a row of a 1-D input is one value
        return self._answer(request, settings, loaded.profile, groups, shape, explained)

    def _answer(
        self,
        request: InferRequest,
        settings: ExplainSettings,
        profile: ExplainerProfile,
        groups: FeatureGroups,
        shape: list[int],
        explained: list[ExplainedRow],
    ) -> bytes:
        layout = profile.layout
        rows = []
        for row in explained:
            values = np.asarray(row.groups, dtype=np.float64)
            if values.shape != (groups.count,):
                raise WorkerFailed(f"the explain worker sent {values.size} group values for {groups.count} groups")
            rows.append(
                RowAttributions(
                    target=row.target,
                    target_name=profile.class_name(row.target),
                    predicted=row.predicted,
                    output=row.output,
                    base_value=row.base_value,
                    attributions=groups.spread(values).reshape(shape).tolist(),
                    group_attributions=values.tolist(),
                    details=row.details,
                )
            )
        model = self._plane.model
        answer = ExplainAnswer(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            method=settings.method,
            explainer=explainer_name(settings.method, layout.image_shape is not None),
            parameters=ExplainParameters(
                nsamples=settings.nsamples,
                seed=settings.seed,
                target=settings.target,
                patch=groups.patch,
                background_rows=len(profile.background),
            ),
            # the explainer gives a classifier's probabilities; a predicted class says it had classes
            output="probability" if explained and explained[0].predicted is not None else "value",
            shape=shape,
            image_shape=None if layout.image_shape is None else list(layout.image_shape),
            feature_names=None if layout.feature_names is None else list(layout.feature_names),
            groups=groups.names,
            explanations=rows,
        )
        return answer.model_dump_json().encode()

    async def _load(self) -> _Loaded:
        """The decoded profile and the worker pool, made by the first explain request."""
        async with self._lock:
            if self._loaded is None:
                profile, setup = await anyio.to_thread.run_sync(self._fetch)
                s = self._settings
                pool = ExplainPool(
                    setup,
                    workers=s.explain_workers,
                    max_queue=s.explain_max_queue,
                    timeout_s=s.explain_timeout_s,
                    cpu_share=s.explain_cpu_share,
                )
                self._loaded = _Loaded(profile, pool)
            return self._loaded

    def _fetch(self) -> tuple[ExplainerProfile, WorkerSetup]:
        """Fetch (sha256-checked) and decode the explainer artifact, and fetch the model's bytes for the workers."""
        s, store = self._settings, self._store
        model = self._plane.model
        label = f"the explainer artifact of {model.name}:{model.version}"
        try:
            data = store.get(store.key_for(s.explainer_uri), sha256=s.explainer_sha256)
            profile = decode_profile(data, name=label, max_bytes=s.max_split_bytes)
            onnx = store.get(store.key_for(s.artifact_uri), sha256=s.artifact_sha256)
        except ArtifactError as exc:
            raise ExplainerUnusable(f"{label} cannot be read: {exc.message}") from None
        except ProfileRefused as exc:  # its message names the artifact (`label`) and the reason
            raise ExplainerUnusable(str(exc)) from None
        spec = _explained_input(model.inputs)
        setup = WorkerSetup(
            model=onnx,
            profile=data,
            input_name=spec.name,
            input_dtype=spec.dtype.name,
            batched=spec.batched,
            output_name=model.outputs[0].name,
        )
        return profile, setup

    def _observe(self, method: str, outcome: str, started: float) -> None:
        if self._observer is not None:
            self._observer.explained(method, outcome, time.perf_counter() - started)


def _explained_input(inputs: tuple[TensorSpec, ...]) -> TensorSpec:
    """The model's one input, if explanations can feed it: floating point, with the batch first (or one row)."""
    if len(inputs) != 1:
        raise NoExplainer(f"explanations need a model with one input; this one has {len(inputs)}")
    spec = inputs[0]
    if spec.dtype.kind != "f":
        raise NoExplainer(
            f"explanations vary the input's values, so they need a floating-point input; {spec.name!r} is "
            f"{spec.datatype}"
        )
    if not (spec.batched or (spec.shape and spec.shape[0] == 1)):
        raise NoExplainer(f"input {spec.name!r} has shape {list(spec.shape)}; its first dimension must be the batch")
    return spec


def _groups(profile: ExplainerProfile, patch: int | None) -> FeatureGroups:
    picture = profile.layout.image_shape
    if patch is not None:
        if picture is None:
            raise BadRequest("parameters.patch applies to pictures; this model's rows are tables")
        if patch > max(picture[1:]):
            raise BadRequest(f"parameters.patch {patch} is larger than the picture ({picture[1]}x{picture[2]})")
    return profile.layout.groups(patch)
