"""Hub-side state machine of the secure-aggregation protocol.

The hub relays advertisements, key confirmations and share bundles that it
cannot read, and collects masked inputs. From the survivors' shares it
reconstructs only the seeds whose masks remain in the sum: each survivor's
self-mask seed and the pairwise seeds between survivors and dropped parties.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_aggregation import shamir
from secure_aggregation.config import MIN_PARTIES, SecureAggregationConfig
from secure_aggregation.encoding import (
    b64,
    from_json_bytes,
    get_dict,
    get_int,
    get_str,
    to_json_bytes,
    unb64,
)
from secure_aggregation.errors import (
    MalformedMessageError,
    ProtocolStateError,
    RoundAbortedError,
    SecureAggregationError,
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
    RoundStart,
    UnmaskRequest,
)
from secure_aggregation.primitives import NONCE_BYTES, add_mask, commitment
from secure_aggregation.quantization import Quantizer
from secure_aggregation.rounds import (
    check_holder_counts,
    check_study_parameters,
    holders_of,
    party_x_coordinates,
    smallest_component,
)

logger = logging.getLogger(__name__)

# Cap on the t-subsets of shares tried per secret when some shares are wrong.
_MAX_SUBSETS = 256


@dataclass
class _OpenRound:
    round_number: int
    nonce: bytes
    participants: list[str]
    inputs: dict[str, MaskedInput] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


class HubSession:
    """The hub's secure-aggregation state for one study.

    Args:
        study_id: Study id, the same as the agents'.
        roster_ids: Ids of the enrolled parties.
        config: Study parameters, the same as the agents'.

    Raises:
        InsufficientPartiesError: Fewer than 3 parties.
        ValueError: The threshold is not a majority of share holders.
        ModulusTooSmallError: The modulus cannot hold the sum of all parties.

    """

    def __init__(
        self,
        study_id: str,
        roster_ids: Sequence[str],
        config: SecureAggregationConfig,
    ) -> None:
        roster = sorted(set(roster_ids))
        check_study_parameters(len(roster), config)
        self.study_id = study_id
        self.config = config
        self._roster = roster
        self._x_coordinates = party_x_coordinates(roster)
        self._neighbors = neighbor_map(study_id, roster, config.neighbors)
        self._quantizer = Quantizer(
            config.quantization_step, config.weighted_range, config.modulus_bits
        )
        self._advertisers: list[str] = []
        self._key_set: list[str] | None = None
        self._last_round = -1
        self._round: _OpenRound | None = None
        self._last_survivors: list[str] = []

    @property
    def key_set(self) -> list[str] | None:
        """Parties that finished the study setup, or None before it finished."""
        return None if self._key_set is None else list(self._key_set)

    @property
    def survivors(self) -> list[str]:
        """Parties whose masked input the last collected round received."""
        return list(self._last_survivors)

    # Study setup.

    def collect_advertisements(self, advertisements: Mapping[str, bytes]) -> bytes:
        """Return the bundle of well-formed advertisements, for every agent.

        A party whose advertisement is missing or malformed leaves the study's
        key set. Raises RoundAbortedError when fewer than max(3, threshold)
        remain. Signatures are checked by the agents against their own rosters.
        """
        accepted: list[dict[str, Any]] = []
        for party, data in sorted(advertisements.items()):
            try:
                advertisement = KeyAdvertisement.from_bytes(data)
            except MalformedMessageError as error:
                logger.warning("dropped advertisement of party %s: %s", party, error)
                continue
            if (
                advertisement.party_id != party
                or party not in self._roster
                or advertisement.study_id != self.study_id
            ):
                logger.warning("dropped advertisement of party %s: wrong id", party)
                continue
            accepted.append(advertisement.to_dict())
        self._require_parties(len(accepted), "key advertisements")
        self._advertisers = [entry["party_id"] for entry in accepted]
        self._key_set = None
        logger.info(
            "advertisement bundle: study=%s parties=%d",
            self.study_id,
            len(accepted),
        )
        return to_json_bytes(
            ADVERTISEMENT_BUNDLE_FORMAT,
            {"study_id": self.study_id, "advertisements": accepted},
        )

    def route_confirmations(
        self, confirmations: Mapping[str, Mapping[str, bytes]]
    ) -> dict[str, bytes]:
        """Return, per key-set member, the confirmations addressed to it.

        The key set is the advertisers that sent a confirmation to every other
        member. Raises RoundAbortedError when it has fewer than max(3,
        threshold) parties.
        """
        members = {party for party in self._advertisers if party in confirmations}
        changed = True
        while changed:
            complete = {
                party
                for party in members
                if all(peer in confirmations[party] for peer in members - {party})
            }
            changed = complete != members
            members = complete
        key_set = sorted(members)
        self._require_parties(len(key_set), "key confirmations")
        self._key_set = key_set
        logger.info(
            "study key set fixed: study=%s size=%d", self.study_id, len(key_set)
        )
        return {
            recipient: to_json_bytes(
                CONFIRMATION_BUNDLE_FORMAT,
                {
                    "study_id": self.study_id,
                    "key_set": key_set,
                    "confirmations": {
                        sender: b64(confirmations[sender][recipient])
                        for sender in key_set
                        if sender != recipient
                    },
                },
            )
            for recipient in key_set
        }

    # Rounds.

    def begin_round(
        self, round_number: int, participants: Sequence[str] | None = None
    ) -> RoundStart:
        """Open a round with a fresh 32-byte nonce (default participants: key set).

        Raises StaleRoundError, UnknownPartyError or InsufficientPartiesError.
        """
        if self._key_set is None:
            raise ProtocolStateError("begin_round needs a finished study setup")
        if round_number <= self._last_round:
            raise StaleRoundError(
                f"round {round_number} is not after the last round {self._last_round}"
            )
        chosen = sorted(set(self._key_set if participants is None else participants))
        unknown = [party for party in chosen if party not in self._key_set]
        if unknown:
            raise UnknownPartyError(f"participants outside the key set: {unknown}")
        check_holder_counts(chosen, self._neighbors, self.config.threshold)
        nonce = os.urandom(NONCE_BYTES)
        self._last_round = round_number
        self._round = _OpenRound(round_number, nonce, chosen)
        logger.info(
            "round opened: study=%s round=%d participants=%d",
            self.study_id,
            round_number,
            len(chosen),
        )
        return RoundStart(round_number, nonce, list(chosen))

    def collect_masked_inputs(
        self, round_number: int, nonce: bytes, inputs: Mapping[str, MaskedInput]
    ) -> dict[str, UnmaskRequest]:
        """Return one unmask request per survivor.

        Survivors are the participants whose masked input arrived well formed.
        Raises RoundAbortedError when too few survived to unmask.
        """
        open_round = self._require_round(round_number, nonce)
        accepted: dict[str, MaskedInput] = {}
        for party, masked_input in sorted(inputs.items()):
            problem = self._input_problem(open_round, party, masked_input)
            if problem:
                logger.warning(
                    "dropped masked input: round=%d party=%s reason=%s",
                    round_number,
                    party,
                    problem,
                )
                continue
            accepted[party] = masked_input
        survivors = sorted(accepted)
        dropped = sorted(set(open_round.participants) - set(accepted))
        open_round.inputs = accepted
        open_round.survivors = survivors
        self._last_survivors = list(survivors)
        open_round.dropped = dropped
        self._require_survivors(open_round, survivors, "masked inputs")
        logger.info(
            "masked inputs collected: study=%s round=%d survivors=%d dropped=%d",
            self.study_id,
            round_number,
            len(survivors),
            len(dropped),
        )
        return {
            recipient: UnmaskRequest(
                round_number=round_number,
                nonce=nonce,
                survivors=list(survivors),
                dropped=list(dropped),
                encrypted_shares={
                    sender: accepted[sender].encrypted_shares[recipient]
                    for sender in survivors
                    if recipient in accepted[sender].encrypted_shares
                },
            )
            for recipient in survivors
        }

    def finalize(
        self, responses: Mapping[str, bytes]
    ) -> tuple[npt.NDArray[np.float64], float]:
        """Return the sum of the survivors' ``weight * delta`` and of their weights.

        Raises RoundAbortedError, naming the reason, when the responses do not
        hold enough valid shares. The round is closed either way.
        """
        residues = self.unmask_residues(responses)
        total = self._quantizer.decode(residues[:-1])
        total_weight = float(self._quantizer.to_signed(residues[-1:])[0])
        return total, total_weight

    def unmask_residues(self, responses: Mapping[str, bytes]) -> npt.NDArray[np.uint64]:
        """Return the unmasked sum as residues modulo 2**k (weight last)."""
        open_round = self._round
        if open_round is None or not open_round.survivors:
            raise ProtocolStateError("finalize needs collect_masked_inputs first")
        self._round = None
        shares = self._collect_shares(open_round, responses)

        length = self.config.model_size + 1
        bits = self.config.modulus_bits
        total = np.zeros(length, dtype=np.uint64)
        for party in open_round.survivors:
            total += open_round.inputs[party].masked_vector

        for owner in open_round.survivors:
            masked_input = open_round.inputs[owner]
            seed = self._reconstruct(
                open_round,
                shares.self_mask.get(owner, {}),
                masked_input.self_mask_commitment,
                (owner, "self-mask"),
            )
            add_mask(total, seed, subtract=True)
            for peer in sorted(self._neighbors[owner] & set(open_round.dropped)):
                seed = self._reconstruct(
                    open_round,
                    shares.pairwise.get((owner, peer), {}),
                    masked_input.pairwise_commitments.get(peer, b""),
                    (owner, "pairwise", peer),
                )
                # The owner added this mask if its id sorts first, else subtracted.
                add_mask(total, seed, subtract=owner < peer)
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)

        logger.info(
            "round unmasked: study=%s round=%d survivors=%d responders=%d",
            self.study_id,
            open_round.round_number,
            len(open_round.survivors),
            len(shares.responders),
        )
        return total

    # Helpers.

    def _require_parties(self, count: int, stage: str) -> None:
        needed = max(MIN_PARTIES, self.config.threshold)
        if count < needed:
            reason = (
                f"study setup stopped: {count} parties sent {stage}, fewer than "
                f"max(3, threshold={self.config.threshold}) = {needed}"
            )
            logger.warning("%s (study=%s)", reason, self.study_id)
            raise RoundAbortedError(reason)

    def _require_round(self, round_number: int, nonce: bytes) -> _OpenRound:
        open_round = self._round
        if (
            open_round is None
            or open_round.round_number != round_number
            or open_round.nonce != nonce
        ):
            raise StaleRoundError(
                f"round {round_number} with this nonce is not the open round"
            )
        return open_round

    def _require_survivors(
        self, open_round: _OpenRound, survivors: Sequence[str], stage: str
    ) -> None:
        needed = max(MIN_PARTIES, self.config.threshold)
        if len(survivors) >= needed:
            smallest = smallest_component(survivors, self._neighbors)
            if smallest < needed:
                self._abort(
                    open_round,
                    f"a group of {smallest} survivors has no surviving neighbors "
                    f"outside it, fewer than max(3, threshold="
                    f"{self.config.threshold}) = {needed}",
                )
            for owner in survivors:
                holders = holders_of(owner, survivors, self._neighbors)
                if len(holders) < self.config.threshold:
                    self._abort(
                        open_round,
                        f"party {owner!r} has {len(holders)} surviving share "
                        f"holders, fewer than threshold={self.config.threshold}",
                    )
            return
        self._abort(
            open_round,
            f"{len(survivors)} parties sent {stage}, fewer than max(3, "
            f"threshold={self.config.threshold}) = {needed}",
        )

    def _abort(self, open_round: _OpenRound, reason: str) -> None:
        self._round = None
        message = f"round {open_round.round_number} aborted: {reason}"
        logger.warning("%s (study=%s)", message, self.study_id)
        raise RoundAbortedError(message)

    def _input_problem(
        self, open_round: _OpenRound, party: str, masked_input: MaskedInput
    ) -> str:
        if party not in open_round.participants or masked_input.party_id != party:
            return "not a participant"
        if (
            masked_input.round_number != open_round.round_number
            or masked_input.nonce != open_round.nonce
        ):
            return "wrong round or nonce"
        vector = masked_input.masked_vector
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != np.uint64
            or vector.shape != (self.config.model_size + 1,)
        ):
            return "masked vector has the wrong dtype or shape"
        if self.config.modulus_bits < 64 and np.any(
            vector >> np.uint64(self.config.modulus_bits)
        ):
            return "masked vector has values beyond the modulus"
        holders = holders_of(party, open_round.participants, self._neighbors)
        if set(masked_input.encrypted_shares) != set(holders) - {party}:
            return "share bundles do not match the share holders"
        peers = self._neighbors[party] & set(open_round.participants)
        if set(masked_input.pairwise_commitments) != peers:
            return "pairwise commitments do not match the neighbors"
        return ""

    def _collect_shares(
        self, open_round: _OpenRound, responses: Mapping[str, bytes]
    ) -> _CollectedShares:
        collected = _CollectedShares()
        for party, data in sorted(responses.items()):
            if party not in open_round.survivors:
                logger.warning("ignored unmask response of non-survivor %s", party)
                continue
            try:
                self._add_response(open_round, party, data, collected)
            except SecureAggregationError as error:
                logger.warning(
                    "ignored unmask response: round=%d party=%s reason=%s",
                    open_round.round_number,
                    party,
                    error,
                )
        return collected

    def _add_response(
        self,
        open_round: _OpenRound,
        party: str,
        data: bytes,
        collected: _CollectedShares,
    ) -> None:
        document = from_json_bytes(UNMASK_RESPONSE_FORMAT, data)
        if (
            get_str(document, "study_id") != self.study_id
            or get_str(document, "party_id") != party
            or get_int(document, "round_number") != open_round.round_number
            or unb64(document.get("nonce"), "nonce", NONCE_BYTES) != open_round.nonce
        ):
            raise MalformedMessageError("response is for another party or round")

        x = self._x_coordinates[party]
        # Only a share holder of an owner's secrets has a valid share of them.
        owners = {
            owner
            for owner in open_round.survivors
            if party in holders_of(owner, open_round.participants, self._neighbors)
        }
        self_mask: dict[str, int] = {}
        for owner, text in get_dict(document, "self_mask_shares").items():
            if owner in owners:
                self_mask[owner] = _share_value(text, x)
        pairwise: dict[tuple[str, str], int] = {}
        for owner, by_peer in get_dict(document, "pairwise_shares").items():
            if owner not in owners or not isinstance(by_peer, dict):
                continue
            for peer, text in by_peer.items():
                if peer in open_round.dropped:
                    pairwise[(owner, peer)] = _share_value(text, x)

        for owner, value in self_mask.items():
            collected.self_mask.setdefault(owner, {})[x] = value
        for key, value in pairwise.items():
            collected.pairwise.setdefault(key, {})[x] = value
        collected.responders.append(party)

    def _reconstruct(
        self,
        open_round: _OpenRound,
        shares: Mapping[int, int],
        expected_commitment: bytes,
        label: tuple[str, ...],
    ) -> bytes:
        owner = label[0]
        if len(shares) < self.config.threshold:
            self._abort(
                open_round,
                f"{len(shares)} shares of the {label[1]} seed of party {owner!r}, "
                f"fewer than threshold={self.config.threshold}",
            )
        context = (self.study_id, open_round.round_number, open_round.nonce, owner)
        threshold = self.config.threshold
        for subset in _candidate_subsets(sorted(shares), threshold):
            chosen = {x: shares[x] for x in subset}
            value = shamir.reconstruct_secret(chosen, threshold)
            if value >= 2**256:
                continue
            seed = value.to_bytes(32, "big")
            if commitment(seed, *context, *label[1:]) == expected_commitment:
                return seed
        self._abort(
            open_round,
            f"no {threshold} of the {len(shares)} shares of the {label[1]} seed "
            f"of party {owner!r} match its commitment (responders sent wrong "
            "shares)",
        )
        raise AssertionError("unreachable")


@dataclass
class _CollectedShares:
    self_mask: dict[str, dict[int, int]] = field(default_factory=dict)
    pairwise: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    responders: list[str] = field(default_factory=list)


def _candidate_subsets(
    x_coordinates: list[int], threshold: int
) -> Iterator[tuple[int, ...]]:
    """Yield t-subsets of share x coordinates to try, at most _MAX_SUBSETS.

    First the r cyclic windows of t consecutive shares: when r > t, one of
    them leaves out any single wrong share. Then the other subsets in
    lexicographic order, for more than one wrong share.
    """
    count = len(x_coordinates)
    seen: set[tuple[int, ...]] = set()
    windows = (
        tuple(sorted(x_coordinates[(start + i) % count] for i in range(threshold)))
        for start in range(count)
    )
    others = itertools.combinations(x_coordinates, threshold)
    for subset in itertools.chain(windows, others):
        if subset in seen:
            continue
        seen.add(subset)
        yield subset
        if len(seen) >= _MAX_SUBSETS:
            return


def _share_value(text: object, expected_x: int) -> int:
    try:
        x, y = shamir.decode_share(unb64(text, "share", shamir.SHARE_BYTES))
    except ValueError as error:
        raise MalformedMessageError(f"invalid share: {error}") from error
    if x != expected_x:
        raise MalformedMessageError(
            f"share has x coordinate {x}, the responder's is {expected_x}"
        )
    return y
