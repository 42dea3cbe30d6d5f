"""Write the site folders of a federated demo: a non-IID (Dirichlet) split of a spec's data over sites.

    python scripts/federated_sites.py [--spec examples/federated-digits.yaml] [--out .gallery/federated]
        [--sites 3] [--alpha 0.5] [--seed 0]

Each folder then belongs to one site process (`gallery site run --data FOLDER`); the coordinator's
test split is in none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gallery_trainer.federated.partition import write_site_folders
from gallery_trainer.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "federated-digits.yaml")
    parser.add_argument("--out", type=Path, default=REPO / ".gallery" / "federated")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration: smaller is less IID")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = parse_spec(args.spec.read_text())
    for name, folder in write_site_folders(
        spec, args.out, n_sites=args.sites, alpha=args.alpha, seed=args.seed
    ).items():
        print(f"{name}: {folder}")


if __name__ == "__main__":
    main()
