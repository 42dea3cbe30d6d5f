"""Batch inference jobs from JetStream: `infer.jobs.<model>` in, NPZ files and status messages out.

A job message is `{"job_id", "input": {"uri", "sha256"}, "output_prefix"}`. The input NPZ holds one
array per model input, named after it (a single-input model also takes an array named `x`). The
outputs are written to `batch-outputs/<model>/<output_prefix>/<job_id>.npz` in the artifact store
(the model server writes nowhere else), so a redelivered job writes the same key again. Progress and
the final state go to `infer.jobs.status.<job_id>` as JSON `{job_id, state, done, total, output |
error}`; they land in the INFER_JOBS stream too, so a client that looks late can still read a job's
last state.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Mapping

import anyio
import numpy as np
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js import errors as js_errors
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gallery_common.artifacts import ArtifactStore
from gallery_common.artifacts.base import validate_prefix
from gallery_common.contracts import NpzRefused, NpzUnreadable, read_npz
from gallery_common.contracts.names import JOB_STATUS_PREFIX, JOBS_PREFIX, jobs_subject, subject_token
from gallery_common.contracts.oip import TensorSpec
from gallery_common.errors import GalleryError, Unavailable
from gallery_common.telemetry import get_logger

from .model import ServedModel

STREAM = "INFER_JOBS"
OUTPUTS_ROOT = "batch-outputs"
_STREAM_NAME_IN_USE = 10058
_RETRY_DELAY_S = 2.0
_PROGRESS_UPDATES = 20  # at most this many progress messages per job, however many chunks it has
_STREAM_MAX_AGE_S = 7 * 24 * 3600.0

log = get_logger(__name__)


class JobInput(BaseModel):
    """The input NPZ in the artifact store and the sha256 it must have."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InferJob(BaseModel):
    """One batch inference job."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    input: JobInput
    output_prefix: str = Field(min_length=1)


class JobFailed(GalleryError):
    """A job that can never succeed as sent; it is terminated with this reason."""

    status_code = 400


def status_subject(job_id: str) -> str:
    """The subject a job's progress and result are published on."""
    return f"{JOB_STATUS_PREFIX}{job_id}"


def output_key(model: str, prefix: str, job_id: str) -> str:
    """Where a job's outputs go: always under `OUTPUTS_ROOT/<model>/`, the model server's own part of the store.

    A job names only a folder below that, so no job can overwrite another key (a version's test split,
    a model file) whatever `output_prefix` it sends.
    """
    folder = "/".join(part for part in (OUTPUTS_ROOT, model, prefix.strip("/")) if part)
    return f"{folder}/{job_id}.npz"


def durable_name(model: str) -> str:
    """The pull consumer a model's replicas share (durable names allow no dots: see `subject_token`)."""
    return "modelserver-" + subject_token(model)


