"""The gateway's core: pick a backend, forward the bytes, fall back, mirror, cache and sample.

Transport-agnostic apart from returning Starlette responses: the REST routes in `api.py` only
hand over the model, version, path, body and headers. Explanations take the same routes as inference
(`Traffic` says how each kind walks them) and are never cached, mirrored or sampled.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client import Counter
from starlette.responses import Response

from gallery_common.auth import Caller
from gallery_common.contracts.oip import (
    INFERENCE_HEADER_LENGTH,
    ProtocolError,
    decode_infer_inputs,
    decode_infer_response,
    json_tensors,
    parse_header_length,
    response_first_output,
    top_classes,
)
from gallery_common.contracts.request_ids import REQUEST_ID_HEADER
from gallery_common.contracts.scoring import prediction_agreement
from gallery_common.errors import NotFound, Unavailable
from gallery_common.projects import role_in
from gallery_common.routes_kv import RoutesFollower

from . import metrics
from .balance import plan_chain
from .breaker import BreakerState, CircuitBreaker
from .cache import CachedAnswer, make_response_cache
from .identity import BackendIdentity
from .metrics import bound
from .outcomes import Answered, OutcomeRecorder
from .routes import Backend, ModelRoute, RouteBook
from .settings import GatewaySettings
from .upstream import Answer, ConnectFailed, UpstreamError, UpstreamPool
from .usage import UsageMeter, rows_and_seconds


def rest_tensors(
    body: bytes, header_length: str | None, answer: bytes, answer_header_length: str | None
) -> tuple[Any, Any]:
    """The inputs of a REST infer request and the outputs of its answer as JSON tensors, whether either came
    in the binary tensor extension or not (a JSON body's tensors are passed on as they are)."""
    if header_length is None:
        inputs = orjson.loads(body).get("inputs")
    else:
        inputs = json_tensors(decode_infer_inputs(body, header_length))
    if answer_header_length is None:
        outputs = orjson.loads(answer).get("outputs")
    else:
        outputs = json_tensors(decode_infer_response(answer, answer_header_length).outputs)
    return inputs, outputs


class SampleSink(Protocol):
    """Where traffic samples go (`samples.SampleOutbox`): `offer` must neither block nor raise."""

    def offer(self, model: str, sample: bytes) -> None: ...


# headers that carry meaning for OIP v2 bodies (the binary-data extension) and must pass through
_BINARY_HEADER = INFERENCE_HEADER_LENGTH.lower()
_PASSED_HEADERS = ("content-type", _BINARY_HEADER)


@dataclass(frozen=True)
class Traffic:
    """How one kind of request walks a model's chain of backends: its time limits (one attempt, all of
    them), where it is counted, and whether its outcomes feed the backends' circuit breakers.

    Inference feeds the breakers and the inference series. Explanations take seconds, and a busy explain
    pool answers 503: they must neither open a breaker (that would cut a healthy backend off its inference
    traffic) nor count as inference, so they have a time limit and a counter of their own, and only pass
    over backends whose breaker is open (without taking a half-open breaker's probe).
    """

    attempt_s: float
    budget_s: float
    attempts: Counter  # by model, backend and outcome
    feeds_breakers: bool
    fallbacks: Counter | None = None  # by model: requests answered by a link after the first
    failures: Counter | None = None  # by model and status: requests no link could answer


@dataclass
class Attempt:
    """How one link of the chain ended; `response` is set when the backend answered."""

    backend: Backend
    outcome: str
    reason: str = ""
    response: Answer | None = None


def _passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name in _PASSED_HEADERS if (value := headers.get(name)) is not None}


def _cache_key(model: str, version: str | None, body: bytes, headers: Mapping[str, str]) -> str:
    """The request as the model server reads it: the same bytes with another (or no) binary-data header
    split differently into JSON and tensors, so they are another request."""
    header_length = headers.get(_BINARY_HEADER, "").strip()
    return f"{model}\0{version or ''}\0{header_length}\0{hashlib.sha256(body).hexdigest()}"


def _to_cache(served: Answer) -> CachedAnswer | None:
    """What to keep of a 200 answer; None when its binary-data header is not a number (passed on, not kept)."""
    try:
        header_length = parse_header_length(served.headers.get(_BINARY_HEADER), len(served.content))
    except ProtocolError:
        return None
    return CachedAnswer(200, served.headers.get("content-type", "application/json"), served.content, header_length)


