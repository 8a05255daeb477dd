"""The hub's side of secure aggregation over Flower messages.

Key setup runs once per study start (two exchanges: signed key advertisements,
then key confirmations). The confirmations each hospital needs ride on its first
training message. Each round then costs the training exchange, which carries the
masked inputs, plus one unmasking exchange. The hub learns only the sum of the
surviving hospitals' ``weight * delta`` and the sum of their weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from policies import wire
from policies.models import TrainingConfig
from secure_aggregation.config import SecureAggregationConfig, minimum_threshold
from secure_aggregation.hub import HubSession
from secure_aggregation.messages import MaskedInput, RoundStart
from secure_aggregation.transport import (
    masked_input_from_fields,
    unflatten_parameters,
    unmask_request_to_fields,
)

logger = logging.getLogger(__name__)

Exchange = Callable[[list[Message]], list[Message]]
Parameters = dict[str, np.ndarray]

# Largest FedAvg weight (training record count) a hospital sends. Counts above it
# are capped, and the agent logs the cap. With 2**20 quantization levels per
# clipping range, 20 hospitals at this weight use under 2**45 of the 2**63
# signed range of the 64-bit modulus.
MAX_WEIGHT = 1_000_000


def secure_aggregation_config(
    parties: Sequence[str], model_size: int, training: TrainingConfig
) -> SecureAggregationConfig:
    """Return the study's settings: a strict-majority threshold over the parties."""
    return SecureAggregationConfig(
        threshold=minimum_threshold(len(parties)),
        model_size=model_size,
        clipping_range=training.update_clip_norm,
        max_weight=MAX_WEIGHT,
    )


class SecureAggregator:
    """Key setup and per-round unmasking for one study on the hub."""

    name = "secure-aggregation"

    def __init__(
        self,
        study_id: str,
        nodes: Mapping[str, int],
        config: SecureAggregationConfig,
        exchange: Exchange,
    ) -> None:
        self.study_id = study_id
        self.nodes = dict(nodes)
        self.config = config
        self._exchange = exchange
        self.session = HubSession(study_id, sorted(nodes), config)
        self._pending_confirmations: dict[str, bytes] = {}
        self.rejections: dict[str, str] = {}

    @property
    def key_set(self) -> list[str]:
        """Hospitals that finished the key setup."""
        return self.session.key_set or []

    def _replies(
        self, message_type: str, contents: Mapping[str, RecordDict]
    ) -> dict[str, ConfigRecord]:
        """Send one message per hospital; return the accepted replies' results."""
        messages = [
            Message(
                content, dst_node_id=self.nodes[hospital], message_type=message_type
            )
            for hospital, content in contents.items()
        ]
        by_node = {node: hospital for hospital, node in self.nodes.items()}
        results: dict[str, ConfigRecord] = {}
        for reply in self._exchange(messages):
            hospital = by_node.get(reply.metadata.src_node_id)
            if hospital is None:
                continue
            if not reply.has_content():
                logger.warning("%s: %s failed: %s", message_type, hospital, reply.error)
                continue
            if wire.RESULT not in reply.content.config_records:
                self.rejections[hospital] = "reply without a result record"
                logger.warning("%s: %s sent no result record", message_type, hospital)
                continue
            result = reply.content.config_records[wire.RESULT]
            if result.get("status") != "ok":
                reason = str(result.get("reason", "no reason given"))[:500]
                self.rejections[hospital] = reason
                logger.warning("%s: %s rejected: %s", message_type, hospital, reason)
                continue
            results[hospital] = result
        return results

    def _fields(
        self, results: Mapping[str, ConfigRecord], name: str
    ) -> dict[str, bytes]:
        """Return each hospital's bytes field ``name``, leaving out mistyped ones."""
        fields = {}
        for hospital, result in results.items():
            try:
                fields[hospital] = wire.field_bytes(result, name)
            except wire.MessageFieldError as error:
                self.rejections[hospital] = str(error)
                logger.warning("%s sent a malformed %s: %s", hospital, name, error)
        return fields

    def setup(self, training: TrainingConfig) -> list[str]:
        """Run the key setup with every connected hospital; return the key set."""
        parties = sorted(self.nodes)
        training_record = ConfigRecord(wire.encode_training(training))
        setup_fields: dict[str, Any] = {
            "study_id": self.study_id,
            "parties": parties,
            **{k: v for k, v in self.config.model_dump().items() if v is not None},
        }
        advertisements = self._replies(
            wire.SECAGG_ADVERTISE,
            {
                hospital: RecordDict(
                    {
                        wire.SECAGG: ConfigRecord(setup_fields),
                        wire.TRAINING: training_record,
                    }
                )
                for hospital in parties
            },
        )
        bundle = self.session.collect_advertisements(
            self._fields(advertisements, "advertisement")
        )
        confirmations = self._replies(
            wire.SECAGG_CONFIRM,
            {
                hospital: RecordDict(
                    {
                        wire.SECAGG: ConfigRecord(
                            {"study_id": self.study_id, "bundle": bundle}
                        )
                    }
                )
                for hospital in advertisements
            },
        )
        addressed = {}
        for sender, result in confirmations.items():
            try:
                addressed[sender] = {
                    key.removeprefix("to."): wire.field_bytes(result, key)
                    for key in result
                    if key.startswith("to.")
                }
            except wire.MessageFieldError as error:
                self.rejections[sender] = str(error)
                logger.warning("%s sent a malformed confirmation: %s", sender, error)
        self._pending_confirmations = self.session.route_confirmations(addressed)
        logger.info("secure aggregation key set: %s", ", ".join(self.key_set))
        return self.key_set

    def begin_round(self, round_number: int, participants: Sequence[str]) -> RoundStart:
        """Open a round; its nonce becomes the round instruction's nonce."""
        return self.session.begin_round(round_number, participants)

    def round_record(self, hospital: str, start: RoundStart) -> ConfigRecord:
        """Return the secure part of one hospital's training message."""
        fields: dict[str, Any] = {"participants": list(start.participants)}
        confirmations = self._pending_confirmations.pop(hospital, None)
        if confirmations is not None:
            fields["confirmations"] = confirmations
        return ConfigRecord(fields)

    @staticmethod
    def masked_input(reply: Message) -> MaskedInput:
        """Return the masked input carried by a training reply."""
        fields = dict(reply.content.config_records[wire.MASKED])
        vector = reply.content.array_records[wire.MASKED_VECTOR]["vector"].numpy()
        return masked_input_from_fields(fields, vector)

    def unmask(
        self,
        start: RoundStart,
        inputs: Mapping[str, MaskedInput],
        like: Parameters,
    ) -> tuple[Parameters, float]:
        """Unmask the sum of the surviving inputs; return it and the total weight.

        Raises:
            SecureAggregationError: too few hospitals survived or replied; the
                round is aborted and nothing is revealed.

        """
        requests = self.session.collect_masked_inputs(
            start.round_number, start.nonce, inputs
        )
        responses = self._replies(
            wire.SECAGG_UNMASK,
            {
                hospital: RecordDict(
                    {
                        wire.SECAGG: ConfigRecord(
                            {
                                "study_id": self.study_id,
                                **unmask_request_to_fields(request),
                            }
                        )
                    }
                )
                for hospital, request in requests.items()
            },
        )
        total, total_weight = self.session.finalize(self._fields(responses, "response"))
        return unflatten_parameters(total, like), total_weight
