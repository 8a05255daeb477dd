"""The study's budget report: a table for the operator and the same as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from federation_hub.study import RoundOutcome, StudyResult

REPORT_FILE = "budget-report.json"


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def study_report_document(result: StudyResult) -> dict[str, Any]:
    """Return the machine-readable report: budget per hospital and every round."""
    rounds = []
    for outcome in result.rounds:
        document = dataclasses.asdict(outcome)
        document["mean_accuracy"] = _finite_or_none(outcome.mean_accuracy)
        document["mean_roc_auc"] = _finite_or_none(outcome.mean_roc_auc)
        document["metrics"] = {
            hospital: {name: _finite_or_none(value) for name, value in metrics.items()}
            for hospital, metrics in outcome.metrics.items()
        }
        rounds.append(document)
    final = result.rounds[-1] if result.rounds else None
    return {
        "study_id": result.study_id,
        "stop_reason": result.stop_reason,
        "aggregation": result.aggregation,
        "budget": result.budget,
        "final_mean_accuracy": None
        if final is None
        else _finite_or_none(final.mean_accuracy),
        "final_mean_roc_auc": None
        if final is None
        else _finite_or_none(final.mean_roc_auc),
        "rounds": rounds,
    }


def write_study_report(reports_dir: Path, result: StudyResult) -> Path:
    """Write the JSON report to ``reports_dir`` and return its path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / REPORT_FILE
    path.write_text(
        json.dumps(study_report_document(result), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return path


def _format(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def round_table(outcome: RoundOutcome) -> Table:
    """Return the per-hospital test metrics of one round."""
    table = Table(title=f"Round {outcome.round}: global model on each test split")
    table.add_column("hospital")
    table.add_column("status")
    table.add_column("accuracy", justify="right")
    table.add_column("ROC AUC", justify="right")
    for hospital, metrics in outcome.metrics.items():
        if hospital in outcome.trained:
            status = "trained"
        elif hospital in outcome.rejected:
            status = "rejected: " + outcome.rejected[hospital]
        elif hospital in outcome.skipped:
            status = "skipped: " + outcome.skipped[hospital]
        elif hospital in outcome.dropped:
            status = "no answer"
        elif hospital in outcome.flagged:
            status = "flagged: " + outcome.flagged[hospital]
        else:
            status = "-"
        table.add_row(
            hospital, status, _format(metrics["accuracy"]), _format(metrics["roc_auc"])
        )
    table.add_row(
        "mean",
        "",
        _format(outcome.mean_accuracy),
        _format(outcome.mean_roc_auc),
        style="bold",
    )
    return table


def budget_table(result: StudyResult) -> Table:
    """Return the privacy budget spent by each hospital over the study."""
    table = Table(title=f"Privacy budget of study {result.study_id}")
    table.add_column("hospital")
    table.add_column("epsilon spent", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("delta", justify="right")
    table.add_column("accountant")
    table.add_column("rounds joined", justify="right")
    table.add_column("DP-SGD steps", justify="right")
    for row in result.budget:
        table.add_row(
            row["hospital_id"],
            f"{row['epsilon']:.3f}",
            f"{row['budget']:.3f}",
            f"{row['delta']:.0e}",
            row["accountant"],
            str(row["rounds_joined"]),
            str(row["steps"]),
        )
    return table
