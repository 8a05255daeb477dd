"""Masking graphs: which pairs of parties share masks and hold each other's shares.

The complete graph masks every pair (Bonawitz et al., CCS 2017). The sparse
option follows Bell et al. (CCS 2020): each party masks with, and shares its
secrets among, only k neighbors, so per-party cost grows with k instead of n.
The graph here is a circulant k-regular graph (a Harary graph) over an order of
the roster that SHA-256 of the study id fixes. Every party computes it alone, so
the hub cannot pick it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def neighbor_map(
    study_id: str, party_ids: Sequence[str], neighbors: int | None
) -> dict[str, frozenset[str]]:
    """Return each party's neighbors in the study's masking graph.

    ``neighbors`` None, or not below the party count, gives the complete graph.
    NOTE: the degree is the caller's choice, and nothing derives it from the
    party count.
    """
    parties = sorted(party_ids)
    if neighbors is None or neighbors >= len(parties) - 1:
        everyone = frozenset(parties)
        return {party: everyone - {party} for party in parties}
    order = sorted(
        parties,
        key=lambda party: hashlib.sha256(f"{study_id}\x00{party}".encode()).digest(),
    )
    count = len(order)
    result: dict[str, frozenset[str]] = {}
    for position, party in enumerate(order):
        adjacent = set()
        for offset in range(1, neighbors // 2 + 1):
            adjacent.add(order[(position + offset) % count])
            adjacent.add(order[(position - offset) % count])
        result[party] = frozenset(adjacent)
    return result
