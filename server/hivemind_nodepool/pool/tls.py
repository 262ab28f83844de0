"""`hivemind-nodepool tls init`: a lab CA and a server certificate signed by it (the `cryptography`
package). Clients trust the CA file (`--ca`); the pool serves with the certificate and key."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hivemind_nodepool.protocol.errors import AlreadyExists, InvalidInput
from hivemind_nodepool.protocol.files import atomic_write


@dataclass
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


PUBLIC = 0o644  # certificates: anyone may read them


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def default_hosts() -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    return names


def init(directory: Path, hosts: list[str], days: int = 825, force: bool = False) -> TlsFiles:
    """Create ca.pem, ca.key, server.pem and server.key in directory (keys 0600)."""
    if not hosts:
        raise InvalidInput("name at least one host the pool is reached by")
    for host in hosts:
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise InvalidInput(f"not a host name or address: {host!r}")
    if not 1 <= days <= 3650:
        raise InvalidInput("days must be between 1 and 3650")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key"
    )
    if not force and any(p.exists() for p in vars(files).values()):
        raise AlreadyExists(f"TLS files already exist in {directory}; pass --force to replace them")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HiveMind lab CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(files.ca_key, _key_pem(ca_key))
    atomic_write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
    atomic_write(files.server_key, _key_pem(server_key))
    atomic_write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
    return files
