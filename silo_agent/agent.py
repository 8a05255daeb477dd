"""The hospital's agent: checks each instruction, spends budget, trains, replies.

One ``SiloAgent`` serves one hospital. It loads the hospital's records once,
validates them against the pinned schema and encodes them from the schema alone,
then handles the hub's requests. Every instruction is checked against the
hospital's own policy, and the spend is committed to the hospital's ledger
before training starts (write-ahead), so a crash never forgets spent budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from policies.architecture import build_model, parameters_l2_norm
from policies.enforcement import (
    InstructionRejected,
    RoundInstruction,
    check_instruction,
)
from policies.identity import load_private_key
from policies.ledger import Ledger, LedgerEntry
from policies.models import HospitalPolicy, TrainingConfig, load_hospital_policy
from policies.receipts import Receipt, sign_receipt
from policies.roster import (
    Roster,
    identify_message,
    load_roster,
    spend_status_message,
)
from schemas import Schema, load_schema
from schemas.encoding import FeatureEncoder
from schemas.validation import validate_file
from secure_aggregation.transport import flatten_parameters, masked_input_to_fields
from silo_agent.config import AgentConfig
from silo_agent.secure import SecureAggregationState
from silo_agent.training import (
    Parameters,
    TrainingSettings,
    evaluate,
    load_parameters,
    train_dp_sgd,
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) in the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class CohortError(ValueError):
    """The hospital's accepted records cannot form a training and a test split."""


@dataclass(frozen=True)
class Cohort:
    """The hospital's encoded records, split once into training and test rows."""

    train_features: NDArray[np.float32]
    train_labels: NDArray[np.int64]
    test_features: NDArray[np.float32]
    test_labels: NDArray[np.int64]
    total_rows: int
    quarantined_rows: int


@dataclass(frozen=True)
class SecureRound:
    """The secure-aggregation part of a round instruction."""

    participants: list[str]
    """Hospitals whose masks cancel in this round's sum, this one included."""
    confirmations: bytes | None = None
    """The key confirmations relayed by the hub, sent with the first round
    after a key setup to close it."""


@dataclass(frozen=True)
class TrainReply:
    """The reply an agent releases for one round.

    In plain mode the clipped delta and the record count travel in the clear. In
    secure mode only the masked input leaves: the weight (record count) is a
    masked coordinate of it, and whether the delta was clipped is not sent.
    """

    receipt: Receipt
    delta: Parameters | None = None
    num_examples: int | None = None
    masked_fields: dict[str, Any] | None = None
    masked_vector: NDArray[np.uint64] | None = None
    clipped: bool = False


