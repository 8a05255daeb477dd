"""Versioned JSON encoding of protocol messages and state, with base64 bytes.

Nothing is pickled: every decoder checks the format tag and each field's type,
and raises MalformedMessageError on anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from secure_aggregation.errors import MalformedMessageError


def to_json_bytes(format_tag: str, body: dict[str, Any]) -> bytes:
    """Return ``body`` with its format tag as compact, key-sorted JSON."""
    document = {"format": format_tag, **body}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def from_json_bytes(format_tag: str, data: bytes) -> dict[str, Any]:
    """Return the decoded object of ``data`` after checking its format tag."""
    try:
        document = json.loads(data)
    except (ValueError, TypeError) as error:
        raise MalformedMessageError(
            f"message is not valid JSON (expected format {format_tag})"
        ) from error
    if not isinstance(document, dict) or document.get("format") != format_tag:
        raise MalformedMessageError(f"message does not have format {format_tag}")
    return document


def b64(data: bytes) -> str:
    """Return standard base64 of ``data``."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, field: str, size: int | None = None) -> bytes:
    """Return the bytes of base64 ``text``, checking the length if ``size`` is set."""
    if not isinstance(text, str):
        raise MalformedMessageError(f"field {field} must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise MalformedMessageError(f"field {field} is not valid base64") from error
    if size is not None and len(data) != size:
        raise MalformedMessageError(
            f"field {field} must have {size} bytes: got {len(data)}"
        )
    return data


def get_str(document: dict[str, Any], field: str) -> str:
    """Return string field ``field`` of ``document``."""
    value = document.get(field)
    if not isinstance(value, str):
        raise MalformedMessageError(f"field {field} must be a string")
    return value


def get_int(document: dict[str, Any], field: str) -> int:
    """Return non-negative integer field ``field`` of ``document``."""
    value = document.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedMessageError(f"field {field} must be a non-negative integer")
    return value


def get_str_list(document: dict[str, Any], field: str) -> list[str]:
    """Return list-of-strings field ``field`` of ``document``."""
    value = document.get(field)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedMessageError(f"field {field} must be a list of strings")
    return list(value)


def get_dict(document: dict[str, Any], field: str) -> dict[str, Any]:
    """Return object field ``field`` of ``document``."""
    value = document.get(field)
    if not isinstance(value, dict):
        raise MalformedMessageError(f"field {field} must be an object")
    return value
