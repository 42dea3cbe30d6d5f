"""One REST client for every service the CLI talks to; every failure exits with one readable line."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NoReturn, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from gallery_common.contracts.registry import ModelPublic, VersionPublic

from .console import fail
from .login_cmd import stored_token

M = TypeVar("M", bound=BaseModel)

PROJECT_HEADER = "X-Gallery-Project"

_selected_project: str | None = None


def select_project(project: str | None) -> None:
    """The project this invocation acts in (`--project` / GALLERY_PROJECT); None: the caller's home project."""
    global _selected_project
    _selected_project = project or None


def selected_project() -> str | None:
    """The project chosen with `--project` or GALLERY_PROJECT, if any."""
    return _selected_project


def project_params() -> dict[str, str]:
    """`?project=` for a list command when a project was chosen, so the list shows only that project."""
    return {"project": _selected_project} if _selected_project else {}


def error_of(response: httpx.Response) -> str:
    """What a refusal says: its `{"error": ...}`, else its text."""
    try:
        return str(response.json().get("error") or response.text)
    except (ValueError, AttributeError):  # not JSON, or not an object
        return response.text


class ServiceClient:
    """A service's REST API: URL from its `GALLERY_<SERVICE>_URL`, bearer token from GALLERY_TOKEN (else
    the one `gallery login` kept), and the chosen project (if any) in the X-Gallery-Project header."""

    service: ClassVar[str]
    url_variable: ClassVar[str]
    default_url: ClassVar[str]

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = (base_url or os.environ.get(self.url_variable) or self.default_url).rstrip("/")
        token = token if token is not None else os.environ.get("GALLERY_TOKEN") or stored_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if _selected_project:
            # every request names the project: a create without one in its body lands there
            headers[PROJECT_HEADER] = _selected_project
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, not_found: str | None = None, answers: Collection[int] = (), **kwargs: Any
    ) -> httpx.Response:
        """The answer; a failure exits with one line (`not_found`, when given, is the line for a 404), except
        the statuses in `answers`, which the caller reads."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._unreachable(exc)
        self._check(response, method, path, not_found, answers)
        return response

    @contextmanager
    def stream(self, method: str, path: str, not_found: str | None = None, **kwargs: Any) -> Iterator[httpx.Response]:
        """The answer with its body not yet read (`iter_bytes`), failing as `request` does; a connection
        lost while the body is read exits with one line too."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                self._check(response, method, path, not_found, ())
                yield response
        except httpx.HTTPError as exc:
            self._unreachable(exc)

    def _unreachable(self, exc: httpx.HTTPError) -> NoReturn:
        fail(
            f"cannot reach the {self.service} at {self.base_url}: {exc or type(exc).__name__}"
            f" (is it running? `gallery up`, or set {self.url_variable})"
        )

    def _check(
        self, response: httpx.Response, method: str, path: str, not_found: str | None, answers: Collection[int]
    ) -> None:
        if response.status_code == 404 and not_found:
            fail(not_found)
        if response.status_code >= 400 and response.status_code not in answers:
            fail(f"the {self.service} refused {method} {path} ({response.status_code}): {error_of(response)}")

    def json(self, method: str, path: str, not_found: str | None = None, **kwargs: Any) -> Any:
        return self.request(method, path, not_found, **kwargs).json()

    def parsed(self, answer: type[M], method: str, path: str, **kwargs: Any) -> M:
        """The answer as `answer`; one that is not one exits with what did not fit."""
        return self.parse(answer, self.json(method, path, **kwargs), f"{method} {path}")

    def parse(self, answer: type[M], data: Any, what: str) -> M:
        try:
            return answer.model_validate(data)
        except ValidationError as exc:
            fail(f"the {self.service} answered {what} with something that is not a {answer.__name__}: {exc}")


class RegistryServiceClient(ServiceClient):
    """The registry's REST API, its reads answered with the registry's own models
    (`gallery_common.contracts.registry`). Not `gallery_common.registry_client.RegistryClient`, the
    services' client: that one retries an outage for seconds, this one says at once what is wrong."""

    service = "registry"
    url_variable = "GALLERY_REGISTRY_URL"
    default_url = "http://127.0.0.1:8001"

    def get_model(self, name: str) -> ModelPublic:
        return self.parsed(ModelPublic, "GET", model_path(name))

    def get_version(self, name: str, version: int) -> VersionPublic:
        return self.parsed(VersionPublic, "GET", f"{model_path(name)}/versions/{version}")

    def get_version_by_alias(self, name: str, alias: str) -> VersionPublic:
        return self.parsed(VersionPublic, "GET", f"{model_path(name)}/aliases/{quote(alias, safe='')}")

    def latest_versions(self, name: str, limit: int) -> list[VersionPublic]:
        """The model's newest `limit` versions, newest first."""
        page = self.json("GET", f"{model_path(name)}/versions", params={"limit": limit})
        return [self.parse(VersionPublic, v, f"a version of {name}") for v in page["versions"]]


def model_path(name: str) -> str:
    """The registry's path of model `name` (quoted: a CLI argument may hold anything)."""
    return f"/api/v1/models/{quote(name, safe='')}"


class TrainerClient(ServiceClient):
    service = "trainer"
    url_variable = "GALLERY_TRAINER_URL"
    default_url = "http://127.0.0.1:8002"


class OptimizerClient(ServiceClient):
    service = "optimizer"
    url_variable = "GALLERY_OPTIMIZER_URL"
    default_url = "http://127.0.0.1:8003"


class DeployerClient(ServiceClient):
    service = "deployer"
    url_variable = "GALLERY_DEPLOYER_URL"
    default_url = "http://127.0.0.1:8004"


class MonitorClient(ServiceClient):
    service = "monitor"
    url_variable = "GALLERY_MONITOR_URL"
    default_url = "http://127.0.0.1:8005"


class GatewayClient(ServiceClient):
    service = "gateway"
    url_variable = "GALLERY_GATEWAY_URL"
    default_url = "http://127.0.0.1:8080"


class GalleryClient(ServiceClient):
    service = "gallery"
    url_variable = "GALLERY_GALLERY_URL"
    default_url = "http://127.0.0.1:8000"


def client_for(service: str) -> type[ServiceClient]:
    """The REST client of the service named `service` (trainer, registry, ...)."""
    clients: list[type[ServiceClient]] = [
        RegistryServiceClient,
        TrainerClient,
        OptimizerClient,
        DeployerClient,
        MonitorClient,
        GatewayClient,
        GalleryClient,
    ]
    return next(client for client in clients if client.service == service)
