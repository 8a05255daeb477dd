"""The agent's side of secure aggregation, with its state kept on disk.

On a Flower deployment every message starts a fresh ClientApp process, so the
agent's secure-aggregation session (its X25519 private keys, the study's key set
and the open round) is loaded from a 0600 file in the hospital's state folder
before each step and saved after it, before any reply leaves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from policies.models import TrainingConfig
from policies.roster import Roster
from secure_aggregation.agent import AgentSession
from secure_aggregation.config import SecureAggregationConfig
from secure_aggregation.errors import SecureAggregationError
from secure_aggregation.messages import MaskedInput

logger = logging.getLogger(__name__)


# The same identifiers as policies' study ids, minus a leading dot ("..").
_STUDY_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


class SecureAggregationRejected(SecureAggregationError):
    """The hub's secure-aggregation settings break the agent's own checks."""


def config_from_fields(fields: Mapping[str, Any]) -> SecureAggregationConfig:
    """Rebuild the study's secure-aggregation settings sent by the hub."""
    try:
        return SecureAggregationConfig(**dict(fields))
    except (ValidationError, TypeError) as error:
        raise SecureAggregationRejected(
            f"invalid secure-aggregation settings: {error}"
        ) from None


def config_to_fields(config: SecureAggregationConfig) -> dict[str, Any]:
    """Flatten secure-aggregation settings, leaving out unset optional values."""
    return {k: v for k, v in config.model_dump().items() if v is not None}


class SecureAggregationState:
    """One hospital's secure-aggregation sessions, one file per study."""

    def __init__(
        self,
        hospital_id: str,
        identity_key: Ed25519PrivateKey,
        roster: Roster,
        state_dir: Path,
    ) -> None:
        self.hospital_id = hospital_id
        self._identity_key = identity_key
        self._roster = roster
        self._state_dir = state_dir

    def _path(self, study_id: str) -> Path:
        """Return the study's state file; the hub chooses ``study_id``, so check it."""
        if not _STUDY_ID.fullmatch(study_id):
            raise SecureAggregationRejected(
                "study id must be 1-128 letters, digits, '.', '_' or '-' and not "
                "start with '.'"
            )
        folder = (self._state_dir / "secure-aggregation").resolve()
        path = (folder / f"{study_id}.json").resolve()
        if path.parent != folder:
            raise SecureAggregationRejected(
                "study id does not name a file in the state"
            )
        return path

    def _load(self, study_id: str) -> AgentSession:
        path = self._path(study_id)
        if not path.exists():
            raise SecureAggregationRejected(
                f"no secure-aggregation keys for study {study_id}; the hub must run "
                "the key setup before the first secure round"
            )
        return AgentSession.load(path, self._identity_key)

    def _save(self, session: AgentSession) -> None:
        path = self._path(session.study_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        session.save(path)

    def advertise(
        self,
        study_id: str,
        parties: Sequence[str],
        config: SecureAggregationConfig,
        training: TrainingConfig,
        model_size: int,
    ) -> bytes:
        """Check the study's settings, create fresh keys and return the advertisement.

        Every key setup creates new X25519 keys, so keys never outlive a setup.

        Raises:
            SecureAggregationRejected: the settings do not match this agent's
                model, clip norm or roster.

        """
        if config.model_size != model_size:
            raise SecureAggregationRejected(
                f"secure-aggregation model_size {config.model_size} differs from the "
                f"local model's {model_size} parameters"
            )
        if config.clipping_range != training.update_clip_norm:
            raise SecureAggregationRejected(
                f"secure-aggregation clipping_range {config.clipping_range} differs "
                f"from the study's update_clip_norm {training.update_clip_norm}"
            )
        if self.hospital_id not in parties:
            raise SecureAggregationRejected(
                f"the study's parties {list(parties)} do not include this hospital"
            )
        roster = {
            party: self._roster.hospital_key(party).public_bytes(
                Encoding.Raw, PublicFormat.Raw
            )
            for party in parties
        }
        session = AgentSession.create(
            study_id, self.hospital_id, self._identity_key, roster, config
        )
        self._save(session)
        logger.info(
            "%s created secure-aggregation keys for study %s with %d parties",
            self.hospital_id,
            study_id,
            len(parties),
        )
        return session.advertise_keys()

    def confirm(self, study_id: str, bundle: bytes) -> dict[str, bytes]:
        """Verify every peer's signed keys and return a key confirmation per peer."""
        session = self._load(study_id)
        confirmations = session.confirm_keys(bundle)
        self._save(session)
        return confirmations

    def finish_setup(self, study_id: str, bundle: bytes) -> list[str]:
        """Fix the study's key set from the confirmations the hub relayed."""
        session = self._load(study_id)
        key_set = session.receive_confirmations(bundle)
        self._save(session)
        return key_set

    def mask(
        self,
        study_id: str,
        round_number: int,
        nonce: bytes,
        participants: Sequence[str],
        delta: np.ndarray,
        weight: int,
    ) -> tuple[MaskedInput, bool]:
        """Mask ``weight * delta`` for one round; return it and whether it was clipped.

        The session, which now holds this round's secrets, is saved before the
        masked input is returned.
        """
        session = self._load(study_id)
        masked = session.mask_update(round_number, nonce, participants, delta, weight)
        self._save(session)
        return masked, bool(session.last_update_clipped)

    def weight_for(self, study_id: str, record_count: int) -> int:
        """Return the FedAvg weight this hospital sends, masked, in the study."""
        return self._load(study_id).config.weight_for(record_count)

    def unmask(
        self,
        study_id: str,
        round_number: int,
        nonce: bytes,
        survivors: Sequence[str],
        dropped: Sequence[str],
        encrypted_shares: Mapping[str, bytes],
    ) -> bytes:
        """Return this hospital's unmasking shares for the open round."""
        session = self._load(study_id)
        response = session.unmask(
            round_number, nonce, survivors, dropped, encrypted_shares
        )
        self._save(session)
        return response
