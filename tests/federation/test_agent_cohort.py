"""The agent trains only on accepted rows, and every row is accounted for."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest

from silo_agent.agent import SiloAgent
from silo_agent.config import load_agent_config
from tests.federation.conftest import edit_yaml

MALFORMED_ROW = "63.0,1.0,9.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"


def test_agent_quarantines_malformed_row(demo_federation: Path, tmp_path: Path) -> None:
    config_path = demo_federation / "hospitals" / "cleveland" / "agent.yaml"
    original = Path(load_agent_config(config_path).data)
    records = tmp_path / "cleveland.data"
    shutil.copyfile(original, records)
    with records.open("a", encoding="ascii") as handle:
        handle.write(MALFORMED_ROW)
    before = records.read_bytes()

    def point_at_copy(document: dict[str, Any]) -> None:
        document["data"] = str(records)

    edit_yaml(config_path, point_at_copy)

    agent = SiloAgent(load_agent_config(config_path))

    cohort = agent.cohort
    assert cohort.total_rows == 304
    assert cohort.quarantined_rows == 1
    assert len(cohort.train_labels) + len(cohort.test_labels) == 303
    with agent.config.quarantine_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["line"] == "304"
    assert "cp" in rows[0]["reasons"]
    assert rows[0]["row"] == MALFORMED_ROW.rstrip("\n")
    assert records.read_bytes() == before


def test_agent_split_fixed_across_restarts(demo_federation: Path) -> None:
    config = load_agent_config(demo_federation / "hospitals" / "va" / "agent.yaml")

    first = SiloAgent(config).cohort
    second = SiloAgent(config).cohort

    assert (first.test_features == second.test_features).all()
    assert (first.test_labels == second.test_labels).all()
    assert len(first.test_labels) + len(first.train_labels) == 199


def test_spend_status_voids_unspent_nonce(demo_federation: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from policies.architecture import initial_parameters
    from policies.enforcement import InstructionRejected, RoundInstruction
    from policies.models import load_study_policy
    from policies.roster import spend_status_message

    config = load_agent_config(demo_federation / "hospitals" / "va" / "agent.yaml")
    agent = SiloAgent(config)
    policy = load_study_policy(demo_federation / "study.yaml")

    spent, signature = agent.spend_status(policy.study_id, ["e" * 32])

    assert spent == []
    public_key = load_pem_public_key(
        (demo_federation / "hospitals" / "va" / "identity.pub").read_bytes()
    )
    public_key.verify(  # type: ignore[union-attr,call-arg]
        signature, spend_status_message(policy.study_id, "va", ["e" * 32], [])
    )
    late = RoundInstruction(
        study_id=policy.study_id,
        round=1,
        nonce="e" * 32,
        schema_hash=agent.schema.content_hash,
        accountant=policy.accountant,
        delta=policy.delta,
        dp=policy.dp_parameters(),
        secure_aggregation=False,
    )
    training = policy.training
    parameters = initial_parameters(
        training.model, len(agent.encoder.feature_names), training.hidden_units, 0
    )
    with pytest.raises(InstructionRejected, match="void"):
        agent.train(late, training, parameters)
    assert agent.ledger.spends() == []
