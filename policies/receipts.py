"""Signed spend receipts that an agent returns with each update.

A receipt binds (study, round, nonce, hospital, DP parameters, accountant,
delta, epsilon after the round, the agent's ledger head hash). The signed
bytes are a fixed domain-separation prefix followed by canonical JSON (sorted
keys, no spaces, UTF-8), so any implementation can rebuild them.
"""

from __future__ import annotations

import base64
import logging
import math
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import Field

from policies.ledger import canonical_json
from policies.models import Accountant, DPParameters, FrozenModel, Identifier

logger = logging.getLogger(__name__)

RECEIPT_DOMAIN = b"healthfed spend receipt v1\n"
"""Prefix of the signed bytes, so a receipt signature is never valid elsewhere."""

DEFAULT_EPSILON_RELATIVE_TOLERANCE = 1e-9
"""Both sides replay the same history with the same code, so epsilon agrees to
rounding; a larger gap means the histories differ."""


class ReceiptSignatureError(Exception):
    """The receipt's signature is not the hospital's signature of its contents."""


class ReceiptMismatchError(Exception):
    """A validly signed receipt differs from the hub's record; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Receipt(FrozenModel):
    """An agent's signed statement of what it spent in one round."""

    study_id: Identifier
    round: int = Field(ge=1)
    nonce: str = Field(min_length=1, max_length=128)
    hospital_id: Identifier
    dp: DPParameters
    accountant: Accountant
    delta: float = Field(gt=0, lt=1)
    epsilon_after: float = Field(ge=0)
    ledger_head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = ""
    """Base64 of the 64-byte Ed25519 signature of :meth:`signed_bytes`."""

    def signed_bytes(self) -> bytes:
        """Return the exact bytes that the signature covers."""
        body = self.model_dump(exclude={"signature"})
        return RECEIPT_DOMAIN + canonical_json(body)

    def to_config(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (the inverse of ``Receipt.model_validate``)."""
        return self.model_dump()


def sign_receipt(
    signing_key: Ed25519PrivateKey,
    *,
    study_id: str,
    round: int,
    nonce: str,
    hospital_id: str,
    dp: DPParameters,
    accountant: Accountant,
    delta: float,
    epsilon_after: float,
    ledger_head_hash: str,
) -> Receipt:
    """Build and sign a receipt with the hospital's Ed25519 identity key."""
    unsigned = Receipt(
        study_id=study_id,
        round=round,
        nonce=nonce,
        hospital_id=hospital_id,
        dp=dp,
        accountant=accountant,
        delta=delta,
        epsilon_after=epsilon_after,
        ledger_head_hash=ledger_head_hash,
    )
    signature = signing_key.sign(unsigned.signed_bytes())
    return unsigned.model_copy(
        update={"signature": base64.b64encode(signature).decode("ascii")}
    )


def verify_receipt(receipt: Receipt, public_key: Ed25519PublicKey) -> None:
    """Check the receipt's signature with the hospital's enrolled public key.

    Raises:
        ReceiptSignatureError: the signature is missing, malformed or invalid.

    """
    # Re-validate: a receipt built with model_construct() skips validation.
    receipt = Receipt.model_validate(receipt.model_dump())
    try:
        signature = base64.b64decode(receipt.signature, validate=True)
        public_key.verify(signature, receipt.signed_bytes())
    except (InvalidSignature, ValueError):
        raise ReceiptSignatureError(
            f"receipt of {receipt.hospital_id} for study {receipt.study_id} round "
            f"{receipt.round} has an invalid signature"
        ) from None


def check_receipt(
    receipt: Receipt,
    public_key: Ed25519PublicKey,
    *,
    study_id: str,
    round: int,
    nonce: str,
    hospital_id: str,
    dp: DPParameters,
    accountant: Accountant,
    delta: float,
    expected_epsilon: float,
    relative_tolerance: float = DEFAULT_EPSILON_RELATIVE_TOLERANCE,
) -> None:
    """Verify the signature, then compare the receipt with the hub's own record.

    ``expected_epsilon`` is the hub's epsilon for this hospital after the round,
    replayed from the hub's ledger. The hub excludes a hospital whose receipt
    fails either check.

    Raises:
        ReceiptSignatureError: the signature is invalid.
        ReceiptMismatchError: a field differs; ``field`` names it.

    """
    verify_receipt(receipt, public_key)
    expected: dict[str, Any] = {
        "study_id": study_id,
        "round": round,
        "nonce": nonce,
        "hospital_id": hospital_id,
        "dp": dp,
        "accountant": accountant,
        "delta": delta,
    }
    for name, value in expected.items():
        if getattr(receipt, name) != value:
            raise ReceiptMismatchError(
                name,
                f"receipt of {hospital_id} round {round}: {name} is "
                f"{getattr(receipt, name)!r}, the hub sent {value!r}",
            )
    if not math.isclose(
        receipt.epsilon_after, expected_epsilon, rel_tol=relative_tolerance, abs_tol=0.0
    ):
        raise ReceiptMismatchError(
            "epsilon_after",
            f"receipt of {hospital_id} round {round}: epsilon_after is "
            f"{receipt.epsilon_after}, the hub computes {expected_epsilon}",
        )
