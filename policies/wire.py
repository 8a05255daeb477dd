"""Names and flat encodings of what the hub and the agents exchange.

Flower carries configuration as flat records of scalars, bytes and lists. A round
instruction travels through ``RoundInstruction.to_config`` and ``from_config``;
the study's training settings through the functions here. Decoding validates
every value again (fail closed), because the agent does not trust the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from policies.models import PolicyError, TrainingConfig

# Message types: Flower's "train", "evaluate" and "query" families.
IDENTIFY = "query.identify"
SPEND_STATUS_QUERY = "query.spend_status"
TRAIN = "train"
EVALUATE = "evaluate"
SECAGG_ADVERTISE = "query.secagg_advertise"
SECAGG_CONFIRM = "query.secagg_confirm"
SECAGG_UNMASK = "query.secagg_unmask"

# Record names inside a message's RecordDict.
INSTRUCTION = "instruction"
TRAINING = "training"
EVALUATION = "evaluation"
SPEND_STATUS = "spend_status"
GLOBAL_MODEL = "global_model"
UPDATE = "update"
RESULT = "result"
METRICS = "metrics"
CHALLENGE = "challenge"
SECAGG = "secagg"
MASKED = "masked"
MASKED_VECTOR = "masked_vector"


def encode_training(training: TrainingConfig) -> dict[str, Any]:
    """Flatten the study's training settings into scalars."""
    return dict(training.model_dump())


def decode_training(flat: Mapping[str, Any]) -> TrainingConfig:
    """Rebuild and validate the study's training settings."""
    try:
        return TrainingConfig(**dict(flat))
    except (ValidationError, TypeError) as error:
        raise PolicyError(f"invalid training settings: {error}") from None


class MessageFieldError(ValueError):
    """A message field is missing or has the wrong type."""


def field_bytes(record: Mapping[str, Any], name: str) -> bytes:
    """Return the bytes field ``name``; raise if it is missing or not bytes.

    ``bytes(value)`` would turn an integer into that many zero bytes, so the type
    is checked rather than converted.
    """
    value = record.get(name)
    if not isinstance(value, bytes):
        raise MessageFieldError(
            f"message field {name!r} must be bytes, got {type(value).__name__}"
        )
    return value


def field_str_list(record: Mapping[str, Any], name: str) -> list[str]:
    """Return the list-of-strings field ``name``; raise if missing or mistyped."""
    value = record.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MessageFieldError(f"message field {name!r} must be a list of strings")
    return list(value)


def field_number(record: Mapping[str, Any], name: str) -> float:
    """Return the numeric field ``name``; raise if missing or not a number."""
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageFieldError(
            f"message field {name!r} must be a number, got {type(value).__name__}"
        )
    return float(value)
