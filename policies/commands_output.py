"""Rendering of budget and verification results, shared by both command lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from policies.budget import BudgetLine, BudgetReport
from policies.identity import IdentityKeyError, load_public_key
from policies.ledger import Ledger, LedgerError, VerificationReport

logger = logging.getLogger(__name__)


def budget_table(report: BudgetReport, first_column: str) -> Table:
    """Build a table of spent and remaining epsilon per line."""
    table = Table(title=f"Privacy budget ({report.verification.path})")
    for column in (
        first_column,
        "rounds",
        "accountant",
        "delta",
        "spent",
        "limit",
        "remaining",
    ):
        table.add_column(column, justify="left" if column == first_column else "right")
    lines = [*report.lines, *([report.total] if report.total else [])]
    for line in lines:
        spent = f"{line.epsilon_spent:.4f}"
        if not line.replay_matches:
            spent += " (stored value differs)"
        table.add_row(
            line.name,
            str(line.rounds),
            line.accountant,
            f"{line.delta:g}",
            spent,
            f"{line.epsilon_limit:g}",
            f"{line.epsilon_remaining:.4f}",
        )
    return table


def _line_dict(line: BudgetLine) -> dict[str, Any]:
    return {
        "name": line.name,
        "rounds": line.rounds,
        "accountant": line.accountant,
        "delta": line.delta,
        "epsilon_spent": line.epsilon_spent,
        "epsilon_limit": line.epsilon_limit,
        "epsilon_remaining": line.epsilon_remaining,
        "replay_matches_stored": line.replay_matches,
    }


def verification_dict(report: VerificationReport) -> dict[str, Any]:
    """Return a JSON-ready summary of a verified ledger."""
    return {
        "path": str(report.path),
        "party_id": report.party_id,
        "entries": report.entries,
        "spends": report.spends,
        "head_hash": report.head_hash,
        "verified": True,
    }


def budget_json(report: BudgetReport) -> str:
    """Return the budget report as indented JSON."""
    document: dict[str, Any] = {
        "ledger": verification_dict(report.verification),
        "lines": [_line_dict(line) for line in report.lines],
    }
    if report.total is not None:
        document["total"] = _line_dict(report.total)
    return json.dumps(document, indent=2)


def run_verify_ledger(
    ledger: Path,
    public_key: Path,
    party: str | None,
    expected_head: str | None,
    json_output: bool,
) -> None:
    """Run ledger verification for either command line; exit non-zero on failure."""
    console = Console()
    try:
        key = load_public_key(public_key)
    except IdentityKeyError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    try:
        report = Ledger.verify(
            ledger, key, party_id=party, expected_head_hash=expected_head
        )
    except LedgerError as error:
        logger.warning("ledger %s failed verification: %s", ledger, error)
        if json_output:
            typer.echo(
                json.dumps(
                    {
                        "path": str(ledger),
                        "verified": False,
                        "error": str(error),
                        "kind": getattr(error, "kind", None),
                        "seq": getattr(error, "seq", None),
                    },
                    indent=2,
                )
            )
        else:
            console.print(f"[red]ledger verification failed:[/] {error}")
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(json.dumps(verification_dict(report), indent=2))
    else:
        console.print(
            f"[green]ledger verified:[/] {report.entries} entries, "
            f"{report.spends} spends, party {report.party_id}, head {report.head_hash}"
        )
