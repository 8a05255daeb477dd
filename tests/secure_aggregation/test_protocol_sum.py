"""Exact-sum tests of full secure rounds with dropouts at every stage."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import Federation, make_config, run_round

from secure_aggregation.protocol import MIN_PARTIES, RoundAbortedError


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


@settings(max_examples=15, deadline=None)
@given(data=st.data(), count=st.integers(3, 7), bits=st.sampled_from([32, 64]))
def test_round_exact_property(data: st.DataObject, count: int, bits: int) -> None:
    config = make_config(
        count, modulus_bits=bits, quantization_levels=2**12, max_weight=20
    )
    federation = Federation.build(config, count)
    parties = federation.setup()
    tolerated = count - max(config.threshold, MIN_PARTIES)
    before = data.draw(
        st.lists(st.sampled_from(parties), max_size=tolerated, unique=True)
    )
    remaining = [p for p in parties if p not in before]
    during = data.draw(
        st.lists(
            st.sampled_from(remaining),
            max_size=count - config.threshold - len(before),
            unique=True,
        )
    )
    seed = data.draw(st.integers(0, 2**32 - 1))
    run_round(federation, 1, seed, tuple(before), tuple(during))
