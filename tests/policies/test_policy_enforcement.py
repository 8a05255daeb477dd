"""Agent-side veto (check_instruction) and hub-side selection (select_hospitals)."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
from policy_helpers import BUNDLED, dp

from policies.accounting import compute_epsilon
from policies.enforcement import (
    InstructionRejected,
    RoundInstruction,
    StudyStopped,
    check_instruction,
    select_hospitals,
)
from policies.models import (
    DPParameters,
    HospitalPolicy,
    StudyPolicy,
    load_hospital_policy,
    load_study_policy,
)

NONCE = "0123456789abcdef0123456789abcdef"
COHORT = 240


def _policy(**changes: Any) -> HospitalPolicy:
    base = load_hospital_policy(BUNDLED / "hospital_cleveland.yaml")
    return HospitalPolicy.model_validate({**base.model_dump(), **changes})


def _instruction(**changes: Any) -> RoundInstruction:
    values: dict[str, Any] = {
        "study_id": "heart-disease-demo",
        "round": 1,
        "nonce": NONCE,
        "schema_hash": "sha256:abc",
        "accountant": "rdp",
        "delta": 1e-5,
        "dp": dp(2.0, 0.2, 3),
        "secure_aggregation": True,
    }
    values.update(changes)
    return RoundInstruction(**values)


def test_accepted_returns_epsilon_after() -> None:
    epsilon = check_instruction(_policy(), _instruction(), [], [], COHORT)
    assert epsilon == compute_epsilon([dp(2.0, 0.2, 3)], 1e-5, "rdp")


# (limit, policy changes, instruction changes, requested value, limit value)
VETOES = [
    ("min_noise_multiplier", {"min_noise_multiplier": 2.5}, {}, "2.0", "2.5"),
    ("max_sample_rate", {"max_sample_rate": 0.1}, {}, "0.2", "0.1"),
    ("max_max_grad_norm", {"max_max_grad_norm": 0.5}, {}, "1.0", "0.5"),
    ("max_steps_per_round", {"max_steps_per_round": 2}, {}, "3", "2"),
    (
        "max_delta",
        {"max_delta": 1e-6, "total_delta": None},
        {},
        "1e-05",
        "1e-06",
    ),
    (
        "accepted_accountants",
        {"accepted_accountants": ("rdp",)},
        {"accountant": "prv"},
        "prv",
        "rdp",
    ),
    (
        "require_secure_aggregation",
        {},
        {"secure_aggregation": False},
        "disables",
        "requires",
    ),
]


@pytest.mark.parametrize(
    ("limit", "policy_changes", "instruction_changes", "requested", "allowed"), VETOES
)
def test_limit_rejected_with_reason(
    limit: str,
    policy_changes: dict[str, Any],
    instruction_changes: dict[str, Any],
    requested: str,
    allowed: str,
) -> None:
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(
            _policy(**policy_changes),
            _instruction(**instruction_changes),
            [],
            [],
            COHORT,
        )
    assert raised.value.limit == limit
    assert limit in raised.value.reason
    assert requested in raised.value.reason
    assert allowed in raised.value.reason


def test_max_rounds_rejected() -> None:
    history = [dp(2.0, 0.2, 3)] * 2
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(
            _policy(max_rounds=2), _instruction(round=3), history, history, COHORT
        )
    assert raised.value.limit == "max_rounds"


def test_delta_not_below_one_over_n_rejected() -> None:
    policy = _policy(max_delta=0.5)
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(policy, _instruction(delta=0.02), [], [], 50)
    assert raised.value.limit == "delta_below_1_over_n"
    assert "1/50" in raised.value.reason


def test_study_epsilon_rejected() -> None:
    history = [dp(2.0, 0.2, 3)] * 40
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(
            _policy(max_rounds=100), _instruction(round=41), history, history, COHORT
        )
    assert raised.value.limit == "max_epsilon_per_study"
    assert "3.0" in raised.value.reason


def test_accounting_failure_rejected() -> None:
    policy = _policy(max_delta=1e-4, total_delta=1e-300, total_accountant="prv")
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(policy, _instruction(), [], [], COHORT)
    assert raised.value.limit == "accounting"


def test_total_epsilon_rejected() -> None:
    other_studies = [dp(1.0, 0.3, 10)] * 5
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(_policy(), _instruction(), [], other_studies, COHORT)
    assert raised.value.limit == "max_epsilon_total"


def test_pinned_schema_mismatch_rejected() -> None:
    with pytest.raises(InstructionRejected) as raised:
        check_instruction(
            _policy(), _instruction(), [], [], COHORT, pinned_schema_hash="sha256:def"
        )
    assert raised.value.limit == "schema_hash"


@pytest.mark.parametrize("cohort", [0, -5, True, 2.5])
def test_bad_cohort_size_rejected(cohort: Any) -> None:
    with pytest.raises(InstructionRejected):
        check_instruction(_policy(), _instruction(), [], [], cohort)


def test_unvalidated_instruction_rejected() -> None:
    # model_construct() skips validation, as a hostile caller could.
    forged = RoundInstruction.model_construct(
        **{**_instruction().__dict__, "delta": math.nan}
    )
    with pytest.raises(InstructionRejected):
        check_instruction(_policy(), forged, [], [], COHORT)


def test_instruction_config_round_trip() -> None:
    instruction = _instruction()
    assert RoundInstruction.from_config(instruction.to_config()) == instruction


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dp.noise_multiplier", math.nan),
        ("dp.noise_multiplier", -1.0),
        ("dp.sample_rate", math.inf),
        ("dp.sample_rate", 1.5),
        ("dp.steps", 0),
        ("delta", math.nan),
        ("delta", 0.0),
        ("round", 0),
        ("nonce", "short"),
        ("accountant", "gdp"),
    ],
)
def test_instruction_bad_value_rejected(key: str, value: Any) -> None:
    config = {**_instruction().to_config(), key: value}
    with pytest.raises(InstructionRejected):
        RoundInstruction.from_config(config)


def test_instruction_missing_field_rejected() -> None:
    config = _instruction().to_config()
    del config["dp.steps"]
    with pytest.raises(InstructionRejected):
        RoundInstruction.from_config(config)


def test_rejection_leaves_history_unchanged() -> None:
    history: list[DPParameters] = [dp(2.0, 0.2, 3)]
    with pytest.raises(InstructionRejected):
        check_instruction(
            _policy(max_rounds=1), _instruction(round=2), history, history, COHORT
        )
    assert history == [dp(2.0, 0.2, 3)]


def test_bundled_switzerland_vetoes_demo_plan() -> None:
    study = _study()
    policy = load_hospital_policy(BUNDLED / "hospital_switzerland.yaml")
    plan = study.dp_parameters()
    history: list[DPParameters] = []
    rejection = None
    for round_number in range(1, study.rounds + 1):
        instruction = _instruction(
            round=round_number, dp=plan, delta=study.delta, accountant=study.accountant
        )
        try:
            check_instruction(policy, instruction, history, history, 98)
        except InstructionRejected as error:
            rejection = error
            break
        history.append(plan)
    assert rejection is not None
    assert rejection.limit == "max_epsilon_per_study"
    assert 1 < len(history) < study.rounds


@functools.cache
def _study() -> StudyPolicy:
    # Cached: planning the noise multiplier runs a binary search.
    return load_study_policy(BUNDLED / "heart_disease_study.yaml")


def test_select_all_fresh_hospitals() -> None:
    study = _study()
    selection = select_hospitals(study, {}, list(study.hospitals))
    assert selection.selected == list(study.hospitals)


def test_select_skips_over_budget() -> None:
    study = _study()
    spent = [study.dp_parameters()] * (study.rounds - 1)
    low_budget = study.model_copy(
        update={
            "epsilon_budget": study.epsilon_budget.model_copy(
                update={"overrides": {"va": 1.0}}
            )
        }
    )
    selection = select_hospitals(low_budget, {"va": spent}, list(study.hospitals))
    assert "va" not in selection.selected
    assert "above its budget" in selection.skipped["va"]


def test_select_skips_finished_hospital() -> None:
    study = _study()
    spent = [study.dp_parameters()] * study.rounds
    selection = select_hospitals(study, {"va": spent}, list(study.hospitals))
    assert "all 15 planned rounds" in selection.skipped["va"]


def test_select_skips_unknown_hospital() -> None:
    study = _study()
    selection = select_hospitals(study, {}, ["va", "cleveland", "boston"])
    assert selection.skipped["boston"] == "not a hospital of this study"


def test_select_epsilon_after_matches_accountant() -> None:
    study = _study()
    selection = select_hospitals(study, {}, ["va", "cleveland"])
    expected = compute_epsilon([study.dp_parameters()], study.delta, study.accountant)
    assert selection.epsilon_after["va"] == expected


def test_select_stops_below_minimum() -> None:
    study = _study()
    spent = [study.dp_parameters()] * study.rounds
    histories = {"va": spent, "cleveland": spent, "hungarian": spent}
    with pytest.raises(StudyStopped) as raised:
        select_hospitals(study, histories, list(study.hospitals))
    assert "min_hospitals_per_round=2" in raised.value.reason
