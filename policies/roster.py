"""The federation roster: the enrolled Ed25519 identities of the hub and hospitals.

Every party pins the roster it received at enrollment and never takes one from
the hub during a study, so a hub cannot slip in an identity of its own. The file
is YAML::

    federation: heart-disease-demo
    hub: <base64 of the hub's raw 32-byte Ed25519 public key>
    hospitals:
      cleveland: <base64 of the hospital's raw 32-byte Ed25519 public key>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

IDENTIFY_CONTEXT = b"healthfed identify v1"


class RosterError(ValueError):
    """The roster file is missing, malformed or names an identity twice."""


def encode_public_key(key: Ed25519PublicKey) -> str:
    """Return the base64 text of a raw 32-byte Ed25519 public key."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str, owner: str) -> Ed25519PublicKey:
    """Parse the base64 text of a raw Ed25519 public key of ``owner``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise RosterError(f"public key of {owner!r} is not valid base64") from None
    if len(raw) != 32:
        raise RosterError(
            f"public key of {owner!r} has {len(raw)} bytes; an Ed25519 public key "
            "has 32"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class Roster:
    """Enrolled identities: the hub's key and each hospital's key by identifier."""

    federation: str
    hub: Ed25519PublicKey
    hospitals: dict[str, Ed25519PublicKey]

    def hospital_key(self, hospital_id: str) -> Ed25519PublicKey:
        """Return the enrolled key of ``hospital_id``; raise if it is not enrolled."""
        try:
            return self.hospitals[hospital_id]
        except KeyError:
            raise RosterError(
                f"hospital {hospital_id!r} is not enrolled in federation "
                f"{self.federation!r}; enroll it with `federation-hub init` and "
                "distribute the new roster"
            ) from None

    def to_document(self) -> dict[str, Any]:
        """Return the YAML document of this roster."""
        return {
            "federation": self.federation,
            "hub": encode_public_key(self.hub),
            "hospitals": {
                name: encode_public_key(key)
                for name, key in sorted(self.hospitals.items())
            },
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical roster document, to compare rosters by eye."""
        canonical = yaml.safe_dump(self.to_document(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(canonical).hexdigest()


def load_roster(path: str | Path) -> Roster:
    """Load and check a roster file."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RosterError(
            f"roster {path} not found; copy the roster that `federation-hub init` wrote"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise RosterError(f"cannot read roster {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(
        document.get("hospitals"), dict
    ):
        raise RosterError(
            f"roster {path} must be a mapping with 'federation', 'hub' and "
            "'hospitals' keys"
        )
    federation = str(document.get("federation", ""))
    hub = decode_public_key(str(document.get("hub", "")), "hub")
    hospitals = {
        str(name): decode_public_key(str(text), str(name))
        for name, text in document["hospitals"].items()
    }
    raw_keys = [encode_public_key(key) for key in [hub, *hospitals.values()]]
    if len(set(raw_keys)) != len(raw_keys):
        raise RosterError(
            f"roster {path} lists one public key for two parties; every party needs "
            "its own identity key"
        )
    return Roster(federation=federation, hub=hub, hospitals=hospitals)


def save_roster(roster: Roster, path: str | Path) -> None:
    """Write ``roster`` as YAML."""
    Path(path).write_text(
        yaml.safe_dump(roster.to_document(), sort_keys=False), encoding="utf-8"
    )


def identify_message(
    study_id: str, hospital_id: str, node_id: int, challenge: bytes
) -> bytes:
    """Return the bytes an agent signs to prove its enrolled identity to the hub.

    Each field is length-prefixed, so no two different field tuples give the same
    bytes.
    """
    parts = [
        IDENTIFY_CONTEXT,
        study_id.encode("utf-8"),
        hospital_id.encode("utf-8"),
        str(node_id).encode("ascii"),
        challenge,
    ]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def spend_status_message(
    study_id: str, hospital_id: str, queried: list[str], spent: list[str]
) -> bytes:
    """Return the bytes an agent signs to report which nonces it spent on."""
    parts = [
        b"healthfed spend status v1",
        study_id.encode("utf-8"),
        hospital_id.encode("utf-8"),
        "\n".join(sorted(queried)).encode("utf-8"),
        "\n".join(sorted(spent)).encode("utf-8"),
    ]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)
