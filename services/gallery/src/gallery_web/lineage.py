"""A model's lineage as a graph: data set → training run (its search, its parent version) → version →
optimizer variants → deployments, built from what the registry, the trainer and the deployer answer.

Pure: it takes their JSON answers (as dicts) and returns nodes and edges; `routes.py` fetches them.
Every node links to the page that shows it, where there is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel

NodeKind = Literal["dataset", "run", "search", "version", "variant", "deployment"]
# the artifact roles that are the optimizer's variants of a version, in the order the page lists them
VARIANT_ROLES = ("int8", "fp16", "pruned", "distilled", "edge_bundle")
SERVING_STAGES = ("production", "canary", "previous")


class LineageNode(BaseModel):
    id: str
    kind: NodeKind
    label: str
    detail: str
    href: str | None


class LineageEdge(BaseModel):
    source: str
    target: str


class LineageGraph(BaseModel):
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    warnings: list[str] = []


def _q(value: object) -> str:
    return quote(str(value), safe="")


def _size(n: object) -> str:
    if not isinstance(n, int | float):
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _metrics(metrics: object, keep: int = 3) -> str:
    if not isinstance(metrics, dict):
        return ""
    shown = [f"{k} {v:.4g}" for k, v in list(metrics.items())[:keep] if isinstance(v, int | float)]
    return ", ".join(shown)


@dataclass
class _Graph:
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: list[LineageEdge] = field(default_factory=list)

    def node(self, id: str, kind: NodeKind, label: str, detail: str = "", href: str | None = None) -> str:
        if id not in self.nodes:
            self.nodes[id] = LineageNode(id=id, kind=kind, label=label, detail=detail, href=href)
        return id

    def edge(self, source: str, target: str) -> None:
        if source in self.nodes and target in self.nodes and source != target:
            edge = LineageEdge(source=source, target=target)
            if edge not in self.edges:
                self.edges.append(edge)


def variant_role(deployment_variant: str, roles: Iterable[str]) -> str | None:
    """The artifact role a deployment's variant comes from (the optimizer keeps a family's better variant
    under the family's role: `int8_dynamic` → `int8`, `pruned_magnitude` → `pruned`); None: the FP32 model."""
    for role in roles:
        if deployment_variant == role or deployment_variant.startswith((role + "_", role + "-")):
            return role
    return None


