"""Shared table-schema language, validator and feature encoder."""

from schemas.loading import (
    HEART_DISEASE_SCHEMA_PATH,
    ICU_OUTCOME_SCHEMA_PATH,
    SchemaFileError,
    load_schema,
)
from schemas.model import Schema

__all__ = [
    "HEART_DISEASE_SCHEMA_PATH",
    "ICU_OUTCOME_SCHEMA_PATH",
    "Schema",
    "SchemaFileError",
    "load_schema",
]
