"""`silo-agent budget` and `silo-agent verify-ledger`: a hospital's own ledger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from policies.budget import hospital_budget
from policies.commands_output import budget_json, budget_table, run_verify_ledger
from policies.identity import IdentityKeyError, load_public_key
from policies.ledger import LedgerError
from policies.models import PolicyError, load_hospital_policy

logger = logging.getLogger(__name__)

LedgerArgument = Annotated[
    Path, typer.Argument(help="The hospital's ledger (SQLite file).", exists=True)
]
PublicKeyOption = Annotated[
    Path,
    typer.Option(
        "--public-key",
        help="The hospital's Ed25519 identity public key (PEM) that signed the ledger.",
        exists=True,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table.")
]


def budget(
    ledger: LedgerArgument,
    policy: Annotated[
        Path,
        typer.Option("--policy", help="The hospital policy (YAML).", exists=True),
    ],
    public_key: PublicKeyOption,
    json_output: JsonOption = False,
) -> None:
    """Verify the ledger, then show epsilon spent and left per study and in total.

    Epsilon is replayed from every spend in the ledger, with the accountant and
    delta recorded for each study. The total over all studies uses the
    policy's total_accountant at total_delta. Exit code 1 when the ledger fails
    verification, 2 when an input is invalid.
    """
    console = Console()
    try:
        hospital_policy = load_hospital_policy(policy)
        key = load_public_key(public_key)
        report = hospital_budget(ledger, key, hospital_policy)
    except (PolicyError, IdentityKeyError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    except LedgerError as error:
        console.print(f"[red]ledger verification failed:[/] {error}")
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(budget_json(report))
    else:
        console.print(budget_table(report, "study"))


def verify_ledger(
    ledger: LedgerArgument,
    public_key: PublicKeyOption,
    party: Annotated[
        str | None,
        typer.Option("--party", help="Party id every entry must name (optional)."),
    ] = None,
    expected_head: Annotated[
        str | None,
        typer.Option(
            "--expected-head",
            help="A ledger head hash known from a receipt; detects removed "
            "trailing entries.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Verify the ledger's hash chain and signatures; name the first bad entry.

    Exit code 0 when the ledger verifies, 1 when an entry was edited, deleted,
    reordered or signed by another key, 2 when an input is invalid.
    """
    run_verify_ledger(ledger, public_key, party, expected_head, json_output)
