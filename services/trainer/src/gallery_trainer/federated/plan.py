"""What the trainer hands the coordinator's Flower process, and the files they exchange in the job's workdir.

Both interpreters read this module (Flower's has no torch and no pydantic of ours): a plain dataclass
saved as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PLAN_FILE = "federation_plan.json"
INITIAL_WEIGHTS_FILE = "initial_weights.relay"
FINAL_WEIGHTS_FILE = "final_weights.relay"
RESULT_FILE = "federation_result.json"
ERROR_FILE = "federation_error.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class FederationPlan:
    """The engine section of the spec, plus what every site is told about the job (`job`, JSON text)."""

    address: str
    rounds: int
    strategy: str
    min_sites: int
    fraction_fit: float
    local_epochs: int
    proximal_mu: float
    round_timeout_s: float
    standardize: bool
    seed: int
    n_features: int
    job: str
    dp_noise_multiplier: float | None = None
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    secagg_num_shares: float | None = None
    secagg_reconstruction_threshold: float = 1.0
    secagg_clipping_range: float = 8.0
    tls: dict[str, str] | None = None
    """PEM files by role (`root_certificate`, `certificate`, `private_key`): the coordinator speaks TLS; with
    `client_ca` too, each site must present a certificate that CA issued (mutual TLS)."""
    site_tokens: dict[str, str] | None = None
    """The sites admitted, {name: sha256 of its token} (`gallery_common.site_tokens`); None admits any site."""

    def save(self, workdir: Path) -> None:
        (workdir / PLAN_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> FederationPlan:
        return cls(**json.loads((workdir / PLAN_FILE).read_text()))
