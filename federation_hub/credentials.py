"""Create a federation's TLS certificates, identity keys, SuperNode keys and roster.

`create_federation_credentials` writes, under one directory:

```
ca/ca.pem                    private CA certificate (EC P-384), for every party
ca/ca.key                    CA private key (0600), stays with the hub operator
superlink/server.pem         SuperLink TLS certificate signed by the CA
superlink/server.key         SuperLink TLS private key (0600)
hub/identity.key, .pub       hub's Ed25519 identity key (0600) and public key
hospitals/<id>/identity.key  hospital's Ed25519 identity key, PKCS#8 PEM (0600)
hospitals/<id>/identity.pub  its public key, SubjectPublicKeyInfo PEM
hospitals/<id>/supernode.key SuperNode authentication key, OpenSSH EC P-384 (0600)
hospitals/<id>/supernode.pub its OpenSSH public key, registered with the SuperLink
roster.yaml                  federation name, hub and hospital identity public keys
```

roster.yaml has the layout that `policies.roster.load_roster` reads: `federation`,
`hub` and `hospitals` (id -> base64 of the raw 32-byte Ed25519 public key).

Flower 1.42 authenticates a SuperNode with an elliptic-curve key on a NIST curve
in OpenSSH format: `flower-supernode --auth-supernode-private-key` reads it, and
`flwr supernode register` rejects an Ed25519 key. Each hospital therefore gets
that key next to its Ed25519 identity key, which signs healthfed's own messages.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION = "healthfed"
"""Federation name written to roster.yaml when none is given."""

DEFAULT_VALIDITY_DAYS = 365
"""Default validity of the CA and SuperLink certificates, in days."""

LOOPBACK_HOSTNAMES: tuple[str, ...] = ("127.0.0.1", "localhost")
"""Names always placed in the SuperLink certificate's subject alternative names."""

_HOSPITAL_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_PRIVATE_KEY_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644


class CredentialsExistError(FileExistsError):
    """A credential file already exists and overwriting was not requested."""


class InvalidCredentialsError(ValueError):
    """A credential file, roster entry or argument is malformed."""


class HospitalCredentials(BaseModel):
    """Paths of one hospital's key files."""

    model_config = ConfigDict(frozen=True)

    hospital_id: str
    identity_key: Path
    identity_public_key: Path
    supernode_key: Path
    supernode_public_key: Path


class FederationCredentials(BaseModel):
    """Paths of every file that `create_federation_credentials` writes."""

    model_config = ConfigDict(frozen=True)

    directory: Path
    ca_certificate: Path
    ca_key: Path
    superlink_certificate: Path
    superlink_key: Path
    hub_identity_key: Path
    hub_identity_public_key: Path
    roster: Path
    hospitals: tuple[HospitalCredentials, ...]

    def hospital(self, hospital_id: str) -> HospitalCredentials:
        """Return the key files of `hospital_id`, or raise KeyError."""
        for entry in self.hospitals:
            if entry.hospital_id == hospital_id:
                return entry
        known = ", ".join(h.hospital_id for h in self.hospitals)
        raise KeyError(f"hospital {hospital_id!r} is not in the roster ({known})")


def federation_paths(
    directory: Path, hospital_ids: Sequence[str]
) -> FederationCredentials:
    """Return the file layout under `directory` without touching the disk."""
    directory = Path(directory)
    hospitals = tuple(_hospital_paths(directory, h) for h in hospital_ids)
    return FederationCredentials(
        directory=directory,
        ca_certificate=directory / "ca" / "ca.pem",
        ca_key=directory / "ca" / "ca.key",
        superlink_certificate=directory / "superlink" / "server.pem",
        superlink_key=directory / "superlink" / "server.key",
        hub_identity_key=directory / "hub" / "identity.key",
        hub_identity_public_key=directory / "hub" / "identity.pub",
        roster=directory / "roster.yaml",
        hospitals=hospitals,
    )


def _hospital_paths(directory: Path, hospital_id: str) -> HospitalCredentials:
    base = directory / "hospitals" / hospital_id
    return HospitalCredentials(
        hospital_id=hospital_id,
        identity_key=base / "identity.key",
        identity_public_key=base / "identity.pub",
        supernode_key=base / "supernode.key",
        supernode_public_key=base / "supernode.pub",
    )


