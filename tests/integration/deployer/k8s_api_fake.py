"""The slice of the Kubernetes REST API the deployer's runtime uses, served in-process over HTTP.

Objects live in memory with the server-side fields a real API server adds (uid, resourceVersion,
generation, creationTimestamp, managedFields). Supported: server-side apply (PATCH
`application/apply-patch+yaml`, fieldManager required, conflicts with another manager's fields
unless force), JSON merge patch, GET, LIST with label and field selectors, watch streams
(newline-delimited events from a resourceVersion), DELETE, and `Status` error bodies shaped like the
real ones. Leases (coordination.k8s.io/v1) as leader election uses them: POST creates (409
AlreadyExists when the name is taken), PUT replaces (409 Conflict when the body's
metadata.resourceVersion is not the stored one). Nothing runs controllers: a test moves a
Deployment along with the hooks (`complete_rollout`, `unschedulable`, `crash_loop`,
`progress_deadline_exceeded`).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from k8s_fake_objects import (
    INSTANCE_LABEL,
    ApiError,
    RecordedRequest,
    check_lease,
    deadline_exceeded_status,
    decode_body,
    matches_fields,
    matches_labels,
    merge_patch,
    pod_of,
    rollout_status,
    timestamp,
)

RESOURCES = {
    # plural: (kind, apiVersion, group for messages)
    "deployments": ("Deployment", "apps/v1", "apps"),
    "services": ("Service", "v1", ""),
    "pods": ("Pod", "v1", ""),
    "horizontalpodautoscalers": ("HorizontalPodAutoscaler", "autoscaling/v2", "autoscaling"),
    "poddisruptionbudgets": ("PodDisruptionBudget", "policy/v1", "policy"),
    "leases": ("Lease", "coordination.k8s.io/v1", "coordination.k8s.io"),
    "nodes": ("Node", "v1", ""),
}
CLUSTER_SCOPED = {"nodes"}  # stored under namespace ""; their paths have no /namespaces/<ns>
# What a new object's status holds before any controller has looked at it.
INITIAL_STATUS: dict[str, dict[str, Any]] = {
    "deployments": {},
    "services": {"loadBalancer": {}},
    "pods": {"phase": "Pending"},
    "horizontalpodautoscalers": {"currentReplicas": 0, "desiredReplicas": 0},
    "poddisruptionbudgets": {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0},
}
NO_STATUS = {"leases"}  # kinds without a status
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z0-9.-]+)/(?P<version>v[0-9a-z]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)


class FakeKubernetesApi:
    """An in-memory API server on a free loopback port; use as a context manager."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, plural, object)
        self._rv = 100
        self._changed = threading.Condition()
        self._closing = False
        self._failures: list[tuple[str, int, str, str]] = []
        self._delays: list[tuple[str, float]] = []
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-k8s-api", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubernetesApi:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- inspection and hooks for tests -------------------------------------------------------

    def get(self, plural: str, name: str, namespace: str = "modelgallery") -> dict[str, Any] | None:
        """A stored object (a copy), or None."""
        with self._changed:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def names(self, plural: str, namespace: str = "modelgallery") -> list[str]:
        with self._changed:
            return sorted(n for p, ns, n in self._objects if p == plural and ns == namespace)

    def fail_next(self, method: str, code: int, reason: str, message: str) -> None:
        """Answer the next `method` request with this error Status."""
        with self._changed:
            self._failures.append((method, code, reason, message))

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig that points a client (and a service started with KUBECONFIG) at this server."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f'clusters: [{{name: fake, cluster: {{server: "{self.url}"}}}}]\n'
            "users: [{name: fake, user: {token: fake}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
        )
        return path

    def delay_next(self, method: str, seconds: float) -> None:
        """Answer the next `method` request `seconds` late (an API server that hangs)."""
        with self._changed:
            self._delays.append((method, seconds))

    def add_node(self, name: str, labels: dict[str, str], *, unschedulable: bool = False) -> None:
        """A cluster node with these labels (`unschedulable`: cordoned)."""
        with self._changed:
            node = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": name, "labels": dict(labels)},
                "spec": {"unschedulable": True} if unschedulable else {},
                "status": {},
            }
            self._create("nodes", node)

    def complete_rollout(self, name: str, namespace: str = "modelgallery") -> None:
        """The controller finished: every desired replica updated and ready; old pods gone."""
        self._move(name, namespace, ready=True)

    def unschedulable(
        self, name: str, message: str, since: datetime | None = None, namespace: str = "modelgallery"
    ) -> None:
        """Every desired pod pending with PodScheduled=False/Unschedulable since `since` (default now)."""
        self._move(name, namespace, ready=False, unschedulable=(message, since or datetime.now(UTC)))

    def crash_loop(self, name: str, restarts: int = 4, namespace: str = "modelgallery") -> None:
        """Every desired pod running but crash-looping (exit code 1, back-off)."""
        self._move(name, namespace, ready=False, crash_restarts=restarts)

    def progress_deadline_exceeded(self, name: str, namespace: str = "modelgallery") -> None:
        """The controller gave up: Progressing=False with reason ProgressDeadlineExceeded."""
        with self._changed:
            dep = self._objects[("deployments", namespace, name)]
            dep["status"] = {**dep.get("status", {}), **deadline_exceeded_status(dep)}
            self._store("MODIFIED", "deployments", dep)

    def _move(
        self,
        name: str,
        namespace: str,
        *,
        ready: bool,
        unschedulable: tuple[str, datetime] | None = None,
        crash_restarts: int = 0,
    ) -> None:
        with self._changed:
            dep = self._objects[("deployments", namespace, name)]
            self._delete_pods_of(namespace, name)
            for i in range(dep["spec"].get("replicas", 1)):
                self._create(
                    "pods", pod_of(dep, i, ready=ready, unschedulable=unschedulable, crash_restarts=crash_restarts)
                )
            dep["status"] = rollout_status(dep, ready=ready)
            self._store("MODIFIED", "deployments", dep)

    def _delete_pods_of(self, namespace: str, deployment: str) -> None:
        for key in [k for k, o in self._objects.items() if k[0] == "pods" and k[1] == namespace]:
            if self._objects[key]["metadata"]["labels"].get(INSTANCE_LABEL) == deployment:
                self._store("DELETED", "pods", self._objects.pop(key))

    # --- the store ------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, event: str, plural: str, obj: dict[str, Any]) -> None:
        if event != "DELETED":
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._objects[(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        else:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
        self._events.append((self._rv, event, plural, copy.deepcopy(obj)))
        self._changed.notify_all()

    def _create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        meta.update({"uid": str(uuid.uuid4()), "creationTimestamp": timestamp(), "generation": 1})
        meta.setdefault("managedFields", [])
        self._store("ADDED", plural, obj)
        return obj

    def handle(
        self, method: str, path: str, query: dict[str, str], content_type: str, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        """The status code and JSON answer to a non-watch request; raises ApiError for error answers."""
        match = _PATH.match(path)
        if (
            not match
            or match["plural"] not in RESOURCES
            or (match["ns"] is None) != (match["plural"] in CLUSTER_SCOPED)
        ):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        plural, ns, name = match["plural"], match["ns"] or "", match["name"]
        kind, api_version, group = RESOURCES[plural]
        resource = f"{plural}.{group}" if group else plural
        with self._changed:
            delay = next((d for d in self._delays if d[0] == method), None)
            if delay:
                self._delays.remove(delay)
        if delay:
            time.sleep(delay[1])
        with self._changed:
            self.requests.append(RecordedRequest(method, path, query, content_type, decode_body(raw, content_type)))
            failure = next((f for f in self._failures if f[0] == method), None)
            if failure:
                self._failures.remove(failure)
                raise ApiError(failure[1], failure[2], failure[3])
            if name is None and method == "GET":
                items = [
                    copy.deepcopy(o)
                    for (p, o_ns, _), o in sorted(self._objects.items())
                    if p == plural
                    and o_ns == ns
                    and matches_labels(o["metadata"].get("labels", {}), query.get("labelSelector", ""))
                    and matches_fields(o, query.get("fieldSelector", ""))
                ]
                for item in items:  # list items carry no kind or apiVersion
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                meta = {"resourceVersion": str(self._rv)}
                return 200, {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": items}
            if name is None and method == "POST":
                return self._post(plural, kind, api_version, resource, group, ns, query, content_type, raw)
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not supported here")
            current = self._objects.get((plural, ns, name))
            not_found = ApiError(
                404, "NotFound", f'{resource} "{name}" not found', {"name": name, "group": group, "kind": plural}
            )
            if method == "GET":
                if current is None:
                    raise not_found
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                if current is None:
                    raise not_found
                del self._objects[(plural, ns, name)]
                self._store("DELETED", plural, current)
                if plural == "deployments":  # the garbage collector removes the pods it owned
                    self._delete_pods_of(ns, name)
                if plural == "services":
                    return 200, copy.deepcopy(current)
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": group, "kind": plural, "uid": current["metadata"]["uid"]},
                }
            if method == "PATCH":
                return self._patch(
                    plural, kind, api_version, resource, ns, name, query, content_type, raw, current, not_found
                )
            if method == "PUT":
                return self._put(plural, kind, api_version, resource, ns, name, query, content_type, raw, current)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    @staticmethod
    def _body(kind: str, api_version: str, content_type: str, raw: bytes) -> dict[str, Any]:
        """A create or replace body: JSON of the URL's kind. The client sends no Content-Type for it, and
        the API server reads a body without one as its first supported type, JSON."""
        if content_type not in ("", "application/json"):
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        body = json.loads(raw)
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the body is a {body.get('apiVersion')} {body.get('kind')}, the URL names {api_version} {kind}",
            )
        if kind == "Lease":
            check_lease(body)
        return body  # type: ignore[no-any-return]

    def _post(
        self,
        plural: str,
        kind: str,
        api_version: str,
        resource: str,
        group: str,
        ns: str,
        query: dict[str, str],
        content_type: str,
        raw: bytes,
    ) -> tuple[int, dict[str, Any]]:
        body = self._body(kind, api_version, content_type, raw)
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f'{kind} "" is invalid: metadata.name: Required value: name is required')
        if meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if meta.get("resourceVersion"):
            raise ApiError(
                422, "Invalid", f'{kind} "{name}" is invalid: metadata.resourceVersion: Invalid value: must be empty'
            )
        if (plural, ns, name) in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource} "{name}" already exists',
                {"name": name, "group": group, "kind": plural},
            )
        meta["namespace"] = ns
        meta["managedFields"] = [self._managed(query.get("fieldManager", "unknown"), "Update", api_version)]
        if plural not in NO_STATUS:
            body["status"] = copy.deepcopy(INITIAL_STATUS[plural])
        return 201, copy.deepcopy(self._create(plural, body))

    def _put(
        self,
        plural: str,
        kind: str,
        api_version: str,
        resource: str,
        ns: str,
        name: str,
        query: dict[str, str],
        content_type: str,
        raw: bytes,
        current: dict[str, Any] | None,
    ) -> tuple[int, dict[str, Any]]:
        """Replace; a body with metadata.resourceVersion is written only over that version (optimistic lock)."""
        body = self._body(kind, api_version, content_type, raw)
        meta = body.setdefault("metadata", {})
        if meta.get("name") != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
            )
        if current is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": plural})
        stored = current["metadata"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != stored["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "kind": plural},
            )
        meta.update({k: stored[k] for k in ("uid", "creationTimestamp", "namespace", "generation")})
        manager = query.get("fieldManager", "unknown")
        fields = [f for f in stored["managedFields"] if (f["manager"], f["operation"]) != (manager, "Update")]
        meta["managedFields"] = [*fields, self._managed(manager, "Update", api_version)]
        if plural not in NO_STATUS:
            body["status"] = current.get("status", {})
        self._store("MODIFIED", plural, body)
        return 200, copy.deepcopy(body)

    def _patch(
        self,
        plural: str,
        kind: str,
        api_version: str,
        resource: str,
        ns: str,
        name: str,
        query: dict[str, str],
        content_type: str,
        raw: bytes,
        current: dict[str, Any] | None,
        not_found: ApiError,
    ) -> tuple[int, dict[str, Any]]:
        manager = query.get("fieldManager", "")
        if content_type == "application/apply-patch+yaml":
            if not manager:
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                )
            body = yaml.safe_load(raw)
            named = body.get("metadata", {}).get("name")
            if named != name:
                raise ApiError(
                    400, "BadRequest", f"the name of the object ({named}) does not match the name on the URL ({name})"
                )
            if body.get("kind") != kind or body.get("apiVersion") != api_version:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the body is a {body.get('apiVersion')} {body.get('kind')}, the URL names {api_version} {kind}",
                )
            if current is None:
                obj = copy.deepcopy(body)
                obj["metadata"]["namespace"] = ns
                obj["metadata"]["managedFields"] = [self._managed(manager, "Apply", api_version)]
                if plural == "services":
                    obj["spec"]["clusterIP"] = f"10.96.0.{len(self._objects) % 250 + 1}"
                obj["status"] = copy.deepcopy(INITIAL_STATUS[plural])
                return 201, copy.deepcopy(self._create(plural, obj))
            others = [f["manager"] for f in current["metadata"]["managedFields"] if f["manager"] != manager]
            if others and query.get("force") != "true":
                raise ApiError(
                    409,
                    "Conflict",
                    f'Apply failed with 1 conflict: conflict with "{others[0]}" using {api_version}: .spec',
                )
            updated = copy.deepcopy(body)
            if others:
                current["metadata"]["managedFields"] = [
                    f for f in current["metadata"]["managedFields"] if f["manager"] == manager
                ]
            operation = "Apply"
        elif content_type == "application/merge-patch+json":
            if current is None:
                raise not_found
            updated = merge_patch(current, json.loads(raw))
            operation = "Update"
        else:
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        meta = current["metadata"]
        updated["metadata"] = {
            **updated.get("metadata", {}),
            **{k: meta[k] for k in ("uid", "creationTimestamp", "namespace")},
        }
        updated["metadata"]["generation"] = meta["generation"] + (updated.get("spec") != current.get("spec"))
        fields = [f for f in meta["managedFields"] if (f["manager"], f["operation"]) != (manager, operation)]
        updated["metadata"]["managedFields"] = [*fields, self._managed(manager or "unknown", operation, api_version)]
        if plural == "services":
            updated["spec"]["clusterIP"] = current["spec"]["clusterIP"]
        updated["status"] = current.get("status", {})
        self._store("MODIFIED", plural, updated)
        return 200, copy.deepcopy(updated)

    @staticmethod
    def _managed(manager: str, operation: str, api_version: str) -> dict[str, Any]:
        return {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": timestamp(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        }

    def watch_events(self, path: str, query: dict[str, str]) -> Any:
        """Yield watch event lines for a collection until timeoutSeconds passes or the fake closes."""
        match = _PATH.match(path)
        if not match or match["name"] is not None:
            raise ApiError(404, "NotFound", f"cannot watch {path}")
        plural, ns = match["plural"], match["ns"]
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "1800"))
        with self._changed:
            self.requests.append(RecordedRequest("WATCH", path, query, "", None))
            start = query.get("resourceVersion", "0")
            if start in ("", "0"):
                pending = [
                    (self._rv, "ADDED", plural, copy.deepcopy(o))
                    for (p, o_ns, _), o in sorted(self._objects.items())
                    if p == plural and o_ns == ns
                ]
                since = self._rv
            else:
                pending, since = [], int(start)
        while True:
            with self._changed:
                pending += [e for e in self._events if e[0] > since and e[2] == plural]
                since = max([since, *(e[0] for e in self._events)])
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closing:
                        return
                    self._changed.wait(min(remaining, 0.5))
                    continue
            for _, event, _, obj in pending:
                if (
                    obj["metadata"]["namespace"] == ns
                    and matches_labels(obj["metadata"].get("labels", {}), labels)
                    and matches_fields(obj, fields)
                ):
                    yield json.dumps({"type": event, "object": obj}).encode() + b"\n"
            pending = []


def _handler_for(api: FakeKubernetesApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without this Nagle holds the body ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *_: Any) -> None:  # keep test output quiet
            return

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            try:
                if method == "GET" and query.get("watch") in ("true", "1"):
                    self._stream(api.watch_events(parts.path, query))
                    return
                code, body = api.handle(method, parts.path, query, content_type, raw)
            except ApiError as exc:
                code, body = exc.body["code"], exc.body
            payload = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # a client that gave up waiting (delay_next)
                self.close_connection = True

        def _stream(self, lines: Any) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in lines:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

    return Handler
