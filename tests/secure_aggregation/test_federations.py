"""Exact sums for larger and sparse federations, setup dropouts and an active hub."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from secagg_harness import Federation, make_config, party_ids, run_round

from secure_aggregation.graph import neighbor_map
from secure_aggregation.protocol import (
    MIN_PARTIES,
    AgentSession,
    InsufficientSurvivorsError,
    RoundAbortedError,
)
from secure_aggregation.rounds import smallest_component


@pytest.mark.parametrize("count", range(7, 21))
def test_round_exact_sampled_dropouts(count: int) -> None:
    config = make_config(count, max_weight=1000)
    federation = Federation.build(config, count)
    parties = federation.setup()
    rng = np.random.default_rng(count)
    tolerated = count - config.threshold
    patterns = [(0, 0), (tolerated, 0), (0, tolerated)]
    patterns.append((int(rng.integers(0, tolerated + 1)), 0))
    for round_number, (before_count, during_budget) in enumerate(patterns, start=1):
        before = tuple(rng.choice(parties, before_count, replace=False))
        remaining = [p for p in parties if p not in before]
        during_count = min(during_budget, tolerated - before_count)
        during = tuple(rng.choice(remaining, during_count, replace=False))
        run_round(federation, round_number, count * 100 + round_number, before, during)


def test_setup_every_dropout_pattern() -> None:
    count = 5
    config = make_config(count)
    tolerated = count - max(config.threshold, MIN_PARTIES)
    ids = party_ids(count)
    for total in range(tolerated + 1):
        for missing in itertools.combinations(ids, total):
            for split in range(total + 1):
                federation = Federation.build(config, count)
                key_set = federation.setup(
                    skip_advertise=missing[:split], skip_confirm=missing[split:]
                )
                assert key_set == sorted(set(ids) - set(missing))
                run_round(federation, 1, total * 10 + split)


@pytest.mark.parametrize("bits", [24, 40])
def test_round_exact_small_modulus(bits: int) -> None:
    config = make_config(5, modulus_bits=bits, quantization_levels=2**8, max_weight=4)
    federation = Federation.build(config, 5)
    federation.setup()
    run_round(federation, 1, 1, ("hospital-01",), ("hospital-02",))


def test_sparse_round_exact() -> None:
    config = make_config(12, threshold=3, neighbors=4)
    federation = Federation.build(config, 12)
    parties = federation.setup()
    run_round(federation, 1, 1)
    run_round(federation, 2, 2, (parties[0],), (parties[5],))


def test_sparse_masks_only_neighbors() -> None:
    config = make_config(12, threshold=3, neighbors=4)
    federation = Federation.build(config, 12)
    federation.setup()
    start = federation.hub.begin_round(1)
    agent = federation.agents["hospital-00"]
    masked = agent.mask_update(1, start.nonce, start.participants, np.zeros(16), 1)
    assert len(masked.pairwise_commitments) == 4
    assert len(masked.encrypted_shares) == 4


def test_graph_regular_and_symmetric() -> None:
    ids = party_ids(11)
    graph = neighbor_map("study", ids, 4)
    for party, adjacent in graph.items():
        assert len(adjacent) == 4
        assert party not in adjacent
        for peer in adjacent:
            assert party in graph[peer]


def test_graph_depends_on_study() -> None:
    ids = party_ids(11)
    assert neighbor_map("study-a", ids, 4) != neighbor_map("study-b", ids, 4)
    assert neighbor_map("study-a", ids, 4) == neighbor_map("study-a", ids[::-1], 4)


def test_graph_complete_by_default() -> None:
    ids = party_ids(5)
    graph = neighbor_map("study", ids, None)
    assert graph["hospital-00"] == frozenset(ids[1:])


def test_split_view_hub_lacks_shares() -> None:
    """A hub that shows the target as surviving to some parties and as dropped
    to the others obtains fewer than t shares of one of its secrets."""
    count = 5
    config = make_config(count)
    federation = Federation.build(config, count)
    parties = federation.setup()
    target = parties[0]
    others = parties[1:]
    start = federation.hub.begin_round(1)
    deltas = {party: np.full(16, 0.01) for party in parties}
    masked = federation.mask_all(start, deltas, dict.fromkeys(parties, 1))
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)
    # Each split starts from the agents' state after masking, as if the hub
    # had sent its two views in one round.
    states = {party: agent.to_bytes() for party, agent in federation.agents.items()}

    for split in range(count + 1):
        agents = {
            party: AgentSession.from_bytes(states[party], federation.identities[party])
            for party in parties
        }
        self_mask_shares = 0
        pairwise_shares = dict.fromkeys(others, 0)
        for position, party in enumerate(parties):
            request = requests[party]
            if position < split or party == target:
                response = json.loads(
                    agents[party].unmask(
                        1, request.nonce, parties, [], request.encrypted_shares
                    )
                )
                self_mask_shares += target in response["self_mask_shares"]
                continue
            response = json.loads(
                agents[party].unmask(
                    1, request.nonce, others, [target], request.encrypted_shares
                )
            )
            for peer, shares in response["pairwise_shares"].items():
                pairwise_shares[peer] += target in shares
        fewest_pairwise = min(pairwise_shares.values())
        assert self_mask_shares < config.threshold or (
            fewest_pairwise < config.threshold
        ), f"split {split}"


def sparse_federation() -> Federation:
    config = make_config(12, threshold=3, neighbors=4)
    federation = Federation.build(config, 12)
    federation.setup()
    return federation


def test_sparse_unmask_rejects_isolated_party() -> None:
    # Listing all neighbors of one party as dropped would leave its input
    # alone in its group, so the hub could unmask it.
    federation = sparse_federation()
    start = federation.hub.begin_round(1)
    deltas = {party: np.zeros(16) for party in start.participants}
    masked = federation.mask_all(start, deltas, dict.fromkeys(start.participants, 1))
    requests = federation.hub.collect_masked_inputs(1, start.nonce, masked)
    target = "hospital-00"
    isolating = sorted(federation.agents[target]._neighbors[target])
    survivors = [p for p in start.participants if p not in isolating]
    responder = survivors[-1]
    request = requests[responder]
    with pytest.raises(InsufficientSurvivorsError, match="group of 1 parties"):
        federation.agents[responder].unmask(
            1, request.nonce, survivors, isolating, request.encrypted_shares
        )


def test_sparse_hub_aborts_on_isolated_party() -> None:
    federation = sparse_federation()
    target = "hospital-00"
    isolating = tuple(sorted(federation.agents[target]._neighbors[target]))
    with pytest.raises(RoundAbortedError, match="group of 1 survivors"):
        run_round(federation, 1, 1, drop_before_input=isolating)


def test_smallest_component_counts_groups() -> None:
    neighbors = {
        "a": frozenset({"b"}),
        "b": frozenset({"a", "c"}),
        "c": frozenset({"b"}),
        "d": frozenset({"e"}),
        "e": frozenset({"d"}),
    }
    assert smallest_component(["a", "b", "c", "d", "e"], neighbors) == 2
    assert smallest_component(["a", "b", "c"], neighbors) == 3
    assert smallest_component(["a", "c"], neighbors) == 1


def test_hub_reports_last_survivors() -> None:
    federation = Federation.build(make_config(5), 5)
    parties = federation.setup()
    run_round(federation, 1, 1, drop_before_input=(parties[2],))
    assert federation.hub.survivors == [p for p in parties if p != parties[2]]
