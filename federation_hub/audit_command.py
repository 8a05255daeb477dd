"""`federation-hub audit`: the privacy officer's offline report.

:func:`write_audit_outputs` writes ``audit.json``, ``audit.md``, ``audit.html``
and ``epsilon.png`` for an :class:`~federation_hub.audit.AuditReport`;
:func:`audit` is the command line around it.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from federation_hub.audit import (
    AuditInputError,
    AuditReport,
    CheckResult,
    HospitalAudit,
    parse_hospital_ledger_option,
    run_audit,
)

logger = logging.getLogger(__name__)

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNUSABLE_INPUT = 2


@dataclass(frozen=True)
class AuditOutputs:
    """Paths of the files that :func:`write_audit_outputs` wrote."""

    json: Path
    markdown: Path
    html: Path
    plot: Path


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _where(check: CheckResult) -> str:
    entry = "" if check.seq is None else f" entry {check.seq}"
    ledger = "hub ledger" if check.ledger == "hub" else f"{check.ledger}'s ledger"
    return ledger + entry


def _hospital_rows(hospital: HospitalAudit) -> list[list[str]]:
    rows = []
    for index, epsilon in enumerate(hospital.epsilon_by_round):
        own = (
            None
            if hospital.hospital_epsilon_by_round is None
            else hospital.hospital_epsilon_by_round[index]
        )
        rows.append(
            [
                str(index + 1),
                _number(epsilon),
                _number(hospital.receipt_epsilon_by_round[index]),
                "not given"
                if hospital.hospital_epsilon_by_round is None
                else _number(own),
                f"{hospital.budget:g}",
                "yes" if epsilon <= hospital.budget else "NO",
            ]
        )
    return rows


HOSPITAL_COLUMNS = [
    "round",
    "epsilon (hub ledger, replayed)",
    "epsilon (signed receipt)",
    "epsilon (hospital ledger, replayed)",
    "budget",
    "within budget",
]


def _check_counts(report: AuditReport) -> list[tuple[str, int, int]]:
    counts: dict[str, list[int]] = {}
    for check in report.checks:
        passed_failed = counts.setdefault(check.check, [0, 0])
        passed_failed[0 if check.passed else 1] += 1
    return [(name, p, f) for name, (p, f) in counts.items()]


def render_markdown(report: AuditReport) -> str:
    """Return the human-readable report as Markdown, verdict first."""
    verdict = "PASS" if report.passed else "FAIL"
    lines = [
        f"# Privacy audit of study {report.study_id}: {verdict}",
        "",
        f"{len(report.checks)} checks, {len(report.failures)} failed. Accountant "
        f"{report.accountant}, delta {report.delta:g}, {report.rounds} rounds "
        f"instructed; budgets from the {report.budget_source}.",
        "",
    ]
    if report.failures:
        lines += ["## Failures", ""]
        lines += [
            f"- **{c.check}** ({_where(c)}"
            + (f", {c.hospital_id}" if c.hospital_id else "")
            + (f", round {c.round}" if c.round is not None else "")
            + f"): {c.detail}"
            for c in report.failures
        ]
        lines.append("")
    for hospital in report.hospitals:
        lines += [
            f"## {hospital.hospital_id}: epsilon {hospital.epsilon_spent:.6f} of "
            f"budget {hospital.budget:g}",
            "",
            "| " + " | ".join(HOSPITAL_COLUMNS) + " |",
            "|" + "---|" * len(HOSPITAL_COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in _hospital_rows(hospital)]
        lines.append("")
    lines += ["## Checks", "", "| check | passed | failed |", "|---|---|---|"]
    lines += [f"| {name} | {p} | {f} |" for name, p, f in _check_counts(report)]
    lines += ["", "## Inputs", "", "| input | path | SHA-256 |", "|---|---|---|"]
    lines += [
        f"| {name} | {item['path']} | `{item['sha256']}` |"
        for name, item in report.inputs.items()
    ]
    lines.append("")
    return "\n".join(lines)


def _html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: AuditReport) -> str:
    """Return the human-readable report as one self-contained HTML page."""
    verdict = "PASS" if report.passed else "FAIL"
    colour = "#1a7f37" if report.passed else "#cf222e"
    title = html.escape(f"Privacy audit of study {report.study_id}")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{border:1px solid #999;padding:0.2em 0.6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}</style></head><body>",
        f'<h1>{title}: <span style="color:{colour}">{verdict}</span></h1>',
        f"<p>{len(report.checks)} checks, {len(report.failures)} failed. "
        f"Accountant {html.escape(report.accountant)}, delta {report.delta:g}, "
        f"{report.rounds} rounds instructed; budgets from the "
        f"{html.escape(report.budget_source)}.</p>",
    ]

    if report.failures:
        parts.append("<h2>Failures</h2><ul>")
        for check in report.failures:
            context = ", ".join(
                item
                for item in (
                    _where(check),
                    check.hospital_id or "",
                    "" if check.round is None else f"round {check.round}",
                )
                if item
            )
            parts.append(
                f"<li><strong>{html.escape(check.check)}</strong> "
                f"({html.escape(context)}): {html.escape(check.detail)}</li>"
            )
        parts.append("</ul>")

    parts.append('<p><img src="epsilon.png" alt="epsilon per round and budget"></p>')
    for hospital in report.hospitals:
        parts.append(
            f"<h2>{html.escape(hospital.hospital_id)}: epsilon "
            f"{hospital.epsilon_spent:.6f} of budget {hospital.budget:g}</h2>"
        )
        parts.append(_html_table(HOSPITAL_COLUMNS, _hospital_rows(hospital)))

    parts.append("<h2>Checks</h2>")
    parts.append(
        _html_table(
            ["check", "passed", "failed"],
            [[name, str(p), str(f)] for name, p, f in _check_counts(report)],
        )
    )
    parts.append("<h2>Inputs</h2>")
    parts.append(
        _html_table(
            ["input", "path", "SHA-256"],
            [[n, i["path"], i["sha256"]] for n, i in report.inputs.items()],
        )
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def plot_epsilon(report: AuditReport, path: Path) -> None:
    """Plot each hospital's epsilon after every round, with its budget dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    try:
        rounds = list(range(1, report.rounds + 1))
        colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
        markers = "os^Dvx+*"
        count = len(report.hospitals)
        for index, hospital in enumerate(report.hospitals):
            colour = colours[index % len(colours)]
            # Hospitals that spent alike overlap; shrinking markers keep each
            # one visible under the next.
            axes.plot(
                rounds,
                hospital.epsilon_by_round,
                marker=markers[index % len(markers)],
                markersize=4 + 2 * (count - index),
                color=colour,
                label=hospital.hospital_id,
            )
            axes.axhline(
                hospital.budget,
                linestyle="--",
                color=colour,
                label=f"{hospital.hospital_id} budget",
            )
        axes.set_xlabel("round")
        axes.set_ylabel(f"epsilon at delta={report.delta:g} ({report.accountant})")
        verdict = "pass" if report.passed else "FAIL"
        axes.set_title(f"Study {report.study_id}: epsilon spent, audit {verdict}")
        if rounds:
            axes.set_xticks(rounds)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        pyplot.close(figure)


