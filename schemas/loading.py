"""Load schema files and report every error with its location in the file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.model import Schema

logger = logging.getLogger(__name__)

HEART_DISEASE_SCHEMA_PATH = Path(__file__).parent / "bundled" / "heart_disease.yaml"
ICU_OUTCOME_SCHEMA_PATH = Path(__file__).parent / "bundled" / "icu_outcome.yaml"

# Largest schema file accepted, in bytes. The bundled schemas are under 5 KB.
MAX_SCHEMA_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SchemaProblem:
    """One error in a schema file: where it is and what is wrong."""

    location: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        return f"{where}{self.location}: {self.message}"


class SchemaFileError(ValueError):
    """A schema file is unreadable, not YAML, or breaks the schema language."""

    def __init__(self, path: Path, problems: list[SchemaProblem]) -> None:
        self.path = path
        self.problems = problems
        listed = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(
            f"schema file {path} has {len(problems)} error(s); fix each one:\n{listed}"
        )


def load_schema(path: str | Path) -> Schema:
    """Read and validate a YAML schema file.

    Raises:
        SchemaFileError: the file cannot be read, is not YAML, or breaks the schema
            language. The error lists every problem with its line and key path.

    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SCHEMA_BYTES:
            raise SchemaFileError(
                path,
                [
                    SchemaProblem(
                        "file",
                        None,
                        f"is {size} bytes, over the limit of {MAX_SCHEMA_BYTES}; "
                        "a schema file is a short YAML document",
                    )
                ],
            )
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaFileError(
            path, [SchemaProblem("file", None, f"cannot be read as UTF-8: {exc}")]
        ) from exc
    return parse_schema(text, path)


def parse_schema(text: str, path: Path) -> Schema:
    """Validate schema YAML ``text``; ``path`` only names the file in errors."""
    try:
        root = yaml.compose(text)
        _reject_aliases(path, root)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = None
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        raise SchemaFileError(
            path, [SchemaProblem("file", line, f"is not valid YAML: {exc}")]
        ) from exc
    if not isinstance(document, dict):
        raise SchemaFileError(
            path,
            [SchemaProblem("file", 1, "must be a YAML mapping with 'name', 'columns'")],
        )
    try:
        schema = Schema.model_validate(document)
    except ValidationError as exc:
        problems = [
            SchemaProblem(
                location=_format_location(error["loc"], document),
                line=_line_of(root, error["loc"]),
                message=error["msg"],
            )
            for error in exc.errors()
        ]
        raise SchemaFileError(path, problems) from exc
    logger.info(
        "Loaded schema %s %s from %s (hash %s)",
        schema.name,
        schema.version,
        path,
        schema.content_hash[:12],
    )
    return schema


def _reject_aliases(path: Path, root: yaml.Node | None) -> None:
    """Raise SchemaFileError if a YAML node is reached twice (an alias).

    Aliases let a few lines expand into an exponentially large document, and a
    schema file has no use for them.
    """
    seen: set[int] = set()
    pending = [] if root is None else [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            raise SchemaFileError(
                path,
                [
                    SchemaProblem(
                        "file",
                        node.start_mark.line + 1,
                        "repeats the node anchored here (&name) through an alias "
                        "(*name); write the value out instead",
                    )
                ],
            )
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                pending.extend((key_node, value_node))


def _format_location(loc: tuple[int | str, ...], document: Any) -> str:
    """Render a pydantic error location, naming columns instead of list indices."""
    parts: list[str] = []
    node = document
    for key in loc:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            item = node[key]
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{key}]" if name is None else f"[{key}:{name}]")
            node = item
        elif isinstance(node, dict) and key in node:
            parts.append(f".{key}")
            node = node[key]
        else:
            # Pydantic adds the union tag ('integer', 'date', ...) to the location
            # of an error inside a column; it is not a YAML key.
            if isinstance(node, dict) and node.get("type") == key:
                continue
            parts.append(f".{key}")
    return "".join(parts).lstrip(".") or "file"


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Return the 1-based line of the deepest YAML node that ``loc`` reaches."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        child = _child(node, key)
        if child is None:
            continue
        node = child
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, key: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int):
        return node.value[key] if key < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                return value_node  # type: ignore[no-any-return]
    return None
