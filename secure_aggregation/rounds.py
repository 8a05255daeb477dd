"""Rules that the hub and the agents both apply to a study and its rounds."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from secure_aggregation.config import (
    MIN_PARTIES,
    SecureAggregationConfig,
    minimum_threshold,
)
from secure_aggregation.errors import InsufficientPartiesError
from secure_aggregation.primitives import encode_fields


def party_x_coordinates(party_ids: Collection[str]) -> dict[str, int]:
    """Return each party's Shamir x coordinate: 1 + its rank in the sorted roster."""
    return {party: rank + 1 for rank, party in enumerate(sorted(party_ids))}


def holders_of(
    owner: str, participants: Collection[str], neighbors: Mapping[str, frozenset[str]]
) -> list[str]:
    """Return the sorted holders of ``owner``'s round secrets: itself and neighbors."""
    return sorted((neighbors[owner] & set(participants)) | {owner})


def check_holder_counts(
    participants: Collection[str],
    neighbors: Mapping[str, frozenset[str]],
    threshold: int,
) -> None:
    """Raise InsufficientPartiesError unless every participant has t holders."""
    if len(participants) < MIN_PARTIES:
        raise InsufficientPartiesError(
            f"a secure round needs at least {MIN_PARTIES} participants: got "
            f"{len(participants)}"
        )
    for owner in participants:
        holders = holders_of(owner, participants, neighbors)
        if len(holders) < threshold:
            raise InsufficientPartiesError(
                f"party {owner!r} has {len(holders)} share holders among the "
                f"round's participants, fewer than threshold={threshold}"
            )


def smallest_component(
    survivors: Collection[str], neighbors: Mapping[str, frozenset[str]]
) -> int:
    """Return the size of the smallest connected group of survivors.

    Masks cancel only between neighbors, so the sum of each connected group of
    survivors unmasks on its own. Every group must therefore be as large as a
    round's minimum. In the complete graph all survivors form one group.
    """
    remaining = set(survivors)
    smallest = len(remaining)
    while remaining:
        stack = [remaining.pop()]
        size = 1
        while stack:
            party = stack.pop()
            for peer in neighbors[party] & remaining:
                remaining.discard(peer)
                stack.append(peer)
                size += 1
        smallest = min(smallest, size)
    return smallest


def check_study_parameters(party_count: int, config: SecureAggregationConfig) -> None:
    """Raise unless the roster size, threshold and modulus make a sound study.

    The threshold must be a strict majority of one secret's share holders
    (``minimum_threshold``) and at most their number.
    """
    if party_count < MIN_PARTIES:
        raise InsufficientPartiesError(
            f"a study needs at least {MIN_PARTIES} parties: got {party_count}"
        )
    holder_count = party_count
    if config.neighbors is not None and config.neighbors < party_count - 1:
        holder_count = config.neighbors + 1
    lowest = minimum_threshold(holder_count)
    if not lowest <= config.threshold <= holder_count:
        raise ValueError(
            f"threshold must be in [{lowest}, {holder_count}] for {holder_count} "
            f"share holders per secret (a strict majority, so that no two "
            f"disjoint sets of parties both reach it): got {config.threshold}"
        )
    config.check_capacity(party_count)


def round_shares_aad(
    study_id: str,
    round_number: int,
    nonce: bytes,
    sender: tuple[str, int],
    recipient: tuple[str, int],
) -> bytes:
    """Return the AES-GCM associated data of one round's share bundle."""
    return encode_fields(
        "round-shares", study_id, round_number, nonce, *sender, *recipient
    )