def stream_config() -> api.StreamConfig:
    """INFER_JOBS: every job and status subject, on disk, kept a week."""
    return api.StreamConfig(
        name=STREAM,
        subjects=[f"{JOBS_PREFIX}>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=_STREAM_MAX_AGE_S,
    )


async def ensure_stream(js: JetStreamContext) -> None:
    """Create INFER_JOBS, or bring an existing one to this configuration."""
    try:
        await js.add_stream(stream_config())
    except js_errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        await js.update_stream(stream_config())


def parse_job(data: bytes) -> InferJob:
    """The job in a message body; JobFailed says what is wrong with it."""
    try:
        return InferJob.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise JobFailed(f"malformed job: {problems}") from None


def job_id_of(data: bytes) -> str | None:
    """The job id of a message, if it has a usable one even though the rest is malformed."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    job_id = document.get("job_id") if isinstance(document, dict) else None
    return job_id if isinstance(job_id, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", job_id) else None


def read_inputs(
    data: bytes, specs: tuple[TensorSpec, ...], max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """The model's inputs from NPZ bytes, checked against its signature, and their row count.

    Read by `gallery_common.contracts`: declared sizes checked against `max_bytes` (default
    GALLERY_MAX_SPLIT_BYTES) before anything is inflated, object arrays refused, arrays the model does not
    take never inflated. JobFailed says why the input is refused.
    """
    wanted = [spec.name for spec in specs]
    if len(specs) == 1 and specs[0].name != "x":
        wanted.append("x")  # a single-input model also takes an array named `x`
    try:
        contents = read_npz(data, wanted=wanted, name="the input NPZ", max_bytes=max_bytes)
    except NpzUnreadable as exc:
        raise JobFailed(f"the input is not a readable NPZ file: {exc.detail}") from None
    except NpzRefused as exc:
        raise JobFailed(str(exc)) from None
    arrays = contents.arrays
    if len(specs) == 1 and specs[0].name not in arrays and "x" in arrays:
        arrays[specs[0].name] = arrays["x"]
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in arrays:
            found = ", ".join(contents.names) or "none"
            raise JobFailed(f"the input NPZ has no array {spec.name!r} (it has: {found})")
        feeds[spec.name] = _check_array(arrays[spec.name], spec)
    rows = {array.shape[0] for array in feeds.values()}
    if len(rows) != 1:
        raise JobFailed(f"the input arrays disagree on their number of rows: {sorted(rows)}")
    return feeds, rows.pop()


def _check_array(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if array.ndim != len(spec.shape) or array.ndim == 0:
        raise JobFailed(f"array {spec.name!r} has shape {list(array.shape)}; the model expects {list(spec.shape)}")
    for got, want in zip(array.shape[1:], spec.shape[1:], strict=True):
        if want != -1 and got != want:
            raise JobFailed(f"array {spec.name!r} has shape {list(array.shape)}; the model expects {list(spec.shape)}")
    # Float64 data for an FP32 model is fine; integers for a float model (or the reverse) are a mistake.
    kinds = "USO" if spec.datatype == "BYTES" else spec.dtype.kind
    if array.dtype.kind not in kinds or not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
        raise JobFailed(f"array {spec.name!r} has dtype {array.dtype}; the model expects {spec.datatype}")
    return np.ascontiguousarray(array, dtype=spec.dtype)


def write_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """NPZ bytes of the arrays."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


class BatchJobRunner:
    """Takes one job at a time from the model's durable pull consumer and runs it to its end."""

    def __init__(
        self, model: ServedModel, store: ArtifactStore, chunk_rows: int, ack_wait: float = 30.0, max_deliver: int = 5
    ) -> None:
        self._model = model
        self._store = store
        self._chunk = chunk_rows if model.batchable else 1
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._nc: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, nc: Client, js: JetStreamContext) -> None:
        """Ensure the stream and the consumer, then take jobs until closed."""
        self._nc = nc
        await ensure_stream(js)
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self._ack_wait, max_deliver=self._max_deliver
        )
        subject = jobs_subject(self._model.name)
        sub = await js.pull_subscribe(subject, durable=durable_name(self._model.name), config=config)
        self._sub = sub
        self._task = asyncio.get_running_loop().create_task(self._loop(sub), name="infer-jobs")
        log.info("infer_jobs_consuming", subject=subject, durable=durable_name(self._model.name))

    async def close(self) -> None:
        """Stop taking jobs; a job cut short is redelivered once its ack wait runs out."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sub is not None:
            # a fetch cut short leaves its pull request open; without this the connection's drain waits for it
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await sub.fetch(1, timeout=5)
            except TimeoutError:
                continue
            except Exception as exc:  # a reconnect in progress; the next fetch will tell
                log.warning("infer_jobs_fetch_failed", reason=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(_RETRY_DELAY_S)
                continue
            for msg in messages:
                await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        """Run one job message and ack, term or nak it."""
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(msg))
        try:
            job = parse_job(msg.data)
            await self._run(job)
        except (JobFailed, GalleryError) as exc:
            if isinstance(exc, Unavailable) and not self._last_delivery(msg):
                await msg.nak(delay=_RETRY_DELAY_S)
                log.warning("infer_job_retry", reason=exc.message)
                return
            await self._fail(msg, exc.message)
        except Exception as exc:  # ONNX Runtime and I/O raise their own types; retry, then give up
            reason = f"{type(exc).__name__}: {exc}"
            if self._last_delivery(msg):
                await self._fail(msg, reason)
            else:
                log.warning("infer_job_retry", reason=reason)
                await msg.nak(delay=_RETRY_DELAY_S)
        else:
            await msg.ack()
        finally:
            heartbeat.cancel()

    def _last_delivery(self, msg: Msg) -> bool:
        return msg.metadata.num_delivered >= self._max_deliver

    async def _fail(self, msg: Msg, reason: str) -> None:
        await msg.term()
        job_id = job_id_of(msg.data)
        log.warning("infer_job_failed", job_id=job_id, reason=reason)
        if job_id is not None:
            await self._status(job_id, state="failed", done=0, total=0, error=reason)

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            await msg.in_progress()

    async def _run(self, job: InferJob) -> None:
        try:
            prefix = validate_prefix(job.output_prefix.strip("/"))
        except GalleryError as exc:
            raise JobFailed(f"output_prefix: {exc.message}") from None
        # download, decompress and encode in worker threads: the same event loop answers HTTP requests
        data = await anyio.to_thread.run_sync(self._store.get, job.input.uri, job.input.sha256)
        feeds, total = await anyio.to_thread.run_sync(read_inputs, data, self._model.inputs)
        await self._status(job.job_id, state="running", done=0, total=total)
        parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in self._model.outputs}
        chunks = max(1, -(-total // self._chunk))
        every = max(1, -(-chunks // _PROGRESS_UPDATES))
        for index, start in enumerate(range(0, total, self._chunk), start=1):
            chunk = {name: array[start : start + self._chunk] for name, array in feeds.items()}
            results = await anyio.to_thread.run_sync(self._model.run, chunk)
            for name, value in results.items():
                parts[name].append(value)
            if index % every == 0 and index < chunks:
                await self._status(job.job_id, state="running", done=min(total, start + self._chunk), total=total)
        outputs = {name: np.concatenate(values) if values else np.empty((0,)) for name, values in parts.items()}
        key = output_key(self._model.name, prefix, job.job_id)
        encoded = await anyio.to_thread.run_sync(write_npz, outputs)
        ref = await anyio.to_thread.run_sync(self._store.put, key, encoded)
        await self._status(
            job.job_id, state="succeeded", done=total, total=total, output={"uri": ref.uri, "sha256": ref.sha256}
        )
        log.info("infer_job_succeeded", job_id=job.job_id, rows=total, output=ref.uri)

    async def _status(self, job_id: str, **fields: object) -> None:
        if self._nc is not None:
            await self._nc.publish(status_subject(job_id), orjson.dumps({"job_id": job_id, **fields}))
