"""Flower ClientApp of the hospital agent.

The ClientApp translates Flower messages into calls on the hospital's
``SiloAgent`` and back. It finds the agent's configuration in one of two ways:

- on a deployment, the SuperNode is started with
  ``--node-config 'agent-config="/path/to/agent.yaml"'``;
- on Flower's simulation engine, virtual node ``partition-id`` i serves the i-th
  hospital (sorted by identifier) of the roster in the federation folder, whose
  agent configuration is ``hospitals/<hospital_id>/agent.yaml``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from policies import wire
from policies.enforcement import InstructionRejected, RoundInstruction
from policies.models import PolicyError
from policies.roster import load_roster
from secure_aggregation.errors import SecureAggregationError
from secure_aggregation.transport import unmask_request_from_fields
from silo_agent.agent import SecureRound, SiloAgent
from silo_agent.config import load_agent_config
from silo_agent.secure import SecureAggregationRejected, config_from_fields

logger = logging.getLogger(__name__)

FEDERATION_DIR_ENV = "HEALTHFED_FEDERATION_DIR"

_agents: dict[Path, SiloAgent] = {}
_agents_lock = threading.Lock()


def agent_config_path(context: Context) -> Path:
    """Return the agent configuration file this node serves."""
    configured = context.node_config.get("agent-config")
    if configured:
        return Path(str(configured))

    federation_dir = str(
        context.run_config.get("federation-dir", "")
    ) or os.environ.get(FEDERATION_DIR_ENV, "")
    if not federation_dir or "partition-id" not in context.node_config:
        raise RuntimeError(
            "no agent configuration: start the SuperNode with --node-config "
            "'agent-config=\"/path/to/agent.yaml\"', or run the simulation with the "
            "run config federation-dir set"
        )
    roster = load_roster(Path(federation_dir) / "roster.yaml")
    hospitals = sorted(roster.hospitals)
    partition = int(context.node_config["partition-id"])
    if not 0 <= partition < len(hospitals):
        raise RuntimeError(
            f"simulation node partition-id {partition} has no hospital: the roster "
            f"lists {len(hospitals)}; run the simulation with that many nodes"
        )
    return Path(federation_dir) / "hospitals" / hospitals[partition] / "agent.yaml"


def get_agent(context: Context) -> SiloAgent:
    """Return the agent of this node, loading the hospital's records on first use."""
    path = agent_config_path(context).resolve()
    with _agents_lock:
        agent = _agents.get(path)
        if agent is None:
            agent = SiloAgent(load_agent_config(path))
            _agents[path] = agent
        return agent


def parameters_from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Return the named float32 arrays of an ArrayRecord."""
    return {
        name: np.asarray(array.numpy(), dtype=np.float32)
        for name, array in record.items()
    }


def record_from_parameters(parameters: dict[str, np.ndarray]) -> ArrayRecord:
    """Return an ArrayRecord keeping the parameter names."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(v)) for name, v in parameters.items()}
    )


app = ClientApp()


@app.query("identify")
def identify(message: Message, context: Context) -> Message:
    """Prove the hospital's enrolled identity by signing the hub's challenge."""
    agent = get_agent(context)
    challenge = message.content.config_records[wire.CHALLENGE]
    signature = agent.identify(
        str(challenge["study_id"]),
        wire.field_bytes(challenge, "challenge"),
        context.node_id,
    )
    reply = ConfigRecord(
        {
            "hospital_id": agent.hospital_id,
            "schema_hash": agent.schema.content_hash,
            "signature": signature,
        }
    )
    return Message(RecordDict({wire.RESULT: reply}), reply_to=message)


