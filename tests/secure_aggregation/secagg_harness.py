"""A loop-back harness that drives real AgentSession and HubSession objects."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_aggregation.protocol import (
    AgentSession,
    HubSession,
    MaskedInput,
    RoundStart,
    SecureAggregationConfig,
    UnmaskRequest,
)
from secure_aggregation.quantization import Quantizer

STUDY = "study-heart-1"


def party_ids(count: int) -> list[str]:
    return [f"hospital-{index:02d}" for index in range(count)]


def make_config(
    count: int, threshold: int | None = None, **overrides: object
) -> SecureAggregationConfig:
    values: dict[str, object] = {
        "threshold": count // 2 + 1 if threshold is None else threshold,
        "model_size": 16,
        "clipping_range": 1.0,
    }
    values.update(overrides)
    return SecureAggregationConfig.model_validate(values)


@dataclass
class Federation:
    """Agents and a hub with matching rosters, before any setup exchange."""

    config: SecureAggregationConfig
    identities: dict[str, Ed25519PrivateKey]
    agents: dict[str, AgentSession]
    hub: HubSession

    @classmethod
    def build(cls, config: SecureAggregationConfig, count: int) -> Federation:
        ids = party_ids(count)
        identities = {party: Ed25519PrivateKey.generate() for party in ids}
        roster = {
            party: key.public_key().public_bytes_raw()
            for party, key in identities.items()
        }
        agents = {
            party: AgentSession.create(STUDY, party, identities[party], roster, config)
            for party in ids
        }
        hub = HubSession(STUDY, ids, config)
        return cls(config, identities, agents, hub)

    def setup(
        self,
        skip_advertise: Collection[str] = (),
        skip_confirm: Collection[str] = (),
    ) -> list[str]:
        advertisements = {
            party: agent.advertise_keys()
            for party, agent in self.agents.items()
            if party not in skip_advertise
        }
        bundle = self.hub.collect_advertisements(advertisements)
        confirmations = {
            party: self.agents[party].confirm_keys(bundle)
            for party in advertisements
            if party not in skip_confirm
        }
        routed = self.hub.route_confirmations(confirmations)
        for party, data in routed.items():
            self.agents[party].receive_confirmations(data)
        return sorted(routed)

    def mask_all(
        self,
        start: RoundStart,
        deltas: Mapping[str, np.ndarray],
        weights: Mapping[str, int],
        skip: Collection[str] = (),
    ) -> dict[str, MaskedInput]:
        return {
            party: self.agents[party].mask_update(
                start.round_number,
                start.nonce,
                start.participants,
                deltas[party],
                weights[party],
            )
            for party in start.participants
            if party not in skip
        }

    def unmask_all(
        self,
        requests: Mapping[str, UnmaskRequest],
        skip: Collection[str] = (),
    ) -> dict[str, bytes]:
        return {
            party: self.agents[party].unmask(
                request.round_number,
                request.nonce,
                request.survivors,
                request.dropped,
                request.encrypted_shares,
            )
            for party, request in requests.items()
            if party not in skip
        }


def random_deltas(
    rng: np.random.Generator, parties: Collection[str], size: int, norm: float
) -> dict[str, np.ndarray]:
    """Deltas of L2 norm below ``norm``, so clipping leaves them unchanged."""
    deltas = {}
    for party in parties:
        delta = rng.normal(size=size)
        deltas[party] = delta / np.linalg.norm(delta) * norm * rng.uniform(0.1, 0.99)
    return deltas


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
