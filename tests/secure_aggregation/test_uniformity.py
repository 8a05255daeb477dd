"""Statistical tests that one masked update looks uniform to the hub.

Each test bins 2**16 masked coordinates by their top and bottom 8 bits and
applies Pearson's chi-square test. At significance 1e-6 an honest mask fails by
chance about once in a million runs; the unmasked and badly masked inputs fail
with overwhelming probability.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from secagg_harness import Federation, make_config

from secure_aggregation.primitives import expand_mask

SIZE = 2**16
ALPHA = 1e-6


def uniform_p_values(values: np.ndarray) -> tuple[float, float]:
    top = (values >> np.uint64(56)).astype(np.int64)
    bottom = (values & np.uint64(0xFF)).astype(np.int64)
    p_top = stats.chisquare(np.bincount(top, minlength=256)).pvalue
    p_bottom = stats.chisquare(np.bincount(bottom, minlength=256)).pvalue
    return float(p_top), float(p_bottom)


@pytest.fixture(scope="module")
def masked_and_plain() -> tuple[np.ndarray, np.ndarray]:
    config = make_config(3, model_size=SIZE - 1, max_weight=10)
    federation = Federation.build(config, 3)
    federation.setup()
    start = federation.hub.begin_round(1)
    rng = np.random.default_rng(7)
    delta = rng.normal(size=SIZE - 1)
    delta *= 0.9 / np.linalg.norm(delta)
    agent = federation.agents["hospital-00"]
    masked = agent.mask_update(1, start.nonce, start.participants, delta, 10)
    plain = agent._quantizer.encode(delta * 10)
    return masked.masked_vector, plain


def test_masked_update_uniform(masked_and_plain: tuple[np.ndarray, np.ndarray]) -> None:
    p_top, p_bottom = uniform_p_values(masked_and_plain[0])
    assert p_top > ALPHA
    assert p_bottom > ALPHA


def test_unmasked_update_fails(masked_and_plain: tuple[np.ndarray, np.ndarray]) -> None:
    p_top, _ = uniform_p_values(masked_and_plain[1])
    assert p_top < ALPHA


def test_low_bits_mask_fails(masked_and_plain: tuple[np.ndarray, np.ndarray]) -> None:
    # A mask drawn modulo 2**32 but added modulo 2**64 leaves the top bits of
    # the update exposed.
    weak_mask = expand_mask(bytes(range(32)), SIZE - 1, modulus_bits=32)
    p_top, _ = uniform_p_values(masked_and_plain[1] + weak_mask)
    assert p_top < ALPHA
