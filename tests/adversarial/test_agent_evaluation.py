"""A malicious hub against a real agent's evaluation handler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from attack_harness import build_agent, client_handler, node_id_of
from flwr.app import ConfigRecord, Message, RecordDict

from policies import wire
from policies.models import load_study_policy
from silo_agent.client_app import record_from_parameters


def _evaluate_constant_model(federation: Path, bias: float) -> dict[str, float]:
    """Ask va's ClientApp to evaluate a model with zero weights and ``bias``.

    Returns the metrics of the reply, or an empty dict when it carries none.
    """
    training = load_study_policy(federation / "study.yaml").training
    agent = build_agent(federation, "va")
    model = {
        name: np.zeros(tuple(parameter.shape), dtype=np.float32)
        for name, parameter in agent.build_model(training).named_parameters()
    }
    model["bias"][...] = bias
    message = Message(
        RecordDict(
            {
                wire.TRAINING: ConfigRecord(wire.encode_training(training)),
                wire.GLOBAL_MODEL: record_from_parameters(model),
            }
        ),
        dst_node_id=node_id_of("va"),
        message_type=wire.EVALUATE,
    )
    reply = client_handler(federation, "va")(message)
    if not reply.has_content() or wire.METRICS not in reply.content.metric_records:
        return {}
    return dict(reply.content.metric_records[wire.METRICS])


def test_evaluation_hides_exact_counts(federation: Path) -> None:
    metrics = _evaluate_constant_model(federation, bias=1.0)
    positives = int(np.sum(build_agent(federation, "va").cohort.test_labels))

    leaked = bool(metrics) and math.isclose(
        metrics["accuracy"] * metrics["examples"], positives, abs_tol=1e-9
    )

    assert not leaked
