"""Exact-sum tests of full secure rounds with dropouts at every stage."""

from __future__ import annotations

import itertools

import pytest
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
