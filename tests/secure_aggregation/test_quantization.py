"""Clipping, fixed-point quantization and the modulus capacity check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secure_aggregation.config import SecureAggregationConfig, minimum_threshold
from secure_aggregation.errors import ModulusTooSmallError, QuantizationRangeError
from secure_aggregation.quantization import Quantizer, clip_update


def test_clip_leaves_short_delta() -> None:
    delta = np.array([0.3, -0.4])
    result = clip_update(delta, 1.0)
    assert result.clipped is False
    assert np.array_equal(result.delta, delta)


def test_clip_scales_long_delta() -> None:
    result = clip_update(np.array([3.0, -4.0]), 1.0)
    assert result.clipped is True
    assert np.linalg.norm(result.delta) <= 1.0
    assert np.allclose(result.delta, [0.6, -0.8])


def test_clip_one_hot_stays_in_range() -> None:
    result = clip_update(np.array([0.0, 7.0, 0.0]), 2.5)
    assert np.max(np.abs(result.delta)) <= 2.5


def test_clip_rejects_nan() -> None:
    with pytest.raises(QuantizationRangeError, match="NaN"):
        clip_update(np.array([1.0, np.nan]), 1.0)


def test_encode_known_answer() -> None:
    quantizer = Quantizer(step=0.25, bound=1.0, modulus_bits=16)
    encoded = quantizer.encode(np.array([0.0, 0.25, -0.25, 1.0, -1.0, 0.3]))
    assert encoded.tolist() == [0, 1, 2**16 - 1, 4, 2**16 - 4, 1]


def test_encode_rejects_out_of_range() -> None:
    quantizer = Quantizer(step=0.25, bound=1.0, modulus_bits=64)
    with pytest.raises(QuantizationRangeError, match="1 coordinates"):
        quantizer.encode(np.array([0.5, 1.0001]))


def test_encode_rejects_infinity() -> None:
    quantizer = Quantizer(step=0.25, bound=1.0, modulus_bits=64)
    with pytest.raises(QuantizationRangeError):
        quantizer.encode(np.array([np.inf]))


@pytest.mark.parametrize("bits", [16, 32, 63, 64])
def test_decode_sum_signed(bits: int) -> None:
    quantizer = Quantizer(step=0.5, bound=4.0, modulus_bits=bits)
    parts = [np.array([-4.0, 1.5, 0.0]), np.array([-3.5, -4.0, 0.5])]
    residues = np.zeros(3, dtype=np.uint64)
    for part in parts:
        residues += quantizer.encode(part)
    assert quantizer.decode(residues).tolist() == [-7.5, -2.5, 0.5]


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, 32, elements=st.floats(-3.0, 3.0)))
def test_encode_error_within_half_step(values: np.ndarray) -> None:
    quantizer = Quantizer(step=2.0**-12, bound=3.0, modulus_bits=64)
    decoded = quantizer.decode(quantizer.encode(values))
    assert np.max(np.abs(decoded - values)) <= 2.0**-13


def test_capacity_accepts_fitting_sum() -> None:
    config = SecureAggregationConfig(
        threshold=2,
        model_size=4,
        clipping_range=1.0,
        modulus_bits=32,
        quantization_levels=2**10,
        max_weight=2**10,
    )
    config.check_capacity(2**11 - 1)


def test_capacity_rejects_overflowing_sum() -> None:
    config = SecureAggregationConfig(
        threshold=2,
        model_size=4,
        clipping_range=1.0,
        modulus_bits=32,
        quantization_levels=2**10,
        max_weight=2**10,
    )
    with pytest.raises(ModulusTooSmallError, match="2048 parties"):
        config.check_capacity(2**11)


def test_weight_capped_at_max() -> None:
    config = SecureAggregationConfig(
        threshold=2, model_size=4, clipping_range=1.0, max_weight=100
    )
    assert config.weight_for(250) == 100
    assert config.weight_for(42) == 42


def test_weight_fixed() -> None:
    config = SecureAggregationConfig(
        threshold=2, model_size=4, clipping_range=1.0, max_weight=5, fixed_weight=3
    )
    assert config.weight_for(250) == 3


def test_weight_rejects_empty_cohort() -> None:
    config = SecureAggregationConfig(threshold=2, model_size=4, clipping_range=1.0)
    with pytest.raises(ValueError, match="record_count"):
        config.weight_for(0)


def test_config_rejects_fixed_above_max() -> None:
    with pytest.raises(ValueError, match="fixed_weight"):
        SecureAggregationConfig(
            threshold=2, model_size=4, clipping_range=1.0, fixed_weight=2
        )


def test_config_rejects_odd_neighbors() -> None:
    with pytest.raises(ValueError, match="even"):
        SecureAggregationConfig(
            threshold=2, model_size=4, clipping_range=1.0, neighbors=3
        )


def test_config_frozen() -> None:
    config = SecureAggregationConfig(threshold=2, model_size=4, clipping_range=1.0)
    with pytest.raises(ValueError):
        config.threshold = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("holders", "colluding", "expected"),
    [(3, 0, 2), (4, 0, 3), (5, 0, 3), (10, 0, 6), (10, 2, 7), (20, 0, 11)],
)
def test_minimum_threshold_table(holders: int, colluding: int, expected: int) -> None:
    assert minimum_threshold(holders, colluding) == expected
