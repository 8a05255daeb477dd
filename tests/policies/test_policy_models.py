"""Loading of study and hospital policies: bundled files and fail-closed checks."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_helpers import BUNDLED

from policies.accounting import compute_epsilon
from policies.models import (
    DPParameters,
    PolicyError,
    load_hospital_policy,
    load_study_policy,
    parse_hospital_policy,
    parse_study_policy,
)

HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]
# Training split of the smallest cohort (switzerland): 123 rows, about 80% train.
SMALLEST_TRAINING_SPLIT = 80


def _study_document() -> dict[str, Any]:
    text = (BUNDLED / "heart_disease_study.yaml").read_text()
    return dict(yaml.safe_load(text))


def _hospital_document() -> dict[str, Any]:
    text = (BUNDLED / "hospital_cleveland.yaml").read_text()
    return dict(yaml.safe_load(text))


def _set(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node = changed
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return changed


def test_bundled_study_loads() -> None:
    study = load_study_policy(BUNDLED / "heart_disease_study.yaml")
    assert list(study.hospitals) == HOSPITALS


def test_bundled_study_budget_at_most_3() -> None:
    study = load_study_policy(BUNDLED / "heart_disease_study.yaml")
    for hospital in HOSPITALS:
        assert study.epsilon_budget_for(hospital) <= 3.0


def test_bundled_study_delta_below_one_over_n() -> None:
    study = load_study_policy(BUNDLED / "heart_disease_study.yaml")
    assert study.delta < 1 / SMALLEST_TRAINING_SPLIT


def test_bundled_study_plan_meets_target() -> None:
    study = load_study_policy(BUNDLED / "heart_disease_study.yaml")
    dp = study.dp_parameters()
    epsilon = compute_epsilon([dp] * study.rounds, study.delta, study.accountant)
    assert study.dp.target_epsilon is not None
    assert epsilon <= study.dp.target_epsilon


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_bundled_hospital_loads(hospital: str) -> None:
    policy = load_hospital_policy(BUNDLED / f"hospital_{hospital}.yaml")
    assert policy.hospital_id == hospital


def test_switzerland_is_stricter() -> None:
    strict = load_hospital_policy(BUNDLED / "hospital_switzerland.yaml")
    other = load_hospital_policy(BUNDLED / "hospital_cleveland.yaml")
    assert strict.max_epsilon_per_study < other.max_epsilon_per_study


def test_explicit_noise_multiplier_used() -> None:
    document = _set(_study_document(), "dp.target_epsilon", None)
    document = _set(document, "dp.noise_multiplier", 1.7)
    assert parse_study_policy(document).dp_parameters() == DPParameters(
        noise_multiplier=1.7, sample_rate=0.2, steps=3, max_grad_norm=1.0
    )


def test_budget_override_applies() -> None:
    document = _set(_study_document(), "epsilon_budget.overrides", {"va": 1.0})
    assert parse_study_policy(document).epsilon_budget_for("va") == 1.0


def test_unknown_hospital_budget_raises() -> None:
    study = parse_study_policy(_study_document())
    with pytest.raises(PolicyError, match="not in study"):
        study.epsilon_budget_for("boston")


BAD_STUDY_VALUES = [
    ("delta", math.nan),
    ("delta", math.inf),
    ("delta", -1e-5),
    ("delta", 0.0),
    ("delta", 1.0),
    ("delta", "nan"),
    ("rounds", 0),
    ("rounds", -3),
    ("rounds", 2.5),
    ("rounds", True),
    ("accountant", "gdp"),
    ("min_hospitals_per_round", 5),
    ("epsilon_budget.default", math.nan),
    ("epsilon_budget.default", -1.0),
    ("epsilon_budget.default", 0.0),
    ("epsilon_budget.default", 1e9),
    ("epsilon_budget.overrides", {"va": math.inf}),
    ("epsilon_budget.overrides", {"boston": 1.0}),
    ("dp.sample_rate", math.nan),
    ("dp.sample_rate", 0.0),
    ("dp.sample_rate", 1.5),
    ("dp.sample_rate", -0.1),
    ("dp.steps", 0),
    ("dp.max_grad_norm", math.inf),
    ("dp.max_grad_norm", 0.0),
    ("dp.target_epsilon", math.nan),
    ("dp.target_epsilon", -2.0),
    ("dp.noise_multiplier", 1.0),
    ("training.learning_rate", math.nan),
    ("training.update_clip_norm", -1.0),
    ("hospitals", ["va", "va"]),
    ("extra_key", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_STUDY_VALUES)
def test_study_bad_value_raises(field: str, value: Any) -> None:
    with pytest.raises(PolicyError):
        parse_study_policy(_set(_study_document(), field, value))


def test_study_noise_and_target_missing_raises() -> None:
    document = _set(_study_document(), "dp.target_epsilon", None)
    with pytest.raises(PolicyError, match="exactly one"):
        parse_study_policy(document)


def test_study_error_names_field_and_value() -> None:
    document = _set(_study_document(), "dp.sample_rate", 1.5)
    with pytest.raises(PolicyError) as raised:
        parse_study_policy(document, "study.yaml")
    assert "dp.sample_rate" in str(raised.value)
    assert "1.5" in str(raised.value)


BAD_HOSPITAL_VALUES = [
    ("max_epsilon_per_study", math.nan),
    ("max_epsilon_per_study", -1.0),
    ("max_epsilon_per_study", 7.0),
    ("max_epsilon_total", math.inf),
    ("min_noise_multiplier", 0.0),
    ("min_noise_multiplier", math.nan),
    ("max_sample_rate", 2.0),
    ("max_sample_rate", -0.5),
    ("max_max_grad_norm", math.inf),
    ("max_rounds", 0),
    ("max_delta", 0.0),
    ("max_delta", math.nan),
    ("max_delta", 1.5),
    ("total_delta", 1e-3),
    ("accepted_accountants", []),
    ("accepted_accountants", ["gdp"]),
    ("require_secure_aggregation", "yes"),
]


@pytest.mark.parametrize(("field", "value"), BAD_HOSPITAL_VALUES)
def test_hospital_bad_value_raises(field: str, value: Any) -> None:
    with pytest.raises(PolicyError):
        parse_hospital_policy(_set(_hospital_document(), field, value))


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "-1.0e-5"])
def test_yaml_special_float_raises(tmp_path: Path, text: str) -> None:
    source = (BUNDLED / "heart_disease_study.yaml").read_text()
    path = tmp_path / "study.yaml"
    path.write_text(source.replace("delta: 1.0e-5", f"delta: {text}"))
    with pytest.raises(PolicyError):
        load_study_policy(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_study_policy(tmp_path / "absent.yaml")


def test_non_mapping_yaml_raises(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_hospital_policy(path)


def test_unreachable_target_raises() -> None:
    document = _set(_study_document(), "dp.target_epsilon", 1e-6)
    study = parse_study_policy(document)
    with pytest.raises(PolicyError, match="no noise multiplier"):
        study.dp_parameters()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_multiplier", math.nan),
        ("noise_multiplier", 0.0),
        ("sample_rate", math.inf),
        ("sample_rate", 1.01),
        ("steps", 0),
        ("max_grad_norm", -1.0),
    ],
)
def test_dp_parameters_bad_value_raises(field: str, value: Any) -> None:
    values: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 1,
        "max_grad_norm": 1.0,
    }
    values[field] = value
    with pytest.raises(ValueError):
        DPParameters(**values)
