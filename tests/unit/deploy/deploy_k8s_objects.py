"""Reading the rendered manifests in deploy/k8s/rendered: objects, pod templates, generated ConfigMaps."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.manifests import KubernetesOptions, deployment_manifest

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production", "production-sso")
K8S_VERSION = "1.37.0"  # the Kubernetes every rendered object must be valid for
WORKLOADS = ("Deployment", "StatefulSet", "Job")
Obj = dict[str, Any]


@cache
def render_k8s() -> ModuleType:
    """scripts/render_k8s.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _manifests(overlay: str) -> tuple[Obj, ...]:
    module = render_k8s()
    return tuple(module.objects(module.rendered_path(overlay).read_text(encoding="utf-8")))


def manifests(overlay: str) -> list[Obj]:
    """The checked-in rendering of `overlay`, one dict per object."""
    return list(_manifests(overlay))


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOADS)


def container(workload: Obj, name: str | None = None) -> Obj:
    containers = pod_spec(workload)["containers"]
    name = name or workload["metadata"]["name"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def env_value(container: Obj, name: str) -> str:
    (value,) = [e["value"] for e in container.get("env", []) if e["name"] == name]
    return str(value)


def config_map_mounted(objs: list[Obj], workload: Obj, mount_path: str) -> Obj:
    """The ConfigMap (generated names carry a hash suffix) a workload mounts at `mount_path`."""
    mounts = {m["name"]: m["mountPath"] for c in pod_spec(workload)["containers"] for m in c.get("volumeMounts", [])}
    for volume in pod_spec(workload).get("volumes", []):
        if mounts.get(volume["name"]) == mount_path and "configMap" in volume:
            return find(objs, "ConfigMap", volume["configMap"]["name"])
    raise AssertionError(f"{workload['metadata']['name']} mounts no ConfigMap at {mount_path}")


def port_number(workload: Obj, port: int | str) -> int:
    """A container port of the workload's pods by number or name."""
    for c in pod_spec(workload)["containers"]:
        for p in c.get("ports", []):
            if port in (p["containerPort"], p.get("name")):
                return int(p["containerPort"])
    raise AssertionError(f"{workload['metadata']['name']} has no port {port!r}")


def selected_by(objs: list[Obj], selector: dict[str, str]) -> list[Obj]:
    """The workloads whose pods carry every label of `selector`."""
    return [w for w in workloads(objs) if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Kustomize env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def production_secret_keys(overlay: str = "production") -> dict[str, set[str]]:
    """The Secrets production expects to exist, with their keys (overlays/production/<name>.example.env),
    and those of the components `overlay` adds to it (production-sso: components/sso)."""
    folders = [K8S / "overlays" / "production"]
    if overlay == "production-sso":
        folders.append(K8S / "components" / "sso")
    examples = [example for folder in folders for example in folder.glob("*.example.env")]
    return {p.name.removesuffix(".example.env"): set(env_file(p)) for p in examples}


def references(text: str) -> list[str]:
    """The $(VAR) references Kubernetes expands in an env value or command."""
    return re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text)


def nats_config_files(objs: list[Obj]) -> dict[str, str]:
    """The files nats-server finds in its configuration folder (/etc/nats): nats.conf and what it includes."""
    files: dict[str, str] = config_map_mounted(objs, find(objs, "StatefulSet", "nats"), "/etc/nats")["data"]
    return files


def nats_users(authorization: str) -> list[Obj]:
    """The users of the generated authorization.conf, each {"user", "password", "permissions"}; an unquoted
    `$NAME` password (an environment variable for nats-server) comes back as the string "$NAME"."""
    body = "\n".join(line for line in authorization.splitlines() if not line.lstrip().startswith("#"))
    match = re.fullmatch(r"authorization \{\s*users: (\[.*\])\s*\}\s*", body, re.S)
    assert match, "authorization.conf is not the block scripts/render_k8s.py generates"
    users: list[Obj] = json.loads(re.sub(r'(?<=": )(\$[A-Za-z_][A-Za-z0-9_]*)', r'"\1"', match[1]))
    return users


def kubernetes_options(objs: list[Obj]) -> KubernetesOptions:
    """The deployer's GALLERY_KUBERNETES as its pod will see it (after Kubernetes expands $(POD_NAMESPACE))."""
    deployer = find(objs, "Deployment", "deployer")
    raw = env_value(container(deployer), "GALLERY_KUBERNETES")
    return KubernetesOptions.model_validate_json(raw.replace("$(POD_NAMESPACE)", deployer["metadata"]["namespace"]))


def model_server(options: KubernetesOptions, gpu: bool) -> Obj:
    """The Deployment the deployer creates for a model server with these options."""
    spec = ServerSpec(
        deployment_id="digits-v3-int8",
        model="digits",
        version=3,
        variant="int8",
        artifact_uri="s3://modelgallery/runs/r1/model.onnx",
        artifact_sha256="0" * 64,
        gpu=gpu,
    )
    return deployment_manifest(spec, options)


def restricted_violations(name: str, pod: Obj) -> list[str]:
    """What keeps a pod out of a namespace enforcing the "restricted" Pod Security Standard, or root."""
    found = []
    pod_ctx = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        found.append(f"{name}: shares a host namespace")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        found.append(f"{name}: mounts a host path")
    for c in pod["containers"] + pod.get("initContainers", []):
        ctx = {**pod_ctx, **c.get("securityContext", {})}
        where = f"{name}/{c['name']}"
        if ctx.get("runAsNonRoot") is not True or not ctx.get("runAsUser"):
            found.append(f"{where}: may run as root")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: privilege escalation allowed")
        if c.get("securityContext", {}).get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{where}: keeps capabilities")
        if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            found.append(f"{where}: no RuntimeDefault seccomp profile")
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: writable root filesystem")
    return found
