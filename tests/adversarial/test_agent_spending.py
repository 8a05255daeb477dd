"""A malicious hub against a real agent's budget: retries, replays, reused rounds."""

from __future__ import annotations

import numpy as np
import pytest
from attack_harness import HOSPITALS, SecureFederation

from policies.enforcement import InstructionRejected
from secure_aggregation.errors import (
    PartyListMismatchError,
    ReplayError,
    StaleRoundError,
)

NONCE_A = "a1" * 32
NONCE_B = "b2" * 32
OTHERS = [h for h in HOSPITALS if h != "va"]


def _parameters(federation: SecureFederation) -> dict[str, np.ndarray]:
    from policies.architecture import initial_parameters

    training = federation.training
    return initial_parameters(
        training.model,
        federation.runner.num_features,
        training.hidden_units,
        training.seed,
    )


def test_retry_with_other_dp_rejected(secure_federation: SecureFederation) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    parameters = _parameters(federation)

    # The first attempt passes the policy check and is written to the ledger,
    # then fails at masking because the participant list omits va.
    with pytest.raises(PartyListMismatchError):
        agent.train(
            federation.instruction(1, NONCE_A),
            federation.training,
            parameters,
            federation.secure_round("va", OTHERS),
        )

    # The retry keeps round and nonce but asks for a tenth of the minimum noise.
    too_little_noise = federation.instruction(
        1, NONCE_A, noise_multiplier=agent.policy.min_noise_multiplier / 10
    )
    with pytest.raises(InstructionRejected):
        agent.train(
            too_little_noise,
            federation.training,
            parameters,
            federation.secure_round("va", HOSPITALS),
        )


def test_retry_spends_once_in_ledger(secure_federation: SecureFederation) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    parameters = _parameters(federation)
    with pytest.raises(PartyListMismatchError):
        agent.train(
            federation.instruction(1, NONCE_A),
            federation.training,
            parameters,
            federation.secure_round("va", OTHERS),
        )

    agent.train(
        federation.instruction(1, NONCE_A),
        federation.training,
        parameters,
        federation.secure_round("va", HOSPITALS),
    )

    assert len(agent.ledger.spends(federation.study_id)) == 1


def test_replayed_round_resends_same_update(
    secure_federation: SecureFederation,
) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    parameters = _parameters(federation)
    first = agent.train(
        federation.instruction(1, NONCE_A),
        federation.training,
        parameters,
        federation.secure_round("va", HOSPITALS),
    )

    # A replay with another participant list must not mask the update again.
    replay = agent.train(
        federation.instruction(1, NONCE_A),
        federation.training,
        parameters,
        federation.secure_round("va", ["va", "cleveland", "hungarian"]),
    )

    assert first.masked_vector is not None
    assert replay.masked_vector is not None
    assert np.array_equal(first.masked_vector, replay.masked_vector)
    assert len(agent.ledger.spends(federation.study_id)) == 1


def test_same_round_new_nonce_not_masked(
    secure_federation: SecureFederation,
) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    parameters = _parameters(federation)
    agent.train(
        federation.instruction(1, NONCE_A),
        federation.training,
        parameters,
        federation.secure_round("va", HOSPITALS),
    )

    with pytest.raises(StaleRoundError):
        agent.train(
            federation.instruction(1, NONCE_B),
            federation.training,
            parameters,
            federation.secure_round("va", HOSPITALS),
        )


def test_reused_nonce_next_round_rejected(
    secure_federation: SecureFederation,
) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    parameters = _parameters(federation)
    agent.train(
        federation.instruction(1, NONCE_A),
        federation.training,
        parameters,
        federation.secure_round("va", HOSPITALS),
    )

    with pytest.raises(ReplayError):
        agent.train(
            federation.instruction(2, NONCE_A),
            federation.training,
            parameters,
            federation.secure_round("va", HOSPITALS),
        )


def test_policy_limit_rejected_before_spend(
    secure_federation: SecureFederation,
) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    too_many_steps = federation.instruction(
        1, NONCE_A, steps=agent.policy.max_steps_per_round + 1
    )

    with pytest.raises(InstructionRejected):
        agent.train(
            too_many_steps,
            federation.training,
            _parameters(federation),
            federation.secure_round("va", HOSPITALS),
        )

    assert agent.ledger.spends(federation.study_id) == []


def test_unknown_study_rejected_before_spend(
    secure_federation: SecureFederation,
) -> None:
    federation = secure_federation
    agent = federation.agents["va"]
    other_study = federation.instruction(1, NONCE_A).model_copy(
        update={"study_id": "another-study"}
    )

    with pytest.raises(InstructionRejected):
        agent.train(
            other_study,
            federation.training,
            _parameters(federation),
            federation.secure_round("va", HOSPITALS),
        )

    assert agent.ledger.spends("another-study") == []
