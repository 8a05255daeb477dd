"""`federation-hub`: the hub operator's command line."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from policies.environment import apply_no_phone_home_environment

# Flower reads these when it is imported, so they are set before any import of it.
apply_no_phone_home_environment()

from federation_hub import report  # noqa: E402
from federation_hub.audit_command import audit  # noqa: E402
from federation_hub.config import load_hub_config  # noqa: E402
from federation_hub.demo import (  # noqa: E402
    HEART_DISEASE_DATA_DIR,
    DemoSetupError,
    create_demo_federation,
)
from federation_hub.init_command import init  # noqa: E402
from federation_hub.policy_commands import budget, plan, verify_ledger  # noqa: E402
from federation_hub.study import RoundOutcome, StudyResult  # noqa: E402
from schemas.commands import check_schema, export_json_schema  # noqa: E402

# Outside a terminal rich falls back to 80 columns, too narrow for the tables.
console = Console(width=None if Console().is_terminal else 110)
app = typer.Typer(
    help="Hub of a healthfed federation: set up, run and audit DP studies.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("init")(init)
app.command("audit")(audit)

app.command("plan")(plan)
app.command("budget")(budget)
app.command("verify-ledger")(verify_ledger)
app.command("check-schema")(check_schema)
app.command("export-json-schema")(export_json_schema)


def _progress(event: str, payload: Any) -> None:
    if event == "connected":
        console.print(
            f"[bold]Hospitals connected and verified:[/] {', '.join(payload)}"
        )
    elif event == "secure_setup":
        console.print(
            "[bold]Secure aggregation keys agreed with:[/] " + ", ".join(payload)
        )
    elif event == "round_started":
        outcome: RoundOutcome = payload
        line = (
            f"[bold]Round {outcome.round}[/]: instructing {', '.join(outcome.selected)}"
        )
        if outcome.skipped:
            line += "; skipped " + ", ".join(
                f"{h} ({r})" for h, r in outcome.skipped.items()
            )
        console.print(line)
    elif event == "round_completed":
        outcome = payload
        for hospital, reason in outcome.rejected.items():
            console.print(f"  [yellow]{hospital} rejected the instruction:[/] {reason}")
        for hospital, reason in outcome.flagged.items():
            console.print(f"  [red]{hospital} excluded, receipt flagged:[/] {reason}")
        if outcome.aborted:
            console.print(f"  [red]{outcome.aborted}[/]")
        if outcome.dropped:
            console.print(f"  [yellow]no answer from:[/] {', '.join(outcome.dropped)}")
        accuracy = (
            "n/a"
            if math.isnan(outcome.mean_accuracy)
            else f"{outcome.mean_accuracy:.3f}"
        )
        auc = (
            "n/a" if math.isnan(outcome.mean_roc_auc) else f"{outcome.mean_roc_auc:.3f}"
        )
        console.print(
            f"  trained: {', '.join(outcome.trained) or 'none'}; mean test accuracy "
            f"{accuracy}, mean ROC AUC {auc}"
        )


def _show_result(result: StudyResult, federation_dir: Path) -> None:
    if result.rounds:
        console.print(report.round_table(result.rounds[-1]))
    console.print(report.budget_table(result))
    console.print(f"Study stopped: {result.stop_reason}")
    if result.aggregation == "fedavg":
        console.print(
            "Aggregation: FedAvg in the clear. Secure aggregation is off in this "
            "study, so the hub saw each hospital's clipped update."
        )
    else:
        console.print(
            "Aggregation: secure aggregation (pairwise masking, X25519 + ChaCha20, "
            "Shamir recovery) then FedAvg. The hub saw only the sum of the "
            "hospitals' weighted updates and of their weights."
        )
    reports_dir = load_hub_config(federation_dir).reports_dir
    console.print(f"Report (JSON): {reports_dir / report.REPORT_FILE}")


@app.command()
def run(
    federation_dir: Annotated[
        Path, typer.Argument(help="Federation folder holding federation.yaml.")
    ],
) -> None:
    """Run the folder's study on Flower's simulation engine, one node per hospital."""
    from federation_hub.config import HubConfigError
    from federation_hub.simulation import StudyFailedError, run_simulation_study

    try:
        result = run_simulation_study(federation_dir, _progress)
    except (StudyFailedError, HubConfigError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    _show_result(result, federation_dir)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder for the demo federation's files.")
    ] = Path(".demo"),
    data_dir: Annotated[
        Path, typer.Option(help="Folder with the four processed.*.data files.")
    ] = HEART_DISEASE_DATA_DIR,
    fresh: Annotated[
        bool,
        typer.Option(help="Replace a demo folder created earlier, ledgers included."),
    ] = True,
    setup_only: Annotated[
        bool, typer.Option(help="Create the federation folder and stop.")
    ] = False,
) -> None:
    """Run the four-hospital heart-disease federation with DP-SGD."""
    try:
        folder = create_demo_federation(directory, data_dir=data_dir, fresh=fresh)
    except DemoSetupError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    console.print(f"Federation folder: {folder}")
    if setup_only:
        return
    run(folder)


def main() -> None:
    """Entry point of the `federation-hub` command."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    app()


if __name__ == "__main__":
    main()
