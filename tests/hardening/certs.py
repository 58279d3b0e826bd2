"""Real X.509 certificates for the TLS tests, made on the spot: a CA, a server and client it signs,
and a rogue CA with its own client (EC P-256 keys: fast to make, accepted by gRPC's BoringSSL)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """``(private key, certificate chain)`` PEM bytes, in grpc's argument order."""
        return self.key.read_bytes(), self.cert.read_bytes()


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    client: Pair
    rogue_ca: Pair
    rogue_client: Pair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
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
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


def make_pki(directory: Path) -> Pki:
    """Write every certificate and key under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs: dict[str, Pair] = {}
    for ca_stem, leaves in (("ca", ("server", "client")), ("rogue-ca", ("rogue-client",))):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue(f"UniRank test {ca_stem}", ca_key, None, ca=True)
        pairs[ca_stem] = _write(directory, ca_stem, ca_cert, ca_key)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(leaf, key, (ca_cert.subject, ca_key), server=leaf == "server")
            pairs[leaf] = _write(directory, leaf, cert, key)
    return Pki(pairs["ca"], pairs["server"], pairs["client"], pairs["rogue-ca"], pairs["rogue-client"])