def validate_hospital_ids(hospital_ids: Sequence[str]) -> None:
    """Raise InvalidCredentialsError unless the ids are distinct and well formed.

    An id is 1-64 characters of lowercase letters, digits and inner hyphens,
    because it names a directory and appears in the SuperNode's node config.
    """
    if not hospital_ids:
        raise InvalidCredentialsError(
            "hospital: no hospital given; pass at least one --hospital NAME"
        )
    seen: set[str] = set()
    for hospital_id in hospital_ids:
        if not _HOSPITAL_ID_PATTERN.fullmatch(hospital_id):
            raise InvalidCredentialsError(
                f"hospital: invalid id {hospital_id!r}; use 1-64 lowercase letters, "
                "digits and inner hyphens, for example 'cleveland' or 'va-long-beach'"
            )
        if hospital_id in seen:
            raise InvalidCredentialsError(
                f"hospital: id {hospital_id!r} is given twice; ids must be distinct"
            )
        seen.add(hospital_id)


def validate_hostnames(hostnames: Sequence[str]) -> None:
    """Raise InvalidCredentialsError unless each entry is an IP address or DNS name."""
    for hostname in hostnames:
        if _parse_ip(hostname) is not None:
            continue
        if not _HOSTNAME_PATTERN.fullmatch(hostname):
            raise InvalidCredentialsError(
                f"hostname: {hostname!r} is neither an IP address nor a DNS name; "
                "pass the name or address that hospitals use to reach the SuperLink"
            )


