"""Plain-data messages exchanged between agents and the hub.

Every field is bytes, int, str, a list or dict of those, or a NumPy array, so a
message maps one-to-one onto a Flower record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from secure_aggregation.encoding import (
    b64,
    from_json_bytes,
    get_int,
    get_str,
    to_json_bytes,
    unb64,
)
from secure_aggregation.errors import InvalidSignatureError
from secure_aggregation.primitives import encode_fields

ADVERTISEMENT_FORMAT = "healthfed-secagg-advertisement/1"
ADVERTISEMENT_BUNDLE_FORMAT = "healthfed-secagg-advertisement-bundle/1"
CONFIRMATION_FORMAT = "healthfed-secagg-confirmation/1"
CONFIRMATION_BUNDLE_FORMAT = "healthfed-secagg-confirmation-bundle/1"
UNMASK_RESPONSE_FORMAT = "healthfed-secagg-unmask-response/1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class KeyAdvertisement:
    """A party's public X25519 keys for one key epoch, signed by its identity."""

    study_id: str
    party_id: str
    epoch: int
    share_public_key: bytes
    masking_public_key: bytes
    signature: bytes = b""

    def signed_payload(self) -> bytes:
        """Return the bytes that the Ed25519 signature covers."""
        return encode_fields(
            "key-advertisement",
            self.study_id,
            self.party_id,
            self.epoch,
            self.share_public_key,
            self.masking_public_key,
        )

    def sign(self, identity_key: Ed25519PrivateKey) -> KeyAdvertisement:
        """Return a copy signed with ``identity_key``."""
        signature = identity_key.sign(self.signed_payload())
        return KeyAdvertisement(
            self.study_id,
            self.party_id,
            self.epoch,
            self.share_public_key,
            self.masking_public_key,
            signature,
        )

    def verify(self, identity_public_key: bytes) -> None:
        """Raise InvalidSignatureError unless the signature verifies."""
        public_key = Ed25519PublicKey.from_public_bytes(identity_public_key)
        try:
            public_key.verify(self.signature, self.signed_payload())
        except InvalidSignature:
            raise InvalidSignatureError(
                f"key advertisement of party {self.party_id!r} (epoch {self.epoch}) "
                "has an invalid signature for its enrolled identity key"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the advertisement as a JSON-ready dict."""
        return {
            "study_id": self.study_id,
            "party_id": self.party_id,
            "epoch": self.epoch,
            "share_public_key": b64(self.share_public_key),
            "masking_public_key": b64(self.masking_public_key),
            "signature": b64(self.signature),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> KeyAdvertisement:
        """Return the advertisement in ``document``, checking field types."""
        return cls(
            study_id=get_str(document, "study_id"),
            party_id=get_str(document, "party_id"),
            epoch=get_int(document, "epoch"),
            share_public_key=unb64(
                document.get("share_public_key"), "share_public_key", PUBLIC_KEY_BYTES
            ),
            masking_public_key=unb64(
                document.get("masking_public_key"),
                "masking_public_key",
                PUBLIC_KEY_BYTES,
            ),
            signature=unb64(document.get("signature"), "signature", SIGNATURE_BYTES),
        )

    def to_bytes(self) -> bytes:
        """Return the wire encoding."""
        return to_json_bytes(ADVERTISEMENT_FORMAT, self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvertisement:
        """Return the advertisement encoded in ``data``."""
        return cls.from_dict(from_json_bytes(ADVERTISEMENT_FORMAT, data))


@dataclass(frozen=True)
class RoundStart:
    """The hub's opening of a round: round number, fresh nonce and participants."""

    round_number: int
    nonce: bytes
    participants: list[str]


@dataclass
class MaskedInput:
    """One party's masked update and the share bundles it sends for this round.

    Attributes:
        party_id: Sender.
        round_number: Round the input belongs to.
        nonce: The round's 32-byte nonce.
        masked_vector: uint64 residues modulo 2**k, length model_size + 1. The
            first model_size entries mask ``weight * delta`` in fixed point, and
            the last masks the weight.
        encrypted_shares: AES-GCM bundle per share holder (other than the
            sender), holding its shares of this round's self-mask seed and
            pairwise seeds.
        self_mask_commitment: SHA-256 commitment to the self-mask seed, so the
            hub detects wrong shares.
        pairwise_commitments: SHA-256 commitment to each pairwise seed, by peer.

    """

    party_id: str
    round_number: int
    nonce: bytes
    masked_vector: npt.NDArray[np.uint64]
    encrypted_shares: dict[str, bytes] = field(default_factory=dict)
    self_mask_commitment: bytes = b""
    pairwise_commitments: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class UnmaskRequest:
    """The hub's unmasking request to one surviving party.

    Attributes:
        round_number: Round to unmask.
        nonce: The round's nonce.
        survivors: Parties whose masked input the hub received.
        dropped: Participants whose masked input the hub did not receive.
        encrypted_shares: Share bundles addressed to the recipient, by sender.

    """

    round_number: int
    nonce: bytes
    survivors: list[str]
    dropped: list[str]
    encrypted_shares: dict[str, bytes]