def _cached_answer(cached: CachedAnswer) -> Answer:
    headers = {"content-type": cached.content_type}
    if cached.header_length is not None:
        headers[_BINARY_HEADER] = str(cached.header_length)
    return Answer(cached.status, headers, cached.body)


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"content-type": "application/json"}, orjson.dumps({"error": message}))


def _retry_later(failures: list[Attempt]) -> Answer | None:
    """The last backend answer in `failures` that asked to be retried later (503 with Retry-After), as is."""
    for failure in reversed(failures):
        answer = failure.response
        if answer is not None and answer.status_code == 503 and (wait := answer.headers.get("retry-after")):
            return Answer(503, {**_passed_headers(answer.headers), "retry-after": wait}, answer.content)
    return None


def as_response(answer: Answer) -> Response:
    """The client's answer as a Starlette response (the FastAPI routes); the infer path sends it as it is."""
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))


class Gateway:
    """Forwards OIP v2 requests for the models in `book` through one shared HTTP client."""

    def __init__(
        self,
        settings: GatewaySettings,
        book: RouteBook,
        client: UpstreamPool,
        samples: SampleSink | None = None,
        rng: random.Random | None = None,
        *,
        follower: RoutesFollower | None = None,
        outcomes: OutcomeRecorder | None = None,
        identity: BackendIdentity | None = None,
        wake_identity: BackendIdentity | None = None,
    ) -> None:
        self.settings = settings
        self.book = book
        self.directory = settings.project_directory()  # followed from the projects bucket by the app
        self.follower = follower  # what keeps `book` in step with the routes bucket; None without a bus
        self.outcomes = outcomes  # where answers of routes that record outcomes go; None without a bus
        self.client = client
        self.samples = samples
        self.rng = rng or random.Random()
        # who the gateway is to its backends (the client sends it) and to the deployer's wake
        self.identity = identity or BackendIdentity()
        self.wake_identity = wake_identity or BackendIdentity()
        self.cache = make_response_cache(settings.redis_url, settings.cache_size, settings.cache_ttl_s)
        self.usage = UsageMeter()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self._inference = Traffic(
            settings.request_timeout_s,
            settings.latency_budget_s,
            metrics.REQUESTS,
            feeds_breakers=True,
            fallbacks=metrics.FALLBACKS,
            failures=metrics.FAILURES,
        )
        self._explanations = Traffic(
            settings.explain_budget_s, settings.explain_budget_s, metrics.EXPLAIN_REQUESTS, feeds_breakers=False
        )

    def breaker(self, model: str, backend_id: str) -> CircuitBreaker:
        key = (model, backend_id)
        breaker = self._breakers.get(key)
        if breaker is None:
            s = self.settings
            breaker = self._breakers[key] = CircuitBreaker(
                consecutive_failures=s.breaker_consecutive_failures,
                error_rate=s.breaker_error_rate,
                window=s.breaker_window,
                min_calls=s.breaker_min_calls,
                cooldown_s=s.breaker_cooldown_s,
            )
            bound(metrics.BREAKER_STATE, model, backend_id).set(int(breaker.state))  # then set on each change
        return breaker

    def visible_route(self, model: str, caller: Caller) -> ModelRoute:
        """The model's route if `caller` holds a role in its project (any role includes `inference`);
        a caller holding none there gets the very answer of a model without a route, so the gateway
        does not tell another project's model names. Two dict lookups: this runs on every request."""
        route = self.book.get(model)
        if route is None or role_in(caller, route.project, self.directory) is None:
            raise NotFound(f"model {model!r} has no route in the gateway; deploy it first")
        return route

    async def _route(self, model: str, version: str | None, caller: Caller) -> tuple[ModelRoute, list[Backend]]:
        route = self.visible_route(model, caller)
        if route.policy.asleep:
            route = await self._wake(model, route)
        serving = route.serving
        if version is not None:
            serving = [b for b in serving if b.version == version]
            if not serving:
                raise NotFound(f"model {model!r} has no backend serving version {version!r}")
        return route, serving

    async def _wake(self, model: str, route: ModelRoute) -> ModelRoute:
        """Hold the request while the deployer starts a replica (a cold start); one wake call per model."""
        task = self._wakes.get(model)
        if task is None:
            task = self._wakes[model] = asyncio.create_task(self._call_wake(model, route))
            task.add_done_callback(lambda _: self._wakes.pop(model, None))
        started = time.perf_counter()
        await asyncio.shield(task)
        metrics.COLD_STARTS.labels(model).observe(time.perf_counter() - started)
        woken = self.book.get(model)
        if woken is None or woken.policy.asleep:
            raise Unavailable(f"model {model!r} is scaled to zero and did not wake up")
        return woken

    async def _call_wake(self, model: str, route: ModelRoute) -> None:
        assert route.policy.wake_url is not None
        header = self.wake_identity.header
        try:
            reply = await self.client.request(
                "POST",
                route.policy.wake_url,
                b"",
                {"authorization": header} if header else {},
                self.settings.cold_start_timeout_s,
            )
        except (UpstreamError, TimeoutError) as exc:
            raise Unavailable(f"model {model!r} is scaled to zero and its deployer did not answer: {exc!r}") from exc
        if reply.status_code >= 400:
            text = reply.content[:300].decode(errors="replace")
            raise Unavailable(f"model {model!r} is scaled to zero and waking it failed: {reply.status_code} {text}")

    def _sticky_key(self, route: ModelRoute, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        policy = route.policy
        # header names arrive in lower case (ASGI, gRPC metadata); a route may name one in any case
        if policy.sticky_header and (key := headers.get(policy.sticky_header.lower())):
            return key
        if policy.sticky_cookie:
            return cookies.get(policy.sticky_cookie)
        return None

    async def forward_get(self, model: str, version: str | None, path: str, caller: Caller) -> Response:
        """Metadata and readiness: sent to the first healthy backend, with the same fallbacks."""
        _, serving = await self._route(model, version, caller)
        chain = plan_chain(serving, None, self.rng)
        attempt, failures = await self._walk(model, chain, "GET", path, b"", {}, self._inference)
        return as_response(self._answer(model, attempt, failures, self._inference))

    async def infer(
        self,
        model: str,
        version: str | None,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        caller: Caller,
        request_id: str,
    ) -> Answer:
        """Forward an inference request; the body goes through as bytes. When no backend could answer and
        one asked to be retried later (a full batching queue), the client gets that 503 and Retry-After.
        The answer carries only the headers a client needs (content type, binary-data length, Retry-After).
        `request_id` goes to the backend, which names it in the answer's JSON `id` when the request has
        none (an answer from the cache names the request that filled it there); a route that records
        outcomes keeps the answer under it, and never answers from the cache (a cached answer names no
        version that gave it)."""
        start = time.perf_counter()
        route, serving = await self._route(model, version, caller)
        policy = route.policy
        cache_key = None
        if policy.cache_enabled and not policy.record_outcomes:
            cache_key = _cache_key(model, version, body, headers)
            cached = await self.cache.get(cache_key)
            if cached is not None:
                bound(metrics.CACHE_HITS, model).inc()
                return _cached_answer(cached)
            bound(metrics.CACHE_MISSES, model).inc()
        chain = plan_chain(serving, self._sticky_key(route, headers, cookies), self.rng)
        sent = _passed_headers(headers)
        sent[REQUEST_ID_HEADER] = request_id
        attempt, failures = await self._walk(model, chain, "POST", path, body, sent, self._inference)
        latency = time.perf_counter() - start
        bound(metrics.LATENCY, model).observe(latency)
        if attempt is None and (busy := _retry_later(failures)) is not None:
            return busy  # every backend was overloaded: the client learns when to come back
        answer = self._answer(model, attempt, failures, self._inference)
        if attempt is None or attempt.response is None or attempt.response.status_code != 200:
            return answer
        served = attempt.response
        self.usage.record(model, attempt.backend.version, caller.name, *rows_and_seconds(served.headers))
        if policy.record_outcomes:
            self.record_answer(
                request_id, model, attempt.backend, caller.name, served, regression=route.task == "regression"
            )
        is_json = _BINARY_HEADER not in served.headers
        if (
            cache_key is not None
            and len(served.content) <= self.settings.cache_max_body_bytes
            and (keep := _to_cache(served)) is not None
        ):
            await self.cache.put(cache_key, keep)
        shadow = route.shadow
        if shadow is not None and is_json and self.rng.random() * 100 < route.policy.shadow_percent:
            regression = route.task == "regression"
            self._spawn(self._mirror(model, shadow, path, body, sent, served.content, regression))
        self.sample(
            model,
            attempt.backend,
            latency,
            partial(
                rest_tensors, body, headers.get(_BINARY_HEADER), served.content, served.headers.get(_BINARY_HEADER)
            ),
        )
        return answer

    def record_answer(
        self, request_id: str, model: str, backend: Backend, caller: str, served: Answer, *, regression: bool = False
    ) -> None:
        """Keep a 200 answer of a route that records outcomes for feedback: handed to a bounded queue, never
        waited for (dropped, and counted, when the queue is full or this gateway has no bus)."""
        if self.outcomes is None:
            bound(metrics.OUTCOME_RECORDS, model, "dropped").inc()
            return
        self.outcomes.offer(
            Answered(
                request_id,
                model,
                backend.version,
                backend.variant,
                caller,
                time.time(),
                served.content,
                served.headers.get(_BINARY_HEADER),
                regression,
            )
        )

    async def explain(
        self,
        model: str,
        version: str | None,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        caller: Caller,
    ) -> Response:
        """Forward an explain request as an infer request goes (routes, canary split, stickiness, fallback)
        under the explain time limit. When no backend could answer and one asked to be retried later (its
        explain queue full, an explanation stopped at its limit), the client gets that 503 and Retry-After."""
        start = time.perf_counter()
        route, serving = await self._route(model, version, caller)
        chain = plan_chain(serving, self._sticky_key(route, headers, cookies), self.rng)
        traffic = self._explanations
        attempt, failures = await self._walk(model, chain, "POST", path, body, _passed_headers(headers), traffic)
        metrics.EXPLAIN_LATENCY.labels(model).observe(time.perf_counter() - start)
        if attempt is None and (busy := _retry_later(failures)) is not None:
            return as_response(busy)
        return as_response(self._answer(model, attempt, failures, traffic))

    async def _walk(
        self,
        model: str,
        chain: list[Backend],
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        traffic: Traffic,
    ) -> tuple[Attempt | None, list[Attempt]]:
        """Send the request over HTTP down the chain (see `walk`)."""

        async def over_http(backend: Backend, timeout: float) -> Attempt:
            return await self._attempt(backend, method, path, body, headers, timeout)

        return await self.walk(model, chain, traffic, over_http)

    async def walk(
        self,
        model: str,
        chain: list[Backend],
        traffic: Traffic,
        try_link: Callable[[Backend, float], Awaitable[Attempt]],
    ) -> tuple[Attempt | None, list[Attempt]]:
        """Try the links in order with `try_link(backend, time limit)` until one answers (ok, or the request's
        own fault); returns it and the failures before it. Spent budgets and open breakers are failures
        too; outcomes feed the breakers and the counters as `traffic` says."""
        deadline = time.monotonic() + traffic.budget_s
        failures: list[Attempt] = []
        for backend in chain:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failures.append(Attempt(backend, "budget", "latency budget spent"))
                break
            breaker = self.breaker(model, backend.id)
            if not (breaker.allow() if traffic.feeds_breakers else breaker.state is not BreakerState.open):
                failures.append(Attempt(backend, "open", "circuit open"))
                bound(traffic.attempts, model, backend.id, "open").inc()
                continue
            attempt = await try_link(backend, min(remaining, traffic.attempt_s))
            answered = attempt.outcome in ("ok", "client_error")
            if traffic.feeds_breakers and (breaker.record_success() if answered else breaker.record_failure()):
                bound(metrics.BREAKER_STATE, model, backend.id).set(int(breaker.state))
            bound(traffic.attempts, model, backend.id, attempt.outcome).inc()
            if answered:
                if failures and traffic.fallbacks is not None:
                    bound(traffic.fallbacks, model).inc()
                return attempt, failures
            failures.append(attempt)
        return None, failures

    async def _attempt(
        self, backend: Backend, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Attempt:
        url = backend.url + path
        try:
            try:
                response = await self.client.request(method, url, body, headers, timeout)
            except ConnectFailed:
                # the request never reached the backend, so sending it once more is safe
                response = await self.client.request(method, url, body, headers, timeout)
            if response.status_code == 401 and await self.identity.renew():
                # the backend refused the gateway's own token: once more with a new one
                response = await self.client.request(method, url, body, headers, timeout)
        except TimeoutError:
            return Attempt(backend, "timeout", f"no answer within {timeout:.2f} s")
        except UpstreamError as exc:
            return Attempt(backend, "unreachable", f"unreachable ({type(exc).__name__})")
        if response.status_code >= 500:
            return Attempt(backend, "server_error", f"answered {response.status_code}", response)
        if response.status_code in (401, 403):
            # a backend checks only the gateway's own token: not the client's fault, and not its answer
            reason = f"refused the gateway's own credentials ({response.status_code})"
            return Attempt(backend, "server_error", reason, response)
        outcome = "client_error" if response.status_code >= 400 else "ok"
        return Attempt(backend, outcome, response=response)

    def _answer(self, model: str, attempt: Attempt | None, failures: list[Attempt], traffic: Traffic) -> Answer:
        if attempt is not None and attempt.response is not None:
            response = attempt.response
            return Answer(response.status_code, _passed_headers(response.headers), response.content)
        reasons = "; ".join(f"{f.backend.id}: {f.reason}" for f in failures)
        status = 502 if any(f.outcome == "server_error" for f in failures) else 503
        if traffic.failures is not None:
            bound(traffic.failures, model, str(status)).inc()
        return _error(status, f"no backend of model {model!r} could answer: {reasons}")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mirror(
        self,
        model: str,
        shadow: Backend,
        path: str,
        body: bytes,
        headers: dict[str, str],
        served: bytes,
        regression: bool = False,
    ) -> None:
        """Send the request to the shadow backend; only its latency and agreement are kept: the same top class
        on every row, or for a `regression` route every row's predictions within a tenth of the spread of
        the served ones (`scoring.prediction_agreement`; of their size for one row)."""
        start = time.perf_counter()
        attempt = await self._attempt(shadow, "POST", path, body, headers, self.settings.request_timeout_s)
        metrics.SHADOW_LATENCY.labels(model, shadow.id).observe(time.perf_counter() - start)
        metrics.REQUESTS.labels(model, shadow.id, attempt.outcome).inc()
        agree = "error"
        if attempt.outcome == "ok" and (mirrored := attempt.response) is not None:
            try:
                mirrored_output = response_first_output(mirrored.content, mirrored.headers.get(_BINARY_HEADER))
                served_output = response_first_output(served)
                if regression:
                    same = mirrored_output.shape == served_output.shape and (
                        prediction_agreement(mirrored_output.astype(np.float64), served_output) == 1.0
                    )
                else:
                    same = np.array_equal(top_classes(served_output), top_classes(mirrored_output))
                agree = "true" if same else "false"
            except ValueError:  # a ProtocolError, or outputs with no classes to choose from
                agree = "error"
        metrics.SHADOW_AGREEMENT.labels(model, shadow.id, agree).inc()

    def sample(self, model: str, backend: Backend, latency_s: float, tensors: Callable[[], tuple[Any, Any]]) -> None:
        """With the sample rate's chance, offer a served request to the monitor's drift checks: its inputs and
        outputs as JSON tensors, read by `tensors` off the request path (nothing is sent when its bodies
        are not OIP)."""
        if self.samples is not None and self.rng.random() < self.settings.sample_rate:
            self._spawn(self._sample(model, backend, latency_s, tensors))

    async def _sample(
        self, model: str, backend: Backend, latency_s: float, tensors: Callable[[], tuple[Any, Any]]
    ) -> None:
        assert self.samples is not None
        try:
            inputs, outputs = tensors()
        except (orjson.JSONDecodeError, AttributeError, ProtocolError):
            return
        sample = {
            "model": model,
            "version": backend.version,
            "variant": backend.variant,
            "inputs": inputs,
            "outputs": outputs,
            "latency_ms": round(latency_s * 1000, 3),
            "time": time.time(),
        }
        self.samples.offer(model, orjson.dumps(sample, option=orjson.OPT_SERIALIZE_NUMPY))

    async def close(self) -> None:
        """Let mirrored requests and samples still in flight finish (bounded by the request timeout)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.settings.request_timeout_s)
        await self.cache.close()
