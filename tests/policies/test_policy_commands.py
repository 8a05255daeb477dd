"""The plan, budget and verify-ledger commands, run through a Typer app."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from policy_helpers import BUNDLED, dp
from typer.testing import CliRunner

from federation_hub import policy_commands
from policies.accounting import compute_epsilon
from policies.budget import hospital_budget, hub_budget
from policies.identity import save_public_key
from policies.ledger import Ledger
from policies.models import PolicyError, load_hospital_policy, parse_study_policy
from policies.planner import plan_study
from silo_agent import budget_command

STUDY = BUNDLED / "heart_disease_study.yaml"
NONCE = "0123456789abcdef0123456789abcdef"


def _app(*commands: tuple[str, Any]) -> typer.Typer:
    app = typer.Typer()
    for name, function in commands:
        app.command(name)(function)
    return app


HUB = _app(
    ("plan", policy_commands.plan),
    ("budget", policy_commands.budget),
    ("verify-ledger", policy_commands.verify_ledger),
)
AGENT = _app(
    ("budget", budget_command.budget),
    ("verify-ledger", budget_command.verify_ledger),
)


def _study_document(**changes: Any) -> dict[str, Any]:
    document = dict(yaml.safe_load(STUDY.read_text()))
    dp_section = dict(document["dp"])
    for key, value in changes.items():
        if key.startswith("dp."):
            dp_section[key[3:]] = value
        else:
            document[key] = value
    document["dp"] = dp_section
    return document


def test_plan_shows_noise_multiplier() -> None:
    result = CliRunner().invoke(HUB, ["plan", str(STUDY), "--json"])
    assert result.exit_code == 0
    document = json.loads(result.output)
    assert len(document["epsilon_by_round"]) == 15
    assert document["epsilon_by_round"][-1] <= 2.5


def test_plan_table_lists_hospitals() -> None:
    result = CliRunner().invoke(HUB, ["plan", str(STUDY)])
    assert result.exit_code == 0
    assert "switzerland" in result.output


def test_plan_unreachable_target_rejected(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study_document(**{"dp.target_epsilon": 1e-4})))
    result = CliRunner().invoke(HUB, ["plan", str(path)])
    assert result.exit_code == 2
    assert "no noise multiplier" in result.output


def test_plan_over_budget_rejected(tmp_path: Path) -> None:
    document = _study_document(
        **{"dp.target_epsilon": None, "dp.noise_multiplier": 0.6}
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(HUB, ["plan", str(path)])
    assert result.exit_code == 2
    assert "min_hospitals_per_round" in " ".join(result.output.split())


def test_plan_invalid_policy_rejected(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study_document(delta=2.0)))
    result = CliRunner().invoke(HUB, ["plan", str(path)])
    assert result.exit_code == 2
    assert "delta" in result.output


def test_plan_override_skips_hospital() -> None:
    document = _study_document(
        epsilon_budget={"default": 3.0, "overrides": {"va": 1.0}}
    )
    plan = plan_study(parse_study_policy(document))
    last = plan.last_round_within_budget["va"]
    assert plan.epsilon_by_round[last - 1] <= 1.0
    assert plan.epsilon_by_round[last] > 1.0


def test_plan_too_few_hospitals_raises() -> None:
    document = _study_document(
        epsilon_budget={
            "default": 3.0,
            "overrides": {h: 0.5 for h in ["va", "cleveland", "hungarian"]},
        }
    )
    with pytest.raises(PolicyError, match="round 1 "):
        plan_study(parse_study_policy(document))


def _hub_ledger(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "hub.db"
    parameters = dp(2.5, 0.2, 3)
    with Ledger.open(path, "hub", key) as ledger:
        for round_number in (1, 2):
            epsilon = compute_epsilon([parameters] * round_number, 1e-5, "rdp")
            ledger.record_spend(
                "heart-disease-demo",
                round_number,
                f"{NONCE}{round_number}",
                parameters,
                "rdp",
                1e-5,
                epsilon,
                hospital_id="va",
            )
    save_public_key(key.public_key(), tmp_path / "hub.pub")
    return path


def test_hub_budget_replays_spends(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = _hub_ledger(tmp_path, signing_key)
    result = CliRunner().invoke(
        HUB,
        [
            "budget",
            str(ledger),
            "--policy",
            str(STUDY),
            "--public-key",
            str(tmp_path / "hub.pub"),
            "--json",
        ],
    )
    assert result.exit_code == 0
    lines = {line["name"]: line for line in json.loads(result.output)["lines"]}
    expected = compute_epsilon([dp(2.5, 0.2, 3)] * 2, 1e-5, "rdp")
    assert lines["va"]["epsilon_spent"] == pytest.approx(expected)
    assert lines["va"]["epsilon_remaining"] == pytest.approx(3.0 - expected)
    assert lines["cleveland"]["rounds"] == 0


def test_agent_budget_shows_total(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "agent.db"
    with Ledger.open(path, "va", signing_key) as ledger:
        ledger.record_spend("s1", 1, NONCE, dp(2.5), "rdp", 1e-5, 0.5)
        ledger.record_spend("s2", 1, NONCE, dp(2.5), "rdp", 1e-5, 0.5)
    save_public_key(signing_key.public_key(), tmp_path / "va.pub")
    result = CliRunner().invoke(
        AGENT,
        [
            "budget",
            str(path),
            "--policy",
            str(BUNDLED / "hospital_va.yaml"),
            "--public-key",
            str(tmp_path / "va.pub"),
            "--json",
        ],
    )
    assert result.exit_code == 0
    document = json.loads(result.output)
    assert [line["name"] for line in document["lines"]] == ["s1", "s2"]
    assert document["total"]["rounds"] == 2


def test_verify_ledger_passes(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    ledger = _hub_ledger(tmp_path, signing_key)
    result = CliRunner().invoke(
        HUB, ["verify-ledger", str(ledger), "--public-key", str(tmp_path / "hub.pub")]
    )
    assert result.exit_code == 0
    assert "ledger verified" in result.output


def test_verify_ledger_names_deleted_entry(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = _hub_ledger(tmp_path, signing_key)
    connection = sqlite3.connect(ledger)
    with connection:
        connection.execute("DELETE FROM entries WHERE seq = 1")
    connection.close()
    result = CliRunner().invoke(
        AGENT,
        [
            "verify-ledger",
            str(ledger),
            "--public-key",
            str(tmp_path / "hub.pub"),
            "--json",
        ],
    )
    assert result.exit_code == 1
    document = json.loads(result.output)
    assert document["kind"] == "deleted"
    assert document["seq"] == 1


def test_budget_tampered_ledger_exits_1(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    ledger = _hub_ledger(tmp_path, signing_key)
    connection = sqlite3.connect(ledger)
    with connection:
        connection.execute("UPDATE entries SET signature = zeroblob(64) WHERE seq = 2")
    connection.close()
    result = CliRunner().invoke(
        HUB,
        [
            "budget",
            str(ledger),
            "--policy",
            str(STUDY),
            "--public-key",
            str(tmp_path / "hub.pub"),
        ],
    )
    assert result.exit_code == 1
    assert "entry 2 forged signature" in " ".join(result.output.split())


def test_budget_flags_stored_epsilon_mismatch(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "hub.db"
    with Ledger.open(path, "hub", signing_key) as ledger:
        ledger.record_spend(
            "heart-disease-demo", 1, NONCE, dp(2.5), "rdp", 1e-5, 0.01, hospital_id="va"
        )
    report = hub_budget(
        path, signing_key.public_key(), parse_study_policy(_study_document())
    )
    lines = {line.name: line for line in report.lines}
    assert not lines["va"].replay_matches
    assert lines["cleveland"].replay_matches


def test_mixed_accountants_take_larger_epsilon(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "agent.db"
    with Ledger.open(path, "va", signing_key) as ledger:
        ledger.record_spend("s1", 1, NONCE, dp(1.5), "rdp", 1e-5, 0.5)
        ledger.record_spend("s1", 2, NONCE, dp(1.5), "prv", 1e-3, 0.5)
    policy = load_hospital_policy(BUNDLED / "hospital_va.yaml")
    line = hospital_budget(path, signing_key.public_key(), policy).lines[0]
    history = [dp(1.5)] * 2
    assert line.delta == 1e-5
    assert line.epsilon_spent == max(
        compute_epsilon(history, 1e-5, "rdp"), compute_epsilon(history, 1e-5, "prv")
    )