def _rejection(message: Message, reason: str) -> Message:
    result = ConfigRecord({"status": "rejected", "reason": reason})
    return Message(RecordDict({wire.RESULT: result}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run one round of local DP-SGD, or reply with the reason for rejecting it."""
    agent = get_agent(context)
    content = message.content
    try:
        instruction = RoundInstruction.from_config(
            dict(content.config_records[wire.INSTRUCTION])
        )
        training = wire.decode_training(dict(content.config_records[wire.TRAINING]))
        global_parameters = parameters_from_record(
            content.array_records[wire.GLOBAL_MODEL]
        )
        secure_round = None
        if wire.SECAGG in content.config_records:
            secagg = content.config_records[wire.SECAGG]
            confirmations = (
                wire.field_bytes(secagg, "confirmations")
                if "confirmations" in secagg
                else None
            )
            secure_round = SecureRound(
                participants=wire.field_str_list(secagg, "participants"),
                confirmations=confirmations,
            )
        reply = agent.train(instruction, training, global_parameters, secure_round)
    except (
        InstructionRejected,
        PolicyError,
        SecureAggregationError,
        wire.MessageFieldError,
    ) as error:
        reason = error.reason if isinstance(error, InstructionRejected) else str(error)
        logger.warning(
            "%s rejected the round instruction: %s", agent.hospital_id, reason
        )
        return _rejection(message, reason)

    result: dict[str, Any] = {
        "status": "trained",
        "receipt": reply.receipt.model_dump_json().encode("utf-8"),
    }
    records: dict[str, Any] = {}
    if reply.masked_fields is not None and reply.masked_vector is not None:
        records[wire.MASKED] = ConfigRecord(reply.masked_fields)
        records[wire.MASKED_VECTOR] = ArrayRecord(
            {"vector": Array(np.ascontiguousarray(reply.masked_vector))}
        )
    else:
        assert reply.delta is not None and reply.num_examples is not None
        result["num_examples"] = reply.num_examples
        result["clipped"] = reply.clipped
        records[wire.UPDATE] = record_from_parameters(reply.delta)
    records[wire.RESULT] = ConfigRecord(result)
    return Message(RecordDict(records), reply_to=message)


@app.query("spend_status")
def spend_status(message: Message, context: Context) -> Message:
    """Report which nonces of an interrupted round this hospital spent on."""
    agent = get_agent(context)
    try:
        request = message.content.config_records[wire.SPEND_STATUS]
        study_id = request.get("study_id")
        if not isinstance(study_id, str):
            raise wire.MessageFieldError("spend status needs a study id")
        nonces = wire.field_str_list(request, "nonces")
        spent, signature = agent.spend_status(study_id, nonces)
    except (KeyError, wire.MessageFieldError) as error:
        logger.warning(
            "%s rejected the spend status query: %s", agent.hospital_id, error
        )
        return _rejection(message, str(error))
    result = ConfigRecord({"status": "ok", "spent": spent, "signature": signature})
    return Message(RecordDict({wire.RESULT: result}), reply_to=message)


@app.query("secagg_advertise")
def secagg_advertise(message: Message, context: Context) -> Message:
    """Create this study's secure-aggregation keys and return them signed."""
    agent = get_agent(context)
    content = message.content
    try:
        setup = dict(content.config_records[wire.SECAGG])
        training = wire.decode_training(dict(content.config_records[wire.TRAINING]))
        study_id = str(setup.pop("study_id"))
        approved = agent.policy.approved_studies
        if approved is not None and study_id not in approved:
            raise SecureAggregationRejected(
                f"study {study_id!r} is not in the approved studies {list(approved)}"
            )
        parties = wire.field_str_list(setup, "parties")
        del setup["parties"]
        config = config_from_fields(setup)
        advertisement = agent.secure.advertise(
            study_id, parties, config, training, agent.model_size(training)
        )
    except (
        SecureAggregationError,
        PolicyError,
        KeyError,
        wire.MessageFieldError,
    ) as error:
        logger.warning("%s rejected the key setup: %s", agent.hospital_id, error)
        return _rejection(message, str(error))
    result = ConfigRecord({"status": "ok", "advertisement": advertisement})
    return Message(RecordDict({wire.RESULT: result}), reply_to=message)


@app.query("secagg_confirm")
def secagg_confirm(message: Message, context: Context) -> Message:
    """Verify every peer's signed keys and return a confirmation per peer."""
    agent = get_agent(context)
    setup = message.content.config_records[wire.SECAGG]
    try:
        confirmations = agent.secure.confirm(
            str(setup["study_id"]), wire.field_bytes(setup, "bundle")
        )
    except (SecureAggregationError, KeyError, wire.MessageFieldError) as error:
        logger.warning("%s rejected the key bundle: %s", agent.hospital_id, error)
        return _rejection(message, str(error))
    fields: dict[str, Any] = {"status": "ok"}
    fields.update({f"to.{peer}": value for peer, value in confirmations.items()})
    return Message(RecordDict({wire.RESULT: ConfigRecord(fields)}), reply_to=message)


@app.query("secagg_unmask")
def secagg_unmask(message: Message, context: Context) -> Message:
    """Return this hospital's unmasking shares for the open round."""
    agent = get_agent(context)
    fields = dict(message.content.config_records[wire.SECAGG])
    try:
        study_id = str(fields.pop("study_id"))
        request = unmask_request_from_fields(fields)
        response = agent.secure.unmask(
            study_id,
            request.round_number,
            request.nonce,
            request.survivors,
            request.dropped,
            request.encrypted_shares,
        )
    except (SecureAggregationError, KeyError) as error:
        logger.warning("%s rejected the unmask request: %s", agent.hospital_id, error)
        return _rejection(message, str(error))
    result = ConfigRecord({"status": "ok", "response": response})
    return Message(RecordDict({wire.RESULT: result}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the global model on the hospital's fixed test split."""
    agent = get_agent(context)
    content = message.content
    try:
        request = content.config_records[wire.EVALUATION]
        study_id = request.get("study_id")
        round_number = request.get("round")
        if not isinstance(study_id, str) or not isinstance(round_number, int):
            raise wire.MessageFieldError("evaluation needs a study id and a round")
        training = wire.decode_training(dict(content.config_records[wire.TRAINING]))
        parameters = parameters_from_record(content.array_records[wire.GLOBAL_MODEL])
        metrics = agent.evaluate(study_id, round_number, training, parameters)
    except (InstructionRejected, PolicyError, ValueError, KeyError) as error:
        reason = error.reason if isinstance(error, InstructionRejected) else str(error)
        logger.warning("%s rejected the evaluation: %s", agent.hospital_id, reason)
        return _rejection(message, reason)
    return Message(
        RecordDict({wire.METRICS: MetricRecord(dict(metrics))}), reply_to=message
    )
