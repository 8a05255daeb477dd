"""Cryptographic building blocks, all from ``cryptography`` (pyca).

Mask expansion: a 256-bit seed is the key of ChaCha20 (RFC 8439) with an all-zero
nonce and block counter 0. The keystream, read as little-endian 64-bit words and
reduced modulo 2**k, is the mask. Every seed is used for one mask only, so the
fixed nonce never repeats under one key.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_aggregation.errors import ShareDecryptionError

SEED_BYTES = 32
NONCE_BYTES = 32
GCM_NONCE_BYTES = 12
_PROTOCOL_TAG = b"healthfed-secagg-v1"
_ZERO_NONCE = bytes(16)
_zero_block = bytes(0)
# add_mask writes the keystream in chunks of 2**15 words (256 KiB), small
# enough to stay in the CPU cache while it is added, into one buffer per thread.
_CHUNK_WORDS = 2**15
_CHUNK_ZEROS = bytes(8 * _CHUNK_WORDS)
_buffers = threading.local()


def encode_fields(*fields: str | bytes | int) -> bytes:
    """Return an unambiguous byte string of ``fields`` (length-prefixed).

    Strings are UTF-8, integers are 8-byte unsigned big-endian, and each field
    is preceded by its 4-byte length, so no two field lists encode alike.
    """
    parts = [_PROTOCOL_TAG]
    for field in fields:
        if isinstance(field, bool):
            raise TypeError("booleans are not encodable fields")
        if isinstance(field, int):
            data = field.to_bytes(8, "big")
        elif isinstance(field, str):
            data = field.encode("utf-8")
        else:
            data = bytes(field)
        parts.append(struct.pack(">I", len(data)))
        parts.append(data)
    return b"".join(parts)


def keystream(seed: bytes, length: int) -> bytes:
    """Return ``length`` bytes of ChaCha20 keystream under key ``seed``."""
    global _zero_block
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed has {SEED_BYTES} bytes: got {len(seed)}")
    if len(_zero_block) < length:
        _zero_block = bytes(length)
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    return encryptor.update(memoryview(_zero_block)[:length])


def expand_mask(
    seed: bytes, length: int, modulus_bits: int = 64
) -> npt.NDArray[np.uint64]:
    """Return ``length`` mask values modulo 2**modulus_bits from ``seed``.

    The values are uniform on [0, 2**k) because 2**k divides 2**64. The array
    is read-only when ``modulus_bits`` is 64, since it views the keystream.
    """
    words = np.frombuffer(keystream(seed, 8 * length), dtype="<u8")
    if modulus_bits == 64:
        return words
    return words & np.uint64((1 << modulus_bits) - 1)


def add_mask(
    target: npt.NDArray[np.uint64], seed: bytes, subtract: bool = False
) -> None:
    """Add (or subtract) the 64-bit mask of ``seed`` to ``target`` in place.

    The sum wraps modulo 2**64. Reducing the result modulo 2**k afterwards
    equals adding ``expand_mask(seed, len(target), k)`` modulo 2**k, because
    2**k divides 2**64. The keystream is produced in cache-sized chunks into
    one reused buffer, so adding a mask allocates nothing.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed has {SEED_BYTES} bytes: got {len(seed)}")
    buffer: bytearray | None = getattr(_buffers, "keystream", None)
    if buffer is None:
        buffer = bytearray(8 * _CHUNK_WORDS)
        _buffers.keystream = buffer
    chunk = np.frombuffer(buffer, dtype="<u8")
    zeros = memoryview(_CHUNK_ZEROS)
    operation = np.subtract if subtract else np.add
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    length = target.shape[0]
    for start in range(0, length, _CHUNK_WORDS):
        stop = min(start + _CHUNK_WORDS, length)
        encryptor.update_into(zeros[: 8 * (stop - start)], buffer)
        section = target[start:stop]
        operation(section, chunk[: stop - start], out=section)


def derive_key(shared_secret: bytes, info: bytes, length: int = 32) -> bytes:
    """Return ``length`` bytes of HKDF-SHA256 output (RFC 5869, no salt)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
        shared_secret
    )


def agree(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Return the X25519 shared secret with the raw 32-byte ``peer_public``.

    Raises ValueError on a low-order public key (all-zero shared secret).
    """
    return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))


def pairwise_mask_seed(
    shared_secret: bytes,
    study_id: str,
    round_number: int,
    nonce: bytes,
    pair: Sequence[tuple[str, int]],
) -> bytes:
    """Return the 256-bit mask seed of one ordered pair for one round.

    ``pair`` lists (party_id, key_epoch) of both parties sorted by party id.
    """
    info = encode_fields(
        "pairwise-mask",
        study_id,
        round_number,
        nonce,
        pair[0][0],
        pair[0][1],
        pair[1][0],
        pair[1][1],
    )
    return derive_key(shared_secret, info)


def share_encryption_key(
    shared_secret: bytes, study_id: str, pair: Sequence[tuple[str, int]]
) -> bytes:
    """Return the AES-256-GCM key of one pair, from their share-encryption keys."""
    info = encode_fields(
        "share-encryption", study_id, pair[0][0], pair[0][1], pair[1][0], pair[1][1]
    )
    return derive_key(shared_secret, info)


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Return a random 96-bit nonce followed by the AES-GCM ciphertext and tag."""
    nonce = os.urandom(GCM_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Return the plaintext of ``blob`` or raise ShareDecryptionError."""
    if len(blob) < GCM_NONCE_BYTES + 16:
        raise ShareDecryptionError("encrypted share bundle is too short")
    try:
        return AESGCM(key).decrypt(
            blob[:GCM_NONCE_BYTES], blob[GCM_NONCE_BYTES:], associated_data
        )
    except InvalidTag:
        raise ShareDecryptionError(
            "encrypted share bundle failed AES-GCM authentication"
        ) from None


def commitment(secret: bytes, *context: str | bytes | int) -> bytes:
    """Return a SHA-256 commitment to a 256-bit secret, bound to ``context``."""
    return hashlib.sha256(encode_fields("commitment", *context, secret)).digest()
