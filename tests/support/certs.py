"""A throw-away certificate authority for the suite's TLS servers.

``test_ca`` (session-scoped) makes one CA in a temp dir; servers ask it for a
leaf certificate valid for ``127.0.0.1`` and ``localhost``. Clients trust
``ca.cert_file`` (or ``ca.client_ssl_context()``). Keys are ECDSA P-256: fast to
make and accepted by Go (docker-registry, skopeo), OpenSSL and Python.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCert:
    """A PEM leaf certificate and its unencrypted PEM key."""

    cert_file: Path
    key_file: Path

    def server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class CertAuthority:
    """A self-signed CA able to issue server certificates."""

    cert_file: Path
    key_file: Path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.cert_file))

    def issue(
        self, directory: Path, name: str = "server", hosts: Sequence[str] = DEFAULT_HOSTS
    ) -> ServerCert:
        """Write ``<name>.crt`` / ``<name>.key`` into ``directory`` for ``hosts``."""
        ca_key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            _builder(_name(hosts[0]), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        return ServerCert(
            cert_file=_write_cert(directory / f"{name}.crt", cert),
            key_file=_write_key(directory / f"{name}.key", key),
        )


def create_ca(directory: Path, common_name: str = "diskplane test CA") -> CertAuthority:
    """Make a new CA in ``directory`` (``ca.crt``, ``ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    return CertAuthority(
        cert_file=_write_cert(directory / "ca.crt", cert),
        key_file=_write_key(directory / "ca.key", key),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def test_ca() -> Iterator[CertAuthority]:
    """One CA for the whole session; its temp dir is removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="diskplane-ca-"))
    try:
        yield create_ca(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
