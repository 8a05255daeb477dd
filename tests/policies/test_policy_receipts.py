"""Receipts: signature, known-answer signed bytes and mismatch detection."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from policy_helpers import dp

from policies.receipts import (
    Receipt,
    ReceiptMismatchError,
    ReceiptSignatureError,
    check_receipt,
    sign_receipt,
    verify_receipt,
)

HEAD = "ab" * 32
NONCE = "0123456789abcdef0123456789abcdef"
# RFC 8032 section 7.1, test 1 secret key.
RFC8032_SECRET = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)


def _signed(key: Ed25519PrivateKey, epsilon: float = 0.75) -> Receipt:
    return sign_receipt(
        key,
        study_id="s1",
        round=2,
        nonce=NONCE,
        hospital_id="va",
        dp=dp(1.5, 0.2, 3),
        accountant="rdp",
        delta=1e-5,
        epsilon_after=epsilon,
        ledger_head_hash=HEAD,
    )


def test_signed_bytes_known_answer() -> None:
    receipt = _signed(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))
    expected = (
        b"healthfed spend receipt v1\n"
        b'{"accountant":"rdp","delta":1e-05,"dp":{"max_grad_norm":1.0,'
        b'"noise_multiplier":1.5,"sample_rate":0.2,"steps":3},'
        b'"epsilon_after":0.75,"hospital_id":"va",'
        b'"ledger_head_hash":"' + HEAD.encode() + b'",'
        b'"nonce":"' + NONCE.encode() + b'","round":2,"study_id":"s1"}'
    )
    assert receipt.signed_bytes() == expected


def test_signature_known_answer() -> None:
    # Ed25519 is deterministic, so the signature of fixed bytes is fixed.
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    receipt = _signed(key)
    assert (
        receipt.signature == base64.b64encode(key.sign(receipt.signed_bytes())).decode()
    )


def test_rfc8032_empty_message_vector() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_valid_receipt_verifies(signing_key: Ed25519PrivateKey) -> None:
    verify_receipt(_signed(signing_key), signing_key.public_key())


def test_receipt_json_round_trip(signing_key: Ed25519PrivateKey) -> None:
    receipt = _signed(signing_key)
    restored = Receipt.model_validate(receipt.to_config())
    verify_receipt(restored, signing_key.public_key())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epsilon_after", 0.1),
        ("round", 3),
        ("nonce", "f" * 32),
        ("hospital_id", "cleveland"),
        ("ledger_head_hash", "cd" * 32),
        ("dp", dp(9.0, 0.2, 3)),
    ],
)
def test_edited_receipt_raises(
    signing_key: Ed25519PrivateKey, field: str, value: object
) -> None:
    edited = _signed(signing_key).model_copy(update={field: value})
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(edited, signing_key.public_key())


def test_other_key_raises(signing_key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(_signed(other), signing_key.public_key())


def test_garbage_signature_raises(signing_key: Ed25519PrivateKey) -> None:
    broken = _signed(signing_key).model_copy(update={"signature": "not base64!"})
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(broken, signing_key.public_key())


def _check(receipt: Receipt, key: Ed25519PrivateKey, **changes: object) -> None:
    expected: dict[str, object] = {
        "study_id": "s1",
        "round": 2,
        "nonce": NONCE,
        "hospital_id": "va",
        "dp": dp(1.5, 0.2, 3),
        "accountant": "rdp",
        "delta": 1e-5,
        "expected_epsilon": 0.75,
    }
    expected.update(changes)
    check_receipt(receipt, key.public_key(), **expected)  # type: ignore[arg-type]


def test_matching_receipt_passes(signing_key: Ed25519PrivateKey) -> None:
    _check(_signed(signing_key), signing_key)


def test_epsilon_mismatch_flagged(signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReceiptMismatchError) as raised:
        _check(_signed(signing_key, epsilon=0.5), signing_key)
    assert raised.value.field == "epsilon_after"


def test_dp_mismatch_flagged(signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReceiptMismatchError) as raised:
        _check(_signed(signing_key), signing_key, dp=dp(2.0, 0.2, 3))
    assert raised.value.field == "dp"
