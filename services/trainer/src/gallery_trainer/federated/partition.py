"""Site folders for trying federated training on one machine: a non-IID split of a data set over sites.

Each class's rows are shared out over the sites in proportions drawn from a Dirichlet(alpha) (small
alpha: each site sees a few classes mostly, as institutions do). Rows come only from the spec's
training and validation splits, so the coordinator's test split stays held out from every site.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gallery_common.contracts import write_split
from gallery_trainer.data import load_dataset
from gallery_trainer.federated.site import SITE_FILES
from gallery_trainer.prepare import split_indices
from gallery_trainer.spec import JobSpec


def dirichlet_partition(y: np.ndarray, n_sites: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Row indices of `y` for each site: every class shared out by Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_sites))[:-1] * len(rows)).astype(int)
        for site, chunk in enumerate(np.split(rows, cuts)):
            parts[site].extend(chunk.tolist())
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def write_site_folders(
    spec: JobSpec, out: Path, *, n_sites: int = 3, alpha: float = 0.5, seed: int = 0, validation: float = 0.15
) -> dict[str, Path]:
    """Write `out/site-<k>/{train,validation}.npz` for `n_sites` sites from the spec's data; name -> folder."""
    dataset = load_dataset(spec.data)
    indices = split_indices(dataset.y, spec.preparation.split, dataset.task)
    pool = np.concatenate([indices["train"], indices["validation"]])
    rng = np.random.default_rng(seed + 1)
    folders = {}
    for k, part in enumerate(dirichlet_partition(dataset.y[pool], n_sites, alpha, seed), start=1):
        rows = rng.permutation(pool[part])
        n_validation = max(1, round(len(rows) * validation))
        folder = out / f"site-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, chosen in zip(SITE_FILES, (rows[n_validation:], rows[:n_validation]), strict=True):
            write_split(folder / filename, dataset.x[chosen], dataset.y[chosen])
        folders[folder.name] = folder
    return folders
