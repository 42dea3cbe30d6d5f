"""A real nats-server (the version the manifests run) started with the configuration the cluster gives it:
the dev overlay's users and passwords work as the code expects, production's TLS is what clients check,
and production's reloader makes the server serve a renewed certificate.

The ConfigMap's files, the Secret's values and the certificate are laid out in a temporary folder at the
paths the pod mounts them at; only addresses and those paths change."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import re
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_k8s_objects import (
    K8S,
    Obj,
    config_map_mounted,
    container,
    env_file,
    find,
    manifests,
    nats_config_files,
    of_kind,
    pod_spec,
)

from gallery_common.bus import EventBus
from gallery_common.errors import Unavailable
from gallery_common.nats_auth import NatsCredentials
from gallery_common.nats_server import nats_server_binary
from gallery_common.netutil import free_port, wait_for_port

USERS_SECRET = "modelgallery-nats-users"
CERT_MANAGER = K8S / "overlays" / "production" / "nats-tls-cert-manager.yaml"


def passwords(overlay: str) -> dict[str, str]:
    """dev: the generated Secret's values; production: the example file's (the keys an operator creates)."""
    if overlay == "production":
        return env_file(K8S / "overlays" / "production" / f"{USERS_SECRET}.example.env")
    (secret,) = [s for s in of_kind(manifests("dev"), "Secret") if s["metadata"]["name"] == USERS_SECRET]
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


class Authority:
    """A private CA, as cert-manager's CA Issuer is, issuing server certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            self._builder(subject, self.key)
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @staticmethod
    def _builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
        )

    def issue(self, names: list[str], usages: list[str]) -> tuple[x509.Certificate, bytes]:
        """A certificate for `names` with cert-manager's `usages`, and its PEM private key."""
        key = ec.generate_private_key(ec.SECP256R1())
        extended = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}
        certificate = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), key)
            .issuer_name(self.certificate.subject)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([extended[u] for u in usages if u in extended]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificate, pem_key

    def write_tls_secret(self, folder: Path, names: list[str], usages: list[str]) -> x509.Certificate:
        """tls.crt, tls.key and ca.crt in `folder`, as cert-manager writes them into the Secret."""
        certificate, key = self.issue(names, usages)
        folder.mkdir(parents=True)
        (folder / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (folder / "tls.key").write_bytes(key)
        (folder / "ca.crt").write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return certificate


def nats_certificate_spec() -> Obj:
    (certificate,) = [
        d
        for d in yaml.safe_load_all(CERT_MANAGER.read_text(encoding="utf-8"))
        if d and d["kind"] == "Certificate" and not d["spec"].get("isCA")
    ]
    spec: Obj = certificate["spec"]
    return spec


class PodFolders:
    """The nats pod's mounts as folders under a temporary root; `local()` rewrites a pod path."""

    def __init__(self, root: Path, workload: Obj, container_name: str) -> None:
        self.mounts = {m["mountPath"]: root / m["name"] for m in container(workload, container_name)["volumeMounts"]}

    def local(self, text: str) -> str:
        for mount in sorted(self.mounts, key=len, reverse=True):
            text = re.sub(re.escape(mount) + r"(?=/|\s|$)", str(self.mounts[mount]), text)
        return text


def substitute(pattern: str, replacement: str, text: str) -> str:
    changed, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1, f"nats.conf has no single {pattern!r}"
    return changed


class RunningNats:
    def __init__(self, overlay: str, root: Path, tls: Callable[[Path], None] | None = None) -> None:
        objs = manifests(overlay)
        self.workload = find(objs, "StatefulSet", "nats")
        self.folders = PodFolders(root, self.workload, "nats")
        config_dir = self.folders.mounts["/etc/nats"]
        config_dir.mkdir(parents=True)
        self.port, http, cluster = free_port(), free_port(), free_port()
        for name, text in nats_config_files(objs).items():
            if name == "nats.conf":
                text = substitute(r"^listen: .*$", f"listen: 127.0.0.1:{self.port}", text)
                text = substitute(r"^http: .*$", f"http: 127.0.0.1:{http}", text)
                if overlay == "production":
                    text = substitute(r"^  listen: .*$", f"  listen: 127.0.0.1:{cluster}", text)
            (config_dir / name).write_text(self.folders.local(text), encoding="utf-8")
        for folder in ("/data", "/var/run/nats"):
            self.folders.mounts[folder].mkdir()
        if tls is not None:
            tls(self.folders.mounts["/etc/nats-tls"])
        (source,) = container(self.workload, "nats")["envFrom"]
        env = {"PATH": os.environ["PATH"], "POD_NAME": f"{self.workload['metadata']['name']}-0"}
        env |= {source["prefix"] + user: password for user, password in passwords(overlay).items()}
        self.log = root / "nats.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [nats_server_binary(), "--config", str(config_dir / "nats.conf")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_for_port("127.0.0.1", self.port, timeout=15):
            self.stop()
            pytest.fail(f"nats-server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def start_nats(tmp_path: Path) -> Iterator[Callable[..., RunningNats]]:
    started: list[RunningNats] = []

    def start(overlay: str, tls: Callable[[Path], None] | None = None) -> RunningNats:
        started.append(RunningNats(overlay, tmp_path / overlay, tls))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def server_info(port: int) -> tuple[socket.socket, Obj]:
    """A TCP connection to nats-server and the INFO it opens with (before any TLS)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    line = b""
    while not line.endswith(b"\r\n"):
        line += raw.recv(1)
    info: Obj = json.loads(line.removeprefix(b"INFO ").strip())
    return raw, info


def served_certificate(port: int, ca_file: Path) -> x509.Certificate:
    raw, info = server_info(port)
    assert info["tls_required"] is True
    with ssl.create_default_context(cafile=str(ca_file)).wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class Errors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))


@pytest.fixture
async def connections() -> AsyncIterator[list[nats.NATS]]:
    opened: list[nats.NATS] = []
    yield opened
    for nc in opened:
        await nc.close()


async def connect(url: str, user: str | None, password: str | None, errors: Errors | None = None) -> nats.NATS:
    return await nats.connect(
        url,
        user=user,
        password=password,
        inbox_prefix=f"_INBOX.{user}",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=2,
        error_cb=(errors or Errors()).record,
    )


async def test_dev_nats_admits_each_user_with_its_own_password_and_holds_it_to_its_subjects(
    start_nats: Callable[..., RunningNats], connections: list[nats.NATS]
) -> None:
    server = start_nats("dev")
    url = f"nats://127.0.0.1:{server.port}"
    users = passwords("dev")
    for user, password in users.items():
        connections.append(await connect(url, user, password))
    refused: list[tuple[str | None, str | None]] = [(None, None), ("trainer", users["registry"]), ("trainer", "")]
    for name, secret in refused:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect(url, name, secret)

    # only the registry may say a model is valid; the trainer may say it trained one
    errors = Errors()
    trainer = await connect(url, "trainer", users["trainer"], errors)
    connections.append(trainer)
    await trainer.publish("model.trained.default", b"{}")
    await trainer.publish("model.validated.default", b"{}")
    await trainer.flush()
    await asyncio.sleep(0.1)
    assert errors.seen == ['nats: permissions violation for publish to "model.validated.default"']


def issue_as_cert_manager_would(authority: Authority) -> Callable[[Path], None]:
    spec = nats_certificate_spec()

    def write(folder: Path) -> None:
        authority.write_tls_secret(folder, spec["dnsNames"], spec["usages"])

    return write


async def test_production_nats_speaks_only_tls_with_the_certificate_cert_manager_issues(
    start_nats: Callable[..., RunningNats], tmp_path: Path
) -> None:
    server = start_nats("production", tls=issue_as_cert_manager_would(Authority("modelgallery-nats-ca")))
    ca_file = server.folders.mounts["/etc/nats-tls"] / "ca.crt"
    password = passwords("production")["trainer"]

    # what every service and model server does with GALLERY_NATS_TLS_CA (localhost: the CLI's port-forward)
    bus = EventBus(
        f"tls://localhost:{server.port}",
        "trainer",
        credentials=NatsCredentials("trainer", password),
        tls_ca=ca_file,
        publish_deadline=5,
    )
    await bus.connect(ensure_streams=False)
    assert bus.is_connected
    await bus.close()

    raw, info = server_info(server.port)
    raw.close()
    assert info["tls_required"] is True, "a client without TLS is refused"

    other = Authority("someone-else")
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(other.certificate.public_bytes(serialization.Encoding.PEM))
    stranger = EventBus(
        f"tls://localhost:{server.port}",
        "trainer",
        credentials=NatsCredentials("trainer", password),
        tls_ca=other_ca,
        publish_deadline=2,
    )
    with pytest.raises(Unavailable):
        await stranger.connect(ensure_streams=False)
    await stranger.close()


async def test_the_tls_reloader_makes_nats_serve_a_renewed_certificate(
    start_nats: Callable[..., RunningNats], tmp_path: Path
) -> None:
    authority = Authority("modelgallery-nats-ca")
    spec = nats_certificate_spec()
    issued: list[x509.Certificate] = []

    def first(folder: Path) -> None:
        # like the kubelet, the Secret's files sit behind a link that an update swaps in one step
        issued.append(authority.write_tls_secret(tmp_path / "secret-v1", spec["dnsNames"], spec["usages"]))
        folder.symlink_to(tmp_path / "secret-v1")

    server = start_nats("production", tls=first)
    mount = server.folders.mounts["/etc/nats-tls"]
    assert served_certificate(server.port, mount / "ca.crt").serial_number == issued[0].serial_number

    objs = manifests("production")
    reloader = container(server.workload, "tls-reloader")
    (script,) = config_map_mounted(objs, server.workload, "/scripts")["data"].values()
    assert reloader["command"] == ["/bin/sh", "/scripts/nats-tls-reloader.sh"]
    assert {v["name"] for v in pod_spec(server.workload)["volumes"]} >= {"tls", "pid"}
    assert pod_spec(server.workload)["shareProcessNamespace"] is True
    folders = PodFolders(tmp_path / "production", server.workload, "tls-reloader")
    env = {e["name"]: folders.local(e["value"]) for e in reloader["env"]}
    env |= {"INTERVAL": "0.1", "PATH": f"{Path(nats_server_binary()).parent}:{os.environ['PATH']}"}
    (tmp_path / "nats-tls-reloader.sh").write_text(script, encoding="utf-8")
    watcher = subprocess.Popen(["sh", str(tmp_path / "nats-tls-reloader.sh")], env=env)
    try:
        await asyncio.sleep(0.5)
        issued.append(authority.write_tls_secret(tmp_path / "secret-v2", spec["dnsNames"], spec["usages"]))
        (tmp_path / "swap").symlink_to(tmp_path / "secret-v2")
        (tmp_path / "swap").replace(mount)
        for _ in range(100):
            if served_certificate(server.port, mount / "ca.crt").serial_number == issued[1].serial_number:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("nats-server still serves the old certificate")
        assert watcher.poll() is None, "the reloader keeps watching"
    finally:
        watcher.terminate()
        watcher.wait(5)
