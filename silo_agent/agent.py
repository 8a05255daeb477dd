"""The hospital's agent: checks each instruction, spends budget, trains, replies.

One ``SiloAgent`` serves one hospital. It loads the hospital's records once,
validates them against the pinned schema and encodes them from the schema alone,
then answers the hub's requests. Every instruction is checked against the
hospital's own policy, and the spend is committed to the hospital's ledger
before training starts (write-ahead), so a crash never forgets spent budget.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from policies.architecture import build_model
from policies.enforcement import (
    InstructionRejected,
    RoundInstruction,
    check_instruction,
)
from policies.identity import load_private_key
from policies.ledger import Ledger, LedgerEntry
from policies.models import HospitalPolicy, TrainingConfig, load_hospital_policy
from policies.receipts import Receipt, sign_receipt
from policies.roster import Roster, identify_message, load_roster
from schemas import Schema, load_schema
from schemas.encoding import FeatureEncoder
from schemas.validation import validate_file
from silo_agent.config import AgentConfig
from silo_agent.training import (
    Parameters,
    TrainingSettings,
    evaluate,
    load_parameters,
    train_dp_sgd,
)

logger = logging.getLogger(__name__)


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
class TrainReply:
    """What the agent releases for one round: the clipped delta and its receipt."""

    delta: Parameters
    num_examples: int
    receipt: Receipt
    delta_norm: float
    clipped: bool


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
    norm = float(
        np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values()))
    )
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
    ) -> TrainReply:
        """Check, pay for and run one round; return the update to release.

        Raises:
            InstructionRejected: the instruction breaks this hospital's policy or
                pins another schema; nothing was spent.

        """
        outbox = self._outbox_path(instruction)
        if outbox.exists():
            logger.info(
                "%s: round %d nonce %s already trained; sending the stored update",
                self.hospital_id,
                instruction.round,
                instruction.nonce,
            )
            return self._load_reply(outbox)

        spend = self._recorded_spend(instruction)
        if spend is None:
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
        else:
            # The spend was committed before a crash and nothing was released:
            # train again under the same spend.
            epsilon_after = float(spend.payload["epsilon_after"])

        model = build_model(
            training.model, len(self.encoder.feature_names), training.hidden_units
        )
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
        raw_delta = {
            name: outcome.parameters[name] - global_parameters[name]
            for name in global_parameters
        }
        delta, norm, clipped = clip_delta(raw_delta, training.update_clip_norm)
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
        reply = TrainReply(
            delta=delta,
            num_examples=len(self.cohort.train_labels),
            receipt=receipt,
            delta_norm=norm,
            clipped=clipped,
        )
        self._store_reply(outbox, reply)
        return reply

    def evaluate(
        self, training: TrainingConfig, parameters: Parameters
    ) -> dict[str, float]:
        """Evaluate the global model on this hospital's fixed test split."""
        model = build_model(
            training.model, len(self.encoder.feature_names), training.hidden_units
        )
        load_parameters(model, parameters)
        return evaluate(model, self.cohort.test_features, self.cohort.test_labels)

    def _recorded_spend(self, instruction: RoundInstruction) -> LedgerEntry | None:
        for entry in self.ledger.spends(instruction.study_id):
            if (
                entry.payload["round"] == instruction.round
                and entry.payload["nonce"] == instruction.nonce
            ):
                return entry
        return None

    def _outbox_path(self, instruction: RoundInstruction) -> Path:
        key = f"{instruction.study_id}\0{instruction.round}\0{instruction.nonce}"
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        return (
            self.config.state_dir / "outbox" / f"round-{instruction.round}-{digest}.npz"
        )

    def _store_reply(self, path: Path, reply: TrainReply) -> None:
        """Write the reply atomically, so a retry resends exactly what was trained."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"delta/{name}": value for name, value in reply.delta.items()}
        arrays["meta/num_examples"] = np.asarray(reply.num_examples)
        arrays["meta/delta_norm"] = np.asarray(reply.delta_norm)
        arrays["meta/clipped"] = np.asarray(reply.clipped)
        arrays["meta/receipt"] = np.frombuffer(
            reply.receipt.model_dump_json().encode("utf-8"), dtype=np.uint8
        )
        with tempfile.NamedTemporaryFile(
            dir=path.parent, delete=False, suffix=".tmp"
        ) as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)

    def _load_reply(self, path: Path) -> TrainReply:
        with np.load(path, allow_pickle=False) as stored:
            delta = {
                key.removeprefix("delta/"): stored[key]
                for key in stored.files
                if key.startswith("delta/")
            }
            return TrainReply(
                delta=delta,
                num_examples=int(stored["meta/num_examples"]),
                receipt=Receipt.model_validate_json(stored["meta/receipt"].tobytes()),
                delta_norm=float(stored["meta/delta_norm"]),
                clipped=bool(stored["meta/clipped"]),
            )


__all__ = ["InstructionRejected", "SiloAgent", "TrainReply"]
