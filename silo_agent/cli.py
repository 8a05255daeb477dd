"""`silo-agent`: the hospital's command line."""

from __future__ import annotations

import logging
import os

import typer

# Flower reads these when it is imported: no process of the agent reaches an
# outside host.
os.environ.update(
    {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
)

app = typer.Typer(
    help="Hospital agent of a healthfed federation: validate records, check budgets.",
    no_args_is_help=True,
    add_completion=False,
)

_commands: list[tuple[str, str, str]] = [
    ("silo_agent.validate_command", "validate", "validate"),
    ("silo_agent.budget_command", "budget", "budget"),
    ("silo_agent.budget_command", "verify_ledger", "verify-ledger"),
    ("schemas.commands", "check_schema", "check-schema"),
    ("schemas.commands", "export_json_schema", "export-json-schema"),
]
for module_name, function_name, command_name in _commands:
    module = __import__(module_name, fromlist=[function_name])
    app.command(command_name)(getattr(module, function_name))


def main() -> None:
    """Entry point of the `silo-agent` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
