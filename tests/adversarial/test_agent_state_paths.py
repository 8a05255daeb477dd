"""A malicious hub against the files the agent writes from message fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_harness import HOSPITALS, build_agent, client_handler, node_id_of
from flwr.app import ConfigRecord, Message, RecordDict

from federation_hub.secure_rounds import secure_aggregation_config
from policies import wire
from policies.models import load_study_policy


def _advertise(federation: Path, study_id: str) -> ConfigRecord:
    """Send va a key-setup request for ``study_id``; return its result record."""
    training = load_study_policy(federation / "study.yaml").training
    model_size = build_agent(federation, "va").model_size(training)
    config = secure_aggregation_config(list(HOSPITALS), model_size, training)
    fields = {
        "study_id": study_id,
        "parties": list(HOSPITALS),
        **{k: v for k, v in config.model_dump().items() if v is not None},
    }
    message = Message(
        RecordDict(
            {
                wire.SECAGG: ConfigRecord(fields),
                wire.TRAINING: ConfigRecord(wire.encode_training(training)),
            }
        ),
        dst_node_id=node_id_of("va"),
        message_type=wire.SECAGG_ADVERTISE,
    )
    reply = client_handler(federation, "va")(message)
    return reply.content.config_records[wire.RESULT]


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_advertise_study_id_path_rejected(
    federation: Path, tmp_path: Path, absolute: bool
) -> None:
    # The agent's session folder is hospitals/va/state/secure-aggregation.
    target = tmp_path / "escaped" if absolute else federation / "hospitals" / "escaped"
    study_id = str(target) if absolute else "../../../escaped"

    result = _advertise(federation, study_id)

    assert result["status"] == "rejected"
    assert not target.with_suffix(".json").exists()


def test_advertise_demo_study_accepted(federation: Path) -> None:
    result = _advertise(federation, "heart-disease-demo")

    assert result["status"] == "ok"
