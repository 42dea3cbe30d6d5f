"""Automatic canary analysis: the canary's error rate, p99 latency and agreement against the baseline.

Figures come from the model servers themselves: their Prometheus counters and latency histogram,
read from every replica at the start and at the end of the window (the difference, replica by replica,
is the window; `gallery_common.contracts.serving_metrics` reads and compares them), and a replay of
validation rows sent to both versions to measure how often they give the same top class (a regressor's:
predictions within a tenth of the spread of production's, `scoring.prediction_agreement`). A validation
split that is refused (over a size cap, not a split, corrupt) makes the replay, and so the analysis,
fail with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import anyio
import httpx
import numpy as np

from gallery_common.artifacts import ArtifactStore
from gallery_common.contracts import NpzRefused, read_features
from gallery_common.contracts.oip import (
    DATATYPES,
    INFERENCE_HEADER_LENGTH,
    encode_infer_request,
    response_first_output,
    top_classes,
)
from gallery_common.contracts.scoring import prediction_agreement
from gallery_common.contracts.serving_metrics import Scrape, ServingCounts, compare, parse_page
from gallery_common.errors import ArtifactError


async def snapshot(client: httpx.AsyncClient, endpoints: Sequence[str]) -> Scrape:
    """The /metrics pages of every replica that answers, by URL."""
    scrape = Scrape()
    for url in endpoints:
        try:
            response = await client.get(f"{url}/metrics")
        except httpx.HTTPError:
            continue  # a replica that is restarting has no figures to add
        if response.status_code == 200:
            scrape.pages[url] = parse_page(response.text)
    return scrape


async def _outputs(client: httpx.AsyncClient, url: str, model: str, rows: np.ndarray) -> np.ndarray:
    """The server's first output for `rows`."""
    metadata = (await client.get(f"{url}/v2/models/{model}")).json()
    spec = metadata["inputs"][0]
    # the rows as the model's first input takes them (an FP16 variant gets FP16)
    body, _ = encode_infer_request({spec["name"]: rows.astype(DATATYPES[spec["datatype"]], copy=False)})
    response = await client.post(f"{url}/v2/models/{model}/infer", content=body)
    response.raise_for_status()
    return response_first_output(response.content, response.headers.get(INFERENCE_HEADER_LENGTH)).astype(np.float64)


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
    *,
    regression: bool = False,
) -> float | ReplayRefused:
    """Share of `rows` on which both servers give the same top class, or for a `regression` model predictions
    that agree (`scoring.prediction_agreement` against the baseline's); a refused replay stays refused."""
    if isinstance(rows, ReplayRefused):
        return rows
    if not len(rows):
        return 1.0
    canary, baseline = [], []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        canary.append(await _outputs(client, canary_url, model, part))
        baseline.append(await _outputs(client, baseline_url, model, part))
    if regression:
        return prediction_agreement(np.concatenate(canary), np.concatenate(baseline))
    return float(np.mean(top_classes(np.concatenate(canary)) == top_classes(np.concatenate(baseline))))


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


def judge(
    canary: ServingCounts, baseline: ServingCounts, agreement: float | ReplayRefused | None, limits: Thresholds
) -> Verdict:
    """Judge the canary's window against the baseline's: pass unless a figure breaks a threshold; too little
    canary traffic fails (nothing to judge), and so does a replay whose validation rows were refused."""
    reasons: list[str] = []
    if isinstance(agreement, ReplayRefused):
        reasons.append(f"the replay of validation rows failed: {agreement.reason}")
        agreement = None
    figures = compare(canary, baseline)
    canary_rate, canary_p99, baseline_p99 = figures.canary_error_rate, figures.canary_p99_ms, figures.baseline_p99_ms
    served = figures.canary_requests
    if served < limits.min_requests and agreement is None:
        reasons.append(f"the canary served {served:.0f} requests, fewer than the {limits.min_requests} needed")
    if canary_rate is not None and canary_rate > limits.max_error_rate:
        reasons.append(f"canary error rate {canary_rate:.3f} is above {limits.max_error_rate:.3f}")
    if canary_p99 is not None and baseline_p99 is not None and served >= limits.min_latency_requests:
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
        canary_requests=served,
        canary_error_rate=canary_rate,
        baseline_error_rate=figures.baseline_error_rate,
        canary_p99_ms=canary_p99,
        baseline_p99_ms=baseline_p99,
        agreement=agreement,
    )