def build_lineage(
    model: str,
    versions: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    searches: list[dict[str, Any]],
    deployments: list[dict[str, Any]],
    warnings: list[str] | None = None,
) -> LineageGraph:
    """The graph of `model` from the registry's versions, the trainer's runs, jobs and searches, and the
    deployer's deployments (each list may be empty when that service had nothing or did not answer)."""
    g = _Graph()
    name = _q(model)
    runs_by_id = {r["id"]: r for r in runs if isinstance(r.get("id"), str)}
    runs_by_job = {r["job_id"]: r for r in runs if isinstance(r.get("job_id"), str)}
    jobs_by_id = {j["id"]: j for j in jobs if isinstance(j.get("id"), str)}
    jobs_by_run = {j["run_id"]: j for j in jobs if isinstance(j.get("run_id"), str)}

    def dataset_node(fingerprint: str | None) -> str | None:
        if not fingerprint:
            return None
        return g.node(f"dataset:{fingerprint}", "dataset", f"data set {fingerprint[:12]}", f"fingerprint {fingerprint}")

    def run_node(run_id: str) -> str:
        run = runs_by_id.get(run_id)
        if run is None:
            detail = "the trainer has no record of it"
            return g.node(f"run:{run_id}", "run", f"run {run_id[:8]}", detail, f"/runs/{_q(run_id)}")
        status = str(run.get("status") or "")
        label, source = f"run {run_id[:8]}", None
        params, system = run.get("params"), run.get("system")
        if isinstance(system, dict) and system.get("engine") == "import":  # trained elsewhere, its file imported
            label = f"import {run_id.removeprefix('import-')[:8]}"
            file = params.get("file") if isinstance(params, dict) else None
            source = f"imported {file}" if isinstance(file, str) else "imported"
        detail = " · ".join(part for part in (source, status, _metrics(run.get("metrics"))) if part)
        node = g.node(f"run:{run_id}", "run", label, detail, f"/runs/{_q(run_id)}")
        data = dataset_node(run.get("dataset_fingerprint"))
        if data:
            g.edge(data, node)
        job = jobs_by_run.get(run_id) or jobs_by_id.get(str(run.get("job_id")))
        if job and job.get("search_id"):
            search = search_node(str(job["search_id"]))
            g.edge(search, node)
        return node

    searches_by_id = {s["id"]: s for s in searches if isinstance(s.get("id"), str)}

    def search_node(search_id: str) -> str:
        search = searches_by_id.get(search_id)
        if search is None:
            detail = "hyperparameter search"
        else:
            trials = search.get("trials") or []
            scored = [t.get("value") for t in trials if isinstance(t.get("value"), int | float)]
            best = (max(scored) if search.get("direction") != "minimize" else min(scored)) if scored else None
            detail = f"{len(trials)} trials of {search.get('budget', '?')} · {search.get('status', '')}"
            if best is not None:
                detail += f" · best {search.get('metric', 'score')} {best:.4g}"
        href = f"/runs?model={name}&search={_q(search_id)}"
        return g.node(f"search:{search_id}", "search", f"search {search_id[:8]}", detail, href)

    by_number = {int(v["version"]): v for v in versions if isinstance(v.get("version"), int)}
    for number in sorted(by_number):
        version = by_number[number]
        lineage = version.get("lineage") or {}
        aliases = version.get("aliases") or []
        detail = " · ".join(
            part
            for part in (
                str(version.get("status") or ""),
                " ".join(f"@{a}" for a in aliases),
                _metrics(version.get("metrics")),
            )
            if part
        )
        node = g.node(
            f"version:{number}",
            "version",
            f"v{number} ({version.get('semver', '?')})",
            detail,
            f"/models/{name}/versions/{number}",
        )
        run_id = version.get("run_id")
        if not run_id and lineage.get("training_job_id"):
            run = runs_by_job.get(str(lineage["training_job_id"]))
            run_id = run["id"] if run else None
        source: str | None = None
        if run_id:
            source = run_node(str(run_id))
            g.edge(source, node)
        data = dataset_node(lineage.get("dataset_fingerprint"))
        if data:
            g.edge(data, source or node)
        artifacts = version.get("artifacts") or {}
        for role in VARIANT_ROLES:
            artifact = artifacts.get(role)
            if not isinstance(artifact, dict):
                continue
            variant = g.node(
                f"variant:{number}:{role}",
                "variant",
                f"v{number} {role}",
                " · ".join(p for p in (str(artifact.get("format") or ""), _size(artifact.get("size"))) if p),
                f"/models/{name}/versions/{number}#variants",
            )
            g.edge(node, variant)

    # the other trials of each search shown: every trial that trained a run
    for job in jobs:
        if job.get("search_id") and f"search:{job['search_id']}" in g.nodes and job.get("run_id"):
            run_node(str(job["run_id"]))

    # a parent version: the run of its child started from it (fine-tuning), drawn parent → child's run
    for number, version in by_number.items():
        parent = (version.get("lineage") or {}).get("parent_version")
        if isinstance(parent, int) and parent in by_number:
            child_run = version.get("run_id")
            target = f"run:{child_run}" if child_run and f"run:{child_run}" in g.nodes else f"version:{number}"
            g.edge(f"version:{parent}", target)

    for deployment in deployments:
        deployed = deployment.get("version")
        stage = str(deployment.get("stage") or "")
        variant = str(deployment.get("variant") or "fp32")
        percent = deployment.get("traffic_percent")
        traffic = f"{percent:g} % of traffic" if isinstance(percent, int | float) else ""
        replicas = (
            f"{deployment.get('ready_replicas', 0)}/{deployment.get('desired_replicas', 0)} replicas ready"
            if stage in SERVING_STAGES
            else ""
        )
        detail = " · ".join(p for p in (str(deployment.get("state") or ""), traffic, replicas) if p)
        node = g.node(
            f"deployment:{deployment.get('id', f'{deployed}-{variant}-{stage}')}",
            "deployment",
            f"{stage} v{deployed} {variant}",
            detail,
            f"/monitoring/{name}",
        )
        if not isinstance(deployed, int):
            continue
        roles = [r for r in VARIANT_ROLES if f"variant:{deployed}:{r}" in g.nodes]
        origin = variant_role(variant, roles)
        g.edge(f"variant:{deployed}:{origin}" if origin else f"version:{deployed}", node)

    return LineageGraph(nodes=list(g.nodes.values()), edges=g.edges, warnings=list(warnings or []))
