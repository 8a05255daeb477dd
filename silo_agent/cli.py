"""`silo-agent`: the hospital's command line."""

from __future__ import annotations

import logging

import typer

from policies.environment import apply_no_phone_home_environment

# Flower reads these when it is imported: no process of the agent reaches an
# outside host.
apply_no_phone_home_environment()

from schemas.commands import check_schema, export_json_schema  # noqa: E402
from silo_agent.budget_command import budget, verify_ledger  # noqa: E402
from silo_agent.validate_command import validate  # noqa: E402

app = typer.Typer(
    help="Hospital agent of a healthfed federation: validate records, check budgets.",
    no_args_is_help=True,
    add_completion=False,
)

app.command("validate")(validate)
app.command("budget")(budget)
app.command("verify-ledger")(verify_ledger)
app.command("check-schema")(check_schema)
app.command("export-json-schema")(export_json_schema)


def main() -> None:
    """Entry point of the `silo-agent` command."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    app()


if __name__ == "__main__":
    main()
