"""The hub's replay of spends from its ledger around crashed round attempts."""

from __future__ import annotations

from pathlib import Path

from federation_hub.config import load_hub_config
from federation_hub.study import StudyRunner
from policies.enforcement import RoundInstruction


def _runner(folder: Path) -> StudyRunner:
    return StudyRunner(None, load_hub_config(folder))  # type: ignore[arg-type]


def _instruct(runner: StudyRunner, round_number: int, nonce: str) -> RoundInstruction:
    hospitals = list(runner.policy.hospitals)
    runner.ledger.append(
        "round_instructed",
        {
            "study_id": runner.policy.study_id,
            "round": round_number,
            "hospitals": hospitals,
            "nonces": dict.fromkeys(hospitals, nonce),
            "dp": runner.dp.model_dump(),
            "skipped": {},
        },
    )
    return RoundInstruction(
        study_id=runner.policy.study_id,
        round=round_number,
        nonce=nonce,
        schema_hash=runner.schema.content_hash,
        accountant=runner.policy.accountant,
        delta=runner.policy.delta,
        dp=runner.dp,
        secure_aggregation=True,
    )


def _complete(runner: StudyRunner, round_number: int) -> None:
    runner.ledger.append(
        "round_completed", {"study_id": runner.policy.study_id, "round": round_number}
    )


def test_crashed_attempt_still_counted(demo_federation: Path) -> None:
    runner = _runner(demo_federation)
    _instruct(runner, 1, "a" * 32)  # the hub died before any reply
    retry = _instruct(runner, 1, "b" * 32)
    for hospital in runner.policy.hospitals:
        runner._record_spend(hospital, retry, runner.histories(), confirmed=True)
    _complete(runner, 1)

    histories = runner.histories()

    for hospital in runner.policy.hospitals:
        assert len(histories[hospital]) == 2, hospital


def test_rejected_attempt_not_counted(demo_federation: Path) -> None:
    runner = _runner(demo_federation)
    instruction = _instruct(runner, 1, "c" * 32)
    runner.ledger.append(
        "rejection",
        {
            "study_id": runner.policy.study_id,
            "round": 1,
            "nonce": instruction.nonce,
            "hospital_id": "va",
            "reason": "max_rounds",
        },
    )

    histories = runner.histories()

    assert histories["va"] == []
    assert len(histories["cleveland"]) == 1


def test_completed_round_counts_spends_only(demo_federation: Path) -> None:
    runner = _runner(demo_federation)
    instruction = _instruct(runner, 1, "d" * 32)
    runner._record_spend("cleveland", instruction, runner.histories(), confirmed=True)
    _complete(runner, 1)

    histories = runner.histories()

    assert len(histories["cleveland"]) == 1
    assert histories["va"] == []
