"""The federation over TLS: with GALLERY_FEDERATION_* set the coordinator speaks TLS, sites that trust its
certificate (`--root-certificate`) train, and a site that talks plain gRPC never joins."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from federation_harness import federated_spec, site_folders, sites_running

from gallery_common.netutil import free_port
from gallery_trainer.pipeline import run_job


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 it signed, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federation test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "root_certificate": folder / "ca.pem",
        "certificate": folder / "server.pem",
        "private_key": folder / "server.key",
    }
    files["root_certificate"].write_bytes(_pem(ca))
    files["certificate"].write_bytes(_pem(certificate))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files["private_key"].write_bytes(key_pem)
    return files


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
