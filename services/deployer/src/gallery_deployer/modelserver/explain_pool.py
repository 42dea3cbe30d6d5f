"""Worker processes that compute explanations, off the inference path.

Kernel SHAP and LIME run the model on thousands of perturbed rows for each row they explain: seconds of
CPU. Inside the serving process they would hold the GIL and the cores the infer path needs, so they run
in worker processes of their own, started with multiprocessing's spawn context (a fresh interpreter that
inherits none of the serving process's threads, event loop or ONNX Runtime session). Each worker loads
its own ONNX Runtime session from the served model's bytes, on the CPU with one intra-op thread, decodes
the explainer profile, imports shap and lime once, and steps aside for the infer path: it runs under
Linux's SCHED_IDLE policy (only on CPU time nothing else wants; nice 19 where that is refused), so
infer latency does not grow while explanations run, and explanations slow down when infer is busy.

The pool exists from the first explain request on, so a model server that is never asked to explain
starts as fast as one without explanations. A bounded queue holds the requests waiting for a worker; one
that finds it full is refused at once (`Overloaded`: 503 with Retry-After). An explanation that runs past
the time limit is answered `ExplainTimedOut` (503 with Retry-After) and its worker is killed and
replaced: a runaway explanation must not keep a core.

Workers answer in JSON bytes the pool validates; nothing a worker sends is unpickled, since it runs a
model someone uploaded.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import multiprocessing
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import anyio
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from gallery_common.errors import BadRequest, GalleryError, Unavailable
from gallery_common.explain.attributions import ExplainSettings

from .batcher import Overloaded

WORKER_NICE = 19  # where SCHED_IDLE is refused: the lowest priority a process can take for itself
START_TIMEOUT_S = 120.0  # a fresh interpreter importing ONNX Runtime, shap and lime, then loading the model
_KILL_GRACE_S = 5.0
_STOP_GRACE_S = 1.0
_READY = b'{"ready":true}'
_NOTE_BYTES = 64 * 1024  # the most a worker's ready or failure note may take
T = TypeVar("T")


class ExplainTimedOut(Overloaded):
    """An explanation ran past the time limit; its worker was replaced. Retry later, or with fewer samples."""


class WorkerFailed(GalleryError):
    """A worker could not start, or ended while explaining (500); the message says why."""


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs: the model's and the explainer profile's bytes, and how rows feed the model."""

    model: bytes
    profile: bytes
    input_name: str
    input_dtype: str  # numpy's name for the input's dtype ("float32")
    batched: bool  # the input's first dimension is free; otherwise rows run one at a time
    output_name: str  # the output explained


class ExplainedRow(BaseModel):
    """One row as a worker explained it: one attribution per feature group, spread over features by the caller."""

    target: int
    predicted: int | None
    output: float
    base_value: float
    groups: list[float]
    details: dict[str, Any]


class _WorkerAnswer(BaseModel):
    rows: list[ExplainedRow] | None = None
    refused: str | None = None  # the request cannot be explained as asked (a bad target): 400
    failed: str | None = None


@dataclass
class _Job:
    payload: bytes
    max_answer_bytes: int
    future: asyncio.Future[list[ExplainedRow]] = field(repr=False)


