"""The hub's study loop: identify hospitals, select, instruct, aggregate, evaluate.

``StudyRunner`` drives one study over a Flower ``Grid``. Every decision that
matters to a privacy officer is written to the hub's ledger before it takes
effect: the instruction of each round before any message leaves, the spend of
each hospital that trained (or did not answer, which counts as spent), each
rejection, and the round's result. A restarted hub resumes the study from its
ledger and the global model saved with each round.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation_hub.aggregation import FedAvg
from federation_hub.config import HubConfig
from federation_hub.secure_rounds import (
    MAX_WEIGHT,
    SecureAggregator,
    secure_aggregation_config,
)
from policies import wire
from policies.accounting import compute_epsilon
from policies.architecture import initial_parameters, parameters_l2_norm
from policies.enforcement import RoundInstruction, StudyStopped, select_hospitals
from policies.identity import load_private_key
from policies.ledger import Ledger
from policies.models import DPParameters, StudyPolicy, load_study_policy
from policies.receipts import (
    Receipt,
    ReceiptMismatchError,
    ReceiptSignatureError,
    check_receipt,
)
from policies.roster import (
    Roster,
    identify_message,
    load_roster,
    spend_status_message,
)
from schemas import load_schema
from schemas.encoding import FeatureEncoder
from secure_aggregation.errors import SecureAggregationError
from secure_aggregation.messages import MaskedInput, RoundStart

logger = logging.getLogger(__name__)

Parameters = dict[str, np.ndarray]

# Metrics an agent reports for the global model on its test split, each in [0, 1].
EVALUATION_METRICS = ("accuracy", "roc_auc")

# Longest rejection reason kept from a hospital's reply, in characters.
MAX_REASON_CHARS = 500

# Seconds between two pulls for replies.
REPLY_POLL_INTERVAL_S = 0.1

# With two hospitals, each learns the other's update from the sum and its own.
MIN_SECURE_PARTIES = 3


class StudyInterrupted(RuntimeError):
    """The engine running the study stopped; the hub stops waiting for replies."""


@dataclass
class RoundOutcome:
    """The outcome of one round, as shown to the operator and stored in the ledger."""

    round: int
    selected: list[str]
    skipped: dict[str, str]
    trained: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)
    aborted: str = ""
    """Reason the round's aggregation was aborted; empty when it completed."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_accuracy: float = math.nan
    mean_roc_auc: float = math.nan


@dataclass
class StudyResult:
    """The study's end state: rounds run, why it stopped, each hospital's budget."""

    study_id: str
    rounds: list[RoundOutcome]
    stop_reason: str
    budget: list[dict[str, Any]]
    aggregation: str


ProgressCallback = Callable[[str, Any], None]


def _result_record(reply: Message) -> ConfigRecord | None:
    """Return the reply's result record, or None when the reply lacks one."""
    records = reply.content.config_records
    return records[wire.RESULT] if wire.RESULT in records else None


def _model_record(parameters: Parameters) -> ArrayRecord:
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(value)) for name, value in parameters.items()}
    )


def _parameters_hash(parameters: Parameters) -> str:
    digest = hashlib.sha256()
    for name in sorted(parameters):
        digest.update(name.encode("utf-8"))
        digest.update(
            np.ascontiguousarray(parameters[name], dtype=np.float32).tobytes()
        )
    return digest.hexdigest()


