"""End-to-end studies on Flower's simulation engine with the real records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from federation_hub.config import load_hub_config
from federation_hub.demo import create_demo_federation
from federation_hub.report import REPORT_FILE
from federation_hub.simulation import run_simulation_study
from federation_hub.study import StudyResult
from policies.identity import load_private_key
from policies.ledger import Ledger
from policies.models import load_study_policy
from tests.federation.conftest import edit_yaml

HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]


def _two_rounds(document: dict[str, Any]) -> None:
    document["rounds"] = 2
    document["dp"].pop("target_epsilon", None)
    document["dp"]["noise_multiplier"] = 3.0


def _plain(document: dict[str, Any]) -> None:
    document["secure_aggregation"] = False


def _relax_hospitals(folder: Path) -> None:
    for hospital in HOSPITALS:

        def relax(policy: dict[str, Any]) -> None:
            policy["require_secure_aggregation"] = False

        edit_yaml(folder / "hospitals" / hospital / "policy.yaml", relax)


def _hospital_ledger(folder: Path, hospital: str) -> Ledger:
    key = load_private_key(folder / "hospitals" / hospital / "identity.key")
    return Ledger.open(
        folder / "hospitals" / hospital / "state" / "ledger.sqlite", hospital, key
    )


@pytest.fixture(scope="module")
def two_round_study(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, StudyResult]:
    """One two-round study of the four hospitals, shared by the tests below."""
    folder = create_demo_federation(tmp_path_factory.mktemp("study") / "federation")
    edit_yaml(folder / "study.yaml", _two_rounds)
    return folder, run_simulation_study(folder)


def test_study_two_rounds_real_records(
    two_round_study: tuple[Path, StudyResult],
) -> None:
    demo_federation, result = two_round_study

    assert len(result.rounds) == 2
    assert result.aggregation == "secure-aggregation+fedavg"
    for outcome in result.rounds:
        assert outcome.aborted == ""
        assert outcome.rejected == {}
        assert sorted(outcome.trained) == HOSPITALS
        assert sorted(outcome.metrics) == HOSPITALS
        assert 0.0 <= outcome.mean_accuracy <= 1.0
    report = json.loads(
        (load_hub_config(demo_federation).reports_dir / REPORT_FILE).read_text()
    )
    assert [row["hospital_id"] for row in report["budget"]] == HOSPITALS
    assert all(row["rounds_joined"] == 2 for row in report["budget"])


def test_epsilon_matches_opacus_accountant(
    two_round_study: tuple[Path, StudyResult],
) -> None:
    demo_federation, result = two_round_study
    policy = load_study_policy(demo_federation / "study.yaml")
    dp = policy.dp_parameters()

    # Opacus's own accountant, fed the same history of both rounds.
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, dp.sample_rate, dp.steps)] * 2
    expected = accountant.get_epsilon(delta=policy.delta)
    for row in result.budget:
        assert row["epsilon"] == pytest.approx(expected, rel=1e-12)
    for hospital in HOSPITALS:
        ledger = _hospital_ledger(demo_federation, hospital)
        spends = ledger.spends(policy.study_id)
        assert len(spends) == 2
        assert spends[-1].payload["epsilon_after"] == pytest.approx(expected, rel=1e-12)


def test_budget_exceeded_hospital_skipped(demo_federation: Path) -> None:
    # Find the epsilon of one round, then give va a budget between one and two rounds.
    edit_yaml(demo_federation / "study.yaml", _two_rounds)
    policy = load_study_policy(demo_federation / "study.yaml")
    dp = policy.dp_parameters()
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, dp.sample_rate, dp.steps)]
    one_round = accountant.get_epsilon(delta=policy.delta)
    accountant.history = [(dp.noise_multiplier, dp.sample_rate, dp.steps)] * 2
    two_rounds = accountant.get_epsilon(delta=policy.delta)
    budget = (one_round + two_rounds) / 2

    def va_budget(document: dict[str, Any]) -> None:
        document["epsilon_budget"]["overrides"] = {"va": budget}

    edit_yaml(demo_federation / "study.yaml", va_budget)
    edit_yaml(demo_federation / "study.yaml", _plain)
    _relax_hospitals(demo_federation)

    result = run_simulation_study(demo_federation)

    assert result.aggregation == "fedavg"
    assert "va" in result.rounds[0].trained
    assert "va" not in result.rounds[1].trained
    assert "va" in result.rounds[1].skipped
    assert "budget" in result.rounds[1].skipped["va"]
    ledger = _hospital_ledger(demo_federation, "va")
    assert len(ledger.spends(policy.study_id)) == 1
    va_row = next(row for row in result.budget if row["hospital_id"] == "va")
    assert va_row["rounds_joined"] == 1
    assert va_row["epsilon"] <= budget


def test_study_stops_when_all_reject(demo_federation: Path) -> None:
    edit_yaml(demo_federation / "study.yaml", _two_rounds)
    for hospital in HOSPITALS:

        def demand_more_noise(policy: dict[str, Any]) -> None:
            policy["min_noise_multiplier"] = 10.0

        edit_yaml(
            demo_federation / "hospitals" / hospital / "policy.yaml", demand_more_noise
        )

    result = run_simulation_study(demo_federation)

    assert len(result.rounds) == 1
    assert result.rounds[0].trained == []
    assert sorted(result.rounds[0].rejected) == HOSPITALS
    assert "only 0 hospitals trained" in result.stop_reason
    assert "min_noise_multiplier" in result.stop_reason
    for hospital in HOSPITALS:
        assert _hospital_ledger(demo_federation, hospital).spends() == []
    assert all(row["epsilon"] == 0.0 for row in result.budget)
