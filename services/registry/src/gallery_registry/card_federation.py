"""The model card's "Federated training" section, for a version trained by federated learning: how (strategy,
rounds, minimum sites, secure aggregation, the privacy budget) and where (each site with a short fingerprint
of its data, its rows, its rounds and its last validation accuracy), with the worst site and the spread
between the best and the worst. Only what the trainer recorded about the sites: never their data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gallery_common.contracts.refs import FederatedLineage, PrivacyBudget

from .markdown import fmt, table

FINGERPRINT_CHARS = 12


def site_accuracies(federation: FederatedLineage, metrics: Mapping[str, float]) -> dict[str, float]:
    """Each site's validation accuracy in the final round (`site.<name>.val_accuracy`), for sites that report one."""
    found = ((site.name, metrics.get(f"site.{site.name}.val_accuracy")) for site in federation.sites)
    return {name: accuracy for name, accuracy in found if accuracy is not None and math.isfinite(accuracy)}


def federation_section(federation: FederatedLineage, metrics: Mapping[str, float]) -> list[str]:
    """The section's Markdown lines, from the version's `lineage.federation` and its metrics."""
    sites = len(federation.sites)
    lines = [
        "## Federated training",
        "",
        f"Trained across {sites} site{'s' if sites != 1 else ''} without their data leaving them: each site "
        "trained on its own rows and sent only model weights, which the coordinator aggregated.",
        "",
        f"- strategy: {federation.strategy}",
        f"- rounds: {federation.rounds}",
        f"- minimum sites per round: {federation.min_sites}",
        f"- secure aggregation: {'yes (SecAgg+)' if federation.secure_aggregation else 'no'}",
        f"- privacy budget: {_budget(federation.privacy)}",
    ]
    accuracy = site_accuracies(federation, metrics)
    lines += [
        "",
        *table(
            ["site", "data fingerprint", "examples", "rounds", "validation accuracy"],
            [
                (
                    site.name,
                    f"`{site.data_fingerprint[:FINGERPRINT_CHARS]}`" if site.data_fingerprint else "—",
                    fmt(site.examples),
                    fmt(site.rounds),
                    fmt(accuracy.get(site.name)),
                )
                for site in federation.sites
            ],
        ),
    ]
    lines += ["", "Validation accuracy: the final model on each site's own validation rows, as the site reported it."]
    if accuracy:
        worst = min(accuracy, key=accuracy.__getitem__)
        spread = max(accuracy.values()) - accuracy[worst]
        lines += [
            "",
            f"Worst site: {worst} (validation accuracy {fmt(accuracy[worst])}); spread between the best and the "
            f"worst site: {fmt(spread)} ({spread * 100:.1f} points).",
        ]
    return lines


def _budget(privacy: PrivacyBudget | None) -> str:
    if privacy is None:
        return "none (no differential privacy)"
    return (
        f"ε {fmt(privacy.epsilon)}, δ {fmt(privacy.delta)} ({privacy.mechanism}, noise multiplier "
        f"{fmt(privacy.noise_multiplier)}, clipping norm {fmt(privacy.clipping_norm)})"
    )
