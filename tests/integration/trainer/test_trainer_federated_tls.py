"""The federation over TLS: with GALLERY_FEDERATION_* set the coordinator speaks TLS, sites that trust its
certificate (`--root-certificate`) train, and a site that talks plain gRPC never joins."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from federation_harness import federated_spec, site_folders, sites_running

from gallery_common.netutil import free_port
from gallery_trainer.federated.relay import FederationError, coordinator_tls, pem_bytes
from gallery_trainer.pipeline import run_job


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """A test CA: its certificate (also written as `pem`) and key, to issue certificates with."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        pem = folder / f"{name.replace(' ', '-')}.pem"
        pem.write_bytes(_pem(certificate))
        return cls(certificate, key, pem)

    def issue(self, folder: Path, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        """A certificate for `common_name` (a server's also for 127.0.0.1) and its key, as PEM files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if server:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        certificate, private = folder / f"{common_name}.pem", folder / f"{common_name}.key"
        certificate.write_bytes(_pem(builder.sign(self.key, hashes.SHA256())))
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        private.write_bytes(pem_key)
        return certificate, private


def write_tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 it signed, as PEM files."""
    authority = Authority.create(folder, "federation test CA")
    certificate, key = authority.issue(folder, "127.0.0.1", server=True)
    return {"root_certificate": authority.pem, "certificate": certificate, "private_key": key}


def test_sites_that_trust_the_coordinator_train_over_tls_and_a_plaintext_site_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = write_tls_files(tmp_path / "tls")
    monkeypatch.setenv("GALLERY_FEDERATION_ROOT_CERTIFICATE", str(tls["root_certificate"]))
    monkeypatch.setenv("GALLERY_FEDERATION_CERTIFICATE", str(tls["certificate"]))
    monkeypatch.setenv("GALLERY_FEDERATION_PRIVATE_KEY", str(tls["private_key"]))
    port = free_port()
    spec = federated_spec(port, rounds=3, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")
    trusting = ("--root-certificate", str(tls["root_certificate"]))
    with sites_running(
        port, folders, tmp_path, through_cli=("site-1",), extra={"site-1": trusting, "site-2": trusting}
    ):
        outputs = run_job(spec, tmp_path / "job")
    assert outputs.federation is not None
    assert {site.name for site in outputs.federation.sites} == {"site-1", "site-2"}
    assert outputs.metrics["rounds_run"] == 3


def test_with_a_sites_ca_only_sites_with_its_certificates_join_each_as_the_site_its_certificate_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GALLERY_FEDERATION_CLIENT_CA: mutual TLS. Two sites show certificates the sites' CA issued (one through
    `gallery site run --certificate --private-key`, one from GALLERY_SITE_CERTIFICATE and _PRIVATE_KEY) and
    train; a third shows one another CA issued and never joins; the coordinator knows each site by the name
    its certificate carries."""
    tls = write_tls_files(tmp_path / "tls")
    sites_ca = Authority.create(tmp_path / "sites-ca", "sites CA")
    stranger = Authority.create(tmp_path / "stranger-ca", "stranger CA")
    monkeypatch.setenv("GALLERY_FEDERATION_ROOT_CERTIFICATE", str(tls["root_certificate"]))
    monkeypatch.setenv("GALLERY_FEDERATION_CERTIFICATE", str(tls["certificate"]))
    monkeypatch.setenv("GALLERY_FEDERATION_PRIVATE_KEY", str(tls["private_key"]))
    # as Kubernetes hands over an optional Secret's key: the PEM itself
    monkeypatch.setenv("GALLERY_FEDERATION_CLIENT_CA", sites_ca.pem.read_text())
    port = free_port()
    spec = federated_spec(port, rounds=2, min_sites=2)
    folders = site_folders(spec, tmp_path / "sites")

    def shows(authority: Authority, name: str) -> tuple[str, ...]:
        certificate, key = authority.issue(tmp_path / "sites", name)
        root = ("--root-certificate", str(tls["root_certificate"]))
        return (*root, "--certificate", str(certificate), "--private-key", str(key))

    # site-2 shows its certificate and key from the environment (PEM), as its Kubernetes Deployment does
    certificate, key = sites_ca.issue(tmp_path / "sites", "site-2")
    monkeypatch.setenv("GALLERY_SITE_CERTIFICATE", certificate.read_text())
    monkeypatch.setenv("GALLERY_SITE_PRIVATE_KEY", key.read_text())
    root = ("--root-certificate", str(tls["root_certificate"]))
    extra = {"site-1": shows(sites_ca, "site-1"), "site-2": root, "site-3": shows(stranger, "site-3")}
    with sites_running(port, folders, tmp_path, through_cli=("site-1",), extra=extra):
        outputs = run_job(spec, tmp_path / "job")
    assert outputs.federation is not None
    assert {site.name for site in outputs.federation.sites} == {"site-1", "site-2"}
    assert outputs.metrics["rounds_run"] == 2


def test_the_sites_ca_is_a_pem_file_or_the_pem_and_needs_the_coordinators_own_tls_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = write_tls_files(tmp_path / "tls")
    own = {
        "GALLERY_FEDERATION_ROOT_CERTIFICATE": tls["root_certificate"],
        "GALLERY_FEDERATION_CERTIFICATE": tls["certificate"],
        "GALLERY_FEDERATION_PRIVATE_KEY": tls["private_key"],
    }
    monkeypatch.setenv("GALLERY_FEDERATION_CLIENT_CA", str(tls["root_certificate"]))
    for name in own:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FederationError, match="GALLERY_FEDERATION_CLIENT_CA asks sites for certificates over TLS"):
        coordinator_tls()
    for name, path in own.items():
        monkeypatch.setenv(name, str(path))
    ca = tls["root_certificate"].read_bytes()
    for given in (str(tls["root_certificate"]), ca.decode()):  # its file, or the PEM itself
        monkeypatch.setenv("GALLERY_FEDERATION_CLIENT_CA", given)
        found = coordinator_tls()
        assert found is not None and pem_bytes(found["client_ca"]) == ca
    monkeypatch.setenv("GALLERY_FEDERATION_CLIENT_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(FederationError, match=r"GALLERY_FEDERATION_CLIENT_CA=.*missing\.pem is not a readable file"):
        coordinator_tls()
