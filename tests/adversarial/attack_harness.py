"""Harness for attacks on the agent by a malicious hub, and on the hub by a hospital.

The agents are real ``SiloAgent`` objects behind the real ClientApp handlers,
built from a demo federation folder under pytest's temporary directory. The hub
is the real ``StudyRunner``. Messages travel through ``LoopbackGrid``, an
in-process stand-in for Flower's ``Grid``: a malformed or hostile reply from an
enrolled hospital cannot be produced by the real agent, so a test swaps one
node's handler for a function that builds that reply.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from flwr.app import Context, Error, Message, RecordDict

from federation_hub.config import load_hub_config
from federation_hub.secure_rounds import secure_aggregation_config
from federation_hub.study import StudyRunner
from policies import wire
from policies.enforcement import RoundInstruction
from policies.models import TrainingConfig
from secure_aggregation.config import SecureAggregationConfig
from secure_aggregation.hub import HubSession
from silo_agent import client_app
from silo_agent.agent import SecureRound, SiloAgent
from silo_agent.config import load_agent_config

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")

Handler = Callable[[Message], Message]


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load a YAML mapping, apply ``change`` to it and write it back."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def agent_config_path(federation: Path, hospital_id: str) -> Path:
    """Return the agent configuration file of one hospital of the demo."""
    return federation / "hospitals" / hospital_id / "agent.yaml"


def build_agent(federation: Path, hospital_id: str) -> SiloAgent:
    """Return a real agent for one hospital of the demo federation."""
    return SiloAgent(load_agent_config(agent_config_path(federation, hospital_id)))


def node_id_of(hospital_id: str) -> int:
    """Return the fixed node id the loopback grid gives a hospital."""
    return HOSPITALS.index(hospital_id) + 1


def client_handler(federation: Path, hospital_id: str) -> Handler:
    """Return a handler that runs the real ClientApp of one hospital."""
    context = Context(
        run_id=1,
        node_id=node_id_of(hospital_id),
        node_config={"agent-config": str(agent_config_path(federation, hospital_id))},
        state=RecordDict(),
        run_config={},
    )
    functions: dict[str, Callable[[Message, Context], Message]] = {
        wire.IDENTIFY: client_app.identify,
        wire.TRAIN: client_app.train,
        wire.EVALUATE: client_app.evaluate,
        wire.SECAGG_ADVERTISE: client_app.secagg_advertise,
        wire.SECAGG_CONFIRM: client_app.secagg_confirm,
        wire.SECAGG_UNMASK: client_app.secagg_unmask,
    }

    def handle(message: Message) -> Message:
        return functions[message.metadata.message_type](message, context)

    return handle


def reply_with(message: Message, records: dict[str, Any]) -> Message:
    """Return a reply to ``message`` carrying ``records``."""
    return Message(RecordDict(records), reply_to=message)


def _set_message_id(message: Message, message_id: str) -> None:
    # Metadata.message_id has no setter: the SuperLink fills the same slot.
    message.metadata.__dict__["_message_id"] = message_id


class LoopbackGrid:
    """An in-process ``Grid`` that hands each message to its node's handler.

    Replies are computed when a message is pushed. A handler that raises turns
    into an error reply, as Flower's ClientApp runner sends one.
    """

    def __init__(self, handlers: dict[int, Handler]) -> None:
        self.handlers = handlers
        self._ids: Iterator[int] = itertools.count(1)
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        """Return the ids of the connected nodes."""
        return list(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver the messages; return their ids."""
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            _set_message_id(message, message_id)
            ids.append(message_id)
            handler = self.handlers.get(message.metadata.dst_node_id)
            if handler is None:
                continue
            try:
                reply = handler(message)
            except Exception as error:  # noqa: BLE001 - a node turns any error into a reply
                reply = Message(Error(code=0, reason=repr(error)), reply_to=message)
            _set_message_id(reply, f"r{message_id}")
            self._replies[message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the replies to ``message_ids`` that exist, once each."""
        return [
            self._replies.pop(message_id)
            for message_id in list(message_ids)
            if message_id in self._replies
        ]


def hub_runner(federation: Path, handlers: dict[int, Handler]) -> StudyRunner:
    """Return the real hub of the federation on a loopback grid."""
    config = load_hub_config(federation).model_copy(
        update={"round_timeout_s": 5.0, "node_timeout_s": 1.0}
    )
    return StudyRunner(LoopbackGrid(handlers), config)  # type: ignore[arg-type]


def honest_handlers(federation: Path) -> dict[int, Handler]:
    """Return the real ClientApp handler of every hospital, by node id."""
    return {node_id_of(h): client_handler(federation, h) for h in HOSPITALS}


class SecureFederation:
    """Four real agents with the study's secure-aggregation keys agreed.

    The test plays the hub: it runs the key setup through each agent's own
    methods and then builds round instructions by hand.
    """

    def __init__(self, federation: Path) -> None:
        self.runner = hub_runner(federation, {})
        self.agents = {h: build_agent(federation, h) for h in HOSPITALS}
        self.training: TrainingConfig = self.runner.policy.training
        self.study_id = self.runner.policy.study_id
        model_size = next(iter(self.agents.values())).model_size(self.training)
        self.config: SecureAggregationConfig = secure_aggregation_config(
            list(HOSPITALS), model_size, self.training
        )
        self.hub = HubSession(self.study_id, list(HOSPITALS), self.config)
        advertisements = {
            h: agent.secure.advertise(
                self.study_id, list(HOSPITALS), self.config, self.training, model_size
            )
            for h, agent in self.agents.items()
        }
        bundle = self.hub.collect_advertisements(advertisements)
        confirmations = {
            h: agent.secure.confirm(self.study_id, bundle)
            for h, agent in self.agents.items()
        }
        self.pending_confirmations = self.hub.route_confirmations(confirmations)

    def instruction(
        self, round_number: int, nonce: str, **dp_changes: Any
    ) -> RoundInstruction:
        """Return the study's instruction for a round, with DP values changed."""
        dp = self.runner.dp.model_copy(update=dp_changes)
        return RoundInstruction(
            study_id=self.study_id,
            round=round_number,
            nonce=nonce,
            schema_hash=self.runner.schema.content_hash,
            accountant=self.runner.policy.accountant,
            delta=self.runner.policy.delta,
            dp=dp,
            secure_aggregation=True,
        )

    def secure_round(
        self, hospital_id: str, participants: Iterable[str]
    ) -> SecureRound:
        """Return the secure part of a training message.

        The key confirmations ride on the first round a hospital receives.
        """
        confirmations = self.pending_confirmations.pop(hospital_id, None)
        return SecureRound(participants=list(participants), confirmations=confirmations)
