"""Shamir t-of-n secret sharing over the prime field of p = 2**521 - 1.

The field holds every 256-bit secret (seeds and keys) as one element. Shares are
points (x, f(x)) of a random polynomial f of degree t - 1 with f(0) = secret;
any t points determine f(0) by Lagrange interpolation, and t - 1 points reveal
nothing about it (Shamir, "How to share a secret", CACM 1979).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

#: The Mersenne prime 2**521 - 1.
PRIME = 2**521 - 1
#: Bytes of one share's y coordinate (big-endian).
SHARE_VALUE_BYTES = 66
#: Bytes of one encoded share: a 2-byte x coordinate, then the y coordinate.
SHARE_BYTES = 2 + SHARE_VALUE_BYTES
#: Largest x coordinate, so that it fits the 2-byte field.
MAX_X = 2**16 - 1


def evaluate_polynomial(coefficients: Sequence[int], x: int) -> int:
    """Return f(x) mod PRIME for f(x) = sum(coefficients[i] * x**i) (Horner)."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def split_secret(
    secret: int, threshold: int, x_coordinates: Sequence[int]
) -> dict[int, int]:
    """Split ``secret`` into one share per x coordinate.

    Any ``threshold`` of the shares recover the secret. Coefficients come from
    the operating system's CSPRNG (``secrets``).
    """
    _check_split_arguments(secret, threshold, x_coordinates)
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: evaluate_polynomial(coefficients, x) for x in x_coordinates}


def reconstruct_secret(shares: Mapping[int, int], threshold: int) -> int:
    """Return f(0) from at least ``threshold`` shares {x: f(x)}.

    Uses the first ``threshold`` shares in ascending x order. Raises ValueError
    when fewer shares are given or an x coordinate is 0 or out of range.
    """
    if len(shares) < threshold:
        raise ValueError(
            f"reconstruction needs threshold={threshold} shares: got {len(shares)}"
        )
    points = sorted(shares.items())[:threshold]
    for x, _ in points:
        if not 1 <= x <= MAX_X:
            raise ValueError(f"share x coordinate must be in [1, {MAX_X}]: got {x}")
    secret = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator = 1
        denominator = 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * (-x_j) % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        basis = numerator * pow(denominator, -1, PRIME) % PRIME
        secret = (secret + y_i * basis) % PRIME
    return secret


def encode_share(x: int, y: int) -> bytes:
    """Return the 68-byte encoding of share (x, y)."""
    return x.to_bytes(2, "big") + y.to_bytes(SHARE_VALUE_BYTES, "big")


def decode_share(data: bytes) -> tuple[int, int]:
    """Return share (x, y) from its 68-byte encoding.

    Raises ValueError on a wrong length, x = 0 or y outside the field.
    """
    if len(data) != SHARE_BYTES:
        raise ValueError(f"an encoded share has {SHARE_BYTES} bytes: got {len(data)}")
    x = int.from_bytes(data[:2], "big")
    y = int.from_bytes(data[2:], "big")
    if x == 0 or y >= PRIME:
        raise ValueError("encoded share has x = 0 or y outside the field")
    return x, y


def _check_split_arguments(
    secret: int, threshold: int, x_coordinates: Sequence[int]
) -> None:
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be an element of the field [0, 2**521 - 1)")
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1: got {threshold}")
    if len(x_coordinates) < threshold:
        raise ValueError(
            f"threshold={threshold} exceeds the number of shares "
            f"{len(x_coordinates)}. Lower the threshold or add share holders"
        )
    if len(set(x_coordinates)) != len(x_coordinates):
        raise ValueError("x coordinates must be distinct")
    for x in x_coordinates:
        if not 1 <= x <= MAX_X:
            raise ValueError(f"x coordinate must be in [1, {MAX_X}]: got {x}")
