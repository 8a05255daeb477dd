"""The hub's receipt check when it counted a round a hospital never trained."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from federation_hub.config import load_hub_config
from federation_hub.study import StudyRunner
from policies.accounting import compute_epsilon
from policies.enforcement import RoundInstruction
from policies.identity import load_private_key
from policies.receipts import sign_receipt


def _instruction(runner: StudyRunner, round_number: int) -> RoundInstruction:
    return RoundInstruction(
        study_id=runner.policy.study_id,
        round=round_number,
        nonce=f"{round_number:032d}",
        schema_hash=runner.schema.content_hash,
        accountant=runner.policy.accountant,
        delta=runner.policy.delta,
        dp=runner.dp,
        secure_aggregation=True,
    )


def _receipt(
    folder: Path, runner: StudyRunner, round_number: int, epsilon: float
) -> ConfigRecord:
    key = load_private_key(folder / "hospitals" / "va" / "identity.key")
    instruction = _instruction(runner, round_number)
    receipt = sign_receipt(
        key,
        study_id=instruction.study_id,
        round=instruction.round,
        nonce=instruction.nonce,
        hospital_id="va",
        dp=instruction.dp,
        accountant=instruction.accountant,
        delta=instruction.delta,
        epsilon_after=epsilon,
        ledger_head_hash="0" * 64,
    )
    return ConfigRecord({"receipt": receipt.model_dump_json().encode("utf-8")})


@pytest.fixture
def runner_with_unconfirmed_round(demo_federation: Path) -> StudyRunner:
    """A hub that confirmed va's round 1 and counted round 2 without an answer."""
    runner = StudyRunner(None, load_hub_config(demo_federation))  # type: ignore[arg-type]
    histories: dict[str, list] = {}
    runner._record_spend("va", _instruction(runner, 1), histories, confirmed=True)
    histories = runner.histories()
    runner._record_spend("va", _instruction(runner, 2), histories, confirmed=False)
    return runner


def test_receipt_without_unconfirmed_round_accepted(
    demo_federation: Path, runner_with_unconfirmed_round: StudyRunner
) -> None:
    runner = runner_with_unconfirmed_round
    instruction = _instruction(runner, 3)
    hub_epsilon = runner._record_spend(
        "va", instruction, runner.histories(), confirmed=True
    )
    agent_epsilon = compute_epsilon(
        [runner.dp] * 2, runner.policy.delta, runner.policy.accountant
    )
    assert agent_epsilon < hub_epsilon

    problem = runner._check_receipt(
        "va",
        instruction,
        _receipt(demo_federation, runner, 3, agent_epsilon),
        hub_epsilon,
    )

    assert problem == ""


def test_receipt_above_hub_epsilon_flagged(
    demo_federation: Path, runner_with_unconfirmed_round: StudyRunner
) -> None:
    runner = runner_with_unconfirmed_round
    instruction = _instruction(runner, 3)
    hub_epsilon = runner._record_spend(
        "va", instruction, runner.histories(), confirmed=True
    )
    too_high = compute_epsilon(
        [runner.dp] * 4, runner.policy.delta, runner.policy.accountant
    )

    problem = runner._check_receipt(
        "va", instruction, _receipt(demo_federation, runner, 3, too_high), hub_epsilon
    )

    assert "epsilon" in problem


def test_receipt_below_confirmed_rounds_flagged(
    demo_federation: Path, runner_with_unconfirmed_round: StudyRunner
) -> None:
    runner = runner_with_unconfirmed_round
    instruction = _instruction(runner, 3)
    hub_epsilon = runner._record_spend(
        "va", instruction, runner.histories(), confirmed=True
    )
    too_low = compute_epsilon(
        [runner.dp], runner.policy.delta, runner.policy.accountant
    )

    problem = runner._check_receipt(
        "va", instruction, _receipt(demo_federation, runner, 3, too_low), hub_epsilon
    )

    assert "epsilon" in problem