def create_federation_credentials(
    directory: Path,
    hospital_ids: Sequence[str],
    hostnames: Sequence[str] = (),
    *,
    federation: str = DEFAULT_FEDERATION,
    force: bool = False,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> FederationCredentials:
    """Create a private CA, the SuperLink certificate, identity keys and the roster.

    `hostnames` are added to the SuperLink certificate's subject alternative
    names next to 127.0.0.1 and localhost. Existing files are never overwritten
    unless `force` is true. Without it, every target is checked before the
    first file is written, so a rejected call leaves the directory unchanged.
    Private keys are written with mode 0600.

    NOTE: the hospitals' private keys are generated here, on the hub operator's
    machine. No command yet lets a hospital generate its own keys and send only
    the public keys to the hub.

    Raises:
        InvalidCredentialsError: an id, hostname, federation name or validity
            is invalid.
        CredentialsExistError: a target file exists and `force` is false.

    """
    validate_hospital_ids(hospital_ids)
    validate_hostnames(hostnames)
    if not _HOSPITAL_ID_PATTERN.fullmatch(federation):
        raise InvalidCredentialsError(
            f"federation: invalid name {federation!r}; use 1-64 lowercase letters, "
            "digits and inner hyphens, for example 'heart-disease-study'"
        )
    if not 1 <= validity_days <= 3650:
        raise InvalidCredentialsError(
            f"validity_days: must be between 1 and 3650, got {validity_days}"
        )
    paths = federation_paths(directory, hospital_ids)
    if not force:
        existing = [p for p in _all_files(paths) if p.exists()]
        if existing:
            listed = ", ".join(str(p) for p in existing)
            raise CredentialsExistError(
                f"credential files already exist: {listed}; pass --force to "
                "replace them (every enrolled SuperNode must then be re-registered)"
            )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_certificate = _build_ca_certificate(ca_key, validity_days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_certificate = _build_server_certificate(
        ca_key,
        ca_certificate,
        server_key,
        [*LOOPBACK_HOSTNAMES, *hostnames],
        validity_days,
    )

    _write_file(paths.ca_certificate, _certificate_pem(ca_certificate), private=False)
    _write_file(paths.ca_key, _private_key_pem(ca_key), private=True)
    _write_file(
        paths.superlink_certificate, _certificate_pem(server_certificate), private=False
    )
    _write_file(paths.superlink_key, _private_key_pem(server_key), private=True)

    hub_key = _write_identity_key(paths.hub_identity_key, paths.hub_identity_public_key)
    hospital_keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for hospital in paths.hospitals:
        hospital_keys[hospital.hospital_id] = _create_hospital_keys(hospital)
    _write_file(
        paths.roster, _roster_yaml(federation, hub_key, hospital_keys), private=False
    )

    logger.info(
        "created federation credentials in %s for %d hospitals",
        paths.directory,
        len(paths.hospitals),
    )
    return paths


def load_federation_credentials(directory: Path) -> FederationCredentials:
    """Return the file layout of an existing credentials directory.

    The hospitals are those listed in roster.yaml. Every file must exist except
    the CA key, which the operator may keep offline.

    Raises:
        InvalidCredentialsError: roster.yaml is missing or malformed, or a
            listed file is missing.

    """
    roster_path = Path(directory) / "roster.yaml"
    try:
        document = yaml.safe_load(roster_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InvalidCredentialsError(
            f"roster {roster_path} not found; run `federation-hub init` first"
        ) from err
    except yaml.YAMLError as err:
        raise InvalidCredentialsError(
            f"roster {roster_path} is not valid YAML: {err}"
        ) from err
    if not isinstance(document, dict) or not isinstance(
        document.get("hospitals"), dict
    ):
        raise InvalidCredentialsError(
            f"roster {roster_path} must be a mapping with a 'hospitals' mapping"
        )
    hospital_ids = [str(h) for h in document["hospitals"]]
    validate_hospital_ids(hospital_ids)
    paths = federation_paths(directory, hospital_ids)
    missing = [p for p in _all_files(paths) if p != paths.ca_key and not p.exists()]
    if missing:
        listed = ", ".join(str(p) for p in missing)
        raise InvalidCredentialsError(
            f"credentials directory {directory}: missing {listed}; "
            "run `federation-hub init` again with --force"
        )
    return paths


def _all_files(paths: FederationCredentials) -> list[Path]:
    files = [
        paths.ca_certificate,
        paths.ca_key,
        paths.superlink_certificate,
        paths.superlink_key,
        paths.hub_identity_key,
        paths.hub_identity_public_key,
        paths.roster,
    ]
    for hospital in paths.hospitals:
        files += [
            hospital.identity_key,
            hospital.identity_public_key,
            hospital.supernode_key,
            hospital.supernode_public_key,
        ]
    return files


def _create_hospital_keys(hospital: HospitalCredentials) -> ed25519.Ed25519PublicKey:
    identity_public_key = _write_identity_key(
        hospital.identity_key, hospital.identity_public_key
    )
    supernode_key = ec.generate_private_key(ec.SECP384R1())
    supernode_public_ssh = supernode_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_file(
        hospital.supernode_key,
        supernode_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    _write_file(
        hospital.supernode_public_key, supernode_public_ssh + b"\n", private=False
    )
    return identity_public_key


def _write_identity_key(
    private_path: Path, public_path: Path
) -> ed25519.Ed25519PublicKey:
    """Generate an Ed25519 key, write it as PKCS#8 PEM and its public key as PEM."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_file(private_path, private_pem, private=True)
    _write_file(public_path, public_pem, private=False)
    return key.public_key()


def _build_ca_certificate(
    ca_key: ec.EllipticCurvePrivateKey, validity_days: int
) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "healthfed federation CA")]
    )
    not_before = _now() - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def _build_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
    hostnames: Sequence[str],
    validity_days: int,
) -> x509.Certificate:
    alternative_names: list[x509.GeneralName] = []
    for hostname in dict.fromkeys(hostnames):
        address = _parse_ip(hostname)
        if address is not None:
            alternative_names.append(x509.IPAddress(address))
        else:
            alternative_names.append(x509.DNSName(hostname))
    not_before = _now() - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthfed SuperLink")])
        )
        .issuer_name(ca_certificate.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _roster_yaml(
    federation: str,
    hub_key: ed25519.Ed25519PublicKey,
    hospital_keys: dict[str, ed25519.Ed25519PublicKey],
) -> bytes:
    document = {
        "federation": federation,
        "hub": _raw_base64(hub_key),
        "hospitals": {h: _raw_base64(key) for h, key in hospital_keys.items()},
    }
    return yaml.safe_dump(document, sort_keys=False).encode("utf-8")


def _raw_base64(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _write_file(path: Path, content: bytes, *, private: bool) -> None:
    """Write `content` atomically, without a private file ever having a wider mode.

    The temporary file is created by `mkstemp` with mode 0600 and renamed over
    the target, so a reader sees either the old file or the complete new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, _PRIVATE_KEY_MODE if private else _PUBLIC_FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
