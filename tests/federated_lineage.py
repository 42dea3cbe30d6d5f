"""A federated model's `lineage.federation` and per-site figures, as the trainer's coordinator puts them in
`model.trained` (services/trainer federated/coordinator.py `_lineage_and_figures`), for the tests of what
reads them: the registry, the model card and the Gallery."""

from __future__ import annotations

from gallery_common.contracts.refs import FederatedLineage, FederatedSite, PrivacyBudget

# site -> (fingerprint digit, training rows, rounds it returned weights in, final validation accuracy)
SITES = {
    "clinic-north": ("1", 420, 12, 0.962),
    "clinic-south": ("2", 380, 12, 0.941),
    "lab-east": ("3", 160, 11, 0.887),
}
WORST_SITE = "lab-east"


def federation(*, private: bool = True, secure: bool = False, rounds: int = 12) -> FederatedLineage:
    """Three sites under FedAvg; with `private`, the DP-SGD budget they spent."""
    return FederatedLineage(
        strategy="fedavg",
        rounds=rounds,
        min_sites=2,
        sites=[
            FederatedSite(name=name, data_fingerprint=digit * 64, examples=examples, rounds=site_rounds)
            for name, (digit, examples, site_rounds, _) in SITES.items()
        ],
        privacy=PrivacyBudget(mechanism="dp-sgd", noise_multiplier=1.1, clipping_norm=1.0, epsilon=3.2, delta=1e-5)
        if private
        else None,
        secure_aggregation=secure,
    )


def site_metrics(*, private: bool = True, rounds: int = 12) -> dict[str, float]:
    """The run's federated figures: each site's last validation accuracy and loss, the worst site, the rounds
    and, with `private`, the privacy budget spent."""
    figures = {"rounds_run": float(rounds), "sites": float(len(SITES)), "round_seconds": 0.59}
    figures["bytes_per_site_per_round"] = 67_000.0
    for name, (_, _, _, accuracy) in SITES.items():
        figures[f"site.{name}.val_accuracy"] = accuracy
        figures[f"site.{name}.val_loss"] = round(1 - accuracy, 3)
    figures["worst_site_val_accuracy"] = SITES[WORST_SITE][3]
    if private:
        figures |= {"dp_epsilon": 3.2, "dp_delta": 1e-5}
    return figures
