"""Flat encodings of protocol messages for a message transport such as Flower's.

A transport record holds scalars, bytes and lists of them, plus numeric arrays,
so each protocol message maps to a flat mapping of such values and, where it
carries a vector, one array. This module imports nothing from Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from secure_aggregation.errors import MalformedMessageError
from secure_aggregation.messages import MaskedInput, UnmaskRequest

_SHARE_PREFIX = "share."
_COMMITMENT_PREFIX = "commitment."

Fields = dict[str, Any]


def _require(fields: Mapping[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise MalformedMessageError(f"field {name!r} is missing or not {kind.__name__}")
    return value


def _prefixed(fields: Mapping[str, Any], prefix: str) -> dict[str, bytes]:
    found = {}
    for key, value in fields.items():
        if key.startswith(prefix):
            if not isinstance(value, bytes):
                raise MalformedMessageError(f"field {key!r} is not bytes")
            found[key[len(prefix) :]] = value
    return found


def masked_input_to_fields(
    masked: MaskedInput,
) -> tuple[Fields, npt.NDArray[np.uint64]]:
    """Return the scalar fields and the masked vector of a masked input."""
    fields: Fields = {
        "party_id": masked.party_id,
        "round_number": masked.round_number,
        "nonce": masked.nonce,
        "self_mask_commitment": masked.self_mask_commitment,
    }
    for holder, bundle in masked.encrypted_shares.items():
        fields[_SHARE_PREFIX + holder] = bundle
    for peer, digest in masked.pairwise_commitments.items():
        fields[_COMMITMENT_PREFIX + peer] = digest
    return fields, masked.masked_vector


def masked_input_from_fields(
    fields: Mapping[str, Any], vector: npt.NDArray[Any]
) -> MaskedInput:
    """Rebuild a masked input; raise ``MalformedMessageError`` if malformed."""
    if vector.dtype != np.uint64 or vector.ndim != 1:
        raise MalformedMessageError(
            f"masked vector must be a 1-D uint64 array, got {vector.dtype} with "
            f"{vector.ndim} dimensions"
        )
    return MaskedInput(
        party_id=_require(fields, "party_id", str),
        round_number=_require(fields, "round_number", int),
        nonce=_require(fields, "nonce", bytes),
        masked_vector=np.ascontiguousarray(vector),
        encrypted_shares=_prefixed(fields, _SHARE_PREFIX),
        self_mask_commitment=_require(fields, "self_mask_commitment", bytes),
        pairwise_commitments=_prefixed(fields, _COMMITMENT_PREFIX),
    )


def unmask_request_to_fields(request: UnmaskRequest) -> Fields:
    """Return the flat fields of an unmask request."""
    fields: Fields = {
        "round_number": request.round_number,
        "nonce": request.nonce,
        "survivors": list(request.survivors),
        "dropped": list(request.dropped),
    }
    for sender, bundle in request.encrypted_shares.items():
        fields[_SHARE_PREFIX + sender] = bundle
    return fields


def unmask_request_from_fields(fields: Mapping[str, Any]) -> UnmaskRequest:
    """Rebuild an unmask request; raise ``MalformedMessageError`` if malformed."""
    survivors = fields.get("survivors", [])
    dropped = fields.get("dropped", [])
    for name, value in (("survivors", survivors), ("dropped", dropped)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MalformedMessageError(f"field {name!r} must be a list of party ids")
    return UnmaskRequest(
        round_number=_require(fields, "round_number", int),
        nonce=_require(fields, "nonce", bytes),
        survivors=list(survivors),
        dropped=list(dropped),
        encrypted_shares=_prefixed(fields, _SHARE_PREFIX),
    )


def flatten_parameters(
    parameters: Mapping[str, npt.NDArray[Any]],
) -> npt.NDArray[np.float64]:
    """Concatenate named parameter arrays in sorted name order into one vector."""
    if not parameters:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(
        [
            np.asarray(parameters[name], dtype=np.float64).ravel()
            for name in sorted(parameters)
        ]
    )


def unflatten_parameters(
    vector: npt.NDArray[Any], like: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[np.float64]]:
    """Split ``vector`` into arrays shaped and named like ``like``."""
    expected = sum(int(np.asarray(like[name]).size) for name in like)
    if vector.shape != (expected,):
        raise ValueError(
            f"vector has shape {vector.shape}, the model has {expected} parameters"
        )
    result = {}
    offset = 0
    for name in sorted(like):
        shape = np.asarray(like[name]).shape
        size = int(np.prod(shape, dtype=np.int64))
        result[name] = np.asarray(
            vector[offset : offset + size], dtype=np.float64
        ).reshape(shape)
        offset += size
    return result
