"""Automatic canary analysis: the canary's error rate, p99 latency and agreement against the baseline.

Figures come from the model servers themselves: their Prometheus counters and latency histogram,
read at the start and at the end of the window (the difference is the window), and a replay of
validation rows sent to both versions to measure how often they give the same top class. A validation
split that is refused (over a size cap, not a split, corrupt) makes the replay, and so the analysis,
fail with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import anyio
import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import NpzRefused, read_features
from gallery_common.errors import ArtifactError
from gallery_common.promtext import histogram_quantile

REQUESTS = "modelgallery_inference_requests"
DURATION = "modelgallery_inference_request_duration_seconds"


@dataclass
class Snapshot:
    """Cumulative counts of one deployment's replicas at one moment."""

    requests: dict[str, float] = field(default_factory=dict)  # by outcome
    buckets: dict[float, float] = field(default_factory=dict)  # cumulative count by upper bound

    def minus(self, earlier: Snapshot) -> Snapshot:
        """The window between `earlier` and this one (a restarted replica's reset counts start from zero)."""
        return Snapshot(
            {k: max(0.0, v - earlier.requests.get(k, 0.0)) for k, v in self.requests.items()},
            {k: max(0.0, v - earlier.buckets.get(k, 0.0)) for k, v in self.buckets.items()},
        )

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    @property
    def errors(self) -> float:
        return self.requests.get("error", 0.0) + self.requests.get("overloaded", 0.0)

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds, interpolated inside its histogram bucket; None without requests."""
        return histogram_quantile(q, self.buckets)


def parse_snapshot(text: str, into: Snapshot | None = None) -> Snapshot:
    """Add one model server's /metrics text to a snapshot."""
    snapshot = into or Snapshot()
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels.get("outcome", "ok")
                    snapshot.requests[outcome] = snapshot.requests.get(outcome, 0.0) + sample.value
        elif family.name == DURATION:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    snapshot.buckets[bound] = snapshot.buckets.get(bound, 0.0) + sample.value
    return snapshot


async def snapshot(client: httpx.AsyncClient, endpoints: Sequence[str]) -> Snapshot:
    """The summed counters of every replica that answers."""
    total = Snapshot()
    for url in endpoints:
        try:
            response = await client.get(f"{url}/metrics")
        except httpx.HTTPError:
            continue  # a replica that is restarting has no figures to add
        if response.status_code == 200:
            parse_snapshot(response.text, total)
    return total


async def _top_classes(client: httpx.AsyncClient, url: str, model: str, rows: np.ndarray) -> np.ndarray:
    metadata = (await client.get(f"{url}/v2/models/{model}")).json()
    spec = metadata["inputs"][0]
    body = {
        "inputs": [
            {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }
    response = await client.post(f"{url}/v2/models/{model}/infer", content=orjson.dumps(body))
    response.raise_for_status()
    output = response.json()["outputs"][0]
    values = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    return values.argmax(axis=-1) if values.ndim > 1 else values


@dataclass(frozen=True)
class ReplayRefused:
    """The validation rows could not be replayed; the canary analysis fails with `reason`."""

    reason: str


async def replay_agreement(
    client: httpx.AsyncClient,
    model: str,
    canary_url: str,
    baseline_url: str,
    rows: np.ndarray | ReplayRefused,
    chunk: int = 64,
) -> float | ReplayRefused:
    """Share of `rows` on which both servers give the same top class (a refused replay stays refused)."""
    if isinstance(rows, ReplayRefused):
        return rows
    same = 0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        canary = await _top_classes(client, canary_url, model, part)
        baseline = await _top_classes(client, baseline_url, model, part)
        same += int(np.sum(canary == baseline))
    return same / len(rows) if len(rows) else 1.0


async def load_replay_rows(
    store: ArtifactStore, split: dict[str, str] | None, limit: int
) -> np.ndarray | ReplayRefused | None:
    """The first `limit` feature rows of a version's validation split NPZ (`x`), or None without one.

    A split that cannot be had (missing, corrupt, over GALLERY_MAX_ARTIFACT_BYTES) or is refused as a
    split (over GALLERY_MAX_SPLIT_BYTES, object arrays, not an NPZ) is a ReplayRefused with the reason;
    an unreachable store still raises Unavailable, as that passes.
    """
    if not split or limit <= 0:
        return None

    def read() -> np.ndarray | ReplayRefused:
        uri = split["uri"]
        try:
            data = store.get(uri, split.get("sha256"))
            x, _ = read_features(data, name=f"validation split {uri}")
        except ArtifactError as exc:
            return ReplayRefused(f"validation split {uri}: {exc.message}")
        except NpzRefused as exc:
            return ReplayRefused(str(exc))
        return np.ascontiguousarray(x[:limit], dtype=np.float32)

    return await anyio.to_thread.run_sync(read)


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float
    max_p99_ratio: float
    p99_slack_ms: float
    min_agreement: float
    min_requests: int
    min_latency_requests: int = 100


@dataclass
class Verdict:
    """The canary-vs-baseline comparison for one window and whether the canary passed."""

    passed: bool
    reasons: list[str]
    canary_requests: float
    canary_error_rate: float | None
    baseline_error_rate: float | None
    canary_p99_ms: float | None
    baseline_p99_ms: float | None
    agreement: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _rate(window: Snapshot) -> float | None:
    return window.errors / window.total if window.total else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def judge(canary: Snapshot, baseline: Snapshot, agreement: float | ReplayRefused | None, limits: Thresholds) -> Verdict:
    """Pass unless a figure breaks a threshold; too little canary traffic fails (nothing to judge), and so
    does a replay whose validation rows were refused."""
    reasons: list[str] = []
    if isinstance(agreement, ReplayRefused):
        reasons.append(f"the replay of validation rows failed: {agreement.reason}")
        agreement = None
    canary_rate, baseline_rate = _rate(canary), _rate(baseline)
    canary_p99, baseline_p99 = _ms(canary.quantile(0.99)), _ms(baseline.quantile(0.99))
    if canary.total < limits.min_requests and agreement is None:
        reasons.append(f"the canary served {canary.total:.0f} requests, fewer than the {limits.min_requests} needed")
    if canary_rate is not None and canary_rate > limits.max_error_rate:
        reasons.append(f"canary error rate {canary_rate:.3f} is above {limits.max_error_rate:.3f}")
    if canary_p99 is not None and baseline_p99 is not None and canary.total >= limits.min_latency_requests:
        allowed = baseline_p99 * limits.max_p99_ratio + limits.p99_slack_ms
        if canary_p99 > allowed:
            reasons.append(f"canary p99 {canary_p99:.1f} ms is above {allowed:.1f} ms (baseline {baseline_p99:.1f} ms)")
    if agreement is not None and agreement < limits.min_agreement:
        reasons.append(
            f"canary agrees with the baseline on {agreement:.1%} of replayed rows, below {limits.min_agreement:.0%}"
        )
    return Verdict(
        passed=not reasons,
        reasons=reasons,
        canary_requests=canary.total,
        canary_error_rate=canary_rate,
        baseline_error_rate=baseline_rate,
        canary_p99_ms=canary_p99,
        baseline_p99_ms=baseline_p99,
        agreement=agreement,
    )