class ExplainPool:
    """`workers` processes explaining rows of one model, fed from a queue of at most `max_queue` requests."""

    def __init__(
        self,
        setup: WorkerSetup,
        *,
        workers: int,
        max_queue: int,
        timeout_s: float,
        cpu_share: float = 1.0,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self._setup = setup
        self._rest_per_busy = 1.0 / cpu_share - 1.0
        self._workers = workers
        self._timeout_s = timeout_s
        self._start_timeout_s = start_timeout_s
        self.retry_after = max(1, math.ceil(min(timeout_s, 60.0)))
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._context = multiprocessing.get_context("spawn")
        self._limiter = anyio.CapacityLimiter(workers)  # one thread per slot waits on its worker
        self._running: set[_Worker] = set()
        self._slots: list[asyncio.Task[None]] = []
        self._closed = False

    async def explain(
        self, rows: np.ndarray, row_shape: tuple[int, ...], settings: ExplainSettings, groups: int
    ) -> list[ExplainedRow]:
        """Explain `rows` ([n, features]), each fed to the model in `row_shape`, as `settings` asks, in
        `groups` feature groups.

        Raises Overloaded when the queue is full, ExplainTimedOut past the time limit, BadRequest for what
        the explainer refuses (a target the model does not have), WorkerFailed when a worker cannot start
        or dies.
        """
        if self._closed:
            raise Unavailable("the model server is stopping")
        if not self._slots:
            self._slots = [asyncio.create_task(self._serve(), name=f"explain-slot-{i}") for i in range(self._workers)]
        payload = orjson.dumps(
            {
                "rows": np.ascontiguousarray(rows, dtype=np.float32),
                "row_shape": row_shape,
                "method": settings.method,
                "target": settings.target,
                "nsamples": settings.nsamples,
                "seed": settings.seed,
                "patch": settings.patch,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        # an honest answer holds a few numbers per group and row; anything far larger is refused unread
        job = _Job(payload, _NOTE_BYTES + len(rows) * (groups + 8) * 64, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self._queue.qsize()} explain requests are already waiting for a worker; retry later",
                self.retry_after,
            ) from None
        return await job.future

    async def close(self) -> None:
        """Stop every worker and answer what still waits with 503."""
        self._closed = True
        # stopped first, so the threads waiting on their pipes return at once
        await asyncio.gather(*(anyio.to_thread.run_sync(worker.stop) for worker in list(self._running)))
        for slot in self._slots:
            slot.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        while not self._queue.empty():
            _settle(self._queue.get_nowait().future, Unavailable("the model server is stopping"))

    async def _serve(self) -> None:
        """One worker's slot: take a job, run it on the worker, replace the worker when it fails or runs over.
        After a job of t seconds the slot rests t * (1/cpu_share - 1) before the next one."""
        worker: _Worker | None = None
        loop = asyncio.get_running_loop()
        rest_until = 0.0
        while True:
            job = await self._queue.get()
            if job.future.done():
                continue  # its caller went away while it waited
            outcome: list[ExplainedRow] | GalleryError
            try:
                if worker is None:
                    worker = await self._start()
                await asyncio.sleep(max(0.0, rest_until - loop.time()))  # the CPU share: see ModelServerSettings
                started = loop.time()
                answer = await self._thread(worker.ask, job.payload, self._timeout_s, job.max_answer_bytes)
                rest_until = loop.time() + (loop.time() - started) * self._rest_per_busy
                outcome = self._timed_out() if answer is None else _parse(answer)
            except BadRequest as exc:  # refused by the explainer; the worker is fine
                outcome = exc
            except Exception as exc:  # whatever went wrong, no request is left waiting
                outcome = exc if isinstance(exc, WorkerFailed) else WorkerFailed(f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, WorkerFailed | ExplainTimedOut):
                await self._retire(worker)
                worker = None
            _settle(job.future, outcome)
            if isinstance(outcome, ExplainTimedOut):
                worker = await self._replace()

    def _timed_out(self) -> ExplainTimedOut:
        return ExplainTimedOut(
            f"the explanation ran past this server's {self._timeout_s:g} s limit (GALLERY_EXPLAIN_TIMEOUT_S) and was "
            "stopped; retry later or ask for fewer nsamples",
            self.retry_after,
        )

    async def _start(self) -> _Worker:
        try:
            worker = await self._thread(_Worker, self._context, self._setup)
        except OSError as exc:  # no process could be made (out of memory, process or file limits)
            raise WorkerFailed(f"no explain worker could be started: {exc}") from None
        self._running.add(worker)
        try:
            await self._thread(worker.wait_ready, self._start_timeout_s)
        except BaseException:
            await self._retire(worker)
            raise
        return worker

    async def _replace(self) -> _Worker | None:
        """A new worker in place of one killed, so the next request does not wait for a start; None if it
        cannot start (the next request tries again and gets the reason)."""
        try:
            return await self._start()
        except WorkerFailed:
            return None

    async def _retire(self, worker: _Worker | None) -> None:
        if worker is not None:
            self._running.discard(worker)
            await anyio.to_thread.run_sync(worker.kill)

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` in a thread of the pool's own: waits on workers take none from the infer path's threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)


def _settle(future: asyncio.Future[list[ExplainedRow]], outcome: list[ExplainedRow] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _parse(answer: bytes) -> list[ExplainedRow]:
    try:
        parsed = _WorkerAnswer.model_validate_json(answer)
    except ValidationError as exc:
        raise WorkerFailed(f"the explain worker sent an answer that is not one: {exc.errors()[0]['msg']}") from None
    if parsed.refused is not None:
        raise BadRequest(parsed.refused)
    if parsed.rows is None:
        raise WorkerFailed(f"the explanation failed: {parsed.failed or 'no reason given'}")
    return parsed.rows


class _Worker:
    """One worker process and this side of its pipe. Blocking: call its methods from a thread."""

    def __init__(self, context: Any, setup: WorkerSetup) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, setup), name="explain-worker", daemon=True)
        self.process.start()
        child.close()
        self.awaited = False  # a thread waits on the pipe: closing it under that thread would strand it

    def wait_ready(self, timeout_s: float) -> None:
        self.awaited = True
        try:
            note = self._receive(timeout_s, _NOTE_BYTES)
        finally:
            self.awaited = False
        if note is None:
            raise WorkerFailed(f"the explain worker did not start within {timeout_s:g} s")
        if note != _READY:
            raise WorkerFailed(f"the explain worker could not start: {_reason(note)}")

    def ask(self, job: bytes, timeout_s: float, max_bytes: int) -> bytes | None:
        """The worker's answer to `job`; None when it has none within `timeout_s`."""
        self.awaited = True
        try:
            self.conn.send_bytes(job)
            return self._receive(timeout_s, max_bytes)
        except OSError:
            raise self._ended() from None
        finally:
            self.awaited = False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(_KILL_GRACE_S)
        self.conn.close()

    def stop(self) -> None:
        """End the worker: an idle one leaves when its pipe closes; one a thread waits on is killed, which
        ends the wait."""
        if not self.awaited:
            self.conn.close()
            self.process.join(_STOP_GRACE_S)
        self.kill()

    def _receive(self, timeout_s: float, max_bytes: int) -> bytes | None:
        if not self.conn.poll(timeout_s):
            return None
        try:
            return self.conn.recv_bytes(max_bytes)
        except EOFError:
            raise self._ended() from None
        except OSError as exc:  # longer than max_bytes: not an answer this code writes
            raise WorkerFailed(f"the explain worker sent more than {max_bytes} bytes ({exc})") from None

    def _ended(self) -> WorkerFailed:
        self.process.join(_KILL_GRACE_S)
        return WorkerFailed(f"the explain worker ended (exit code {self.process.exitcode}) without an answer")


def _reason(note: bytes) -> str:
    try:
        return str(orjson.loads(note).get("failed") or note[:200])
    except (orjson.JSONDecodeError, AttributeError):
        return repr(note[:200])


# -- in the worker process ---------------------------------------------------------------------------


def _step_aside() -> None:
    """Run only on CPU time nothing else wants: one BLAS/OpenMP thread (numpy's pools would otherwise
    spin on every core at normal priority), and every thread of the worker under Linux's SCHED_IDLE
    policy (a waking infer thread preempts it at once), else at the highest niceness."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        for thread in os.listdir("/proc/self/task"):  # the policy is per thread; set it on each one there is
            os.sched_setscheduler(int(thread), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(WORKER_NICE)


def _worker_main(conn: Connection, setup: WorkerSetup) -> None:
    """A worker's life: load, say it is ready, explain one job at a time until the pool closes the pipe."""
    try:
        model = _load(setup)
        _step_aside()  # once every thread the imports start exists
    except Exception as exc:  # the reason goes back to the request that started the worker
        traceback.print_exc()
        conn.send_bytes(orjson.dumps({"failed": f"{type(exc).__name__}: {exc}"}))
        return
    conn.send_bytes(_READY)
    while True:
        try:
            job = orjson.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        conn.send_bytes(orjson.dumps(_explain(model, job), option=orjson.OPT_SERIALIZE_NUMPY))


@dataclass(frozen=True)
class _Model:
    """A worker's model: its session, the explainer profile, and how rows feed the session."""

    session: Any
    profile: Any
    setup: WorkerSetup

    def predict(self, row_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
        """The model's outputs for flat rows, each fed in `row_shape`."""
        setup, dtype, outputs = self.setup, np.dtype(self.setup.input_dtype), [self.setup.output_name]

        def predict(rows: np.ndarray) -> np.ndarray:
            feeds = rows.reshape(len(rows), *row_shape).astype(dtype, copy=False)
            if setup.batched:
                return np.asarray(self.session.run(outputs, {setup.input_name: feeds})[0])
            each = [np.asarray(self.session.run(outputs, {setup.input_name: row[None]})[0]) for row in feeds]
            return np.concatenate(each)

        return predict


def _load(setup: WorkerSetup) -> _Model:
    for module in ("shap", "lime.lime_tabular", "lime.lime_base"):
        importlib.import_module(module)  # once here, not by the first explanation

    from gallery_common.explain.profile import decode_profile

    from .model import session_from_bytes

    return _Model(session_from_bytes(setup.model, 1, gpu=False), decode_profile(setup.profile), setup)


def _explain(model: _Model, job: dict[str, Any]) -> dict[str, Any]:
    from gallery_common.explain.attributions import Explainer, ExplainRefused

    settings = ExplainSettings(job["method"], job["target"], job["nsamples"], job["seed"], job["patch"])
    explainer = Explainer(model.predict(tuple(job["row_shape"])), model.profile)
    try:
        explained = explainer.explain(np.asarray(job["rows"], dtype=np.float32), settings)
    except ExplainRefused as exc:
        return {"refused": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"failed": f"{type(exc).__name__}: {exc}"}
    return {
        "rows": [
            {
                "target": row.target,
                "predicted": row.predicted,
                "output": row.output,
                "base_value": row.base_value,
                "groups": np.asarray(row.groups, dtype=np.float64),
                "details": row.details,
            }
            for row in explained
        ]
    }
