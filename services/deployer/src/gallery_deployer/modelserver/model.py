"""The served model: fetched from the artifact store, verified, loaded into ONNX Runtime, warmed up."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from gallery_common.artifacts import open_store
from gallery_common.contracts.oip import TensorSpec
from gallery_common.onnx_safety import verify_self_contained_onnx

from .providers import CPU, ProviderChoice, ProviderOptions, choose_provider, default_preference
from .settings import ModelServerSettings
from .tensors import spec_from_ort

WARMUP_RUNS = 3
SPINNING_CONFIG = "session.intra_op.allow_spinning"


@dataclass
class ServedModel:
    """One ONNX Runtime session and the signature clients see in the model metadata."""

    name: str
    version: str
    variant: str
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    execution_provider: str = CPU  # ONNX Runtime's name of the provider that runs the session
    provider_fallback: str | None = None  # why the policy's earlier providers were passed over

    @property
    def batchable(self) -> bool:
        """Requests can be stacked when every input and output has a free first dimension."""
        return all(spec.batched for spec in (*self.inputs, *self.outputs))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session (blocking: call it from a worker thread) and return every output by name."""
        names = [spec.name for spec in self.outputs]
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, (np.asarray(v) for v in values), strict=True))

    def warm_up(self, max_batch_size: int) -> float:
        """A few inferences at batch 1 and at the largest batch; returns the seconds spent."""
        started = time.perf_counter()
        sizes = (1, max_batch_size) if self.batchable else (1,)
        for rows in sizes:
            feeds = {spec.name: _zeros(spec, rows) for spec in self.inputs}
            for _ in range(WARMUP_RUNS):
                self.run(feeds)
        return time.perf_counter() - started


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray:
    shape = [rows if i == 0 and d == -1 else (d if d != -1 else 1) for i, d in enumerate(spec.shape)]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


def providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it, the CPU always as the fallback."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, CPU]


def session_from_bytes(
    data: bytes,
    intra_op_threads: int = 0,
    *,
    gpu: bool = True,
    spinning: bool = False,
    provider: str | None = None,
    provider_options: ProviderOptions | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session over verified bytes (never a path: no folder to resolve external data in).

    `provider` (ONNX Runtime's name) runs it, with the CPU under it for the operators it lacks; without
    one, CUDA where available, and `gpu=False` keeps it on the CPU. Its intra-op threads spin between runs
    only with `spinning` (ONNX Runtime's default is to spin, which costs a core's time while idle)."""
    verify_self_contained_onnx(data)
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(SPINNING_CONFIG, "1" if spinning else "0")
    if provider is None:
        return ort.InferenceSession(data, sess_options=options, providers=providers() if gpu else [CPU])
    chosen = [provider] if provider == CPU else [provider, CPU]
    per_provider = provider_options or ProviderOptions()
    return ort.InferenceSession(
        data,
        sess_options=options,
        providers=chosen,
        provider_options=[per_provider.for_provider(p) for p in chosen],
    )


def served_model(session: ort.InferenceSession, name: str, version: str, variant: str) -> ServedModel:
    """Wrap a session with its OIP signature."""
    inputs = tuple(spec_from_ort(i.name, i.type, list(i.shape)) for i in session.get_inputs())
    outputs = tuple(spec_from_ort(o.name, o.type, list(o.shape)) for o in session.get_outputs())
    return ServedModel(name, version, variant, session, inputs, outputs)


def load_model(settings: ModelServerSettings) -> ServedModel:
    """Fetch the artifact (sha256-checked), verify it, then load and warm it up on the first execution
    provider of the settings' preference that loads it; raises with the reason on failure."""
    store = open_store(settings.resolved_artifact_root, settings)
    data = store.get(store.key_for(settings.artifact_uri), sha256=settings.artifact_sha256)
    verify_self_contained_onnx(data)  # once, before any provider sees the bytes
    options = settings.provider_options()

    def load(provider: str) -> tuple[ServedModel, list[str]]:
        session = session_from_bytes(
            data, settings.intra_op_threads, spinning=settings.intra_op_spinning, provider=provider,
            provider_options=options,
        )  # fmt: skip
        model = served_model(session, settings.model_name, settings.model_version, settings.variant)
        model.warm_up(settings.max_batch_size)
        return model, session.get_providers()

    available = ort.get_available_providers()
    preference = settings.execution_providers or default_preference(available)
    choice: ProviderChoice[ServedModel] = choose_provider(preference, available, load)
    choice.loaded.execution_provider = choice.provider
    choice.loaded.provider_fallback = choice.fallback
    return choice.loaded