def write_audit_outputs(report: AuditReport, out_dir: Path) -> AuditOutputs:
    """Write audit.json, audit.md, audit.html and epsilon.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = AuditOutputs(
        json=out_dir / "audit.json",
        markdown=out_dir / "audit.md",
        html=out_dir / "audit.html",
        plot=out_dir / "epsilon.png",
    )
    outputs.json.write_text(
        json.dumps(report.to_document(), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    outputs.markdown.write_text(render_markdown(report), encoding="utf-8")
    outputs.html.write_text(render_html(report), encoding="utf-8")
    plot_epsilon(report, outputs.plot)
    logger.info("audit report of study %s written to %s", report.study_id, out_dir)
    return outputs


def audit(
    hub_ledger: Annotated[
        Path,
        typer.Option(
            "--ledger", help="Copy of the hub's ledger (hub/state/ledger.sqlite)."
        ),
    ],
    roster: Annotated[
        Path,
        typer.Option(
            "--roster", help="The federation's roster.yaml of enrolled public keys."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder that receives audit.json, audit.md, audit.html "
            "and epsilon.png; created if missing.",
        ),
    ],
    hospital_ledger: Annotated[
        list[str] | None,
        typer.Option(
            "--hospital-ledger",
            help="ID=PATH of a copy of one hospital's ledger "
            "(hospitals/ID/state/ledger.sqlite); repeat for each hospital.",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="The study policy (study.yaml); gives each hospital's epsilon budget.",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="Study id to audit; default the policy's study or the only study "
            "in the ledger.",
        ),
    ] = None,
) -> None:
    """Verify a study's privacy spending offline, with public keys only.

    Checks the hub ledger's signatures, every hospital receipt, every epsilon
    (replayed with the study's accountant and delta) and every budget. With
    hospital ledgers, it also checks that each spend the hub confirmed is in the
    hospital's own ledger. Exit code 0 when every check passes, 1 when any
    fails, 2 when an input is missing or invalid.
    """
    console = Console()
    try:
        hospital_ledgers = parse_hospital_ledger_option(hospital_ledger or [])
        report = run_audit(
            hub_ledger,
            roster,
            hospital_ledgers=hospital_ledgers,
            study_policy=policy,
            study_id=study,
        )
        outputs = write_audit_outputs(report, out)
    except AuditInputError as error:
        console.print(f"[red]cannot audit:[/] {error}")
        raise typer.Exit(EXIT_UNUSABLE_INPUT) from None
    except OSError as error:
        console.print(f"[red]cannot write the audit report to {out}:[/] {error}")
        raise typer.Exit(EXIT_UNUSABLE_INPUT) from None
    if report.passed:
        console.print(
            f"[green]audit passed:[/] study {report.study_id}, "
            f"{len(report.checks)} checks"
        )
    else:
        console.print(
            f"[red]audit failed:[/] study {report.study_id}, "
            f"{len(report.failures)} of {len(report.checks)} checks failed"
        )
        for check in report.failures[:20]:
            console.print(f"  {check.check} ({_where(check)}): {check.detail}")
        if len(report.failures) > 20:
            console.print(f"  ... {len(report.failures) - 20} more in {outputs.json}")
    for path in (outputs.json, outputs.markdown, outputs.html, outputs.plot):
        console.print(f"  {path}")
    raise typer.Exit(EXIT_PASS if report.passed else EXIT_FAIL)
