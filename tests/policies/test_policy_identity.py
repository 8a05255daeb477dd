"""Identity keys: PEM files, permissions and type checks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.identity import (
    IdentityKeyError,
    generate_private_key,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
)


def test_private_key_mode_0600(tmp_path: Path) -> None:
    path = save_private_key(generate_private_key(), tmp_path / "k.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_key_round_trip(tmp_path: Path) -> None:
    key = generate_private_key()
    save_private_key(key, tmp_path / "k.pem")
    loaded = load_private_key(tmp_path / "k.pem")
    assert loaded.public_key() == key.public_key()


def test_encrypted_key_round_trip(tmp_path: Path) -> None:
    key = generate_private_key()
    save_private_key(key, tmp_path / "k.pem", password=b"correct horse")
    loaded = load_private_key(tmp_path / "k.pem", password=b"correct horse")
    assert loaded.public_key() == key.public_key()


def test_public_key_round_trip(tmp_path: Path) -> None:
    key = generate_private_key()
    save_public_key(key.public_key(), tmp_path / "k.pub")
    assert load_public_key(tmp_path / "k.pub") == key.public_key()


def test_existing_file_not_overwritten(tmp_path: Path) -> None:
    save_private_key(generate_private_key(), tmp_path / "k.pem")
    with pytest.raises(IdentityKeyError, match="already exists"):
        save_private_key(generate_private_key(), tmp_path / "k.pem")


def test_world_readable_key_rejected(tmp_path: Path) -> None:
    path = save_private_key(generate_private_key(), tmp_path / "k.pem")
    path.chmod(0o644)
    with pytest.raises(IdentityKeyError, match="chmod 600"):
        load_private_key(path)


def test_non_ed25519_key_rejected(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(IdentityKeyError, match="not an Ed25519"):
        load_private_key(path)


def test_garbage_public_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "k.pub"
    path.write_text("not a key")
    with pytest.raises(IdentityKeyError):
        load_public_key(path)
