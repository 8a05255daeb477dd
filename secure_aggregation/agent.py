"""Agent-side state machine of the secure-aggregation protocol.

Study setup (once per study, two exchanges through the hub):

1. ``advertise_keys`` returns this party's two X25519 public keys (share
   encryption, masking), signed with its enrolled Ed25519 identity.
2. ``confirm_keys`` verifies every advertisement against the locally pinned
   roster and returns, per peer, an AES-GCM key confirmation over the digest of
   the advertisement bundle. ``receive_confirmations`` fixes the study's key
   set: the peers whose confirmations arrived, all over the same bundle.

Each round (the training exchange, then one unmasking exchange):

3. ``mask_update`` clips, quantizes and masks the update with a fresh self-mask
   seed and per-round pairwise seeds, and Shamir-shares every seed among the
   round's share holders.
4. ``unmask`` returns shares of the self-mask seeds of the survivors and of the
   pairwise seeds that survivors share with dropped parties, never both for one
   party.

No long-term key is ever revealed, so a dropout exposes no other round.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_aggregation import shamir
from secure_aggregation.config import MIN_PARTIES, SecureAggregationConfig
from secure_aggregation.encoding import (
    b64,
    from_json_bytes,
    get_dict,
    get_int,
    get_str,
    get_str_list,
    to_json_bytes,
    unb64,
)
from secure_aggregation.errors import (
    InsufficientPartiesError,
    InsufficientSurvivorsError,
    KeyConfirmationError,
    KeyEpochError,
    MalformedMessageError,
    OverlappingPartyListsError,
    PartyListMismatchError,
    ProtocolStateError,
    ReplayError,
    ShapeMismatchError,
    ShareDecryptionError,
    StaleRoundError,
    UnknownPartyError,
)
from secure_aggregation.graph import neighbor_map
from secure_aggregation.messages import (
    ADVERTISEMENT_BUNDLE_FORMAT,
    CONFIRMATION_BUNDLE_FORMAT,
    UNMASK_RESPONSE_FORMAT,
    KeyAdvertisement,
    MaskedInput,
)
from secure_aggregation.primitives import (
    NONCE_BYTES,
    SEED_BYTES,
    add_mask,
    agree,
    commitment,
    decrypt,
    encode_fields,
    encrypt,
    pairwise_mask_seed,
    share_encryption_key,
)
from secure_aggregation.quantization import Quantizer, clip_update
from secure_aggregation.rounds import (
    check_holder_counts,
    check_study_parameters,
    holders_of,
    party_x_coordinates,
    round_shares_aad,
    smallest_component,
)

logger = logging.getLogger(__name__)

STATE_FORMAT = "healthfed-secagg-agent-state/1"


@dataclass
class _PendingRound:
    round_number: int
    nonce: bytes
    participants: list[str]
    own_shares: dict[str, Any]


@dataclass
class _SetupState:
    peers: dict[str, KeyAdvertisement] = field(default_factory=dict)
    transcript: bytes | None = None
    key_set: list[str] | None = None


class AgentSession:
    """One hospital's secure-aggregation state for one study.

    Create it with ``create``, persist it between messages with ``to_bytes`` or
    ``save`` and restore it with ``from_bytes`` or ``load``. Every method
    validates its whole input before it changes any state.
    """

    def __init__(
        self,
        study_id: str,
        party_id: str,
        identity_key: Ed25519PrivateKey,
        roster: Mapping[str, bytes],
        config: SecureAggregationConfig,
        epoch: int,
        share_private_key: X25519PrivateKey,
        masking_private_key: X25519PrivateKey,
    ) -> None:
        _check_roster(party_id, identity_key, roster, config)
        self.study_id = study_id
        self.party_id = party_id
        self.config = config
        self.epoch = epoch
        self._identity_key = identity_key
        self._roster = dict(roster)
        self._share_key = share_private_key
        self._masking_key = masking_private_key
        self._x_coordinates = party_x_coordinates(self._roster)
        self._neighbors = neighbor_map(study_id, list(self._roster), config.neighbors)
        self._quantizer = Quantizer(
            config.quantization_step, config.weighted_range, config.modulus_bits
        )
        self._setup = _SetupState()
        # Per peer, the newest accepted key epoch and the SHA-256 of that
        # advertisement's signed payload. It survives rotate_keys, so a peer
        # cannot later advertise an older epoch or other keys for the same one.
        self._accepted_keys: dict[str, tuple[int, bytes]] = {}
        self._last_round = -1
        self._used_nonces: set[bytes] = set()
        self._pending: _PendingRound | None = None
        self.last_update_clipped: bool | None = None
        # X25519 results by (purpose, peer, own epoch, peer epoch), kept with
        # the peer key they came from. Memory only: never persisted.
        self._derived_keys: dict[tuple[str, str, int, int], tuple[bytes, bytes]] = {}

    @classmethod
    def create(
        cls,
        study_id: str,
        party_id: str,
        identity_key: Ed25519PrivateKey,
        roster: Mapping[str, bytes],
        config: SecureAggregationConfig,
    ) -> AgentSession:
        """Return a new session with fresh X25519 keys at key epoch 1.

        Args:
            study_id: Study the keys are bound to.
            party_id: This hospital's id in the roster.
            identity_key: This hospital's enrolled Ed25519 identity key.
            roster: Pinned map of party id to raw 32-byte Ed25519 public key,
                held locally and never taken from the hub.
            config: Study parameters, the same at the hub and every agent.

        Raises:
            UnknownPartyError: ``party_id`` is not in the roster, or its key there
                is not ``identity_key``'s public key.
            InsufficientPartiesError: The roster has fewer than 3 parties.
            ValueError: The threshold is not a majority of share holders.
            ModulusTooSmallError: The modulus cannot hold the sum of all parties.

        """
        return cls(
            study_id,
            party_id,
            identity_key,
            roster,
            config,
            epoch=1,
            share_private_key=X25519PrivateKey.generate(),
            masking_private_key=X25519PrivateKey.generate(),
        )

    # Study setup.

    def advertise_keys(self) -> bytes:
        """Return this party's signed key advertisement (setup exchange 1)."""
        advertisement = KeyAdvertisement(
            study_id=self.study_id,
            party_id=self.party_id,
            epoch=self.epoch,
            share_public_key=_public_bytes(self._share_key),
            masking_public_key=_public_bytes(self._masking_key),
        ).sign(self._identity_key)
        logger.info(
            "advertising keys: study=%s party=%s epoch=%d",
            self.study_id,
            self.party_id,
            self.epoch,
        )
        return advertisement.to_bytes()

    def confirm_keys(self, bundle: bytes) -> dict[str, bytes]:
        """Verify the hub's advertisement bundle and return a confirmation per peer.

        Raises InvalidSignatureError, UnknownPartyError, KeyEpochError or
        MalformedMessageError, and keeps no part of a bundle that fails.
        """
        advertisements = self._parse_advertisement_bundle(bundle)
        own = advertisements.get(self.party_id)
        if own is None or not self._is_current(own):
            raise KeyConfirmationError(
                f"advertisement bundle lacks the current keys of party "
                f"{self.party_id!r}. The hub must relay every advertisement it received"
            )
        transcript = _transcript_digest(advertisements)
        confirmations: dict[str, bytes] = {}
        for peer_id, advertisement in sorted(advertisements.items()):
            if peer_id == self.party_id:
                continue
            key = self._share_encryption_key(advertisement)
            aad = _confirmation_aad(
                self.study_id,
                (self.party_id, self.epoch),
                (peer_id, advertisement.epoch),
            )
            confirmations[peer_id] = encrypt(key, transcript, aad)
        self._setup = _SetupState(peers=advertisements, transcript=transcript)
        for peer_id, advertisement in advertisements.items():
            self._accepted_keys[peer_id] = (
                advertisement.epoch,
                hashlib.sha256(advertisement.signed_payload()).digest(),
            )
        logger.info(
            "confirmed %d peer advertisements: study=%s party=%s",
            len(advertisements) - 1,
            self.study_id,
            self.party_id,
        )
        return confirmations

    def receive_confirmations(self, bundle: bytes) -> list[str]:
        """Fix the study's key set from the hub's confirmation bundle.

        The key set is every party whose confirmation decrypts and covers the
        same advertisement bundle as this party's. Returns it, sorted.

        Raises KeyConfirmationError, UnknownPartyError or InsufficientPartiesError.
        """
        if self._setup.transcript is None:
            raise ProtocolStateError("receive_confirmations needs confirm_keys first")
        document = from_json_bytes(CONFIRMATION_BUNDLE_FORMAT, bundle)
        if get_str(document, "study_id") != self.study_id:
            raise KeyConfirmationError("confirmation bundle is for another study")
        key_set = sorted(set(get_str_list(document, "key_set")))
        confirmations = get_dict(document, "confirmations")
        self._check_key_set(key_set, confirmations)
        self._setup.key_set = key_set
        logger.info(
            "study key set fixed: study=%s party=%s size=%d",
            self.study_id,
            self.party_id,
            len(key_set),
        )
        return list(key_set)

    def rotate_keys(self) -> None:
        """Replace both X25519 key pairs and start a new key epoch.

        The study setup must then run again before the next round.
        """
        self._share_key = X25519PrivateKey.generate()
        self._masking_key = X25519PrivateKey.generate()
        self._derived_keys = {}
        self.epoch += 1
        self._setup = _SetupState()
        logger.info(
            "rotated keys: study=%s party=%s epoch=%d",
            self.study_id,
            self.party_id,
            self.epoch,
        )

    @property
    def key_set(self) -> list[str] | None:
        """Parties of the study's key set, or None before setup finished."""
        return None if self._setup.key_set is None else list(self._setup.key_set)

    # Rounds.

    def mask_update(
        self,
        round_number: int,
        nonce: bytes,
        participants: Sequence[str],
        delta: npt.NDArray[np.floating[Any]],
        weight: int,
    ) -> MaskedInput:
        """Clip, quantize and mask ``weight * delta`` for one round.

        Returns the masked vector with this round's share bundles. The delta is
        clipped to L2 norm ``clipping_range`` first, and
        ``last_update_clipped`` records whether that changed it. ``weight`` is
        an integer in [1, max_weight], as ``config.weight_for`` returns.

        Raises:
            ProtocolStateError: The study setup has not finished.
            StaleRoundError: ``round_number`` is not above the last round.
            ReplayError: ``nonce`` was used before.
            UnknownPartyError: A participant is outside the key set.
            InsufficientPartiesError: Fewer than 3 participants, or fewer share
                holders than the threshold for some participant.
            ShapeMismatchError: ``delta`` does not have shape (model_size,).
            QuantizationRangeError: ``delta`` has NaN or infinite values.
            ValueError: ``weight`` is not an integer in [1, max_weight], or not
                ``fixed_weight`` when one is set.

        """
        participant_list = self._check_round_start(round_number, nonce, participants)
        values = self._check_delta(delta, weight)
        clip = clip_update(values, self.config.clipping_range)

        quantized = np.empty(self.config.model_size + 1, dtype=np.uint64)
        quantized[:-1] = self._quantizer.encode(clip.delta * weight)
        quantized[-1] = np.uint64(weight)
        masked, shares, commitments, self_commitment = self._mask(
            round_number, nonce, participant_list, quantized
        )

        encrypted = {}
        for holder, plaintext in shares.items():
            if holder == self.party_id:
                continue
            encrypted[holder] = self._encrypt_round_shares(
                round_number, nonce, holder, plaintext
            )
        self._last_round = round_number
        self._used_nonces.add(nonce)
        self._pending = _PendingRound(
            round_number, nonce, participant_list, shares[self.party_id]
        )
        self.last_update_clipped = clip.clipped
        if clip.clipped:
            logger.info(
                "update clipped to clipping_range: study=%s party=%s round=%d",
                self.study_id,
                self.party_id,
                round_number,
            )
        return MaskedInput(
            party_id=self.party_id,
            round_number=round_number,
            nonce=nonce,
            masked_vector=masked,
            encrypted_shares=encrypted,
            self_mask_commitment=self_commitment,
            pairwise_commitments=commitments,
        )

    def unmask(
        self,
        round_number: int,
        nonce: bytes,
        survivors: Sequence[str],
        dropped: Sequence[str],
        encrypted_shares: Mapping[str, bytes],
    ) -> bytes:
        """Close the open round and return this party's unmasking shares.

        For each survivor, the share of its self-mask seed. For each survivor
        and each dropped neighbor of it, the share of their pairwise seed.

        Raises:
            StaleRoundError: The round or nonce is not the open round's.
            ReplayError: This round was already unmasked.
            UnknownPartyError: A listed party is not a participant of the round.
            OverlappingPartyListsError: A party is both surviving and dropped.
            PartyListMismatchError: The lists do not cover the participants
                exactly, or this party is listed as dropped.
            InsufficientSurvivorsError: Fewer survivors than the threshold.
            ShareDecryptionError: A survivor's share bundle is missing or forged.
            MalformedMessageError: A decrypted share bundle lacks its fields.

        """
        pending = self._check_unmask_request(round_number, nonce, survivors, dropped)
        survivor_set = set(survivors)
        dropped_set = set(dropped)
        bundles = {self.party_id: pending.own_shares}
        for sender in sorted(survivor_set - {self.party_id}):
            if self.party_id not in holders_of(
                sender, pending.participants, self._neighbors
            ):
                continue
            bundles[sender] = self._decrypt_round_shares(
                round_number, nonce, sender, encrypted_shares.get(sender)
            )

        self_mask_shares: dict[str, str] = {}
        pairwise_shares: dict[str, dict[str, str]] = {}
        for owner, bundle in bundles.items():
            self_mask_shares[owner] = bundle["self"]
            pairs = bundle["pairs"]
            revealed = {
                peer: share for peer, share in pairs.items() if peer in dropped_set
            }
            if revealed:
                pairwise_shares[owner] = revealed
        self._pending = None
        logger.info(
            "unmask response: study=%s party=%s round=%d survivors=%d dropped=%d",
            self.study_id,
            self.party_id,
            round_number,
            len(survivor_set),
            len(dropped_set),
        )
        return to_json_bytes(
            UNMASK_RESPONSE_FORMAT,
            {
                "study_id": self.study_id,
                "party_id": self.party_id,
                "round_number": round_number,
                "nonce": b64(nonce),
                "self_mask_shares": self_mask_shares,
                "pairwise_shares": pairwise_shares,
            },
        )

    # Persistence.

    def to_bytes(self) -> bytes:
        """Return the whole session state, private keys included, as JSON.

        The identity key is not included: ``from_bytes`` takes it separately.
        Store the result only in a file readable by the agent alone (``save``).
        """
        setup = self._setup
        pending = self._pending
        body: dict[str, Any] = {
            "study_id": self.study_id,
            "party_id": self.party_id,
            "roster": {party: b64(key) for party, key in sorted(self._roster.items())},
            "config": self.config.model_dump(),
            "epoch": self.epoch,
            "share_private_key": b64(_private_bytes(self._share_key)),
            "masking_private_key": b64(_private_bytes(self._masking_key)),
            "peers": {p: a.to_dict() for p, a in sorted(setup.peers.items())},
            "transcript": None if setup.transcript is None else b64(setup.transcript),
            "key_set": setup.key_set,
            "accepted_keys": {
                party: {"epoch": epoch, "digest": b64(digest)}
                for party, (epoch, digest) in sorted(self._accepted_keys.items())
            },
            "last_round": self._last_round,
            "used_nonces": sorted(b64(n) for n in self._used_nonces),
            "pending": None
            if pending is None
            else {
                "round_number": pending.round_number,
                "nonce": b64(pending.nonce),
                "participants": pending.participants,
                "own_shares": pending.own_shares,
            },
            "last_update_clipped": self.last_update_clipped,
        }
        return to_json_bytes(STATE_FORMAT, body)

    @classmethod
    def from_bytes(cls, data: bytes, identity_key: Ed25519PrivateKey) -> AgentSession:
        """Return the session stored by ``to_bytes``.

        Raises MalformedMessageError on a damaged or foreign state, and
        UnknownPartyError when ``identity_key`` is not the stored party's.
        """
        document = from_json_bytes(STATE_FORMAT, data)
        try:
            return cls._restore(document, identity_key)
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedMessageError(
                f"agent state is damaged: {type(error).__name__}"
            ) from error

    def save(self, path: Path) -> None:
        """Write the state to ``path`` with mode 0600, replacing it atomically.

        Call it after every method that changes state and before sending that
        method's output, so a restarted agent never responds to one round twice.
        """
        temporary = path.with_name(path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(self.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path, identity_key: Ed25519PrivateKey) -> AgentSession:
        """Return the session stored at ``path`` by ``save``."""
        return cls.from_bytes(path.read_bytes(), identity_key)

    @classmethod
    def _restore(
        cls, document: dict[str, Any], identity_key: Ed25519PrivateKey
    ) -> AgentSession:
        session = cls(
            study_id=get_str(document, "study_id"),
            party_id=get_str(document, "party_id"),
            identity_key=identity_key,
            roster={
                party: unb64(key, "roster", 32)
                for party, key in get_dict(document, "roster").items()
            },
            config=SecureAggregationConfig.model_validate(document["config"]),
            epoch=get_int(document, "epoch"),
            share_private_key=X25519PrivateKey.from_private_bytes(
                unb64(document["share_private_key"], "share_private_key", 32)
            ),
            masking_private_key=X25519PrivateKey.from_private_bytes(
                unb64(document["masking_private_key"], "masking_private_key", 32)
            ),
        )
        transcript = document["transcript"]
        key_set = document["key_set"]
        session._setup = _SetupState(
            peers={
                party: KeyAdvertisement.from_dict(entry)
                for party, entry in get_dict(document, "peers").items()
            },
            transcript=None if transcript is None else unb64(transcript, "transcript"),
            key_set=None if key_set is None else get_str_list(document, "key_set"),
        )
        session._accepted_keys = {
            party: (get_int(entry, "epoch"), unb64(entry["digest"], "digest", 32))
            for party, entry in get_dict(document, "accepted_keys").items()
        }
        session._last_round = int(document["last_round"])
        session._used_nonces = {
            unb64(nonce, "used_nonces", NONCE_BYTES)
            for nonce in document["used_nonces"]
        }
        pending = document["pending"]
        if pending is not None:
            session._pending = _PendingRound(
                round_number=get_int(pending, "round_number"),
                nonce=unb64(pending["nonce"], "nonce", NONCE_BYTES),
                participants=get_str_list(pending, "participants"),
                own_shares=get_dict(pending, "own_shares"),
            )
        session.last_update_clipped = document["last_update_clipped"]
        return session

    # Helpers of the setup.

    def _parse_advertisement_bundle(self, bundle: bytes) -> dict[str, KeyAdvertisement]:
        document = from_json_bytes(ADVERTISEMENT_BUNDLE_FORMAT, bundle)
        entries = document.get("advertisements")
        if not isinstance(entries, list):
            raise MalformedMessageError("field advertisements must be a list")
        advertisements: dict[str, KeyAdvertisement] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                raise MalformedMessageError("an advertisement must be an object")
            advertisement = KeyAdvertisement.from_dict(entry)
            self._check_advertisement(advertisement)
            if advertisement.party_id in advertisements:
                raise KeyEpochError(
                    f"bundle contains two advertisements of party "
                    f"{advertisement.party_id!r}. The hub must relay one per party"
                )
            advertisements[advertisement.party_id] = advertisement
        return advertisements

    def _check_advertisement(self, advertisement: KeyAdvertisement) -> None:
        party = advertisement.party_id
        if party not in self._roster:
            raise UnknownPartyError(
                f"advertisement from party {party!r}, which is not in the roster"
            )
        if advertisement.study_id != self.study_id:
            raise ReplayError(
                f"advertisement of party {party!r} is for study "
                f"{advertisement.study_id!r}, not {self.study_id!r}"
            )
        advertisement.verify(self._roster[party])
        accepted = self._accepted_keys.get(party)
        if accepted is None:
            return
        accepted_epoch, accepted_digest = accepted
        if advertisement.epoch < accepted_epoch:
            raise KeyEpochError(
                f"advertisement of party {party!r} has key epoch "
                f"{advertisement.epoch}, older than the accepted epoch "
                f"{accepted_epoch}"
            )
        digest = hashlib.sha256(advertisement.signed_payload()).digest()
        if advertisement.epoch == accepted_epoch and digest != accepted_digest:
            raise KeyEpochError(
                f"party {party!r} has two different advertisements for key epoch "
                f"{advertisement.epoch}"
            )

    def _check_key_set(self, key_set: list[str], confirmations: dict[str, Any]) -> None:
        peers = self._setup.peers
        unknown = [party for party in key_set if party not in peers]
        if unknown:
            raise UnknownPartyError(
                f"key set names {len(unknown)} parties without a verified "
                f"advertisement: {unknown}"
            )
        if self.party_id not in key_set:
            raise KeyConfirmationError(f"key set omits party {self.party_id!r} itself")
        if len(key_set) < max(MIN_PARTIES, self.config.threshold):
            raise InsufficientPartiesError(
                f"key set has {len(key_set)} parties, but a study needs at least "
                f"max(3, threshold={self.config.threshold})"
            )
        assert self._setup.transcript is not None
        for sender in key_set:
            if sender == self.party_id:
                continue
            blob = confirmations.get(sender)
            if not isinstance(blob, str):
                raise KeyConfirmationError(
                    f"key set member {sender!r} sent no key confirmation"
                )
            key = self._share_encryption_key(peers[sender])
            aad = _confirmation_aad(
                self.study_id,
                (sender, peers[sender].epoch),
                (self.party_id, self.epoch),
            )
            digest = decrypt(key, unb64(blob, "confirmation"), aad)
            if digest != self._setup.transcript:
                raise KeyConfirmationError(
                    f"party {sender!r} confirmed a different advertisement bundle"
                )

    def _is_current(self, own: KeyAdvertisement) -> bool:
        return (
            own.epoch == self.epoch
            and own.share_public_key == _public_bytes(self._share_key)
            and own.masking_public_key == _public_bytes(self._masking_key)
        )

    def _share_encryption_key(self, peer: KeyAdvertisement) -> bytes:
        cache_key = ("share", peer.party_id, self.epoch, peer.epoch)
        cached = self._derived_keys.get(cache_key)
        if cached is None or cached[0] != peer.share_public_key:
            secret = agree(self._share_key, peer.share_public_key)
            pair = sorted([(self.party_id, self.epoch), (peer.party_id, peer.epoch)])
            key = share_encryption_key(secret, self.study_id, pair)
            cached = (peer.share_public_key, key)
            self._derived_keys[cache_key] = cached
        return cached[1]

    # Helpers of a round.

    def _check_round_start(
        self, round_number: int, nonce: bytes, participants: Sequence[str]
    ) -> list[str]:
        key_set = self._setup.key_set
        if key_set is None:
            raise ProtocolStateError(
                "mask_update needs a finished study setup (receive_confirmations)"
            )

        if round_number <= self._last_round:
            raise StaleRoundError(
                f"round {round_number} is not after the last round "
                f"{self._last_round}. The hub must open a new round"
            )
        if len(nonce) != NONCE_BYTES:
            raise MalformedMessageError(
                f"round nonce must have {NONCE_BYTES} bytes: got {len(nonce)}"
            )
        if nonce in self._used_nonces:
            raise ReplayError(
                f"the nonce of round {round_number} was used in an earlier round"
            )

        participant_list = sorted(set(participants))
        if len(participant_list) != len(participants):
            raise MalformedMessageError("participant list repeats a party")
        unknown = [party for party in participant_list if party not in key_set]
        if unknown:
            raise UnknownPartyError(
                f"participants outside the study key set: {unknown}"
            )
        if self.party_id not in participant_list:
            raise PartyListMismatchError(
                f"participant list of round {round_number} omits party "
                f"{self.party_id!r}"
            )
        check_holder_counts(participant_list, self._neighbors, self.config.threshold)
        return participant_list

    def _check_delta(
        self, delta: npt.NDArray[np.floating[Any]], weight: int
    ) -> npt.NDArray[np.float64]:
        values = np.asarray(delta)
        expected = (self.config.model_size,)
        if values.shape != expected:
            raise ShapeMismatchError(
                f"update has shape {values.shape}, but the global model has "
                f"{expected}. "
                "Flatten the delta of the study's model"
            )
        largest = self.config.fixed_weight or self.config.max_weight
        if (
            not isinstance(weight, int | np.integer)
            or isinstance(weight, bool)
            or not 1 <= int(weight) <= largest
        ):
            raise ValueError(
                f"weight must be an integer in [1, {largest}]: got {weight!r}. "
                "Use config.weight_for(record_count)"
            )
        if self.config.fixed_weight is not None and weight != self.config.fixed_weight:
            raise ValueError(
                f"weight must equal fixed_weight={self.config.fixed_weight}: "
                f"got {weight}"
            )
        return values.astype(np.float64, copy=False)

    def _mask(
        self,
        round_number: int,
        nonce: bytes,
        participants: list[str],
        quantized: npt.NDArray[np.uint64],
    ) -> tuple[
        npt.NDArray[np.uint64], dict[str, dict[str, Any]], dict[str, bytes], bytes
    ]:
        """Mask ``quantized`` in place and split every seed into shares."""
        bits = self.config.modulus_bits
        holders = holders_of(self.party_id, participants, self._neighbors)
        x_of = {holder: self._x_coordinates[holder] for holder in holders}
        threshold = self.config.threshold

        self_seed = os.urandom(SEED_BYTES)
        masked = quantized
        add_mask(masked, self_seed)
        shares: dict[str, dict[str, Any]] = {h: {"pairs": {}} for h in holders}
        for holder, y in _split(self_seed, threshold, x_of).items():
            shares[holder]["self"] = y
        context = (self.study_id, round_number, nonce, self.party_id)
        self_commitment = commitment(self_seed, *context, "self-mask")

        commitments: dict[str, bytes] = {}
        for peer in sorted(self._neighbors[self.party_id] & set(participants)):
            seed = self._pairwise_seed(round_number, nonce, peer)
            add_mask(masked, seed, subtract=self.party_id > peer)
            for holder, y in _split(seed, threshold, x_of).items():
                shares[holder]["pairs"][peer] = y
            commitments[peer] = commitment(seed, *context, "pairwise", peer)
        if bits < 64:
            masked &= np.uint64((1 << bits) - 1)
        return masked, shares, commitments, self_commitment

    def _pairwise_seed(self, round_number: int, nonce: bytes, peer: str) -> bytes:
        advertisement = self._setup.peers[peer]
        cache_key = ("masking", peer, self.epoch, advertisement.epoch)
        cached = self._derived_keys.get(cache_key)
        if cached is None or cached[0] != advertisement.masking_public_key:
            agreed = agree(self._masking_key, advertisement.masking_public_key)
            cached = (advertisement.masking_public_key, agreed)
            self._derived_keys[cache_key] = cached
        secret = cached[1]
        pair = sorted([(self.party_id, self.epoch), (peer, advertisement.epoch)])
        return pairwise_mask_seed(secret, self.study_id, round_number, nonce, pair)

    def _encrypt_round_shares(
        self, round_number: int, nonce: bytes, holder: str, plaintext: dict[str, Any]
    ) -> bytes:
        peer = self._setup.peers[holder]
        aad = round_shares_aad(
            self.study_id,
            round_number,
            nonce,
            (self.party_id, self.epoch),
            (holder, peer.epoch),
        )
        payload = to_json_bytes("healthfed-secagg-round-shares/1", plaintext)
        return encrypt(self._share_encryption_key(peer), payload, aad)

    def _decrypt_round_shares(
        self, round_number: int, nonce: bytes, sender: str, blob: bytes | None
    ) -> dict[str, Any]:
        if blob is None:
            raise ShareDecryptionError(
                f"unmask request lacks the share bundle of survivor {sender!r}"
            )
        peer = self._setup.peers[sender]
        aad = round_shares_aad(
            self.study_id,
            round_number,
            nonce,
            (sender, peer.epoch),
            (self.party_id, self.epoch),
        )
        plaintext = decrypt(self._share_encryption_key(peer), blob, aad)
        document = from_json_bytes("healthfed-secagg-round-shares/1", plaintext)
        self_share = document.get("self")
        pairs = document.get("pairs")
        if (
            not isinstance(self_share, str)
            or not isinstance(pairs, dict)
            or not all(isinstance(v, str) for v in pairs.values())
        ):
            raise MalformedMessageError(
                f"share bundle of survivor {sender!r} lacks its self-mask share "
                "or pairwise shares"
            )
        return {"self": self_share, "pairs": pairs}

    def _check_unmask_request(
        self,
        round_number: int,
        nonce: bytes,
        survivors: Sequence[str],
        dropped: Sequence[str],
    ) -> _PendingRound:
        pending = self._pending
        if pending is None:
            if round_number == self._last_round:
                raise ReplayError(
                    f"round {round_number} was already unmasked by party "
                    f"{self.party_id!r}"
                )
            raise StaleRoundError(
                f"no round is open at party {self.party_id!r}, but got an unmask "
                f"request for round {round_number}"
            )
        if round_number != pending.round_number:
            raise StaleRoundError(
                f"unmask request for round {round_number}, but the open round is "
                f"{pending.round_number}"
            )
        if nonce != pending.nonce:
            raise ReplayError(
                f"unmask request for round {round_number} carries another round's nonce"
            )
        participants = set(pending.participants)
        survivor_set = set(survivors)
        dropped_set = set(dropped)
        unknown = sorted((survivor_set | dropped_set) - participants)
        if unknown:
            raise UnknownPartyError(
                f"unmask request names parties outside round {round_number}: {unknown}"
            )
        overlap = sorted(survivor_set & dropped_set)
        if overlap:
            raise OverlappingPartyListsError(
                f"parties listed as both surviving and dropped: {overlap}"
            )

        if (
            len(survivor_set) != len(survivors)
            or len(dropped_set) != len(dropped)
            or survivor_set | dropped_set != participants
            or self.party_id not in survivor_set
        ):
            raise PartyListMismatchError(
                f"survivor and dropped lists of round {round_number} must list "
                "each participant once, and this party as a survivor"
            )
        if len(survivor_set) < max(MIN_PARTIES, self.config.threshold):
            raise InsufficientSurvivorsError(
                f"{len(survivor_set)} survivors in round {round_number}, but unmasking "
                f"needs at least max(3, threshold={self.config.threshold})"
            )
        smallest = smallest_component(survivor_set, self._neighbors)
        if smallest < max(MIN_PARTIES, self.config.threshold):
            raise InsufficientSurvivorsError(
                f"the survivors of round {round_number} include a group of "
                f"{smallest} parties without surviving neighbors outside it, and "
                "its sum would unmask alone. Each group needs at least max(3, "
                f"threshold={self.config.threshold})"
            )
        return pending


def _split(secret: bytes, threshold: int, x_of: dict[str, int]) -> dict[str, str]:
    points = shamir.split_secret(
        int.from_bytes(secret, "big"), threshold, list(x_of.values())
    )
    return {
        holder: b64(shamir.encode_share(x, points[x])) for holder, x in x_of.items()
    }


def _transcript_digest(advertisements: Mapping[str, KeyAdvertisement]) -> bytes:
    digest = hashlib.sha256()
    for _, advertisement in sorted(advertisements.items()):
        digest.update(encode_fields(advertisement.signed_payload()))
    return digest.digest()


def _confirmation_aad(
    study_id: str, sender: tuple[str, int], recipient: tuple[str, int]
) -> bytes:
    return encode_fields("key-confirmation", study_id, *sender, *recipient)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _check_roster(
    party_id: str,
    identity_key: Ed25519PrivateKey,
    roster: Mapping[str, bytes],
    config: SecureAggregationConfig,
) -> None:
    if party_id not in roster:
        raise UnknownPartyError(f"party {party_id!r} is not in the roster")
    if roster[party_id] != identity_key.public_key().public_bytes_raw():
        raise UnknownPartyError(
            f"identity key does not match the roster entry of party {party_id!r}"
        )
    check_study_parameters(len(roster), config)
