"""`silo-agent validate`: check a records file against the shared schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from schemas import HEART_DISEASE_SCHEMA_PATH, SchemaFileError, load_schema
from schemas.reading import DEFAULT_CHUNK_ROWS, CsvOptions
from schemas.validation import SchemaInputError, ValidationResult, validate_file


def validate(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file of records.")],
    schema_path: Annotated[
        Path,
        typer.Option(
            "--schema",
            help="Schema YAML file. Default: the bundled heart-disease schema.",
            show_default=False,
        ),
    ] = HEART_DISEASE_SCHEMA_PATH,
    quarantine: Annotated[
        Path | None,
        typer.Option(
            help="CSV file for rejected rows (line, reasons, original row). "
            "Default: <data>.quarantine.csv next to the input."
        ),
    ] = None,
    report_json: Annotated[
        Path | None, typer.Option(help="Write the JSON report to this file.")
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            help="CSV field delimiter, one character; 'tab' or '\\t' for a tab. "
            "Default: detected."
        ),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(help="Text encoding, e.g. utf-8 or cp1252. Default: detected."),
    ] = None,
    header: Annotated[
        bool | None,
        typer.Option(
            "--header/--no-header",
            help="Whether the first row names the columns. Default: detected; "
            "without a header the columns follow schema order.",
        ),
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Rows parsed per chunk; bounds memory use.")
    ] = DEFAULT_CHUNK_ROWS,
) -> None:
    """Validate a records file against the shared schema.

    Exits 0 when every row passes, 1 when rows were quarantined, and 2 when the
    input or schema is unusable or no row passed.
    """
    console = Console(stderr=True)
    try:
        schema = load_schema(schema_path)
    except SchemaFileError as exc:
        console.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(code=2) from exc
    if delimiter in ("tab", "\\t"):
        delimiter = "\t"
    if delimiter is not None and len(delimiter) != 1:
        raise typer.BadParameter(
            f"the delimiter must be one character, got {delimiter!r}",
            param_hint="--delimiter",
        )
    if quarantine is None:
        quarantine = data.with_name(data.name + ".quarantine.csv")
    options = CsvOptions(
        delimiter=delimiter, encoding=encoding, header=header, chunk_rows=chunk_rows
    )
    try:
        result = validate_file(
            data, schema, quarantine, options=options, keep_accepted=False
        )
    except SchemaInputError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=2) from exc
    if report_json is not None:
        report_json.write_text(result.report.to_json() + "\n", encoding="utf-8")
    Console().print(_summary_table(result))
    _print_outcome(console, result, report_json)
    if result.accepted_rows == 0:
        raise typer.Exit(code=2)
    raise typer.Exit(code=result.exit_code)


def _summary_table(result: ValidationResult) -> Table:
    report = result.report
    table = Table(
        title=f"{report.file}: schema {report.schema_name} {report.schema_version}"
    )
    for heading in (
        "column",
        "missing",
        "imputed",
        "out of range",
        "invalid code",
        "wrong type",
        "warnings",
    ):
        table.add_column(heading, justify="left" if heading == "column" else "right")
    for name, counts in report.columns.items():
        if counts.missing == 0 and counts.problems == 0:
            continue
        table.add_row(
            name,
            str(counts.missing),
            str(counts.imputed),
            str(counts.out_of_range),
            str(counts.invalid_code),
            str(counts.wrong_type),
            str(counts.warnings),
        )
    return table


def _print_outcome(
    console: Console, result: ValidationResult, report_json: Path | None
) -> None:
    report = result.report
    console.print(
        f"{report.total_rows} rows: {report.accepted_rows} accepted, "
        f"{report.quarantined_rows} quarantined "
        f"({report.duplicate_rows} duplicates, {report.empty_rows} empty rows)",
        highlight=False,
    )
    if result.quarantine_path is not None:
        console.print(f"quarantine file: {result.quarantine_path}", highlight=False)
    if report_json is not None:
        console.print(f"JSON report: {report_json}", highlight=False)
    if report.accepted_rows == 0:
        console.print(
            "[red]error:[/red] no row passed validation; read the quarantine file "
            "for the reasons",
            highlight=False,
        )
