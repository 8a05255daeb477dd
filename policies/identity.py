"""Ed25519 identity keys: generate, save as PEM, load, fingerprint.

Private keys are written with file mode 0600 and never overwrite an existing
file unless asked. Public keys are PEM (SubjectPublicKeyInfo).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

logger = logging.getLogger(__name__)


class IdentityKeyError(Exception):
    """A key file is missing, unreadable, not Ed25519 or has unsafe permissions."""


def generate_private_key() -> Ed25519PrivateKey:
    """Generate a new Ed25519 private key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """Return the SHA-256 hex digest of the raw 32-byte public key."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def save_private_key(
    key: Ed25519PrivateKey,
    path: str | Path,
    *,
    password: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``key`` as PKCS#8 PEM with file mode 0600.

    Args:
        key: the private key to write.
        path: destination file; created with mode 0600.
        password: encrypts the PEM when given (best available encryption).
        overwrite: replace an existing file; default False.

    Raises:
        IdentityKeyError: the file exists and ``overwrite`` is False.

    """
    path = Path(path)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise IdentityKeyError(
            f"private key file {path} already exists; pass overwrite=True to replace it"
        ) from None
    with os.fdopen(descriptor, "wb") as handle:
        # O_CREAT applies the mode only to a new file; fix an existing one.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    logger.info("wrote private key %s", path)
    return path


def save_public_key(
    key: Ed25519PublicKey, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``key`` as SubjectPublicKeyInfo PEM (mode 0644).

    Raises:
        IdentityKeyError: the file exists and ``overwrite`` is False.

    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise IdentityKeyError(
            f"public key file {path} already exists; pass overwrite=True to replace it"
        )
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    path.chmod(0o644)
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise IdentityKeyError(
            f"cannot read key file {path}: {error.strerror}"
        ) from None


def load_private_key(
    path: str | Path, *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PEM.

    Raises:
        IdentityKeyError: the file is missing, readable by group or others,
            not PEM, encrypted without a password, or not Ed25519.

    """
    path = Path(path)
    data = _read(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityKeyError(
            f"private key file {path} has mode {mode:04o}; run chmod 600 on it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as error:
        raise IdentityKeyError(
            f"{path} is not a readable PEM private key: {error}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityKeyError(
            f"{path} contains a {type(key).__name__}, not an Ed25519 private key"
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM.

    Raises:
        IdentityKeyError: the file is missing, not PEM or not Ed25519.

    """
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError as error:
        raise IdentityKeyError(
            f"{path} is not a readable PEM public key: {error}"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityKeyError(
            f"{path} contains a {type(key).__name__}, not an Ed25519 public key"
        )
    return key
