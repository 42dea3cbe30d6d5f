"""Calls to the Kubernetes API with the official client (the `kubernetes` extra), shared by the deployer's
Kubernetes runtime and the Lease leader lock: the in-cluster or kubeconfig client, each call in a worker
thread answered as the API's own JSON, and API errors as `GalleryError`s with the server's message."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .errors import BadRequest, Conflict, GalleryError, InvalidRequest, NotFound, Unavailable

Obj = dict[str, Any]
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster() -> bool:
    """Whether this process runs in a pod with its service account's token mounted."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").is_file()


def pod_namespace() -> str | None:
    """The namespace of this pod's service account, None outside a cluster."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def default_api_client(*, retries: bool = True) -> client.ApiClient:
    """A client for the in-cluster service account, else the local kubeconfig; Unavailable with neither.
    `retries=False` turns off urllib3's retries (by default three, each as long as the request timeout)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # KUBECONFIG as it is now: the client reads its default when it is imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise Unavailable(
                f"no Kubernetes configuration: not running in a cluster and no kubeconfig ({exc})"
            ) from None
    if not retries:
        configuration.retries = False
    return client.ApiClient(configuration)


def api_message(exc: ApiException) -> str:
    """The API server's own message from an error `Status`, else the HTTP status line."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}".strip()


def api_error(what: str, exc: ApiException) -> GalleryError:
    """The `GalleryError` an API error answer to `what` is (404 NotFound, 409 Conflict, ...)."""
    message = api_message(exc)
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what}: {message}")
    if status == 409:
        return Conflict(f"{what}: {message}")
    if status == 422:
        return InvalidRequest(f"Kubernetes refused {what}: {message}")
    if status == 400:
        return BadRequest(f"Kubernetes refused {what}: {message}")
    if status in (401, 403):
        return Unavailable(f"Kubernetes API refused this service's credentials for {what}: {message}")
    return Unavailable(f"Kubernetes API failed {what}: {message}")


def call_sync(what: str, fn: Callable[..., Any], *args: Any, timeout_s: float, **kwargs: Any) -> Obj:
    """Call a client method; the answer as the API's JSON, errors (and an unreachable API) as GalleryErrors."""
    kwargs.update(_request_timeout=timeout_s, _preload_content=False)
    try:
        response = fn(*args, **kwargs)
        try:
            body = json.loads(response.data or b"{}")
        finally:
            response.release_conn()
    except ApiException as exc:
        raise api_error(what, exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise Unavailable(f"Kubernetes API unreachable while {what}: {exc}") from None
    except ValueError as exc:
        raise Unavailable(f"unexpected answer from the Kubernetes API while {what}: {exc}") from None
    return body if isinstance(body, dict) else {}


async def call(
    what: str, fn: Callable[..., Any], *args: Any, timeout_s: float, abandon_on_cancel: bool = False, **kwargs: Any
) -> Obj:
    """`call_sync` in a worker thread (the client blocks). Cancelled, it waits for the thread, unless
    `abandon_on_cancel`: then it returns at once and the request runs on, its answer unread."""
    request = functools.partial(call_sync, what, fn, *args, timeout_s=timeout_s, **kwargs)
    return await anyio.to_thread.run_sync(request, abandon_on_cancel=abandon_on_cancel)
