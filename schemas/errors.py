"""Errors for input files that cannot be validated at all (exit code 2)."""

from __future__ import annotations

from pathlib import Path


class SchemaInputError(Exception):
    """An input file is unusable against a schema.

    The message names the file, the column where one is involved, and the fix. It
    never contains a patient value.
    """

    def __init__(
        self, path: Path | str, problem: str, fix: str, column: str | None = None
    ) -> None:
        self.path = Path(path)
        self.column = column
        self.problem = problem
        self.fix = fix
        where = f"{self.path}" if column is None else f"{self.path}, column '{column}'"
        super().__init__(f"{where}: {problem}. Fix: {fix}")


class UnreadableFileError(SchemaInputError):
    """The file cannot be opened, decoded or parsed as a table."""


class MissingColumnError(SchemaInputError):
    """A required schema column is absent from the file."""


class EmptyCohortError(SchemaInputError):
    """The file contains no data rows."""


class LabelMappingError(SchemaInputError):
    """A label value is outside the schema's label mapping."""
