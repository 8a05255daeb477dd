"""Known-answer and tamper tests of the cryptographic building blocks."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_aggregation.errors import ShareDecryptionError
from secure_aggregation.primitives import (
    add_mask,
    decrypt,
    derive_key,
    encode_fields,
    encrypt,
    expand_mask,
    keystream,
)

# RFC 8439 (as RFC 7539 before it), Appendix A.2, test vector 1: ChaCha20 with
# an all-zero key and nonce, counter 0, on 64 zero bytes gives this keystream.
RFC8439_ZERO_KEY_BLOCK = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)

# RFC 8439, section 2.4.2: key 00..1f, nonce 000000000000004a00000000, counter 1.
RFC8439_SUNSCREEN_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
    b"tip for the future, sunscreen would be it."
)
RFC8439_SUNSCREEN_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)

# RFC 5869, Appendix A.3: HKDF-SHA256 with no salt and no info.
RFC5869_CASE3_OKM = bytes.fromhex(
    "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
    "9d201395faa4b61a96c8"
)


def test_keystream_rfc8439_zero_key() -> None:
    assert keystream(bytes(32), 64) == RFC8439_ZERO_KEY_BLOCK


def test_expand_mask_rfc8439_words() -> None:
    mask = expand_mask(bytes(32), 8)
    expected = [
        int.from_bytes(RFC8439_ZERO_KEY_BLOCK[i : i + 8], "little")
        for i in range(0, 64, 8)
    ]
    assert mask.dtype == np.uint64
    assert mask.tolist() == expected


def test_expand_mask_reduces_modulus() -> None:
    mask = expand_mask(bytes(32), 8, modulus_bits=20)
    expected = [
        int.from_bytes(RFC8439_ZERO_KEY_BLOCK[i : i + 8], "little") % 2**20
        for i in range(0, 64, 8)
    ]
    assert mask.tolist() == expected


def test_chacha20_nonce_layout_rfc8439() -> None:
    # cryptography's 16-byte ChaCha20 nonce is the 4-byte little-endian block
    # counter followed by the RFC 8439 96-bit nonce.
    nonce = (1).to_bytes(4, "little") + bytes.fromhex("000000000000004a00000000")
    cipher = Cipher(algorithms.ChaCha20(bytes(range(32)), nonce), mode=None)
    ciphertext = cipher.encryptor().update(RFC8439_SUNSCREEN_PLAINTEXT)
    assert ciphertext == RFC8439_SUNSCREEN_CIPHERTEXT


def test_expand_mask_prefix_stable() -> None:
    seed = bytes(range(32))
    assert np.array_equal(expand_mask(seed, 1000)[:10], expand_mask(seed, 10))


def test_expand_mask_rejects_short_seed() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(bytes(16), 4)


def test_hkdf_rfc5869_case3() -> None:
    assert derive_key(bytes([0x0B]) * 22, b"", 42) == RFC5869_CASE3_OKM


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=6), max_size=4),
    st.lists(st.binary(max_size=6), max_size=4),
)
def test_encode_fields_injective(first: list[bytes], second: list[bytes]) -> None:
    # Length prefixes keep field boundaries: ["ab", ""] and ["a", "b"] differ.
    if first != second:
        assert encode_fields(*first) != encode_fields(*second)


def test_encode_fields_known_answer() -> None:
    encoded = encode_fields("id", 1, b"\xff")
    assert encoded == (
        b"healthfed-secagg-v1"
        + b"\x00\x00\x00\x02id"
        + b"\x00\x00\x00\x08"
        + (1).to_bytes(8, "big")
        + b"\x00\x00\x00\x01\xff"
    )


def test_encrypt_round_trip() -> None:
    key = bytes(32)
    blob = encrypt(key, b"share", b"context")
    assert decrypt(key, blob, b"context") == b"share"


def test_decrypt_rejects_flipped_bit() -> None:
    key = bytes(32)
    blob = bytearray(encrypt(key, b"share", b"context"))
    blob[-1] ^= 1
    with pytest.raises(ShareDecryptionError):
        decrypt(key, bytes(blob), b"context")


def test_decrypt_rejects_other_context() -> None:
    key = bytes(32)
    blob = encrypt(key, b"share", b"context")
    with pytest.raises(ShareDecryptionError):
        decrypt(key, blob, b"other context")


@pytest.mark.parametrize("bits", [20, 64])
def test_add_mask_matches_expand_mask(bits: int) -> None:
    # 70001 words span three keystream chunks, the last one partial.
    length = 70001
    seed = bytes(range(32))
    start = np.arange(length, dtype=np.uint64)
    reduce = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    added = start.copy()
    add_mask(added, seed)
    expected = (start + expand_mask(seed, length, bits)) & reduce
    assert np.array_equal(added & reduce, expected)


def test_add_mask_subtract_inverts() -> None:
    values = np.arange(1000, dtype=np.uint64)
    target = values.copy()
    add_mask(target, bytes(32))
    add_mask(target, bytes(32), subtract=True)
    assert np.array_equal(target, values)
