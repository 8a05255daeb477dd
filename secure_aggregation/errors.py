"""Exceptions of the secure-aggregation protocol.

Every security failure has its own exception type, so callers and tests can tell
the kinds apart. Messages name the party ids, rounds and counts involved and
never a key, share, seed, mask or model value.
"""

from __future__ import annotations


class SecureAggregationError(Exception):
    """Base class of every protocol failure."""


class InvalidSignatureError(SecureAggregationError):
    """An advertised key's Ed25519 signature does not verify against the roster."""


class UnknownPartyError(SecureAggregationError):
    """A message names a party outside the pinned roster or the study's key set."""


class KeyEpochError(SecureAggregationError):
    """A key advertisement is older than, or conflicts with, one already accepted."""


class KeyConfirmationError(SecureAggregationError):
    """A peer's key confirmation is missing, invalid or covers another key set."""


class OverlappingPartyListsError(SecureAggregationError):
    """A party is listed both as surviving and as dropped."""


class PartyListMismatchError(SecureAggregationError):
    """The survivor and dropped lists do not partition the round's participants."""


class InsufficientPartiesError(SecureAggregationError):
    """A round has fewer participants than the protocol's minimum or threshold."""


class InsufficientSurvivorsError(SecureAggregationError):
    """Fewer parties survived than the threshold needed to unmask."""


class StaleRoundError(SecureAggregationError):
    """A round number is not newer than the last one, or is not the open round."""


class ReplayError(SecureAggregationError):
    """A nonce, unmask request or another study's advertisement came again."""


class ShapeMismatchError(SecureAggregationError):
    """An update's shape differs from the study's global model."""


class ShareDecryptionError(SecureAggregationError):
    """An encrypted share bundle is missing or fails AES-GCM authentication."""


class MalformedMessageError(SecureAggregationError):
    """A message cannot be decoded or has fields of the wrong type or size."""


class ProtocolStateError(SecureAggregationError):
    """A step was called before the steps it depends on."""


class RoundAbortedError(SecureAggregationError):
    """The hub stopped a round or the study setup, for the reason in the message."""


class QuantizationRangeError(ValueError, SecureAggregationError):
    """A value lies outside the quantizer's range or is not finite."""


class ModulusTooSmallError(ValueError, SecureAggregationError):
    """The modulus cannot hold the sum over every party without wrapping around."""
