"""`federation-hub plan`, `budget` and `verify-ledger`: the study policy and ledger."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from policies.budget import hub_budget
from policies.commands_output import budget_json, budget_table, run_verify_ledger
from policies.identity import IdentityKeyError, load_public_key
from policies.ledger import LedgerError
from policies.models import PolicyError, load_study_policy
from policies.planner import StudyPlan, plan_study

logger = logging.getLogger(__name__)

PolicyArgument = Annotated[
    Path, typer.Argument(help="The study policy (YAML).", exists=True)
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table.")
]


def _plan_table(plan: StudyPlan) -> Table:
    table = Table(title=f"Epsilon after each round, study {plan.study_id}")
    table.add_column("round", justify="right")
    table.add_column("epsilon", justify="right")
    for hospital in plan.budgets:
        table.add_column(f"{hospital} (budget {plan.budgets[hospital]:g})")
    for index, epsilon in enumerate(plan.epsilon_by_round):
        round_number = index + 1
        cells = [
            "takes part"
            if round_number <= plan.last_round_within_budget[h]
            else "skipped"
            for h in plan.budgets
        ]
        table.add_row(str(round_number), f"{epsilon:.4f}", *cells)
    return table


def _plan_json(plan: StudyPlan) -> str:
    return json.dumps(
        {
            "study_id": plan.study_id,
            "accountant": plan.accountant,
            "delta": plan.delta,
            "dp": plan.dp.model_dump(),
            "noise_multiplier_planned": plan.noise_multiplier_planned,
            "epsilon_by_round": plan.epsilon_by_round,
            "budgets": plan.budgets,
            "last_round_within_budget": plan.last_round_within_budget,
        },
        indent=2,
    )


def plan(policy: PolicyArgument, json_output: JsonOption = False) -> None:
    """Show the noise multiplier and each hospital's epsilon after every round.

    With dp.target_epsilon the noise multiplier is planned so that all rounds
    end at or below the target. Exit code 2, with the reason, when the policy
    is invalid or the plan is impossible: no noise multiplier reaches the
    target, or a planned round would have fewer hospitals within budget than
    min_hospitals_per_round.
    """
    console = Console()
    try:
        study_plan = plan_study(load_study_policy(policy))
    except PolicyError as error:
        console.print(f"[red]plan rejected:[/] {error}")
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(_plan_json(study_plan))
        return
    source = (
        "planned from target_epsilon"
        if study_plan.noise_multiplier_planned
        else "fixed"
    )
    dp = study_plan.dp
    console.print(
        f"noise_multiplier {dp.noise_multiplier:.4f} ({source}), sample_rate "
        f"{dp.sample_rate:g}, steps {dp.steps} per round, max_grad_norm "
        f"{dp.max_grad_norm:g}, accountant {study_plan.accountant}, delta "
        f"{study_plan.delta:g}"
    )
    console.print(_plan_table(study_plan))


def budget(
    ledger: Annotated[
        Path, typer.Argument(help="The hub's ledger (SQLite file).", exists=True)
    ],
    policy: Annotated[
        Path, typer.Option("--policy", help="The study policy (YAML).", exists=True)
    ],
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key",
            help="The hub's Ed25519 identity public key (PEM) that signed the ledger.",
            exists=True,
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """Verify the hub's ledger, then show each hospital's epsilon spent and left.

    Epsilon is replayed from the spends the hub recorded for the study, with the
    study's accountant and delta. Exit code 1 when the ledger fails
    verification, 2 when an input is invalid.
    """
    console = Console()
    try:
        study = load_study_policy(policy)
        key = load_public_key(public_key)
        report = hub_budget(ledger, key, study)
    except (PolicyError, IdentityKeyError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    except LedgerError as error:
        console.print(f"[red]ledger verification failed:[/] {error}")
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(budget_json(report))
    else:
        console.print(budget_table(report, "hospital"))


def verify_ledger(
    ledger: Annotated[
        Path, typer.Argument(help="A party's ledger (SQLite file).", exists=True)
    ],
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key",
            help="Ed25519 identity public key (PEM) of the party that wrote it.",
            exists=True,
        ),
    ],
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
    """Verify a ledger's hash chain and signatures; name the first bad entry.

    Works on the hub's ledger or a hospital's. Exit code 0 when it verifies, 1
    when an entry was edited, deleted, reordered or signed by another key, 2
    when an input is invalid.
    """
    run_verify_ledger(ledger, public_key, party, expected_head, json_output)
