"""Known-answer and property tests of Shamir secret sharing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_aggregation import shamir


def test_prime_is_mersenne_521() -> None:
    assert shamir.PRIME == 2**521 - 1
    # Fermat test to base 3: a composite modulus would fail it for this base.
    assert pow(3, shamir.PRIME - 1, shamir.PRIME) == 1


def test_evaluate_polynomial_known_answer() -> None:
    # f(x) = 1234 + 166 x + 94 x^2, a classic worked example of Shamir sharing.
    coefficients = [1234, 166, 94]
    shares = [shamir.evaluate_polynomial(coefficients, x) for x in range(1, 7)]
    assert shares == [1494, 1942, 2578, 3402, 4414, 5614]


def test_reconstruct_known_answer() -> None:
    shares = {2: 1942, 4: 3402, 5: 4414}
    assert shamir.reconstruct_secret(shares, 3) == 1234


def test_evaluate_wraps_modulo_prime() -> None:
    # f(x) = (p - 1) + x gives f(1) = 0 and f(2) = 1 in the field.
    coefficients = [shamir.PRIME - 1, 1]
    assert shamir.evaluate_polynomial(coefficients, 1) == 0
    assert shamir.evaluate_polynomial(coefficients, 2) == 1
    assert shamir.reconstruct_secret({1: 0, 2: 1}, 2) == shamir.PRIME - 1


def test_encode_share_known_answer() -> None:
    encoded = shamir.encode_share(3, 0x0102)
    assert encoded == b"\x00\x03" + bytes(64) + b"\x01\x02"
    assert shamir.decode_share(encoded) == (3, 0x0102)


@pytest.mark.parametrize(
    "data",
    [bytes(67), b"\x00\x00" + bytes(65) + b"\x01", b"\x00\x01" + b"\xff" * 66],
)
def test_decode_share_rejects_invalid(data: bytes) -> None:
    with pytest.raises(ValueError):
        shamir.decode_share(data)


@settings(max_examples=30, deadline=None)
@given(
    secret=st.integers(0, 2**256 - 1),
    holders=st.integers(2, 8),
    data=st.data(),
)
def test_any_threshold_subset_reconstructs(
    secret: int, holders: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(1, holders))
    x_coordinates = data.draw(
        st.lists(st.integers(1, 1000), min_size=holders, max_size=holders, unique=True)
    )
    shares = shamir.split_secret(secret, threshold, x_coordinates)
    for subset in itertools.combinations(sorted(shares), threshold):
        chosen = {x: shares[x] for x in subset}
        assert shamir.reconstruct_secret(chosen, threshold) == secret


def test_fewer_shares_rejected() -> None:
    shares = shamir.split_secret(42, 3, [1, 2, 3])
    with pytest.raises(ValueError, match="threshold=3"):
        shamir.reconstruct_secret({1: shares[1], 2: shares[2]}, 3)


def test_fewer_shares_interpolate_other_value() -> None:
    # Interpolating t - 1 shares as if the threshold were t - 1 yields a value
    # unrelated to the secret (with probability 1 - 1/p).
    secret = 2**255 + 7
    shares = shamir.split_secret(secret, 3, [1, 2, 3])
    assert shamir.reconstruct_secret({1: shares[1], 2: shares[2]}, 2) != secret


@pytest.mark.parametrize(
    ("threshold", "x_coordinates"),
    [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1]), (2, [1, 2**16])],
)
def test_split_rejects_invalid_arguments(
    threshold: int, x_coordinates: list[int]
) -> None:
    with pytest.raises(ValueError):
        shamir.split_secret(5, threshold, x_coordinates)


def test_split_rejects_secret_outside_field() -> None:
    with pytest.raises(ValueError, match="field"):
        shamir.split_secret(shamir.PRIME, 2, [1, 2])