class StudyRunner:
    """Run one study of the federation over a Flower grid."""

    def __init__(
        self,
        grid: Grid,
        config: HubConfig,
        progress: ProgressCallback | None = None,
        interrupt: threading.Event | None = None,
    ) -> None:
        self.grid = grid
        self._interrupt = interrupt or threading.Event()
        self.config = config
        self.policy: StudyPolicy = load_study_policy(config.study_policy)
        self.schema = load_schema(config.schema_file)
        self.roster: Roster = load_roster(config.roster)
        self.num_features = len(FeatureEncoder(self.schema).feature_names)
        self._identity = load_private_key(config.identity_key)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        config.models_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger.open(config.ledger_path, "hub", self._identity)
        self.dp: DPParameters = self.policy.dp_parameters()
        self.aggregator = FedAvg(self.policy.training.server_learning_rate)
        self._progress = progress or (lambda event, payload: None)
        self.nodes: dict[str, int] = {}
        self.secure: SecureAggregator | None = None
        unknown = [h for h in self.policy.hospitals if h not in self.roster.hospitals]
        if unknown:
            raise ValueError(
                f"study {self.policy.study_id} names hospitals {unknown} that are not "
                "enrolled in the roster; enroll them or remove them from the policy"
            )

    # Identification -----------------------------------------------------------

    def connect(self) -> dict[str, int]:
        """Wait for the hospitals' nodes and map each enrolled hospital to its node.

        Each node must sign a fresh challenge with its enrolled identity key; a
        node that fails is ignored and logged.
        """
        wanted = len(self.policy.hospitals)
        deadline = time.monotonic() + self.config.node_timeout_s
        node_ids: list[int] = []
        while time.monotonic() < deadline:
            self._check_not_interrupted()
            node_ids = list(self.grid.get_node_ids())
            if len(node_ids) >= wanted:
                break
            time.sleep(0.2)
        logger.info("%d of %d hospital nodes connected", len(node_ids), wanted)

        challenges = {node: secrets.token_bytes(32) for node in node_ids}
        messages = [
            Message(
                RecordDict(
                    {
                        wire.CHALLENGE: ConfigRecord(
                            {"study_id": self.policy.study_id, "challenge": challenge}
                        )
                    }
                ),
                dst_node_id=node,
                message_type=wire.IDENTIFY,
            )
            for node, challenge in challenges.items()
        ]
        for reply in self._exchange(messages):
            node = reply.metadata.src_node_id
            if not reply.has_content():
                logger.warning("node %s failed identification: %s", node, reply.error)
                continue
            result = _result_record(reply)
            if result is None or not isinstance(result.get("hospital_id"), str):
                logger.warning("node %s sent a malformed identification", node)
                continue
            hospital_id = str(result["hospital_id"])
            if hospital_id not in self.policy.hospitals:
                logger.warning(
                    "node %s claims %r, not a study hospital", node, hospital_id
                )
                continue
            try:
                key = self.roster.hospital_key(hospital_id)
                key.verify(
                    wire.field_bytes(result, "signature"),
                    identify_message(
                        self.policy.study_id, hospital_id, node, challenges[node]
                    ),
                )
            except (InvalidSignature, wire.MessageFieldError):
                logger.warning(
                    "node %s claims %r with an invalid signature; ignored",
                    node,
                    hospital_id,
                )
                continue
            if result.get("schema_hash") != self.schema.content_hash:
                logger.warning(
                    "hospital %s pins schema %s, the study uses %s; it cannot join",
                    hospital_id,
                    result.get("schema_hash"),
                    self.schema.content_hash,
                )
                continue
            if hospital_id in self.nodes:
                logger.warning(
                    "hospital %s replied from two nodes; keeping the first",
                    hospital_id,
                )
                continue
            self.nodes[hospital_id] = node
        self._progress("connected", dict(self.nodes))
        return self.nodes

    def _setup_secure_aggregation(self) -> None:
        """Agree this study's masking keys with every verified hospital."""
        training = self.policy.training
        model_size = sum(
            int(np.asarray(v).size)
            for v in initial_parameters(
                training.model, self.num_features, training.hidden_units, training.seed
            ).values()
        )
        config = secure_aggregation_config(sorted(self.nodes), model_size, training)
        self.secure = SecureAggregator(
            self.policy.study_id, self.nodes, config, self._exchange
        )
        key_set = self.secure.setup(training)
        self.ledger.append(
            "secure_aggregation_setup",
            {
                "study_id": self.policy.study_id,
                "key_set": key_set,
                "threshold": config.threshold,
                "rejected": dict(self.secure.rejections),
            },
        )
        self._progress("secure_setup", key_set)

    @property
    def aggregation_name(self) -> str:
        """How updates are aggregated: in the clear, or under secure aggregation."""
        if self.policy.secure_aggregation:
            return f"{SecureAggregator.name}+{self.aggregator.name}"
        return self.aggregator.name

    # Ledger replay ------------------------------------------------------------

    def histories(self) -> dict[str, list[DPParameters]]:
        """Return each hospital's spends on this study, replayed from the hub's ledger.

        A round that was instructed but never completed (the hub stopped in
        between) counts as spent by every hospital it instructed that neither
        spent nor rejected it on record.
        """
        study = self.policy.study_id
        histories = {
            h: self.ledger.history(study, hospital_id=h) for h in self.policy.hospitals
        }
        for hospital_id, attempts in self._open_attempts().items():
            for _, _, dp in attempts:
                histories.setdefault(hospital_id, []).append(dp)
        return histories

    def _open_attempts(self) -> dict[str, list[tuple[int, str, DPParameters]]]:
        """Return, per hospital, the unsettled attempts at unfinished rounds.

        Each attempt at a round has its own instruction entry and nonces, and a
        round_completed entry closes the latest attempt at its round, so an
        attempt cut short by a crash stays open even when a retry completes.
        Each open attempt is (round, nonce, DP parameters).
        """
        study = self.policy.study_id
        attempts: list[dict[str, Any]] = []
        settled: set[tuple[int, str, str]] = set()
        for entry in self.ledger.entries():
            payload = entry.payload
            if payload.get("study_id") != study:
                continue
            if entry.kind == "round_instructed":
                attempts.append({**payload, "completed": False})
            elif entry.kind == "round_completed":
                for attempt in reversed(attempts):
                    if attempt["round"] == payload["round"]:
                        attempt["completed"] = True
                        break
            elif entry.kind in ("spend", "rejection", "reconciled_unspent"):
                settled.add(
                    (
                        int(payload["round"]),
                        str(payload.get("nonce", "")),
                        str(payload["hospital_id"]),
                    )
                )
        open_attempts: dict[str, list[tuple[int, str, DPParameters]]] = {}
        for attempt in attempts:
            if attempt["completed"]:
                continue
            for hospital_id in attempt["hospitals"]:
                nonce = attempt["nonces"][hospital_id]
                if (int(attempt["round"]), nonce, hospital_id) not in settled:
                    open_attempts.setdefault(hospital_id, []).append(
                        (int(attempt["round"]), nonce, DPParameters(**attempt["dp"]))
                    )
        return open_attempts

    def reconcile_interrupted_rounds(self) -> None:
        """Ask each hospital which open attempts it spent on, and settle them.

        After a hub crash the ledger cannot tell whether a hospital trained in
        the interrupted round, so that round counts as spent. A hospital's signed
        answer settles it both ways: a spend it reports is recorded, a nonce it
        did not spend on is voided at the agent (late copies are rejected) and
        stops counting. A hospital that does not answer stays counted as spent.
        """
        open_attempts = {
            h: a for h, a in self._open_attempts().items() if h in self.nodes
        }
        if not open_attempts:
            return
        messages = [
            Message(
                RecordDict(
                    {
                        wire.SPEND_STATUS: ConfigRecord(
                            {
                                "study_id": self.policy.study_id,
                                "nonces": [nonce for _, nonce, _ in attempts],
                            }
                        )
                    }
                ),
                dst_node_id=self.nodes[hospital_id],
                message_type=wire.SPEND_STATUS_QUERY,
            )
            for hospital_id, attempts in open_attempts.items()
        ]
        by_node = {node: hospital for hospital, node in self.nodes.items()}
        for reply in self._exchange(messages):
            hospital_id = by_node.get(reply.metadata.src_node_id)
            if hospital_id is None or not reply.has_content():
                continue
            result = _result_record(reply)
            attempts = open_attempts[hospital_id]
            queried = [nonce for _, nonce, _ in attempts]
            try:
                if result is None or result.get("status") != "ok":
                    raise wire.MessageFieldError("no valid spend status")
                spent = wire.field_str_list(result, "spent")
                self.roster.hospital_key(hospital_id).verify(
                    wire.field_bytes(result, "signature"),
                    spend_status_message(
                        self.policy.study_id, hospital_id, queried, spent
                    ),
                )
            except (wire.MessageFieldError, InvalidSignature) as error:
                logger.warning("spend status of %s not usable: %s", hospital_id, error)
                continue
            self._settle_attempts(hospital_id, attempts, set(spent))

    def _settle_attempts(
        self,
        hospital_id: str,
        attempts: list[tuple[int, str, DPParameters]],
        spent: set[str],
    ) -> None:
        for round_number, nonce, dp in attempts:
            if nonce in spent:
                history = self.histories().get(hospital_id, [])
                epsilon = compute_epsilon(
                    history, self.policy.delta, self.policy.accountant
                )
                self.ledger.record_spend(
                    self.policy.study_id,
                    round_number,
                    nonce,
                    dp,
                    self.policy.accountant,
                    self.policy.delta,
                    epsilon,
                    hospital_id=hospital_id,
                )
            else:
                self.ledger.append(
                    "reconciled_unspent",
                    {
                        "study_id": self.policy.study_id,
                        "round": round_number,
                        "nonce": nonce,
                        "hospital_id": hospital_id,
                    },
                )
            logger.info(
                "round %d attempt %s: %s %s",
                round_number,
                nonce,
                hospital_id,
                "spent" if nonce in spent else "did not spend",
            )

    def _resume_point(self) -> tuple[int, Parameters]:
        """Return the next round number and the global model to start it from."""
        last: dict[str, Any] | None = None
        for entry in self.ledger.entries():
            if (
                entry.kind == "round_completed"
                and entry.payload.get("study_id") == self.policy.study_id
            ):
                last = dict(entry.payload)
        if last is None:
            training = self.policy.training
            parameters = initial_parameters(
                training.model, self.num_features, training.hidden_units, training.seed
            )
            return 1, parameters
        path = self.config.models_dir / f"round-{last['round']:04d}.npz"
        with np.load(path, allow_pickle=False) as stored:
            parameters = {name: stored[name] for name in stored.files}
        if _parameters_hash(parameters) != last["model_sha256"]:
            raise RuntimeError(
                f"global model {path} does not match the hash in the hub ledger; "
                "restore the file from backup or start a new study id"
            )
        logger.info(
            "resuming study %s after round %d", self.policy.study_id, last["round"]
        )
        return int(last["round"]) + 1, parameters

    # Rounds -------------------------------------------------------------------

    def run(self) -> StudyResult:
        """Run the study to its planned number of rounds or until it must stop."""
        if not self.nodes:
            self.connect()
        if self.policy.secure_aggregation:
            try:
                self._setup_secure_aggregation()
            except (SecureAggregationError, ValueError) as error:
                reason = f"secure aggregation key setup failed: {error}"
                logger.error("study %s stopped: %s", self.policy.study_id, reason)
                self.ledger.append(
                    "study_stopped",
                    {"study_id": self.policy.study_id, "reason": reason},
                )
                return StudyResult(
                    study_id=self.policy.study_id,
                    rounds=[],
                    stop_reason=reason,
                    budget=self.budget_table(),
                    aggregation=self.aggregation_name,
                )
        self.reconcile_interrupted_rounds()
        start, parameters = self._resume_point()
        if start == 1:
            self.ledger.append(
                "study_started",
                {
                    "study_id": self.policy.study_id,
                    "schema_hash": self.schema.content_hash,
                    "roster_fingerprint": self.roster.fingerprint,
                    "dp": self.dp.model_dump(),
                    "accountant": self.policy.accountant,
                    "delta": self.policy.delta,
                    "epsilon_budget": self.policy.epsilon_budget.model_dump(),
                    "aggregation": self.aggregation_name,
                },
            )
        outcomes: list[RoundOutcome] = []
        stop_reason = f"completed the {self.policy.rounds} planned rounds"
        for round_number in range(start, self.policy.rounds + 1):
            try:
                outcome, parameters = self.run_round(round_number, parameters)
            except StudyStopped as stop:
                stop_reason = stop.reason
                logger.warning(
                    "study %s stopped: %s", self.policy.study_id, stop.reason
                )
                break
            outcomes.append(outcome)
            shortfall = self._training_shortfall(outcome)
            if shortfall:
                stop_reason = shortfall
                logger.warning("study %s stopped: %s", self.policy.study_id, shortfall)
                break
        self.ledger.append(
            "study_stopped", {"study_id": self.policy.study_id, "reason": stop_reason}
        )
        return StudyResult(
            study_id=self.policy.study_id,
            rounds=outcomes,
            stop_reason=stop_reason,
            budget=self.budget_table(),
            aggregation=self.aggregation_name,
        )

    def run_round(
        self, round_number: int, parameters: Parameters
    ) -> tuple[RoundOutcome, Parameters]:
        """Run one round; return its outcome and the new global model."""
        histories = self.histories()
        selection = select_hospitals(self.policy, histories, list(self.nodes))
        outcome = RoundOutcome(
            round=round_number,
            selected=list(selection.selected),
            skipped=dict(selection.skipped),
        )
        for hospital_id in self.policy.hospitals:
            if hospital_id not in self.nodes and hospital_id not in outcome.skipped:
                outcome.skipped[hospital_id] = "not connected"

        start: RoundStart | None = None
        if self.secure is not None:
            outcome.selected = self._secure_participants(outcome)
            start = self.secure.begin_round(round_number, outcome.selected)
            nonces = dict.fromkeys(outcome.selected, start.nonce.hex())
        else:
            nonces = {h: secrets.token_hex(16) for h in outcome.selected}
        self._progress("round_started", outcome)

        instructions = {
            hospital_id: RoundInstruction(
                study_id=self.policy.study_id,
                round=round_number,
                nonce=nonces[hospital_id],
                schema_hash=self.schema.content_hash,
                accountant=self.policy.accountant,
                delta=self.policy.delta,
                dp=self.dp,
                secure_aggregation=self.secure is not None,
            )
            for hospital_id in outcome.selected
        }
        self.ledger.append(
            "round_instructed",
            {
                "study_id": self.policy.study_id,
                "round": round_number,
                "hospitals": list(instructions),
                "nonces": {h: i.nonce for h, i in instructions.items()},
                "dp": self.dp.model_dump(),
                "skipped": outcome.skipped,
            },
        )
        replies = self._send_train(instructions, parameters, start)

        updates: dict[str, tuple[Parameters, float]] = {}
        masked_inputs: dict[str, MaskedInput] = {}
        for hospital_id, instruction in instructions.items():
            reply = replies.get(hospital_id)
            if reply is None or not reply.has_content():
                error = None if reply is None else reply.error
                outcome.dropped.append(hospital_id)
                logger.warning(
                    "round %d: %s did not reply (%s)", round_number, hospital_id, error
                )
                self._record_spend(hospital_id, instruction, histories, confirmed=False)
                continue
            result = _result_record(reply)
            if result is None or result.get("status") not in ("trained", "rejected"):
                outcome.flagged[hospital_id] = "malformed reply: no valid result record"
                logger.error(
                    "round %d: %s sent a malformed reply", round_number, hospital_id
                )
                self._record_spend(hospital_id, instruction, histories, confirmed=False)
                continue
            if result["status"] == "rejected":
                reason = str(result.get("reason", "no reason given"))[:MAX_REASON_CHARS]
                outcome.rejected[hospital_id] = reason
                logger.warning(
                    "round %d: %s rejected: %s",
                    round_number,
                    hospital_id,
                    reason,
                )
                self.ledger.append(
                    "rejection",
                    {
                        "study_id": self.policy.study_id,
                        "round": round_number,
                        "nonce": instruction.nonce,
                        "hospital_id": hospital_id,
                        "reason": reason,
                    },
                )
                continue
            epsilon = self._record_spend(
                hospital_id, instruction, histories, confirmed=True
            )
            problem = self._check_receipt(hospital_id, instruction, result, epsilon)
            if problem:
                outcome.flagged[hospital_id] = problem
                logger.error(
                    "round %d: receipt of %s flagged: %s",
                    round_number,
                    hospital_id,
                    problem,
                )
                continue
            try:
                if self.secure is not None:
                    masked_inputs[hospital_id] = self.secure.masked_input(reply)
                else:
                    updates[hospital_id] = self._plain_update(reply, parameters)
            except (KeyError, ValueError, SecureAggregationError) as error:
                outcome.flagged[hospital_id] = f"malformed update: {error}"
                logger.error(
                    "round %d: update of %s malformed: %s",
                    round_number,
                    hospital_id,
                    error,
                )
                continue
            outcome.trained.append(hospital_id)

        if self.secure is not None and start is not None:
            parameters = self._apply_secure(start, masked_inputs, parameters, outcome)
        elif updates:
            parameters = self.aggregator.apply(parameters, list(updates.values()))
        outcome.metrics = self._evaluate(parameters, round_number)
        self._summarise_metrics(outcome)
        self._save_round(round_number, parameters, outcome)
        self._progress("round_completed", outcome)
        return outcome, parameters

    def _training_shortfall(self, outcome: RoundOutcome) -> str:
        """Return why the study cannot go on after this round, or an empty string.

        A round in which fewer hospitals trained than the study needs (or whose
        secure aggregation aborted) changed nothing; the next would likely fail
        the same way, so the study stops and names the reasons.
        """
        needed = self.policy.min_hospitals_per_round
        if self.secure is not None:
            needed = max(needed, MIN_SECURE_PARTIES)
        if len(outcome.trained) >= needed:
            if outcome.aborted:
                return f"round {outcome.round}: {outcome.aborted}"
            return ""
        reasons = {**outcome.rejected, **outcome.flagged}
        reasons.update(dict.fromkeys(outcome.dropped, "no answer"))
        listed = "; ".join(f"{h}: {r}" for h, r in sorted(reasons.items()))
        return (
            f"round {outcome.round}: only {len(outcome.trained)} hospitals trained, "
            f"below the {needed} the study needs ({listed or 'no replies'})"
        )

    def _secure_participants(self, outcome: RoundOutcome) -> list[str]:
        """Keep the selected hospitals in the key set; stop below a secure round."""
        assert self.secure is not None
        key_set = set(self.secure.key_set)
        participants = []
        for hospital_id in outcome.selected:
            if hospital_id in key_set:
                participants.append(hospital_id)
            else:
                outcome.skipped[hospital_id] = "not in the secure-aggregation key set"
        needed = max(MIN_SECURE_PARTIES, self.policy.min_hospitals_per_round)
        if len(participants) < needed:
            raise StudyStopped(
                f"round {outcome.round} has {len(participants)} hospitals in the "
                f"secure-aggregation key set, below the {needed} a secure round needs"
            )
        return participants

    def _plain_update(
        self, reply: Message, parameters: Parameters
    ) -> tuple[Parameters, float]:
        """Return a plain update and its weight; raise ValueError if it is invalid.

        The delta must have the global model's names and shapes, finite values
        and an L2 norm within the study's update clip norm; the weight must be a
        whole number of records in [1, MAX_WEIGHT].
        """
        result = reply.content.config_records[wire.RESULT]
        weight = wire.field_number(result, "num_examples")
        if not (
            math.isfinite(weight)
            and weight == int(weight)
            and 1 <= weight <= MAX_WEIGHT
        ):
            raise ValueError(
                f"num_examples must be a whole number in [1, {MAX_WEIGHT}], "
                f"got {weight}"
            )
        record = reply.content.array_records[wire.UPDATE]
        if set(record) != set(parameters):
            raise ValueError(
                f"update names {sorted(record)} differ from the model's "
                f"{sorted(parameters)}"
            )
        delta = {}
        for name, array in record.items():
            values = np.asarray(array.numpy(), dtype=np.float32)
            if values.shape != np.shape(parameters[name]):
                raise ValueError(
                    f"update {name!r} has shape {values.shape}, the model "
                    f"{np.shape(parameters[name])}"
                )
            if not np.all(np.isfinite(values)):
                raise ValueError(f"update {name!r} contains NaN or infinite values")
            delta[name] = values
        norm = parameters_l2_norm(delta)
        clip = self.policy.training.update_clip_norm
        if norm > clip * (1 + 1e-6):
            raise ValueError(f"update L2 norm {norm:.6g} exceeds the clip norm {clip}")
        return delta, weight

    def _apply_secure(
        self,
        start: RoundStart,
        masked_inputs: dict[str, MaskedInput],
        parameters: Parameters,
        outcome: RoundOutcome,
    ) -> Parameters:
        """Unmask the round's sum and step the global model, or abort the round.

        The unmasked sums are checked before use: the total weight must lie in
        [1, survivors x MAX_WEIGHT] and the weighted sum's L2 norm within
        ``update_clip_norm x total weight``, else a hospital sent an input
        outside the protocol's range and the round is aborted.
        """
        assert self.secure is not None
        try:
            weighted_sum, total_weight = self.secure.unmask(
                start, masked_inputs, parameters
            )
        except (SecureAggregationError, ValueError, KeyError) as error:
            outcome.aborted = f"secure aggregation aborted: {error}"
            logger.error("round %d aborted: %s", outcome.round, error)
            return parameters
        survivors = len(self.secure.session.survivors) or len(masked_inputs)
        clip = self.policy.training.update_clip_norm
        norm = parameters_l2_norm(weighted_sum)
        if not (1 <= total_weight <= survivors * MAX_WEIGHT) or not (
            math.isfinite(norm) and norm <= clip * total_weight * (1 + 1e-6)
        ):
            outcome.aborted = (
                "secure aggregation aborted: the unmasked sum is outside the "
                f"protocol's range (total weight {total_weight:g} for {survivors} "
                "hospitals); a hospital sent an invalid input"
            )
            logger.error("round %d aborted: %s", outcome.round, outcome.aborted)
            return parameters
        return self.aggregator.apply_sum(parameters, weighted_sum, total_weight)

    def _send_train(
        self,
        instructions: dict[str, RoundInstruction],
        parameters: Parameters,
        start: RoundStart | None,
    ) -> dict[str, Message]:
        model_record = _model_record(parameters)
        training_record = ConfigRecord(wire.encode_training(self.policy.training))
        messages = []
        for hospital_id, instruction in instructions.items():
            content = RecordDict(
                {
                    wire.INSTRUCTION: ConfigRecord(dict(instruction.to_config())),
                    wire.TRAINING: training_record,
                    wire.GLOBAL_MODEL: model_record,
                }
            )
            if self.secure is not None and start is not None:
                content[wire.SECAGG] = self.secure.round_record(hospital_id, start)
            messages.append(
                Message(
                    content,
                    dst_node_id=self.nodes[hospital_id],
                    message_type=wire.TRAIN,
                    group_id=str(instruction.round),
                )
            )
        by_node = {node: hospital for hospital, node in self.nodes.items()}
        return {
            by_node[reply.metadata.src_node_id]: reply
            for reply in self._exchange(messages)
            if reply.metadata.src_node_id in by_node
        }

    def _record_spend(
        self,
        hospital_id: str,
        instruction: RoundInstruction,
        histories: dict[str, list[DPParameters]],
        *,
        confirmed: bool,
    ) -> float:
        history = [*histories.get(hospital_id, []), instruction.dp]
        epsilon = compute_epsilon(history, self.policy.delta, self.policy.accountant)
        self.ledger.record_spend(
            self.policy.study_id,
            instruction.round,
            instruction.nonce,
            instruction.dp,
            self.policy.accountant,
            self.policy.delta,
            epsilon,
            hospital_id=hospital_id,
        )
        if not confirmed:
            self.ledger.append(
                "unconfirmed_spend",
                {
                    "study_id": self.policy.study_id,
                    "round": instruction.round,
                    "hospital_id": hospital_id,
                    "reason": "no answer; counted as spent because the agent may "
                    "have trained before it failed",
                },
            )
        return epsilon

    def _check_receipt(
        self,
        hospital_id: str,
        instruction: RoundInstruction,
        result: ConfigRecord,
        epsilon: float,
    ) -> str:
        """Return why a hospital's receipt is unacceptable, or an empty string.

        The hub counts a round in which a hospital did not answer as spent, but
        the hospital may never have received it. Where such unconfirmed rounds
        exist, the receipt's epsilon may lie between the epsilon of the
        confirmed rounds alone and the hub's conservative epsilon; otherwise it
        must equal the hub's epsilon.
        """
        try:
            receipt = Receipt.model_validate_json(wire.field_bytes(result, "receipt"))
            lowest = self._confirmed_epsilon(hospital_id, instruction)
            if (
                lowest < epsilon
                and lowest * (1 - 1e-9) <= receipt.epsilon_after <= epsilon
            ):
                epsilon = receipt.epsilon_after
            check_receipt(
                receipt,
                self.roster.hospital_key(hospital_id),
                study_id=instruction.study_id,
                round=instruction.round,
                nonce=instruction.nonce,
                hospital_id=hospital_id,
                dp=instruction.dp,
                accountant=instruction.accountant,
                delta=instruction.delta,
                expected_epsilon=epsilon,
            )
        except (ReceiptSignatureError, ReceiptMismatchError) as error:
            return str(error)
        except (KeyError, ValueError) as error:
            return f"receipt missing or malformed: {error}"
        self.ledger.append(
            "receipt",
            {
                "study_id": instruction.study_id,
                "round": instruction.round,
                "hospital_id": hospital_id,
                "receipt": receipt.to_config(),
            },
        )
        return ""

    def _confirmed_epsilon(
        self, hospital_id: str, instruction: RoundInstruction
    ) -> float:
        """Return the hospital's epsilon after this round over confirmed spends only."""
        unconfirmed = {
            (int(entry.payload["round"]), str(entry.payload["hospital_id"]))
            for entry in self.ledger.entries()
            if entry.kind == "unconfirmed_spend"
            and entry.payload.get("study_id") == self.policy.study_id
        }
        confirmed = [
            DPParameters(**{k: e.payload[k] for k in DPParameters.model_fields})
            for e in self.ledger.spends(self.policy.study_id, hospital_id=hospital_id)
            if (int(e.payload["round"]), hospital_id) not in unconfirmed
            and int(e.payload["round"]) != instruction.round
        ]
        return compute_epsilon(
            [*confirmed, instruction.dp], self.policy.delta, self.policy.accountant
        )

    def _evaluate(
        self, parameters: Parameters, round_number: int
    ) -> dict[str, dict[str, float]]:
        """Return each hospital's metrics of the global model on its test split.

        NOTE: the metrics arrive per hospital in the clear, because the operator
        and the study report need each hospital's accuracy. They describe the
        global model, not a hospital's update, but they are a release computed
        on its test records.
        """
        model_record = _model_record(parameters)
        training_record = ConfigRecord(wire.encode_training(self.policy.training))
        messages = [
            Message(
                RecordDict(
                    {
                        wire.TRAINING: training_record,
                        wire.GLOBAL_MODEL: model_record,
                        wire.EVALUATION: ConfigRecord(
                            {"study_id": self.policy.study_id, "round": round_number}
                        ),
                    }
                ),
                dst_node_id=node,
                message_type=wire.EVALUATE,
            )
            for node in self.nodes.values()
        ]
        by_node = {node: hospital for hospital, node in self.nodes.items()}
        metrics: dict[str, dict[str, float]] = {}
        for reply in self._exchange(messages):
            hospital_id = by_node.get(reply.metadata.src_node_id)
            if hospital_id is None or not reply.has_content():
                continue
            records = reply.content.metric_records
            if wire.METRICS not in records:
                logger.warning("evaluation reply of %s has no metrics", hospital_id)
                continue
            try:
                values = {
                    name: wire.field_number(records[wire.METRICS], name)
                    for name in EVALUATION_METRICS
                }
            except wire.MessageFieldError as error:
                logger.warning("evaluation reply of %s: %s", hospital_id, error)
                continue
            # ROC AUC is NaN where a test split has one class; nothing else may be.
            if not all(
                0.0 <= value <= 1.0 or (name == "roc_auc" and math.isnan(value))
                for name, value in values.items()
            ):
                logger.warning(
                    "evaluation reply of %s has values outside [0, 1]", hospital_id
                )
                continue
            metrics[hospital_id] = values
        return dict(sorted(metrics.items()))

    @staticmethod
    def _summarise_metrics(outcome: RoundOutcome) -> None:
        accuracies = [m["accuracy"] for m in outcome.metrics.values()]
        aucs = [
            m["roc_auc"]
            for m in outcome.metrics.values()
            if not math.isnan(m["roc_auc"])
        ]
        outcome.mean_accuracy = float(np.mean(accuracies)) if accuracies else math.nan
        outcome.mean_roc_auc = float(np.mean(aucs)) if aucs else math.nan

    def _save_round(
        self, round_number: int, parameters: Parameters, outcome: RoundOutcome
    ) -> None:
        path = self.config.models_dir / f"round-{round_number:04d}.npz"
        temporary = path.with_suffix(".tmp.npz")
        np.savez(temporary, **parameters)  # type: ignore[arg-type]
        temporary.replace(path)
        self.ledger.append(
            "round_completed",
            {
                "study_id": self.policy.study_id,
                "round": round_number,
                "trained": outcome.trained,
                "rejected": outcome.rejected,
                "dropped": outcome.dropped,
                "flagged": outcome.flagged,
                "aborted": outcome.aborted,
                "model_sha256": _parameters_hash(parameters),
                "mean_accuracy": None
                if math.isnan(outcome.mean_accuracy)
                else outcome.mean_accuracy,
                "mean_roc_auc": None
                if math.isnan(outcome.mean_roc_auc)
                else outcome.mean_roc_auc,
            },
        )

    def budget_table(self) -> list[dict[str, Any]]:
        """Return each hospital's epsilon spent, budget, delta, rounds and steps."""
        histories = self.histories()
        rows = []
        for hospital_id in self.policy.hospitals:
            history = histories.get(hospital_id, [])
            epsilon = (
                compute_epsilon(history, self.policy.delta, self.policy.accountant)
                if history
                else 0.0
            )
            rows.append(
                {
                    "hospital_id": hospital_id,
                    "epsilon": epsilon,
                    "budget": self.policy.epsilon_budget_for(hospital_id),
                    "delta": self.policy.delta,
                    "accountant": self.policy.accountant,
                    "rounds_joined": len(history),
                    "steps": sum(dp.steps for dp in history),
                }
            )
        return rows

    def _check_not_interrupted(self) -> None:
        """Raise ``StudyInterrupted`` once the engine running the study has stopped."""
        if self._interrupt.is_set():
            raise StudyInterrupted(
                "the Flower engine stopped while the hub waited for the hospitals"
            )

    def _exchange(self, messages: Iterable[Message]) -> list[Message]:
        """Send messages and collect the replies until all arrive or time runs out.

        Flower 1.42's ``Grid.send_and_receive`` on a deployment sleeps 3 s
        between pulls; pulling every ``REPLY_POLL_INTERVAL_S`` instead makes an
        exchange cost what the nodes need, not a multiple of 3 s.
        """
        messages = list(messages)
        if not messages:
            return []
        pending = set(self.grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.monotonic() + self.config.round_timeout_s
        while pending:
            self._check_not_interrupted()
            received = list(self.grid.pull_messages(pending))
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(REPLY_POLL_INTERVAL_S)
        if pending:
            logger.warning(
                "%d of %d replies missing after %.0f s",
                len(pending),
                len(messages),
                self.config.round_timeout_s,
            )
        return replies
