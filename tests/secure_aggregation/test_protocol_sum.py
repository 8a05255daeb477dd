"""Exact-sum tests of full secure rounds with dropouts at every stage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from secagg_harness import Federation, make_config, random_deltas

from secure_aggregation.protocol import MIN_PARTIES, RoundAbortedError
from secure_aggregation.quantization import Quantizer


def expected_residue_sum(
    federation: Federation,
    deltas: dict[str, np.ndarray],
    weights: dict[str, int],
    parties: list[str],
) -> tuple[np.ndarray, float]:
    """Oracle: quantize each survivor's weighted delta alone and add as int64."""
    config = federation.config
    quantizer = Quantizer(
        config.quantization_step, config.weighted_range, config.modulus_bits
    )
    total = np.zeros(config.model_size, dtype=np.int64)
    for party in parties:
        total += quantizer.to_signed(quantizer.encode(deltas[party] * weights[party]))
    return total.astype(np.float64) * quantizer.step, float(
        sum(weights[party] for party in parties)
    )


def run_round(
    federation: Federation,
    round_number: int,
    seed: int,
    drop_before_input: tuple[str, ...] = (),
    drop_during_unmask: tuple[str, ...] = (),
) -> None:
    rng = np.random.default_rng(seed)
    start = federation.hub.begin_round(round_number)
    config = federation.config
    deltas = random_deltas(rng, start.participants, config.model_size, 1.0)
    weights = {
        party: int(rng.integers(1, config.max_weight + 1))
        for party in start.participants
    }
    masked = federation.mask_all(start, deltas, weights, skip=drop_before_input)
    requests = federation.hub.collect_masked_inputs(round_number, start.nonce, masked)
    responses = federation.unmask_all(requests, skip=drop_during_unmask)
    total, total_weight = federation.hub.finalize(responses)
    survivors = sorted(set(start.participants) - set(drop_before_input))
    expected, expected_weight = expected_residue_sum(
        federation, deltas, weights, survivors
    )
    assert np.array_equal(total, expected)
    assert total_weight == expected_weight


@pytest.mark.parametrize("count", [3, 4, 5, 6])
def test_round_exact_every_dropout_pattern(count: int) -> None:
    config = make_config(count, max_weight=50)
    federation = Federation.build(config, count)
    parties = federation.setup()
    tolerated = count - config.threshold
    round_number = 0
    for dropped_count in range(tolerated + 1):
        for before in itertools.combinations(parties, dropped_count):
            remaining = [p for p in parties if p not in before]
            for during_count in range(tolerated - dropped_count + 1):
                for during in itertools.combinations(remaining, during_count):
                    round_number += 1
                    if len(remaining) < MIN_PARTIES:
                        with pytest.raises(RoundAbortedError):
                            run_round(federation, round_number, round_number, before)
                        continue
                    run_round(federation, round_number, round_number, before, during)


def test_round_aborts_below_threshold() -> None:
    config = make_config(5)
    federation = Federation.build(config, 5)
    parties = federation.setup()
    with pytest.raises(RoundAbortedError, match="fewer than"):
        run_round(federation, 1, 1, drop_before_input=tuple(parties[:3]))
