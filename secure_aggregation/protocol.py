"""Public API of the secure-aggregation protocol: sessions, messages, errors."""

from secure_aggregation.agent import AgentSession
from secure_aggregation.config import (
    MIN_PARTIES,
    SecureAggregationConfig,
    minimum_threshold,
)
from secure_aggregation.errors import (
    InsufficientPartiesError,
    InsufficientSurvivorsError,
    InvalidSignatureError,
    KeyConfirmationError,
    KeyEpochError,
    MalformedMessageError,
    ModulusTooSmallError,
    OverlappingPartyListsError,
    PartyListMismatchError,
    ProtocolStateError,
    QuantizationRangeError,
    ReplayError,
    RoundAbortedError,
    SecureAggregationError,
    ShapeMismatchError,
    ShareDecryptionError,
    StaleRoundError,
    UnknownPartyError,
)
from secure_aggregation.hub import HubSession
from secure_aggregation.messages import MaskedInput, RoundStart, UnmaskRequest

__all__ = [
    "MIN_PARTIES",
    "AgentSession",
    "HubSession",
    "InsufficientPartiesError",
    "InsufficientSurvivorsError",
    "InvalidSignatureError",
    "KeyConfirmationError",
    "KeyEpochError",
    "MalformedMessageError",
    "MaskedInput",
    "ModulusTooSmallError",
    "OverlappingPartyListsError",
    "PartyListMismatchError",
    "ProtocolStateError",
    "QuantizationRangeError",
    "ReplayError",
    "RoundAbortedError",
    "RoundStart",
    "SecureAggregationConfig",
    "SecureAggregationError",
    "ShapeMismatchError",
    "ShareDecryptionError",
    "StaleRoundError",
    "UnknownPartyError",
    "UnmaskRequest",
    "minimum_threshold",
]