def load_cohort(config: AgentConfig, schema: Schema) -> Cohort:
    """Validate, encode and split the hospital's records.

    The split is stratified by label and seeded by ``config.split_seed`` over the
    accepted rows in file order, so the same file always gives the same test
    rows, and no test row ever trains.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    result = validate_file(config.data, schema, quarantine_path=config.quarantine_path)
    if result.quarantined_rows:
        logger.warning(
            "%s: %d of %d rows quarantined in %s",
            config.hospital_id,
            result.quarantined_rows,
            result.total_rows,
            config.quarantine_path,
        )
    encoder = FeatureEncoder(schema)
    features = encoder.transform(result.accepted)
    labels = encoder.labels(result.accepted)
    counts = np.bincount(labels, minlength=encoder.num_classes)
    if np.any(counts < 2):
        raise CohortError(
            f"{config.data}: class counts {counts.tolist()} leave a class with fewer "
            "than 2 accepted rows, so no stratified test split exists; add records "
            "or check the label mapping in the schema"
        )
    train_x, test_x, train_y, test_y = train_test_split(
        features,
        labels,
        test_size=config.test_fraction,
        stratify=labels,
        random_state=config.split_seed,
    )
    return Cohort(
        train_features=np.ascontiguousarray(train_x, dtype=np.float32),
        train_labels=np.ascontiguousarray(train_y, dtype=np.int64),
        test_features=np.ascontiguousarray(test_x, dtype=np.float32),
        test_labels=np.ascontiguousarray(test_y, dtype=np.int64),
        total_rows=result.total_rows,
        quarantined_rows=result.quarantined_rows,
    )


def clip_delta(delta: Parameters, clip_norm: float) -> tuple[Parameters, float, bool]:
    """Scale ``delta`` to L2 norm at most ``clip_norm`` over all its tensors.

    Returns the clipped delta, the norm before clipping and whether it was scaled.
    """
    norm = parameters_l2_norm(delta)
    if norm <= clip_norm:
        return delta, norm, False
    scale = clip_norm / norm
    return {k: (v * scale).astype(np.float32) for k, v in delta.items()}, norm, True


class SiloAgent:
    """One hospital's agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.schema = load_schema(config.schema_file)
        self.policy: HospitalPolicy = load_hospital_policy(config.policy)
        if self.policy.hospital_id != config.hospital_id:
            raise ValueError(
                f"hospital policy {config.policy} is for {self.policy.hospital_id!r}, "
                f"the agent is {config.hospital_id!r}; point the agent at its own "
                "policy"
            )
        self.roster: Roster = load_roster(config.roster)
        self.roster.hospital_key(config.hospital_id)
        self._identity: Ed25519PrivateKey = load_private_key(config.identity_key)
        self.encoder = FeatureEncoder(self.schema)
        self.cohort = load_cohort(config, self.schema)
        self.ledger = Ledger.open(
            config.ledger_path, config.hospital_id, self._identity
        )
        self.secure = SecureAggregationState(
            config.hospital_id, self._identity, self.roster, config.state_dir
        )
        logger.info(
            "agent %s ready: %d training rows, %d test rows, %d quarantined, schema %s",
            config.hospital_id,
            len(self.cohort.train_labels),
            len(self.cohort.test_labels),
            self.cohort.quarantined_rows,
            self.schema.content_hash[:12],
        )

    @property
    def hospital_id(self) -> str:
        """The hospital's enrolled identifier."""
        return self.config.hospital_id

    def identify(self, study_id: str, challenge: bytes, node_id: int) -> bytes:
        """Sign the hub's challenge, binding the study, the hospital and the node."""
        if len(challenge) != 32:
            raise ValueError(
                f"identification challenge has {len(challenge)} bytes, expected 32"
            )
        message = identify_message(study_id, self.hospital_id, node_id, challenge)
        return self._identity.sign(message)

    def train(
        self,
        instruction: RoundInstruction,
        training: TrainingConfig,
        global_parameters: Parameters,
        secure_round: SecureRound | None = None,
    ) -> TrainReply:
        """Check, pay for and run one round; return the update to release.

        The spend is committed to the ledger before training starts. A retry of
        the same round and nonce spends nothing more: it resends the stored
        reply, or trains again when the process died before anything was
        stored, so nothing was released.

        Raises:
            InstructionRejected: the instruction breaks this hospital's policy or
                pins another schema; nothing was spent.
            SecureAggregationError: the secure-aggregation part is invalid.

        """
        outbox = self._outbox_path(instruction)
        if outbox.exists():
            logger.info(
                "%s: round %d nonce %s already trained; sending the stored reply",
                self.hospital_id,
                instruction.round,
                instruction.nonce,
            )
            return self._load_reply(outbox)
        approved = self.policy.approved_studies
        if approved is not None and instruction.study_id not in approved:
            raise InstructionRejected(
                f"study {instruction.study_id!r} is not in the approved studies "
                f"{list(approved)}",
                limit="approved_studies",
            )
        if instruction.secure_aggregation and secure_round is None:
            raise InstructionRejected(
                "the instruction asks for secure aggregation but carries no "
                "participant list",
                limit="secure_aggregation",
            )
        if secure_round is not None and not instruction.secure_aggregation:
            raise InstructionRejected(
                "the instruction carries secure-aggregation data but asks for plain "
                "aggregation",
                limit="secure_aggregation",
            )
        if secure_round is not None and secure_round.confirmations is not None:
            self.secure.finish_setup(instruction.study_id, secure_round.confirmations)

        epsilon_after = self._spend(instruction)
        delta = self._train_delta(instruction, training, global_parameters)
        receipt = sign_receipt(
            self._identity,
            study_id=instruction.study_id,
            round=instruction.round,
            nonce=instruction.nonce,
            hospital_id=self.hospital_id,
            dp=instruction.dp,
            accountant=instruction.accountant,
            delta=instruction.delta,
            epsilon_after=epsilon_after,
            ledger_head_hash=self.ledger.head_hash,
        )
        record_count = len(self.cohort.train_labels)
        if secure_round is None:
            clipped_delta, _, clipped = clip_delta(delta, training.update_clip_norm)
            reply = TrainReply(
                receipt=receipt,
                delta=clipped_delta,
                num_examples=record_count,
                clipped=clipped,
            )
        else:
            masked, clipped = self.secure.mask(
                instruction.study_id,
                instruction.round,
                bytes.fromhex(instruction.nonce),
                secure_round.participants,
                flatten_parameters(delta),
                self.secure.weight_for(instruction.study_id, record_count),
            )
            fields, vector = masked_input_to_fields(masked)
            reply = TrainReply(
                receipt=receipt,
                masked_fields=fields,
                masked_vector=vector,
                clipped=clipped,
            )
        if clipped:
            logger.info(
                "%s: round %d update clipped to L2 norm %s",
                self.hospital_id,
                instruction.round,
                training.update_clip_norm,
            )
        self._store_reply(outbox, reply)
        return reply

    def _spend(self, instruction: RoundInstruction) -> float:
        """Check the instruction and commit its spend; return epsilon after it.

        The check and the write hold an exclusive lock on the state folder, so two
        instructions handled at once cannot both pass the budget check.
        """
        with _exclusive_lock(self.config.state_dir / "spend.lock"):
            spend = self.ledger.find_spend(
                instruction.study_id, instruction.round, instruction.nonce
            )
            if spend is None and self._voided(instruction.study_id, instruction.nonce):
                raise InstructionRejected(
                    f"nonce {instruction.nonce} of round {instruction.round} was "
                    "reported to the hub as never spent and is void",
                    limit="voided",
                )
            if spend is not None:
                # Committed before a crash, and nothing was released: train again
                # under the same spend, but only with the parameters it paid for.
                self._check_retry_matches(instruction, spend)
                return float(spend.payload["epsilon_after"])
            epsilon_after = check_instruction(
                self.policy,
                instruction,
                self.ledger.history(instruction.study_id),
                self.ledger.history(),
                len(self.cohort.train_labels),
                pinned_schema_hash=self.schema.content_hash,
            )
            self.ledger.record_spend(
                instruction.study_id,
                instruction.round,
                instruction.nonce,
                instruction.dp,
                instruction.accountant,
                instruction.delta,
                epsilon_after,
            )
            return epsilon_after

    def spend_status(self, study_id: str, nonces: list[str]) -> tuple[list[str], bytes]:
        """Report which of ``nonces`` this hospital spent on; void the others.

        The hub asks after it restarted in the middle of a round. A nonce this
        hospital never spent on is voided in the ledger first, so a late copy of
        that instruction is rejected and the answer stays true. Returns the
        spent nonces and an Ed25519 signature over the question and the answer.
        """
        with _exclusive_lock(self.config.state_dir / "spend.lock"):
            spent = sorted(
                str(entry.payload["nonce"])
                for entry in self.ledger.spends(study_id)
                if entry.payload["nonce"] in nonces
            )
            for nonce in sorted(set(nonces) - set(spent)):
                if not self._voided(study_id, nonce):
                    self.ledger.append("voided", {"study_id": study_id, "nonce": nonce})
        message = spend_status_message(study_id, self.hospital_id, nonces, spent)
        return spent, self._identity.sign(message)

    def _voided(self, study_id: str, nonce: str) -> bool:
        return any(
            entry.kind == "voided"
            and entry.payload["study_id"] == study_id
            and entry.payload["nonce"] == nonce
            for entry in self.ledger.entries()
        )

    def _check_retry_matches(
        self, instruction: RoundInstruction, spend: LedgerEntry
    ) -> None:
        """Reject a retry whose DP parameters differ from the spend on record."""
        recorded = spend.payload
        mismatched = [
            name
            for name in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm")
            if recorded[name] != getattr(instruction.dp, name)
        ]
        if recorded["accountant"] != instruction.accountant:
            mismatched.append("accountant")
        if recorded["delta"] != instruction.delta:
            mismatched.append("delta")
        if instruction.schema_hash != self.schema.content_hash:
            mismatched.append("schema_hash")
        if mismatched:
            raise InstructionRejected(
                f"round {instruction.round} nonce {instruction.nonce} was already "
                f"paid for with other values of {', '.join(mismatched)}; a retry "
                "must repeat the original instruction",
                limit="retry",
            )

    def _train_delta(
        self,
        instruction: RoundInstruction,
        training: TrainingConfig,
        global_parameters: Parameters,
    ) -> Parameters:
        """Run local DP-SGD from the global model; return the parameter change."""
        model = self.build_model(training)
        load_parameters(model, global_parameters)
        outcome = train_dp_sgd(
            model,
            self.cohort.train_features,
            self.cohort.train_labels,
            TrainingSettings(
                noise_multiplier=instruction.dp.noise_multiplier,
                sample_rate=instruction.dp.sample_rate,
                steps=instruction.dp.steps,
                max_grad_norm=instruction.dp.max_grad_norm,
                learning_rate=training.learning_rate,
                seed=int.from_bytes(os.urandom(8), "little"),
            ),
        )
        return {
            name: outcome.parameters[name] - global_parameters[name]
            for name in global_parameters
        }

    def build_model(self, training: TrainingConfig) -> torch.nn.Module:
        """Build the study's model for this schema's feature vector."""
        return build_model(
            training.model, len(self.encoder.feature_names), training.hidden_units
        )

    def model_size(self, training: TrainingConfig) -> int:
        """Return the number of parameters of the study's model."""
        return sum(p.numel() for p in self.build_model(training).parameters())

    def evaluate(
        self,
        study_id: str,
        round_number: int,
        training: TrainingConfig,
        parameters: Parameters,
    ) -> dict[str, float]:
        """Evaluate the global model on the fixed test split, once per round.

        Only accuracy and ROC AUC leave the agent, never the split's size or the
        loss, and each evaluation is recorded in the ledger. A second request
        for the same or an earlier round of the study is rejected, so a hub
        cannot probe the test records with many chosen models.

        NOTE: one chosen model per round still reveals a statistic of the test
        split (a constant model's accuracy is its share of positive labels).
        Removing that needs the metrics summed under secure aggregation.

        Raises:
            InstructionRejected: this round of the study was already evaluated.

        """
        with _exclusive_lock(self.config.state_dir / "spend.lock"):
            for entry in self.ledger.entries():
                if (
                    entry.kind == "evaluation"
                    and entry.payload["study_id"] == study_id
                    and int(entry.payload["round"]) >= round_number
                ):
                    raise InstructionRejected(
                        f"round {round_number} of study {study_id} is not after the "
                        f"last evaluated round {entry.payload['round']}",
                        limit="evaluation",
                    )
            model = self.build_model(training)
            load_parameters(model, parameters)
            self.ledger.append(
                "evaluation", {"study_id": study_id, "round": round_number}
            )
        metrics = evaluate(model, self.cohort.test_features, self.cohort.test_labels)
        return {"accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"]}

    def _outbox_path(self, instruction: RoundInstruction) -> Path:
        key = f"{instruction.study_id}\0{instruction.round}\0{instruction.nonce}"
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        return (
            self.config.state_dir / "outbox" / f"round-{instruction.round}-{digest}.npz"
        )

    def _store_reply(self, path: Path, reply: TrainReply) -> None:
        """Write the reply atomically, so a retry resends exactly what was trained."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        if reply.delta is not None:
            arrays.update({f"delta/{name}": v for name, v in reply.delta.items()})
        if reply.masked_vector is not None:
            arrays["masked/vector"] = reply.masked_vector
        meta = {
            "receipt": reply.receipt.model_dump(),
            "num_examples": reply.num_examples,
            "clipped": reply.clipped,
            "masked_fields": None
            if reply.masked_fields is None
            else {
                key: {"bytes": value.hex()} if isinstance(value, bytes) else value
                for key, value in reply.masked_fields.items()
            },
        }
        arrays["meta/json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, delete=False, suffix=".tmp"
        ) as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)

    def _load_reply(self, path: Path) -> TrainReply:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["meta/json"].tobytes())
            delta = {
                key.removeprefix("delta/"): stored[key]
                for key in stored.files
                if key.startswith("delta/")
            }
            vector = (
                stored["masked/vector"] if "masked/vector" in stored.files else None
            )
        fields = meta["masked_fields"]
        if fields is not None:
            fields = {
                key: bytes.fromhex(value["bytes"]) if isinstance(value, dict) else value
                for key, value in fields.items()
            }
        return TrainReply(
            receipt=Receipt.model_validate(meta["receipt"]),
            delta=delta or None,
            num_examples=meta["num_examples"],
            masked_fields=fields,
            masked_vector=vector,
            clipped=meta["clipped"],
        )


__all__ = ["InstructionRejected", "SecureRound", "SiloAgent", "TrainReply"]
