"""Command functions for schema files: check one, export the file format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from schemas.loading import SchemaFileError, load_schema
from schemas.model import Schema


def check_schema(
    path: Annotated[Path, typer.Argument(help="Schema YAML file to check.")],
) -> None:
    """Check a schema file and list every error with its line and key path.

    Exits 0 when the file is a valid schema and 2 otherwise.
    """
    console = Console()
    try:
        schema = load_schema(path)
    except SchemaFileError as exc:
        console.print(f"[red]{path}: {len(exc.problems)} error(s)[/red]")
        for problem in exc.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(code=2) from exc
    console.print(
        f"{path}: valid schema '{schema.name}' version {schema.version}, "
        f"{len(schema.columns)} columns",
        markup=False,
        highlight=False,
    )
    console.print(f"content hash: {schema.content_hash}", highlight=False)


def json_schema() -> dict[str, object]:
    """Return the JSON Schema (draft 2020-12) of the schema-file format."""
    document = Schema.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "healthfed table schema"
    return document


def export_json_schema(
    output: Annotated[
        Path, typer.Argument(help="File to write the JSON Schema to; '-' for stdout.")
    ],
) -> None:
    """Write the JSON Schema of the schema-file format, for editors to check files."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")
